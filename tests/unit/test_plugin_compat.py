"""The plugin API's compatibility guard: a strategy package written against an earlier plugin API
keeps working, with deprecation warnings where it uses what is deprecated.

`LEGACY_PLUGIN` is a package as the README of 2026-11 taught it: a plain `Strategy` subclass
with a nested `Params`, and `ExportedLayer`s that do not name their encoding while their codes
are signed (a ternary layer with codes -1, 0, +1 declared as 2 bits; a learned-step-size
quantizer with codes -2^(b-1) .. 2^(b-1)-1 declared as b bits). Installed through its entry
point, it must pass the contract suite, train, and export a file that reads back exactly. Keep
this file unchanged as the plugin API moves: a change that breaks it breaks users' packages.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch

from runners.engine.export import load_weights, pack, pattern, unpack
from strategies import ExportedLayer, weight_metrics
from strategies.testing import bits_needed

LEGACY_PLUGIN = '''
"""Two strategies written against the plugin API of 2026-11 (no `encoding` on exports)."""
from typing import Annotated

import torch
from pydantic import Field
from torch import nn

from strategies import ExportedLayer, Search, Strategy, StrategyParams
from strategies.layers import attach, latent_weight, parametrizations


class _Ternary(nn.Module):
    def __init__(self, threshold):
        super().__init__()
        self.threshold = threshold

    def codes_and_scale(self, w):
        keep = w.abs() > self.threshold * w.abs().mean()
        t = torch.where(keep, torch.sign(w), torch.zeros_like(w)).detach()
        return t, ((w.abs() * keep).sum() / keep.sum().clamp_min(1)).detach()

    def forward(self, w):
        t, s = self.codes_and_scale(w)
        return w + (s * t - w).detach()


class LegacyTernary(Strategy):
    """Ternary weights {-s, 0, s}: codes -1, 0, +1 in 2 bits."""

    paper = "legacy plugin"
    summary = "ternary weights"
    fidelity = "exact"

    class Params(StrategyParams):
        threshold: Annotated[float, Field(ge=0, le=2), Search(0.1, 1.0)] = 0.7

    def prepare(self, model):
        return attach(model, lambda name, layer: _Ternary(self.params.threshold))

    def export(self, model):
        out = {}
        for name, layer, p in parametrizations(model, _Ternary):
            t, s = p.codes_and_scale(latent_weight(layer))
            s = float(s)
            out[name] = ExportedLayer(
                weight=torch.tensor(s) * t, bits=2, n_floats=1, codes=t.to(torch.int8), scale=s
            )
        return out


def _round_ste(v):
    return v + (v.round() - v).detach()


class _Lsq(nn.Module):
    def __init__(self, w, bits):
        super().__init__()
        self.lo, self.hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        self.step = nn.Parameter(2 * w.detach().abs().mean() / self.hi**0.5)

    def forward(self, w):
        return _round_ste(torch.clamp(w / self.step, self.lo, self.hi)) * self.step

    @torch.no_grad()
    def codes(self, w):
        return torch.clamp(torch.round(w / self.step), self.lo, self.hi).to(torch.int16)


class LegacyLsq(Strategy):
    """b-bit two's complement codes times a learned step size."""

    paper = "legacy plugin"
    summary = "lsq"
    fidelity = "exact"

    class Params(StrategyParams):
        bits: Annotated[int, Field(ge=2, le=8), Search(2, 6)] = 3

    def prepare(self, model):
        return attach(model, lambda _n, layer: _Lsq(latent_weight(layer), self.params.bits))

    def export(self, model):
        out = {}
        for name, layer, p in parametrizations(model, _Lsq):
            codes = p.codes(latent_weight(layer))
            s = float(p.step.detach())
            out[name] = ExportedLayer(
                weight=torch.tensor(s) * codes.float(),
                bits=self.params.bits,
                n_floats=1,
                codes=codes,
                scale=s,
            )
        return out
'''

LEGACY_TESTS = """
from strategies.testing import StrategyContract


class TestLegacyTernary(StrategyContract):
    strategy_name = "legacy_ternary"


class TestLegacyLsq(StrategyContract):
    strategy_name = "legacy_lsq"
"""


@pytest.fixture(scope="module")
def legacy_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`legacy_plugin` and its dist-info advertising both strategies as entry points."""
    root = tmp_path_factory.mktemp("legacy")
    (root / "legacy_plugin.py").write_text(textwrap.dedent(LEGACY_PLUGIN))
    (root / "test_legacy_contract.py").write_text(textwrap.dedent(LEGACY_TESTS))
    dist = root / "legacy_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: legacy-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[bitsweep.strategies]\n"
        "legacy_ternary = legacy_plugin:LegacyTernary\n"
        "legacy_lsq = legacy_plugin:LegacyLsq\n"
    )
    return root


def _env(root: Path) -> dict[str, str]:
    """The environment of a user's shell with the package on the path: no pytest-xdist worker
    variables of this run, and only pytest's own plugins (whatever else is installed here)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "COV_"))}
    return {**env, "PYTHONPATH": str(root), "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}


@pytest.mark.system  # starts real processes
def test_legacy_plugin_passes_the_contract_suite_with_only_deprecation_warnings(
    legacy_package: Path,
) -> None:
    # Every warning is an error except DeprecationWarning, which is shown: the package must
    # pass with nothing but the deprecation that tells its author what to change.
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-W",
            "error",
            "-W",
            "always::DeprecationWarning",
            "test_legacy_contract.py",
        ],
        cwd=legacy_package,
        env=_env(legacy_package),
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "failed" not in out.splitlines()[-1]
    assert "DeprecationWarning: ExportedLayer with negative codes and no `encoding`" in out
    assert "encoding='signed'" in out


@pytest.mark.system  # starts real processes
def test_legacy_plugin_trains_and_exports_a_file_that_reads_back(
    legacy_package: Path, tmp_path: Path
) -> None:
    path = tmp_path / "w.safetensors"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "service.cli",
            "train",
            "--strategy",
            "legacy_lsq",
            "--epochs",
            "1",
            "--param",
            "bits=3",
            "--json",
            "--export",
            str(path),
        ],
        env=_env(legacy_package),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    weights, codes, info = load_weights(path)
    assert {lm["encoding"] for lm in info["layers"].values()} == {"signed"}
    assert codes and set(codes) == set(weights)
    for name, c in codes.items():
        assert info["layers"][name]["bits"] == 3
        assert -4 <= int(c.min()) < 0 <= int(c.max()) <= 3
        # Two's complement read back: each weight is the layer's one step times its code.
        nonzero = c != 0
        steps = weights[name][nonzero] / c[nonzero].float()
        assert torch.allclose(steps, steps[0].expand_as(steps))
        assert torch.equal(weights[name][~nonzero], torch.zeros_like(weights[name][~nonzero]))
    assert result["weights"]["weight_bits"] == sum(3 * c.numel() + 32 for c in codes.values())


def test_undeclared_encoding_of_signed_codes_is_inferred_with_a_deprecation_warning() -> None:
    codes = torch.tensor([[-1, 0, 1], [1, 1, -1]], dtype=torch.int8)
    with pytest.warns(DeprecationWarning, match=r"Declare it, ExportedLayer\(\.\.\., encoding="):
        layer = ExportedLayer(
            weight=0.5 * codes.float(), bits=2, n_floats=1, codes=codes, scale=0.5
        )
    assert layer.encoding == "signed"
    assert torch.equal(layer.decode(), layer.weight)
    # Packed in two's complement and read back to the same codes.
    p = pattern(layer)
    assert sorted(set(p.tolist())) == [0, 1, 3]
    assert torch.equal(
        torch.from_numpy(unpack(pack(p, 2), 2, codes.numel()).astype("int64")),
        torch.from_numpy(p.astype("int64")),
    )
    m = weight_metrics({"fc": layer})
    assert m.unique_weights == 3 and m.weight_bits == 2 * 6 + 32


def test_declared_or_unsigned_encodings_warn_nothing() -> None:
    codes = torch.tensor([0, 1, 2, 3])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ExportedLayer(weight=codes.float(), bits=2, codes=codes).encoding == "unsigned"
        signed = ExportedLayer(weight=codes.float() - 2, bits=2, codes=codes - 2, encoding="signed")
        assert signed.encoding == "signed"
        assert ExportedLayer.float32(torch.ones(3)).encoding == "unsigned"


@pytest.mark.parametrize(
    ("codes", "need"),
    [
        ([-1, 0, 1], (2, "in two's complement")),
        ([-1, 1], (1, "signed (-1 and +1)")),
        ([-4, 3], (3, "in two's complement")),
        ([-5, 0], (4, "in two's complement")),
        ([0, 1], (1, "unsigned")),
        ([0, 4], (3, "unsigned")),
        ([0, 0], (1, "unsigned")),
    ],
)
def test_bits_needed_counts_in_the_encoding_that_holds_the_codes(
    codes: list[int], need: tuple[int, str]
) -> None:
    assert bits_needed(torch.tensor(codes)) == need

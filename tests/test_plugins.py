"""Strategies from other installed packages, found through the `bitsweep.strategies` entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import strategies
from strategies import Strategy, StrategyParams, register_strategy
from strategies.registry import load_plugins, unregister_strategy

PLUGIN = '''
"""A throwaway plugin: ternary weights with a per-layer scale."""
from typing import Annotated

import torch
from pydantic import Field
from torch import nn

from strategies import ExportedLayer, Search, Strategy, StrategyParams
from strategies.layers import attach, parametrizations


class _Ternary(nn.Module):
    def __init__(self, threshold):
        super().__init__()
        self.threshold = threshold

    def quantize(self, w):
        scale = w.abs().mean()
        keep = w.abs() > self.threshold * scale
        return torch.where(keep, torch.sign(w), torch.zeros_like(w)) * scale

    def forward(self, w):
        return w + (self.quantize(w) - w).detach()


class Ternary(Strategy):
    """Ternary weights {-s, 0, s} with a straight-through gradient."""

    paper = "plugin example"
    summary = "ternary weights"
    fidelity = "example"

    class Params(StrategyParams):
        threshold: Annotated[float, Field(ge=0, le=2), Search(0.1, 1.0)] = 0.7

    def prepare(self, model):
        return attach(model, lambda name, layer: _Ternary(self.params.threshold))

    def export(self, model):
        out = {}
        for name, layer, t in parametrizations(model, _Ternary):
            w = layer.parametrizations.weight.original.detach()
            out[name] = ExportedLayer(weight=t.quantize(w), bits=2, n_floats=1)
        return out
'''


@pytest.fixture
def plugin_path(tmp_path: Path) -> Path:
    """A package `ternary_plugin` and its dist-info advertising the entry point."""
    (tmp_path / "ternary_plugin.py").write_text(textwrap.dedent(PLUGIN))
    dist = tmp_path / "ternary_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ternary-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[bitsweep.strategies]\nternary = ternary_plugin:Ternary\n"
    )
    return tmp_path


@pytest.fixture
def with_plugin(plugin_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(plugin_path))
    load_plugins(reload=True)
    yield
    unregister_strategy("ternary")
    sys.modules.pop("ternary_plugin", None)


def test_entry_point_strategy_is_listed(with_plugin):
    assert strategies.get_strategy("ternary").__module__ == "ternary_plugin"


def test_entry_point_strategy_trains_from_the_cli(plugin_path: Path):
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(plugin_path), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "service.cli",
            "train",
            "--strategy",
            "ternary",
            "--epochs",
            "2",
            "--json",
            "--param",
            "threshold=0.5",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["config"]["strategy"] == "ternary"
    assert result["weights"]["unique_weights"] <= 3 * len(result["weights"]["layers"])


def test_entry_point_strategy_is_in_the_cli_listing(plugin_path: Path):
    env = {**os.environ, "PYTHONPATH": str(plugin_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "service.cli", "strategies", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    names = [s["name"] for s in json.loads(proc.stdout)]
    assert "ternary" in names and "full_precision" in names


def test_duplicate_name_raises():
    class Other(Strategy):
        class Params(StrategyParams):
            pass

    with pytest.raises(ValueError, match="already registered"):
        register_strategy("full_precision")(Other)


def test_registering_a_non_strategy_raises():
    with pytest.raises(TypeError):
        register_strategy("not_a_strategy")(dict)  # type: ignore[arg-type]

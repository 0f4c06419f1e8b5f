"""Strategies from other installed packages, found through the `bitsweep.strategies` entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Annotated

import pytest
from pydantic import Field

import strategies
from strategies import Search, Strategy, StrategyParams, register_strategy
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


@pytest.mark.system  # starts real processes
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


@pytest.mark.system  # starts real processes
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

        def export(self, model):
            return {}

    with pytest.raises(ValueError, match="already registered"):
        register_strategy("full_precision")(Other)


def test_registering_a_non_strategy_raises():
    with pytest.raises(TypeError):
        register_strategy("not_a_strategy")(dict)  # type: ignore[arg-type]


# -- registration refuses incomplete classes ------------------------------------------------


def test_a_strategy_without_export_is_refused_at_registration():
    class NoExport(Strategy):
        class Params(StrategyParams):
            pass

    with pytest.raises(TypeError, match=r"NoExport does not implement export\(\)"):
        register_strategy("no_export")(NoExport)
    assert "no_export" not in strategies.list_strategies()


def test_params_that_are_not_strategy_params_are_refused():
    from pydantic import BaseModel

    class Loose(Strategy):
        class Params(BaseModel):  # type: ignore[assignment]
            pass

        def export(self, model):
            return {}

    with pytest.raises(TypeError, match=r"Loose.Params is not a StrategyParams subclass"):
        register_strategy("loose")(Loose)


def test_a_search_outside_its_bounds_is_refused():
    class Wide(Strategy):
        class Params(StrategyParams):
            bits: Annotated[int, Field(ge=1, le=8), Search(1, 16)] = 4

        def export(self, model):
            return {}

    with pytest.raises(TypeError, match=r"Wide: bits: range \[1, 16\] is outside the bounds"):
        register_strategy("wide")(Wide)


def test_strategy_generic_over_its_params_takes_params_from_the_type_argument():
    class Knobs(StrategyParams):
        threshold: Annotated[float, Field(ge=0)] = 0.5

    class Typed(Strategy[Knobs]):
        def export(self, model):
            return {}

    assert Typed.Params is Knobs and Typed().params.threshold == 0.5


def test_a_recipe_naming_other_knobs_keeps_the_default_lr_search():
    from strategies import DEFAULT_LR_SEARCH, Recipe

    recipe = Recipe(search={"optimizer": Search(choices=("adam", "sgd"))})
    assert recipe.search["lr"] == DEFAULT_LR_SEARCH
    assert Recipe(search={"lr": Search(0.01, 0.1)}).search["lr"] == Search(0.01, 0.1)


# -- broken entry points leave the others usable --------------------------------------------

BROKEN_ENTRY_POINTS = """[bitsweep.strategies]
crashes = broken_plugin:Missing
not_a_class = broken_plugin:VALUE
renamed = broken_plugin:Renamed
"""

BROKEN_PLUGIN = """
from strategies import Strategy, StrategyParams, register_strategy

VALUE = 3


@register_strategy("other_name")
class Renamed(Strategy):
    class Params(StrategyParams):
        pass

    paper = summary = fidelity = "x"

    def export(self, model):
        return {}
"""


@pytest.fixture
def broken_path(tmp_path: Path) -> Path:
    (tmp_path / "broken_plugin.py").write_text(textwrap.dedent(BROKEN_PLUGIN))
    dist = tmp_path / "broken_plugin-0.2.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.2\n")
    (dist / "entry_points.txt").write_text(BROKEN_ENTRY_POINTS)
    return tmp_path


@pytest.fixture
def with_broken(broken_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(broken_path))
    load_plugins(reload=True)
    yield
    for name in ("crashes", "not_a_class", "renamed", "other_name"):
        unregister_strategy(name)
    sys.modules.pop("broken_plugin", None)
    monkeypatch.undo()
    load_plugins(reload=True)


def test_broken_entry_points_are_reported_and_the_others_work(with_broken):
    errors = {e.name: e for e in strategies.plugin_errors()}
    assert set(errors) == {"crashes", "not_a_class", "renamed"}
    assert errors["crashes"].distribution == "broken-plugin"
    assert "AttributeError" in errors["crashes"].error
    assert "is not a Strategy subclass" in errors["not_a_class"].error
    assert "registers itself as 'other_name' but its entry point is named 'renamed'" in (
        errors["renamed"].error
    )
    assert "other_name" not in strategies.list_strategies()
    assert "full_precision" in strategies.list_strategies()
    with pytest.raises(strategies.UnknownStrategyError, match="'crashes' failed to load"):
        strategies.get_strategy("crashes")


def _cli(args: list[str], path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(path)}
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


@pytest.mark.system  # starts real processes
def test_cli_lists_the_others_and_names_each_broken_entry_point(broken_path: Path):
    proc = _cli(["strategies", "--json"], broken_path)
    assert proc.returncode == 0, proc.stderr
    assert "full_precision" in [s["name"] for s in json.loads(proc.stdout)]
    assert "entry point crashes = broken_plugin:Missing (distribution broken-plugin)" in (
        proc.stderr
    )
    train = _cli(["train", "--strategy", "full_precision", "--epochs", "1", "--json"], broken_path)
    assert train.returncode == 0, train.stderr
    asked = _cli(["train", "--strategy", "crashes", "--epochs", "1"], broken_path)
    assert asked.returncode == 2
    assert (
        asked.stderr.strip()
        .splitlines()[-1]
        .startswith("error: strategy: strategy 'crashes' failed to load: entry point crashes")
    )


def test_every_strategy_names_the_distribution_that_provided_it(with_plugin):
    origin = strategies.strategy_origin("ternary")
    assert (origin.distribution, origin.version, origin.via) == (
        "ternary-plugin",
        "0.1",
        "entry point",
    )
    assert strategies.strategy_origin("bit_learning").via == "builtin"


def test_params_whose_annotations_cannot_be_resolved_are_refused():
    def make() -> type[Strategy]:
        from typing import Annotated as LocalAnnotated  # invisible to pydantic

        class Hidden(Strategy):
            class Params(StrategyParams):
                bits: LocalAnnotated[int, Field(ge=1)] = 4

            def export(self, model):
                return {}

        return Hidden

    with pytest.raises(TypeError, match="annotations cannot be resolved"):
        register_strategy("hidden")(make())

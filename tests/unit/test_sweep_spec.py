"""Sweep specs and search spaces: validated before any trial starts, nothing written on refusal."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest
import yaml

from runners.sweep.run import plan_sweep
from runners.sweep.space import ConstrainedSpace, SpecError, strategy_space
from schemas.sweep import StrategySpec, SweepSpec
from service.cli import main

BASE = {
    "name": "t",
    "dataset": "digits",
    "model": "mlp",
    "strategies": [{"name": "full_precision"}],
}


def spec(**over) -> SweepSpec:
    return SweepSpec.model_validate({**BASE, **over})


EXAMPLES = sorted(Path(__file__).resolve().parents[2].joinpath("examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_specs_validate(path: Path):
    raw = yaml.safe_load(path.read_text())
    assert SweepSpec.model_validate(raw).benchmark.startswith("bitsweep/")


@pytest.mark.parametrize(
    "path", [p for p in EXAMPLES if "cluster" not in p.name], ids=lambda p: p.name
)
def test_local_example_specs_plan(path: Path, home: Path):
    plan = plan_sweep(SweepSpec.model_validate(yaml.safe_load(path.read_text())))
    assert plan.strategies and not home.exists()


def test_search_space_comes_from_the_strategy_params():
    cls, space = strategy_space(StrategySpec(name="full_precision"), 0)
    assert set(space) == set(cls.recipe.search)


def test_spec_range_overrides_the_default():
    _, space = strategy_space(StrategySpec(name="full_precision", search={"lr": [0.001, 0.01]}), 0)
    assert (space["lr"].low, space["lr"].high) == (0.001, 0.01)


def test_fixed_param_is_not_searched():
    _, space = strategy_space(StrategySpec(name="full_precision", params={"lr": 0.01}), 0)
    assert "lr" not in space


def test_optuna_distributions_are_typed_by_field():
    cls, space = strategy_space(
        StrategySpec(name="full_precision", search={"batch_size": [16, 64]}), 0
    )
    import optuna

    trial = optuna.create_study().ask()
    ConstrainedSpace(cls.name, space, {})(trial)
    dist = trial.distributions
    assert type(dist["batch_size"]).__name__ == "IntDistribution"
    assert dist["lr"].log is True


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"strategies": [{"name": "nope"}]}, "strategies.0.name"),
        (
            {"strategies": [{"name": "full_precision", "search": {"lr": [0, 100]}}]},
            "strategies.0.search.lr",
        ),
        (
            {"strategies": [{"name": "full_precision", "search": {"bogus": [1, 2]}}]},
            "strategies.0.search.bogus",
        ),
        (
            {"strategies": [{"name": "full_precision", "params": {"lr": -1}}]},
            "strategies.0.params.lr",
        ),
        ({"model": "nope"}, "model"),
        ({"model_options": {"hidden": [0]}}, "model_options.hidden"),
        ({"dataset": "npz:/no/such.npz"}, "dataset"),
        ({"tracking_uri": "postgresql://postgres@127.0.0.1:1/x"}, "tracking_uri"),
        ({"optuna_storage": "postgresql://postgres@127.0.0.1:1/x"}, "optuna_storage"),
        ({"tracking_uri": "./mlruns"}, "tracking_uri"),
        ({"storage_path": "/dev/null/ray"}, "storage_path"),
        ({"storage_path": "nosuchscheme://bucket/x"}, "storage_path"),
    ],
)
def test_plan_refuses_with_the_field(home: Path, over, field):
    with pytest.raises(SpecError) as e:
        plan_sweep(spec(**over))
    assert e.value.field.startswith(field) and not home.exists()


@pytest.mark.parametrize(
    "over",
    [
        {"trials_per_strategy": -1},
        {"epochs": 0},
        {"strategies": []},
        {"name": "bad name!"},
        {"objectives": [{"metric": "nope", "mode": "max"}]},
        {"resources": {"cpu": 0}},
        {
            "strategies": [
                {"name": "full_precision", "params": {"lr": 0.1}, "search": {"lr": [0.1, 1]}}
            ]
        },
        {
            "early_stopping": {"enabled": True},
            "objectives": [
                {"metric": "test_accuracy", "mode": "max"},
                {"metric": "weight_bits", "mode": "min"},
            ],
        },
    ],
)
def test_schema_refuses_bad_specs(over):
    with pytest.raises(pydantic.ValidationError):
        spec(**over)


def write(tmp_path: Path, data) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


@pytest.mark.parametrize(
    ("data", "prefix"),
    [
        ({**BASE, "trials_per_strategy": -2}, "error: trials_per_strategy"),
        ({**BASE, "strategies": [{"name": "nope"}]}, "error: strategies.0.name"),
        ({**BASE, "tracking_uri": "postgresql://postgres@127.0.0.1:1/x"}, "error: tracking_uri"),
        (
            {**BASE, "strategies": [{"name": "full_precision"}, {"name": "full_precision"}]},
            "error: strategies.1.name: strategy 'full_precision' is listed twice",
        ),
        (
            {
                **BASE,
                "early_stopping": {"enabled": True},
                "objectives": [
                    {"metric": "best_val_accuracy", "mode": "max"},
                    {"metric": "weight_bits", "mode": "min"},
                ],
            },
            "error: early_stopping.enabled: early stopping (ASHA) needs a single objective",
        ),
        (
            {
                **BASE,
                "strategies": [
                    {"name": "full_precision", "params": {"lr": 0.1}, "search": {"lr": [0.1, 1]}}
                ],
            },
            "error: strategies.0.search.lr: is both fixed in params and searched",
        ),
        (
            {**BASE, "objectives": [{"metric": "test_accuracy", "mode": "max"}]},
            "error: objectives.0.metric: test_accuracy is measured on the test split, which "
            "nothing that selects may read; use best_val_accuracy",
        ),
        (
            {
                **BASE,
                "objectives": [
                    {"metric": "weight_bits", "mode": "min"},
                    {"metric": "test_loss", "mode": "min"},
                ],
            },
            "error: objectives.1.metric: test_loss is measured on the test split, which "
            "nothing that selects may read; use best_val_loss",
        ),
        ({**BASE, "val_fraction": 0.01}, "error: val_fraction: Input should be greater than"),
        ({**BASE, "confirmation": {"seeds": 1}}, "error: confirmation.seeds:"),
        ("name: [unclosed", "error: spec"),
        ("- a list", "error: spec"),
    ],
)
def test_cli_refuses_bad_spec_with_one_line_and_exit_2(tmp_path, home, capsys, data, prefix):
    code = main(["sweep", str(write(tmp_path, data))])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith(prefix), err
    assert not home.exists()


def test_cli_refuses_missing_spec_file(tmp_path, home, capsys):
    assert main(["sweep", str(tmp_path / "missing.yaml")]) == 2


def test_resume_without_a_sweep_is_refused(tmp_path, home, capsys):
    code = main(["sweep", str(write(tmp_path, BASE)), "--resume"])
    assert code == 2 and "no unfinished sweep" in capsys.readouterr().err


def test_a_spec_recorded_before_0_2_is_read_back_but_never_run() -> None:
    """A stored spec that selected on test accuracy (bitsweep 0.1) is shown as it was; the same
    spec given to run is refused, naming the field and the validation metric to use."""
    import pydantic

    old = {**BASE, "objectives": [{"metric": "test_accuracy", "mode": "max"}]}
    shown = SweepSpec.recorded(old)
    assert shown.objectives[0].metric == "test_accuracy"
    with pytest.raises(pydantic.ValidationError) as e:
        SweepSpec.model_validate(old)
    (err,) = e.value.errors()
    assert err["loc"] == ("objectives", 0, "metric") and "use best_val_accuracy" in err["msg"]


def test_confirmation_seeds_are_disjoint_from_every_search_seed() -> None:
    for seed in (0, 7, 2**32 - 1):
        s = spec(seed=seed, confirmation={"seeds": 5}, trials_per_strategy=10_000)
        fresh = s.confirmation_seeds()
        search = {(seed + k) % 2**32 for k in range(s.trials_per_strategy)}
        assert len(fresh) == 5 and not set(fresh) & search and all(0 <= x < 2**32 for x in fresh)
    s = spec(strategies=[{"name": "full_precision", "trials": 2}, {"name": "wrn_1bit"}])
    assert s.total_trials() == 2 + 3 + s.trials_per_strategy + 3
    two = spec(
        objectives=[{"metric": "best_val_accuracy"}, {"metric": "weight_bits", "mode": "min"}]
    )
    assert two.total_trials() == len(two.strategies) * (two.trials_per_strategy + 3 * 3)
    assert spec(confirmation={"enabled": False}).total_trials() == spec().trials_per_strategy * len(
        spec().strategies
    )

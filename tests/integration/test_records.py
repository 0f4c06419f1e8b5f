"""A real sweep's MLflow and Optuna keys are exactly those docs/records.md documents."""

from __future__ import annotations

import json
import re
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from runners.sweep.run import plan_sweep, run_sweep
from schemas.sweep import SweepSpec
from strategies import get_strategy

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]

DOC = Path(__file__).resolve().parents[2] / "docs" / "records.md"


def documented() -> dict[str, dict[str, bool]]:
    """{section: {key: optional}} read from the doc's tables; the sweep table by kind."""
    out: dict[str, dict[str, bool]] = {}
    section = ""
    for line in DOC.read_text().splitlines():
        if line.startswith("#"):
            section = line.lstrip("#").strip()
            continue
        if (
            not line.startswith("| `")
            and not line.startswith("| tag")
            and not (
                line.startswith("| param")
                or line.startswith("| metric")
                or line.startswith("| art")
            )
        ):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if section.startswith("A sweep's run"):
            if cells[0] in ("kind",):
                continue
            where, keys, meaning = f"sweep {cells[0]}", cells[1], cells[2]
        else:
            where, keys, meaning = section, cells[0], cells[1] if len(cells) > 1 else ""
        for key in re.findall(r"`([^`]+)`", keys):
            out.setdefault(where, {})[key] = meaning.startswith("When")
    return out


def expand(keys: dict[str, bool], **values: list[str]) -> tuple[set[str], set[str]]:
    """(required, all) keys with each `{name}` replaced by every value given for it."""
    required, every = set(), set()
    for key, optional in keys.items():
        names = re.findall(r"{(\w+)}", key)
        variants = [key]
        for n in names:
            variants = [v.replace(f"{{{n}}}", x) for v in variants for x in values.get(n, [])]
        every.update(variants)
        if not optional:
            required.update(variants)
    return required, every


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    home = tmp_path_factory.mktemp("records") / "data"
    spec = SweepSpec.model_validate(
        {
            "name": "records",
            "epochs": 1,
            "trials_per_strategy": 1,
            "max_failures": 0,
            "confirmation": {"seeds": 2},
            "strategies": [{"name": "bit_regularization"}, {"name": "full_precision"}],
        }
    )
    plan = plan_sweep(spec, home=home)
    summary = run_sweep(plan)
    return plan, summary, MlflowClient(plan.tracking_uri)


def trial_runs(client: MlflowClient, summary) -> list:
    exp = client.get_run(summary.parent_run_id).info.experiment_id
    return client.search_runs([exp], "tags.`bitsweep.kind` = 'trial'")


def test_trial_runs_log_exactly_the_documented_keys(sweep) -> None:
    _, summary, client = sweep
    doc = documented()
    for run in trial_runs(client, summary):
        strategy = get_strategy(run.data.tags["bitsweep.strategy"])
        local = Path(client.download_artifacts(run.info.run_id, "result.json"))
        result = json.loads(local.read_text())
        layers = [lm["name"] for lm in result["weights"]["layers"]]
        extras = [k for k in result["strategy_info"] if not k.startswith("layer.")]
        fields = list(strategy.Params.model_fields)
        _, params = expand(doc["Params"], param=fields)
        assert set(run.data.params) == params
        required, metrics = expand(doc["Metrics"], layer=layers, extra=extras)
        assert required <= set(run.data.metrics) <= metrics, set(run.data.metrics) ^ metrics
        required, every = expand(doc["Tags"])
        assert required <= set(run.data.tags) <= every, set(run.data.tags) ^ every
        _, artifacts = expand(doc["Artifacts and inputs"])
        assert {a.path for a in client.list_artifacts(run.info.run_id)} == artifacts
        (inp,) = run.inputs.dataset_inputs
        assert inp.dataset.name == "digits" and json.loads(inp.dataset.profile)["test_size"] > 0


def test_sweep_run_and_experiment_log_exactly_the_documented_keys(sweep) -> None:
    _, summary, client = sweep
    doc = documented()
    parent = client.get_run(summary.parent_run_id)
    assert set(parent.data.tags) == set(doc["sweep tag"])
    assert set(parent.data.params) == set(doc["sweep param"])
    assert set(parent.data.metrics) == set(doc["sweep metric"])
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} == set(doc["sweep artifact"])
    exp = client.get_experiment(parent.info.experiment_id)
    assert set(doc["The experiment: one per benchmark"]) <= set(exp.tags)
    note = exp.tags["mlflow.note.content"]
    assert "test_accuracy" in note and "best_val_accuracy" in note and "leaderboard.md" in note


def test_optuna_studies_name_their_objectives_and_link_to_mlflow(sweep) -> None:
    plan, summary, client = sweep
    doc = documented()["Optuna"]
    runs = {r.info.run_id: r for r in trial_runs(client, summary)}
    for name in ("bit_regularization", "full_precision"):
        study = optuna.load_study(study_name=f"{summary.sweep_id}/{name}", storage=plan.optuna_url)
        assert len(study.trials) == 1  # the search trial; its two confirmations are MLflow's
        assert study.metric_names == ["best_val_accuracy"]
        for trial in study.trials:
            assert set(trial.user_attrs) <= set(doc)
            run = runs[trial.user_attrs["mlflow_run_id"]]
            assert run.data.tags["bitsweep.trial_id"] == trial.user_attrs["bitsweep.tune_trial_id"]
            assert run.data.tags["bitsweep.optuna_trial"] == str(trial.number)
            assert run.data.tags["bitsweep.optuna_study"] == study.study_name

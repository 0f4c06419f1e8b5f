"""Real small sweeps on a local Ray cluster, recorded in real MLflow and Optuna stores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import optuna
import pytest
from mlflow.tracking import MlflowClient

from runners.sweep.run import plan_sweep, run_sweep
from schemas.sweep import SweepSpec
from service.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]


def children(client: MlflowClient, parent_run_id: str):
    exp = client.get_run(parent_run_id).info.experiment_id
    return client.search_runs([exp], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'")


@pytest.fixture(scope="module")
def sqlite_sweep(tmp_path_factory):
    """One sweep of three search trials and three confirmations on the SQLite default."""
    home = tmp_path_factory.mktemp("home") / "data"
    spec = SweepSpec.model_validate(
        {
            "name": "small",
            "epochs": 2,
            "trials_per_strategy": 3,
            "max_failures": 0,
            "strategies": [{"name": "full_precision", "search": {"lr": [0.001, 0.01]}}],
        }
    )
    plan = plan_sweep(spec, home=home)
    summary = run_sweep(plan)
    return home, plan, summary


def test_every_trial_is_one_child_run_of_the_parent(sqlite_sweep):
    _, plan, summary = sqlite_sweep
    client = MlflowClient(plan.tracking_uri)
    runs = children(client, summary.parent_run_id)
    ids = [r.data.tags["bitsweep.trial_id"] for r in runs]
    assert len(runs) == 6 and len(set(ids)) == 6 and summary.completed == 6
    phases = sorted(r.data.tags["bitsweep.phase"] for r in runs)
    assert phases == ["confirm"] * 3 + ["search"] * 3


def test_the_selected_config_is_confirmed_on_fresh_seeds(sqlite_sweep):
    """The search trial best on validation is trained again on the three seeds of
    `confirmation_seeds`, none of which the search used, with its params otherwise."""
    _, plan, summary = sqlite_sweep
    runs = children(MlflowClient(plan.tracking_uri), summary.parent_run_id)
    search = [r for r in runs if r.data.tags["bitsweep.phase"] == "search"]
    confirm = [r for r in runs if r.data.tags["bitsweep.phase"] == "confirm"]
    best = max(search, key=lambda r: r.data.metrics["best_val_accuracy"])
    assert {r.data.tags["bitsweep.confirms"] for r in confirm} == {best.info.run_id}
    assert {r.data.tags["bitsweep.confirms_trial"] for r in confirm} == {
        best.data.tags["bitsweep.trial_id"]
    }
    seeds = sorted(int(r.data.params["seed"]) for r in confirm)
    assert seeds == plan.spec.confirmation_seeds() == [10_000, 10_001, 10_002]
    assert not set(seeds) & {int(r.data.params["seed"]) for r in search}
    for r in confirm:
        same = {k: v for k, v in r.data.params.items() if k != "seed"}
        assert same == {k: v for k, v in best.data.params.items() if k != "seed"}
        assert (
            r.info.run_name.endswith("-confirm")
            and r.data.tags.get("bitsweep.optuna_trial") is None
        )
    study = optuna.load_study(
        study_name=f"{summary.sweep_id}/full_precision", storage=plan.optuna_url
    )
    assert len(study.trials) == 3  # confirmations are not Optuna's


def test_the_board_reports_the_confirmation_mean_and_interval(sqlite_sweep):
    from runners.board import query_leaderboard
    from runners.board.stats import estimate

    _, plan, summary = sqlite_sweep
    (board,) = query_leaderboard(plan.tracking_uri, sweep_id=summary.sweep_id)
    (row,) = board.rows
    runs = children(MlflowClient(plan.tracking_uri), summary.parent_run_id)
    accs = [
        r.data.metrics["test_accuracy"] for r in runs if r.data.tags["bitsweep.phase"] == "confirm"
    ]
    assert row.status == "confirmed" and row.test == estimate(accs)
    assert row.test.low < row.test.mean < row.test.high or row.test.std == 0
    assert (row.budget.trials, row.budget.epochs) == (3, 6) and row.budget.seconds > 0
    assert summary.leaderboard[0]["test_accuracy"] == pytest.approx(row.test.mean)


def test_runs_live_in_the_benchmark_experiment(sqlite_sweep):
    _, plan, summary = sqlite_sweep
    client = MlflowClient(plan.tracking_uri)
    exp = client.get_experiment(client.get_run(summary.parent_run_id).info.experiment_id)
    assert exp.name == "bitsweep/digits/mlp" == summary.experiment


def test_trial_runs_carry_design_tags_params_and_metrics(sqlite_sweep):
    _, plan, summary = sqlite_sweep
    run = children(MlflowClient(plan.tracking_uri), summary.parent_run_id)[0]
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    assert {
        "bitsweep.sweep_id",
        "bitsweep.trial_id",
        "bitsweep.strategy",
        "bitsweep.dataset",
        "bitsweep.model",
        "bitsweep.version",
        "bitsweep.node",
    } <= set(tags)
    assert tags["bitsweep.strategy_distribution"] == "bitsweep"  # where the method came from
    assert tags["bitsweep.strategy_version"] == tags["bitsweep.version"]
    assert params["strategy"] == "full_precision" and "lr" in params and "optimizer" in params
    assert {
        "test_accuracy",
        "weight_bytes",
        "weight_entropy_bits",
        "unique_weights",
        "sparsity",
    } <= set(metrics)
    # A param is not also a metric (MLflow would chart it among the board's), but the seed.
    assert metrics["seed"] == float(params["seed"])
    assert not {"lr", "bits", "batch_size", "param/lr", "param.lr"} & set(metrics)


def test_per_epoch_metrics_have_one_step_per_epoch(sqlite_sweep):
    _, plan, summary = sqlite_sweep
    client = MlflowClient(plan.tracking_uri)
    run = children(client, summary.parent_run_id)[0]
    history = client.get_metric_history(run.info.run_id, "val_accuracy")
    assert sorted(m.step for m in history) == [1, 2]


def test_finished_trials_hold_their_weights_and_result(sqlite_sweep):
    _, plan, summary = sqlite_sweep
    client = MlflowClient(plan.tracking_uri)
    run = children(client, summary.parent_run_id)[0]
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"weights.safetensors", "result.json"} <= names


def test_parent_run_holds_leaderboard_and_pareto_plot(sqlite_sweep):
    _, plan, summary = sqlite_sweep
    client = MlflowClient(plan.tracking_uri)
    names = {a.path for a in client.list_artifacts(summary.parent_run_id)}
    assert {"leaderboard.csv", "leaderboard.md", "pareto.png", "spec.json"} <= names


def test_optuna_study_records_every_search_trial(sqlite_sweep):
    _, plan, summary = sqlite_sweep
    study = optuna.load_study(
        study_name=f"{summary.sweep_id}/full_precision", storage=plan.optuna_url
    )
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 3


def test_summary_names_the_trial_selected_on_validation(sqlite_sweep):
    _, plan, summary = sqlite_sweep
    best = summary.best["full_precision"]
    run = MlflowClient(plan.tracking_uri).get_run(best["run_id"])
    vals = [
        r.data.metrics["best_val_accuracy"]
        for r in children(MlflowClient(plan.tracking_uri), summary.parent_run_id)
        if r.data.tags["bitsweep.phase"] == "search"
    ]
    assert run.data.metrics["best_val_accuracy"] == max(vals)
    assert best["metrics"]["seeds"] == 3


def test_leaderboard_cli_reads_the_same_runs(sqlite_sweep, monkeypatch, capsys):
    home, _plan, summary = sqlite_sweep
    monkeypatch.setenv("BITSWEEP_HOME", str(home))
    assert main(["leaderboard", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["bitsweep/digits/mlp"]
    assert rows[0]["run_id"] == summary.best["full_precision"]["run_id"]


def test_leaderboard_cli_lists_every_trial_with_all(sqlite_sweep, monkeypatch, capsys):
    home, _, _ = sqlite_sweep
    monkeypatch.setenv("BITSWEEP_HOME", str(home))
    assert main(["leaderboard", "--all", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["bitsweep/digits/mlp"]
    assert sorted(r["phase"] for r in rows) == ["confirm"] * 3 + ["search"] * 3


def test_a_sweeps_board_is_its_own_and_the_benchmarks_spans_its_sweeps(
    tmp_path, monkeypatch, capsys
):
    """Two sweeps of one benchmark at 1 and 2 epochs: the second's printed board and its
    leaderboard.md hold its trials alone; `bitsweep leaderboard` shows both, saying which sweep
    and how many epochs each row is, and `--sweep-id` one of them."""
    home = tmp_path / "data"
    monkeypatch.setenv("BITSWEEP_HOME", str(home))
    base = {
        "trials_per_strategy": 2,
        "max_failures": 0,
        "confirmation": {"enabled": False},  # scope alone: confirmation has its own tests
        "strategies": [{"name": "full_precision", "search": {"lr": [0.001, 0.01]}}],
    }
    first = run_sweep(
        plan_sweep(SweepSpec.model_validate({**base, "name": "one", "epochs": 1}), home=home)
    )
    spec = tmp_path / "two.json"
    spec.write_text(json.dumps({**base, "name": "two", "epochs": 2}))
    assert main(["sweep", str(spec)]) == 0
    printed = capsys.readouterr().out
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    exp = client.get_experiment_by_name("bitsweep/digits/mlp")
    assert exp is not None
    flt = "tags.`bitsweep.kind` = 'sweep' and tags.`bitsweep.sweep_id` LIKE 'two-%'"
    (second,) = client.search_runs([exp.experiment_id], flt)
    sid = second.data.tags["bitsweep.sweep_id"]
    mine = {r.info.run_id for r in children(client, second.info.run_id)}
    theirs = {r.info.run_id for r in children(client, first.parent_run_id)}
    assert f"leaderboard of sweep {sid}" in printed and first.sweep_id not in printed
    words = " ".join(printed.split())  # the table's title wraps at the terminal's width
    assert "confirmation off: one seed per row" in words and "unconfirmed" in words
    md = (
        Path(client.download_artifacts(second.info.run_id, "leaderboard.md", str(tmp_path)))
    ).read_text()
    assert f"sweep {sid}, 2 epochs" in md.splitlines()[0]
    assert first.sweep_id not in md and any(r in md for r in mine)
    assert not any(r in md for r in theirs)

    assert main(["leaderboard", "--all", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["bitsweep/digits/mlp"]
    assert {(r["sweep_id"], r["epochs"]) for r in rows} == {(first.sweep_id, 1), (sid, 2)}
    assert main(["leaderboard", "--all"]) == 0
    table = capsys.readouterr().out
    assert "from 2 sweeps, 1-2 epochs" in table and first.sweep_id in table and sid in table
    assert main(["leaderboard", "--all", "--sweep-id", first.sweep_id, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["bitsweep/digits/mlp"]
    assert len(rows) == 2 and {r["sweep_id"] for r in rows} == {first.sweep_id}


def test_failing_trial_is_recorded_failed_and_the_sweep_goes_on(tmp_path):
    spec = SweepSpec.model_validate(
        {
            "name": "failing",
            "epochs": 2,
            "val_fraction": 0.1,  # on these splits, SGD at lr 10 diverges in the first epoch
            "max_failures": 0,
            "strategies": [
                # SGD at lr 10 diverges: the loss becomes NaN and the trial fails.
                {"name": "full_precision", "params": {"lr": 10, "optimizer": "sgd"}, "trials": 2},
            ],
        }
    )
    plan = plan_sweep(spec, home=tmp_path / "data")
    summary = run_sweep(plan)
    runs = children(MlflowClient(plan.tracking_uri), summary.parent_run_id)
    assert summary.failed == 2 and {r.info.status for r in runs} == {"FAILED"}
    assert all(
        "diverged" in r.data.tags["bitsweep.error"].lower()
        or "loss" in r.data.tags["bitsweep.error"]
        for r in runs
    )


def test_postgres_stores_both_mlflow_and_optuna(tmp_path, pg_database, monkeypatch, capsys):
    """PostgreSQL stores whose URLs hold a password (the server trusts loopback and ignores
    it): the sweep runs, and no line or JSON it prints shows the password."""
    secret = "pw-Zq8fK2mX9"
    tracking, study_db = (
        pg_database(name).replace("postgres@", f"postgres:{secret}@", 1)
        for name in ("mlflow", "optuna")
    )
    spec = {
        "name": "pg",
        "epochs": 1,
        "trials_per_strategy": 2,
        "tracking_uri": tracking,
        "optuna_storage": study_db,
        "confirmation": {"seeds": 2},
        "strategies": [{"name": "full_precision"}],
    }
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    monkeypatch.setenv("BITSWEEP_HOME", str(tmp_path / "data"))
    assert main(["sweep", str(path), "--json"]) == 0
    captured = capsys.readouterr()
    assert secret not in captured.out and secret not in captured.err
    summary = json.loads(captured.out)
    assert summary["tracking_uri"].startswith("postgresql://postgres:***@")
    runs = children(MlflowClient(tracking), summary["parent_run_id"])
    study = optuna.load_study(study_name=f"{summary['sweep_id']}/full_precision", storage=study_db)
    assert len(runs) == 4 and len(study.trials) == 2
    assert summary["best"]["full_precision"]["metrics"]["seeds"] == 2
    assert "tracking: postgresql://postgres:***@" in captured.err


def test_early_stopping_stops_weak_trials_and_records_them(tmp_path):
    spec = SweepSpec.model_validate(
        {
            "name": "asha",
            "epochs": 4,
            "seed": 1,
            "early_stopping": {"enabled": True, "grace_period": 1, "reduction_factor": 2},
            # a wide lr range: some trials learn slowly and are stopped at a rung
            "strategies": [
                {
                    "name": "full_precision",
                    "search": {"lr": [1e-5, 3e-2]},
                    "params": {"optimizer": "sgd"},
                    "trials": 6,
                }
            ],
        }
    )
    plan = plan_sweep(spec, home=tmp_path / "data")
    summary = run_sweep(plan)
    runs = children(MlflowClient(plan.tracking_uri), summary.parent_run_id)
    stopped = [r for r in runs if r.data.tags.get("bitsweep.stopped_early")]
    confirm = [r for r in runs if r.data.tags["bitsweep.phase"] == "confirm"]
    study = optuna.load_study(
        study_name=f"{summary.sweep_id}/full_precision", storage=plan.optuna_url
    )
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    assert len(runs) == 6 + 3 and stopped and all(r.info.status == "KILLED" for r in stopped)
    assert len(pruned) == len(stopped) and summary.completed == 6 - len(stopped) + 3
    # Confirmations run every epoch, whatever ASHA would say of them.
    assert {r.info.status for r in confirm} == {"FINISHED"} and not set(confirm) & set(stopped)
    assert {r.data.metrics["epochs_run"] for r in confirm} == {4.0}
    assert all(r.data.metrics["epochs_run"] >= 1 for r in stopped)  # counted in the budget


def test_a_refusal_inside_a_worker_reaches_mlflow_and_the_cli_with_its_field(
    tmp_path, monkeypatch, capsys
):
    # The payload file exists (planning checks that), but only the worker's prepare() knows
    # that it does not fit the model's frozen bits: a PayloadError raised on a Ray worker.
    payload = tmp_path / "payload.bin"
    payload.write_bytes(b"x" * 200_000)
    spec = {
        "name": "refused",
        "epochs": 1,
        "max_failures": 0,
        "strategies": [
            {"name": "bit_learning", "params": {"payload": str(payload), "lr": 0.001}, "trials": 1}
        ],
    }
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    monkeypatch.setenv("BITSWEEP_HOME", str(tmp_path / "data"))
    assert main(["sweep", str(path)]) == 0
    captured = capsys.readouterr()
    printed = captured.out
    # No terminal: one plain line per trial event on stderr, the failure with its reason.
    events = [ln for ln in captured.err.splitlines() if " bit_learning trial " in ln]
    assert any(ln.endswith(" started") for ln in events), captured.err
    assert any(" failed: params.payload: 200000 bytes do not fit" in ln for ln in events)
    assert "0 trials completed, 1 failed" in printed
    assert (
        "failed: bit_learning trial" in printed
        and "params.payload: 200000 bytes do not fit" in (" ".join(printed.split()))
    )
    plan = plan_sweep(SweepSpec.model_validate(spec), home=tmp_path / "data")
    client = MlflowClient(plan.tracking_uri)
    exp = client.get_experiment_by_name("bitsweep/digits/mlp")
    (run,) = client.search_runs([exp.experiment_id], "tags.`bitsweep.kind` = 'trial'")
    assert run.info.status == "FAILED"
    assert run.data.tags["bitsweep.error_field"] == "params.payload"
    assert run.data.tags["bitsweep.error"].startswith("params.payload: 200000 bytes do not fit")


def test_rerun_reproduces_a_trials_metrics_exactly(sqlite_sweep, capsys):
    _, plan, summary = sqlite_sweep
    run_id = summary.best["full_precision"]["run_id"]
    assert main(["rerun", run_id, "--tracking-uri", plan.tracking_uri, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["reproduced"] is True and report["differences"] == {}
    assert report["threads"] == 1  # a one-CPU Tune trial; the rerun used the same
    assert report["rerun"]["test_accuracy"] == report["recorded"]["test_accuracy"]


@pytest.mark.parametrize(
    ("which", "reason"),
    [("parent", "is not a bitsweep trial"), ("unknown", "no run 'ffff' in this tracking store")],
)
def test_rerun_refuses_what_is_not_a_finished_trial(sqlite_sweep, capsys, which, reason):
    _, plan, summary = sqlite_sweep
    run_id = summary.parent_run_id if which == "parent" else "ffff"
    assert main(["rerun", run_id, "--tracking-uri", plan.tracking_uri]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: run_id:") and reason in err[0]


def test_remove_deletes_everything_a_sweep_wrote(tmp_path, monkeypatch, capsys):
    home = tmp_path / "data"
    spec = SweepSpec.model_validate(
        {"name": "gone", "epochs": 1, "strategies": [{"name": "full_precision", "trials": 1}]}
    )
    plan = plan_sweep(spec, home=home)
    summary = run_sweep(plan)
    monkeypatch.setenv("BITSWEEP_HOME", str(home))
    assert main(["remove", summary.sweep_id, "--yes"]) == 0
    client = MlflowClient(plan.tracking_uri)
    exp = client.get_experiment_by_name("bitsweep/digits/mlp")
    assert client.search_runs([exp.experiment_id]) == []  # in MLflow's trash
    assert optuna.get_all_study_summaries(plan.optuna_url) == []
    assert not (home / "ray" / summary.sweep_id).exists()
    assert not (home / "sweeps" / f"{summary.sweep_id}.json").exists()
    assert main(["remove", summary.sweep_id, "--yes"]) == 2


def test_leaderboard_fits_160_columns_with_whole_strategy_names(sqlite_sweep, monkeypatch, capsys):
    home, _, _ = sqlite_sweep
    monkeypatch.setenv("BITSWEEP_HOME", str(home))
    assert main(["leaderboard"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert max(len(ln) for ln in lines) <= 160
    assert any("full_precision" in ln for ln in lines)


def test_two_objective_sweep_reports_the_pareto_front_per_strategy(tmp_path, monkeypatch, capsys):
    spec = {
        "name": "front",
        "epochs": 1,
        "max_failures": 0,
        "strategies": [{"name": "bit_learning", "trials": 3}],
        "objectives": [
            {"metric": "best_val_accuracy", "mode": "max"},
            {"metric": "weight_bits", "mode": "min"},
        ],
        "confirmation": {"seeds": 2},
    }
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    monkeypatch.setenv("BITSWEEP_HOME", str(tmp_path / "data"))
    assert main(["sweep", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    objectives = ["best_val_accuracy:max", "weight_bits:min"]
    assert "best" not in out and out["objectives"] == objectives
    front = out["pareto"]["bit_learning"]
    assert 1 <= len(front) <= 3 and all(p["metrics"]["seeds"] == 2 for p in front)
    for a in front:  # no config of the front beats another on both validation objectives
        for b in front:
            ma, mb = a["metrics"], b["metrics"]
            assert not (
                ma["val_accuracy"] >= mb["val_accuracy"]
                and ma["weight_bits"] <= mb["weight_bits"]
                and (ma["val_accuracy"], ma["weight_bits"])
                != (mb["val_accuracy"], mb["weight_bits"])
            )


def _digits_npz(path: Path, *, shuffle_test: bool) -> str:
    """scikit-learn's digits as an npz dataset; with `shuffle_test` its test labels permuted."""
    import numpy as np
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    y_test = y[1400:].copy()
    if shuffle_test:
        np.random.default_rng(1).shuffle(y_test)
    np.savez(path, x_train=x[:1400], y_train=y[:1400], x_test=x[1400:], y_test=y_test)
    return f"npz:{path}"


def test_selection_cannot_read_the_test_split(tmp_path):
    """The same sweep on digits and on digits with its test labels shuffled selects and
    confirms exactly the same configs with the same validation numbers: nothing that chooses
    reads the test split. Only the reported test accuracy differs (chance, once shuffled)."""
    from runners.board import query_leaderboard

    boards = {}
    for shuffled in (False, True):
        home = tmp_path / f"home-{shuffled}"
        dataset = _digits_npz(tmp_path / f"digits-{shuffled}.npz", shuffle_test=shuffled)
        spec = SweepSpec.model_validate(
            {
                "name": "blind",
                "dataset": dataset,
                "epochs": 2,
                "trials_per_strategy": 2,
                "confirmation": {"seeds": 2},
                "strategies": [
                    {"name": "full_precision", "search": {"lr": [0.0005, 0.05]}},
                    {"name": "wrn_1bit", "search": {"lr": [0.0005, 0.05]}},
                ],
            }
        )
        plan = plan_sweep(spec, home=home)
        summary = run_sweep(plan)
        (board,) = query_leaderboard(plan.tracking_uri, sweep_id=summary.sweep_id)
        boards[shuffled] = {r.strategy: r for r in board.rows}
    plain, shuffled_rows = boards[False], boards[True]
    assert plain.keys() == shuffled_rows.keys() == {"full_precision", "wrn_1bit"}
    for name in plain:
        a, b = plain[name], shuffled_rows[name]
        assert a.params == b.params and a.val_accuracy == b.val_accuracy
        assert a.status == b.status == "confirmed" and a.test.n == b.test.n == 2
        # Reported on the test split, as it is: chance (0.1 of 10 classes) once shuffled.
        assert b.test.mean < 0.2 and a.test.mean > b.test.mean


def test_each_finished_trial_is_a_logged_model_that_loads_and_scores_its_test_accuracy(
    sqlite_sweep,
):
    import mlflow
    import mlflow.pyfunc

    from runners.engine.data import _read

    _, plan, summary = sqlite_sweep
    client = MlflowClient(plan.tracking_uri)
    raw = _read("digits")  # the test split as its file holds it: the model standardizes it
    x_test, y_test = np.asarray(raw.x_test, dtype=np.float32), np.asarray(raw.y_test)
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(plan.tracking_uri)  # `models:/<id>` is looked up in this store
    try:
        for run in children(client, summary.parent_run_id):
            (output,) = run.outputs.model_outputs
            model = client.get_logged_model(output.model_id)
            assert model.source_run_id == run.info.run_id
            assert model.tags["bitsweep.trial_id"] == run.data.tags["bitsweep.trial_id"]
            loaded = mlflow.pyfunc.load_model(f"models:/{output.model_id}")
            logits = loaded.predict(x_test)
            accuracy = float((logits.argmax(1) == y_test).mean())
            assert accuracy == pytest.approx(run.data.metrics["test_accuracy"], abs=1e-12)
    finally:
        mlflow.set_tracking_uri(before)


def test_the_parent_run_shows_the_pareto_plot_as_an_image(sqlite_sweep):
    _, plan, summary = sqlite_sweep
    client = MlflowClient(plan.tracking_uri)
    images = [a.path for a in client.list_artifacts(summary.parent_run_id, "images")]
    assert any(p.startswith("images/pareto+step+0") and p.endswith(".png") for p in images)


def test_the_experiment_holds_mlflows_view_of_the_board(sqlite_sweep):
    import json

    from runners.sweep.tracking import BOARD_VIEW, board_view_url
    from schemas.names import TRIAL_METRICS

    _, plan, summary = sqlite_sweep
    client = MlflowClient(plan.tracking_uri)
    exp = client.get_experiment(summary.experiment_id)
    view = json.loads(exp.tags["mlflow.sharedViewState.bitsweep-board"])
    assert view == BOARD_VIEW
    # The view's filter and columns name what the runs hold: the confirmation runs, and
    # metrics every one of them has.
    confirm = client.search_runs([exp.experiment_id], view["searchFilter"])
    assert len(confirm) == 3 and {r.data.tags["bitsweep.phase"] for r in confirm} == {"confirm"}
    columns = [c.removeprefix("metrics.`").removesuffix("`") for c in view["selectedColumns"]]
    assert set(columns) <= set(TRIAL_METRICS)
    assert all(set(columns) <= set(r.data.metrics) for r in confirm)
    assert view["groupBy"] == "tag.average.bitsweep.strategy"
    assert board_view_url(exp.experiment_id).endswith(
        f"/#/experiments/{exp.experiment_id}/runs?viewStateShareKey=bitsweep-board"
        "&workflowType=machine_learning"
    )

"""What the fault tests read back: a sweep's runs in MLflow and its trials in Optuna."""

from __future__ import annotations

from typing import Any


def sweep_records(
    tracking_uri: str, optuna_url: str, sweep_id: str, strategy: str
) -> tuple[list[Any], Any, dict[str, list[Any]]]:
    """(trial runs, parent run, Optuna trials of `strategy` by state name) of a sweep."""
    import optuna
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    exps = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(exps, f"tags.`bitsweep.sweep_id` = '{sweep_id}'", max_results=1000)
    trials = [r for r in runs if r.data.tags.get("bitsweep.kind") == "trial"]
    (parent,) = [r for r in runs if r.data.tags.get("bitsweep.kind") == "sweep"]
    storage = optuna.storages.RDBStorage(optuna_url)
    study = optuna.load_study(study_name=f"{sweep_id}/{strategy}", storage=storage)
    by_state: dict[str, list[Any]] = {}
    for t in study.get_trials(deepcopy=False):
        by_state.setdefault(t.state.name, []).append(t)
    return trials, parent, by_state


def wait_healthy(url: str, proc: Any, log: Any, what: str, timeout: float = 120.0) -> None:
    """Wait until `url` answers 200, while `proc` (writing to the file `log`) lives."""
    import time

    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"{what} exited:\n{log.read_text()[-3000:]}"
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{what} did not answer:\n{log.read_text()[-3000:]}")


def assert_invariants(
    trials: list[Any], parent: Any, optuna_trials: dict[str, list[Any]], *, finished: bool
) -> None:
    """What every fault test ends by checking: each trial once in MLflow, each confirmation
    (a confirmed trial and a seed) once, no run or Optuna trial left RUNNING, each search
    trial's end told to Optuna once, and Optuna and MLflow agreeing on which search trials
    finished; the parent run FINISHED, or KILLED when the sweep stopped."""
    from collections import Counter

    assert not [r for r in trials if r.info.status == "RUNNING"], "a trial run left RUNNING"
    assert "RUNNING" not in optuna_trials, "an Optuna trial left RUNNING"
    ids = Counter(r.data.tags["bitsweep.trial_id"] for r in trials)
    assert set(ids.values()) <= {1}, f"a trial logged twice: {ids}"
    confirmations = Counter(
        (r.data.tags["bitsweep.confirms_trial"], r.data.params["seed"])
        for r in trials
        if r.data.tags.get("bitsweep.phase") == "confirm"
    )
    assert set(confirmations.values()) <= {1}, f"a confirmation run twice: {confirmations}"
    told = Counter(
        t.user_attrs.get("bitsweep.tune_trial_id") for t in optuna_trials.get("COMPLETE", [])
    )
    assert set(told.values()) <= {1}, f"a trial's end told to Optuna twice: {told}"
    done = {
        r.data.tags["bitsweep.trial_id"]
        for r in trials
        if r.info.status == "FINISHED" and r.data.tags.get("bitsweep.phase") != "confirm"
    }
    assert set(told) == done, (told, done)
    assert parent.info.status == ("FINISHED" if finished else "KILLED")

"""A sweep killed mid-way and resumed ends with every trial recorded exactly once."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow

SPEC = {
    "name": "resumable",
    "epochs": 12,
    "trials_per_strategy": 4,
    "max_concurrent_trials": 1,
    "confirmation": {"enabled": False},  # a kill in the search; the confirmation's own test
    # (test_sweep_interrupt) stops one in the confirmation
    # small batches make each trial take a few seconds, so the kill lands inside one
    "strategies": [{"name": "full_precision", "params": {"batch_size": 8}}],
}


def trials(db: Path, status: str) -> set[str]:
    """Run ids of trials in `status`, read straight from MLflow's SQLite file."""
    if not db.exists():
        return set()
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as conn:
            rows = conn.execute(
                "select r.run_uuid from runs r join tags t on t.run_uuid = r.run_uuid "
                "where t.key = 'bitsweep.kind' and t.value = 'trial' and r.status = ?",
                (status,),
            ).fetchall()
        return {row[0] for row in rows}
    except sqlite3.Error:
        return set()


def test_killed_sweep_resumes_with_every_trial_once(tmp_path: Path):
    home = tmp_path / "data"
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    env = {**os.environ, "BITSWEEP_HOME": str(home)}
    cmd = [sys.executable, "-m", "service.cli", "sweep", str(spec), "--json"]
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        deadline = time.time() + 400
        # kill once a trial has finished and the next one is under way
        db = home / "mlflow.db"
        while not (trials(db, "FINISHED") and trials(db, "RUNNING")):
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.time() < deadline, "no trial finished in time"
            time.sleep(0.2)
    finally:
        # Kill the driver and the Ray processes it started, as a lost machine would.
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    before = trials(home / "mlflow.db", "FINISHED")
    assert 0 < len(before) < 4

    resumed = subprocess.run(
        [*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=900
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads(resumed.stdout)

    client = MlflowClient(summary["tracking_uri"])
    exp = client.get_experiment_by_name(summary["experiment"]).experiment_id
    runs = client.search_runs([exp], filter_string="tags.`bitsweep.kind` = 'trial'")
    trial_ids = [r.data.tags["bitsweep.trial_id"] for r in runs]
    assert len(runs) == 4 and len(set(trial_ids)) == 4
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert summary["completed"] == 4 and summary["failed"] == 0
    # trials finished before the kill were not trained again: one value per epoch
    for run_id in before:
        steps = [m.step for m in client.get_metric_history(run_id, "val_accuracy")]
        assert sorted(steps) == list(range(1, 13))
    study = optuna.load_study(
        study_name=f"{summary['sweep_id']}/full_precision",
        storage=f"sqlite:///{home / 'optuna.db'}",
    )
    assert not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
    parents = client.search_runs([exp], filter_string="tags.`bitsweep.kind` = 'sweep'")
    assert len(parents) == 1 and parents[0].info.run_id == summary["parent_run_id"]

"""The service end to end: `bitsweep serve` as a real process (uvicorn on 127.0.0.1) with the
local Ray head it starts for itself, driven over HTTP with `service.cli.client`.

A sweep submitted over HTTP runs as a Ray job and is followed to success, then read on the
leaderboard and the page; a second one waits queued while the first runs; another is cancelled
mid-way; the service is killed (SIGKILL) mid-sweep and started again, and finds the sweep's
row intact and the sweep finished once. Every test runs with the service's database on SQLite
and on PostgreSQL.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from faults import wait_healthy

from service.cli.client import Client, ServiceRefused
from service.jobs import free_port

pytestmark = pytest.mark.slow

TOKEN = "e2e-token-0123456789abcdef"
TINY = {
    "dataset": "digits",
    "model": "mlp",
    "epochs": 1,
    "trials_per_strategy": 2,
    "confirmation": {"seeds": 2},
    "strategies": [{"name": "full_precision"}, {"name": "bit_learning"}],
}


# A password planted in the PostgreSQL stores' URLs (the server trusts loopback and ignores
# it): no answer, log line, artifact or output of the service may show it.
SECRET = "pw-Zq8fK2mX9"


def with_password(url: str) -> str:
    return url.replace("postgresql://postgres@", f"postgresql://postgres:{SECRET}@", 1)


class ServiceProcess:
    """`bitsweep serve` in a process of its own, on a free loopback port."""

    def __init__(
        self, home: Path, database_url: str | None, stores: dict[str, str] | None = None
    ) -> None:
        self.home = home
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.tracking = (stores or {}).get("tracking", f"sqlite:///{home / 'mlflow.db'}")
        self.optuna = (stores or {}).get("optuna", f"sqlite:///{home / 'optuna.db'}")
        self.env = {
            **os.environ,
            "BITSWEEP_HOME": str(home),
            "BITSWEEP_TOKENS": f"ci={TOKEN}",
            "BITSWEEP_POLL_SECONDS": "0.5",
            "BITSWEEP_RAY_CPUS": "2",
            "BITSWEEP_MLFLOW_UI_URL": "http://mlflow.example:5000",
        }
        if database_url is not None:
            self.env["BITSWEEP_DATABASE_URL"] = database_url
        if stores is not None:
            self.env["BITSWEEP_TRACKING_URI"] = self.tracking
            self.env["BITSWEEP_OPTUNA_STORAGE"] = self.optuna
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = home.parent / "service.log"

    def start(self, timeout: float = 120.0) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "service.cli", "serve", "--port", str(self.port)],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_healthy(f"{self.url}/health", self.proc, self.log, "the service", timeout)

    def kill(self) -> None:
        """SIGKILL: no shutdown at all (the Ray head, in a session of its own, lives on)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        head = self.home / "ray-head.json"
        if head.exists():  # a head the service could not stop: never leave it running
            pid = json.loads(head.read_text())["pid"]
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def client(self, token: str | None = TOKEN) -> Client:
        return Client(self.url, token=token)


@contextlib.contextmanager
def ray_defaults_taken() -> Iterator[list[int]]:
    """Ray's default ports that another Ray on the machine would hold (the dashboard agent's
    52365, the client server's 10001, the GCS's 6379) held by listeners: the ones that could
    be taken here."""
    held, taken = [], []
    for port in (52365, 10001, 6379):
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", port))
            s.listen()
        except OSError:
            s.close()
            continue
        held.append(s)
        taken.append(port)
    try:
        yield taken
    finally:
        for s in held:
            s.close()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def service(request, tmp_path_factory) -> Iterator[ServiceProcess]:
    """The service on SQLite; or on PostgreSQL, its stores' URLs holding a password, a
    `RAY_ADDRESS` in its environment that names no cluster (it runs its own), and Ray's default
    ports held by other listeners (its head takes ports of its own)."""
    database_url, stores = None, None
    if request.param == "postgresql":
        pg = request.getfixturevalue("module_pg_database")
        database_url = pg("service")
        stores = {"tracking": with_password(pg("mlflow")), "optuna": with_password(pg("optuna"))}
    home = tmp_path_factory.mktemp(f"e2e-{request.param}") / "home"
    svc = ServiceProcess(home, database_url, stores)
    with contextlib.ExitStack() as stack:
        if stores is not None:
            svc.env["RAY_ADDRESS"] = f"127.0.0.1:{free_port()}"
            stack.enter_context(ray_defaults_taken())
        svc.start()
        yield svc
        svc.stop()
    assert not (home / "ray-head.json").exists(), "the service left its Ray head running"


def mlflow_runs(svc: ServiceProcess, sweep_id: str) -> list[Any]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(svc.tracking)
    exps = [e.experiment_id for e in client.search_experiments()]
    return list(
        client.search_runs(
            exps, filter_string=f"tags.`bitsweep.sweep_id` = '{sweep_id}'", max_results=10000
        )
    )


def assert_invariants(svc: ServiceProcess, sweep_id: str, planned: int | None) -> list[Any]:
    """Each trial once in MLflow, no run left RUNNING; returns the trial runs."""
    runs = mlflow_runs(svc, sweep_id)
    running = [r.info.run_id for r in runs if r.info.status == "RUNNING"]
    assert not running, f"runs left RUNNING: {running}"
    trials = [r for r in runs if r.data.tags.get("bitsweep.kind") == "trial"]
    ids = Counter(r.data.tags["bitsweep.trial_id"] for r in trials)
    assert all(n == 1 for n in ids.values()), f"trials logged twice: {ids}"
    if planned is not None:
        assert sorted(r.info.status for r in trials) == ["FINISHED"] * planned
    return trials


def wait_for(predicate, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_sweeps_submitted_over_http_run_in_order_to_success(service: ServiceProcess):
    with service.client() as c:
        first = c.submit({"name": "e2e-first", **TINY})
        # The second waits its turn; what it confirms is the first's to show.
        second = c.submit({"name": "e2e-second", **TINY, "confirmation": {"enabled": False}})
        assert first.status == "queued" and first.submitted_by == "ci"
        # One sweep at a time (the default limit): the second waits queued while the first runs.
        wait_for(lambda: c.sweep(first.id).status == "running", 60, "the first sweep to run")
        assert c.sweep(second.id).status == "queued"
        done = c.wait(first.id, timeout=300, poll=1)
        assert done.status == "succeeded", c.logs(first.id)
        assert done.trials.model_dump() == {  # 2 search trials and 2 confirmations a strategy
            "planned": 8,
            "done": 8,
            "running": 0,
            "failed": 0,
            "killed": 0,
        }
        assert set(done.best) == {"full_precision", "bit_learning"}
        best = done.best["full_precision"]
        assert best.metric == "best_val_accuracy" and best.value is not None
        assert 0 < best.value <= 1 and best.metrics["seeds"] == 2
        assert best.link == (
            f"http://mlflow.example:5000/#/experiments/{done.experiment_id}/runs/{best.run_id}"
        )
        assert done.ray_job_id == f"bitsweep-{first.id}"
        later = c.wait(second.id, timeout=300, poll=1)
        assert later.status == "succeeded"
        assert later.started_at is not None and done.finished_at is not None
        assert later.started_at >= done.started_at

        board = c.leaderboard(sweep=first.id)
        (only,) = board.boards
        assert only.scope == "sweep" and only.sweep_id == first.id
        assert {r["strategy"] for r in only.rows} == {"full_precision", "bit_learning"}
        assert {r["status"] for r in only.rows} == {"confirmed"}
        assert all(r["test_accuracy_ci_low"] <= r["test_accuracy"] for r in only.rows)
        every = c.leaderboard(dataset="digits", model="mlp", every=True)
        assert set(every.boards[0].sweeps) >= {first.id, second.id}
        png = c.pareto_png("digits", "mlp", sweep=first.id)
        assert png.startswith(b"\x89PNG")
        logs = c.logs(first.id)
        assert "finished: best_val_accuracy" in logs and "confirms trial" in logs
        page = httpx.get(f"{service.url}/").text
        assert first.id in page and "full_precision" in page and 'class="leaderboard"' in page
        with pytest.raises(ServiceRefused) as refused:
            c.cancel(first.id)
        assert refused.value.status == 409
    assert_invariants(service, first.id, planned=8)
    from mlflow.tracking import MlflowClient

    parent = MlflowClient(service.tracking).get_run(done.parent_run_id)
    assert parent.info.status == "FINISHED"
    if SECRET in service.tracking:
        assert_no_password_shown(service, first.id, done.parent_run_id)


def assert_no_password_shown(svc: ServiceProcess, sweep_id: str, parent_run_id: str) -> None:
    """The planted password is in no answer of the API (found or refused, with or without a
    token), no job log, no MLflow artifact of the sweep, no line of the service's own log; the
    state file that holds it (for `--resume` and `bitsweep remove`) is its owner's alone."""
    import stat

    import httpx
    from mlflow.tracking import MlflowClient

    answers = []
    for path in (
        "/health",
        "/sweeps",
        f"/sweeps/{sweep_id}",
        f"/sweeps/{sweep_id}/logs",
        "/leaderboard",
        f"/leaderboard?sweep={sweep_id}",
        "/leaderboard?dataset=nope",
        "/leaderboard?sweep=nope",
        "/leaderboard/pareto.png?dataset=nope&model=mlp",
        "/leaderboard/pareto.png?dataset=digits&model=mlp&sweep=nope",
        "/",
    ):
        for headers in ({}, {"Authorization": f"Bearer {TOKEN}"}):
            r = httpx.get(f"{svc.url}{path}", headers=headers, timeout=60)
            answers.append((path, r.status_code, r.text))
    r = httpx.post(f"{svc.url}/sweeps/nope/cancel", timeout=60)
    answers.append(("cancel", r.status_code, r.text))
    shown = [(p, code) for p, code, text in answers if SECRET in text]
    assert not shown, f"the password is in the answers of {shown}"
    assert {code for p, code, _ in answers if "nope" in p} <= {404, 422, 401}
    client = MlflowClient(svc.tracking)
    folder = Path(client.download_artifacts(parent_run_id, "", str(svc.home.parent / "art")))
    for f in folder.rglob("*"):
        if f.is_file() and f.suffix in (".json", ".md", ".csv", ".txt"):
            assert SECRET not in f.read_text(errors="replace"), f
    spec = json.loads((folder / "spec.json").read_text())
    assert spec["tracking_uri"].startswith("postgresql://postgres:***@")
    assert SECRET not in svc.log.read_text(errors="replace")
    for state in (svc.home / "sweeps").glob("*.json"):
        assert stat.S_IMODE(state.stat().st_mode) == 0o600, state


def test_a_sweep_cancelled_midway_keeps_its_finished_trials(service: ServiceProcess):
    long = {
        **TINY,
        "name": "e2e-cancel",
        "epochs": 40,
        "trials_per_strategy": 6,
        "strategies": [{"name": "full_precision"}],
    }
    with service.client() as c:
        sweep = c.submit(long)
        wait_for(lambda: c.sweep(sweep.id).trials.done >= 1, 240, "a finished trial")
        cancelled = c.cancel(sweep.id)
        assert cancelled.status == "cancelled", cancelled
        detail = c.sweep(sweep.id)
        assert detail.status == "cancelled" and detail.cancel_requested
        assert 1 <= detail.trials.done < 6
        (board,) = c.leaderboard(sweep=sweep.id).boards
        assert [r["strategy"] for r in board.rows] == ["full_precision"]
    trials = assert_invariants(service, sweep.id, planned=None)
    assert {r.info.status for r in trials} <= {"FINISHED", "KILLED"}
    from mlflow.tracking import MlflowClient

    parent = MlflowClient(service.tracking).get_run(detail.parent_run_id)
    assert parent.info.status == "KILLED"
    import optuna

    storage = optuna.storages.RDBStorage(service.optuna)
    for summary in optuna.get_all_study_summaries(storage):
        if summary.study_name.startswith(sweep.id):
            study = optuna.load_study(study_name=summary.study_name, storage=storage)
            states = {t.state for t in study.get_trials(deepcopy=False)}
            assert optuna.trial.TrialState.RUNNING not in states


def test_a_killed_service_restarts_and_every_accepted_sweep_runs_once(service: ServiceProcess):
    """A burst of submits and reads, then SIGKILL with one sweep running and the burst queued:
    after the restart the running row is intact and followed, and every accepted sweep runs
    exactly once (one Ray job, one MLflow parent run, its trials once)."""
    from concurrent.futures import ThreadPoolExecutor

    spec = {
        **TINY,
        "name": "e2e-restart",
        "epochs": 12,
        "trials_per_strategy": 4,
        "confirmation": {"enabled": False},  # a restart of the service; the sweep's own
        "strategies": [{"name": "full_precision"}],
    }
    burst = {
        **TINY,
        "trials_per_strategy": 1,
        "confirmation": {"enabled": False},
        "strategies": [{"name": "full_precision"}],
    }
    with service.client() as c:
        sweep = c.submit(spec)
        wait_for(lambda: c.sweep(sweep.id).trials.done >= 1, 240, "a finished trial")

        def submit(i: int) -> str:
            with service.client() as own:
                return own.submit({**burst, "name": f"e2e-burst-{i}"}).id

        def read(i: int) -> int:
            with service.client() as own:
                return own.sweeps().total + len(own.leaderboard().boards)

        with ThreadPoolExecutor(6) as pool:
            submitted = pool.map(submit, range(2))
            reads = pool.map(read, range(6))
            queued = list(submitted)
            assert all(n >= 1 for n in reads)
        before = c.sweep(sweep.id)
        assert [c.sweep(q).status for q in queued] == ["queued"] * 2  # behind the running one
    assert before.status == "running"
    service.kill()
    service.start()
    with service.client() as c:
        after = c.sweep(sweep.id)
        # The row is intact: the same sweep, job, submitter and times.
        for key in ("id", "ray_job_id", "submitted_by", "created_at", "started_at", "spec"):
            assert getattr(after, key) == getattr(before, key), key
        done = c.wait(sweep.id, timeout=300, poll=1)
        ended = [c.wait(q, timeout=300, poll=1) for q in queued]
    assert done.status == "succeeded", done.error
    assert done.ray_job_id == before.ray_job_id  # followed, not submitted again
    assert done.trials.done == 4
    assert_invariants(service, sweep.id, planned=4)
    assert [e.status for e in ended] == ["succeeded"] * 2, [e.error for e in ended]
    assert len({e.ray_job_id for e in ended}) == 2
    for q in queued:
        parents = [
            r for r in mlflow_runs(service, q) if r.data.tags.get("bitsweep.kind") == "sweep"
        ]
        assert len(parents) == 1, q
        assert_invariants(service, q, planned=1)

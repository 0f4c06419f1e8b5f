"""A sweep whose PostgreSQL server restarts mid-sweep: its MLflow and Optuna writes are retried
with backoff, the sweep finishes, nothing is lost or duplicated.

The server is a PostgreSQL instance of the test's own (`initdb` on a free port, in the test's
folder), so the machine's own server is left alone; the sweep is `bitsweep sweep` as a real
process. The retry layer's decisions are tested on their own below.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy
from faults import assert_invariants, sweep_records, wait_healthy

from runners.sweep.retry import retried, transient
from service.jobs import free_port

PG_BINS = sorted(Path("/usr/lib/postgresql").glob("*/bin"))


class OwnPostgres:
    """A throwaway PostgreSQL server: its own data folder, port and socket folder."""

    def __init__(self, root: Path) -> None:
        assert PG_BINS, "PostgreSQL's server programs are missing (Debian's postgresql package)"
        self.bin = PG_BINS[-1]
        self.data, self.sockets, self.log = root / "pgdata", root / "pgsock", root / "pg.log"
        self.port = free_port()
        for folder in (self.data, self.sockets):
            folder.mkdir(parents=True)
        self.as_postgres = os.geteuid() == 0  # the server refuses to run as root
        if self.as_postgres:
            shutil.chown(root, "postgres")
            for path in (self.data, self.sockets):
                shutil.chown(path, "postgres")
        self.run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres")

    def run(self, program: str, *args: str) -> None:
        command = [str(self.bin / program), *args]
        if self.as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{program} failed:\n{done.stdout}\n{done.stderr}"

    def start(self) -> None:
        options = f"-p {self.port} -k {self.sockets} -c listen_addresses=127.0.0.1"
        self.run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.log), "-w", "start")

    def stop(self) -> None:
        self.run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create(self, database: str) -> str:
        engine = sqlalchemy.create_engine(self.url(), isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text(f'CREATE DATABASE "{database}"'))
        engine.dispose()
        return self.url(database)


@pytest.fixture
def own_postgres() -> Iterator[OwnPostgres]:
    # Outside pytest's folders, which the postgres user may not enter.
    root = Path(tempfile.mkdtemp(prefix="bitsweep-pg-"))
    pg = OwnPostgres(root)
    pg.start()
    yield pg
    with contextlib.suppress(AssertionError):  # already stopped
        pg.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_postgresql_restarted_mid_sweep_loses_and_duplicates_nothing(tmp_path, own_postgres):
    pg = own_postgres
    spec = {
        "name": "pg-restart",
        "dataset": "digits",
        "model": "mlp",
        "epochs": 6,
        "trials_per_strategy": 4,
        "confirmation": {"enabled": False},  # every write is retried alike, of either phase
        "strategies": [{"name": "bit_learning"}],
        "tracking_uri": pg.create("mlflow"),
        "optuna_storage": pg.create("optuna"),
    }

    def restart() -> None:
        pg.stop()
        time.sleep(5)  # the server is down for five seconds
        pg.start()

    summary, err, down = run_and_restart(tmp_path, spec, restart)
    retries = re.findall(r"failed \(.*\); retry \d+ in", err)
    assert retries, "the restart did not reach the sweep's writes"
    assert summary["completed"] == 4 and summary["failed"] == 0
    trials, parent, optuna_trials = sweep_records(
        spec["tracking_uri"], spec["optuna_storage"], summary["sweep_id"], "bit_learning"
    )
    assert sorted(r.info.status for r in trials) == ["FINISHED"] * 4
    assert_invariants(trials, parent, optuna_trials, finished=True)
    print(
        f"\nPostgreSQL down {down:.1f} s; {len(retries)} writes retried; 4 of 4 trials, once each"
    )


# -- the retry layer alone -------------------------------------------------------------------


def test_connection_failures_are_transient_and_others_are_not():
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, TEMPORARILY_UNAVAILABLE

    refused = sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("connection refused"))
    assert transient(refused)
    assert transient(MlflowException("db down", error_code=TEMPORARILY_UNAVAILABLE))
    wrapped = RuntimeError("storage failed")
    wrapped.__cause__ = refused
    assert transient(wrapped)
    assert not transient(MlflowException("no such run", error_code=RESOURCE_DOES_NOT_EXIST))
    assert not transient(ValueError("bad param"))
    assert not transient(sqlalchemy.exc.IntegrityError("INSERT", {}, Exception("duplicate key")))


def test_retried_waits_out_transient_failures_and_raises_the_rest(monkeypatch):
    import runners.sweep.retry as retry

    waits: list[float] = []
    monkeypatch.setattr(time, "sleep", waits.append)  # what tenacity sleeps with
    calls = {"n": 0}

    def flaky() -> str:
        calls["n"] += 1
        if calls["n"] < 4:
            raise sqlalchemy.exc.OperationalError(
                "x", {}, Exception("server closed the connection")
            )
        return "ok"

    assert retried(flaky)() == "ok"
    assert waits == [0.5, 1.0, 2.0]  # exponential backoff

    def wrong() -> None:
        calls["n"] += 1
        raise ValueError("not a store's fault")

    calls["n"] = 0
    with pytest.raises(ValueError):
        retried(wrong)()
    assert calls["n"] == 1  # not retried

    monkeypatch.setattr(retry, "RETRY_SECONDS", 0.1)

    def down() -> None:
        raise sqlalchemy.exc.OperationalError("x", {}, Exception("connection refused"))

    with pytest.raises(sqlalchemy.exc.OperationalError):
        retried(down)()  # gives up once the time is spent


class MlflowServer:
    """`mlflow server` on loopback, its runs in PostgreSQL, its artifacts in a folder."""

    def __init__(self, backend: str, artifacts: Path, log: Path) -> None:
        self.backend, self.artifacts, self.log = backend, artifacts, log
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 120.0) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "mlflow",
                    "server",
                    "--backend-store-uri",
                    self.backend,
                    "--artifacts-destination",
                    str(self.artifacts),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--workers",
                    "1",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_healthy(f"{self.url}/health", self.proc, self.log, "mlflow server", timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            self.proc.wait(60)


def run_and_restart(tmp_path: Path, spec: dict, restart) -> tuple[dict, str, float]:
    """Run `bitsweep sweep` on `spec`; once its first trial has finished, `restart()` the
    store. Returns the summary, the stderr and the seconds the restart took."""
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    proc = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "sweep", str(path), "--json"],
        env={**os.environ, "BITSWEEP_HOME": str(tmp_path / "home")},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    seen = []
    while True:
        line = proc.stderr.readline()
        assert line, "the sweep ended before its first trial finished:\n" + "".join(seen)
        seen.append(line)
        if "finished: best_val_accuracy" in line:
            break
    started = time.monotonic()
    restart()
    down = time.monotonic() - started
    out, rest = proc.communicate(timeout=600)
    err = "".join(seen) + rest
    assert proc.returncode == 0, err
    return json.loads(out), err, down


@pytest.mark.slow
def test_mlflow_server_restarted_mid_sweep_loses_and_duplicates_nothing(tmp_path, own_postgres):
    server = MlflowServer(
        own_postgres.create("mlflow"), tmp_path / "mlartifacts", tmp_path / "m.log"
    )
    server.start()
    optuna_url = own_postgres.create("optuna")
    spec = {
        "name": "server-restart",
        "dataset": "digits",
        "model": "mlp",
        "epochs": 6,
        "trials_per_strategy": 4,
        "confirmation": {"enabled": False},  # every write is retried alike, of either phase
        "strategies": [{"name": "bit_learning"}],
        "tracking_uri": server.url,
        "optuna_storage": optuna_url,
    }

    def restart() -> None:
        server.stop()
        time.sleep(5)
        server.start()

    try:
        summary, _err, down = run_and_restart(tmp_path, spec, restart)
        trials, parent, optuna_trials = sweep_records(  # read from the restarted server
            server.url, optuna_url, summary["sweep_id"], "bit_learning"
        )
    finally:
        server.stop()
    assert summary["completed"] == 4 and summary["failed"] == 0
    assert sorted(r.info.status for r in trials) == ["FINISHED"] * 4
    assert_invariants(trials, parent, optuna_trials, finished=True)
    print(f"\nMLflow server down {down:.1f} s; 4 of 4 trials once")

"""Sweeps as Ray jobs: the local Ray head the embedded service starts, and Ray's job API.

Each sweep runs on the cluster as one Ray job whose entrypoint is `bitsweep sweep spec.json
--sweep-id ID` (with `--resume` when it continues), the spec travelling in the job's
`working_dir`. The job's submission id is `bitsweep-<sweep id>` (then `-2`, `-3` for later
attempts), so a service that stopped between submitting and recording can ask Ray whether the
job exists instead of submitting it twice.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Ray 2.60 authenticates its dashboard and job API with a token; a local head started by the
# service and the service's job client both need this mode (the token is in ~/.ray).
AUTH_ENV = {"RAY_AUTH_MODE": "token"}
HEAD_FILE = "ray-head.json"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_ports(n: int) -> list[int]:
    """`n` distinct free ports on loopback (held open together while they are chosen)."""
    with contextlib.ExitStack() as stack:
        found = []
        for _ in range(n):
            s = stack.enter_context(socket.socket())
            s.bind(("127.0.0.1", 0))
            found.append(int(s.getsockname()[1]))
        return found


# What Ray reads to choose a cluster: never the service's to inherit from a shell, which may
# name another cluster (its jobs, with the stores' URLs, would go there).
RAY_ADDRESS_ENV = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")
# What the local head (and every job on it) must not inherit from the service.
PRIVATE_ENV = (
    "BITSWEEP_TOKENS",
    "BITSWEEP_DATABASE_URL",
    "BITSWEEP_TRACKING_URI",
    "BITSWEEP_OPTUNA_STORAGE",
)


def head_environment() -> dict[str, str]:
    """The local head's environment: the service's, without the API's tokens, the stores'
    URLs and any Ray address (jobs get the stores from the service, in their own env)."""
    drop = set(PRIVATE_ENV) | set(RAY_ADDRESS_ENV)
    return {k: v for k, v in os.environ.items() if k not in drop}


@contextlib.contextmanager
def without_ray_address() -> Iterator[None]:
    """`RAY_ADDRESS` and `RAY_API_SERVER_ADDRESS` unset while Ray's job client is made: it
    prefers them to the address it is given."""
    saved = {k: os.environ.pop(k) for k in RAY_ADDRESS_ENV if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def answers(address: str, timeout: float = 2.0) -> bool:
    """Whether a Ray dashboard answers at `address` (http://host:port)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{address}/api/version", timeout=timeout) as r:
            return bool(r.status == 200)
    except urllib.error.HTTPError:
        return True  # it answers, if only to ask for the token
    except OSError:
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class LocalHead:
    """A one-node Ray cluster of the service's own, for the embedded default.

    Started as `ray start --head --block` in a session of its own, with its temp folder under
    the data directory (so that it leaves no `/tmp/ray/ray_current_cluster` behind for other
    Ray programs to join): stopping that process stops every Ray process it started. Its
    address is kept in `HOME/ray-head.json`; a service that restarts after a crash finds the
    head still running there, with its jobs, and uses it again.
    """

    home: Path
    cpus: int | None = None
    address: str = ""  # the dashboard's, which the job API answers at
    gcs_address: str = ""  # the cluster's, which a driver joins (the head started here)
    pid: int = 0
    temp_dir: Path | None = None
    process: subprocess.Popen[bytes] | None = None

    @property
    def file(self) -> Path:
        return self.home / HEAD_FILE

    def start(self, timeout: float = 90.0) -> str:
        os.environ.update(AUTH_ENV)
        found = self._running()
        if found is not None:
            self.address, self.pid, self.temp_dir = found
            log.info("using the Ray head already running at %s", self.address)
            return self.address
        self.home.mkdir(parents=True, exist_ok=True)
        env = {**head_environment(), **AUTH_ENV, "RAY_USAGE_STATS_ENABLED": "0"}
        # A new machine has no token yet: Ray's CLI makes one (in ~/.ray) where none exists.
        subprocess.run(
            [sys.executable, "-m", "ray.scripts.scripts", "get-auth-token", "--generate"],
            env=env,
            check=True,
            capture_output=True,
        )
        # Ray's sockets live in its temp folder and a socket path has at most 107 bytes.
        temp = Path(tempfile.mkdtemp(prefix="bitsweep-ray-"))
        command = self.command(temp)
        port = int(next(c for c in command if c.startswith("--port=")).split("=")[1])
        dash = int(next(c for c in command if c.startswith("--dashboard-port=")).split("=")[1])
        logfile = (self.home / "ray-head.log").open("ab")
        self.process = subprocess.Popen(
            command, stdout=logfile, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        logfile.close()
        self.address, self.pid = f"http://127.0.0.1:{dash}", self.process.pid
        self.gcs_address = f"127.0.0.1:{port}"
        deadline = time.monotonic() + timeout
        while not answers(self.address):
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"the local Ray head exited ({self.process.returncode}); see "
                    f"{self.home / 'ray-head.log'}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the local Ray head did not answer within {timeout:.0f} s")
            time.sleep(0.5)
        self.file.write_text(
            json.dumps({"address": self.address, "pid": self.pid, "temp_dir": str(temp)})
        )
        self.temp_dir = temp
        return self.address

    def command(self, temp: Path) -> list[str]:
        """`ray start --head --block` with every port of its own, on loopback."""
        # Every port of its own, on loopback: Ray's defaults (the dashboard agent's 52365, the
        # client server's 10001, ...) are taken when another Ray runs on the machine, and its
        # head would then start without an agent, refusing every job.
        port, dash, *more = free_ports(9)
        ports = dict(
            zip(
                (
                    "object-manager-port",
                    "node-manager-port",
                    "ray-client-server-port",
                    "dashboard-agent-listen-port",
                    "dashboard-agent-grpc-port",
                    "runtime-env-agent-port",
                    "metrics-export-port",
                ),
                more,
                strict=True,
            )
        )
        command = [
            sys.executable,
            "-m",
            "ray.scripts.scripts",
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--port={port}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dash}",
            *(f"--{k}={v}" for k, v in ports.items()),
            "--include-dashboard=true",
            f"--temp-dir={temp}",
            "--disable-usage-stats",
        ]
        if self.cpus is not None:
            command.append(f"--num-cpus={self.cpus}")
        return command

    def _running(self) -> tuple[str, int, Path] | None:
        try:
            saved = json.loads(self.file.read_text())
            address, pid, temp = str(saved["address"]), int(saved["pid"]), Path(saved["temp_dir"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if _alive(pid) and answers(address):
            return address, pid, temp
        return None

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the head and every Ray process it started (and its jobs)."""
        if not self.pid:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _alive(self.pid) and time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                break
            time.sleep(0.2)
        if _alive(self.pid) and (self.process is None or self.process.poll() is None):
            os.kill(self.pid, signal.SIGKILL)
        self.file.unlink(missing_ok=True)
        if self.temp_dir is not None:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
        self.pid = 0


@dataclass(frozen=True)
class JobState:
    """What Ray says of one job: its status (PENDING, RUNNING, STOPPED, SUCCEEDED, FAILED)
    and message."""

    status: str
    message: str

    @property
    def final(self) -> bool:
        return self.status in ("STOPPED", "SUCCEEDED", "FAILED")


class RayJobs:
    """The service's side of Ray's job API (`JobSubmissionClient`)."""

    def __init__(self, address: str, *, python: str, env: dict[str, str]) -> None:
        os.environ.update(AUTH_ENV)
        self.address = address
        self.python = python
        self.env = env
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            from ray.job_submission import JobSubmissionClient

            with without_ray_address():
                self._client = JobSubmissionClient(self.address)
        return self._client

    def submit(self, job_id: str, sweep_id: str, spec: dict[str, Any], *, resume: bool) -> None:
        """Submit `bitsweep sweep` for `spec` as job `job_id`."""
        # Ray runs the entrypoint through a shell: every word quoted, whatever it holds.
        argv = [self.python, "-m", "service.cli", "sweep", "spec.json", "--sweep-id", sweep_id]
        command = shlex.join([*argv, "--resume"] if resume else argv)
        with tempfile.TemporaryDirectory() as folder:
            Path(folder, "spec.json").write_text(json.dumps(spec, indent=2))
            self.client.submit_job(
                entrypoint=command,
                submission_id=job_id,
                runtime_env={"working_dir": folder, "env_vars": self.env},
                metadata={"bitsweep_sweep_id": sweep_id},
            )

    def state(self, job_id: str) -> JobState | None:
        """The job's state, or None when Ray does not know the job."""
        try:
            info = self.client.get_job_info(job_id)
        except RuntimeError as e:
            if "does not exist" in str(e) or "404" in str(e):
                return None
            raise
        return JobState(status=str(info.status.value), message=str(info.message or ""))

    def stop(self, job_id: str) -> None:
        try:
            self.client.stop_job(job_id)
        except RuntimeError as e:
            if "does not exist" not in str(e):
                raise

    def logs(self, job_id: str) -> str:
        try:
            return str(self.client.get_job_logs(job_id))
        except RuntimeError as e:
            if "does not exist" in str(e):
                return ""
            raise


__all__ = ["AUTH_ENV", "JobState", "LocalHead", "RayJobs", "answers", "free_port"]

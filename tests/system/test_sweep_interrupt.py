"""A sweep stopped by a signal or by the loss of its cluster, a cluster that does not
answer, resources no node has.

The signal and cluster tests run `bitsweep sweep` as a real process in a session of its own (as a
terminal's foreground job) and signal its whole process group, as Ctrl-C does. Each ends by
checking the invariants: each trial of the spec once in MLflow, no run left RUNNING, Optuna and
MLflow agreeing on which trials finished.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from faults import assert_invariants as check_invariants
from faults import sweep_records

from runners.sweep.cluster import (
    EXIT_CLUSTER_LOST,
    LOST_ENV,
    RAY_RECONNECT_ENV,
    ClusterLost,
    ClusterWatch,
    check_resources,
    lost_after,
    reachable_address,
)
from runners.sweep.space import SpecError
from service.jobs import AUTH_ENV, LocalHead, free_port

SPEC = {
    "name": "stop-me",
    "dataset": "digits",
    "model": "mlp",
    "epochs": 8,
    "trials_per_strategy": 4,
    "confirmation": {"seeds": 2},
    "strategies": [{"name": "bit_learning"}],
}
TRIALS = 4 + 2  # the search's, and the confirmation's


def start_sweep(
    home: Path, spec: Path, *extra: str, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "service.cli", "sweep", str(spec), *extra],
        env={**os.environ, "BITSWEEP_HOME": str(home), **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def wait_for_line(proc: subprocess.Popen[str], needle: str, timeout: float) -> list[str]:
    """stderr lines up to the first holding `needle`."""
    assert proc.stderr is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        if needle in line:
            return lines
    raise AssertionError(f"no {needle!r} in:\n{''.join(lines)}")


def sweep_of(lines: list[str]) -> str:
    return next(line.split()[1] for line in lines if line.startswith("sweep "))


def group_gone(pgid: int, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.5)
    return False


def records(home: Path, sweep_id: str) -> tuple[list, object, dict]:
    """(trial runs, parent run, Optuna trials by state) of a sweep under `home`."""
    return sweep_records(
        f"sqlite:///{home / 'mlflow.db'}",
        f"sqlite:///{home / 'optuna.db'}",
        sweep_id,
        "bit_learning",
    )


def assert_invariants(home: Path, sweep_id: str, *, finished: bool) -> list:
    trials, parent, optuna_trials = records(home, sweep_id)
    check_invariants(trials, parent, optuna_trials, finished=finished)
    return trials


def resume_to_the_end(
    home: Path, spec: Path, sweep_id: str, before: list | None = None, *, confirmed: bool = True
) -> None:
    """`--resume` the sweep to its end: its 4 search trials and (`confirmed`) 2 confirmations
    finished, each once, and the runs finished `before` kept, not run again."""
    trials = TRIALS if confirmed else 4
    again = start_sweep(home, spec, "--resume", "--sweep-id", sweep_id, "--json")
    out, err = again.communicate(timeout=400)
    assert again.returncode == 0, err
    summary = json.loads(out)
    assert summary["completed"] == trials and summary["failed"] == 0
    after = assert_invariants(home, sweep_id, finished=True)
    assert sorted(r.info.status for r in after) == ["FINISHED"] * trials
    phases = sorted(r.data.tags["bitsweep.phase"] for r in after)
    assert phases == ["confirm"] * (trials - 4) + ["search"] * 4
    assert summary["best"]["bit_learning"]["metrics"]["seeds"] == (2 if confirmed else 1)
    finished_before = {r.info.run_id for r in before or [] if r.info.status == "FINISHED"}
    assert finished_before <= {r.info.run_id for r in after}  # kept, not rerun


@pytest.mark.slow
def test_ctrl_c_in_the_confirmation_stops_the_sweep_and_resume_runs_each_trial_once(tmp_path):
    """Stopped once the first confirmation has finished (every search trial has: the
    confirmation starts after the search), resumed: each search trial and each confirmation
    seed once."""
    home, spec = tmp_path / "home", tmp_path / "spec.json"
    spec.write_text(json.dumps({**SPEC, "confirmation": {"seeds": 2}}))
    proc = start_sweep(home, spec)
    head = wait_for_line(proc, "finished: confirms trial", 300)
    sweep_id = sweep_of(head)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C sends: the whole foreground group
    stopped = time.monotonic()
    _, err = proc.communicate(timeout=60)
    took = time.monotonic() - stopped
    assert proc.returncode == 130, err
    assert took < 30, f"stopping took {took:.1f} s"
    assert f"sweep {sweep_id} was interrupted by SIGINT" in err
    assert group_gone(proc.pid), "Ray processes were left behind"
    state = json.loads((home / "sweeps" / f"{sweep_id}.json").read_text())
    assert state["status"] == "interrupted"
    before = assert_invariants(home, sweep_id, finished=False)
    assert {r.info.status for r in before} <= {"FINISHED", "KILLED"}
    confirmed = [r for r in before if r.data.tags["bitsweep.phase"] == "confirm"]
    assert 1 <= sum(r.info.status == "FINISHED" for r in confirmed) < 2

    resume_to_the_end(home, spec, sweep_id, before)
    finished_before = {r.info.run_id for r in before if r.info.status == "FINISHED"}
    print(
        f"\nSIGINT in the confirmation: stopped in {took:.1f} s with {len(finished_before)} of "
        f"{TRIALS} trials finished; resumed: {TRIALS} of {TRIALS} finished, 0 lost, 0 twice"
    )


@pytest.mark.slow
def test_sigterm_exits_143_and_a_second_signal_stops_at_once(tmp_path):
    home, spec = tmp_path / "home", tmp_path / "spec.json"
    # A stop in the search (the confirmation's own stop is the Ctrl-C test's).
    spec.write_text(json.dumps({**SPEC, "confirmation": {"enabled": False}}))
    proc = start_sweep(home, spec)
    head = wait_for_line(proc, " started", 240)
    sweep_id = sweep_of(head)
    # SIGTERM goes to the process alone, as `kill PID`, a Ray job's stop or a pod's end send it
    # (to the whole group it would also end the local Ray cluster's processes).
    os.kill(proc.pid, signal.SIGTERM)
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGTERM)
    stopped = time.monotonic()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    took = time.monotonic() - stopped
    assert took < 10
    assert group_gone(proc.pid), "Ray processes were left behind"
    resume_to_the_end(home, spec, sweep_id, confirmed=False)  # as after a hard kill
    print(f"\nSIGTERM twice: stopped in {took:.1f} s; resumed: 4 finished, 0 twice")


@pytest.fixture
def ray_head(tmp_path, monkeypatch) -> Iterator[LocalHead]:
    """A one-node cluster of its own (`ray start --head --block` in a session of its own):
    killing its process group loses the cluster."""
    for name, value in AUTH_ENV.items():
        monkeypatch.setenv(name, value)  # which the head sets here too: restored after
    head = LocalHead(home=tmp_path / "head", cpus=2)
    head.start()
    yield head
    with contextlib.suppress(ProcessLookupError):
        os.killpg(head.pid, signal.SIGKILL)
    head.stop()


@pytest.mark.slow
def test_a_cluster_lost_mid_sweep_ends_it_interrupted_and_resumable(tmp_path, ray_head):
    head, address = ray_head.process, ray_head.gcs_address
    assert head is not None
    home, spec = tmp_path / "home", tmp_path / "spec.json"
    spec.write_text(json.dumps({**SPEC, "confirmation": {"enabled": False}}))  # in the search
    env = {**AUTH_ENV, LOST_ENV: "5"}
    proc = start_sweep(home, spec, "--ray-address", address, env=env)
    sweep_id = sweep_of(wait_for_line(proc, "finished: best_val_accuracy", 240))
    os.killpg(head.pid, signal.SIGKILL)  # the head and everything on it: the cluster is gone
    lost = time.monotonic()
    head.wait(timeout=30)
    _, err = proc.communicate(timeout=60)
    took = time.monotonic() - lost
    assert proc.returncode == EXIT_CLUSTER_LOST, err
    assert f"sweep {sweep_id} was interrupted: its Ray cluster was lost" in err
    assert f"--resume --sweep-id {sweep_id}" in err
    assert took < 30, f"stopping took {took:.1f} s"  # within the 5 s asked, and the records
    assert group_gone(head.pid) and group_gone(proc.pid), "Ray processes were left behind"
    state = json.loads((home / "sweeps" / f"{sweep_id}.json").read_text())
    assert state["status"] == "interrupted"
    before = assert_invariants(home, sweep_id, finished=False)
    assert {r.info.status for r in before} <= {"FINISHED", "KILLED"}
    finished_before = {r.info.run_id for r in before if r.info.status == "FINISHED"}
    assert 1 <= len(finished_before) < 4

    resume_to_the_end(home, spec, sweep_id, before, confirmed=False)  # on a local cluster
    print(
        f"\ncluster lost: the sweep stopped {took:.1f} s after, with {len(finished_before)} "
        "of 4 trials finished; resumed: 4 of 4 finished, 0 lost, 0 twice"
    )


def test_an_address_where_nothing_answers_is_refused_within_seconds():
    port = free_port()
    for address in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}"):
        started = time.monotonic()
        with pytest.raises(SpecError) as e:
            reachable_address(address)
        assert e.value.field == "--ray-address"
        assert "no Ray cluster answers" in e.value.reason
        assert time.monotonic() - started < 5
    with pytest.raises(SpecError, match="is not HOST:PORT"):
        reachable_address("nowhere")


def test_a_stale_address_file_starts_a_new_local_cluster(tmp_path, monkeypatch):
    import runners.sweep.cluster as cluster

    stale = tmp_path / "ray_current_cluster"
    stale.write_text(f"127.0.0.1:{free_port()}")
    monkeypatch.setattr(cluster, "ADDRESS_FILE", stale)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert reachable_address(None) == "local"
    stale.unlink()
    assert reachable_address(None) is None


def test_the_cli_refuses_an_unreachable_cluster_before_writing_anything(tmp_path, home, capsys):
    from service.cli import main

    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({**SPEC, "epochs": 1}))
    started = time.monotonic()
    code = main(["sweep", str(spec), "--ray-address", f"127.0.0.1:{free_port()}"])
    assert code == 2
    assert time.monotonic() - started < 30
    err = capsys.readouterr().err
    assert err.startswith("error: --ray-address: no Ray cluster answers")
    assert not home.exists()  # no store, no run, no state


@pytest.mark.parametrize(
    ("resources", "field", "reason"),
    [
        ({"gpu": 1}, "resources.gpu", "each trial asks for 1 GPUs; no node"),
        ({"cpu": 64}, "resources.cpu", "each trial asks for 64 CPUs; no node"),
    ],
)
def test_resources_no_node_has_are_refused(local_ray, tmp_path, resources, field, reason):
    from runners.sweep.plan import plan_sweep
    from schemas.sweep import SweepSpec

    plan = plan_sweep(
        SweepSpec.model_validate({**SPEC, "resources": resources}), home=tmp_path / "h"
    )
    with pytest.raises(SpecError) as e:
        check_resources(plan)
    assert e.value.field == field
    assert e.value.reason.startswith(reason)
    assert "at most" in e.value.reason


def test_resources_a_node_has_are_accepted(local_ray, tmp_path):
    from runners.sweep.plan import plan_sweep
    from schemas.sweep import SweepSpec

    plan = plan_sweep(SweepSpec.model_validate({**SPEC, "resources": {"cpu": 2}}), home=tmp_path)
    check_resources(plan)


@pytest.mark.parametrize(
    ("lost", "ray_timeout", "expected"),
    [(None, None, 30.0), ("5", None, 5.0), ("50", None, 50.0), (None, "20", 10.0)],
)
def test_how_long_a_silent_cluster_counts_as_there(monkeypatch, lost, ray_timeout, expected):
    for name, value in ((LOST_ENV, lost), (RAY_RECONNECT_ENV, ray_timeout)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert lost_after() == expected


@pytest.mark.parametrize(
    ("lost", "reason"),
    [
        ("soon", "'soon' is not a number of seconds"),
        ("0", "must be more than 0 seconds"),
        ("nan", "must be more than 0 seconds"),
        ("55", "55 s leaves no time to record the sweep"),
    ],
)
def test_a_wait_for_a_lost_cluster_that_cannot_work_is_refused(monkeypatch, lost, reason):
    monkeypatch.setenv(LOST_ENV, lost)
    monkeypatch.delenv(RAY_RECONNECT_ENV, raising=False)
    with pytest.raises(SpecError) as e:
        lost_after()
    assert e.value.field == LOST_ENV and e.value.reason.startswith(reason)


def test_the_cli_refuses_a_bad_wait_for_a_lost_cluster_before_writing_anything(
    tmp_path, home, capsys, monkeypatch
):
    from service.cli import main

    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({**SPEC, "epochs": 1}))
    monkeypatch.setenv(LOST_ENV, "-1")
    assert main(["sweep", str(spec)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {LOST_ENV}: must be more than 0 seconds, not -1\n"
    assert not home.exists()


def test_the_watch_tells_a_lost_head_once_and_settle_waits_for_it():
    import socket

    server = socket.create_server(("127.0.0.1", 0))
    endpoint = server.getsockname()[:2]
    told: list[float] = []
    with ClusterWatch(endpoint, 1.0, told.append, interval=0.1) as watch:
        time.sleep(0.5)
        watch.settle()  # the head answers: returns at once
        assert not told
        server.close()  # the head is gone
        started = time.monotonic()
        with pytest.raises(ClusterLost):
            watch.settle()  # waits for the watch to declare it lost
        assert 0.9 <= time.monotonic() - started < 5
    assert len(told) == 1 and told[0] >= 1.0
    # A head that comes back within the wait is not lost.
    server = socket.create_server(("127.0.0.1", 0))
    endpoint = server.getsockname()[:2]
    told.clear()
    with ClusterWatch(endpoint, 1.5, told.append, interval=0.1):
        server.close()
        time.sleep(0.5)
        server = socket.create_server(endpoint)  # back within the 1.5 s
        time.sleep(2.0)
    server.close()
    assert not told

"""Sweeps on a Ray cluster of several nodes started on loopback: trials spread over the
nodes, and a trial whose node is lost resumes elsewhere from its checkpoint."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import ray
from mlflow.tracking import MlflowClient
from ray.cluster_utils import Cluster

from runners.sweep.run import plan_sweep, run_sweep
from schemas.sweep import SweepSpec

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    """A head without CPUs (it only schedules) and two worker nodes of one CPU each."""
    if ray.is_initialized():
        ray.shutdown()
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    c.add_node(num_cpus=1)
    c.add_node(num_cpus=1)
    c.wait_for_nodes()
    ray.init(address=c.address, log_to_driver=False)
    yield c
    ray.shutdown()
    c.shutdown()


def trial_runs(plan, summary):
    client = MlflowClient(plan.tracking_uri)
    exp = client.get_run(summary.parent_run_id).info.experiment_id
    return client.search_runs(
        [exp], filter_string=f"tags.mlflow.parentRunId = '{summary.parent_run_id}'"
    )


def worker_ids(c: Cluster) -> set[str]:
    return {n.node_id for n in c.worker_nodes}


def test_trials_run_on_several_nodes_with_shared_storage(cluster: Cluster, tmp_path):
    shared = tmp_path / "shared"  # the folder every node mounts, on a real cluster
    spec = SweepSpec.model_validate(
        {
            "name": "spread",
            "epochs": 2,
            "trials_per_strategy": 4,
            "max_concurrent_trials": 2,
            "storage_path": str(shared),
            "confirmation": {"seeds": 2},
            "strategies": [{"name": "full_precision"}],
        }
    )
    plan = plan_sweep(spec, home=tmp_path / "data")
    summary = run_sweep(plan, ray_address=cluster.address)
    nodes = {r.data.tags["bitsweep.node"] for r in trial_runs(plan, summary)}
    assert summary.completed == 4 + 2 and nodes == worker_ids(cluster)
    assert (shared / summary.sweep_id / "trials").is_dir()
    assert not (tmp_path / "data" / "ray").exists()


def test_two_strategies_share_the_cluster_from_the_first_trial(cluster: Cluster, tmp_path):
    # One Tune experiment for the whole sweep: with two one-CPU nodes, a trial of each
    # strategy runs at once, and neither strategy waits for the other to finish.
    spec = SweepSpec.model_validate(
        {
            "name": "together",
            "epochs": 3,
            "trials_per_strategy": 2,
            "confirmation": {"enabled": False},  # the search's sharing alone
            "strategies": [
                {"name": "full_precision", "params": {"batch_size": 4}},
                {"name": "wrn_1bit", "params": {"batch_size": 4}},
            ],
        }
    )
    plan = plan_sweep(spec, home=tmp_path / "data")
    summary = run_sweep(plan, ray_address=cluster.address)
    runs = trial_runs(plan, summary)
    spans = {
        name: [
            (r.info.start_time, r.info.end_time)
            for r in runs
            if r.data.tags["bitsweep.strategy"] == name
        ]
        for name in ("full_precision", "wrn_1bit")
    }
    overlaps = [
        (a, b)
        for a in spans["full_precision"]
        for b in spans["wrn_1bit"]
        if a[0] < b[1] and b[0] < a[1]
    ]
    assert summary.completed == 4 and {r.info.status for r in runs} == {"FINISHED"}
    assert overlaps, spans


def test_confirmation_trial_on_a_lost_node_resumes_elsewhere(cluster: Cluster, tmp_path):
    cluster.add_node(num_cpus=1)  # two nodes left after one is lost
    cluster.wait_for_nodes()
    spec = SweepSpec.model_validate(
        {
            "name": "lost-node",
            "epochs": 12,
            "trials_per_strategy": 1,
            "max_concurrent_trials": 2,
            "max_failures": 3,
            "confirmation": {"seeds": 2},
            "strategies": [{"name": "full_precision", "params": {"batch_size": 8}}],
        }
    )
    plan = plan_sweep(spec, home=tmp_path / "data")
    killed: list[str] = []
    errors: list[str] = []

    def running_confirmation_nodes(client: MlflowClient) -> list[str]:
        exp = client.get_experiment_by_name(spec.benchmark)
        if exp is None:
            return []
        runs = client.search_runs(
            [exp.experiment_id],
            filter_string="attributes.status = 'RUNNING' and tags.`bitsweep.phase` = 'confirm'",
        )
        return [r.data.tags["bitsweep.node"] for r in runs if r.data.tags.get("bitsweep.node")]

    def kill_a_busy_node() -> None:
        # Wait until a confirmation trial has reported from a node, then remove that node as a
        # crashed machine would disappear. A read that fails while the
        # sweep writes the same SQLite store (locked, on a loaded machine) is read again.
        client = MlflowClient(plan.tracking_uri)
        workers = {n.node_id: n for n in cluster.worker_nodes}
        deadline = time.time() + 300
        while time.time() < deadline and not killed:
            try:
                busy = running_confirmation_nodes(client)
            except Exception as e:  # kept for the assertion's message
                errors.append(repr(e))
                busy = []
            for node in busy:
                if node in workers:
                    cluster.remove_node(workers[node], allow_graceful=False)
                    killed.append(node)
                    return
            time.sleep(0.2)

    thread = threading.Thread(target=kill_a_busy_node, daemon=True)
    thread.start()
    summary = run_sweep(plan, ray_address=cluster.address)
    thread.join(timeout=5)
    runs = trial_runs(plan, summary)
    assert killed, f"no node was removed during the sweep; reads that failed: {errors[-3:]}"
    assert summary.completed == 3 and len(runs) == 3
    assert {r.info.status for r in runs} == {"FINISHED"}
    retried = [r for r in runs if r.data.tags.get("bitsweep.retried")]
    assert retried and {r.data.tags["bitsweep.phase"] for r in retried} == {"confirm"}
    assert summary.leaderboard[0]["status"] == "confirmed" and summary.leaderboard[0]["seeds"] == 2

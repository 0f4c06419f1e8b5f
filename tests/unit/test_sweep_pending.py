"""How many trials a sweep lets Tune start at once: what the cluster fits, within the spec."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import ray

from runners.sweep.run import pending_trials


def _plan(
    cpu: float, gpu: float, trials: list[int], limit: int | None = None, seeds: int = 0
) -> object:
    spec = SimpleNamespace(
        resources=SimpleNamespace(cpu=cpu, gpu=gpu),
        max_concurrent_trials=limit,
        confirmation=SimpleNamespace(enabled=seeds > 0, seeds=seeds, max_configs=3),
        objectives=["best_val_accuracy"],
    )
    return SimpleNamespace(spec=spec, strategies=[SimpleNamespace(trials=n) for n in trials])


@pytest.mark.parametrize(
    ("have", "cpu", "gpu", "trials", "limit", "expected"),
    [
        ({"CPU": 2.0}, 1, 0, [3, 3], None, 2),  # a 2-core laptop: two at once
        ({"CPU": 16.0}, 1, 0, [3, 3], None, 6),  # never more than the sweep's trials
        ({"CPU": 16.0}, 4, 0, [10], None, 4),
        ({"CPU": 16.0, "GPU": 1.0}, 1, 0.25, [10], None, 4),  # four trials share one GPU
        ({"CPU": 16.0, "GPU": 2.0}, 1, 1, [10], None, 2),
        ({"CPU": 16.0}, 1, 0, [10], 3, 3),  # the spec's limit
        ({"CPU": 1.0}, 4, 0, [10], None, 1),  # busy or too small: one waits
        ({"CPU": 16.0}, 1, 1, [10], None, 1),  # no GPU (yet): one waits
    ],
)
def test_pending_trials_fill_what_the_cluster_fits(
    monkeypatch, have, cpu, gpu, trials, limit, expected
) -> None:
    monkeypatch.setattr(ray, "cluster_resources", lambda: dict(have))
    assert pending_trials(_plan(cpu, gpu, trials, limit)) == expected  # type: ignore[arg-type]


def test_confirmation_trials_count_among_what_may_start(monkeypatch) -> None:
    """Two strategies of 3 trials, each confirmed over 3 seeds: 12 trials, all may wait at once."""
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 16.0})
    assert pending_trials(_plan(1, 0, [3, 3], seeds=3)) == 12  # type: ignore[arg-type]
    assert pending_trials(_plan(1, 0, [3, 3])) == 6  # type: ignore[arg-type]

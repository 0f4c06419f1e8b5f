"""A trial's device: what Ray assigned decides it, and no training step waits on the host."""

from __future__ import annotations

import collections
import logging
import math
from collections.abc import Iterator

import pydantic
import pytest
import torch
import torch.nn.functional as F

import strategies
from runners.engine.data import load_dataset
from runners.engine.trial import ConfigError, choose_device, evaluate, run_trial
from runners.sweep.worker import cap_gpu_memory, gpu_memory_fraction
from schemas.sweep import Resources
from schemas.trial import TrialConfig

# -- the decision, from Ray's assignment and what torch sees ----------------------------------


def test_auto_outside_ray_is_cuda_when_present_else_cpu() -> None:
    assert choose_device("auto", gpu_ids=None, cuda_available=True, cuda_count=2).type == "cuda"
    assert choose_device("auto", gpu_ids=None, cuda_available=False, cuda_count=0).type == "cpu"


def test_auto_with_assigned_gpus_is_the_first_visible_cuda_device() -> None:
    dev = choose_device("auto", gpu_ids=["3"], cuda_available=True, cuda_count=1)
    assert dev == torch.device("cuda") and (dev.index or 0) == 0


def test_auto_with_no_assigned_gpu_is_the_cpu_on_a_gpu_node() -> None:
    # Ray leaves a trial without GPUs every device visible: it must not take one.
    assert choose_device("auto", gpu_ids=[], cuda_available=True, cuda_count=8).type == "cpu"


def test_assigned_gpus_torch_cannot_see_fall_back_to_the_cpu_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="runners.engine.trial"):
        dev = choose_device("auto", gpu_ids=[0], cuda_available=False, cuda_count=0)
    assert dev.type == "cpu" and "no CUDA device" in caplog.text


def test_cpu_is_always_the_cpu() -> None:
    for ids in (None, [], ["0"]):
        assert choose_device("cpu", gpu_ids=ids, cuda_available=True, cuda_count=1).type == "cpu"


def test_explicit_cuda_without_an_assigned_gpu_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"^device: cuda was asked for but the trial was"):
        choose_device("cuda", gpu_ids=[], cuda_available=True, cuda_count=4)


def test_explicit_cuda_without_cuda_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"^device: CUDA was asked for but is not available"):
        choose_device("cuda:0", gpu_ids=None, cuda_available=False, cuda_count=0)


def test_explicit_cuda_index_must_be_visible() -> None:
    assert choose_device("cuda:1", gpu_ids=None, cuda_available=True, cuda_count=2).index == 1
    with pytest.raises(ConfigError, match=r"^device: cuda:1 was asked for but 1 CUDA device"):
        choose_device("cuda:1", gpu_ids=["0"], cuda_available=True, cuda_count=1)


def test_a_share_of_a_gpu_caps_memory_at_that_share() -> None:
    assert gpu_memory_fraction(0.25) == 0.25
    assert gpu_memory_fraction(0.5) == 0.5
    assert gpu_memory_fraction(0) is None
    assert gpu_memory_fraction(1) is None
    assert gpu_memory_fraction(2) is None


def test_the_cap_goes_to_the_trials_own_device_by_index(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[float, object]] = []
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(
        torch.cuda, "set_per_process_memory_fraction", lambda f, d=None: calls.append((f, d))
    )
    assert cap_gpu_memory(torch.device("cuda"), 0.25) == 0.25
    assert cap_gpu_memory(torch.device("cuda:1"), 0.5) == 0.5
    assert cap_gpu_memory(torch.device("cuda"), 1.0) is None
    # torch wants an index: a device without one is the current device.
    assert calls == [(0.25, 0), (0.5, 1)]


def test_a_sweep_accepts_fractions_of_a_gpu_down_to_rays_unit() -> None:
    assert Resources(gpu=0.25).gpu == 0.25 and Resources(gpu=0.0001).gpu == 0.0001
    assert Resources(gpu=2).gpu == 2
    with pytest.raises(pydantic.ValidationError, match=r"at least 0\.0001"):
        Resources(gpu=0.00001)
    with pytest.raises(pydantic.ValidationError, match="whole number"):
        Resources(gpu=1.5)


def test_device_passed_to_the_trial_replaces_the_configs() -> None:
    data = load_dataset("digits")
    result = run_trial(TrialConfig(strategy="full_precision", epochs=1), dataset=data, device="cpu")
    assert result.environment.device == "cpu" and result.config.device == "auto"


# -- under Ray: what a Tune trial is assigned ------------------------------------------------


@pytest.fixture(scope="module")
def ray_with_a_gpu() -> Iterator[None]:
    """A local Ray cluster that believes it has one GPU (this machine need not have one)."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(
        address="local",
        num_cpus=2,
        num_gpus=1,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    yield
    ray.shutdown()


@pytest.mark.integration  # a Ray cluster
def test_a_tune_trial_gets_the_gpu_share_ray_assigned_it(ray_with_a_gpu: None) -> None:
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    def _device_in_a_ray_worker() -> dict[str, object]:
        """In the worker, with torch told a GPU is present: the trial's device and memory cap.
        Defined here, so that Ray ships it by value."""
        import os

        import ray

        from runners.sweep import worker

        caps: list[tuple[float, object]] = []
        torch.cuda.is_available = lambda: True  # type: ignore[assignment]
        torch.cuda.device_count = lambda: 1  # type: ignore[assignment]
        torch.cuda.current_device = lambda: 0  # type: ignore[assignment]
        torch.cuda.set_per_process_memory_fraction = (  # type: ignore[assignment]
            lambda fraction, device=None: caps.append((fraction, device))
        )
        return {
            "device": str(worker.trial_device("auto")),
            "gpu_ids": [str(i) for i in ray.get_gpu_ids()],
            "visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "caps": caps,
        }

    # Tune runs each trial in a placement group of its resources, {"cpu": 1, "gpu": share}.
    task = ray.remote(_device_in_a_ray_worker)
    seen = {}
    for share in (0.25, 0.0):
        pg = placement_group([{"CPU": 1, "GPU": share} if share else {"CPU": 1}])
        ray.get(pg.ready())
        strategy = PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=0)
        ref = task.options(num_cpus=1, num_gpus=share, scheduling_strategy=strategy).remote()
        seen[share] = ray.get(ref)
        remove_placement_group(pg)
    assert seen[0.25] == {"device": "cuda", "gpu_ids": ["0"], "visible": "0", "caps": [(0.25, 0)]}
    # Without a GPU, Ray leaves CUDA_VISIBLE_DEVICES as it was: the trial stays on the CPU.
    assert seen[0.0]["device"] == "cpu" and seen[0.0]["gpu_ids"] == []
    assert seen[0.0]["caps"] == []


# -- no host round trip per batch ------------------------------------------------------------

_HOST_READS = ("item", "__float__", "__int__", "__bool__", "__index__", "tolist", "numpy", "cpu")


def _host_reads(monkeypatch: pytest.MonkeyPatch, cfg: TrialConfig, data: object) -> int:
    """Tensor-to-host reads (`.item()`, `float(t)`, `if t:`, ...) made by one trial."""
    counts: collections.Counter[str] = collections.Counter()

    def counting(name: str, method: object) -> object:
        def read(self: torch.Tensor, *args: object, **kwargs: object) -> object:
            counts[name] += 1
            return method(self, *args, **kwargs)  # type: ignore[operator]

        return read

    with monkeypatch.context() as m:
        for name in _HOST_READS:
            m.setattr(torch.Tensor, name, counting(name, getattr(torch.Tensor, name)))
        run_trial(cfg, dataset=data)  # type: ignore[arg-type]
    return sum(counts.values())


@pytest.mark.parametrize("name", sorted(strategies.list_strategies()))
def test_host_reads_do_not_grow_with_the_number_of_batches(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = load_dataset("digits")
    params = {"pretrain_epochs": 0, "epochs_per_step": 1} if name == "weight_fixing" else {}
    epochs = 10 if name == "weight_fixing" else 1

    def reads(batch_size: int) -> int:
        cfg = TrialConfig(strategy=name, epochs=epochs, batch_size=batch_size, params=params)
        return _host_reads(monkeypatch, cfg, data)

    n = data.x_train.shape[0]
    more_steps = (math.ceil(n / 64) - math.ceil(n / 256)) * epochs
    # One read per step would add `more_steps`; reads per epoch or per trial add none.
    assert abs(reads(64) - reads(256)) < more_steps


def test_evaluation_summed_on_the_device_equals_the_host_sum() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(20, 7))
    x, y = torch.randn(1000, 20), torch.randint(0, 7, (1000,))
    loss, correct = 0.0, 0
    with torch.no_grad():
        for i in range(0, 1000, 64):
            out = model(x[i : i + 64])
            loss += float(F.cross_entropy(out, y[i : i + 64], reduction="sum"))
            correct += int((out.argmax(1) == y[i : i + 64]).sum())
    assert evaluate(model, x, y, 64) == (correct / 1000, loss / 1000)

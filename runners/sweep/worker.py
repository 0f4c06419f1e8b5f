"""The Tune trainable of a sweep, kept light: Ray workers import this module, not the driver's."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from ray import tune

from runners.engine.data import Dataset
from runners.engine.trial import pick_device, resolve, train
from schemas.names import CONFIRMS_KEY, FINAL_KEY, RESULT_FILE, STRATEGY_KEY, WEIGHTS_FILE
from schemas.trial import TrialConfig, TrialResult


def split_config(config: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """(strategy, sampled params and seed) of a trial's Tune config; a confirmation trial's
    mark (`CONFIRMS_KEY`, see `confirms`) is neither."""
    sampled = dict(config)
    sampled.pop(CONFIRMS_KEY, None)
    return sampled.pop(STRATEGY_KEY, None), sampled


def confirms(config: dict[str, Any]) -> str | None:
    """The Tune trial id a confirmation trial confirms; None for a search trial."""
    value = config.get(CONFIRMS_KEY)
    return None if value is None else str(value)


def trainable(
    config: dict[str, Any],
    data: Dataset,
    bases: dict[str, TrialConfig],
    export_weights: bool = True,
) -> None:
    """One Tune trial: train with the sampled params, report every epoch with a checkpoint,
    then report the final result with the deployed weights.

    `config` is what the sweep's searcher drew: the trial's strategy (`bases` holds each
    strategy's trial config), and its searched params or a `seed` for seed replicates.
    """
    import ray

    node = ray.get_runtime_context().get_node_id()
    strategy, sampled = split_config(config)
    base = bases[strategy or ""]
    seed = sampled.pop("seed", base.seed)
    trial = resolve(
        TrialConfig.model_validate(
            {**base.model_dump(), "seed": seed, "params": {**base.params, **sampled}}
        )
    )
    resume_dir: Path | None = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        local = Path(checkpoint.to_directory())
        if (local / RESULT_FILE).exists():
            # Finished before the sweep stopped: report the same final result again.
            done = TrialResult.model_validate_json((local / RESULT_FILE).read_text())
            tune.report(
                final_metrics(done, node), checkpoint=tune.Checkpoint.from_directory(str(local))
            )
            return
        resume_dir = local

    def on_epoch(record: Any, save: Callable[[Path], None]) -> bool:
        metrics = {
            "epoch": record.epoch,
            "train_loss": record.train_loss,
            "train_accuracy": record.train_accuracy,
            "val_accuracy": record.val_accuracy,
            "val_loss": record.val_loss,
            "epoch_lr": record.lr,
            "epoch_seconds": record.seconds,
            "node": node,
            **{extra_key(k): v for k, v in record.extra.items()},
        }
        with tempfile.TemporaryDirectory() as tmp:
            save(Path(tmp))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))
        return False

    device = trial_device(trial.config.device)
    trained = train(trial, dataset=data, on_epoch=on_epoch, resume_from=resume_dir, device=device)
    result = trained.result
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / RESULT_FILE).write_text(result.model_dump_json())
        if export_weights:
            from runners.engine.export import save_trained

            save_trained(folder / WEIGHTS_FILE, trained, data, packed=True)
        tune.report(final_metrics(result, node), checkpoint=tune.Checkpoint.from_directory(tmp))


def trial_device(requested: str) -> torch.device:
    """The device of the trial running in this Ray worker, from what Ray assigned it.

    A trial without GPUs runs on the CPU (see `runners.engine.trial.choose_device`); one holding
    part of a GPU may allocate that fraction of its memory (`gpu_memory_fraction`).
    """
    import ray

    device = pick_device(requested, gpu_ids=ray.get_gpu_ids())
    if device.type == "cuda":
        cap_gpu_memory(device, ray.get_runtime_context().get_assigned_resources().get("GPU", 0.0))
    return device


def cap_gpu_memory(device: torch.device, gpus: float) -> float | None:
    """Cap this process's CUDA allocations on `device` at the share of `gpus` it holds (see
    `gpu_memory_fraction`); returns the cap, None when there is none."""
    share = gpu_memory_fraction(gpus)
    if device.type == "cuda" and share is not None:
        index = device.index if device.index is not None else torch.cuda.current_device()
        torch.cuda.set_per_process_memory_fraction(share, index)
    return share


def gpu_memory_fraction(gpus: float) -> float | None:
    """The share of its GPU's memory that a trial holding `gpus` GPUs may allocate: that
    fraction when it holds part of one (trials packed on a GPU each keep to their share, and
    one that outgrows it fails alone, out of memory), None (no cap) for one or more GPUs."""
    return float(gpus) if 0 < gpus < 1 else None


def extra_key(name: str) -> str:
    """The metric key of a strategy's extra metric: `layer.<name>.<what>` as it is (a per-layer
    figure shares its name with the final per-layer cost), anything else as `strategy.<name>`."""
    return name if name.startswith("layer.") else f"strategy.{name}"


def final_metrics(result: TrialResult, node: str) -> dict[str, Any]:
    """The last report of a trial: every result metric, marked final."""
    return {
        **result.metrics(),
        FINAL_KEY: 1,
        "node": node,
        "epoch": result.epochs_run,
        "val_accuracy": result.best_val_accuracy,
    }

"""One trial: a strategy, a dataset, a model and a config trained to a measured result.

`resolve` validates a `TrialConfig` against the registries and fills what it leaves unset
from the strategy's recipe; `run_trial` trains it, reports each epoch to a callback (a sweep
reports to Ray Tune from there), checkpoints, selects the best epoch on the validation split
of the deployed model, and measures the deployed weights.
"""

from __future__ import annotations

import logging
import math
import platform
import random
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydantic
import torch
import torch.nn.functional as F
from torch import nn

import strategies
from runners.engine.data import Dataset, batches, load_dataset
from runners.engine.models import build_model, model_options
from schemas.errors import FieldError, validation_field
from schemas.names import CHECKPOINT_FILE
from schemas.trial import (
    AugmentConfig,
    EnvironmentInfo,
    EpochRecord,
    OptimizerConfig,
    ScheduleConfig,
    StepRecord,
    TrainingKnobs,
    TrialConfig,
    TrialResult,
)
from strategies.base import Progress, Strategy, StrategyParams
from strategies.metrics import weight_metrics
from strategies.registry import Origin
from strategies.space import split_params

log = logging.getLogger(__name__)


class ConfigError(FieldError):
    """A trial config that cannot run. `field` names the culprit, `reason` says why."""


class TrialDiverged(RuntimeError):
    """The loss became NaN or infinite."""


def pydantic_error(e: pydantic.ValidationError, prefix: str = "") -> ConfigError:
    """The first error of a validation failure as a `ConfigError` naming its field."""
    return ConfigError(*validation_field(e, prefix))


# -- resolution ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResolvedTrial:
    """A trial config validated against the registries, with every field filled in.

    `config.params` holds the strategy's own params as validated; the training knobs that
    `params` carried are folded into `config.optimizer` and `config.batch_size` (and kept in
    `knobs`, as given). The CLI, the sweep worker and the service all train from one of these.
    """

    config: TrialConfig
    strategy: type[Strategy]
    params: StrategyParams
    knobs: dict[str, Any]
    origin: Origin

    @property
    def optimizer(self) -> OptimizerConfig:
        assert self.config.optimizer is not None
        return self.config.optimizer

    @property
    def schedule(self) -> ScheduleConfig:
        assert self.config.schedule is not None
        return self.config.schedule

    @property
    def augment(self) -> AugmentConfig:
        assert self.config.augment is not None
        return self.config.augment

    @property
    def batch_size(self) -> int:
        assert self.config.batch_size is not None
        return self.config.batch_size


def resolve(config: TrialConfig) -> ResolvedTrial:
    """Validate `config` and fill every unset field from the strategy's recipe.

    Training knobs in `params` (`lr`, `optimizer`, `weight_decay`, `momentum`, `batch_size`)
    override the optimizer and batch size. Raises `ConfigError` naming the field.
    """
    try:
        cls = strategies.get_strategy(config.strategy)
    except strategies.UnknownStrategyError as e:
        raise ConfigError("strategy", e.reason) from None
    own, knobs = split_params(config.params)
    try:
        params = cls.Params(**own)
    except pydantic.ValidationError as e:
        raise pydantic_error(e, "params") from None
    try:
        given = TrainingKnobs.model_validate(knobs)
    except pydantic.ValidationError as e:
        raise pydantic_error(e, "params") from None
    knobs = {k: getattr(given, k) for k in knobs}  # as validated (e.g. "32" -> 32)
    try:
        cls(params).validate_trial(config.epochs)
    except FieldError as e:
        raise ConfigError(e.field, e.reason) from None
    recipe = cls.recipe
    opt = (config.optimizer or recipe.optimizer).model_dump()
    for k in ("lr", "weight_decay", "momentum"):
        if k in knobs:
            opt[k] = knobs[k]
    if "optimizer" in knobs:
        opt["name"] = knobs["optimizer"]
    try:
        optimizer = OptimizerConfig(**opt)
    except pydantic.ValidationError as e:
        raise pydantic_error(e, "params") from None
    batch_size = knobs.get("batch_size", config.batch_size or recipe.batch_size)
    try:
        model_opts = model_options(config.model)
    except FieldError as e:
        raise ConfigError(e.field, e.reason) from None
    try:
        model_opts(
            **{
                **{k: v for k, v in recipe.model_options.items() if k in model_opts.model_fields},
                **config.model_options,
            }
        )
    except pydantic.ValidationError as e:
        raise pydantic_error(e, "model_options") from None
    resolved = config.model_copy(
        update={
            "params": params.model_dump(mode="json"),
            "optimizer": optimizer,
            "schedule": config.schedule or recipe.schedule,
            "augment": config.augment or recipe.augment,
            "batch_size": batch_size,
        }
    )
    return ResolvedTrial(
        config=resolved,
        strategy=cls,
        params=params,
        knobs=knobs,
        origin=strategies.strategy_origin(config.strategy),
    )


# -- building blocks -------------------------------------------------------------------------


def pick_device(name: str, gpu_ids: Sequence[int | str] | None = None) -> torch.device:
    """The device of a trial asking for `name` (see `choose_device`) on this machine.

    `gpu_ids` are the GPUs Ray assigned to the trial (`ray.get_gpu_ids()`), None outside Ray.
    """
    available = torch.cuda.is_available()
    return choose_device(
        name,
        gpu_ids=gpu_ids,
        cuda_available=available,
        cuda_count=torch.cuda.device_count() if available else 0,
    )


def choose_device(
    name: str,
    *,
    gpu_ids: Sequence[int | str] | None,
    cuda_available: bool,
    cuda_count: int,
) -> torch.device:
    """`auto` is CUDA when present, else CPU; an explicit CUDA device must exist.

    Under Ray (`gpu_ids` not None) a trial uses only the GPUs it was assigned: Ray makes
    them the visible devices (CUDA_VISIBLE_DEVICES), so `auto` with some is `cuda`, the
    first of them; with none, `auto` is the CPU even where the node has GPUs (Ray leaves a
    trial without GPUs every device visible, and those belong to the trials that asked for
    them), and an explicit CUDA device is refused.
    """
    if name == "auto":
        if gpu_ids is not None and not gpu_ids:
            return torch.device("cpu")
        if gpu_ids and not cuda_available:
            log.warning("GPUs %s were assigned but torch sees no CUDA device: CPU it is", gpu_ids)
        return torch.device("cuda" if cuda_available else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda":
        if not cuda_available:
            raise ConfigError("device", "CUDA was asked for but is not available")
        if gpu_ids is not None and not gpu_ids:
            raise ConfigError(
                "device", f"{name} was asked for but the trial was assigned no GPU (resources.gpu)"
            )
        if (dev.index or 0) >= cuda_count:
            raise ConfigError(
                "device", f"{name} was asked for but {cuda_count} CUDA device(s) are visible"
            )
    return dev


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


# Devices with fused SGD, Adam and AdamW kernels in every supported torch (CPU since 2.4).
_FUSED_DEVICES = ("cpu", "cuda")


def build_optimizer(groups: list[dict[str, Any]], cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov) or Adam/AdamW, fused where the device allows, else foreach.

    Fused (`fused=True`: one kernel per parameter for the whole update) is used when every
    parameter is a floating-point tensor on CPU or CUDA, the same condition torch checks.
    It computes the same update as foreach (`foreach=True`, the fallback) with the
    floating-point operations in another order, so weights can differ from a foreach run in
    the last bits after a step: a trial is reproducible against itself and its resumed
    checkpoints, not bit for bit against a foreach optimizer. On CPU the fused Adam step of
    an MLP's 266k weights takes 141 us against 363 us with foreach, and it has no slow path
    for all-zero gradients, where foreach Adam's `sqrt` of zero second moments (the weights
    `weight_fixing` has fixed) is about 5x slower than of positive ones.
    A fused step changes the parameters in place without bumping their version counter
    (`Tensor._version`): a strategy must not key a cache on a parameter's version.
    """
    for g in groups:
        ps = g["params"]
        g["params"] = [ps] if isinstance(ps, torch.Tensor) else list(ps)
        g.setdefault("lr", cfg.lr)
        g["base_lr"] = g["lr"]
    params = [p for g in groups for p in g["params"]]
    fused = all(p.is_floating_point() and p.device.type in _FUSED_DEVICES for p in params)
    # One of the two is set (True), the other left to torch (None).
    use_fused, use_foreach = (True, None) if fused else (None, True)
    opt: torch.optim.Optimizer
    if cfg.name == "sgd":
        opt = torch.optim.SGD(
            groups,
            lr=cfg.lr,
            momentum=cfg.momentum,
            nesterov=cfg.nesterov and cfg.momentum > 0,
            weight_decay=cfg.weight_decay,
            foreach=use_foreach,
            fused=use_fused,
        )
    else:
        adam = torch.optim.Adam if cfg.name == "adam" else torch.optim.AdamW
        opt = adam(
            groups,
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            foreach=use_foreach,
            fused=use_fused,
        )
    return opt


def lr_factor(
    cfg: ScheduleConfig, *, epoch_float: float, step: int, epochs: int, base_lr: float
) -> float:
    """The schedule's multiplier of the base learning rate at a point of training.

    A pure function of the position, so a resumed trial continues the same curve.
    """
    if cfg.name == "constant":
        return 1.0
    if cfg.name == "step":
        passed = sum(1 for m in cfg.milestones if epoch_float >= m)
        return cfg.gamma**passed
    if cfg.name == "halving":
        return cfg.gamma ** (step // cfg.every_steps)
    floor = min(1.0, cfg.eta_min / base_lr) if base_lr > 0 else 0.0
    if cfg.name == "cosine":
        t = min(1.0, epoch_float / max(1, epochs))
    else:  # cosine_restarts (SGDR): cycles of t0, t0*t_mult, ... epochs
        length, start = float(cfg.t0), 0.0
        while epoch_float >= start + length:
            start += length
            length *= cfg.t_mult
        t = (epoch_float - start) / length
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t))


@torch.no_grad()
def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int
) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of `model` in eval mode."""
    if x.shape[0] == 0:
        return float("nan"), float("nan")
    was_training = model.training
    model.eval()
    # Summed on the device and read once: no batch waits on the host. In float64, each
    # batch's float32 sum adds exactly as it would to a Python float.
    correct = torch.zeros((), dtype=torch.long, device=x.device)
    loss = torch.zeros((), dtype=torch.float64, device=x.device)
    for i in range(0, x.shape[0], batch_size):
        out = model(x[i : i + batch_size])
        yb = y[i : i + batch_size]
        loss += F.cross_entropy(out, yb, reduction="sum").to(torch.float64)
        correct += (out.argmax(1) == yb).sum()
    model.train(was_training)
    return int(correct) / x.shape[0], float(loss) / x.shape[0]


def environment(device: torch.device, origin: Origin | None = None) -> EnvironmentInfo:
    from importlib.metadata import PackageNotFoundError, version

    try:
        own = version("bitsweep")
    except PackageNotFoundError:
        own = "unknown"
    commit = None
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
        if out.returncode == 0:
            commit = out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        pass
    dev = str(device)
    if device.type == "cuda":
        dev = f"{dev} ({torch.cuda.get_device_name(device)})"
    return EnvironmentInfo(
        python=platform.python_version(),
        torch=torch.__version__,
        bitsweep=own,
        device=dev,
        hostname=socket.gethostname(),
        git_commit=commit,
        strategy_distribution=origin.distribution if origin else None,
        strategy_version=origin.version if origin else None,
        threads=torch.get_num_threads(),
    )


# -- the loop --------------------------------------------------------------------------------


EpochCallback = Callable[[EpochRecord, Callable[[Path], None]], bool | None]
"""Called after each epoch with its record and a function that writes a checkpoint into a
folder. Return True to stop the trial early (the best epoch so far is then measured)."""


@dataclass
class _State:
    epoch: int = 0  # epochs completed
    step: int = 0
    best_val: float = -1.0
    best_epoch: int = 0
    best_model: dict[str, torch.Tensor] | None = None
    best_strategy: dict[str, Any] | None = None
    train_seconds: float = 0.0
    samples: int = 0


@dataclass
class Trained:
    """A finished trial: its result, and the strategy and model that produced it."""

    result: TrialResult
    strategy: Strategy
    model: nn.Module


def run_trial(
    config: TrialConfig | ResolvedTrial,
    *,
    dataset: Dataset | None = None,
    on_epoch: EpochCallback | None = None,
    resume_from: Path | None = None,
    device: torch.device | str | None = None,
) -> TrialResult:
    """Train one trial and return its result (see `train`)."""
    return train(
        config, dataset=dataset, on_epoch=on_epoch, resume_from=resume_from, device=device
    ).result


def train(
    config: TrialConfig | ResolvedTrial,
    *,
    dataset: Dataset | None = None,
    on_epoch: EpochCallback | None = None,
    resume_from: Path | None = None,
    device: torch.device | str | None = None,
) -> Trained:
    """Train one trial and measure its deployed weights.

    `dataset` may be passed preloaded (a sweep loads it once per worker); it is moved to the
    trial's device once, and batched and augmented there. `resume_from` is a folder written by
    the checkpoint function given to `on_epoch`. `device`, when given, replaces the config's
    (a sweep worker passes the one its Ray assignment allows, see `pick_device`). Raises
    `ConfigError` for a config that cannot run and `TrialDiverged` when the loss stops being
    finite.
    """
    trial = config if isinstance(config, ResolvedTrial) else resolve(config)
    resolved, cls, params = trial.config, trial.strategy, trial.params
    assert resolved.optimizer and resolved.schedule and resolved.batch_size
    device = pick_device(resolved.device if device is None else str(device))
    seed_everything(resolved.seed)
    data = (
        dataset
        if dataset is not None
        else load_dataset(resolved.dataset, val_fraction=resolved.val_fraction, device=device)
    )
    data = data.to(device)
    model = build_model(
        resolved.model,
        data.input_shape,
        data.num_classes,
        resolved.model_options,
        defaults=cls.recipe.model_options,
    ).to(device)
    strategy = cls(params)
    model = strategy.prepare(model).to(device)
    optimizer = build_optimizer(strategy.param_groups(model), resolved.optimizer)
    # Shuffles and augmentations are drawn on the CPU and moved once per epoch (`batches`):
    # a seed gives the same batches on any device, and a checkpoint resumes on any.
    gen = torch.Generator().manual_seed(resolved.seed)
    state = _State()
    history: list[EpochRecord] = []
    val_steps: list[StepRecord] = []

    if resume_from is not None:
        ckpt = torch.load(
            Path(resume_from) / CHECKPOINT_FILE, map_location=device, weights_only=False
        )
        model.load_state_dict(ckpt["model"])
        strategy.load_state_dict(ckpt["strategy"])
        optimizer = build_optimizer(strategy.param_groups(model), resolved.optimizer)
        optimizer.load_state_dict(ckpt["optimizer"])
        gen.set_state(ckpt["generator"].to(gen.get_state().device))
        # map_location moved every tensor to the device; generator states live on the CPU.
        torch.set_rng_state(ckpt["torch_rng"].cpu())
        if device.type == "cuda" and ckpt.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(ckpt["cuda_rng"].cpu(), device)
        state = _State(**ckpt["state"])
        history = [EpochRecord(**h) for h in ckpt["history"]]
        val_steps = [StepRecord(**v) for v in ckpt.get("val_steps", [])]

    def save(folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(
            {
                "config": resolved.model_dump(mode="json"),
                "model": model.state_dict(),
                "strategy": strategy.state_dict(),
                "optimizer": optimizer.state_dict(),
                "generator": gen.get_state(),
                "torch_rng": torch.get_rng_state(),
                # Dropout on a GPU draws from the device's generator.
                "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                "state": state.__dict__,
                "history": [h.model_dump() for h in history],
                "val_steps": [v.model_dump() for v in val_steps],
            },
            folder / CHECKPOINT_FILE,
        )

    n_train = data.x_train.shape[0]
    bs = min(resolved.batch_size, n_train)
    # A last batch of one sample is dropped: BatchNorm cannot train on it, and it would be a
    # step on a single example's gradient.
    drop_last = bs > 1 and n_train % bs == 1
    steps_per_epoch = n_train // bs if drop_last else math.ceil(n_train / bs)
    base_lr = resolved.optimizer.lr
    stopped = False
    while state.epoch < resolved.epochs and not stopped:
        epoch = state.epoch
        model.train()
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen = 0
        progress = Progress(
            epoch=epoch, epochs=resolved.epochs, step=state.step, steps_per_epoch=steps_per_epoch
        )
        for i, (xb, yb) in enumerate(
            batches(
                data.x_train,
                data.y_train,
                bs,
                shuffle=True,
                generator=gen,
                augment=resolved.augment,
                drop_last=drop_last,
            )
        ):
            factor = lr_factor(
                resolved.schedule,
                epoch_float=epoch + i / steps_per_epoch,
                step=state.step,
                epochs=resolved.epochs,
                base_lr=base_lr,
            )
            for g in optimizer.param_groups:
                g["lr"] = g["base_lr"] * factor
            out = model(xb)
            loss = F.cross_entropy(out, yb)
            reg = strategy.regularizer(model, loss)
            total = loss if reg is None else loss + reg
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            if resolved.optimizer.grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), resolved.optimizer.grad_clip)
            optimizer.step()
            state.step += 1
            progress.step = state.step
            progress.lr = base_lr * factor
            strategy.on_step(model, progress)
            if resolved.val_every_steps and state.step % resolved.val_every_steps == 0:
                # The deployed weights of this step, as an epoch's end measures them; nothing
                # here draws a random number, so the training run is the same with or without.
                acc, vloss = evaluate(
                    strategy.deploy(model), data.x_val, data.y_val, resolved.eval_batch_size
                )
                val_steps.append(StepRecord(step=state.step, val_accuracy=acc, val_loss=vloss))
            loss_sum += loss.detach() * yb.shape[0]
            correct += (out.argmax(1) == yb).sum()
            seen += yb.shape[0]
        train_loss = float(loss_sum) / max(1, seen)
        if not math.isfinite(train_loss):
            raise TrialDiverged(f"training loss is {train_loss} in epoch {epoch + 1}")
        progress.loss = train_loss
        if strategy.on_epoch_end(model, progress):
            optimizer = build_optimizer(strategy.param_groups(model), resolved.optimizer)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
        state.train_seconds += seconds
        state.samples += seen
        deployed = strategy.deploy(model)
        val_acc, val_loss = evaluate(deployed, data.x_val, data.y_val, resolved.eval_batch_size)
        state.epoch = epoch + 1
        selectable = strategy.selectable(progress)
        score = val_acc if math.isfinite(val_acc) else float(state.epoch)
        if selectable and (state.best_model is None or score > state.best_val):
            state.best_val = score
            state.best_epoch = state.epoch
            state.best_model = {k: v.detach().clone() for k, v in model.state_dict().items()}
            state.best_strategy = strategy.state_dict()
        record = EpochRecord(
            epoch=state.epoch,
            train_loss=train_loss,
            train_accuracy=float(correct) / max(1, seen),
            val_accuracy=val_acc,
            val_loss=val_loss,
            lr=base_lr * factor if steps_per_epoch else base_lr,
            seconds=seconds,
            extra=strategy.extra_metrics(model),
        )
        history.append(record)
        log.debug("epoch %d: %s", state.epoch, record)
        if on_epoch is not None and on_epoch(record, save):
            stopped = True

    if state.best_model is not None:
        model.load_state_dict(state.best_model)
        strategy.load_state_dict(state.best_strategy or {})
    exported = strategy.export(model)
    deployed = strategy.deploy(model)
    test_acc, test_loss = evaluate(deployed, data.x_test, data.y_test, resolved.eval_batch_size)
    result = TrialResult(
        config=resolved,
        test_accuracy=test_acc,
        test_loss=test_loss,
        best_val_accuracy=state.best_val
        if math.isfinite(history[-1].val_accuracy)
        else float("nan"),
        best_val_loss=history[state.best_epoch - 1].val_loss
        if 0 < state.best_epoch <= len(history)
        else float("nan"),
        best_epoch=state.best_epoch,
        epochs_run=state.epoch,
        train_seconds=state.train_seconds,
        samples_per_second=state.samples / state.train_seconds if state.train_seconds > 0 else 0.0,
        weights=weight_metrics(exported),
        strategy_info=strategy.extra_metrics(model),
        history=history,
        val_steps=val_steps,
        environment=environment(device, trial.origin),
    )
    return Trained(result=result, strategy=strategy, model=model)

"""The contract of one trial: what to train (`TrialConfig`) and what came out (`TrialResult`)."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

DATASET_PATTERN = re.compile(r"^(digits|mnist-5k|(npz|mnist|cifar10|cifar100):.+)$")
DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


MAX_DEPTH = 8  # nesting of a free-form mapping (params, search ranges, model options)


def _shallow(v: dict[str, Any]) -> dict[str, Any]:
    """`v`, refused when its values nest lists or mappings more than `MAX_DEPTH` deep: no
    strategy, search range or model takes more, and deeper ones would cost every reader's
    recursion."""
    level: list[Any] = [v]
    for _ in range(MAX_DEPTH + 1):
        level = [
            x for c in level for x in (c.values() if isinstance(c, dict) else c)
            if isinstance(x, dict | list | tuple)
        ]  # fmt: skip
        if not level:
            return v
    raise ValueError(f"is nested more than {MAX_DEPTH} levels deep")


# A free-form mapping of a spec (a strategy's params, its search ranges, model options).
Options = Annotated[dict[str, Any], AfterValidator(_shallow)]


def _dataset_ref(v: str) -> str:
    if not DATASET_PATTERN.fullmatch(v):
        raise ValueError(
            "must be digits, mnist-5k, or one of npz:PATH, mnist:DIR, cifar10:DIR, cifar100:DIR"
        )
    return v


DatasetRef = Annotated[str, AfterValidator(_dataset_ref)]
"""A dataset reference: a built-in name, or a format and a local path."""


class Strict(BaseModel):
    """A model that refuses fields it does not know."""

    model_config = ConfigDict(extra="forbid")


class OptimizerConfig(Strict):
    """The optimizer of a trial. `momentum` and `nesterov` apply to SGD only."""

    name: Literal["sgd", "adam", "adamw"] = "adam"
    lr: float = Field(1e-3, gt=0, le=10)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(0.0, ge=0, le=1)
    grad_clip: float | None = Field(None, gt=0, description="max gradient norm, or none")


class ScheduleConfig(Strict):
    """The learning-rate schedule.

    - `constant`: the optimizer's learning rate throughout.
    - `step`: multiply by `gamma` at each epoch in `milestones`.
    - `cosine`: one cosine decay from lr to `eta_min` over the trial.
    - `cosine_restarts`: SGDR, cycles of `t0` epochs growing by `t_mult`.
    - `halving`: multiply by `gamma` (0.5 by default) every `every_steps` optimizer steps.
    """

    name: Literal["constant", "step", "cosine", "cosine_restarts", "halving"] = "constant"
    milestones: list[int] = Field(default_factory=list)
    gamma: float = Field(0.1, gt=0, le=1)
    t0: int = Field(2, ge=1)
    t_mult: int = Field(2, ge=1)
    eta_min: float = Field(0.0, ge=0)
    every_steps: int = Field(200, ge=1)

    @field_validator("milestones")
    @classmethod
    def _increasing(cls, v: list[int]) -> list[int]:
        if any(m < 1 for m in v) or v != sorted(set(v)):
            raise ValueError("milestones must be strictly increasing positive epochs")
        return v


class AugmentConfig(Strict):
    """Augmentation applied batch by batch on the trial's device (images only)."""

    crop_padding: int = Field(0, ge=0, le=16, description="random crop after zero padding")
    flip: bool = Field(False, description="random horizontal flip")
    cutout: int = Field(0, ge=0, le=32, description="side of a random square set to zero")


class TrainingKnobs(Strict):
    """Training settings a sweep may search or fix beside a strategy's own params, by name
    in `params`: they override the recipe's optimizer and batch size."""

    lr: float = Field(1e-3, gt=0, le=10)
    optimizer: Literal["sgd", "adam", "adamw"] = "adam"
    weight_decay: float = Field(0.0, ge=0, le=1)
    momentum: float = Field(0.9, ge=0, lt=1)
    batch_size: int = Field(128, ge=1, le=65_536)


class TrainingSettings(Strict):
    """What a trial is trained on and how long: shared by a sweep spec and a trial config, so a
    sweep's trials take these fields from the spec as they are."""

    dataset: DatasetRef = Field(
        "digits", description="digits, mnist-5k, npz:PATH, mnist:DIR, cifar10:DIR, cifar100:DIR"
    )
    model: str = Field("mlp", min_length=1)
    model_options: Options = Field(default_factory=dict)
    schedule: ScheduleConfig | None = None
    augment: AugmentConfig | None = None
    epochs: int = Field(10, ge=1, le=10_000)
    batch_size: int | None = Field(None, ge=1, le=65_536)
    seed: int = Field(0, ge=0, lt=2**32)
    val_fraction: float = Field(0.1, ge=0, lt=0.9)
    val_every_steps: int | None = Field(
        None,
        ge=1,
        le=1_000_000,
        description="also measure validation accuracy every this many optimizer steps "
        "(`TrialResult.val_steps`), for how fast a method converges; nothing chooses on it",
    )

    def training_settings(self) -> dict[str, Any]:
        """The `TrainingSettings` fields of this model, as a dict of their values."""
        return {k: getattr(self, k) for k in TrainingSettings.model_fields}


class TrialConfig(TrainingSettings):
    """Everything needed to train one trial. Unset training fields take the strategy's recipe."""

    strategy: str = Field(..., min_length=1, description="registered strategy name")
    params: Options = Field(
        default_factory=dict,
        description="the strategy's own params (validated by its Params) and training knobs "
        "(lr, optimizer, weight_decay, momentum, batch_size)",
    )
    optimizer: OptimizerConfig | None = None
    device: str = "auto"
    eval_batch_size: int = Field(2048, ge=1)

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not DEVICE_PATTERN.fullmatch(v):
            raise ValueError("must be auto, cpu, cuda or cuda:N")
        return v


class Record(BaseModel):
    """A record written to JSON and read back: NaN and infinities as the JSON constants Python
    writes (`NaN`, `Infinity`), so that a diverged loss survives the round trip."""

    model_config = ConfigDict(ser_json_inf_nan="constants")


class LayerMetrics(Record):
    """Cost of one quantized layer's deployed weights."""

    name: str
    shape: list[int]
    numel: int
    bits: float
    unique_weights: int
    unique_nonzero_weights: int
    weight_entropy_bits: float
    sparsity: float
    weight_bits: float


class WeightMetrics(Record):
    """Cost of the deployed weights of all quantized layers together (see `strategies.metrics`)."""

    numel: int
    unique_weights: int
    unique_nonzero_weights: int
    weight_entropy_bits: float
    weight_entropy_nonzero_bits: float
    sparsity: float
    weight_bits: float
    weight_bytes: float
    compression_ratio: float
    mean_bits: float
    layers: list[LayerMetrics] = Field(default_factory=list)


class EpochRecord(Record):
    """What one epoch reports (a sweep reports each to Ray Tune)."""

    epoch: int
    train_loss: float
    train_accuracy: float
    val_accuracy: float
    val_loss: float
    lr: float
    seconds: float
    extra: dict[str, float] = Field(default_factory=dict)


class StepRecord(Record):
    """Validation of the deployed weights after an optimizer step (`val_every_steps`)."""

    step: int
    val_accuracy: float
    val_loss: float


class EnvironmentInfo(BaseModel):
    python: str
    torch: str
    bitsweep: str
    device: str
    hostname: str
    git_commit: str | None = None
    strategy_distribution: str | None = Field(
        None, description="the distribution that provided the strategy"
    )
    strategy_version: str | None = None
    threads: int | None = Field(None, description="torch's intra-op thread count")


class TrialResult(Record):
    """The outcome of one trial: accuracy on the deployed weights and their cost."""

    config: TrialConfig
    status: Literal["completed", "failed"] = "completed"
    error: str | None = None
    test_accuracy: float
    test_loss: float
    best_val_accuracy: float
    best_val_loss: float = Field(
        float("nan"), description="validation loss at the best epoch (the deployed weights')"
    )
    best_epoch: int
    epochs_run: int
    train_seconds: float
    samples_per_second: float
    weights: WeightMetrics
    strategy_info: dict[str, Any] = Field(default_factory=dict)
    history: list[EpochRecord] = Field(default_factory=list)
    val_steps: list[StepRecord] = Field(
        default_factory=list, description="validation every `val_every_steps` optimizer steps"
    )
    environment: EnvironmentInfo

    def metrics(self) -> dict[str, float]:
        """The flat metric dict logged to MLflow (its keys are listed in docs/records.md)."""
        w = self.weights
        out = {
            "test_accuracy": self.test_accuracy,
            "test_loss": self.test_loss,
            "best_val_accuracy": self.best_val_accuracy,
            "best_val_loss": self.best_val_loss,
            "unique_weights": float(w.unique_weights),
            "unique_nonzero_weights": float(w.unique_nonzero_weights),
            "weight_entropy_bits": w.weight_entropy_bits,
            "weight_entropy_nonzero_bits": w.weight_entropy_nonzero_bits,
            "sparsity": w.sparsity,
            "weight_bits": w.weight_bits,
            "weight_bytes": w.weight_bytes,
            "compression_ratio": w.compression_ratio,
            "mean_bits": w.mean_bits,
            "train_seconds": self.train_seconds,
            "samples_per_second": self.samples_per_second,
        }
        for k, v in self.strategy_info.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                out[k if k.startswith("layer.") else f"strategy.{k}"] = float(v)
        for lm in w.layers:
            out[f"layer.{lm.name}.bits"] = lm.bits
        return out

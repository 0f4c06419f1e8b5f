"""The sweep spec: a benchmark (dataset, model) and the strategies to sweep on it."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from schemas.errors import located_error
from schemas.names import TRIAL_METRICS
from schemas.trial import Strict, TrainingSettings

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

# Metrics a sweep may optimize: every key `TrialResult.metrics()` reports.
OBJECTIVE_METRICS = TRIAL_METRICS


class StrategySpec(Strict):
    """One strategy of a sweep: fixed `params`, and `search` ranges that override its defaults.

    A search entry is `[low, high]` for a number, a list of choices for a categorical or
    boolean, or `{low, high, log, step}` / `{choices: [...]}` in full. A field named in
    `params` is fixed and not searched.
    """

    name: str = Field(..., min_length=1)
    params: dict[str, Any] = Field(default_factory=dict)
    search: dict[str, Any] = Field(default_factory=dict)
    search_defaults: bool = Field(
        True, description="also search the strategy's default ranges not named in `search`"
    )
    trials: int | None = Field(None, ge=1, le=10_000, description="overrides trials_per_strategy")

    @model_validator(mode="after")
    def _disjoint(self) -> StrategySpec:
        both = sorted(set(self.params) & set(self.search))
        if both:
            raise located_error(
                "StrategySpec", ("search", both[0]), "is both fixed in params and searched", both[0]
            )
        return self


class Objective(Strict):
    metric: Literal[OBJECTIVE_METRICS] = "test_accuracy"  # type: ignore[valid-type]
    mode: Literal["max", "min"] = "max"


# The smallest share of a resource Ray schedules: a smaller nonzero request fails every trial.
_GPU_UNIT = 0.0001


class Resources(Strict):
    """Resources of each trial; a fraction of a GPU lets small trials share one.

    `gpu: 0.25` packs four trials on a GPU: Ray assigns each the same device and each may
    allocate a quarter of its memory. A trial with `gpu: 0` runs on the CPU, on any node.
    """

    cpu: float = Field(1.0, gt=0, le=256)
    gpu: float = Field(0.0, ge=0, le=16)

    @field_validator("gpu")
    @classmethod
    def _gpu(cls, v: float) -> float:
        if v > 1 and not float(v).is_integer():
            raise ValueError("more than one GPU must be a whole number")
        if 0 < v < _GPU_UNIT:
            raise ValueError(f"a fraction of a GPU must be at least {_GPU_UNIT} (Ray's unit)")
        return v


class EarlyStopping(Strict):
    """ASHA over epochs (single objective only)."""

    enabled: bool = False
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(2.0, gt=1)


class SweepSpec(TrainingSettings):
    """A benchmark sweep: every strategy swept on one dataset and model.

    The training settings (dataset, model, epochs, seed, ...) are those of `TrainingSettings`,
    shared with every trial of the sweep; `epochs` defaults to 5 here.
    """

    name: str = Field(
        ...,
        description="letters, digits, '_', '-', '.'; up to 64",
        json_schema_extra={"pattern": NAME_PATTERN.pattern},
    )
    strategies: list[StrategySpec] = Field(..., min_length=1)
    trials_per_strategy: int = Field(4, ge=1, le=10_000)
    epochs: int = Field(5, ge=1, le=10_000)
    resources: Resources = Field(default_factory=Resources)
    max_concurrent_trials: int | None = Field(None, ge=1, le=1024)
    objectives: list[Objective] = Field(default_factory=lambda: [Objective()], min_length=1)
    early_stopping: EarlyStopping = Field(default_factory=EarlyStopping)
    max_failures: int = Field(2, ge=0, le=100, description="retries of a trial whose worker died")
    sampler: Literal["auto", "tpe", "nsga2", "random"] = "auto"
    tracking_uri: str | None = Field(
        None, description="MLflow store; default SQLite under BITSWEEP_HOME"
    )
    optuna_storage: str | None = Field(
        None, description="Optuna RDB URL; default SQLite under BITSWEEP_HOME"
    )
    storage_path: str | None = Field(
        None,
        description="Ray Tune storage (checkpoints, experiment state): a folder every node "
        "sees, or a cloud URI such as s3://bucket/path; default BITSWEEP_HOME/ray",
    )
    export_weights: bool = Field(True, description="log each finished trial's deployed weights")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_PATTERN.match(v):
            raise ValueError(
                "must be 1-64 letters, digits, '_', '-' or '.', starting with a letter or digit"
            )
        return v

    @model_validator(mode="after")
    def _consistent(self) -> SweepSpec:
        names = [s.name for s in self.strategies]
        for i, n in enumerate(names):
            if n in names[:i]:
                raise located_error(
                    "SweepSpec", ("strategies", i, "name"), f"strategy {n!r} is listed twice", n
                )
        metrics = [o.metric for o in self.objectives]
        for i, m in enumerate(metrics):
            if m in metrics[:i]:
                raise located_error(
                    "SweepSpec", ("objectives", i, "metric"), f"{m!r} is named twice", m
                )
        if self.early_stopping.enabled and len(self.objectives) > 1:
            raise located_error(
                "SweepSpec",
                ("early_stopping", "enabled"),
                "early stopping (ASHA) needs a single objective; this spec has "
                f"{len(self.objectives)}",
                True,
            )
        return self

    @property
    def benchmark(self) -> str:
        """The MLflow experiment of this sweep's benchmark: `bitsweep/<dataset>/<model>`."""
        return f"bitsweep/{self.dataset}/{self.model}"

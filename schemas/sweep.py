"""The sweep spec: a benchmark (dataset, model) and the strategies to sweep on it."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from schemas.errors import located_error
from schemas.names import OBJECTIVE_METRICS, TEST_METRICS, TRIAL_METRICS
from schemas.secrets import masked
from schemas.trial import Options, Strict, TrainingSettings

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MAX_TRIALS = 10_000  # a strategy's most trials in one sweep
# Validation context of a spec read back from a record (`SweepSpec.recorded`).
RECORDED = "recorded"


class StrategySpec(Strict):
    """One strategy of a sweep: fixed `params`, and `search` ranges that override its defaults.

    A search entry is `[low, high]` for a number, a list of choices for a categorical or
    boolean, or `{low, high, log, step}` / `{choices: [...]}` in full. A field named in
    `params` is fixed and not searched.
    """

    name: str = Field(..., min_length=1)
    params: Options = Field(default_factory=dict)
    search: Options = Field(default_factory=dict)
    search_defaults: bool = Field(
        True, description="also search the strategy's default ranges not named in `search`"
    )
    trials: int | None = Field(
        None, ge=1, le=MAX_TRIALS, description="overrides trials_per_strategy"
    )

    @model_validator(mode="after")
    def _disjoint(self) -> StrategySpec:
        both = sorted(set(self.params) & set(self.search))
        if both:
            raise located_error(
                "StrategySpec", ("search", both[0]), "is both fixed in params and searched", both[0]
            )
        return self


class Objective(Strict):
    """What the search optimizes and each strategy's config is selected on: a validation
    metric or a cost metric, never a test metric (`OBJECTIVE_METRICS`)."""

    metric: Literal[TRIAL_METRICS] = Field(  # type: ignore[valid-type]
        "best_val_accuracy",
        description="one of " + ", ".join(OBJECTIVE_METRICS) + "; test metrics are refused",
    )
    mode: Literal["max", "min"] = "max"

    @field_validator("metric")
    @classmethod
    def _not_test(cls, v: str, info: ValidationInfo) -> str:
        # A spec recorded before 0.2 (read back, never run) may name a test metric.
        if v in TEST_METRICS and not (info.context or {}).get(RECORDED):
            raise ValueError(
                f"{v} is measured on the test split, which nothing that selects may read; "
                f"use {TEST_METRICS[v]} (the same measure on the validation split, at the "
                "epoch whose weights are deployed)"
            )
        return v


class Confirmation(Strict):
    """After the search, each strategy's selected config trained again with fresh seeds.

    The selected config is the search trial best on the first objective's validation metric;
    with several objectives, each config on the strategy's validation front, up to
    `max_configs`. The board reports the mean of the fresh seeds' test accuracy, never the
    search trial's own.
    """

    enabled: bool = Field(True, description="off: every board row is one unconfirmed seed")
    seeds: int = Field(3, ge=2, le=50, description="fresh seeds per selected config")
    max_configs: int = Field(
        3, ge=1, le=20, description="configs confirmed per strategy (several objectives)"
    )


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
    trials_per_strategy: int = Field(4, ge=1, le=MAX_TRIALS)
    epochs: int = Field(5, ge=1, le=10_000)
    val_fraction: float = Field(
        0.2,
        ge=0.05,
        le=0.5,
        description="share of the training data held out for validation, which selects "
        "every config; 0.05-0.5",
    )
    confirmation: Confirmation = Field(default_factory=Confirmation)
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
        if not NAME_PATTERN.fullmatch(v):
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

    @classmethod
    def recorded(cls, data: Any) -> SweepSpec:
        """A spec read back from a record, to show, never to run: one recorded before 0.2 may
        select on a test metric, which a spec to run may not."""
        return cls.model_validate(data, context={RECORDED: True})

    def shown(self) -> SweepSpec:
        """This spec as a record or an answer shows it: its stores without their passwords."""
        stores = ("tracking_uri", "optuna_storage", "storage_path")
        return self.model_copy(
            update={k: masked(v) for k in stores if (v := getattr(self, k)) is not None}
        )

    def total_trials(self) -> int:
        """The most trials the sweep runs: every strategy's search and its confirmations."""
        c = self.confirmation
        per = (c.max_configs if len(self.objectives) > 1 else 1) * c.seeds if c.enabled else 0
        return sum((s.trials or self.trials_per_strategy) + per for s in self.strategies)

    def confirmation_seeds(self) -> list[int]:
        """The fresh seeds of each confirmation: disjoint from every seed the search used
        (`seed` .. `seed` + 9,999, a strategy's most trials)."""
        return [(self.seed + MAX_TRIALS + k) % 2**32 for k in range(self.confirmation.seeds)]

    @property
    def benchmark(self) -> str:
        """The MLflow experiment of this sweep's benchmark: `bitsweep/<dataset>/<model>`."""
        return f"bitsweep/{self.dataset}/{self.model}"

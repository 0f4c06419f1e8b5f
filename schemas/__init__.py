"""Pydantic models: the one contract between the CLI, the service, the runners and MLflow."""

from schemas.trial import (
    AugmentConfig,
    EnvironmentInfo,
    EpochRecord,
    LayerMetrics,
    OptimizerConfig,
    ScheduleConfig,
    TrialConfig,
    TrialResult,
    WeightMetrics,
)

__all__ = [
    "AugmentConfig",
    "EnvironmentInfo",
    "EpochRecord",
    "LayerMetrics",
    "OptimizerConfig",
    "ScheduleConfig",
    "TrialConfig",
    "TrialResult",
    "WeightMetrics",
]

from schemas.sweep import EarlyStopping, Objective, Resources, StrategySpec, SweepSpec

__all__ += ["EarlyStopping", "Objective", "Resources", "StrategySpec", "SweepSpec"]

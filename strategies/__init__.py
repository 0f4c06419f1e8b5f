"""Quantization strategies and their registry: the plugin API. Imports torch and pydantic only.

Everything a strategy of one's own needs is importable from here; the helpers that attach
weight transforms are in `strategies.layers`, the contract suite in `strategies.testing`.
"""

from __future__ import annotations

from schemas.errors import FieldError
from schemas.trial import AugmentConfig, OptimizerConfig, ScheduleConfig, TrainingKnobs
from strategies.base import DEFAULT_LR_SEARCH, Progress, Recipe, Strategy
from strategies.exported import ExportedLayer
from strategies.metrics import weight_metrics
from strategies.params import Relation, Search, StrategyParams
from strategies.registry import (
    ENTRY_POINT_GROUP,
    Origin,
    PluginError,
    UnknownStrategyError,
    get_strategy,
    list_strategies,
    plugin_errors,
    register_strategy,
    strategy_origin,
    unregister_strategy,
)

# Built-in strategies register themselves on import (one line each).
from strategies import full_precision  # noqa: F401  isort: skip
from strategies import bit_learning  # noqa: F401  isort: skip
from strategies import weight_fixing  # noqa: F401  isort: skip
from strategies import bit_regularization  # noqa: F401  isort: skip
from strategies import wrn_1bit  # noqa: F401  isort: skip
from strategies import exact_binary  # noqa: F401  isort: skip

__all__ = [
    "DEFAULT_LR_SEARCH",
    "ENTRY_POINT_GROUP",
    "AugmentConfig",
    "ExportedLayer",
    "FieldError",
    "OptimizerConfig",
    "Origin",
    "PluginError",
    "Progress",
    "Recipe",
    "Relation",
    "ScheduleConfig",
    "Search",
    "Strategy",
    "StrategyParams",
    "TrainingKnobs",
    "UnknownStrategyError",
    "get_strategy",
    "list_strategies",
    "plugin_errors",
    "register_strategy",
    "strategy_origin",
    "unregister_strategy",
    "weight_metrics",
]

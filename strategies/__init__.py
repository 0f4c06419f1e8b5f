"""Quantization strategies and their registry. Imports torch and pydantic only."""

from __future__ import annotations

from strategies.base import ExportedLayer, Progress, Recipe, Search, Strategy, StrategyParams
from strategies.metrics import weight_metrics
from strategies.registry import (
    ENTRY_POINT_GROUP,
    UnknownStrategyError,
    get_strategy,
    list_strategies,
    register_strategy,
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
    "ENTRY_POINT_GROUP",
    "ExportedLayer",
    "Progress",
    "Recipe",
    "Search",
    "Strategy",
    "StrategyParams",
    "UnknownStrategyError",
    "get_strategy",
    "list_strategies",
    "register_strategy",
    "unregister_strategy",
    "weight_metrics",
]

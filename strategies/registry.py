"""The strategy registry: a name → class dict, a decorator, and entry-point discovery.

Strategies in other packages register through the entry-point group `bitsweep.strategies`
(`name = "package.module:Class"`); they are loaded the first time the registry is read.
A duplicate name raises, whether it comes from a decorator or an entry point.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import TypeVar

from strategies.base import Strategy

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "bitsweep.strategies"

_REGISTRY: dict[str, type[Strategy]] = {}
_plugins_loaded = False

S = TypeVar("S", bound=type[Strategy])


class UnknownStrategyError(KeyError):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name

    def __str__(self) -> str:
        known = ", ".join(sorted(_REGISTRY)) or "none"
        return f"unknown strategy {self.name!r} (known: {known})"


def register_strategy(name: str) -> Callable[[S], S]:
    """Class decorator: register a `Strategy` subclass under `name`. Raises on a duplicate."""
    if not name or not name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"strategy name {name!r} must be letters, digits, '_' or '-'")

    def deco(cls: S) -> S:
        if not (isinstance(cls, type) and issubclass(cls, Strategy)):
            raise TypeError(f"{cls!r} is not a Strategy subclass")
        existing = _REGISTRY.get(name)
        if existing is not None and existing is not cls:
            where = f"{existing.__module__}.{existing.__qualname__}"
            raise ValueError(f"strategy {name!r} is already registered by {where}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def unregister_strategy(name: str) -> None:
    """Remove `name` from the registry (tests and interactive sessions)."""
    _REGISTRY.pop(name, None)


def load_plugins(*, reload: bool = False) -> None:
    """Import every strategy advertised under the entry-point group, once."""
    global _plugins_loaded
    if _plugins_loaded and not reload:
        return
    _plugins_loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in _REGISTRY and _REGISTRY[ep.name].__module__ == ep.module:
            continue
        cls = ep.load()
        if not (isinstance(cls, type) and issubclass(cls, Strategy)):
            raise TypeError(f"entry point {ep.name} = {ep.value} is not a Strategy subclass")
        if ep.name not in _REGISTRY or _REGISTRY[ep.name] is not cls:
            register_strategy(ep.name)(cls)


def get_strategy(name: str) -> type[Strategy]:
    """The class registered under `name`; raises `UnknownStrategyError`."""
    load_plugins()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownStrategyError(name) from None


def list_strategies() -> dict[str, type[Strategy]]:
    """Every registered strategy, by name, sorted."""
    load_plugins()
    return dict(sorted(_REGISTRY.items()))

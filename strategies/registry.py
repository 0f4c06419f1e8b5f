"""The strategy registry: a name → class dict, a decorator, and entry-point discovery.

Strategies in other packages register through the entry-point group `bitsweep.strategies`
(`name = "package.module:Class"`); they are loaded the first time the registry is read. A
duplicate name, a class that is not a complete `Strategy` (no `export`, a `Params` that is not
a `StrategyParams`, a `Search` outside its field's bounds) raise at registration. An entry point
that fails to load does not stop bitsweep: the error is kept (`plugin_errors()`), the other
strategies work, and asking for the broken one says why it is missing.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points, packages_distributions, version
from typing import TypeVar

from schemas.errors import FieldError
from strategies.base import Strategy
from strategies.params import StrategyParams

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "bitsweep.strategies"

S = TypeVar("S", bound=type[Strategy])


@dataclass(frozen=True)
class Origin:
    """Where a registered strategy came from: its distribution and version, and how it came."""

    distribution: str
    version: str
    via: str  # "builtin", "entry point", or "decorator"
    entry_point: str = ""


@dataclass(frozen=True)
class PluginError:
    """An entry point that could not be registered, and why."""

    name: str
    value: str
    distribution: str
    error: str

    def __str__(self) -> str:
        return (
            f"entry point {self.name} = {self.value} (distribution {self.distribution}): "
            f"{self.error}"
        )


_REGISTRY: dict[str, type[Strategy]] = {}
_ORIGINS: dict[str, Origin] = {}
_PLUGIN_ERRORS: dict[str, PluginError] = {}
_plugins_loaded = False


class UnknownStrategyError(FieldError, KeyError):
    """No strategy of that name (field `strategy`); says why when its entry point is broken."""

    def __init__(self, name: str, field: str = "strategy") -> None:
        self.name = name
        broken = _PLUGIN_ERRORS.get(name)
        if broken is not None:
            reason = f"strategy {name!r} failed to load: {broken}"
        else:
            known = ", ".join(sorted(_REGISTRY)) or "none"
            reason = f"unknown strategy {name!r} (known: {known})"
        FieldError.__init__(self, field, reason)

    def __str__(self) -> str:
        return self.reason

    def __reduce__(self) -> tuple[object, ...]:
        return (FieldError, (self.field, self.reason))


def check_strategy_class(cls: object) -> None:
    """Raise `TypeError` naming the class and the reason unless `cls` is a complete strategy."""
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        raise TypeError(f"{cls!r} is not a Strategy subclass")
    where = f"{cls.__module__}.{cls.__qualname__}"
    if inspect.isabstract(cls):
        missing = ", ".join(sorted(getattr(cls, "__abstractmethods__", ())))
        raise TypeError(f"strategy class {where} does not implement {missing}()")
    if not (isinstance(cls.Params, type) and issubclass(cls.Params, StrategyParams)):
        raise TypeError(f"{where}.Params is not a StrategyParams subclass")
    if not cls.Params.__pydantic_complete__:
        try:
            cls.Params.model_rebuild(raise_errors=True)
        except Exception as e:
            raise TypeError(
                f"{where}.Params: its field annotations cannot be resolved ({e}); import the "
                "names they use at module level"
            ) from None
    from strategies.space import SpaceError, check_params_class

    try:
        check_params_class(cls.Params, cls.recipe.search)
    except SpaceError as e:
        raise TypeError(f"{where}: {e.field}: {e.reason}") from None


def register_strategy(name: str) -> Callable[[S], S]:
    """Class decorator: register a `Strategy` subclass under `name`.

    Raises on a duplicate name and on an incomplete class (see `check_strategy_class`).
    """
    if not name or not name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"strategy name {name!r} must be letters, digits, '_' or '-'")

    def deco(cls: S) -> S:
        check_strategy_class(cls)
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
    _ORIGINS.pop(name, None)


def load_plugins(*, reload: bool = False) -> None:
    """Import every strategy advertised under the entry-point group, once. Never raises: a
    broken entry point is recorded in `plugin_errors()` and logged."""
    global _plugins_loaded
    if _plugins_loaded and not reload:
        return
    _plugins_loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        _PLUGIN_ERRORS.pop(ep.name, None)
        try:
            _load_entry_point(ep)
        except Exception as e:  # a plugin's import may raise anything
            err = PluginError(ep.name, ep.value, _dist_name(ep), f"{type(e).__name__}: {e}")
            _PLUGIN_ERRORS[ep.name] = err
            log.warning("%s", err)


def _load_entry_point(ep: EntryPoint) -> None:
    existing = _REGISTRY.get(ep.name)
    if existing is not None and existing.__module__ == ep.module:
        _ORIGINS[ep.name] = _origin_of_entry_point(ep)
        return
    cls = ep.load()
    check_strategy_class(cls)
    decorated = cls.name
    if decorated and decorated != ep.name:
        if _REGISTRY.get(decorated) is cls:
            unregister_strategy(decorated)
        raise ValueError(
            f"the class registers itself as {decorated!r} but its entry point is named "
            f"{ep.name!r}; use one name for both"
        )
    if _REGISTRY.get(ep.name) is not cls:
        register_strategy(ep.name)(cls)
    _ORIGINS[ep.name] = _origin_of_entry_point(ep)


def _dist_name(ep: EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return dist.name if dist is not None else "unknown"


def _origin_of_entry_point(ep: EntryPoint) -> Origin:
    dist = getattr(ep, "dist", None)
    return Origin(
        distribution=dist.name if dist is not None else "unknown",
        version=dist.version if dist is not None else "unknown",
        via="entry point",
        entry_point=f"{ep.name} = {ep.value}",
    )


@functools.cache
def _distributions() -> Mapping[str, list[str]]:
    return packages_distributions()


def _origin_of_module(module: str) -> Origin:
    top = module.split(".")[0]
    dists = _distributions().get(top, [])
    if top == "strategies":
        dists = dists or ["bitsweep"]
        via = "builtin"
    else:
        via = "decorator"
    if not dists:
        return Origin(distribution=f"module {module} (no distribution)", version="", via=via)
    try:
        ver = version(dists[0])
    except Exception:
        ver = "unknown"
    return Origin(distribution=dists[0], version=ver, via=via)


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


def strategy_origin(name: str) -> Origin:
    """The distribution and version that provided strategy `name`."""
    get_strategy(name)
    if name not in _ORIGINS:  # found lazily: reading the installed distributions takes ~0.3 s
        _ORIGINS[name] = _origin_of_module(_REGISTRY[name].__module__)
    return _ORIGINS[name]


def plugin_errors() -> list[PluginError]:
    """The entry points of the group that failed to register, and why."""
    load_plugins()
    return list(_PLUGIN_ERRORS.values())

"""How a sweep selects the configs it confirms and the board reports: on validation and cost
metrics alone, never on a test metric.

One function serves the sweep (which confirms what it selects) and the board (which selects
the same way for a sweep run without confirmation), so that both always agree.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import TypeVar

from schemas.names import TEST_METRICS

K = TypeVar("K", bound=Hashable)


def _value(metrics: Mapping[str, float], metric: str) -> float | None:
    v = metrics.get(metric)
    if v is None or isinstance(v, bool):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def select(
    candidates: Sequence[tuple[K, Mapping[str, float]]],
    objectives: Sequence[tuple[str, str]],
    cap: int = 1,
) -> list[K]:
    """The keys of the selected candidates, best first.

    One objective: the candidate best on it (the first in `candidates` among equals). Several:
    the candidates no other beats on every objective (the front), ordered by the first
    objective; when there are more than `cap`, `cap` of them spread evenly along it, both ends
    kept. A candidate missing an objective's value is never selected. Raises ValueError for a
    test metric among `objectives`.
    """
    for metric, mode in objectives:
        if metric in TEST_METRICS:
            raise ValueError(f"{metric} is a test metric; selection reads validation only")
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be max or min, not {mode!r}")
    signs = [1.0 if mode == "max" else -1.0 for _, mode in objectives]
    scored: list[tuple[int, K, list[float]]] = []
    for order, (key, metrics) in enumerate(candidates):
        values = [_value(metrics, m) for m, _ in objectives]
        if all(v is not None for v in values):
            scored.append((order, key, [s * v for s, v in zip(signs, values, strict=True)]))  # type: ignore[operator]
    if not scored:
        return []
    if len(objectives) == 1:
        best = max(scored, key=lambda t: (t[2][0], -t[0]))
        return [best[1]]

    def beats(a: list[float], b: list[float]) -> bool:
        return all(x >= y for x, y in zip(a, b, strict=True)) and a != b

    front = [t for t in scored if not any(beats(o[2], t[2]) for o in scored)]
    front.sort(key=lambda t: ([-x for x in t[2]], t[0]))
    # Equal points on the front are one config measured twice: keep the first.
    unique: list[tuple[int, K, list[float]]] = []
    for t in front:
        if not any(u[2] == t[2] for u in unique):
            unique.append(t)
    if len(unique) > cap:
        if cap == 1:
            unique = unique[:1]
        else:
            picks = sorted({round(i * (len(unique) - 1) / (cap - 1)) for i in range(cap)})
            unique = [unique[i] for i in picks]
    return [t[1] for t in unique]


__all__ = ["select"]

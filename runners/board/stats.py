"""The statistics a board reports: a mean over seeds with its spread and 95% interval, the test
that says whether two strategies can be told apart, and one strategy's gap to another.

Student's t for the interval and Welch's unequal-variance t-test for the comparison and the
gap: the seeds of a confirmation are few (3 by default), where a normal interval would be too
narrow by half. The t distribution is scipy's (`scipy.special.stdtr`, `stdtrit`); the statistics
are the textbook ones that `scipy.stats.ttest_ind(equal_var=False)` and `scipy.stats.t.interval`
compute, and tests/unit/test_board_stats.py holds them equal on known samples. `scipy.stats`
itself is not imported: its import takes 0.4 s, a fifth of the 2 s that `bitsweep leaderboard`
may take end to end (benchmarks/bench_leaderboard.py), where `scipy.special` takes 0.03 s.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

CONFIDENCE = 0.95
ALPHA = 0.05  # two strategies whose Welch test gives p >= ALPHA cannot be told apart


@dataclass(frozen=True)
class Estimate:
    """A mean over `n` values: its sample standard deviation and the two ends of its
    `CONFIDENCE` interval (Student's t), None for a single value."""

    n: int
    mean: float
    std: float | None = None
    low: float | None = None
    high: float | None = None


def _finite(values: Sequence[float]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def _moments(xs: list[float]) -> tuple[float, float]:
    """(mean, sample variance) of at least two values."""
    mean = math.fsum(xs) / len(xs)
    return mean, math.fsum((x - mean) ** 2 for x in xs) / (len(xs) - 1)


def t_quantile(p: float, df: float) -> float:
    """The `p` quantile of Student's t with `df` degrees of freedom."""
    from scipy.special import stdtrit

    return float(stdtrit(df, p))


def estimate(values: Sequence[float], confidence: float = CONFIDENCE) -> Estimate | None:
    """The mean of the finite `values` with its spread and interval; None when there are none."""
    xs = _finite(values)
    if not xs:
        return None
    if len(xs) == 1:
        return Estimate(1, xs[0])
    mean, var = _moments(xs)
    std = math.sqrt(var)
    if std == 0.0:
        return Estimate(len(xs), mean, 0.0, mean, mean)
    half = t_quantile(0.5 + confidence / 2, len(xs) - 1) * std / math.sqrt(len(xs))
    return Estimate(len(xs), mean, std, mean - half, mean + half)


def _welch(xa: list[float], xb: list[float]) -> tuple[float, float, float] | None:
    """(difference of means, its standard error, Welch-Satterthwaite degrees of freedom)."""
    ma, va = _moments(xa)
    mb, vb = _moments(xb)
    sa, sb = va / len(xa), vb / len(xb)
    se2 = sa + sb
    if se2 == 0.0:
        return None
    df = se2**2 / (sa**2 / (len(xa) - 1) + sb**2 / (len(xb) - 1))
    return ma - mb, math.sqrt(se2), df


def welch_p(a: Sequence[float], b: Sequence[float]) -> float | None:
    """The two-sided p-value of Welch's t-test that `a` and `b` have the same mean; None when
    it cannot be computed (fewer than two values on a side, or no spread on either)."""
    from scipy.special import stdtr

    xa, xb = _finite(a), _finite(b)
    if len(xa) < 2 or len(xb) < 2:
        return None
    w = _welch(xa, xb)
    if w is None:
        return None
    diff, se, df = w
    return float(min(1.0, 2.0 * stdtr(df, -abs(diff) / se)))


def difference(
    a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE
) -> Estimate | None:
    """mean(a) - mean(b) with Welch's interval for it (`n` is len(a)); only the difference when
    either side has fewer than two values or neither has spread; None when a side is empty."""
    xa, xb = _finite(a), _finite(b)
    if not xa or not xb:
        return None
    diff = math.fsum(xa) / len(xa) - math.fsum(xb) / len(xb)
    w = _welch(xa, xb) if len(xa) >= 2 and len(xb) >= 2 else None
    if w is None:
        return Estimate(len(xa), diff)
    _, se, df = w
    half = t_quantile(0.5 + confidence / 2, df) * se
    return Estimate(len(xa), diff, None, diff - half, diff + half)


__all__ = ["ALPHA", "CONFIDENCE", "Estimate", "difference", "estimate", "t_quantile", "welch_p"]

"""The board of a sweep: each strategy's selected config, its test accuracy over fresh seeds
with its uncertainty, what selected it, what its weights cost and what its search spent.

How a row is measured (docs/sweeps.md, "How the board is measured"):

- **Selected on validation.** A strategy's config is the search trial best on the sweep's
  validation objective (with several objectives, each config on its validation front, up to
  the spec's cap): `runners.board.selection.select`, the function the sweep confirmed with.
- **Confirmed over fresh seeds.** The sweep trained each selected config again with seeds the
  search never used (`Phase.CONFIRM` runs, each naming the search run it confirms). A row's
  test accuracy and costs are the mean over those runs, with the sample standard deviation
  and a 95% Student-t interval; the search trial's own test accuracy is never part of it.
- **Told apart, or not.** Each row is compared with the sweep's first row by Welch's t-test
  on the confirmation seeds; a row with p >= 0.05 cannot be told apart from it (`tied`).
- **Gap to float.** Where the sweep has `full_precision`, each row's mean test accuracy minus
  float's, with Welch's 95% interval for the difference.
- **Budget.** What the strategy's search spent: trials, trial-epochs, training seconds.

A sweep run without confirmation has one row per selected config measured on its one search
seed (`status` "unconfirmed"). A sweep recorded before bitsweep 0.2 (its parent run has no
`Tag.SELECTION`) is read as it was recorded: the best trial per strategy on the sweep's own
objective, often the test split, one seed; its rows say so (`selection` ends in
"recorded before 0.2", `status` "unconfirmed"), and never share a table with another sweep's.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from runners.board.selection import select
from runners.board.stats import ALPHA, Estimate, difference, estimate, welch_p
from schemas.names import (
    LEADERBOARD_COLUMNS,
    SEED_METRIC,
    TEST_METRICS,
    TRIAL_METRICS,
    Phase,
    Tag,
)

FLOAT = "full_precision"  # the baseline whose gap each row reports
# Costs a row reports with their spread over seeds (the board's columns after test accuracy).
COSTS = tuple(c for c in LEADERBOARD_COLUMNS if c not in ("test_accuracy", "train_seconds"))
# The metrics a board reads of each trial run.
READ_METRICS = (*TRIAL_METRICS, "epochs_run")
READ_KEYS = (*READ_METRICS, SEED_METRIC)  # a trial's seed is a param, and a metric of its run
LEGACY = "recorded before 0.2"


# -- what is read ----------------------------------------------------------------------------


@dataclass(frozen=True)
class TrialRecord:
    """The part of a trial run a board reads."""

    run_id: str
    status: str
    start_time: int
    sweep_id: str
    strategy: str
    trial_id: str
    phase: str
    confirms_trial: str | None
    metrics: dict[str, float]


@dataclass(frozen=True)
class SweepInfo:
    """The part of a sweep's parent run a board reads."""

    sweep_id: str
    run_id: str
    status: str
    start_time: int
    epochs: int | None
    strategies: list[str]
    objectives: list[tuple[str, str]]
    """What the sweep selected on: its `Tag.SELECTION`, or for a sweep recorded before 0.2 the
    objectives it optimized (`Tag.OBJECTIVES`)."""
    confirm_seeds: int | None
    """Fresh seeds per selected config (0: confirmation off); None: recorded before 0.2."""
    max_configs: int = 3
    """The most configs selected per strategy with several objectives."""

    @property
    def legacy(self) -> bool:
        return self.confirm_seeds is None

    def selection_text(self) -> str:
        text = ", ".join(f"{m} ({mode})" for m, mode in self.objectives) or "test_accuracy (max)"
        return f"{text}, {LEGACY}" if self.legacy else text


def objectives_of(text: str) -> list[tuple[str, str]]:
    """`metric:mode,...` as the parent run's tags hold it."""
    out = []
    for part in text.split(","):
        metric, _, mode = part.partition(":")
        if metric:
            out.append((metric, mode if mode in ("max", "min") else "max"))
    return out


def sweep_info_of(
    run_id: str, status: str, start_time: Any, tags: dict[str, str], params: dict[str, str]
) -> SweepInfo:
    """The `SweepInfo` of a sweep's parent run, from its tags and params."""
    selection = tags.get(Tag.SELECTION)
    seeds = tags.get(Tag.CONFIRM_SEEDS)
    return SweepInfo(
        sweep_id=tags.get(Tag.SWEEP_ID, ""),
        run_id=run_id,
        status=status,
        start_time=int(start_time or 0),
        epochs=as_int(params.get("epochs")),
        strategies=[s for s in tags.get(Tag.STRATEGIES, "").split(",") if s],
        objectives=objectives_of(
            selection if selection is not None else tags.get(Tag.OBJECTIVES, "")
        ),
        confirm_seeds=as_int(seeds) if selection is not None else None,
        max_configs=as_int(params.get("confirm_max_configs")) or 3,
    )


def as_int(value: Any) -> int | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return int(f) if math.isfinite(f) and f.is_integer() else None


# -- rows ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Budget:
    """What one strategy's search spent: its trials (every one that ran, stopped early or
    failed included), their epochs and their training seconds."""

    trials: int = 0
    epochs: int = 0
    seconds: float = 0.0


@dataclass
class Row:
    """One selected config of one strategy in one sweep."""

    strategy: str
    sweep_id: str
    epochs: int | None
    selection: str
    status: str
    """`confirmed`; `confirming` (its fresh seeds still running); `unconfirmed` (one seed: a
    sweep without confirmation, or recorded before 0.2)."""
    run_id: str
    trial_id: str
    val_accuracy: float | None
    test: Estimate | None
    costs: dict[str, Estimate]
    budget: Budget
    values: dict[str, list[float]] = field(repr=False, default_factory=dict)
    """Per metric, the values the row's means are taken over (one per seed)."""
    confirm_run_ids: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    params: dict[str, str] = field(default_factory=dict)
    selected: dict[str, float] = field(default_factory=dict, repr=False)
    """The metrics of the search trial that selected the config (its validation numbers)."""
    rank: int = 0
    p_value: float | None = None
    tied: bool | None = None
    gap: Estimate | None = None

    def mean(self, metric: str) -> float | None:
        e = estimate(self.values.get(metric, []))
        return None if e is None else e.mean

    def to_dict(self) -> dict[str, Any]:
        """The flat row of the JSON and CSV (docs/records.md, "The board")."""
        t = self.test
        out: dict[str, Any] = {
            "rank": self.rank,
            "strategy": self.strategy,
            "sweep_id": self.sweep_id,
            "epochs": self.epochs,
            "status": self.status,
            "seeds": 0 if t is None else t.n,
            "test_accuracy": None if t is None else t.mean,
            "test_accuracy_std": None if t is None else t.std,
            "test_accuracy_ci_low": None if t is None else t.low,
            "test_accuracy_ci_high": None if t is None else t.high,
            "tied_with_best": self.tied,
            "p_vs_best": self.p_value,
            "gap_to_float": None if self.gap is None else self.gap.mean,
            "gap_to_float_ci_low": None if self.gap is None else self.gap.low,
            "gap_to_float_ci_high": None if self.gap is None else self.gap.high,
            "selection": self.selection,
            "val_accuracy": self.val_accuracy,
        }
        for c in COSTS:
            e = self.costs.get(c)
            out[c] = None if e is None else e.mean
            out[f"{c}_std"] = None if e is None else e.std
        out.update(
            search_trials=self.budget.trials,
            search_epochs=self.budget.epochs,
            search_seconds=self.budget.seconds,
            run_id=self.run_id,
            trial_id=self.trial_id,
            confirm_run_ids=list(self.confirm_run_ids),
            confirm_seeds=list(self.seeds),
            params=dict(self.params),
        )
        return out


def _value(metrics: dict[str, float], key: str) -> float | None:
    v = metrics.get(key)
    return v if v is not None and math.isfinite(v) else None


def budgets(trials: Iterable[TrialRecord]) -> dict[str, Budget]:
    """Each strategy's search budget from its search runs that are not RUNNING."""
    acc: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0])
    for t in trials:
        if t.phase != Phase.SEARCH or t.status == "RUNNING":
            continue
        a = acc[t.strategy]
        a[0] += 1
        a[1] += _value(t.metrics, "epochs_run") or 0.0
        a[2] += _value(t.metrics, "train_seconds") or 0.0
    return {k: budget(int(v[0]), v[1], v[2]) for k, v in acc.items()}


def budget(trials: int, epochs: float, seconds: float) -> Budget:
    return Budget(trials, round(epochs), float(seconds))


def sweep_rows(
    info: SweepInfo,
    trials: Sequence[TrialRecord],
    *,
    metric: str = "test_accuracy",
    mode: str = "max",
    spent: dict[str, Budget] | None = None,
) -> list[Row]:
    """The board of one sweep from its trial runs: rows ranked by the mean of `metric`, each
    compared with the first and with float (see the module docstring). `spent`: each
    strategy's search budget, when `trials` holds not all of its search runs."""
    spent = budgets(trials) if spent is None else spent
    by_strategy: dict[str, list[TrialRecord]] = defaultdict(list)
    confirmations: dict[str, list[TrialRecord]] = defaultdict(list)
    for t in sorted(trials, key=lambda t: (t.start_time, t.run_id)):
        if t.phase == Phase.CONFIRM:
            if t.confirms_trial is not None:
                confirmations[t.confirms_trial].append(t)
        else:
            by_strategy[t.strategy].append(t)
    names = list(dict.fromkeys([*info.strategies, *sorted(by_strategy)]))
    rows: list[Row] = []
    for name in names:
        finished = [t for t in by_strategy.get(name, []) if t.status == "FINISHED"]
        for chosen in _selected(info, finished, confirmations):
            rows.append(_row(info, chosen, confirmations.get(chosen.trial_id, []), spent))
    rank(rows, metric, mode)
    return rows


def _selected(
    info: SweepInfo, finished: list[TrialRecord], confirmations: dict[str, list[TrialRecord]]
) -> list[TrialRecord]:
    """The search trials a strategy's rows report."""
    if info.legacy:
        # As the board of a sweep recorded before 0.2 showed it: the best trial on the sweep's
        # first objective, then test accuracy; said so on every row.
        keys = [*info.objectives[:1], ("test_accuracy", "max")]

        def key(t: TrialRecord) -> tuple[float, ...]:
            out = []
            for m, md in keys:
                v = _value(t.metrics, m)
                out.append(math.inf if v is None else (-v if md == "max" else v))
            return tuple(out)

        have = [t for t in finished if _value(t.metrics, keys[0][0]) is not None]
        return [min(have, key=key)] if have else []
    confirmed = [t for t in finished if t.trial_id in confirmations]
    if confirmed and info.confirm_seeds:
        return confirmed
    objectives = [(m, md) for m, md in info.objectives if m not in TEST_METRICS]
    if not objectives:
        return []
    cap = info.max_configs if len(objectives) > 1 else 1
    picked = select([(t.trial_id, t.metrics) for t in finished], objectives, cap)
    return [t for t in finished if t.trial_id in picked]


def _row(
    info: SweepInfo,
    chosen: TrialRecord,
    confirming: list[TrialRecord],
    spent: dict[str, Budget],
) -> Row:
    done = [t for t in confirming if t.status == "FINISHED"]
    running = info.status == "RUNNING" or any(t.status == "RUNNING" for t in confirming)
    if not info.confirm_seeds:
        measured, status = [chosen], "unconfirmed"
    elif len(done) >= info.confirm_seeds or (done and not running):
        # Every fresh seed measured; or the sweep ended with some failed: those that finished.
        measured, status = done, "confirmed"
    elif running:
        measured, status = done, "confirming"
    else:  # the sweep ended before confirming this config: its one search seed, said so
        measured, status = [chosen], "unconfirmed"
    values = {
        m: [v for t in measured if (v := _value(t.metrics, m)) is not None] for m in READ_METRICS
    }
    return Row(
        strategy=chosen.strategy,
        sweep_id=info.sweep_id,
        epochs=info.epochs,
        selection=info.selection_text(),
        status=status,
        run_id=chosen.run_id,
        trial_id=chosen.trial_id,
        val_accuracy=_value(chosen.metrics, "best_val_accuracy"),
        test=estimate(values["test_accuracy"]),
        costs={c: e for c in COSTS if (e := estimate(values[c])) is not None},
        budget=spent.get(chosen.strategy, Budget()),
        values=values,
        confirm_run_ids=[t.run_id for t in measured if t is not chosen],
        seeds=[int(v) for t in measured if (v := _value(t.metrics, SEED_METRIC)) is not None],
        selected=dict(chosen.metrics),
    )


def rank(rows: list[Row], metric: str = "test_accuracy", mode: str = "max") -> None:
    """Order `rows` in place by the mean of `metric` (rows without it last, then by strategy),
    number them, and compare each with the first on test accuracy and with float."""

    def key(r: Row) -> tuple[int, float, str]:
        v = r.mean(metric)
        if v is None:
            return (1, 0.0, r.strategy)
        return (0, -v if mode == "max" else v, r.strategy)

    rows.sort(key=key)
    best = rows[0] if rows else None
    floats = [r for r in rows if r.strategy == FLOAT]
    ref = floats[0] if len(floats) == 1 else None
    for i, r in enumerate(rows, 1):
        r.rank = i
        acc = r.values.get("test_accuracy", [])
        if best is not None and r is not best and r.status != "unconfirmed":
            r.p_value = welch_p(acc, best.values.get("test_accuracy", []))
            r.tied = None if r.p_value is None else r.p_value >= ALPHA
        elif r is best and r.status != "unconfirmed":
            r.tied = None
        if ref is not None and r is not ref:
            r.gap = difference(acc, ref.values.get("test_accuracy", []))


__all__ = [
    "COSTS",
    "READ_KEYS",
    "READ_METRICS",
    "Budget",
    "Row",
    "SweepInfo",
    "TrialRecord",
    "budget",
    "budgets",
    "objectives_of",
    "rank",
    "sweep_info_of",
    "sweep_rows",
]

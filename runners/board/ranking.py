"""Every trial of a benchmark or a sweep, ranked: the query's arguments checked, then the
ranking in SQL on a database store (`runners.board.tables.Tables.ranked`) or through MLflow's
`search_runs` on a tracking server. Both give the same order (tests/unit/test_leaderboard.py).

Ranking, as MLflow's `order_by` ranks: by the metric (then each tie-break objective, then test
accuracy), NaN after numbers and a missing value after NaN, then the newest run first, then the
run id (`rank_order`). The best per strategy is the first run of each strategy in that order, kept
when it has the metric; the strategies' bests are listed in that order too (ties: the newest
first, as in trials.csv and `bitsweep leaderboard --all`).

Why not `search_runs(order_by=[metrics...])` on SQLite: MLflow joins the metric it sorts by as
a LEFT OUTER JOIN on a subquery of `latest_metrics` (every run of the store that has the key),
which SQLite (3.40 here) materializes and scans once per candidate run when the LIMIT is a
bound parameter, as SQLAlchemy makes it: at 10,000 trials about 1 s for each strategy's best
and 4 s for the first 100 trials, growing with the square of the store
(benchmarks/bench_leaderboard.py, docs/benchmarks.md). PostgreSQL hashes that subquery
instead (0.2-0.3 s a query at 10,000 trials); the SQL takes 0.05-0.2 s on either.

Strings that reach MLflow's filter language are validated first (metric names, sweep ids and
strategy names by pattern, run ids) and quoted with `q`.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from runners.board.read import is_database_uri
from schemas.errors import FieldError
from schemas.names import SWEEP_ID, TRIAL_METRICS, Tag, literal, tag_filter
from schemas.sweep import NAME_PATTERN

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

# What a board may be ranked by: any metric a trial reports (reading is not selecting).
BOARD_METRICS = TRIAL_METRICS

SWEEP_ID_PATTERN = re.compile(SWEEP_ID)  # fullmatch

RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

MAX_LIMIT = 50000  # MLflow's most results of one search

q = literal  # a string literal for an MLflow filter


def check_query(
    *,
    metric: str,
    mode: str,
    limit: int,
    sweep_id: str | None = None,
    tiebreak: Sequence[tuple[str, str]] = (),
) -> None:
    """Refuse a leaderboard query's bad arguments (FieldError naming `metric`, `mode`, `limit`,
    `sweep_id` or `tiebreak`)."""
    if metric not in BOARD_METRICS:
        raise FieldError("metric", f"must be one of {', '.join(BOARD_METRICS)}")
    if mode not in ("max", "min"):
        raise FieldError("mode", "must be max or min")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise FieldError("limit", f"must be an integer from 1 to {MAX_LIMIT}")
    if sweep_id is not None and not SWEEP_ID_PATTERN.fullmatch(sweep_id):
        raise FieldError("sweep_id", f"{sweep_id!r} is not a sweep id")
    for i, (m, md) in enumerate(tiebreak):
        if m not in BOARD_METRICS or md not in ("max", "min"):
            raise FieldError(f"tiebreak.{i}", "must be an objective metric and max or min")


def leaderboard_runs(
    client: MlflowClient,
    experiment_id: str,
    *,
    metric: str,
    mode: str,
    strategies: Iterable[str] | None,
    every_trial: bool = False,
    sweep_id: str | None = None,
    limit: int = 1000,
    tiebreak: Sequence[tuple[str, str]] = (),
    use_sql: bool | None = None,
) -> list[Run]:
    """Finished trial runs of one experiment, best first: the best per strategy (of
    `strategies`, or of every strategy swept), or every trial (the first `limit`).

    Ties are broken by the `tiebreak` objectives (`(metric, mode)`) in turn, then by test
    accuracy. `use_sql`: rank in SQL on a database store (the default), or through
    `search_runs` (always, on a tracking server).
    """
    check_query(metric=metric, mode=mode, limit=limit, sweep_id=sweep_id, tiebreak=tiebreak)
    keys = ranking(metric, mode, tiebreak)
    names = None if strategies is None else [s for s in strategies if strategy_ok(s)]
    if use_sql is None:
        use_sql = is_database_uri(str(client.tracking_uri))
    if use_sql:
        from runners.board.tables import Tables

        with Tables(str(client.tracking_uri)) as tables:
            ids = tables.ranked(
                experiment_id,
                keys=keys,
                strategies=names,
                sweep_id=sweep_id,
                every_trial=every_trial,
                limit=limit,
            )
        runs = _runs_by_id(client, experiment_id, ids)
    else:
        runs = _search_ranked(
            client,
            experiment_id,
            keys=keys,
            strategies=names,
            sweep_id=sweep_id,
            every_trial=every_trial,
            limit=limit,
        )
    if every_trial:
        return runs
    best = [r for r in runs if metric in r.data.metrics]
    return sorted(best, key=lambda r: rank_order(r, keys))


def strategy_ok(name: str) -> bool:
    if NAME_PATTERN.fullmatch(name):
        return True
    log.warning("strategy name %r is not a name; left off the leaderboard", name)
    return False


def ranking(metric: str, mode: str, tiebreak: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    keys: list[tuple[str, str]] = []
    for m, md in [(metric, mode), *tiebreak]:
        if m not in [k for k, _ in keys]:
            keys.append((m, md))
    if "test_accuracy" not in [m for m, _ in keys]:
        keys.append(("test_accuracy", "max"))
    return keys


def rank_order(run: Run, keys: list[tuple[str, str]]) -> tuple[object, ...]:
    """The one order of ranked trials, as the SQL (`Tables.ranked`) and MLflow's search give
    it: by `keys` (the metric, each tie-break, test accuracy), then the newest run first, then
    the run id. trials.csv, `--all` and each strategy's best are listed in it."""
    return (_rank_key(run, keys), -(run.info.start_time or 0), run.info.run_id)


def _rank_key(run: Run, keys: list[tuple[str, str]]) -> tuple[tuple[int, float], ...]:
    """The order of MLflow's `order_by` on metrics: numbers by value, then NaN, then none."""
    m = run.data.metrics
    out = []
    for k, mode in keys:
        v = m.get(k)
        if v is None:
            out.append((2, 0.0))
        elif math.isnan(v):
            out.append((1, 0.0))
        else:
            out.append((0, -float(v) if mode == "max" else float(v)))
    return tuple(out)


def _search_ranked(
    client: MlflowClient,
    experiment_id: str,
    *,
    keys: list[tuple[str, str]],
    strategies: list[str] | None,
    sweep_id: str | None,
    every_trial: bool,
    limit: int,
) -> list[Run]:
    """The ranking through MLflow's search: one query, or one per strategy for the best."""
    order = [f"metrics.`{m}` {'DESC' if md == 'max' else 'ASC'}" for m, md in keys]
    base = f"{tag_filter(Tag.KIND, 'trial')} and attributes.status = 'FINISHED'"
    if sweep_id:
        base += f" and {tag_filter(Tag.SWEEP_ID, sweep_id)}"
    if every_trial:
        return list(
            client.search_runs(
                [experiment_id], filter_string=base, order_by=order, max_results=limit
            )
        )
    if strategies is None:
        strategies = [s for s in trial_strategies(client, experiment_id) if strategy_ok(s)]
    best: list[Run] = []
    for name in strategies:
        runs = client.search_runs(
            [experiment_id],
            filter_string=f"{base} and {tag_filter(Tag.STRATEGY, name)}",
            order_by=order,
            max_results=1,
        )
        best += list(runs)
    return best


def _runs_by_id(client: MlflowClient, experiment_id: str, ids: list[str]) -> list[Run]:
    """The runs of `ids`, in that order, read through MLflow (200 ids a query)."""
    found: dict[str, Run] = {}
    ok = [i for i in ids if RUN_ID_PATTERN.fullmatch(i)]
    for start in range(0, len(ok), 200):
        chunk = ok[start : start + 200]
        flt = f"attributes.run_id IN ({', '.join(q(i) for i in chunk)})"
        for run in client.search_runs([experiment_id], filter_string=flt, max_results=len(chunk)):
            found[run.info.run_id] = run
    for i in ids:  # an id outside the pattern (not written by MLflow): read it alone
        if i not in found and not RUN_ID_PATTERN.fullmatch(i):
            found[i] = client.get_run(i)
    return [found[i] for i in ids if i in found]


def trial_strategies(client: MlflowClient, experiment_id: str) -> list[str]:
    """Every strategy swept in the experiment, from its sweeps' parent runs."""
    names: set[str] = set()
    token = None
    while True:
        page = client.search_runs(
            [experiment_id],
            filter_string=tag_filter(Tag.KIND, "sweep"),
            max_results=1000,
            page_token=token,
        )
        for run in page:
            names.update(sweep_strategies(run))
        token = page.token
        if not token:
            break
    return sorted(names)


def sweep_strategies(parent: Run) -> list[str]:
    return [s for s in parent.data.tags.get(Tag.STRATEGIES, "").split(",") if s]


__all__ = [
    "BOARD_METRICS",
    "MAX_LIMIT",
    "RUN_ID_PATTERN",
    "SWEEP_ID_PATTERN",
    "check_query",
    "leaderboard_runs",
    "q",
    "rank_order",
    "ranking",
    "strategy_ok",
    "sweep_strategies",
    "trial_strategies",
]

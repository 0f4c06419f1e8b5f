"""The leaderboard: one query over MLflow for the CLI, the end of a sweep and any other reader.

`query_leaderboard` returns one `Board` per benchmark (MLflow experiment
`bitsweep/<dataset>/<model>`): its finished trial runs ranked by one objective, either the best
trial per strategy or every trial (up to a limit), and scoped either to the whole benchmark
(every sweep of it, whatever their epochs) or to one sweep. A board whose rows come from
several sweeps says so: `Board.several_sweeps`, and its markdown, the CLI's table and its JSON
carry each row's `sweep_id` and `epochs`.

Ranking, as MLflow's `order_by` ranks: by the metric (then each tie-break objective, then test
accuracy), NaN after numbers and a missing value after NaN, then the newest run first, then the
run id. The best per strategy is the first run of each strategy in that order, kept when it has
the metric.

This module imports neither Ray nor torch (nor MLflow until a query runs), so that a read pays
for MLflow alone; `runners.sweep.tracking` re-exports what it moved here.

How it reads
------------
On a database store (`sqlite:`, `postgresql:`, `mysql:`, `mssql:` URIs) the ranking is one SQL
query through SQLAlchemy on MLflow's own table models (`SqlRun`, `SqlTag`, `SqlLatestMetric`,
so the column names are MLflow's), every value a bound parameter; the best per strategy is a
`row_number()` window partitioned by the strategy tag (SQLite >= 3.25, PostgreSQL, MySQL 8).
The ranked runs are then read through `MlflowClient.search_runs` with an
`attributes.run_id IN (...)` filter of validated run ids. On a tracking server (`http(s)://`)
the ranking is `search_runs` with filters and `order_by` (one query per strategy for the
best). Both give the same boards (tests/unit/test_leaderboard.py).

Why not `search_runs(order_by=[metrics...])` on SQLite: MLflow joins the metric it sorts by as
a LEFT OUTER JOIN on a subquery of `latest_metrics` (every run of the store that has the key),
which SQLite (3.40 here) materializes and scans once per candidate run when the LIMIT is a
bound parameter, as SQLAlchemy makes it: at 10,000 trials about 1 s for each strategy's best
and 4 s for the first 100 trials, growing with the square of the store
(benchmarks/bench_leaderboard.py, docs/benchmarks.md). PostgreSQL hashes that subquery
instead (0.2-0.3 s a query at 10,000 trials); the SQL here takes 0.05-0.2 s on either.

Indexes the SQL relies on: those of MLflow's schema, the same on SQLite and PostgreSQL (its
models in `mlflow/store/tracking/dbmodels/models.py` and its migrations, as mlflow 3.17
creates them; bitsweep adds none):

- `tags`: `tag_pk (key, run_uuid)` and `index_tags_run_uuid (run_uuid)`. SQLite reads the
  `bitsweep.kind` tag by a range scan of `tag_pk` on its key and every other tag condition
  (`bitsweep.strategy`, `bitsweep.sweep_id`) by a point lookup of `tag_pk` on (key, run_uuid).
  PostgreSQL (15, analyzed) reads the kind tag by a bitmap scan of `tag_pk` and the others
  through `index_tags_run_uuid`. There is no index on `tags.value`: one sweep's runs are
  found among the entries of one key, one per run of the store.
- `latest_metrics`: `latest_metric_pk (key, run_uuid)` (SQLite: one point lookup per run and
  ranking metric, joined on the table itself, not on a subquery) and
  `index_latest_metrics_run_uuid` (PostgreSQL's choice).
- `runs`: `run_pk (run_uuid)`; SQLite reaches each run through it from the tag index,
  PostgreSQL scans the table and hashes it. There is no index on `experiment_id`, `status` or
  `lifecycle_stage`: they filter the runs reached.
- Reading the ranked runs back (MLflow's own queries): `run_pk`, `index_tags_run_uuid`,
  `index_params_run_uuid`, `index_latest_metrics_run_uuid`, and the `inputs` index on
  (destination_type, destination_id, source_type) for their datasets.
- Experiments by name: `uq_experiments_workspace_name (workspace, name)`.

Strings that reach MLflow's filter language are validated first (metric names from
`schemas.sweep.OBJECTIVE_METRICS`, sweep ids and strategy names by pattern, run ids) and
quoted with `q`.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import re
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runners.board.board import READ_KEYS, Row, SweepInfo, sweep_rows
from runners.board.reach import database_problem, server_problem
from runners.board.read import Reader, is_database_uri, with_metrics
from runners.board.render import board_plot, csv_value, rows_markdown
from schemas.errors import FieldError
from schemas.home import Home, data_home
from schemas.names import (
    EXPERIMENT_PREFIX,
    LEADERBOARD_COLUMNS,
    TRIAL_METRICS,
    Phase,
    Tag,
    literal,
    tag_filter,
)
from schemas.secrets import masked
from schemas.sweep import NAME_PATTERN

# What a board may be ranked by: any metric a trial reports (reading is not selecting).
BOARD_METRICS = TRIAL_METRICS

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

SWEEP_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_LIMIT = 50000  # MLflow's most results of one search
DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")  # MLflow's database stores


q = literal  # a string literal for an MLflow filter


def finite(value: Any) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


# -- the store -------------------------------------------------------------------------------


def default_store() -> tuple[Path, str]:
    """(file, tracking URI) of the embedded default MLflow store: `mlflow.db` under
    `$BITSWEEP_HOME` (default `./bitsweep-data`), where a sweep writes it."""
    home = Home(data_home())
    return home.mlflow_db, home.tracking_uri


def check_read_store(uri: str, field_name: str = "tracking_uri") -> None:
    """Refuse, naming `field_name`, an MLflow store that a read cannot use: a file store
    (refused by MLflow 3), a SQLite file that does not exist (a read never creates a store),
    a server that does not answer its health check, a database that refuses a connection."""
    if uri.startswith(("http://", "https://")):
        problem = server_problem(uri)
        if problem is not None:
            raise FieldError(field_name, problem)
        return
    if uri.startswith("file:") or "://" not in uri:
        raise FieldError(field_name, "a file store is refused by MLflow 3; use sqlite:///PATH")
    if not is_database_uri(uri):
        raise FieldError(
            field_name, f"{masked(uri)!r} is neither a database URL nor an MLflow server"
        )
    import sqlalchemy
    from sqlalchemy.engine import make_url

    try:
        url = make_url(uri)
    except sqlalchemy.exc.ArgumentError:
        raise FieldError(field_name, f"{masked(uri)!r} is not a database URL") from None
    if url.get_backend_name() == "sqlite":
        if not url.database or url.database == ":memory:":
            raise FieldError(field_name, "an in-memory SQLite store holds no leaderboard")
        if not Path(url.database).expanduser().is_file():
            raise FieldError(field_name, f"{uri} does not exist (a read never creates a store)")
        return
    problem = database_problem(url)
    if problem is not None:
        raise FieldError(field_name, problem)


# -- the query -------------------------------------------------------------------------------


@dataclass(frozen=True)
class BoardRow:
    """One ranked finished trial."""

    rank: int
    strategy: str
    run_id: str
    run_name: str
    trial_id: str
    sweep_id: str
    epochs: int | None
    metrics: dict[str, float]
    """`LEADERBOARD_COLUMNS` and the ranking metrics, those the run has."""

    phase: str = "search"

    def to_dict(self) -> dict[str, Any]:
        """The flat row of the JSON and CSV: ids, then every leaderboard column (None where
        the run lacks it), then any other ranking metric."""
        extra = {k: v for k, v in self.metrics.items() if k not in LEADERBOARD_COLUMNS}
        return {
            "rank": self.rank,
            "strategy": self.strategy,
            "phase": self.phase,
            "run_id": self.run_id,
            "run_name": self.run_name,
            "trial_id": self.trial_id,
            "sweep_id": self.sweep_id,
            "epochs": self.epochs,
            **{k: self.metrics.get(k) for k in LEADERBOARD_COLUMNS},
            **extra,
        }


@dataclass(frozen=True)
class Board:
    """The leaderboard of one benchmark, in one scope: the board of each sweep (`rows` are
    `runners.board.board.Row`s, sweep by sweep, newest first), or (`every_trial`) its trial
    runs ranked (`BoardRow`s)."""

    benchmark: str
    experiment_id: str
    dataset: str
    model: str
    metric: str
    mode: str
    every_trial: bool
    sweep_id: str | None
    """The scope: this sweep's trials, or (None) every sweep of the benchmark."""
    rows: list[Any] = field(default_factory=list)
    epochs: int | None = None
    """The sweep's epochs per trial (a sweep's board only)."""
    sweep_infos: list[SweepInfo] = field(default_factory=list)
    """The sweeps whose boards `rows` holds, newest first (not `every_trial`)."""

    @property
    def scope(self) -> str:
        return "benchmark" if self.sweep_id is None else "sweep"

    @property
    def sweeps(self) -> list[str]:
        """The sweeps the rows come from."""
        return sorted({r.sweep_id for r in self.rows})

    @property
    def several_sweeps(self) -> bool:
        return len(self.sweeps) > 1

    def title(self) -> str:
        if not self.every_trial:
            return self._board_title()
        what = "every trial"
        head = f"{self.benchmark} — {what} by {self.metric}" + (
            " (lowest first)" if self.mode == "min" else ""
        )
        if self.sweep_id is not None:
            epochs = "" if self.epochs is None else f", {_epochs_text(self.epochs)}"
            return f"{head}, sweep {self.sweep_id}{epochs}"
        return f"{head}, {_sweeps_text(self.sweeps, [r.epochs for r in self.rows])}"

    def _board_title(self) -> str:
        order = "" if self.metric == "test_accuracy" else f", ranked by mean {self.metric}"
        order += " (lowest first)" if self.mode == "min" else ""
        if self.sweep_id is not None:
            info = self.sweep_infos[0] if self.sweep_infos else None
            return f"{self.benchmark}, {sweep_title(info, self.sweep_id, self.epochs)}{order}"
        n = len(self.sweep_infos)
        sweeps = "no sweep" if n == 0 else "its sweep" if n == 1 else f"each of its {n} sweeps"
        return f"{self.benchmark} — the board of {sweeps}, newest first{order}"

    def to_json(self) -> list[dict[str, Any]]:
        return [r.to_dict() for r in self.rows]

    def by_sweep(self) -> list[tuple[SweepInfo, list[dict[str, Any]]]]:
        """Each sweep's rows (as `to_json`), newest sweep first."""
        rows = self.to_json()
        return [(i, [r for r in rows if r["sweep_id"] == i.sweep_id]) for i in self.sweep_infos]

    def markdown(self) -> str:
        """A heading line saying the board's scope, then its table (a board's: one per sweep)."""
        if self.every_trial:
            return f"**{self.title()}**\n\n" + rows_to_markdown(self.to_json(), board=True)
        parts = [f"**{self.title()}**\n"]
        for info, rows in self.by_sweep():
            if self.sweep_id is None:
                parts.append(f"*{sweep_title(info, info.sweep_id, info.epochs)}*\n")
            parts.append(rows_markdown(rows))
        return "\n".join(parts)


def sweep_title(info: SweepInfo | None, sweep_id: str, epochs: int | None) -> str:
    """`sweep ID, 8 epochs: selected on ..., confirmed over 3 fresh seeds`."""
    head = f"sweep {sweep_id}" + ("" if epochs is None else f", {_epochs_text(epochs)}")
    if info is None:
        return head
    if info.legacy:
        how = (
            f"recorded before 0.2: the best trial per strategy on {info.selection_text()}, one "
            "seed, unconfirmed"
        )
    elif info.confirm_seeds:
        how = (
            f"selected on {info.selection_text()}, confirmed over {info.confirm_seeds} fresh seeds"
        )
    else:
        how = f"selected on {info.selection_text()}, confirmation off: one seed per row"
    return f"{head}: {how}"


def _epochs_text(n: int) -> str:
    return f"{n} epoch" + ("" if n == 1 else "s")


def _sweeps_text(sweeps: list[str], epochs: list[int | None]) -> str:
    if not sweeps:
        return "every sweep"
    if len(sweeps) == 1:
        return f"from one sweep, {sweeps[0]}"
    known = sorted({e for e in epochs if e is not None})
    if not known:
        return f"from {len(sweeps)} sweeps"
    if len(known) == 1:
        return f"from {len(sweeps)} sweeps, {_epochs_text(known[0])}"
    return f"from {len(sweeps)} sweeps, {known[0]}-{known[-1]} epochs"


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


def query_leaderboard(
    store: str | MlflowClient,
    *,
    dataset: str | None = None,
    model: str | None = None,
    metric: str = "test_accuracy",
    mode: str = "max",
    every_trial: bool = False,
    limit: int = 100,
    sweep_id: str | None = None,
    tiebreak: Sequence[tuple[str, str]] = (),
) -> list[Board]:
    """The leaderboard of each benchmark of `store` (a tracking URI, checked with
    `check_read_store`, or a client), by benchmark name.

    `dataset`, `model`: only the benchmarks of this dataset and/or model. `every_trial`: every
    finished trial (the first `limit`), else the best per strategy. `sweep_id`: the board of
    that sweep alone (one board, its benchmark's), else of every sweep. Raises FieldError for
    bad arguments, for no benchmark matching (`dataset`) and for an unknown sweep (`sweep_id`).
    """
    check_query(metric=metric, mode=mode, limit=limit, sweep_id=sweep_id, tiebreak=tiebreak)
    for name, value in (("dataset", dataset), ("model", model)):
        if value is not None and (not value or len(value) > 500):
            raise FieldError(name, "must be a name of 1 to 500 characters")
    if isinstance(store, str) and is_database_uri(store):
        check_read_store(store)
        return _sql_boards(
            store,
            dataset=dataset,
            model=model,
            metric=metric,
            mode=mode,
            limit=limit,
            sweep_id=sweep_id,
            every_trial=every_trial,
            tiebreak=tiebreak,
        )
    client = _client(store)
    exps = _benchmarks(client, dataset, model)
    pattern = f"bitsweep/{dataset or '*'}/{model or '*'}"
    if not exps:
        raise FieldError(
            "dataset", f"no benchmark matches {pattern} in {masked(str(client.tracking_uri))}"
        )
    boards = []
    if sweep_id is not None:
        parent = _sweep_run(client, [str(e.experiment_id) for e in exps], sweep_id)
        if parent is None:
            where = "" if dataset is None and model is None else f" of {pattern}"
            raise FieldError(
                "sweep_id", f"no sweep {sweep_id}{where} in {masked(str(client.tracking_uri))}"
            )
        exps = [e for e in exps if str(e.experiment_id) == parent.info.experiment_id]
    else:
        parent = None
    for exp in exps:
        eid = str(exp.experiment_id)
        ds, md = _benchmark_of(exp)
        if not every_trial:
            reader = reader_of(client)
            try:
                rows, infos = board_of(
                    reader, eid, sweep_id=sweep_id, metric=metric, mode=mode, limit=limit
                )
            finally:
                reader.close()
            boards.append(
                Board(
                    benchmark=exp.name,
                    experiment_id=eid,
                    dataset=ds,
                    model=md,
                    metric=metric,
                    mode=mode,
                    every_trial=False,
                    sweep_id=sweep_id,
                    rows=rows,
                    epochs=_int(parent.data.params.get("epochs")) if parent is not None else None,
                    sweep_infos=infos,
                )
            )
            continue
        runs = leaderboard_runs(
            client,
            eid,
            metric=metric,
            mode=mode,
            strategies=(_sweep_strategies(parent) or None) if parent is not None else None,
            every_trial=every_trial,
            sweep_id=sweep_id,
            limit=limit,
            tiebreak=tiebreak,
        )
        boards.append(
            Board(
                benchmark=exp.name,
                experiment_id=eid,
                dataset=ds,
                model=md,
                metric=metric,
                mode=mode,
                every_trial=every_trial,
                sweep_id=sweep_id,
                rows=board_rows(runs, [k for k, _ in _ranking(metric, mode, tiebreak)]),
                epochs=_int(parent.data.params.get("epochs")) if parent is not None else None,
            )
        )
    return boards


SWEEPS_A_READ = 20  # sweeps whose trials one read takes, newest first, until `limit` rows
SLIM_KEYS = ("best_val_accuracy", "test_accuracy", "epochs_run", "train_seconds")


def board_of(
    reader: Reader,
    experiment_id: str,
    *,
    sweep_id: str | None = None,
    metric: str = "test_accuracy",
    mode: str = "max",
    limit: int = MAX_LIMIT,
) -> tuple[list[Row], list[SweepInfo]]:
    """The board rows of one sweep, or of each sweep of the experiment (newest first, at most
    `limit` rows), with the sweeps they come from; each row with its selected config.

    A search trial's metrics are read for selection and budget only (`SLIM_KEYS`, the sweep's
    objectives, the ranking metric); every metric a row reports, of the runs it measures:
    the confirmations, or an unconfirmed row's own search trial. Sweeps are read
    `SWEEPS_A_READ` at a time, so that a board of the newest sweeps reads their trials alone.
    """
    infos = reader.sweeps(experiment_id, sweep_id)
    rows: list[Row] = []
    shown: list[SweepInfo] = []
    for start in range(0, len(infos), SWEEPS_A_READ):
        if len(rows) >= limit:
            break
        chunk = infos[start : start + SWEEPS_A_READ]
        ids = [i.sweep_id for i in chunk]
        slim = sorted({*SLIM_KEYS, metric, *(m for i in chunk for m, _ in i.objectives)})
        confirm = reader.trials(experiment_id, ids, READ_KEYS, (), phase=Phase.CONFIRM)
        confirmed = {t.sweep_id for t in confirm}
        # A finished sweep with confirmations needs of its search the trials it confirmed and
        # what each strategy spent; any other sweep selects on its every search trial.
        narrow = [i.sweep_id for i in chunk if i.status == "FINISHED" and i.sweep_id in confirmed]
        whole = [s for s in ids if s not in narrow]
        search = reader.trials(experiment_id, whole, slim, (), phase=Phase.SEARCH) if whole else []
        spent: dict[str, dict[str, Any]] = {}
        if narrow:
            chosen = sorted({t.confirms_trial for t in confirm if t.confirms_trial is not None})
            search += reader.trials(
                experiment_id, narrow, slim, (), phase=Phase.SEARCH, trial_ids=chosen
            )
            spent = reader.budgets(experiment_id, narrow)
        by_sweep: dict[str, list[Any]] = {}
        for t in [*confirm, *search]:
            by_sweep.setdefault(t.sweep_id, []).append(t)
        for info in chunk:
            if len(rows) >= limit:
                break
            mine = by_sweep.get(info.sweep_id, [])
            budget = spent.get(info.sweep_id)
            made = sweep_rows(info, mine, metric=metric, mode=mode, spent=budget)
            own = [r.run_id for r in made if r.status == "unconfirmed"]
            if own:  # measured on its search seed: that run's every metric
                mine = with_metrics(mine, reader.metrics_of(own, READ_KEYS))
                made = sweep_rows(info, mine, metric=metric, mode=mode, spent=budget)
            rows += made[: limit - len(rows)]
            shown.append(info)
    params = reader.params_of([r.run_id for r in rows])
    for r in rows:
        r.params = {k: v for k, v in params.get(r.run_id, {}).items() if k != "seed"}
    return rows, shown


def _sql_boards(
    uri: str,
    *,
    dataset: str | None,
    model: str | None,
    metric: str,
    mode: str,
    limit: int,
    sweep_id: str | None,
    every_trial: bool = False,
    tiebreak: Sequence[tuple[str, str]] = (),
) -> list[Board]:
    """`query_leaderboard`'s boards on a database store, read without MLflow."""
    from runners.board.read import SqlReader

    reader = SqlReader(uri)
    try:
        exps = [
            e
            for e in reader.tables.benchmarks()
            if (dataset is None or _benchmark_of(e)[0] == dataset)
            and (model is None or _benchmark_of(e)[1] == model)
        ]
        pattern = f"bitsweep/{dataset or '*'}/{model or '*'}"
        if not exps:
            raise FieldError("dataset", f"no benchmark matches {pattern} in {masked(uri)}")
        if sweep_id is not None:
            exps = [e for e in exps if reader.sweeps(e.experiment_id, sweep_id)]
            if not exps:
                where = "" if dataset is None and model is None else f" of {pattern}"
                raise FieldError("sweep_id", f"no sweep {sweep_id}{where} in {masked(uri)}")
            exps = exps[:1]
        boards = []
        for exp in exps:
            ds, md = _benchmark_of(exp)
            if every_trial:
                parent = reader.sweeps(exp.experiment_id, sweep_id) if sweep_id else []
                keys = _ranking(metric, mode, tiebreak)
                ids = _sql_ranked_ids(
                    uri,
                    exp.experiment_id,
                    keys=keys,
                    strategies=[s for s in parent[0].strategies if _strategy_ok(s)] or None
                    if parent
                    else None,
                    sweep_id=sweep_id,
                    every_trial=True,
                    limit=limit,
                )
                boards.append(
                    Board(
                        benchmark=exp.name,
                        experiment_id=exp.experiment_id,
                        dataset=ds,
                        model=md,
                        metric=metric,
                        mode=mode,
                        every_trial=True,
                        sweep_id=sweep_id,
                        rows=listed_rows(reader.tables, ids, [k for k, _ in keys]),
                        epochs=parent[0].epochs if parent else None,
                    )
                )
                continue
            rows, infos = board_of(
                reader, exp.experiment_id, sweep_id=sweep_id, metric=metric, mode=mode, limit=limit
            )
            boards.append(
                Board(
                    benchmark=exp.name,
                    experiment_id=exp.experiment_id,
                    dataset=ds,
                    model=md,
                    metric=metric,
                    mode=mode,
                    every_trial=False,
                    sweep_id=sweep_id,
                    rows=rows,
                    epochs=infos[0].epochs if sweep_id is not None and infos else None,
                    sweep_infos=infos,
                )
            )
        return boards
    finally:
        reader.close()


def reader_of(client: MlflowClient) -> Reader:
    """The reader of a client's store: its tables for a database, else the client."""
    from runners.board.read import ClientReader, SqlReader

    uri = str(client.tracking_uri)
    return SqlReader(uri) if is_database_uri(uri) else ClientReader(client)


def _benchmarks(client: MlflowClient, dataset: str | None, model: str | None) -> list[Any]:
    """The active experiments of bitsweep's benchmarks, of `dataset` and `model` when given,
    by name."""
    if dataset is not None and model is not None:
        exp = client.get_experiment_by_name(f"{EXPERIMENT_PREFIX}{dataset}/{model}")
        return [exp] if exp is not None and exp.lifecycle_stage == "active" else []
    found: list[Any] = []
    token = None
    while True:
        page = client.search_experiments(
            filter_string=f"name LIKE {q(EXPERIMENT_PREFIX + '%')}",
            max_results=1000,
            page_token=token,
        )
        found += list(page)
        token = page.token
        if not token:
            break
    keep = []
    for exp in found:
        ds, md = _benchmark_of(exp)
        if (dataset is None or ds == dataset) and (model is None or md == model):
            keep.append(exp)
    return sorted(keep, key=lambda e: e.name)


def _benchmark_of(exp: Any) -> tuple[str, str]:
    """(dataset, model) of a benchmark's experiment: its tags, else its name (a dataset such
    as `npz:/data/x.npz` holds slashes; a model never does)."""
    tags = exp.tags or {}
    ds, _, md = exp.name[len(EXPERIMENT_PREFIX) :].rpartition("/")
    return tags.get(Tag.DATASET, ds), tags.get(Tag.MODEL, md)


def _sweep_run(client: MlflowClient, experiment_ids: list[str], sweep_id: str) -> Run | None:
    flt = f"{tag_filter(Tag.KIND, 'sweep')} and {tag_filter(Tag.SWEEP_ID, sweep_id)}"
    runs = client.search_runs(experiment_ids, filter_string=flt, max_results=2)
    if len(runs) > 1:
        log.warning("several parent runs carry sweep id %s; reading the first", sweep_id)
    return runs[0] if runs else None


def _sweep_strategies(parent: Run) -> list[str]:
    return [s for s in parent.data.tags.get(Tag.STRATEGIES, "").split(",") if s]


# -- ranking ---------------------------------------------------------------------------------


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
    keys = _ranking(metric, mode, tiebreak)
    names = None if strategies is None else [s for s in strategies if _strategy_ok(s)]
    if use_sql is None:
        use_sql = is_database_uri(str(client.tracking_uri))
    if use_sql:
        ids = _sql_ranked_ids(
            str(client.tracking_uri),
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
    return sorted(best, key=lambda r: (_rank_key(r, keys), r.data.tags.get(Tag.STRATEGY, "")))


def _strategy_ok(name: str) -> bool:
    if NAME_PATTERN.fullmatch(name):
        return True
    log.warning("strategy name %r is not a name; left off the leaderboard", name)
    return False


def _ranking(metric: str, mode: str, tiebreak: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    keys: list[tuple[str, str]] = []
    for m, md in [(metric, mode), *tiebreak]:
        if m not in [k for k, _ in keys]:
            keys.append((m, md))
    if "test_accuracy" not in [m for m, _ in keys]:
        keys.append(("test_accuracy", "max"))
    return keys


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
        strategies = [s for s in trial_strategies(client, experiment_id) if _strategy_ok(s)]
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


def _sql_ranked_ids(
    uri: str,
    experiment_id: str,
    *,
    keys: list[tuple[str, str]],
    strategies: list[str] | None,
    sweep_id: str | None,
    every_trial: bool,
    limit: int,
) -> list[str]:
    """Run ids ranked by one SQL query on MLflow's tables (see the module docstring)."""
    import sqlalchemy as sa

    from runners.board.tables import LATEST_METRICS as latest
    from runners.board.tables import RUNS as runs
    from runners.board.tables import TAGS as tags

    def tag(alias: str, key: str, value: str | None = None) -> tuple[Any, Any]:
        t = tags.alias(alias)
        on = sa.and_(t.c.run_uuid == runs.c.run_uuid, t.c.key == key)
        return t, on if value is None else sa.and_(on, t.c.value == value)

    kind, on_kind = tag("kind", Tag.KIND, "trial")
    strat, on_strat = tag("strategy", Tag.STRATEGY)
    joined = runs.join(kind, on_kind).join(strat, on_strat)
    if sweep_id is not None:
        sweep, on_sweep = tag("sweep", Tag.SWEEP_ID, sweep_id)
        joined = joined.join(sweep, on_sweep)
    order: list[Any] = []
    first = None
    for i, (key, mode) in enumerate(keys):
        m = latest.alias(f"m{i}")
        joined = joined.outerjoin(m, sa.and_(m.c.run_uuid == runs.c.run_uuid, m.c.key == key))
        first = m if first is None else first
        order.append(sa.case((m.c.is_nan == sa.true(), 1), (m.c.value.is_(None), 2), else_=0))
        order.append(m.c.value.desc() if mode == "max" else m.c.value.asc())
    order += [runs.c.start_time.desc(), runs.c.run_uuid]
    where = [
        runs.c.experiment_id == int(experiment_id),
        runs.c.status == "FINISHED",
        runs.c.lifecycle_stage == "active",
    ]
    if strategies is not None:
        where.append(strat.c.value.in_(strategies))
    if every_trial:
        stmt = (
            sa.select(runs.c.run_uuid).select_from(joined).where(*where).order_by(*order)
        ).limit(limit)
    else:
        assert first is not None
        n = sa.func.row_number().over(partition_by=strat.c.value, order_by=order)
        ranked = (
            sa.select(runs.c.run_uuid, first.c.run_uuid.label("has"), n.label("n"))
            .select_from(joined)
            .where(*where)
            .subquery()
        )
        stmt = sa.select(ranked.c.run_uuid).where(ranked.c.n == 1, ranked.c.has.is_not(None))
    engine = sa.create_engine(uri, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            return [str(row[0]) for row in conn.execute(stmt)]
    finally:
        engine.dispose()


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
            names.update(_sweep_strategies(run))
        token = page.token
        if not token:
            break
    return sorted(names)


# -- rows and tables -------------------------------------------------------------------------


def _int(value: Any) -> int | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return int(f) if math.isfinite(f) and f.is_integer() else None


def board_rows(runs: list[Run], ranking: Sequence[str] = ()) -> list[BoardRow]:
    """The rows of ranked runs; their metrics are the leaderboard's columns and `ranking`."""
    rows = []
    keys = [*LEADERBOARD_COLUMNS, *(k for k in ranking if k not in LEADERBOARD_COLUMNS)]
    for rank, run in enumerate(runs, 1):
        m, tags = run.data.metrics, run.data.tags
        epochs = _int(run.data.params.get("epochs"))
        rows.append(
            BoardRow(
                rank=rank,
                strategy=tags.get(Tag.STRATEGY, ""),
                run_id=run.info.run_id,
                run_name=run.info.run_name or "",
                trial_id=tags.get(Tag.TRIAL_ID, ""),
                sweep_id=tags.get(Tag.SWEEP_ID, ""),
                epochs=epochs if epochs is not None else _int(m.get("epochs")),
                metrics={k: m[k] for k in keys if k in m},
                phase=tags.get(Tag.PHASE, "search"),
            )
        )
    return rows


def listed_rows(tables: Any, ids: list[str], ranking: Sequence[str] = ()) -> list[BoardRow]:
    """The rows of ranked run ids, read from MLflow's tables (`runners.board.tables`) as
    `board_rows` reads them from runs."""
    keys = [*LEADERBOARD_COLUMNS, *(k for k in ranking if k not in LEADERBOARD_COLUMNS)]
    tag_keys = [Tag.STRATEGY, Tag.TRIAL_ID, Tag.SWEEP_ID, Tag.PHASE]
    rows = []
    for rank, (run_id, name, tags, params, m) in enumerate(
        tables.listed(ids, tag_keys, [*keys, "epochs"]), 1
    ):
        epochs = _int(params.get("epochs"))
        rows.append(
            BoardRow(
                rank=rank,
                strategy=tags.get(Tag.STRATEGY, ""),
                run_id=run_id,
                run_name=name,
                trial_id=tags.get(Tag.TRIAL_ID, ""),
                sweep_id=tags.get(Tag.SWEEP_ID, ""),
                epochs=epochs if epochs is not None else _int(m.get("epochs")),
                metrics={k: m[k] for k in keys if k in m},
                phase=tags.get(Tag.PHASE, "search"),
            )
        )
    return rows


def leaderboard_rows(runs: list[Run]) -> list[dict[str, Any]]:
    """The flat rows (`BoardRow.to_dict`) of ranked runs."""
    return [r.to_dict() for r in board_rows(runs)]


def several_sweeps(rows: list[dict[str, Any]]) -> bool:
    """Whether flat rows come from more than one sweep."""
    return len({r.get("sweep_id") for r in rows}) > 1


def rows_to_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return buf.getvalue()


MARKDOWN_IDS = ("trial_id", "run_id")


def rows_to_markdown(rows: list[dict[str, Any]], *, board: bool = False) -> str:
    """A markdown table of flat rows: every column, or (`board`) a leaderboard's: rank and
    strategy, the sweep and epochs when the rows come from several sweeps, the metrics, then
    the trial and run ids."""
    if not rows:
        return "(no finished trials)\n"
    cols = list(rows[0])
    if board:
        ids = ["rank", "strategy", "run_name", "sweep_id", "epochs", *MARKDOWN_IDS]
        cols = [
            "rank",
            "strategy",
            *(["sweep_id", "epochs"] if several_sweeps(rows) else []),
            *(c for c in cols if c not in ids),
            *MARKDOWN_IDS,
        ]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(format_cell(r.get(c)) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def format_cell(v: Any) -> str:
    """A table cell: integers as integers (also when MLflow holds them as floats), other
    numbers to 4 significant digits."""
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
        return str(int(v))
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


# -- Pareto plot ----------------------------------------------------------------------------


def pareto_png(
    store: str | MlflowClient, *, dataset: str, model: str, sweep_id: str | None = None
) -> bytes:
    """The Pareto plot (PNG) of one sweep's board, as `log_leaderboard` draws it: `sweep_id`'s,
    or the benchmark's newest sweep's (boards of several sweeps are not one front). Raises
    FieldError as `query_leaderboard` does."""
    client = _client(store) if not isinstance(store, str) or not is_database_uri(store) else store
    boards = query_leaderboard(client, dataset=dataset, model=model, sweep_id=sweep_id, limit=50)
    exps = [b for b in boards if b.dataset == dataset and b.model == model]
    if not exps:
        raise FieldError("dataset", f"no benchmark bitsweep/{dataset}/{model}")
    board = exps[0]
    shown = sweep_id or (board.sweep_infos[0].sweep_id if board.sweep_infos else None)
    rows = [r for r in board.rows if shown is None or r.sweep_id == shown]
    title = f"{board.benchmark}: test accuracy against weight memory"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pareto.png"
        board_plot(rows, path, title if shown is None else f"{title}\nsweep {shown}")
        return path.read_bytes()


@dataclass(frozen=True)
class SweepRuns:
    """What MLflow holds of one sweep: its parent run and its trial runs by status."""

    experiment_id: str
    parent_run_id: str
    parent_status: str
    trials: dict[str, int]
    """Trial runs by MLflow status (FINISHED, RUNNING, FAILED, KILLED)."""


def sweep_runs(store: str | MlflowClient, sweep_id: str) -> SweepRuns | None:
    """The parent run and trial counts of `sweep_id` in any benchmark of `store`, or None when
    the sweep has not yet written there."""
    check_query(metric="test_accuracy", mode="max", limit=1, sweep_id=sweep_id)
    client = _client(store)
    exps = [str(e.experiment_id) for e in _benchmarks(client, None, None)]
    parent = _sweep_run(client, exps, sweep_id) if exps else None
    if parent is None:
        return None
    flt = f"{tag_filter(Tag.KIND, 'trial')} and {tag_filter(Tag.SWEEP_ID, sweep_id)}"
    counts: dict[str, int] = {}
    token = None
    while True:
        page = client.search_runs(
            [parent.info.experiment_id], filter_string=flt, max_results=MAX_LIMIT, page_token=token
        )
        for run in page:
            counts[run.info.status] = counts.get(run.info.status, 0) + 1
        token = page.token
        if not token:
            break
    return SweepRuns(
        experiment_id=parent.info.experiment_id,
        parent_run_id=parent.info.run_id,
        parent_status=parent.info.status,
        trials=counts,
    )


def _client(store: str | MlflowClient) -> MlflowClient:
    if not isinstance(store, str):
        return store
    from mlflow.tracking import MlflowClient

    check_read_store(store)
    return MlflowClient(store)


# -- the sweep's artifacts -------------------------------------------------------------------


def log_leaderboard(
    client: MlflowClient,
    experiment_id: str,
    parent_run_id: str,
    *,
    title: str,
    sweep_id: str | None = None,
) -> dict[str, Any]:
    """Write the sweep's board (leaderboard.csv, leaderboard.md), its every trial (trials.csv,
    search and confirmation, each with its phase) and the Pareto plot of its board to its
    parent run: the board of that sweep alone (`sweep_id`, by default the parent run's).
    Returns the board (`board`), its flat `rows`, the number of `trials` and the parent run's
    `artifact_uri`."""
    parent = client.get_run(parent_run_id)
    sweep_id = sweep_id or parent.data.tags.get(Tag.SWEEP_ID)
    assert sweep_id is not None
    reader = reader_of(client)
    try:
        rows, infos = board_of(reader, experiment_id, sweep_id=sweep_id)
    finally:
        reader.close()
    every = leaderboard_runs(
        client,
        experiment_id,
        metric="best_val_accuracy",
        mode="max",
        strategies=_sweep_strategies(parent) or None,
        every_trial=True,
        sweep_id=sweep_id,
        limit=MAX_LIMIT,
    )
    exp = client.get_experiment(experiment_id)
    ds, md = _benchmark_of(exp)
    board = Board(
        benchmark=exp.name,
        experiment_id=experiment_id,
        dataset=ds,
        model=md,
        metric="test_accuracy",
        mode="max",
        every_trial=False,
        sweep_id=sweep_id,
        rows=rows,
        epochs=_int(parent.data.params.get("epochs")),
        sweep_infos=infos,
    )
    flat = board.to_json()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "leaderboard.csv").write_text(
            rows_to_csv([{k: csv_value(v) for k, v in r.items()} for r in flat])
        )
        (folder / "leaderboard.md").write_text(board.markdown())
        (folder / "trials.csv").write_text(rows_to_csv(leaderboard_rows(every)))
        board_plot(rows, folder / "pareto.png", f"{title}\nsweep {sweep_id}")
        for name in ("leaderboard.csv", "leaderboard.md", "trials.csv", "pareto.png"):
            client.log_artifact(parent_run_id, str(folder / name))
    return {
        "board": board,
        "rows": flat,
        "trials": len(every),
        "artifact_uri": parent.info.artifact_uri,
    }

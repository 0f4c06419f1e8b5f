"""The leaderboard query: the boards of a store's benchmarks for the CLI, the service, the end of
a sweep and any other reader.

`query_leaderboard` returns one `Board` per benchmark (MLflow experiment
`bitsweep/<dataset>/<model>`): the board of each of its sweeps (one row per selected config,
`runners.board.board`), newest sweep first, or (`every_trial`) its finished trial runs ranked
(`runners.board.ranking`), scoped either to the whole benchmark or to one sweep. A board whose
rows come from several sweeps says so: `Board.several_sweeps`, and its markdown, the CLI's table
and its JSON carry each row's `sweep_id` and `epochs`.

On a database store (`sqlite:`, `postgresql:`, `mysql:`, `mssql:` URIs) the board is read from
MLflow's tables without MLflow (`runners.board.tables`, `SqlReader`); on a tracking server
(`http(s)://`) through `MlflowClient` (`ClientReader`). Both give the same boards
(tests/unit/test_leaderboard.py).
"""

from __future__ import annotations

import logging
import tempfile
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runners.board.board import READ_KEYS, Row, SweepInfo, as_int, sweep_rows
from runners.board.ranking import (
    MAX_LIMIT,
    check_query,
    leaderboard_runs,
    q,
    ranking,
    strategy_ok,
    sweep_strategies,
)
from runners.board.read import Reader, is_database_uri, with_metrics
from runners.board.render import board_plot, rows_markdown, rows_to_markdown
from runners.board.rows import board_rows, listed_rows
from runners.board.store import check_read_store, client_of
from schemas.errors import FieldError
from schemas.names import EXPERIMENT_PREFIX, Phase, Tag, tag_filter
from schemas.secrets import masked

if TYPE_CHECKING:
    from collections.abc import Sequence

    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)


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

    @classmethod
    def of(
        cls,
        exp: Any,
        *,
        metric: str,
        mode: str,
        every_trial: bool,
        sweep_id: str | None,
        rows: list[Any],
        epochs: int | None,
        sweep_infos: list[SweepInfo] | None = None,
    ) -> Board:
        """The board of the benchmark whose experiment is `exp` (MLflow's or the tables')."""
        dataset, model = benchmark_of(exp)
        return cls(
            benchmark=exp.name,
            experiment_id=str(exp.experiment_id),
            dataset=dataset,
            model=model,
            metric=metric,
            mode=mode,
            every_trial=every_trial,
            sweep_id=sweep_id,
            rows=rows,
            epochs=epochs,
            sweep_infos=sweep_infos or [],
        )

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
    client = client_of(store)
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
        if not every_trial:
            with closing(reader_of(client)) as reader:
                boards.append(
                    sweeps_board(
                        reader, exp, metric=metric, mode=mode, limit=limit, sweep_id=sweep_id
                    )
                )
            continue
        runs = leaderboard_runs(
            client,
            eid,
            metric=metric,
            mode=mode,
            strategies=(sweep_strategies(parent) or None) if parent is not None else None,
            every_trial=every_trial,
            sweep_id=sweep_id,
            limit=limit,
            tiebreak=tiebreak,
        )
        boards.append(
            Board.of(
                exp,
                metric=metric,
                mode=mode,
                every_trial=every_trial,
                sweep_id=sweep_id,
                rows=board_rows(runs, [k for k, _ in ranking(metric, mode, tiebreak)]),
                epochs=as_int(parent.data.params.get("epochs")) if parent is not None else None,
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


def sweeps_board(
    reader: Reader,
    exp: Any,
    *,
    metric: str = "test_accuracy",
    mode: str = "max",
    limit: int = MAX_LIMIT,
    sweep_id: str | None = None,
) -> Board:
    """The board of each sweep of benchmark `exp` (or of sweep `sweep_id`), as `board_of` reads
    it, with the sweep's epochs when it is one sweep's."""
    rows, infos = board_of(
        reader, str(exp.experiment_id), sweep_id=sweep_id, metric=metric, mode=mode, limit=limit
    )
    return Board.of(
        exp,
        metric=metric,
        mode=mode,
        every_trial=False,
        sweep_id=sweep_id,
        rows=rows,
        epochs=infos[0].epochs if sweep_id is not None and infos else None,
        sweep_infos=infos,
    )


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
            if (dataset is None or benchmark_of(e)[0] == dataset)
            and (model is None or benchmark_of(e)[1] == model)
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
            if every_trial:
                parent = reader.sweeps(exp.experiment_id, sweep_id) if sweep_id else []
                keys = ranking(metric, mode, tiebreak)
                ids = reader.tables.ranked(
                    exp.experiment_id,
                    keys=keys,
                    strategies=[s for s in parent[0].strategies if strategy_ok(s)] or None
                    if parent
                    else None,
                    sweep_id=sweep_id,
                    every_trial=True,
                    limit=limit,
                )
                boards.append(
                    Board.of(
                        exp,
                        metric=metric,
                        mode=mode,
                        every_trial=True,
                        sweep_id=sweep_id,
                        rows=listed_rows(reader.tables, ids, [k for k, _ in keys]),
                        epochs=parent[0].epochs if parent else None,
                    )
                )
                continue
            boards.append(
                sweeps_board(reader, exp, metric=metric, mode=mode, limit=limit, sweep_id=sweep_id)
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
        ds, md = benchmark_of(exp)
        if (dataset is None or ds == dataset) and (model is None or md == model):
            keep.append(exp)
    return sorted(keep, key=lambda e: e.name)


def benchmark_of(exp: Any) -> tuple[str, str]:
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


def pareto_png(
    store: str | MlflowClient, *, dataset: str, model: str, sweep_id: str | None = None
) -> bytes:
    """The Pareto plot (PNG) of one sweep's board, as `log_leaderboard` draws it: `sweep_id`'s,
    or the benchmark's newest sweep's (boards of several sweeps are not one front). Raises
    FieldError as `query_leaderboard` does."""
    client = client_of(store) if not isinstance(store, str) or not is_database_uri(store) else store
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


def store_version(uri: str) -> tuple[int, ...] | None:
    """A value that changes whenever a board of the database store `uri` may change (its
    runs, their starts, ends and deletions): what a cache of boards or plots is keyed on.
    None for a tracking server, whose tables are not read."""
    if not is_database_uri(uri):
        return None
    from runners.board.tables import Tables

    with Tables(uri) as tables:
        return tables.version()


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
    client = client_of(store)
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

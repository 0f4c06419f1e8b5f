"""The one module bound to MLflow's tables: what a board reads of a database store, read with
SQLAlchemy Core alone.

A board over a database store (`sqlite:`, `postgresql:`, `mysql:`, `mssql:`) is read here
without importing MLflow: importing it and opening its store (which checks the schema) take
about 1.9 s of a fresh process, where the whole of `bitsweep leaderboard` may take 2 s
(benchmarks/bench_leaderboard.py). The columns named below are MLflow's (its models in
`mlflow/store/tracking/dbmodels/models.py`, mlflow 3.17, the same on SQLite and PostgreSQL);
tests/unit/test_leaderboard.py holds every read here equal to the same read through
`MlflowClient`. Every value is a bound parameter.

Indexes used (MLflow's own): `tag_pk (key, run_uuid)` and `index_tags_run_uuid` on tags,
`latest_metric_pk (key, run_uuid)` on latest metrics, `index_params_run_uuid` on params,
`run_pk` on runs, `uq_experiments_workspace_name` on experiments.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from schemas.names import EXPERIMENT_PREFIX, Phase, Tag

WORKSPACE = "default"  # MLflow's default workspace, where bitsweep writes
CHUNK = 500  # ids in one IN (...)

_runs = sa.table(
    "runs",
    sa.column("run_uuid"),
    sa.column("name"),
    sa.column("status"),
    sa.column("start_time"),
    sa.column("end_time"),
    sa.column("experiment_id"),
    sa.column("lifecycle_stage"),
)
_tags = sa.table("tags", sa.column("key"), sa.column("value"), sa.column("run_uuid"))
_params = sa.table("params", sa.column("key"), sa.column("value"), sa.column("run_uuid"))
_latest = sa.table(
    "latest_metrics",
    sa.column("key"),
    sa.column("value"),
    sa.column("is_nan"),
    sa.column("run_uuid"),
)
_experiments = sa.table(
    "experiments",
    sa.column("experiment_id"),
    sa.column("name"),
    sa.column("lifecycle_stage"),
    sa.column("workspace"),
)
_experiment_tags = sa.table(
    "experiment_tags", sa.column("key"), sa.column("value"), sa.column("experiment_id")
)


@dataclass(frozen=True)
class Experiment:
    experiment_id: str
    name: str
    tags: dict[str, str]


@dataclass(frozen=True)
class RunRow:
    """A run as a board reads it: status, start, and the tags, params and latest metrics
    asked for."""

    run_id: str
    experiment_id: str
    status: str
    start_time: int
    tags: dict[str, str]
    params: dict[str, str]
    metrics: dict[str, float]


class Tables:
    """Reads of one database store's MLflow tables, through one engine without a pool."""

    def __init__(self, uri: str) -> None:
        self.engine = sa.create_engine(uri, poolclass=sa.pool.NullPool)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Tables:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def version(self) -> tuple[int, int, int, int]:
        """What changes whenever a board of the store may: its runs, active and deleted, and
        their newest start and end (a run that finishes sets its end time)."""
        r = _runs
        deleted = sa.func.sum(sa.case((r.c.lifecycle_stage == "deleted", 1), else_=0))
        stmt = sa.select(
            sa.func.count(), sa.func.max(r.c.start_time), sa.func.max(r.c.end_time), deleted
        )
        with self.engine.connect() as conn:
            n, started, ended, gone = conn.execute(stmt).one()
        return int(n), int(started or 0), int(ended or 0), int(gone or 0)

    def benchmarks(self) -> list[Experiment]:
        """The active experiments named `bitsweep/...` of the default workspace, by name."""
        e = _experiments
        stmt = sa.select(e.c.experiment_id, e.c.name).where(
            e.c.name.like(EXPERIMENT_PREFIX + "%"),
            e.c.lifecycle_stage == "active",
            e.c.workspace == WORKSPACE,
        )
        with self.engine.connect() as conn:
            found = [(str(i), n) for i, n in conn.execute(stmt)]
            tags: dict[str, dict[str, str]] = defaultdict(dict)
            if found:
                t = _experiment_tags
                q = sa.select(t.c.experiment_id, t.c.key, t.c.value).where(
                    t.c.experiment_id.in_([int(i) for i, _ in found]),
                    t.c.key.in_([Tag.DATASET, Tag.MODEL]),
                )
                for eid, key, value in conn.execute(q):
                    tags[str(eid)][key] = value
        return sorted(
            (Experiment(i, n, dict(tags.get(i, {}))) for i, n in found), key=lambda x: x.name
        )

    def runs(
        self,
        experiment_ids: Sequence[str],
        *,
        kind: str,
        sweep_ids: Sequence[str] | None = None,
        phase: str | None = None,
        trial_ids: Sequence[str] | None = None,
        tag_keys: Iterable[str] = (),
        param_keys: Iterable[str] = (),
        metric_keys: Iterable[str] = (),
        confirm_metric_keys: Iterable[str] = (),
    ) -> list[RunRow]:
        """The active runs of `kind` (`Tag.KIND`) in the experiments, of `sweep_ids`, of one
        `phase` (`Tag.PHASE`; a run without the tag is a search trial) and with one of
        `trial_ids` when given, with the tags, params and latest metrics named; confirmation
        runs with `confirm_metric_keys` too."""
        r = _runs
        joined, where = self._trial_join(experiment_ids, kind, sweep_ids, phase)
        if trial_ids is not None:
            trial_t = _tags.alias("trial")
            joined = joined.join(
                trial_t,
                sa.and_(trial_t.c.run_uuid == r.c.run_uuid, trial_t.c.key == Tag.TRIAL_ID),
            )
            where.append(trial_t.c.value.in_(list(trial_ids)))
        t = _tags
        base = (
            sa.select(r.c.run_uuid, r.c.experiment_id, r.c.status, r.c.start_time)
            .select_from(joined)
            .where(*where)
        )
        tag_keys, param_keys = list(tag_keys), list(param_keys)
        metric_keys, confirm_keys = list(metric_keys), list(confirm_metric_keys)
        tags: dict[str, dict[str, str]] = defaultdict(dict)
        params: dict[str, dict[str, str]] = defaultdict(dict)
        metrics: dict[str, dict[str, float]] = defaultdict(dict)
        with self.engine.connect() as conn:
            found = conn.execute(base).all()
            # The runs' ids as bound values, CHUNK at a time: each key's rows are then point
            # lookups of MLflow's primary keys (key, run_uuid), where a subquery of the runs
            # would be evaluated again for each key.
            all_ids = [row[0] for row in found]
            for start in range(0, len(all_ids), CHUNK):
                chunk = all_ids[start : start + CHUNK]
                if tag_keys:
                    self._pairs(conn, t, tag_keys, chunk, tags)
                if param_keys:
                    self._pairs(conn, _params, param_keys, chunk, params)
                if metric_keys:
                    self._metrics(
                        conn,
                        metrics,
                        sa.and_(_latest.c.key.in_(metric_keys), _latest.c.run_uuid.in_(chunk)),
                    )
            extra = [k for k in confirm_keys if k not in metric_keys]
            if extra:
                phases: dict[str, dict[str, str]] = defaultdict(dict)
                for start in range(0, len(all_ids), CHUNK):
                    self._pairs(conn, t, [Tag.PHASE], all_ids[start : start + CHUNK], phases)
                confirming = [i for i in all_ids if phases[i].get(Tag.PHASE) == Phase.CONFIRM]
                for start in range(0, len(confirming), CHUNK):
                    chunk = confirming[start : start + CHUNK]
                    self._metrics(
                        conn,
                        metrics,
                        sa.and_(_latest.c.key.in_(extra), _latest.c.run_uuid.in_(chunk)),
                    )
        return [
            RunRow(
                run_id=run_id,
                experiment_id=str(eid),
                status=status,
                start_time=int(start or 0),
                tags=dict(tags.get(run_id, {})),
                params=dict(params.get(run_id, {})),
                metrics=dict(sorted(metrics.get(run_id, {}).items())),
            )
            for run_id, eid, status, start in found
        ]

    @staticmethod
    def _trial_join(
        experiment_ids: Sequence[str],
        kind: str,
        sweep_ids: Sequence[str] | None,
        phase: str | None,
    ) -> tuple[Any, list[Any]]:
        """Runs joined to their kind tag (and sweep, and phase tags as asked), with the
        conditions that select them."""
        r, t = _runs, _tags
        kind_t = t.alias("kind")
        joined = r.join(
            kind_t,
            sa.and_(
                kind_t.c.run_uuid == r.c.run_uuid, kind_t.c.key == Tag.KIND, kind_t.c.value == kind
            ),
        )
        where = [
            r.c.experiment_id.in_([int(i) for i in experiment_ids]),
            r.c.lifecycle_stage == "active",
        ]
        if sweep_ids is not None:
            sweep_t = t.alias("sweep")
            joined = joined.join(
                sweep_t,
                sa.and_(sweep_t.c.run_uuid == r.c.run_uuid, sweep_t.c.key == Tag.SWEEP_ID),
            )
            where.append(sweep_t.c.value.in_(list(sweep_ids)))
        if phase == Phase.CONFIRM:
            phase_t = t.alias("phase")
            joined = joined.join(
                phase_t,
                sa.and_(
                    phase_t.c.run_uuid == r.c.run_uuid,
                    phase_t.c.key == Tag.PHASE,
                    phase_t.c.value == Phase.CONFIRM,
                ),
            )
        elif phase is not None:
            phase_t = t.alias("phase")
            joined = joined.outerjoin(
                phase_t, sa.and_(phase_t.c.run_uuid == r.c.run_uuid, phase_t.c.key == Tag.PHASE)
            )
            where.append(sa.or_(phase_t.c.value.is_(None), phase_t.c.value == phase))
        return joined, where

    def search_budgets(
        self, experiment_id: str, sweep_ids: Sequence[str]
    ) -> dict[tuple[str, str], tuple[int, float, float]]:
        """Per (sweep, strategy), what its search spent: (trials, sum of `epochs_run`, sum of
        `train_seconds`) over its search runs that are not RUNNING (one aggregate query)."""
        r, t, m = _runs, _tags, _latest
        joined, where = self._trial_join([experiment_id], "trial", None, Phase.SEARCH)
        sweep_t, strat_t = t.alias("sweep"), t.alias("strategy")
        epochs, seconds = m.alias("epochs"), m.alias("seconds")
        joined = (
            joined.join(
                sweep_t,
                sa.and_(sweep_t.c.run_uuid == r.c.run_uuid, sweep_t.c.key == Tag.SWEEP_ID),
            )
            .join(
                strat_t,
                sa.and_(strat_t.c.run_uuid == r.c.run_uuid, strat_t.c.key == Tag.STRATEGY),
            )
            .outerjoin(
                epochs, sa.and_(epochs.c.run_uuid == r.c.run_uuid, epochs.c.key == "epochs_run")
            )
            .outerjoin(
                seconds,
                sa.and_(seconds.c.run_uuid == r.c.run_uuid, seconds.c.key == "train_seconds"),
            )
        )
        stmt = (
            sa.select(
                sweep_t.c.value,
                strat_t.c.value,
                sa.func.count(),
                sa.func.sum(sa.func.coalesce(epochs.c.value, 0.0)),
                sa.func.sum(sa.func.coalesce(seconds.c.value, 0.0)),
            )
            .select_from(joined)
            .where(*where, r.c.status != "RUNNING", sweep_t.c.value.in_(list(sweep_ids)))
            .group_by(sweep_t.c.value, strat_t.c.value)
        )
        with self.engine.connect() as conn:
            return {
                (sweep, strategy): (int(n), float(e or 0.0), float(sec or 0.0))
                for sweep, strategy, n, e, sec in conn.execute(stmt)
            }

    @staticmethod
    def _pairs(
        conn: Any, table: Any, keys: list[str], run_ids: list[str], into: dict[str, dict[str, str]]
    ) -> None:
        """The (key, value) rows of `table` (tags or params) of `run_ids`, into `into`."""
        q = sa.select(table.c.run_uuid, table.c.key, table.c.value).where(
            table.c.key.in_(keys), table.c.run_uuid.in_(run_ids)
        )
        for run_id, key, value in conn.execute(q):
            into[run_id][key] = value

    @staticmethod
    def _metrics(conn: Any, into: dict[str, dict[str, float]], cond: Any) -> None:
        m = _latest
        for run_id, key, value, is_nan in conn.execute(
            sa.select(m.c.run_uuid, m.c.key, m.c.value, m.c.is_nan).where(cond)
        ):
            into[run_id][key] = math.nan if is_nan else float(value)

    def listed(
        self, run_ids: Sequence[str], tag_keys: Iterable[str], metric_keys: Iterable[str]
    ) -> list[tuple[str, str, dict[str, str], dict[str, str], dict[str, float]]]:
        """(run id, run name, tags, params, latest metrics) of each of `run_ids`, in that
        order: the tags and metrics named, every param."""
        r = _runs
        names: dict[str, str] = {}
        tags: dict[str, dict[str, str]] = defaultdict(dict)
        metrics: dict[str, dict[str, float]] = defaultdict(dict)
        params = self.params_of(run_ids)
        tag_keys, metric_keys = list(tag_keys), list(metric_keys)
        with self.engine.connect() as conn:
            for start in range(0, len(run_ids), CHUNK):
                chunk = list(run_ids[start : start + CHUNK])
                q = sa.select(r.c.run_uuid, r.c.name).where(r.c.run_uuid.in_(chunk))
                names.update({i: n or "" for i, n in conn.execute(q)})
                self._pairs(conn, _tags, tag_keys, chunk, tags)
                self._metrics(
                    conn,
                    metrics,
                    sa.and_(_latest.c.key.in_(metric_keys), _latest.c.run_uuid.in_(chunk)),
                )
        return [
            (i, names[i], dict(tags.get(i, {})), dict(params.get(i, {})), dict(metrics.get(i, {})))
            for i in run_ids
            if i in names
        ]

    def metrics_of(
        self, run_ids: Sequence[str], keys: Iterable[str]
    ) -> dict[str, dict[str, float]]:
        """The latest metrics `keys` of each run of `run_ids`."""
        out: dict[str, dict[str, float]] = defaultdict(dict)
        keys = list(keys)
        with self.engine.connect() as conn:
            for start in range(0, len(run_ids), CHUNK):
                chunk = list(run_ids[start : start + CHUNK])
                self._metrics(
                    conn, out, sa.and_(_latest.c.key.in_(keys), _latest.c.run_uuid.in_(chunk))
                )
        return out

    def params_of(self, run_ids: Sequence[str]) -> dict[str, dict[str, str]]:
        """Every param of each run of `run_ids`."""
        out: dict[str, dict[str, str]] = defaultdict(dict)
        p = _params
        with self.engine.connect() as conn:
            for start in range(0, len(run_ids), CHUNK):
                chunk = list(run_ids[start : start + CHUNK])
                q = sa.select(p.c.run_uuid, p.c.key, p.c.value).where(p.c.run_uuid.in_(chunk))
                for run_id, key, value in conn.execute(q):
                    out[run_id][key] = value
        return out

    def ranked(
        self,
        experiment_id: str,
        *,
        keys: list[tuple[str, str]],
        strategies: list[str] | None,
        sweep_id: str | None,
        every_trial: bool,
        limit: int,
    ) -> list[str]:
        """Run ids of a benchmark's finished trials ranked by `keys` in one query: every trial
        (the first `limit`) or the best of each strategy, a `row_number()` window partitioned by
        the strategy tag (SQLite >= 3.25, PostgreSQL, MySQL 8). See `runners.board.ranking`."""
        runs, tags, latest = _runs, _tags, _latest

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
        with self.engine.connect() as conn:
            return [str(row[0]) for row in conn.execute(stmt)]


RUNS, TAGS, LATEST_METRICS = _runs, _tags, _latest

__all__ = ["LATEST_METRICS", "RUNS", "TAGS", "WORKSPACE", "Experiment", "RunRow", "Tables"]

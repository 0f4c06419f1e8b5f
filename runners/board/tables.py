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
    sa.column("status"),
    sa.column("start_time"),
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
        tag_keys: Iterable[str] = (),
        param_keys: Iterable[str] = (),
        metric_keys: Iterable[str] = (),
        confirm_metric_keys: Iterable[str] = (),
    ) -> list[RunRow]:
        """The active runs of `kind` (`Tag.KIND`) in the experiments, of `sweep_ids` when
        given, with the tags, params and latest metrics named; confirmation runs
        (`Tag.PHASE`) with `confirm_metric_keys` too."""
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
        base = (
            sa.select(r.c.run_uuid, r.c.experiment_id, r.c.status, r.c.start_time)
            .select_from(joined)
            .where(*where)
        )
        ids = sa.select(base.subquery().c.run_uuid)
        tag_keys, param_keys = list(tag_keys), list(param_keys)
        metric_keys, confirm_keys = list(metric_keys), list(confirm_metric_keys)
        with self.engine.connect() as conn:
            found = conn.execute(base).all()
            tags: dict[str, dict[str, str]] = defaultdict(dict)
            params: dict[str, dict[str, str]] = defaultdict(dict)
            metrics: dict[str, dict[str, float]] = defaultdict(dict)
            if found and tag_keys:
                q = sa.select(t.c.run_uuid, t.c.key, t.c.value).where(
                    t.c.key.in_(tag_keys), t.c.run_uuid.in_(ids)
                )
                for run_id, key, value in conn.execute(q):
                    tags[run_id][key] = value
            if found and param_keys:
                p = _params
                q = sa.select(p.c.run_uuid, p.c.key, p.c.value).where(
                    p.c.key.in_(param_keys), p.c.run_uuid.in_(ids)
                )
                for run_id, key, value in conn.execute(q):
                    params[run_id][key] = value
            if found and metric_keys:
                self._metrics(
                    conn,
                    metrics,
                    sa.and_(_latest.c.key.in_(metric_keys), _latest.c.run_uuid.in_(ids)),
                )
            extra = [k for k in confirm_keys if k not in metric_keys]
            if found and extra:
                phase = t.alias("phase")
                confirming = sa.select(phase.c.run_uuid).where(
                    phase.c.key == Tag.PHASE,
                    phase.c.value == Phase.CONFIRM,
                    phase.c.run_uuid.in_(ids),
                )
                self._metrics(
                    conn,
                    metrics,
                    sa.and_(_latest.c.key.in_(extra), _latest.c.run_uuid.in_(confirming)),
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
    def _metrics(conn: Any, into: dict[str, dict[str, float]], cond: Any) -> None:
        m = _latest
        for run_id, key, value, is_nan in conn.execute(
            sa.select(m.c.run_uuid, m.c.key, m.c.value, m.c.is_nan).where(cond)
        ):
            into[run_id][key] = math.nan if is_nan else float(value)

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


__all__ = ["WORKSPACE", "Experiment", "RunRow", "Tables"]

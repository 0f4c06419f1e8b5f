"""What a board reads of a store: the sweeps' parent runs and, of their trial runs, the few tags
and metrics a board needs (`runners.board.board`).

On a database store the trial runs are read by three SQL queries on MLflow's own tables (runs,
tags, latest metrics; through MLflow's SQLAlchemy models, every value a bound parameter),
without MLflow building a `Run` per trial: at 10,000 trial runs that is the difference between
about 0.3 s and several seconds (benchmarks/bench_leaderboard.py). On a tracking server they
are read through `MlflowClient.search_runs`, page by page. Both give the same records
(tests/unit/test_board.py).
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from runners.board.board import READ_KEYS, SweepInfo, TrialRecord, sweep_info
from schemas.names import Phase, Tag, tag_filter

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

PAGE = 5000
DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")  # MLflow's database stores
TRIAL_TAGS = (Tag.STRATEGY, Tag.SWEEP_ID, Tag.TRIAL_ID, Tag.PHASE, Tag.CONFIRMS_TRIAL)


def is_database_uri(uri: str) -> bool:
    return uri.split(":", 1)[0].split("+", 1)[0].lower() in DATABASE_SCHEMES


def read_sweeps(
    client: MlflowClient, experiment_id: str, sweep_id: str | None = None
) -> list[SweepInfo]:
    """The sweeps of one experiment (or the one `sweep_id`), newest first."""
    flt = tag_filter(Tag.KIND, "sweep")
    if sweep_id is not None:
        flt += f" and {tag_filter(Tag.SWEEP_ID, sweep_id)}"
    found: list[SweepInfo] = []
    token = None
    while True:
        page = client.search_runs(
            [experiment_id], filter_string=flt, max_results=1000, page_token=token
        )
        found += [sweep_info(r) for r in page]
        token = page.token
        if not token:
            break
    return sorted(found, key=lambda s: (-s.start_time, s.sweep_id))


def read_trials(
    client: MlflowClient,
    experiment_id: str,
    sweep_id: str | None = None,
    *,
    use_sql: bool | None = None,
) -> list[TrialRecord]:
    """The trial runs (active: not deleted) of one experiment, or of one sweep of it."""
    if use_sql is None:
        use_sql = is_database_uri(str(client.tracking_uri))
    if use_sql:
        return _sql_trials(str(client.tracking_uri), experiment_id, sweep_id)
    flt = tag_filter(Tag.KIND, "trial")
    if sweep_id is not None:
        flt += f" and {tag_filter(Tag.SWEEP_ID, sweep_id)}"
    out: list[TrialRecord] = []
    token = None
    while True:
        page = client.search_runs(
            [experiment_id], filter_string=flt, max_results=PAGE, page_token=token
        )
        for run in page:
            m = run.data.metrics
            out.append(
                _record(
                    run.info.run_id,
                    run.info.status,
                    run.info.start_time,
                    run.data.tags,
                    {k: float(m[k]) for k in READ_KEYS if k in m},
                )
            )
        token = page.token
        if not token:
            break
    return out


def _record(
    run_id: str, status: str, start: Any, tags: dict[str, str], metrics: dict[str, float]
) -> TrialRecord:
    return TrialRecord(
        run_id=run_id,
        status=status,
        start_time=int(start or 0),
        sweep_id=tags.get(Tag.SWEEP_ID, ""),
        strategy=tags.get(Tag.STRATEGY, ""),
        trial_id=tags.get(Tag.TRIAL_ID, run_id),
        phase=tags.get(Tag.PHASE, Phase.SEARCH),
        confirms_trial=tags.get(Tag.CONFIRMS_TRIAL),
        metrics=dict(sorted(metrics.items())),
    )


def _sql_trials(uri: str, experiment_id: str, sweep_id: str | None) -> list[TrialRecord]:
    import sqlalchemy as sa
    from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlRun, SqlTag

    runs, tags, latest = SqlRun.__table__, SqlTag.__table__, SqlLatestMetric.__table__
    kind = tags.alias("kind")
    joined = runs.join(
        kind,
        sa.and_(
            kind.c.run_uuid == runs.c.run_uuid, kind.c.key == Tag.KIND, kind.c.value == "trial"
        ),
    )
    if sweep_id is not None:
        sweep = tags.alias("sweep")
        joined = joined.join(
            sweep,
            sa.and_(
                sweep.c.run_uuid == runs.c.run_uuid,
                sweep.c.key == Tag.SWEEP_ID,
                sweep.c.value == sweep_id,
            ),
        )
    base = (
        sa.select(runs.c.run_uuid, runs.c.status, runs.c.start_time)
        .select_from(joined)
        .where(runs.c.experiment_id == int(experiment_id), runs.c.lifecycle_stage == "active")
    )
    ids = sa.select(base.subquery().c.run_uuid)
    tag_q = sa.select(tags.c.run_uuid, tags.c.key, tags.c.value).where(
        tags.c.key.in_(TRIAL_TAGS), tags.c.run_uuid.in_(ids)
    )
    metric_q = sa.select(latest.c.run_uuid, latest.c.key, latest.c.value, latest.c.is_nan).where(
        latest.c.key.in_(READ_KEYS), latest.c.run_uuid.in_(ids)
    )
    engine = sa.create_engine(uri, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            found = conn.execute(base).all()
            run_tags: dict[str, dict[str, str]] = defaultdict(dict)
            for run_id, key, value in conn.execute(tag_q):
                run_tags[run_id][key] = value
            run_metrics: dict[str, dict[str, float]] = defaultdict(dict)
            for run_id, key, value, is_nan in conn.execute(metric_q):
                run_metrics[run_id][key] = math.nan if is_nan else float(value)
    finally:
        engine.dispose()
    return [
        _record(run_id, status, start, run_tags.get(run_id, {}), run_metrics.get(run_id, {}))
        for run_id, status, start in found
    ]


def read_params(client: MlflowClient, run_ids: list[str]) -> dict[str, dict[str, str]]:
    """The params of each run of `run_ids` (the selected configs a board shows)."""
    out: dict[str, dict[str, str]] = {}
    if not run_ids:
        return out
    uri = str(client.tracking_uri)
    if is_database_uri(uri):
        import sqlalchemy as sa
        from mlflow.store.tracking.dbmodels.models import SqlParam

        params = SqlParam.__table__
        engine = sa.create_engine(uri, poolclass=sa.pool.NullPool)
        try:
            with engine.connect() as conn:
                for start in range(0, len(run_ids), 500):
                    chunk = run_ids[start : start + 500]
                    q = sa.select(params.c.run_uuid, params.c.key, params.c.value).where(
                        params.c.run_uuid.in_(chunk)
                    )
                    for run_id, key, value in conn.execute(q):
                        out.setdefault(run_id, {})[key] = value
        finally:
            engine.dispose()
        return out
    for run_id in run_ids:
        out[run_id] = dict(client.get_run(run_id).data.params)
    return out


__all__ = ["is_database_uri", "read_params", "read_sweeps", "read_trials"]

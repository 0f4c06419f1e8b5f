"""`/sweeps`: submit a sweep, list them, one sweep's detail, cancel it, read its log."""

from __future__ import annotations

import secrets
import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse, PlainTextResponse
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from schemas.sweep import SweepSpec
from service.core import Conflict, NotFound, Service
from service.db import LIVE, Status, SweepRow, utcnow
from service.http.api import (
    AUTH_ERRORS,
    ERRORS,
    NOT_FOUND,
    READ_ERRORS,
    BestTrial,
    ErrorBody,
    SweepDetail,
    SweepPage,
    SweepView,
    TrialCounts,
    json_error,
)
from service.http.deps import Admissions, Caller, Reader, ServiceDep, SweepId, get_row, may_cancel
from service.http.views import sweep_view

# How long a cancel waits for a running sweep's Ray job to stop before answering 202.
CANCEL_WAIT_S = 20.0

router = APIRouter(tags=["sweeps"], dependencies=[Reader], responses=READ_ERRORS)


@router.post(
    "/sweeps",
    status_code=202,
    response_model=SweepView,
    responses={**ERRORS, **AUTH_ERRORS},
)
def submit(
    spec: SweepSpec, caller: Caller, service: ServiceDep, admission: Admissions
) -> SweepView:
    """Queue a sweep: validated as `bitsweep sweep` validates it, stored, then run as a
    Ray job when a slot is free."""
    # Admission loads the dataset and checks the model: a few at once, the rest wait.
    admitted = admission.admit(service, spec)
    for _ in range(5):
        sweep_id = f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
        # One allocation of `seq` at a time in this process (the service runs one); the
        # unique index still refuses a second process's, and the loop draws again.
        with admission.allocating, service.sessions() as s, s.begin():
            seq = (s.scalar(select(func.max(SweepRow.seq))) or 0) + 1
            row = SweepRow(
                id=sweep_id,
                seq=seq,
                name=spec.name,
                spec=admitted.model_dump(mode="json"),
                status=Status.queued,
                benchmark=admitted.benchmark,
                submitted_by=caller,
                cancel_requested=False,
                created_at=utcnow(),
            )
            try:
                s.add(row)
                s.flush()
            except IntegrityError:  # two submissions took the same seq or id: again
                s.rollback()
                continue
        return sweep_view(service, row)
    raise Conflict("name", "could not allocate a sweep id; submit again")


@router.get("/sweeps", response_model=SweepPage, responses=ERRORS)
def list_sweeps(
    service: ServiceDep,
    status: Annotated[
        Literal["queued", "running", "succeeded", "failed", "cancelled"] | None, Query()
    ] = None,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> SweepPage:
    """The sweeps, newest first, a page at a time, of one status when given."""
    with service.sessions() as s:
        where = [] if status is None else [SweepRow.status == Status(status)]
        total = s.scalar(select(func.count()).select_from(SweepRow).where(*where)) or 0
        rows = s.scalars(
            select(SweepRow).where(*where).order_by(SweepRow.seq.desc()).offset(offset).limit(limit)
        ).all()
    return SweepPage(
        items=[sweep_view(service, r) for r in rows], total=total, offset=offset, limit=limit
    )


@router.get(
    "/sweeps/{sweep_id}",
    response_model=SweepDetail,
    responses={**ERRORS, **NOT_FOUND},
)
def get_sweep(sweep_id: SweepId, service: ServiceDep) -> SweepDetail:
    """A sweep's status, trial counts, best trial so far per strategy, and links."""
    row = get_row(service, sweep_id)
    return detail(service, row)


def detail(service: Service, row: SweepRow) -> SweepDetail:
    spec = SweepSpec.recorded(row.spec)
    shown = spec.shown()  # its stores without their passwords
    planned = spec.total_trials()
    found = service.read_runs(row.id)
    trials = found.trials if found is not None else {}
    best: dict[str, BestTrial] = {}
    if found is not None:
        best = best_trials(service, row, spec, found.experiment_id)
    return SweepDetail(
        **sweep_view(service, row).model_dump(),
        spec=shown,
        trials=TrialCounts(
            planned=planned,
            done=trials.get("FINISHED", 0),
            running=trials.get("RUNNING", 0),
            failed=trials.get("FAILED", 0),
            killed=trials.get("KILLED", 0),
        ),
        best=best,
    )


def best_trials(
    service: Service, row: SweepRow, spec: SweepSpec, experiment_id: str
) -> dict[str, BestTrial]:
    """Each strategy's first row on the sweep's board: its selected config, with the
    objective value that selected it and the board's numbers (test accuracy once
    confirmed)."""
    from runners.board import query_leaderboard

    objective = spec.objectives[0]
    boards = query_leaderboard(service.settings.tracking, sweep_id=row.id)
    out: dict[str, BestTrial] = {}
    for r in boards[0].rows if boards else []:
        if r.strategy in out:
            continue
        flat = r.to_dict()
        metrics = {
            k: v
            for k, v in flat.items()
            if v is None or (isinstance(v, float | int) and not isinstance(v, bool))
        }
        out[r.strategy] = BestTrial(
            run_id=r.run_id,
            trial_id=r.trial_id,
            metric=objective.metric,
            value=r.selected.get(objective.metric),
            metrics=metrics,
            link=service.run_link(experiment_id, r.run_id),
        )
    return out


@router.post(
    "/sweeps/{sweep_id}/cancel",
    response_model=SweepView,
    responses={
        **ERRORS,
        **AUTH_ERRORS,
        **NOT_FOUND,
        403: {"model": ErrorBody, "description": "another token's sweep (not an admin)"},
        202: {"model": SweepView, "description": "the job is stopping"},
        409: {"model": ErrorBody, "description": "the sweep has ended"},
    },
)
def cancel(sweep_id: SweepId, caller: Caller, service: ServiceDep) -> Any:
    """Stop a sweep: a queued one never runs; a running one's Ray job is stopped. Its
    finished trials stay on the leaderboard; its runs left RUNNING are marked KILLED."""
    with service.sessions() as s, s.begin():
        row = s.get(SweepRow, sweep_id)
        if row is None:
            raise NotFound("sweep_id", f"no sweep {sweep_id}")
        may_cancel(service, caller, row)
        if row.status not in LIVE:
            raise Conflict("sweep_id", f"sweep {sweep_id} has ended ({row.status.value})")
        row.cancelled_by = caller
        if row.status == Status.queued:
            row.status, row.finished_at = Status.cancelled, utcnow()
            row.cancel_requested = True
            return sweep_view(service, row)
        row.cancel_requested = True
    if service.run_jobs:
        deadline = time.monotonic() + CANCEL_WAIT_S
        while time.monotonic() < deadline:
            with service.scheduler.lock:
                service.scheduler.follow(sweep_id)
            row = get_row(service, sweep_id)
            if row.status not in LIVE:
                return sweep_view(service, row)
            time.sleep(0.5)
    return JSONResponse(
        sweep_view(service, get_row(service, sweep_id)).model_dump(mode="json"), status_code=202
    )


@router.get(
    "/sweeps/{sweep_id}/logs",
    response_class=PlainTextResponse,
    # The route's class is text; its refusals are JSON, said explicitly (a "model" here
    # would be documented under text/plain).
    responses={
        **{
            code: json_error(v["description"])
            for code, v in {**ERRORS, **NOT_FOUND, **READ_ERRORS}.items()
        },
        200: {"content": {"text/plain": {"schema": {"type": "string"}}}},
    },
)
def logs(
    sweep_id: SweepId,
    service: ServiceDep,
    tail: Annotated[int, Query(ge=1, le=100_000)] = 1000,
) -> PlainTextResponse:
    """The sweep's Ray job log (the last `tail` lines): one line per trial event."""
    lines = service.job_log(get_row(service, sweep_id), tail)
    return PlainTextResponse("\n".join(lines) + ("\n" if lines else ""))

"""The bitsweep service: a REST API (FastAPI) that launches sweeps on a Ray cluster as Ray jobs,
follows them, and serves the leaderboards MLflow holds, with a page for people at `/`.

`create_app(settings)` builds the app; `bitsweep serve` runs it with uvicorn. At start the app
brings its database to the newest schema, starts (or finds) the Ray head of the embedded
default, and runs the scheduler (`service.scheduler`) every `poll_seconds`. docs/service.md
describes the API, the settings and the security model.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import threading
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from sqlalchemy import func, select
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from schemas.errors import FieldError
from schemas.names import TRIAL_METRICS
from schemas.secrets import scrubbed
from schemas.sweep import SweepSpec
from service.api import (
    BestTrial,
    BoardView,
    ErrorBody,
    Health,
    Leaderboard,
    StrategyView,
    SweepDetail,
    SweepPage,
    SweepView,
    TrialCounts,
)
from service.core import (
    Busy,
    Conflict,
    Forbidden,
    NotFound,
    Service,
    Unauthorized,
    checked_dataset,
    public_uri,
)
from service.db import LIVE, Status, SweepRow, migrate, utcnow
from service.settings import ServiceSettings

# Submissions checked at once (each loads its dataset and counts its model's parameters), and
# how long one more waits for its turn before a 503.
MAX_ADMITTING, ADMIT_WAIT_S = 2, 30.0
# The most leaderboard rows one read may ask for, for anyone who reaches the port: 1,000 rows
# of a 10,000-run store read in about 0.3 s (10,000: 3 s).
MAX_READ_ROWS = 1000
log = logging.getLogger(__name__)

SWEEP_ID = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
NAME = r"^[A-Za-z0-9][A-Za-z0-9_.:/+-]{0,499}$"
CANCEL_WAIT_S = 20.0


def _error(status: int, field: str, reason: str, headers: dict[str, str] | None = None) -> Any:
    body = ErrorBody(field=field, reason=reason, detail=f"{field}: {reason}")
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


ERRORS: dict[int | str, dict[str, Any]] = {
    422: {"model": ErrorBody, "description": "a field is invalid"},
}
AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "no valid bearer token"},
    413: {"model": ErrorBody, "description": "the request body is too large"},
}


def _json_error(description: str) -> dict[str, Any]:
    schema = {"$ref": "#/components/schemas/ErrorBody"}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "no such sweep"}
}


class BodyLimit:
    """Refuse request bodies over `limit` bytes (413), by their Content-Length or, when
    chunked, as they arrive, before the app reads them."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            await self._refuse(scope, receive, send)
            return
        # Read the whole body (at most `limit` bytes) before the app: an exception raised
        # from inside the app's receive() is turned into a 400 by FastAPI's body parsing.
        messages: list[Message] = []
        seen, more = 0, True
        while more:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            seen += len(message.get("body", b""))
            if seen > self.limit:
                await self._refuse(scope, receive, send)
                return
            more = bool(message.get("more_body", False))
        pending = iter(messages)

        async def replay() -> Message:
            return next(pending, None) or await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = _error(413, "body", f"is larger than {self.limit} bytes")
        await response(scope, receive, send)


def create_app(
    settings: ServiceSettings, *, run_jobs: bool = True, trusted_hosts: list[str] | None = None
) -> FastAPI:
    """The service's app. `run_jobs=False` serves the API and the page without Ray: sweeps are
    stored and stay queued (for tests of the API alone). `trusted_hosts`: the `Host` headers
    it answers (others get 400), against DNS rebinding; None answers any."""
    service = Service(settings, run_jobs)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        migrate(service.engine)
        await asyncio.to_thread(service.init_stores)
        task = None
        if run_jobs:
            await asyncio.to_thread(service.start_ray)
            task = asyncio.create_task(_follow_forever(service))
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if service.head is not None:
                await asyncio.to_thread(service.head.stop)
            service.engine.dispose()

    app = FastAPI(
        title="bitsweep",
        summary="Sweeps of low-bit weight training on a Ray cluster; leaderboards from MLflow.",
        version=_version(),
        lifespan=lifespan,
    )
    app.state.service = service
    if trusted_hosts is not None:
        from starlette.middleware.trustedhost import TrustedHostMiddleware

        app.add_middleware(TrustedHostMiddleware, allowed_hosts=trusted_hosts)
    _errors(app)
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.add_middleware(BodyLimit, limit=settings.max_request_bytes)
    _routes(app, service)
    from service.page import add_page

    add_page(app, service)
    return app


async def _follow_forever(service: Service) -> None:
    while True:
        try:
            await asyncio.to_thread(service.scheduler.step)
        except Exception:
            log.exception("a pass of the scheduler failed; the next one runs as usual")
        await asyncio.sleep(service.settings.poll_seconds)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("bitsweep")
    except PackageNotFoundError:
        return "0"


def _errors(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, e: RequestValidationError) -> Any:
        err = e.errors()[0]
        loc = [str(p) for p in err.get("loc", ())]
        where = loc[0] if loc else "body"
        loc = loc[1:] if where in ("body", "query", "path", "header") else loc
        if err.get("type") == "json_invalid":
            return _error(422, "body", f"is not valid JSON ({err.get('ctx', {}).get('error', '')})")
        field = ".".join(loc) or where
        reason = str(err.get("msg", "is invalid"))
        for noise in ("Value error, ", "Assertion failed, "):
            reason = reason.removeprefix(noise)
        return _error(422, field, " ".join(reason.split()))

    @app.exception_handler(FieldError)
    async def refused(_request: Request, e: FieldError) -> Any:
        status = 404 if isinstance(e, NotFound) else 409 if isinstance(e, Conflict) else 422
        status = 503 if isinstance(e, Busy) else 403 if isinstance(e, Forbidden) else status
        if isinstance(e, Unauthorized):
            return _error(401, e.field, e.reason, {"WWW-Authenticate": "Bearer"})
        return _error(status, e.field, e.reason)

    @app.exception_handler(StarletteHTTPException)
    async def http(request: Request, e: StarletteHTTPException) -> Any:
        headers = dict(getattr(e, "headers", None) or {})
        if e.status_code == 400 and "parsing the body" in str(e.detail):
            # A body that is not UTF-8 text: as malformed JSON is answered.
            return _error(422, "body", "is not valid JSON (not UTF-8 text)")
        if e.status_code == 405:
            # A path served by several routes (GET and POST /sweeps): Starlette's Allow names
            # the first route's methods alone.
            from starlette.routing import Match

            allowed = {
                m
                for r in request.app.router.routes
                if r.matches(request.scope)[0] != Match.NONE
                for m in (getattr(r, "methods", None) or ())
            }
            if allowed:
                headers["Allow"] = ", ".join(sorted(allowed))
        field = "path" if e.status_code in (404, 405) else "request"
        return _error(e.status_code, field, str(e.detail).lower(), headers or None)


def token_name(request: Request) -> str:
    """The name of the request's token; every state change needs one when tokens are set."""
    settings = request.app.state.service.settings
    if not settings.tokens:
        return "anonymous"
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise Unauthorized("authorization", "a bearer token is required")
    given_bytes = given.strip().encode()
    found = None
    for name, token in settings.tokens.items():  # every token compared, in constant time
        if hmac.compare_digest(given_bytes, token.encode()):
            found = name
    if found is None:
        raise Unauthorized("authorization", "the token is not valid")
    return found


Caller = Annotated[str, Depends(token_name)]
SweepId = Annotated[str, PathParam(pattern=SWEEP_ID, max_length=128)]
Metric = Literal[TRIAL_METRICS]  # type: ignore[valid-type]


def _routes(app: FastAPI, service: Service) -> None:
    settings = service.settings

    def may_cancel(caller: str, row: SweepRow) -> None:
        """A token cancels the sweeps it submitted; an admin token (`BITSWEEP_ADMINS`) any.
        Without tokens (`anonymous`), anyone on the machine may, as anyone may submit."""
        if caller in (row.submitted_by, "anonymous") or caller in settings.admins:
            return
        raise Forbidden(
            "authorization",
            f"sweep {row.id} was submitted by {row.submitted_by}; token {caller} may cancel "
            "its own sweeps (an admin token, BITSWEEP_ADMINS, any)",
        )

    def get_row(sweep_id: str) -> SweepRow:
        with service.sessions() as s:
            row = s.get(SweepRow, sweep_id)
        if row is None:
            raise NotFound("sweep_id", f"no sweep {sweep_id}")
        return row

    @app.get(
        "/health",
        response_model=Health,
        tags=["service"],
        responses={503: {"model": Health, "description": "the Ray head does not answer"}},
    )
    def health() -> Any:
        """The service answers, with its database, Ray and MLflow addresses and its sweeps;
        503 when its Ray head does not answer (every sweep would fail)."""
        from service.jobs import answers

        with service.sessions() as s:
            rows = s.execute(select(SweepRow.status, func.count()).group_by(SweepRow.status))
            counts = {st.value: 0 for st in Status}
            counts.update({st.value: n for st, n in rows})
        ray_ok = answers(service.ray_address) if service.run_jobs else None
        body = Health(
            status="unhealthy" if ray_ok is False else "ok",
            version=_version(),
            database=service.engine.dialect.name,
            ray=service.ray_address,
            ray_ok=ray_ok,
            tracking_uri=public_uri(settings.tracking),
            sweeps=counts,  # type: ignore[arg-type]
        )
        if ray_ok is False:
            return JSONResponse(body.model_dump(mode="json"), status_code=503)
        return body

    @app.get("/strategies", response_model=list[StrategyView], tags=["strategies"])
    def list_strategies() -> list[dict[str, Any]]:
        """Every registered strategy: paper, params with bounds, search ranges (numbers)."""
        import strategies

        return [cls.describe() for cls in strategies.list_strategies().values()]

    submit_lock = threading.Lock()
    admitting = threading.BoundedSemaphore(MAX_ADMITTING)

    @app.post(
        "/sweeps",
        status_code=202,
        response_model=SweepView,
        tags=["sweeps"],
        responses={**ERRORS, **AUTH_ERRORS},
    )
    def submit(spec: SweepSpec, caller: Caller) -> SweepView:
        """Queue a sweep: validated as `bitsweep sweep` validates it, stored, then run as a
        Ray job when a slot is free."""
        import secrets

        # Admission loads the dataset and checks the model: a few at once, the rest wait.
        if not admitting.acquire(timeout=ADMIT_WAIT_S):
            raise Busy("spec", f"{MAX_ADMITTING} submissions are being checked; submit again")
        try:
            admitted = service.admit(spec)
        finally:
            admitting.release()
        for _ in range(5):
            sweep_id = f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
            # One allocation of `seq` at a time in this process (the service runs one); the
            # unique index still refuses a second process's, and the loop draws again.
            with submit_lock, service.sessions() as s, s.begin():
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
                except Exception as e:  # two submissions took the same seq or id: again
                    from sqlalchemy.exc import IntegrityError

                    if not isinstance(e, IntegrityError):
                        raise
                    s.rollback()
                    continue
            return service.view(row)
        raise Conflict("name", "could not allocate a sweep id; submit again")

    @app.get("/sweeps", response_model=SweepPage, tags=["sweeps"], responses=ERRORS)
    def list_sweeps(
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
                select(SweepRow)
                .where(*where)
                .order_by(SweepRow.seq.desc())
                .offset(offset)
                .limit(limit)
            ).all()
        return SweepPage(
            items=[service.view(r) for r in rows], total=total, offset=offset, limit=limit
        )

    @app.get(
        "/sweeps/{sweep_id}",
        response_model=SweepDetail,
        tags=["sweeps"],
        responses={**ERRORS, **NOT_FOUND},
    )
    def get_sweep(sweep_id: SweepId) -> SweepDetail:
        """A sweep's status, trial counts, best trial so far per strategy, and links."""
        row = get_row(sweep_id)
        return detail(row)

    def detail(row: SweepRow) -> SweepDetail:
        spec = SweepSpec.recorded(row.spec)
        shown = spec.model_copy(  # the stores as /health shows them: no password
            update={
                "tracking_uri": public_uri(spec.tracking_uri or ""),
                "optuna_storage": public_uri(spec.optuna_storage or ""),
            }
        )
        planned = spec.total_trials()
        found = service.read_runs(row.id)
        trials = found.trials if found is not None else {}
        best: dict[str, BestTrial] = {}
        if found is not None:
            best = best_trials(row, spec, found.experiment_id)
        return SweepDetail(
            **service.view(row).model_dump(),
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

    def best_trials(row: SweepRow, spec: SweepSpec, experiment_id: str) -> dict[str, BestTrial]:
        """Each strategy's first row on the sweep's board: its selected config, with the
        objective value that selected it and the board's numbers (test accuracy once
        confirmed)."""
        from runners.board.leaderboard import query_leaderboard

        objective = spec.objectives[0]
        boards = query_leaderboard(settings.tracking, sweep_id=row.id)
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

    @app.post(
        "/sweeps/{sweep_id}/cancel",
        response_model=SweepView,
        tags=["sweeps"],
        responses={
            **ERRORS,
            **AUTH_ERRORS,
            **NOT_FOUND,
            403: {"model": ErrorBody, "description": "another token's sweep (not an admin)"},
            202: {"model": SweepView, "description": "the job is stopping"},
            409: {"model": ErrorBody, "description": "the sweep has ended"},
        },
    )
    def cancel(sweep_id: SweepId, caller: Caller) -> Any:
        """Stop a sweep: a queued one never runs; a running one's Ray job is stopped. Its
        finished trials stay on the leaderboard; its runs left RUNNING are marked KILLED."""
        with service.sessions() as s, s.begin():
            row = s.get(SweepRow, sweep_id)
            if row is None:
                raise NotFound("sweep_id", f"no sweep {sweep_id}")
            may_cancel(caller, row)
            if row.status not in LIVE:
                raise Conflict("sweep_id", f"sweep {sweep_id} has ended ({row.status.value})")
            row.cancelled_by = caller
            if row.status == Status.queued:
                row.status, row.finished_at = Status.cancelled, utcnow()
                row.cancel_requested = True
                return service.view(row)
            row.cancel_requested = True
        if service.run_jobs:
            deadline = time.monotonic() + CANCEL_WAIT_S
            while time.monotonic() < deadline:
                with service.scheduler.lock:
                    service.scheduler.follow(sweep_id)
                row = get_row(sweep_id)
                if row.status not in LIVE:
                    return service.view(row)
                time.sleep(0.5)
        return JSONResponse(
            service.view(get_row(sweep_id)).model_dump(mode="json"), status_code=202
        )

    @app.get(
        "/sweeps/{sweep_id}/logs",
        response_class=PlainTextResponse,
        tags=["sweeps"],
        # The route's class is text; its refusals are JSON, said explicitly (a "model" here
        # would be documented under text/plain).
        responses={
            **{code: _json_error(v["description"]) for code, v in {**ERRORS, **NOT_FOUND}.items()},
            200: {"content": {"text/plain": {"schema": {"type": "string"}}}},
        },
    )
    def logs(
        sweep_id: SweepId, tail: Annotated[int, Query(ge=1, le=100_000)] = 1000
    ) -> PlainTextResponse:
        """The sweep's Ray job log (the last `tail` lines): one line per trial event."""
        row = get_row(sweep_id)
        text = ""
        if row.ray_job_id is not None and service.run_jobs:
            # A sweep prints its stores masked; a driver's error may still quote one.
            text = scrubbed(service.jobs.logs(row.ray_job_id), [settings.tracking, settings.optuna])
        lines = text.splitlines()[-tail:]
        return PlainTextResponse("\n".join(lines) + ("\n" if lines else ""))

    @app.get(
        "/leaderboard",
        response_model=Leaderboard,
        tags=["leaderboard"],
        responses={
            **ERRORS,
            404: {"model": ErrorBody, "description": "no such benchmark or sweep"},
        },
    )
    def leaderboard(
        dataset: Annotated[str | None, Query(pattern=NAME, max_length=500)] = None,
        model: Annotated[str | None, Query(pattern=NAME, max_length=500)] = None,
        metric: Annotated[Metric, Query()] = "test_accuracy",
        mode: Annotated[Literal["max", "min"], Query()] = "max",
        limit: Annotated[int, Query(ge=1, le=MAX_READ_ROWS)] = 100,
        every: Annotated[
            bool, Query(description="every trial (search and confirmation), not the board")
        ] = False,
        sweep: Annotated[str | None, Query(pattern=SWEEP_ID, max_length=128)] = None,
    ) -> Leaderboard:
        """The board of each sweep of each benchmark (MLflow experiment), newest first, or of
        one sweep: each strategy's config selected on validation, its test accuracy over fresh
        seeds with its 95% interval, a Welch test against the first row, the gap to float and
        the search's budget (docs/records.md, "The board"); `limit` rows at most."""
        boards = service.read_boards(
            dataset=dataset,
            model=model,
            metric=metric,
            mode=mode,
            every_trial=every,
            limit=limit,
            sweep_id=sweep,
        )
        return Leaderboard(boards=[board_view(b) for b in boards])

    @app.get(
        "/leaderboard/pareto.png",
        response_class=Response,
        tags=["leaderboard"],
        responses={
            **ERRORS,
            404: {"model": ErrorBody, "description": "no such benchmark or sweep"},
            200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}},
        },
    )
    def pareto(
        dataset: Annotated[str, Query(pattern=NAME, max_length=500)],
        model: Annotated[str, Query(pattern=NAME, max_length=500)],
        sweep: Annotated[str | None, Query(pattern=SWEEP_ID, max_length=128)] = None,
    ) -> Response:
        """Test accuracy against weight memory of a benchmark's trials (or one sweep's)."""
        from runners.board.leaderboard import pareto_png

        if not service.store_exists():
            raise NotFound("dataset", f"no benchmark bitsweep/{dataset}/{model}")
        try:
            png = pareto_png(settings.tracking, dataset=dataset, model=model, sweep_id=sweep)
        except FieldError as e:
            if e.field in ("dataset", "sweep_id"):
                raise NotFound("sweep" if e.field == "sweep_id" else "dataset", e.reason) from None
            raise
        return Response(png, media_type="image/png")


def board_view(b: Any) -> BoardView:
    return BoardView(
        benchmark=b.benchmark,
        dataset=b.dataset,
        model=b.model,
        experiment_id=b.experiment_id,
        metric=b.metric,
        mode=b.mode,
        scope=b.scope,
        sweep_id=b.sweep_id,
        sweeps=b.sweeps,
        title=b.title(),
        rows=b.to_json(),
    )


__all__ = ["Service", "checked_dataset", "create_app"]

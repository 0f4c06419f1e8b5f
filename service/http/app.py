"""The bitsweep service: a REST API (FastAPI) that launches sweeps on a Ray cluster as Ray jobs,
follows them, and serves the leaderboards MLflow holds, with a page for people at `/`.

`create_app(settings)` builds the app: the middleware (Host check, CORS, body limit), the
refusals as `ErrorBody` JSON (`_errors`), and the routers of `service.http.routes` and
`service.http.page`, which get the `Service` and the caller through `service.http.deps`.
`bitsweep serve` runs it with uvicorn. At start the app brings its database to the newest
schema, starts (or finds) the Ray head of the embedded default, and runs the scheduler
(`service.scheduler`) every `poll_seconds`. docs/service.md describes the API, the settings
and the security model.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from schemas.errors import FieldError
from service.core import Busy, Conflict, Forbidden, NotFound, Service, Unauthorized
from service.db import migrate
from service.http import page
from service.http.api import ErrorBody, version
from service.http.deps import Admission
from service.http.routes import health, leaderboard, strategies, sweeps
from service.settings import ServiceSettings

log = logging.getLogger(__name__)
# The methods a 405's Allow header may name.
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _error(status: int, field: str, reason: str, headers: dict[str, str] | None = None) -> Any:
    body = ErrorBody(field=field, reason=reason, detail=f"{field}: {reason}")
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


class BodyLimit:
    """Refuse request bodies over `limit` bytes (413), by their Content-Length or, when
    chunked, as they arrive, before the app reads them; and bodies that take more than
    `timeout` seconds to arrive (408), so that a slow sender cannot hold a worker."""

    def __init__(self, app: ASGIApp, limit: int, timeout: float) -> None:
        self.app, self.limit, self.timeout = app, limit, timeout

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
        deadline = asyncio.get_running_loop().time() + self.timeout
        while more:
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                response = _error(408, "body", f"did not arrive within {self.timeout:g} s")
                await response(scope, receive, send)
                return
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

    # /docs and /redoc with Swagger UI's and ReDoc's assets served by the app itself, not a
    # CDN: a service on an air-gapped cluster still shows its API.
    app = FastAPIOffline(
        title="bitsweep",
        summary="Sweeps of low-bit weight training on a Ray cluster; leaderboards from MLflow.",
        version=version(),
        lifespan=lifespan,
    )
    app.state.service = service  # what the routes get through `deps.get_service`
    app.state.admission = Admission()
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
    app.add_middleware(
        BodyLimit, limit=settings.max_request_bytes, timeout=settings.body_timeout_seconds
    )
    for router in (health.router, strategies.router, sweeps.router, leaderboard.router):
        app.include_router(router)
    app.include_router(page.router)  # `/`, outside the API's schema
    return app


async def _follow_forever(service: Service) -> None:
    while True:
        try:
            await asyncio.to_thread(service.scheduler.step)
        except Exception:
            log.exception("a pass of the scheduler failed; the next one runs as usual")
        await asyncio.sleep(service.settings.poll_seconds)


def _errors(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, e: RequestValidationError) -> Any:
        err = e.errors()[0]
        loc = [str(p) for p in err.get("loc", ())]
        where = loc[0] if loc else "body"
        loc = loc[1:] if where in ("body", "query", "path", "header") else loc
        if err.get("type") == "json_invalid":
            at = err["loc"][1] if len(err.get("loc", ())) > 1 else None
            where = f" at character {at}" if isinstance(at, int) else ""
            why = err.get("ctx", {}).get("error", "")
            return _error(422, "body", f"is not valid JSON ({why}{where})")
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
            # FastAPI could not read the body (it says why in the cause): as malformed JSON.
            return _error(422, "body", f"is not valid JSON ({_parse_reason(e.__cause__)})")
        if e.status_code == 405:
            # A path served by several routes (GET and POST /sweeps): Starlette's Allow names
            # the first route's methods alone. Each method is tried on the path, as the routes
            # may sit inside included routers, which list no methods of their own.
            from starlette.routing import Match

            routes = request.app.router.routes
            allowed = {
                m
                for m in METHODS
                if any(r.matches({**request.scope, "method": m})[0] == Match.FULL for r in routes)
            }
            if allowed:
                headers["Allow"] = ", ".join(sorted(allowed))
        field = "path" if e.status_code in (404, 405) else "request"
        return _error(e.status_code, field, str(e.detail).lower(), headers or None)


def _parse_reason(cause: BaseException | None) -> str:
    """Why a body could not be parsed, in a few words (never the body itself)."""
    if isinstance(cause, UnicodeDecodeError):
        return f"not UTF-8 text: byte {cause.start}"
    if isinstance(cause, RecursionError):
        return "nested too deeply"
    if cause is None:
        return "unreadable"
    return " ".join(str(cause).split())[:200] or type(cause).__name__


__all__ = ["create_app"]

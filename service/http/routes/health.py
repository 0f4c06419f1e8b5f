"""`GET /health`: the service, its database, Ray and MLflow, and its sweeps by status."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import func, select

from schemas.secrets import masked
from service.db import Status, SweepRow
from service.http.api import Health, version
from service.http.deps import ServiceDep
from service.jobs import answers

router = APIRouter(tags=["service"])


@router.get(
    "/health",
    response_model=Health,
    responses={503: {"model": Health, "description": "the Ray head does not answer"}},
)
def health(service: ServiceDep) -> Any:
    """The service answers, with its database, Ray and MLflow addresses and its sweeps;
    503 when its Ray head does not answer (every sweep would fail)."""
    with service.sessions() as s:
        rows = s.execute(select(SweepRow.status, func.count()).group_by(SweepRow.status))
        counts = {st.value: 0 for st in Status}
        counts.update({st.value: n for st, n in rows})
    ray_ok = answers(service.ray_address) if service.run_jobs else None
    body = Health(
        status="unhealthy" if ray_ok is False else "ok",
        version=version(),
        database=service.engine.dialect.name,
        ray=service.ray_address,
        ray_ok=ray_ok,
        tracking_uri=masked(service.settings.tracking),
        sweeps=counts,  # type: ignore[arg-type]
    )
    if ray_ok is False:
        return JSONResponse(body.model_dump(mode="json"), status_code=503)
    return body

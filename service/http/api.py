"""The REST API's request and response models, named by role, and the refusals each route
documents (`ERRORS`, `AUTH_ERRORS`, `NOT_FOUND`). The sweep spec itself is
`schemas.sweep.SweepSpec`, shared with the CLI; `service.cli.client` uses these same models.
Pydantic only: the client imports this module without FastAPI."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.sweep import SweepSpec

StatusName = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class Response(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorBody(Response):
    """Every refusal: the field that is wrong (dotted, as in the request) and why."""

    field: str = Field(..., description="the request's field, e.g. strategies.0.name")
    reason: str
    detail: str = Field(..., description="`field: reason`, for people")


class Health(Response):
    status: Literal["ok", "unhealthy"] = "ok"
    version: str
    database: str = Field(..., description="the service database's dialect")
    ray: str = Field(..., description="the Ray dashboard that takes the jobs")
    ray_ok: bool | None = Field(
        None,
        description="whether that dashboard answers (null: this service runs no jobs); "
        "false answers 503, as sweeps would fail",
    )
    tracking_uri: str
    sweeps: dict[StatusName, int]


class Links(Response):
    experiment: str | None = Field(None, description="the benchmark in the MLflow UI")
    parent_run: str | None = Field(None, description="the sweep's parent run in the MLflow UI")
    leaderboard: str = Field(..., description="this sweep's board in this API")
    logs: str
    page: str = Field(..., description="this sweep's page: its board, strategies and log")


class TrialCounts(Response):
    """The sweep's trials as MLflow records them."""

    planned: int
    done: int
    running: int
    failed: int
    killed: int


class BestTrial(Response):
    run_id: str
    trial_id: str
    metric: str
    value: float | None
    metrics: dict[str, float | None]
    link: str | None = Field(None, description="the run in the MLflow UI")


class SweepView(Response):
    """A sweep as the service keeps it."""

    id: str = Field(..., description="the sweep id: MLflow tag bitsweep.sweep_id")
    name: str
    status: StatusName
    benchmark: str = Field(..., description="its MLflow experiment, bitsweep/<dataset>/<model>")
    submitted_by: str
    ray_job_id: str | None
    experiment_id: str | None
    parent_run_id: str | None
    cancel_requested: bool
    cancelled_by: str | None = Field(None, description="the token name that cancelled it")
    error: str | None
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    links: Links


class SweepDetail(SweepView):
    """A sweep with its progress: trial counts and the best trial so far per strategy."""

    spec: SweepSpec
    trials: TrialCounts
    best: dict[str, BestTrial]


class SweepPage(Response):
    items: list[SweepView]
    total: int
    offset: int
    limit: int


class BoardView(Response):
    """The leaderboard of one benchmark, in one scope (a sweep, or every sweep of it)."""

    benchmark: str
    dataset: str
    model: str
    experiment_id: str
    metric: str
    mode: str
    scope: Literal["benchmark", "sweep"]
    sweep_id: str | None
    sweeps: list[str]
    title: str
    rows: list[dict[str, Any]]


class Leaderboard(Response):
    boards: list[BoardView]


class StrategyView(BaseModel):
    """A registered strategy: its paper, params (with bounds) and search ranges, as numbers."""

    model_config = ConfigDict(extra="allow")

    name: str
    paper: str
    summary: str
    params: list[dict[str, Any]]
    recipe: dict[str, Any]


ERRORS: dict[int | str, dict[str, Any]] = {
    422: {"model": ErrorBody, "description": "a field is invalid"},
}
AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "no valid bearer token"},
    413: {"model": ErrorBody, "description": "the request body is too large"},
}
# What a read may be refused for: with BITSWEEP_READS_NEED_TOKEN, a read without a valid token.
READ_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "no valid bearer token (BITSWEEP_READS_NEED_TOKEN)"},
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "no such sweep"}
}


def json_error(description: str) -> dict[str, Any]:
    """A refusal documented as an `ErrorBody` in JSON, for a route whose own answer is not."""
    schema = {"$ref": "#/components/schemas/ErrorBody"}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def version() -> str:
    """The API's version: the installed bitsweep's ("0" from a source tree not installed)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("bitsweep")
    except PackageNotFoundError:
        return "0"


__all__ = [
    "AUTH_ERRORS",
    "ERRORS",
    "NOT_FOUND",
    "READ_ERRORS",
    "BestTrial",
    "BoardView",
    "ErrorBody",
    "Health",
    "Leaderboard",
    "Links",
    "StatusName",
    "StrategyView",
    "SweepDetail",
    "SweepPage",
    "SweepView",
    "TrialCounts",
    "json_error",
    "version",
]

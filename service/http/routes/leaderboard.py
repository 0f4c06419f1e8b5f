"""`/leaderboard`: the boards MLflow holds, and a benchmark's Pareto plot."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi.responses import Response

from schemas.errors import FieldError
from schemas.names import TRIAL_METRICS
from service.core import NotFound
from service.http.api import ERRORS, READ_ERRORS, BoardView, ErrorBody, Leaderboard
from service.http.deps import SWEEP_ID, Reader, ServiceDep

# The most leaderboard rows one read may ask for, for anyone who reaches the port: 1,000 rows
# of a 10,000-run store read in about 0.3 s (10,000: 3 s).
MAX_READ_ROWS = 1000
NAME = r"^[A-Za-z0-9][A-Za-z0-9_.:/+-]{0,499}$"
Metric = Literal[TRIAL_METRICS]  # type: ignore[valid-type]

router = APIRouter(tags=["leaderboard"], dependencies=[Reader], responses=READ_ERRORS)


@router.get(
    "/leaderboard",
    response_model=Leaderboard,
    responses={
        **ERRORS,
        404: {"model": ErrorBody, "description": "no such benchmark or sweep"},
    },
)
def leaderboard(
    service: ServiceDep,
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


@router.get(
    "/leaderboard/pareto.png",
    response_class=Response,
    responses={
        **ERRORS,
        404: {"model": ErrorBody, "description": "no such benchmark or sweep"},
        200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}},
    },
)
def pareto(
    service: ServiceDep,
    dataset: Annotated[str, Query(pattern=NAME, max_length=500)],
    model: Annotated[str, Query(pattern=NAME, max_length=500)],
    sweep: Annotated[str | None, Query(pattern=SWEEP_ID, max_length=128)] = None,
) -> Response:
    """Test accuracy against weight memory of a benchmark's trials (or one sweep's)."""
    if not service.store_exists():
        raise NotFound("dataset", f"no benchmark bitsweep/{dataset}/{model}")
    try:
        png = service.pareto_png(dataset, model, sweep)
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

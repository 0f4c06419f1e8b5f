"""`GET /strategies`: every registered strategy, as `bitsweep strategies --json` lists it."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from service.http.api import READ_ERRORS, StrategyView
from service.http.deps import Reader

router = APIRouter(tags=["strategies"], dependencies=[Reader], responses=READ_ERRORS)


@router.get("/strategies", response_model=list[StrategyView])
def list_strategies() -> list[dict[str, Any]]:
    """Every registered strategy: paper, params with bounds, search ranges (numbers)."""
    import strategies  # the registry loads torch and the plugins: when first asked

    return [cls.describe() for cls in strategies.list_strategies().values()]

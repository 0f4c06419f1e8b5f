"""The leaderboard page at `/`: one table per benchmark (best trial per strategy, sortable by
any column through links, no JavaScript), its Pareto plot, and the sweeps with their status."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import urlencode

from fastapi import FastAPI, Query, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from sqlalchemy import select

from service.db import SweepRow

if TYPE_CHECKING:
    from service.core import Service

TEMPLATES = Path(__file__).with_name("templates")
# (row key, header): the page's columns.
COLUMNS = (
    ("rank", "#"),
    ("strategy", "strategy"),
    ("test_accuracy", "test accuracy"),
    ("weight_bytes", "weight bytes"),
    ("compression_ratio", "compression"),
    ("unique_weights", "unique weights"),
    ("weight_entropy_bits", "entropy (bits)"),
    ("sparsity", "sparsity"),
    ("epochs", "epochs"),
    ("sweep_id", "sweep"),
)
SortKey = Literal[
    "rank",
    "strategy",
    "test_accuracy",
    "weight_bytes",
    "compression_ratio",
    "unique_weights",
    "weight_entropy_bits",
    "sparsity",
    "epochs",
    "sweep_id",
]


def cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.4g}" if abs(value) < 1e3 else f"{value:,.0f}"
    return str(value)


def sort_rows(rows: list[dict[str, Any]], key: str, order: str) -> list[dict[str, Any]]:
    """Rows by `key`; a row without it comes last in either order."""
    have = [r for r in rows if r.get(key) is not None]
    lack = [r for r in rows if r.get(key) is None]
    have.sort(key=lambda r: r[key], reverse=order == "desc")
    return have + lack


def add_page(app: FastAPI, service: Service) -> None:
    templates = Jinja2Templates(directory=str(TEMPLATES))
    templates.env.filters["cell"] = cell

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page(
        request: Request,
        sort: Annotated[SortKey, Query()] = "rank",
        order: Annotated[Literal["asc", "desc"], Query()] = "asc",
    ) -> HTMLResponse:
        boards = service.read_boards(
            dataset=None,
            model=None,
            metric="test_accuracy",
            mode="max",
            every_trial=False,
            limit=100,
            sweep_id=None,
        )
        with service.sessions() as s:
            sweeps = s.scalars(select(SweepRow).order_by(SweepRow.seq.desc()).limit(50)).all()

        def sort_link(key: str) -> str:
            flip = "desc" if sort == key and order == "asc" else "asc"
            return "?" + urlencode({"sort": key, "order": flip})

        tables = []
        for b in boards:
            rows = sort_rows(b.to_json(), sort, order)
            for r in rows:
                r["link"] = service.run_link(b.experiment_id, r["run_id"])
            tables.append(
                {
                    "board": b,
                    "rows": rows,
                    "pareto": "/leaderboard/pareto.png?"
                    + urlencode({"dataset": b.dataset, "model": b.model}),
                    "experiment_link": (
                        f"{service.settings.mlflow_ui_url}/#/experiments/{b.experiment_id}"
                        if service.settings.mlflow_ui_url
                        else None
                    ),
                }
            )
        return templates.TemplateResponse(
            request,
            "index.html",
            {
                "tables": tables,
                "columns": COLUMNS,
                "sort": sort,
                "order": order,
                "sort_link": sort_link,
                "sweeps": [service.view(r) for r in sweeps],
                "mlflow_ui": service.settings.mlflow_ui_url,
            },
        )

"""The leaderboard page at `/`: per benchmark the board of each sweep (sortable by any column
through links, no JavaScript), its Pareto plot, and the sweeps with their status."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from sqlalchemy import select

from service.db import SweepRow
from service.http.deps import Reader, ServiceDep
from service.http.views import sweep_view

TEMPLATES = Path(__file__).parent.with_name("templates")  # service/templates
# (row key, header): the page's columns; each table is one sweep's board.
COLUMNS = (
    ("rank", "#"),
    ("strategy", "strategy"),
    ("test_accuracy", "test accuracy (mean ± std)"),
    ("test_accuracy_ci_low", "95% CI"),
    ("seeds", "seeds"),
    ("p_vs_best", "vs #1 (Welch p)"),
    ("gap_to_float", "gap to float [95% CI]"),
    ("val_accuracy", "val accuracy (selected on)"),
    ("weight_bytes", "weight bytes"),
    ("compression_ratio", "compression"),
    ("unique_weights", "unique weights"),
    ("weight_entropy_bits", "entropy (bits)"),
    ("sparsity", "sparsity"),
    ("search_trials", "search: trials / epochs / s"),
    ("status", "status"),
)
SortKey = Literal[
    "rank",
    "strategy",
    "test_accuracy",
    "test_accuracy_ci_low",
    "seeds",
    "p_vs_best",
    "gap_to_float",
    "val_accuracy",
    "weight_bytes",
    "compression_ratio",
    "unique_weights",
    "weight_entropy_bits",
    "sparsity",
    "search_trials",
    "status",
]


def show(row: dict[str, Any], key: str) -> str:
    """A board row's cell on the page: the board's own texts where a number needs its spread."""
    from runners.board import render

    texts = {
        "test_accuracy": render.accuracy_text,
        "test_accuracy_ci_low": render.interval_text,
        "seeds": render.seeds_text,
        "p_vs_best": render.versus_text,
        "gap_to_float": render.gap_text,
        "search_trials": render.budget_text,
    }
    if key in texts:
        return texts[key](row)
    if key in ("weight_bytes", "unique_weights", "weight_entropy_bits", "sparsity"):
        return render.cost_text(row, key)
    return cell(row.get(key))


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


templates = Jinja2Templates(directory=str(TEMPLATES))
templates.env.filters["cell"] = cell
templates.env.globals["show"] = show

router = APIRouter(dependencies=[Reader])


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def page(
    request: Request,
    service: ServiceDep,
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

    from runners.board import sweep_title

    tables = []
    for b in boards:
        sweeps_of = []
        for info, rows in b.by_sweep():
            rows = sort_rows(rows, sort, order)
            for r in rows:
                r["link"] = service.run_link(b.experiment_id, r["run_id"])
            sweeps_of.append({"title": sweep_title(info, info.sweep_id, info.epochs), "rows": rows})
        tables.append(
            {
                "board": b,
                "sweeps": sweeps_of,
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
            "sweeps": [sweep_view(service, r) for r in sweeps],
            "mlflow_ui": service.settings.mlflow_ui_url,
        },
    )

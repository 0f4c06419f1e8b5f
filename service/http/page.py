"""The pages for people: at `/` per benchmark the board of each sweep (sortable by any column
through links, no JavaScript), the strategies on it, its Pareto plot, and the sweeps with their
status; at `/board/{id}` one sweep's page (its board, strategies, plot and the end of its log).
A refusal is a page too."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Literal, get_args
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from sqlalchemy import select

from schemas.names import SWEEP_ID
from service.core import NotFound, Service
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
SORT_KEYS = get_args(SortKey)
ORDERS = ("asc", "desc")
LOG_LINES = 200  # the end of a sweep's log its page shows


def error_page(request: Request, status: int, field: str, reason: str) -> HTMLResponse:
    """A refusal as a page (a person's browser shows it), with the API's field and reason."""
    context = {"status": status, "field": field, "reason": reason}
    return templates.TemplateResponse(request, "error.html", context, status_code=status)


def strategy_notes(names: list[str]) -> list[dict[str, str]]:
    """What each strategy of a board is: its paper, its summary, how faithful it is, and its
    docs page; a strategy no longer registered says so."""
    from strategies import get_strategy

    notes = []
    for name in sorted(set(names)):
        try:
            cls = get_strategy(name)
        except KeyError:
            notes.append({"name": name, "paper": "", "summary": "not registered in this service"})
            continue
        notes.append(
            {
                "name": name,
                "paper": cls.paper,
                "summary": cls.summary,
                "fidelity": cls.fidelity,
                "doc": f"docs/strategies/{name}.md",
            }
        )
    return notes


def board_tables(
    service: Service, board: Any, sort: str, order: str, only: str | None = None
) -> list[dict[str, Any]]:
    """The board of each sweep of `board` (or of sweep `only`) as the page shows it."""
    from runners.board import sweep_title

    out = []
    for info, rows in board.by_sweep():
        if only is not None and info.sweep_id != only:
            continue
        rows = sort_rows(rows, sort, order)
        for r in rows:
            r["link"] = service.run_link(board.experiment_id, r["run_id"])
        out.append(
            {
                "title": sweep_title(info, info.sweep_id, info.epochs),
                "sweep_id": info.sweep_id,
                "rows": rows,
            }
        )
    return out


def _boards(service: Service, sweep_id: str | None) -> list[Any]:
    """The boards a page shows: by test accuracy, each sweep's selected configs (of `sweep_id`
    alone, when given)."""
    return service.read_boards(
        dataset=None,
        model=None,
        metric="test_accuracy",
        mode="max",
        every_trial=False,
        limit=100,
        sweep_id=sweep_id,
    )


def _sorting(request: Request) -> tuple[str, str] | HTMLResponse:
    sort = request.query_params.get("sort", "rank")
    order = request.query_params.get("order", "asc")
    if sort not in SORT_KEYS:
        return error_page(request, 422, "sort", f"must be one of {', '.join(SORT_KEYS)}")
    if order not in ORDERS:
        return error_page(request, 422, "order", "must be asc or desc")
    return sort, order


def _sort_link(sort: str, order: str) -> Any:
    def link(key: str) -> str:
        flip = "desc" if sort == key and order == "asc" else "asc"
        return "?" + urlencode({"sort": key, "order": flip})

    return link


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def page(request: Request, service: ServiceDep) -> HTMLResponse:
    """Every benchmark: the board of each of its sweeps, the strategies on it, its Pareto plot;
    then the sweeps with their status."""
    sorting = _sorting(request)
    if isinstance(sorting, HTMLResponse):
        return sorting
    sort, order = sorting
    boards = _boards(service, None)
    with service.sessions() as s:
        sweeps = s.scalars(select(SweepRow).order_by(SweepRow.seq.desc()).limit(50)).all()
    tables = [
        {
            "board": b,
            "sweeps": board_tables(service, b, sort, order),
            "strategies": strategy_notes([r.strategy for r in b.rows]),
            "pareto": "/leaderboard/pareto.png?"
            + urlencode({"dataset": b.dataset, "model": b.model}),
            "experiment_link": (
                f"{service.settings.mlflow_ui_url}/#/experiments/{b.experiment_id}"
                if service.settings.mlflow_ui_url
                else None
            ),
        }
        for b in boards
    ]
    return templates.TemplateResponse(
        request,
        "index.html",
        {
            "tables": tables,
            "columns": COLUMNS,
            "sort": sort,
            "order": order,
            "sort_link": _sort_link(sort, order),
            "sweeps": [sweep_view(service, r) for r in sweeps],
            "mlflow_ui": service.settings.mlflow_ui_url,
        },
    )


@router.get("/board/{sweep_id}", response_class=HTMLResponse, include_in_schema=False)
def sweep_page(request: Request, service: ServiceDep, sweep_id: str) -> HTMLResponse:
    """One sweep: its status (and why it failed), its board with the strategies on it and its
    Pareto plot once it has written one, and the end of its log."""
    sorting = _sorting(request)
    if isinstance(sorting, HTMLResponse):
        return sorting
    sort, order = sorting
    if not re.fullmatch(SWEEP_ID, sweep_id):
        return error_page(request, 422, "sweep_id", f"{sweep_id!r} is not a sweep id")
    with service.sessions() as s:
        row = s.get(SweepRow, sweep_id)
    if row is None:
        return error_page(request, 404, "sweep_id", f"no sweep {sweep_id} in this service")
    tables: list[dict[str, Any]] = []
    notes: list[dict[str, str]] = []
    pareto = None
    try:
        boards = _boards(service, sweep_id)
    except NotFound:
        boards = []  # it has written nothing yet (queued, or failed before its first trial)
    for b in boards:
        tables += board_tables(service, b, sort, order, only=sweep_id)
        notes += strategy_notes([r.strategy for r in b.rows])
        if b.rows:
            query = {"dataset": b.dataset, "model": b.model, "sweep": sweep_id}
            pareto = "/leaderboard/pareto.png?" + urlencode(query)
    return templates.TemplateResponse(
        request,
        "sweep.html",
        {
            "sweep": sweep_view(service, row),
            "tables": tables,
            "strategies": notes,
            "pareto": pareto,
            "columns": COLUMNS,
            "sort": sort,
            "order": order,
            "sort_link": _sort_link(sort, order),
            "log": service.job_log(row, LOG_LINES),
            "log_lines": LOG_LINES,
        },
    )

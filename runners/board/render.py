"""A board as people read it: markdown (the sweep's leaderboard.md, docs), short cells for the
CLI's table and the page, CSV, trial tables, and the Pareto plot of confirmed means with their
intervals."""

from __future__ import annotations

import csv
import io
import json
import math
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from runners.board.board import Row
from runners.board.rows import several_sweeps
from runners.board.stats import ALPHA, CONFIDENCE

NOTE = (
    "Each config was selected on {selection}; test accuracy is the mean over the fresh seeds "
    "of its confirmation (never the search trial's own), ± the sample standard deviation, with "
    "a {conf:.0%} Student-t interval. 'tied' marks a row Welch's t-test cannot tell apart from "
    "rank 1 (p >= {alpha}). The gap to float is the difference of means with Welch's "
    "{conf:.0%} interval. Search: trials / trial-epochs / training seconds the strategy's "
    "search spent."
)
UNCONFIRMED = (
    "Unconfirmed rows are one seed, the search trial's own: no spread, no interval, no test."
)


def number(v: Any, digits: int = 4) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        if v.is_integer() and abs(v) < 1e15:
            return str(int(v))
        if abs(v) >= 10**digits:  # a mean of counts or bytes: no exponent
            return f"{v:.0f}"
        return f"{v:.{digits}g}"
    return str(v)


def accuracy_text(d: dict[str, Any]) -> str:
    """`0.9123 ± 0.0081` (or the one value of an unconfirmed row)."""
    mean, std = d.get("test_accuracy"), d.get("test_accuracy_std")
    if mean is None:
        return "pending" if d.get("status") == "confirming" else ""
    return f"{mean:.4f}" + ("" if std is None else f" ± {std:.4f}")


def interval_text(d: dict[str, Any], low: str = "test_accuracy_ci_low", high: str = "") -> str:
    high = high or low.replace("_low", "_high")
    lo, hi = d.get(low), d.get(high)
    return "" if lo is None or hi is None else f"[{lo:.4f}, {hi:.4f}]"


def versus_text(d: dict[str, Any]) -> str:
    """`best`, `tied (p=0.31)`, `below (p=0.002)` or empty (no test possible)."""
    if d.get("rank") == 1 and d.get("test_accuracy") is not None:
        return "best"
    p = d.get("p_vs_best")
    if p is None:
        return ""
    return f"{'tied' if d.get('tied_with_best') else 'apart'} (p={p:.2g})"


def gap_text(d: dict[str, Any]) -> str:
    g = d.get("gap_to_float")
    if g is None:
        return ""
    ci = interval_text(d, "gap_to_float_ci_low")
    return f"{g:+.4f}" + (f" {ci}" if ci else "")


def cost_text(d: dict[str, Any], key: str) -> str:
    v, std = d.get(key), d.get(f"{key}_std")
    if v is None:
        return ""
    return number(v) + ("" if not std else f" ± {number(std, 2)}")


def budget_text(d: dict[str, Any]) -> str:
    trials, epochs = d.get("search_trials", 0), d.get("search_epochs", 0)
    return f"{trials} / {epochs} / {d.get('search_seconds', 0.0):.0f}"


def seeds_text(d: dict[str, Any]) -> str:
    n = d.get("seeds") or 0
    return {"confirmed": str(n), "confirming": f"{n}, more running"}.get(
        d.get("status", ""), f"{n} (unconfirmed)"
    )


# (header, cell) of a board's markdown table.
MARKDOWN_COLUMNS = (
    ("#", lambda d: str(d["rank"])),
    ("strategy", lambda d: d["strategy"]),
    ("test accuracy", accuracy_text),
    (f"{CONFIDENCE:.0%} CI", interval_text),
    ("seeds", seeds_text),
    ("vs #1", versus_text),
    ("gap to float", gap_text),
    ("val accuracy", lambda d: number(d.get("val_accuracy"))),
    ("weight bytes", lambda d: cost_text(d, "weight_bytes")),
    ("compression", lambda d: cost_text(d, "compression_ratio")),
    ("unique weights", lambda d: cost_text(d, "unique_weights")),
    ("entropy (bits)", lambda d: cost_text(d, "weight_entropy_bits")),
    ("sparsity", lambda d: cost_text(d, "sparsity")),
    ("search", budget_text),
    ("run", lambda d: d["run_id"]),
)


def rows_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The markdown table of one sweep's board rows, and the note that says how it is measured."""
    if not rows:
        return "(no finished trials)\n"
    lines = [
        "| " + " | ".join(h for h, _ in MARKDOWN_COLUMNS) + " |",
        "|" + "---|" * len(MARKDOWN_COLUMNS),
    ]
    for d in rows:
        lines.append("| " + " | ".join(cell(d) for _, cell in MARKDOWN_COLUMNS) + " |")
    note = NOTE.format(selection=rows[0].get("selection", ""), conf=CONFIDENCE, alpha=ALPHA)
    if any(d.get("status") == "unconfirmed" for d in rows):
        note += " " + UNCONFIRMED
    return "\n".join(lines) + "\n\n" + note + "\n"


def csv_value(v: Any) -> Any:
    """A CSV cell: lists and dicts as JSON."""
    return json.dumps(v, sort_keys=True) if isinstance(v, list | dict) else v


def board_plot(rows: Sequence[Row], path: Path, title: str) -> None:
    """Test accuracy against weight memory (log scale) of a board's rows: confirmed means with
    their 95% intervals as error bars (unconfirmed rows hollow, without bars), one colour per
    strategy, and the front of the rows chosen on validation accuracy and memory, drawn
    through their test means."""
    # The Figure API, not pyplot: pyplot's figure registry is global state, and plots drawn at
    # once in the service's threads broke each other. Labels come from the store's tags: `$`
    # is escaped so that no label is parsed as math.
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, NullFormatter

    from runners.board.selection import select

    pts = [r for r in rows if r.test is not None and "weight_bytes" in r.costs]
    fig = Figure(figsize=(7, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    names = sorted({r.strategy for r in pts})
    cmap = matplotlib.colormaps["tab10"]
    for i, name in enumerate(names):
        colour = cmap(i % 10)
        for j, r in enumerate(p for p in pts if p.strategy == name):
            assert r.test is not None
            x, y = r.costs["weight_bytes"].mean, r.test.mean
            confirmed = r.status != "unconfirmed" and r.test.low is not None
            yerr = (
                [[y - r.test.low], [r.test.high - y]]  # type: ignore[operator]
                if confirmed
                else None
            )
            ax.errorbar(
                [x],
                [y],
                yerr=yerr,
                fmt="o",
                color=colour,
                mfc=colour if confirmed else "none",
                capsize=3,
                label=plain(name) if j == 0 else None,
            )
    chosen = select(
        [
            (i, {"val": r.val_accuracy, "bytes": r.costs["weight_bytes"].mean})
            for i, r in enumerate(pts)
            if r.val_accuracy is not None
        ],
        [("val", "max"), ("bytes", "min")],
        cap=len(pts) or 1,
    )
    front = sorted((pts[i] for i in chosen), key=lambda r: r.costs["weight_bytes"].mean)
    if len(front) > 1:
        ax.plot(
            [r.costs["weight_bytes"].mean for r in front],
            [r.test.mean for r in front if r.test is not None],
            color="black",
            linewidth=1,
            linestyle="--",
            label="front (chosen on validation)",
        )
    ax.set_xscale("log")
    # Tick labels as plain numbers: the log axis's default ones are math text, whose parser
    # is shared by every thread.
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("weight memory (bytes, log scale)")
    ax.set_ylabel(f"test accuracy (mean, {CONFIDENCE:.0%} CI)")
    ax.set_title(plain(title))
    ax.grid(True, which="both", alpha=0.3)
    if pts:
        ax.legend(fontsize=8, loc="lower right")
    with DRAWING:  # the text layout of a figure is drawn one at a time in a process
        fig.tight_layout()
        fig.savefig(path)


DRAWING = threading.Lock()


def plain(text: str) -> str:
    """`text` as a plot shows it literally: `$` escaped, so that nothing is read as math."""
    return text.replace("$", r"\$")


__all__ = [
    "MARKDOWN_COLUMNS",
    "accuracy_text",
    "board_plot",
    "csv_value",
    "gap_text",
    "interval_text",
    "number",
    "plain",
    "rows_markdown",
    "seeds_text",
    "versus_text",
]


def rows_to_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return buf.getvalue()


MARKDOWN_IDS = ("trial_id", "run_id")


def rows_to_markdown(rows: list[dict[str, Any]], *, board: bool = False) -> str:
    """A markdown table of flat rows: every column, or (`board`) a leaderboard's: rank and
    strategy, the sweep and epochs when the rows come from several sweeps, the metrics, then
    the trial and run ids."""
    if not rows:
        return "(no finished trials)\n"
    cols = list(rows[0])
    if board:
        ids = ["rank", "strategy", "run_name", "sweep_id", "epochs", *MARKDOWN_IDS]
        cols = [
            "rank",
            "strategy",
            *(["sweep_id", "epochs"] if several_sweeps(rows) else []),
            *(c for c in cols if c not in ids),
            *MARKDOWN_IDS,
        ]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(format_cell(r.get(c)) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def format_cell(v: Any) -> str:
    """A table cell: integers as integers (also when MLflow holds them as floats), other
    numbers to 4 significant digits."""
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
        return str(int(v))
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)

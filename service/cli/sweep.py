"""`bitsweep sweep` and `bitsweep leaderboard`: run a benchmark sweep, read its leaderboard."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.segment import Segment, Segments
from rich.table import Table

from schemas.secrets import masked
from service.cli.text import plural
from service.errors import InputRefused

# The commands import what they run inside their functions, to keep `bitsweep --help` fast.

out = Console()
err = Console(stderr=True)


def tracking_store(given: str | None, *, must_exist: bool = True) -> str:
    """The MLflow store a read command uses: `given`, or the embedded default, which must
    already exist. Refuses, naming `tracking_uri`, a store that cannot be read: a SQLite file
    that does not exist (a read never creates a store, whatever `must_exist` says), a server or
    database that cannot be reached. Imports neither Ray nor torch."""
    from runners.board import check_read_store, default_store

    path, uri = default_store()
    if given is None and not path.exists():
        raise InputRefused("tracking_uri", f"no leaderboard yet: {path} does not exist")
    uri = given or uri
    check_read_store(uri)
    return uri


def load_spec(path: Path) -> Any:
    """A sweep spec from a YAML or JSON file, validated. Raises InputRefused or ValidationError."""
    from schemas.sweep import SweepSpec

    if not path.is_file():
        raise InputRefused("spec", f"{path} is not a file")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise InputRefused("spec", f"cannot read {path}: {e}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise InputRefused("spec", f"{path} is not valid YAML or JSON{where}") from None
    if not isinstance(raw, dict):
        raise InputRefused("spec", f"{path} must hold a mapping of spec fields")
    return SweepSpec.model_validate(raw)


def progress_table(progress: Any) -> Table:
    table = Table(
        title=f"sweep progress (best {progress.objective}, {progress.mode})",
        caption=None if progress.wait is None else f"trials wait {progress.wait}",
    )
    for col in ("strategy", "trials", "waiting", "running", "done", "failed", "best"):
        table.add_column(col, justify="left" if col == "strategy" else "right")
    for name, p in progress.strategies.items():
        table.add_row(
            name,
            str(p.trials),
            str(p.waiting),
            str(p.running),
            str(p.done),
            str(p.failed),
            "" if p.best is None else f"{p.best:.4g}",
        )
    return table


def sweep(
    spec_path: Annotated[Path, typer.Argument(metavar="SPEC", help="sweep spec, YAML or JSON")],
    resume: Annotated[
        bool, typer.Option("--resume", help="continue the newest unfinished sweep of this spec")
    ] = False,
    sweep_id: Annotated[
        str | None,
        typer.Option(help="the sweep to resume (with --resume), or the id of the new sweep"),
    ] = None,
    ray_address: Annotated[
        str | None, typer.Option(envvar="RAY_ADDRESS", help="join this Ray cluster")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="print one summary object at the end")
    ] = False,
) -> None:
    """Sweep every strategy of SPEC: Ray Tune trials, Optuna search, MLflow leaderboard."""
    from runners.board import SWEEP_ID_PATTERN
    from runners.sweep.run import plan_sweep, run_sweep
    from runners.sweep.state import state_path

    spec = load_spec(spec_path)
    if sweep_id is not None and not SWEEP_ID_PATTERN.fullmatch(sweep_id):
        raise InputRefused("--sweep-id", f"{sweep_id!r} is not a sweep id")
    plan = plan_sweep(spec)
    if resume:
        from runners.sweep.run import find_resumable

        find_resumable(plan.home, spec, sweep_id)
    elif sweep_id is not None and state_path(plan.home, sweep_id).exists():
        raise InputRefused("--sweep-id", f"sweep {sweep_id} exists; continue it with --resume")
    live = Live(console=err, auto_refresh=False, transient=False) if err.is_terminal else None

    def on_progress(progress: Any) -> None:
        if live is not None:
            live.update(progress_table(progress), refresh=True)

    def on_start(sid: str, parent: str) -> None:
        err.print(f"sweep [bold]{sid}[/] → MLflow experiment [bold]{spec.benchmark}[/]")
        err.print(f"tracking: {masked(plan.tracking_uri)}")

    def on_event(event: Any) -> None:
        # Without a terminal there is no live table: one plain line per trial event instead.
        stamp = time.strftime("%H:%M:%S")
        err.print(f"{stamp} {event.line()}", markup=False, highlight=False, soft_wrap=True)

    from runners.sweep.run import SweepInterrupted, board_view_url

    if live is not None:
        live.start()
    try:
        summary = run_sweep(
            plan,
            ray_address=ray_address,
            resume=resume,
            sweep_id=sweep_id,
            on_progress=on_progress,
            on_start=on_start,
            on_event=None if live is not None else on_event,
        )
    except SweepInterrupted as e:
        if live is not None:
            live.stop()
            live = None
        err.print(f"error: {e}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(e.exit_code) from None
    finally:
        if live is not None:
            live.stop()
    if as_json:
        sys.stdout.write(json.dumps(summary.to_json()) + "\n")
        return
    show_board(
        summary.leaderboard,
        f"leaderboard of sweep {summary.sweep_id} on {summary.experiment}: {summary.selection}",
    )
    out.print(f"{plural(summary.completed, 'trial')} completed, {summary.failed} failed")
    for f in summary.failures:
        out.print(
            f"failed: {f['strategy']} trial {f['trial_id']}: {escape(f['error'])}",
            soft_wrap=True,
            highlight=False,
        )
    out.print(f"Pareto plot: {summary.pareto_plot}", soft_wrap=True)
    out.print(
        f"leaderboard.md and trials.csv beside it, in parent run {summary.parent_run_id}",
        soft_wrap=True,
    )
    out.print(f"browse: mlflow ui --backend-store-uri {masked(plan.tracking_uri)}", soft_wrap=True)
    if summary.experiment_id:
        out.print(
            f"the board as an MLflow view: {board_view_url(summary.experiment_id)}",
            soft_wrap=True,
        )


# The board's columns of text with spaces, which wrap onto a second line where the table would
# be wider than the screen.
WRAPPING_BOARD_COLUMNS = ("95% CI", "vs #1", "gap to float", "search")
# The columns a screen too narrow for the whole board leaves out, in this order.
OPTIONAL_BOARD_COLUMNS = ("search", "val", "95% CI", "gap to float")


# (header, cell of a board row): the board's columns.
def _board_columns() -> list[tuple[str, Any]]:
    from runners.board.render import (
        accuracy_text,
        gap_text,
        interval_text,
        number,
        seeds_text,
        versus_text,
    )

    return [
        ("#", lambda d: str(d["rank"])),
        ("strategy", lambda d: d["strategy"]),
        ("test accuracy", accuracy_text),
        ("95% CI", interval_text),
        ("seeds", seeds_text),
        ("vs #1", versus_text),
        ("gap to float", gap_text),
        ("val", lambda d: number(d.get("val_accuracy"))),
        ("bytes", lambda d: number(d.get("weight_bytes"))),
        ("search", lambda d: f"{d.get('search_trials', 0)} tr / {d.get('search_epochs', 0)} ep"),
        ("trial", lambda d: d.get("short_trial_id", "")),
    ]


# The characters of a trial id a table shows: Tune's trial ids are 8 characters, and
# `bitsweep rerun` takes any unambiguous prefix of one.
SHORT_ID = 8


def with_short_ids(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows with `short_trial_id`: the first `SHORT_ID` characters of each trial id."""
    return [{**r, "short_trial_id": str(r.get("trial_id") or "")[:SHORT_ID]} for r in rows]


def _least_width(header: str, cells: list[str], wraps: bool, folds: bool) -> int:
    """A column's least width: a few characters where it folds (an id), its longest word where
    it wraps, its widest cell where it does neither (a number is never cut)."""
    texts = [header, *cells]
    if folds:
        return 8
    if wraps:
        return max((len(w) for text in texts for w in text.split()), default=1)
    return max(14 if header == "strategy" else 1, *(len(text) for text in texts))


def _whole_table(
    title: str,
    columns: list[tuple[str, list[str]]],
    *,
    left: tuple[str, ...],
    wrapping: tuple[str, ...] = (),
    folding: tuple[str, ...] = (),
) -> tuple[Table, int]:
    """A table of (header, cells) columns, and the least width it takes. A column of
    `wrapping` wraps at its spaces, one of `folding` anywhere; every other cell stays whole."""
    table = Table(title=title, title_justify="left")
    least = 1  # the right border; each column adds its padding and left border
    for header, cells in columns:
        wraps, folds = header in wrapping, header in folding
        width = _least_width(header, cells, wraps, folds)
        least += width + 3
        table.add_column(
            header,
            justify="left" if header in left else "right",
            no_wrap=not (wraps or folds),
            overflow="fold",
            min_width=width,
        )
    for row in zip(*(cells for _, cells in columns), strict=True):
        table.add_row(*row)
    return table, least


def _rendered_width(table: Table, width: int) -> int:
    """The width `table` takes when Rich lays it out for a screen of `width` columns: more
    than `width` where its cells cannot be narrowed that far (Rich narrows the columns that
    wrap evenly, then widens each back to its least width)."""
    # render(), not render_lines(): the latter crops every line to the width.
    lines = Segment.split_lines(out.render(table, out.options.update_width(width)))
    return max((Segment.get_line_length(line) for line in lines), default=0)


def _print_whole(table: Table, least: int) -> None:
    """`table` at the screen's width, or where it does not fit, laid out at `least` columns
    and printed wider than the screen rather than cut."""
    if _rendered_width(table, out.width) <= out.width:
        out.print(table, crop=False)
        return
    wide = out.options.update_width(max(out.width, least))
    out.print(Segments(list(out.render(table, wide))), crop=False, end="")


def _fitted(
    columns: list[tuple[str, list[str]]],
    optional: tuple[str, ...],
    build: Callable[[list[tuple[str, list[str]]]], tuple[Table, int]],
) -> tuple[Table, int, list[tuple[str, list[str]]], list[str]]:
    """The table `build` makes of `columns`, leaving out those of `optional` in turn while it
    is wider than the screen: (table, least width, the columns kept, the headers left out)."""
    left_out: list[str] = []
    kept = columns
    table, least = build(kept)
    for header in optional:
        if _rendered_width(table, out.width) <= out.width:
            break
        if header in {h for h, _ in kept}:
            left_out.append(header)
            kept = [c for c in kept if c[0] != header]
            table, least = build(kept)
    return table, least, kept, left_out


def _say_left_out(left_out: list[str]) -> None:
    if left_out:
        out.print(
            f"not shown at {out.width} columns: {', '.join(left_out)} (a wider window shows them)",
            soft_wrap=True,
        )


def _board_table(
    title: str, columns: list[tuple[str, list[str]]], *, tight: bool = False
) -> tuple[Table, int]:
    """The board's table; `tight`, for a screen too narrow for its essential columns, also
    wraps the test accuracy between its mean and its spread."""
    return _whole_table(
        title,
        columns,
        left=("strategy", "vs #1", "seeds", "trial"),
        wrapping=WRAPPING_BOARD_COLUMNS + (("test accuracy",) if tight else ()),
    )


def show_board(rows: list[dict[str, Any]], title: str) -> None:
    """One sweep's board as a table, and how it is measured in one line under it. On a screen
    too narrow for every column, the columns of `OPTIONAL_BOARD_COLUMNS` are left out in turn,
    and a line says which; narrower still, the table is wider than the screen rather than
    cut."""
    if not out.is_terminal:
        out.width = BOARD_WIDTH  # rich would assume 80
    shown = with_short_ids(rows)
    columns = [(header, [cell(r) for r in shown]) for header, cell in _board_columns()]
    table, least, kept, left_out = _fitted(
        columns, OPTIONAL_BOARD_COLUMNS, lambda cs: _board_table(title, cs)
    )
    if _rendered_width(table, out.width) > out.width:
        table, least = _board_table(title, kept, tight=True)
    _print_whole(table, least)
    _say_left_out(left_out)
    if any(r.get("status") == "unconfirmed" for r in rows):
        out.print(
            "unconfirmed: one seed, the search trial's own; no spread, no test", soft_wrap=True
        )
    else:
        out.print(
            "mean ± std over fresh seeds; 'tied': Welch's t-test p >= 0.05 against #1; "
            "search: trials / trial-epochs; trial: the id `bitsweep rerun` takes",
            soft_wrap=True,
        )


# (column, header): short headers so that the table fits 100 columns.
BOARD_COLUMNS = (
    ("rank", "#"),
    ("strategy", "strategy"),
    ("test_accuracy", "accuracy"),
    ("weight_bytes", "bytes"),
    ("compression_ratio", "ratio"),
    ("unique_weights", "unique"),
    ("weight_entropy_bits", "entropy"),
    ("sparsity", "sparsity"),
    ("trial_id", "trial"),
)
# The columns of a trial table a narrow screen leaves out, in this order.
OPTIONAL_ROW_COLUMNS = ("ratio", "sparsity", "entropy", "unique", "ep")
# With rows from several sweeps the table also shows each row's sweep and epochs, and is wider.
SWEEP_COLUMNS = (("sweep_id", "sweep"), ("epochs", "ep"))
# Of the table in a file or a pipe: the board's every column on one line a row (about 165).
WIDTH, SWEEPS_WIDTH, BOARD_WIDTH = 100, 130, 180


def show_rows(rows: list[dict[str, Any]], title: str) -> None:
    """A leaderboard as a table; with the sweep and epochs of each row when the rows come
    from several sweeps."""
    from runners.board import format_cell, several_sweeps

    columns = list(BOARD_COLUMNS)
    several = several_sweeps(rows)
    if several:
        columns = [*columns[:2], *SWEEP_COLUMNS, *columns[2:]]
    cells = [
        (
            header,
            [
                r["short_trial_id"] if key == "trial_id" else format_cell(r.get(key))
                for r in with_short_ids(rows)
            ],
        )
        for key, header in columns
    ]
    if not out.is_terminal:
        out.width = SWEEPS_WIDTH if several else WIDTH  # rich would assume 80
    table, least, _, left_out = _fitted(
        cells,
        OPTIONAL_ROW_COLUMNS,
        lambda cs: _whole_table(title, cs, left=("strategy", "trial", "sweep"), folding=("sweep",)),
    )
    _print_whole(table, least)
    _say_left_out(left_out)


# The query's fields, as this command's options.
OPTION_OF = {"metric": "--metric", "mode": "--mode", "limit": "--limit", "sweep_id": "--sweep-id"}


def leaderboard(
    dataset: Annotated[str | None, typer.Option(help="only this benchmark's dataset")] = None,
    model: Annotated[str | None, typer.Option(help="only this benchmark's model")] = None,
    metric: Annotated[
        str, typer.Option(help="rank by the mean of this metric (with --all: by its value)")
    ] = "test_accuracy",
    mode: Annotated[str, typer.Option(help="max or min")] = "max",
    every: Annotated[
        bool, typer.Option("--all", help="every trial (search and confirmation), not the board")
    ] = False,
    sweep_id: Annotated[
        str | None,
        typer.Option(help="the board of this sweep alone (default: every sweep of a benchmark)"),
    ] = None,
    tracking_uri: Annotated[
        str | None, typer.Option(help="MLflow store (default: under BITSWEEP_HOME)")
    ] = None,
    limit: Annotated[int, typer.Option(help="rows at most with --all")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="print the rows as JSON")] = False,
) -> None:
    """The leaderboard of each benchmark: the board of each of its sweeps (each strategy's
    config selected on validation, its test accuracy over fresh seeds with its uncertainty),
    or of one sweep with --sweep-id; or with --all its trials."""
    from runners.board import check_query, query_leaderboard
    from schemas.errors import FieldError

    try:
        check_query(metric=metric, mode=mode, limit=limit, sweep_id=sweep_id)
        boards = query_leaderboard(
            tracking_store(tracking_uri),
            dataset=dataset,
            model=model,
            metric=metric,
            mode=mode,
            every_trial=every,
            limit=limit,
            sweep_id=sweep_id,
        )
    except FieldError as e:
        raise InputRefused(OPTION_OF.get(e.field, e.field), e.reason) from None
    if as_json:
        sys.stdout.write(json.dumps({b.benchmark: b.to_json() for b in boards}) + "\n")
        return
    from runners.board import sweep_title

    for board in boards:
        if board.every_trial:
            show_rows(board.to_json(), board.title())
            continue
        if not board.sweep_infos:
            out.print(f"{board.benchmark}: no sweep", soft_wrap=True)
        for info, rows in board.by_sweep():
            show_board(rows, f"{board.benchmark}, {sweep_title(info, info.sweep_id, info.epochs)}")

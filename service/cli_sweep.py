"""`bitsweep sweep` and `bitsweep leaderboard`: run a benchmark sweep, read its leaderboard."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from service.errors import InputRefused

out = Console()
err = Console(stderr=True)


def tracking_store(given: str | None, *, must_exist: bool = False) -> str:
    """The MLflow store a read command uses: `given`, or the embedded default, which must
    already exist; `must_exist` also refuses a SQLite file that does not (a read never
    creates a store). Refuses, naming `tracking_uri`, a store that cannot be reached."""
    from runners.stores import check_store, default_uris
    from runners.sweep import data_home

    home = data_home()
    uri = given or default_uris(home)[0]
    if given is None and not (home / "mlflow.db").exists():
        raise InputRefused(
            "tracking_uri", f"no leaderboard yet: {home / 'mlflow.db'} does not exist"
        )
    if must_exist and uri.startswith("sqlite:///") and not Path(uri[10:]).is_file():
        raise InputRefused("tracking_uri", f"{uri} does not exist (a read never creates a store)")
    check_store("tracking_uri", uri, mlflow_store=True)
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
    table = Table(title=f"sweep progress (best {progress.objective}, {progress.mode})")
    for col in ("strategy", "trials", "running", "done", "failed", "best"):
        table.add_column(col, justify="left" if col == "strategy" else "right")
    for name, p in progress.strategies.items():
        table.add_row(
            name,
            str(p.trials),
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
        str | None, typer.Option(help="the sweep to resume (with --resume)")
    ] = None,
    ray_address: Annotated[
        str | None, typer.Option(envvar="RAY_ADDRESS", help="join this Ray cluster")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="print one summary object at the end")
    ] = False,
) -> None:
    """Sweep every strategy of SPEC: Ray Tune trials, Optuna search, MLflow leaderboard."""
    from runners.sweep import plan_sweep, run_sweep

    spec = load_spec(spec_path)
    if sweep_id is not None and not resume:
        raise InputRefused("--sweep-id", "only applies with --resume")
    plan = plan_sweep(spec)
    if resume:
        from runners.sweep import find_resumable

        find_resumable(plan.home, spec, sweep_id)
    live = Live(console=err, auto_refresh=False, transient=False) if err.is_terminal else None

    def on_progress(progress: Any) -> None:
        if live is not None:
            live.update(progress_table(progress), refresh=True)

    def on_start(sid: str, parent: str) -> None:
        err.print(f"sweep [bold]{sid}[/] → MLflow experiment [bold]{spec.benchmark}[/]")
        err.print(f"tracking: {plan.tracking_uri}")

    def on_event(event: Any) -> None:
        # Without a terminal there is no live table: one plain line per trial event instead.
        stamp = time.strftime("%H:%M:%S")
        err.print(f"{stamp} {event.line()}", markup=False, highlight=False, soft_wrap=True)

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
    finally:
        if live is not None:
            live.stop()
    if as_json:
        sys.stdout.write(json.dumps(summary.to_json()) + "\n")
        return
    show_rows(summary.leaderboard, f"leaderboard of {summary.experiment} (best per strategy)")
    out.print(f"{summary.completed} trials completed, {summary.failed} failed")
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
    out.print(f"browse: mlflow ui --backend-store-uri {plan.tracking_uri}", soft_wrap=True)


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


def show_rows(rows: list[dict[str, Any]], title: str) -> None:
    from runners.tracking import format_cell

    table = Table(title=title, title_justify="left")
    for key, header in BOARD_COLUMNS:
        table.add_column(
            header,
            justify="left" if key in ("strategy", "trial_id") else "right",
            no_wrap=True,
            overflow="fold" if key == "trial_id" else "ellipsis",
        )
    for r in rows:
        table.add_row(*[format_cell(r.get(key)) for key, _ in BOARD_COLUMNS])
    if not out.is_terminal:
        out.width = 100  # a file or a pipe: rich would assume 80
    out.print(table)


def leaderboard(
    dataset: Annotated[str | None, typer.Option(help="only this benchmark's dataset")] = None,
    model: Annotated[str | None, typer.Option(help="only this benchmark's model")] = None,
    metric: Annotated[str, typer.Option(help="rank by this metric")] = "test_accuracy",
    mode: Annotated[str, typer.Option(help="max or min")] = "max",
    every: Annotated[
        bool, typer.Option("--all", help="every trial, not the best per strategy")
    ] = False,
    sweep_id: Annotated[str | None, typer.Option(help="only this sweep's trials")] = None,
    tracking_uri: Annotated[
        str | None, typer.Option(help="MLflow store (default: under BITSWEEP_HOME)")
    ] = None,
    limit: Annotated[int, typer.Option(help="rows at most with --all")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="print the rows as JSON")] = False,
) -> None:
    """The leaderboard of each benchmark: its best trial per strategy, or every trial."""
    from mlflow.tracking import MlflowClient

    from runners.tracking import leaderboard_rows, leaderboard_runs, q
    from schemas.sweep import OBJECTIVE_METRICS

    if metric not in OBJECTIVE_METRICS:
        raise InputRefused("--metric", f"must be one of {', '.join(OBJECTIVE_METRICS)}")
    if mode not in ("max", "min"):
        raise InputRefused("--mode", "must be max or min")
    if limit < 1:
        raise InputRefused("--limit", "must be at least 1")
    uri = tracking_store(tracking_uri)
    client = MlflowClient(uri)
    name = f"bitsweep/{dataset or '%'}/{model or '%'}"
    exps = client.search_experiments(filter_string=f"name LIKE {q(name)}", max_results=1000)
    if not exps:
        raise InputRefused("dataset", f"no benchmark matches {name.replace('%', '*')} in {uri}")
    result: dict[str, list[dict[str, Any]]] = {}
    for exp in sorted(exps, key=lambda e: e.name):
        runs = leaderboard_runs(
            client,
            exp.experiment_id,
            metric=metric,
            mode=mode,
            strategies=None,
            every_trial=every,
            sweep_id=sweep_id,
            limit=limit,
        )
        result[exp.name] = leaderboard_rows(runs)
    if as_json:
        sys.stdout.write(json.dumps(result) + "\n")
        return
    for exp_name, rows in result.items():
        show_rows(
            rows, f"{exp_name} — {'every trial' if every else 'best per strategy'} by {metric}"
        )

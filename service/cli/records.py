"""`bitsweep rerun` and `bitsweep remove`: train a leaderboard row again; delete a sweep."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer
from rich.console import Console

from schemas.home import Home
from service.cli.sweep import tracking_store
from service.cli.text import plural
from service.errors import InputRefused

# The commands import what they run inside their functions, to keep `bitsweep --help` fast.

out = Console()
err = Console(stderr=True)


def rerun(
    run_id: Annotated[
        str,
        typer.Argument(
            metavar="ID",
            help="a finished trial: its trial id as the boards show it (or 4 characters of it "
            "at least, unambiguous), or its MLflow run id",
        ),
    ],
    tracking_uri: Annotated[
        str | None, typer.Option(help="MLflow store (default: under BITSWEEP_HOME)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
) -> None:
    """Train a trial again from what MLflow holds and say whether its metrics came out the same.

    ID is a trial id (the `trial` column of `bitsweep leaderboard`), an unambiguous prefix of
    one, or an MLflow run id. Exits 0 when every metric but the timings is reproduced, 1 when
    one differs.
    """
    from mlflow.tracking import MlflowClient

    from runners.sweep.records import report_lines
    from runners.sweep.records import rerun as rerun_trial

    client = MlflowClient(tracking_store(tracking_uri, must_exist=True))
    report = rerun_trial(client, run_id)
    if as_json:
        sys.stdout.write(json.dumps(report.to_json()) + "\n")
    else:
        for line in report_lines(report):
            out.print(line, markup=False, highlight=False, soft_wrap=True)
    if not report.reproduced:
        raise typer.Exit(1)


def remove(
    sweep_id: Annotated[str, typer.Argument(help="the sweep to delete")],
    yes: Annotated[
        bool, typer.Option("--yes", help="delete without asking (needed without a terminal)")
    ] = False,
) -> None:
    """Delete a sweep: its MLflow runs (to MLflow's trash), Optuna studies, checkpoints, state."""
    from runners.board import SWEEP_ID_PATTERN
    from runners.sweep.records import remove_sweep
    from runners.sweep.run import SweepState, data_home
    from runners.sweep.stores import default_uris

    if not SWEEP_ID_PATTERN.fullmatch(sweep_id):
        raise InputRefused("sweep_id", f"{sweep_id!r} is not a sweep id")
    home = data_home()
    tracking, optuna_url = default_uris(home)
    storage_root = str(Home(home).ray)
    state_file = Home(home).state_file(sweep_id)
    if state_file.exists():
        state = SweepState.load(state_file)
        tracking, optuna_url = state.tracking_uri, state.optuna_url
        storage_root = state.spec.get("storage_path") or storage_root
    elif not Home(home).mlflow_db.exists():
        raise InputRefused("sweep_id", f"no sweep {sweep_id!r} under {home}")
    if not yes:
        if not can_ask():
            raise InputRefused("--yes", "no terminal to ask on: pass --yes to delete the sweep")
        if not typer.confirm(f"delete sweep {sweep_id} and everything it wrote?"):
            out.print("nothing removed", highlight=False)
            return
    removed = remove_sweep(
        sweep_id=sweep_id,
        home=home,
        tracking_uri=tracking,
        optuna_url=optuna_url,
        storage_root=storage_root,
    )
    out.print(
        f"removed sweep {sweep_id}: {plural(removed.runs, 'MLflow run')} (to MLflow's trash; "
        f"`mlflow gc` empties it), {plural(len(removed.studies), 'Optuna study', 'studies')}, "
        f"{plural(len(removed.folders), 'checkpoint folder')}",
        markup=False,
        soft_wrap=True,
    )


def can_ask() -> bool:
    """Whether a question can be answered: stdin is a terminal."""
    return sys.stdin is not None and sys.stdin.isatty()

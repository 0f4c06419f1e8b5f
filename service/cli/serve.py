"""`bitsweep serve`, `submit`, `status` and `cancel`: the service and its clients."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from service.cli.sweep import load_spec
from service.errors import InputRefused

# The commands import what they run (uvicorn, the HTTP app, httpx) inside their functions, to
# keep `bitsweep --help` fast.

out = Console()
err = Console(stderr=True)

SERVER_HELP = "the bitsweep service, e.g. http://127.0.0.1:8000"


LOOPBACK_HOSTS = ["127.0.0.1", "localhost", "::1", "[::1]"]


def serve(
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on", min=1, max=65535)] = 8000,
    env_file: Annotated[
        Path | None, typer.Option(help="settings file of BITSWEEP_* variables")
    ] = None,
) -> None:
    """Serve the REST API and the leaderboard page; sweeps run as Ray jobs."""
    import uvicorn

    from service.http.app import create_app
    from service.settings import check_bind, is_loopback, load_settings

    settings = load_settings(str(env_file) if env_file is not None else None)
    check_bind(settings, host)
    # A web page elsewhere could reach the port through DNS rebinding (its own name resolving
    # to this address): only the names set (on loopback, by default, loopback names) are
    # answered.
    hosts = settings.allowed_hosts or (LOOPBACK_HOSTS if is_loopback(host) else None)
    app = create_app(settings, trusted_hosts=hosts)
    err.print(f"bitsweep service on http://{host}:{port} (data: {settings.home})")
    if hosts is None:
        err.print(
            "no BITSWEEP_ALLOWED_HOSTS: any Host header is answered; name the service's host "
            "names there (or in the proxy in front of it)"
        )
    if not settings.tokens:
        err.print(
            "no BITSWEEP_TOKENS: anyone who can reach this port (anyone on this machine) may "
            "submit and cancel sweeps"
        )
    elif not settings.reads_need_token:
        err.print(
            "reads need no token: anyone who can reach this port may read the sweeps, their "
            "logs and the leaderboards (BITSWEEP_READS_NEED_TOKEN=true closes them)"
        )
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=30)


def _client(server: str) -> Any:
    from service.cli.client import Client

    if not server.startswith(("http://", "https://")):
        raise InputRefused("--server", f"{server!r} is not an http:// or https:// address")
    return Client(server)


def submit(
    spec_path: Annotated[Path, typer.Argument(metavar="SPEC", help="sweep spec, YAML or JSON")],
    server: Annotated[str, typer.Option(envvar="BITSWEEP_SERVER", help=SERVER_HELP)],
    as_json: Annotated[bool, typer.Option("--json", help="print the sweep as JSON")] = False,
) -> None:
    """Submit SPEC to the service (token from BITSWEEP_TOKEN); prints the sweep's id."""
    spec = load_spec(spec_path)
    with _client(server) as c:
        sweep = c.submit(spec)
    if as_json:
        sys.stdout.write(sweep.model_dump_json() + "\n")
        return
    out.print(sweep.id, highlight=False)
    err.print(f"{sweep.status}: follow it with bitsweep status {sweep.id} --server {server}")


def status(
    sweep_id: Annotated[str | None, typer.Argument(metavar="ID", help="one sweep")] = None,
    server: Annotated[str, typer.Option(envvar="BITSWEEP_SERVER", help=SERVER_HELP)] = "",
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """The service's sweeps, or one sweep with its trials and each strategy's selected config."""
    if not server:
        raise InputRefused("--server", "is required (or BITSWEEP_SERVER)")
    with _client(server) as c:
        if sweep_id is None:
            page = c.sweeps()
            if as_json:
                sys.stdout.write(page.model_dump_json() + "\n")
                return
            table = Table(title=f"sweeps ({page.total})", title_justify="left")
            for col in ("sweep", "benchmark", "status", "by", "created"):
                table.add_column(col, overflow="fold")
            for s in page.items:
                table.add_row(
                    s.id, s.benchmark, s.status, s.submitted_by, f"{s.created_at:%Y-%m-%d %H:%M}"
                )
            out.print(table)
            return
        d = c.sweep(sweep_id)
    if as_json:
        sys.stdout.write(d.model_dump_json() + "\n")
        return
    t = d.trials
    out.print(f"{d.id}: {d.status}" + (f" ({d.error})" if d.error else ""), highlight=False)
    out.print(
        f"trials: {t.done} done, {t.running} running, {t.failed} failed, {t.killed} killed "
        f"of {t.planned}",
        highlight=False,
    )
    if d.best:
        table = Table(title=f"best so far by {next(iter(d.best.values())).metric}")
        for col in ("strategy", "value", "trial", "run"):
            table.add_column(col, overflow="fold")
        for name, b in d.best.items():
            value = "" if b.value is None else f"{b.value:.4g}"
            table.add_row(name, value, b.trial_id, b.run_id)
        out.print(table)
        # Links whole, each on its own line: a table cell would cut or break them.
        for name, b in d.best.items():
            if b.link:
                out.print(f"{name}: {b.link}", markup=False, highlight=False, soft_wrap=True)
    if d.links.parent_run:
        out.print(f"MLflow: {d.links.parent_run}", markup=False, highlight=False, soft_wrap=True)


def cancel(
    sweep_id: Annotated[str, typer.Argument(metavar="ID", help="the sweep to stop")],
    server: Annotated[str, typer.Option(envvar="BITSWEEP_SERVER", help=SERVER_HELP)] = "",
    as_json: Annotated[bool, typer.Option("--json", help="print the sweep as JSON")] = False,
) -> None:
    """Cancel a sweep on the service (token from BITSWEEP_TOKEN): a queued one never runs, a
    running one's Ray job is stopped; its finished trials stay on the leaderboard."""
    from schemas.names import SWEEP_ID_ANCHORED

    if not server:
        raise InputRefused("--server", "is required (or BITSWEEP_SERVER)")
    if not re.fullmatch(SWEEP_ID_ANCHORED, sweep_id):
        raise InputRefused("ID", f"{sweep_id!r} is not a sweep id")
    with _client(server) as c:
        sweep = c.cancel(sweep_id)
    if as_json:
        sys.stdout.write(sweep.model_dump_json() + "\n")
        return
    stopping = sweep.status in ("queued", "running")
    out.print(f"{sweep.id}: {sweep.status}" + (", stopping" if stopping else ""), highlight=False)
    if stopping:
        err.print(
            f"its Ray job is stopping; follow it with bitsweep status {sweep.id} --server {server}",
            highlight=False,
            soft_wrap=True,
        )

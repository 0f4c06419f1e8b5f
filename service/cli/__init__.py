"""The `bitsweep` command line: train one trial, list strategies, print schemas; the other
commands live beside this module (`sweep`, `records`, `serve`, `queue`, `payload`), `text` holds
the words they share (`plural`), and `client` is the HTTP client of the service that
`bitsweep submit|status|cancel` use.

The commands import what they run (torch, Ray, MLflow, the service) inside their functions, so
that `bitsweep --help` stays fast; none of these imports is there to avoid an import cycle.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import sys
import textwrap
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from service.cli import payload, queue, records, serve, sweep
from service.errors import InputRefused, input_error

app = typer.Typer(
    name="bitsweep",
    help="Benchmark low-bit weight training: trials, sweeps, leaderboards.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(payload.app, name="payload")
app.add_typer(queue.app, name="queue")
app.command()(sweep.sweep)
app.command()(sweep.leaderboard)
app.command()(records.rerun)
app.command()(records.remove)
app.command()(serve.serve)
app.command()(serve.submit)
app.command()(serve.status)
app.command()(serve.cancel)
out = Console()
err = Console(stderr=True)


def refuse(field: str, reason: str) -> InputRefused:
    return InputRefused(field, reason)


def parse_param(raw: str) -> tuple[str, Any]:
    """`key=value`; the value is read as JSON (numbers, booleans, lists) or else a string."""
    key, sep, value = raw.partition("=")
    key = key.strip()
    if not sep or not key:
        raise refuse("--param", f"{raw!r} is not key=value")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def parse_params(raw: list[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for item in raw:
        k, v = parse_param(item)
        if k in params:
            raise refuse(f"params.{k}", "given twice")
        params[k] = v
    return params


@app.command()
def train(
    strategy: Annotated[str, typer.Option(help="registered strategy name")] = "full_precision",
    dataset: Annotated[
        str, typer.Option(help="digits, mnist-5k, npz:PATH, mnist:DIR, cifar10:DIR, cifar100:DIR")
    ] = "digits",
    model: Annotated[str, typer.Option(help="mlp, lenet, conv6, resnet20, wrn, ...")] = "mlp",
    epochs: Annotated[int, typer.Option(help="training epochs")] = 10,
    seed: Annotated[int, typer.Option(help="seed of every random source")] = 0,
    param: Annotated[
        list[str] | None,
        typer.Option(
            "--param",
            "-p",
            help="key=value: strategy param or training knob (lr, optimizer, batch_size, ...)",
        ),
    ] = None,
    model_option: Annotated[
        list[str] | None, typer.Option("--model-option", "-m", help="key=value option of the model")
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N")] = "auto",
    as_json: Annotated[
        bool, typer.Option("--json", help="print the result as one JSON object")
    ] = False,
    export: Annotated[
        Path | None,
        typer.Option(help="write the deployed weights here (safetensors, bit-packed)"),
    ] = None,
    unpacked: Annotated[
        bool,
        typer.Option(
            "--unpacked", help="with --export: float weights and integer codes, for inspection"
        ),
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="with --export: overwrite an existing file")
    ] = False,
) -> None:
    """Train one trial and report its accuracy and the cost of its deployed weights."""
    from schemas.trial import TrialConfig

    params = parse_params(param or [])
    options = parse_params(model_option or [])
    if export is not None and not export.parent.resolve().is_dir():
        raise refuse("export", f"directory {export.parent} does not exist")
    if export is not None and export.is_dir():
        raise refuse("export", f"{export} is a directory")
    if export is not None and export.exists() and not force:
        raise refuse("export", f"{export} exists; pass --force to overwrite it")
    config = TrialConfig(
        strategy=strategy,
        params=params,
        dataset=dataset,
        model=model,
        model_options=options,
        epochs=epochs,
        seed=seed,
        device=device,
    )
    from runners.engine.data import load_dataset
    from runners.engine.trial import resolve
    from runners.engine.trial import train as train_trial

    resolved = resolve(config)
    data = load_dataset(resolved.config.dataset, val_fraction=resolved.config.val_fraction)

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} epochs"),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    ) as bar:
        task = bar.add_task(f"{strategy} on {dataset}/{model}", total=epochs, status="")

        def on_epoch(record: Any, _save: Any) -> bool:
            bar.update(
                task,
                advance=1,
                status=f"loss {record.train_loss:.3f} val {record.val_accuracy:.3f}",
            )
            return False

        trained = train_trial(resolved, dataset=data, on_epoch=on_epoch)
    result = trained.result
    if export is not None:
        from runners.engine.export import save_trained

        save_trained(export, trained, data, packed=not unpacked)
    if as_json:
        sys.stdout.write(result.model_dump_json() + "\n")
        return
    show_result(result, export)


def show_result(result: Any, export: Path | None) -> None:
    cfg = result.config
    table = Table(title=f"{cfg.strategy} on {cfg.dataset} / {cfg.model}", show_header=False)
    table.add_column("metric", style="bold")
    table.add_column("value", justify="right")
    for key, value in result.metrics().items():
        table.add_row(key, f"{value:.6g}")
    table.add_row("best_epoch", str(result.best_epoch))
    table.add_row("device", result.environment.device)
    out.print(table)
    layers = Table(title="deployed weights per layer")
    for col in ("layer", "shape", "bits", "unique", "entropy", "sparsity"):
        layers.add_column(col, justify="left" if col in ("layer", "shape") else "right")
    for lm in result.weights.layers:
        layers.add_row(
            lm.name,
            "x".join(map(str, lm.shape)),
            f"{lm.bits:g}",
            str(lm.unique_weights),
            f"{lm.weight_entropy_bits:.3f}",
            f"{lm.sparsity:.3f}",
        )
    out.print(layers)
    if export is not None:
        out.print(f"deployed weights written to {export}")


@app.command("strategies")
def strategies_cmd(
    name: Annotated[str | None, typer.Argument(help="this strategy, in full")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print every strategy as JSON")] = False,
) -> None:
    """List the registered strategies, one line each; NAME: one in full (its paper, docstring,
    params, bounds and search ranges, recipe and docs page)."""
    import strategies

    registered = strategies.list_strategies()
    if name is not None and name not in registered:
        raise refuse("name", _unknown_strategy(name, list(registered)))
    described = [
        {**cls.describe(), "origin": asdict(strategies.strategy_origin(key))}
        for key, cls in registered.items()
        if name is None or key == name
    ]
    for e in strategies.plugin_errors():  # the others stay usable; say what is missing
        err.print(f"warning: {escape(str(e))}", highlight=False, soft_wrap=True)
    if as_json:
        sys.stdout.write(json.dumps(described, indent=2) + "\n")
        return
    if name is None:
        _strategy_lines(described)
        return
    _strategy_in_full(described[0])


def _unknown_strategy(name: str, known: list[str]) -> str:
    import difflib

    import strategies

    reason = str(strategies.UnknownStrategyError(name))
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    if close and "failed to load" not in reason:
        return f"unknown strategy {name!r}; did you mean {close[0]}?"
    return reason


def paper_short(paper: str) -> str:
    """A paper's title without its authors and venue, and before its subtitle's colon:
    `BitNet: Bit-Regularized ... (arXiv 1708.04788)` is `BitNet`."""
    title = paper.split(" (", 1)[0]
    return title.split(": ", 1)[0].strip() or paper


def _strategy_lines(described: list[dict[str, Any]]) -> None:
    """One line per strategy: its name, its paper's short title and its summary, cut by rich
    to the terminal's width (80 columns off a terminal)."""
    plugins = any(d["origin"]["via"] != "builtin" for d in described)
    table = Table(box=None, pad_edge=False, show_edge=False, expand=True)
    widest = max((len(d["name"]) for d in described), default=8)
    table.add_column("strategy", no_wrap=True, style="bold cyan", min_width=widest)
    table.add_column("paper", no_wrap=True, overflow="ellipsis", min_width=14, max_width=22)
    if plugins:
        table.add_column("from", no_wrap=True, overflow="ellipsis", min_width=8, max_width=16)
    table.add_column("summary", no_wrap=True, overflow="ellipsis", ratio=1)
    for d in described:
        o = d["origin"]
        cells = [d["name"], paper_short(d["paper"])]
        if plugins:
            cells.append("" if o["via"] == "builtin" else o["distribution"])
        cells.append(d["summary"])
        # Names, papers and summaries are printed verbatim: never read as rich markup.
        table.add_row(*(Text(c) for c in cells))
    out.print(table)
    err.print("bitsweep strategies NAME: one strategy in full", highlight=False)


def _strategy_in_full(d: dict[str, Any]) -> None:
    """One strategy: its paper, origin, fidelity, docstring (its own line breaks, never
    wrapped again), params with bounds and search ranges, recipe and docs page."""

    def line(text: str, **kw: Any) -> None:
        out.print(text, markup=False, highlight=False, soft_wrap=True, **kw)

    o = d["origin"]
    out.print(f"[bold cyan]{escape(d['name'])}[/] — {escape(d['summary'])}", soft_wrap=True)
    line(f"  paper: {d['paper']}")
    line(f"  from: {o['distribution']} {o['version']} ({o['via']})".rstrip())
    line(f"  fidelity: {d['fidelity']}")
    if o["via"] == "builtin":
        line(f"  docs: docs/strategies/{d['name']}.md")
    if d["doc"]:
        line(textwrap.indent(d["doc"], "    "), style="dim")
    if d["relations"]:
        line(f"  relations: {'; '.join(d['relations'])}")
    # One line a param, wrapped by the terminal alone: a table's narrow columns broke its
    # description into a word a line.
    if d["params"]:
        line("  params:")
    for p in d["params"]:
        facts = [] if p.get("default") is None else [f"default {p['default']}"]
        if p.get("bounds"):
            facts.append(f"bounds {_bounds_text(p['bounds'])}")
        elif p.get("choices"):
            facts.append(f"choices {p['choices']}")
        if p.get("search"):
            facts.append(f"search {_search_text(p['search'])}")
        text = f"    {p['name']} ({p['type']})" + (f": {', '.join(facts)}" if facts else "")
        line(text + (f" — {p['description']}" if p.get("description") else ""))
    if d["recipe"]["search"]:
        line("  training knobs searched:")
    for k, v in d["recipe"]["search"].items():
        line(f"    {k}: search {_search_text(v)}")
    r = d["recipe"]
    line(
        f"  recipe: {r['optimizer']['name']} lr={r['optimizer']['lr']:g}, "
        f"schedule={r['schedule']['name']}, batch={r['batch_size']}, "
        f"model options={r['model_options']}"
    )


def _bounds_text(b: dict[str, Any]) -> str:
    left = "(-inf" if b["low"] is None else ("[" if b["low_inclusive"] else "(") + f"{b['low']:g}"
    right = (
        "inf)" if b["high"] is None else f"{b['high']:g}" + ("]" if b["high_inclusive"] else ")")
    )
    return f"{left}, {right}"


def _search_text(s: dict[str, Any] | None) -> str:
    if not s:
        return ""
    if "choices" in s:
        return "{" + ", ".join(map(str, s["choices"])) + "}"
    return f"[{s['low']:g}, {s['high']:g}]" + (" log" if s.get("log") else "")


@app.command()
def schema(
    which: Annotated[str, typer.Argument(help="trial, sweep, or all")] = "all",
) -> None:
    """Print the JSON Schema of the trial config and of the sweep spec."""
    from schemas.sweep import SweepSpec
    from schemas.trial import TrialConfig

    schemas = {"trial": TrialConfig.model_json_schema(), "sweep": SweepSpec.model_json_schema()}
    if which not in (*schemas, "all"):
        raise refuse("which", f"must be trial, sweep or all, not {which!r}")
    doc = schemas if which == "all" else schemas[which]
    sys.stdout.write(json.dumps(doc, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    """Entry point: bad input exits 2 with one line; other failures exit 1 with one line."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # MLflow configures its own logger at import; this keeps its INFO lines off the console.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # On a tracking server MLflow writes a "View run ... at" line to stdout for each run it
    # ends, which would break `--json` output; the runs are on the leaderboard.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    command = typer.main.get_command(app)
    try:
        code = command.main(args=argv, prog_name="bitsweep", standalone_mode=False)
        if isinstance(code, int) and not isinstance(code, bool):
            return code  # a command's typer.Exit, which click returns without standalone mode
    except typer.Exit as e:
        return int(e.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        _fail("aborted")
        return 130
    except Exception as e:  # the top of the program: every failure becomes one line
        line = input_error(e)
        if line is not None:
            _fail(line)
            return 2
        exit_code = getattr(e, "exit_code", None)
        if hasattr(e, "format_message") and isinstance(exit_code, int):
            # click's usage errors (unknown option, missing argument) and ClickExceptions
            _fail(e.format_message())
            return exit_code
        logging.getLogger("bitsweep").debug("failure", exc_info=True)
        _fail(f"{type(e).__name__}: {e}")
        return 1
    return 0


def _fail(message: str) -> None:
    sys.stderr.write(f"error: {' '.join(str(message).split())}\n")


def entry() -> None:
    """The `bitsweep` executable: `main`, then a prompt exit.

    The exit handlers run as at any exit (Ray's shutdown, logging's flush), then the process
    ends without the interpreter's teardown of every module, which after a sweep (torch, Ray,
    MLflow loaded) takes about two seconds and writes nothing: every store has committed and
    every file is closed by the time `main` returns.
    """
    code = main()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

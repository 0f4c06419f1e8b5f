"""`bitsweep payload ...`: commands for payloads carried in frozen weight bits."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import click
import typer

from service.cli.text import plural
from service.errors import InputRefused

# The commands import what they run inside their functions, to keep `bitsweep --help` fast.

app = typer.Typer(
    help="Payloads carried in the frozen bits of bit_learning weights.", no_args_is_help=True
)


@app.command()
def extract(
    weights: Annotated[
        Path, typer.Argument(help="a safetensors file written by `bitsweep train --export`")
    ],
    out: Annotated[Path, typer.Argument(help="where to write the payload bytes")],
) -> None:
    """Write the payload a bit_learning export carries to OUT, after checking its SHA-256."""
    from runners.engine.export import load_weights
    from strategies.bit_learning import PayloadError, read_payload

    if not weights.is_file():
        raise InputRefused("weights", f"{weights} is not a file")
    if out.is_dir():
        raise InputRefused("out", f"{out} is a directory")
    if not out.parent.resolve().is_dir():
        raise InputRefused("out", f"directory {out.parent} does not exist")
    try:
        _, codes, info = load_weights(weights)
    except ValueError as e:
        raise InputRefused("weights", str(e)) from None
    if info["strategy"] != "bit_learning":
        raise InputRefused("weights", f"written by strategy {info['strategy']!r}, not bit_learning")
    if not info["params"].get("payload"):
        raise InputRefused("weights", "this bit_learning export carries no payload")
    try:
        layers = sorted(info["layers"].items(), key=lambda kv: int(kv[1]["layer_index"]))
        streams = [(codes[name], [int(p) for p in meta["frozen_planes"]]) for name, meta in layers]
    except (KeyError, TypeError, ValueError) as e:
        raise InputRefused(
            "weights", f"payload layout metadata is missing or broken ({e})"
        ) from None
    try:
        data = read_payload(streams)
    except PayloadError as e:
        raise InputRefused("weights", e.reason) from None
    out.write_bytes(data)
    click.echo(f"wrote {plural(len(data), 'payload byte')} to {out}")

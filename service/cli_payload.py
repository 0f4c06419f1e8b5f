"""`bitsweep payload ...`: commands for payloads carried in frozen weight bits."""

from __future__ import annotations

import typer

app = typer.Typer(help="Payloads carried in the frozen bits of bit_learning weights.", no_args_is_help=True)

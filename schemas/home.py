"""The layout of the data directory (`$BITSWEEP_HOME`, default `./bitsweep-data`), defined once:
what a sweep, the leaderboard reader, `bitsweep remove` and the service find where."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from schemas.names import HOME_ENV

DEFAULT_HOME = "bitsweep-data"


def data_home() -> Path:
    """The data directory: `$BITSWEEP_HOME`, or `./bitsweep-data`, resolved."""
    return Path(os.environ.get(HOME_ENV, DEFAULT_HOME)).expanduser().resolve()


@dataclass(frozen=True)
class Home:
    """Where everything lives under one data directory."""

    root: Path

    @property
    def mlflow_db(self) -> Path:
        return self.root / "mlflow.db"

    @property
    def optuna_db(self) -> Path:
        return self.root / "optuna.db"

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def ray(self) -> Path:
        """Tune's storage path: `ray/<sweep id>/` holds each sweep's checkpoints and state."""
        return self.root / "ray"

    @property
    def sweeps(self) -> Path:
        return self.root / "sweeps"

    @property
    def log(self) -> Path:
        """What Ray, Tune and Optuna log while a sweep runs (`runners.sweep.quiet`)."""
        return self.root / "bitsweep.log"

    def state_file(self, sweep_id: str) -> Path:
        """The saved state of one sweep (what `--resume` reads)."""
        return self.sweeps / f"{sweep_id}.json"

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.mlflow_db}"

    @property
    def optuna_uri(self) -> str:
        return f"sqlite:///{self.optuna_db}"

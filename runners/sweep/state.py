"""The saved state of a sweep: what it wrote so far, kept under the data directory so that an
interrupted sweep can resume."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from runners.sweep.space import SpecError
from schemas.home import Home
from schemas.sweep import SweepSpec


def state_path(home: Path, sweep_id: str) -> Path:
    """Where the state of sweep `sweep_id` is kept under the data directory `home`."""
    return Home(home).state_file(sweep_id)


class SweepState(BaseModel):
    """What a sweep wrote so far, kept beside its Ray results so that it can resume."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    sweep_id: str
    spec: dict[str, Any]
    experiment_id: str
    parent_run_id: str
    tracking_uri: str
    optuna_url: str
    status: str = "running"
    strategies: dict[str, str] = Field(default_factory=dict)
    created: float = Field(default_factory=time.time)

    def save(self, home: Path) -> None:
        path = state_path(home, self.sweep_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        # It holds the stores' URLs, passwords included (`--resume` and `bitsweep remove`
        # connect with them): readable by its owner alone, as a .pgpass is.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.model_dump_json(indent=2))
        os.chmod(tmp, 0o600)
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> SweepState:
        """The state saved at `path`; a `SpecError` naming the file if it is not one."""
        try:
            return cls.model_validate_json(path.read_bytes())
        except (OSError, ValidationError) as e:
            reason = e.errors()[0]["msg"] if isinstance(e, ValidationError) else str(e)
            raise SpecError("state", f"{path} is not a sweep's saved state: {reason}") from e


def find_resumable(home: Path, spec: SweepSpec, sweep_id: str | None) -> SweepState:
    """The sweep to resume: `sweep_id`, or the newest unfinished sweep of the spec's name."""
    folder = Home(home).sweeps
    if sweep_id is not None:
        path = state_path(home, sweep_id)
        if not path.exists():
            raise SpecError("sweep_id", f"no sweep {sweep_id!r} under {home}")
        state = SweepState.load(path)
    else:
        states = [SweepState.load(p) for p in folder.glob("*.json")] if folder.is_dir() else []
        states = [s for s in states if s.spec.get("name") == spec.name and s.status != "finished"]
        if not states:
            raise SpecError("--resume", f"no unfinished sweep named {spec.name!r} under {home}")
        state = max(states, key=lambda s: s.created)
    if state.spec != json.loads(spec.model_dump_json()):
        raise SpecError("--resume", f"the spec changed since sweep {state.sweep_id} started")
    return state

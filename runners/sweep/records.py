"""Records a user reuses: train a leaderboard row again, and remove a sweep.

`rerun` trains a finished trial run again from what MLflow holds (its `result.json`: the
resolved config and the seed; the thread count and the strategy's distribution it ran with)
and compares the metrics. `remove_sweep` deletes what one sweep wrote.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from runners.board import SWEEP_ID_PATTERN
from runners.sweep.space import SpecError
from runners.sweep.worker import RESULT_FILE
from schemas.home import Home
from schemas.names import TIMING_METRICS, Tag, tag_filter
from schemas.secrets import masked
from schemas.trial import TrialResult

log = logging.getLogger(__name__)

# Wall-time figures differ on every run; every other metric must come out the same.


@dataclass
class RerunReport:
    """What a rerun gave against what the run recorded."""

    run_id: str
    strategy: str
    threads: int | None
    recorded: dict[str, float]
    rerun: dict[str, float]
    warnings: list[str] = field(default_factory=list)

    @property
    def differences(self) -> dict[str, tuple[float | None, float | None]]:
        keys = (set(self.recorded) | set(self.rerun)) - TIMING_METRICS
        return {
            k: (self.recorded.get(k), self.rerun.get(k))
            for k in sorted(keys)
            if not _same(self.recorded.get(k), self.rerun.get(k))
        }

    @property
    def reproduced(self) -> bool:
        return not self.differences

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "strategy": self.strategy,
            "threads": self.threads,
            "reproduced": self.reproduced,
            "differences": {k: list(v) for k, v in self.differences.items()},
            "warnings": self.warnings,
            "recorded": self.recorded,
            "rerun": self.rerun,
        }


def _same(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return a == b or (a != a and b != b)  # NaN equals NaN here


def recorded_result(client: MlflowClient, run_id: str) -> TrialResult:
    """The `TrialResult` a finished trial run holds. Raises `SpecError` on `run_id`."""
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise SpecError("run_id", f"no run {run_id!r} in this tracking store") from None
    if run.data.tags.get(Tag.KIND) != "trial":
        raise SpecError("run_id", f"run {run_id} is not a bitsweep trial")
    if run.info.status != "FINISHED":
        raise SpecError("run_id", f"run {run_id} is {run.info.status}, not a finished trial")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = Path(client.download_artifacts(run_id, RESULT_FILE, tmp))
        except (MlflowException, OSError):
            raise SpecError("run_id", f"run {run_id} holds no {RESULT_FILE}") from None
        return TrialResult.model_validate_json(path.read_text())


def rerun(client: MlflowClient, run_id: str) -> RerunReport:
    """Train the trial of `run_id` again, on this machine, with the thread count it ran with."""
    import torch

    from runners.engine.data import load_dataset
    from runners.engine.trial import resolve, train
    from strategies import strategy_origin

    recorded = recorded_result(client, run_id)
    config = recorded.config
    env = recorded.environment
    warnings: list[str] = []
    trial = resolve(config)
    origin = strategy_origin(config.strategy)
    if env.strategy_version is not None and (
        (origin.distribution, origin.version) != (env.strategy_distribution, env.strategy_version)
    ):
        warnings.append(
            f"strategy {config.strategy} ran from {env.strategy_distribution} "
            f"{env.strategy_version}; installed is {origin.distribution} {origin.version}"
        )
    if env.torch != torch.__version__:
        warnings.append(f"torch {env.torch} ran the trial; installed is {torch.__version__}")
    before = torch.get_num_threads()
    if env.threads:
        torch.set_num_threads(env.threads)
    try:
        data = load_dataset(config.dataset, val_fraction=config.val_fraction)
        result = train(trial, dataset=data).result
    finally:
        torch.set_num_threads(before)
    return RerunReport(
        run_id=run_id,
        strategy=config.strategy,
        threads=env.threads,
        recorded=recorded.metrics(),
        rerun=result.metrics(),
        warnings=warnings,
    )


@dataclass
class Removed:
    runs: int
    studies: list[str]
    folders: list[str]


def remove_sweep(
    *, sweep_id: str, home: Path, tracking_uri: str, optuna_url: str, storage_root: str
) -> Removed:
    """Delete what sweep `sweep_id` wrote: its MLflow runs (moved to MLflow's trash, which
    `mlflow gc` empties), its Optuna studies, its Tune folder and its saved state."""
    import optuna

    if not SWEEP_ID_PATTERN.fullmatch(sweep_id):
        raise SpecError("sweep_id", f"{sweep_id!r} is not a sweep id")
    tune_dir = Path(storage_root) / sweep_id
    if "://" not in storage_root and not tune_dir.resolve().is_relative_to(
        Path(storage_root).resolve()
    ):
        raise SpecError("sweep_id", f"{sweep_id!r} names a folder outside {storage_root}")
    client = MlflowClient(tracking_uri)
    exps = client.search_experiments(filter_string="name LIKE 'bitsweep/%'", max_results=1000)
    runs = client.search_runs(
        [e.experiment_id for e in exps],
        filter_string=tag_filter(Tag.SWEEP_ID, sweep_id),
        max_results=50_000,
    ) if exps else []  # fmt: skip
    state = Home(home).state_file(sweep_id)
    if not runs and not state.exists():
        raise SpecError(
            "sweep_id", f"no sweep {sweep_id!r} in {masked(tracking_uri)} or under {home}"
        )
    for run in runs:
        if run.info.status == "RUNNING":
            client.set_terminated(run.info.run_id, status="KILLED")
        client.delete_run(run.info.run_id)
    studies = []
    for summary in optuna.get_all_study_summaries(optuna_url, include_best_trial=False):
        if summary.study_name.startswith(f"{sweep_id}/"):
            optuna.delete_study(study_name=summary.study_name, storage=optuna_url)
            studies.append(summary.study_name)
    folders = []
    if "://" not in storage_root and tune_dir.is_dir():
        shutil.rmtree(tune_dir)
        folders.append(str(tune_dir))
    if state.exists():
        state.unlink()
    return Removed(runs=len(runs), studies=studies, folders=folders)


def report_lines(report: RerunReport) -> list[str]:
    """The rerun's outcome, a line each (what the CLI prints)."""
    lines = [f"warning: {w}" for w in report.warnings]
    if report.reproduced:
        lines.append(
            f"reproduced: every metric of run {report.run_id} ({report.strategy}, "
            f"{report.threads} threads) came out the same"
        )
    else:
        for k, (a, b) in report.differences.items():
            lines.append(f"differs: {k}: recorded {a}, rerun {b}")
        lines.append(f"not reproduced: {len(report.differences)} metrics differ")
    return lines


__all__ = ["Removed", "RerunReport", "recorded_result", "remove_sweep", "report_lines", "rerun"]

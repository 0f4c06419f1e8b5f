"""Records a user reuses: train a leaderboard row again, and remove a sweep.

`rerun` trains a finished trial run again from what MLflow holds (its `result.json`: the
resolved config and the seed; the thread count and the strategy's distribution it ran with)
and compares the metrics. `remove_sweep` deletes what one sweep wrote.
"""

from __future__ import annotations

import logging
import re
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
from schemas.names import TIMING_METRICS, Tag, literal, tag_filter
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


# A trial id, or the start of one, as `rerun` accepts it: checked before it reaches a filter.
TRIAL_REF = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
MIN_PREFIX = 4  # characters of a trial id at least, as git asks of a commit's
SHOWN_CANDIDATES = 5  # of an ambiguous prefix


def trial_run_id(client: MlflowClient, ref: str) -> str:
    """The run id of the trial `ref` names: an MLflow run id, a trial id (MLflow tag
    `bitsweep.trial_id`), or an unambiguous prefix of one (4 characters at least; the boards
    show 8). A whole trial id wins over the longer ids it starts. Raises `SpecError` on
    `run_id` for an unknown, malformed, too short or ambiguous `ref`."""
    if not TRIAL_REF.fullmatch(ref):
        raise SpecError("run_id", f"{ref!r} is not a trial id or a run id")
    try:
        return str(client.get_run(ref).info.run_id)
    except MlflowException:
        pass  # not a run id: a trial id, or the start of one
    if len(ref) < MIN_PREFIX:
        raise SpecError(
            "run_id", f"{ref!r} is too short: give {MIN_PREFIX} characters of a trial id at least"
        )
    runs = _trial_runs(client, ref)
    exact = [r for r in runs if r.data.tags.get(Tag.TRIAL_ID) == ref]
    found = exact or runs
    if not found:
        raise SpecError(
            "run_id", f"no run {ref!r} in this tracking store, and no trial id starts with it"
        )
    if len(found) > 1:
        shown = ", ".join(
            f"{r.data.tags.get(Tag.TRIAL_ID)} (sweep {r.data.tags.get(Tag.SWEEP_ID, '?')}, "
            f"run {r.info.run_id})"
            for r in found[:SHOWN_CANDIDATES]
        )
        more = f" and {len(found) - SHOWN_CANDIDATES} more" if len(found) > SHOWN_CANDIDATES else ""
        raise SpecError(
            "run_id",
            f"{ref!r} is ambiguous: it starts {len(found)} trials: {shown}{more}; "
            "give more of the trial id, or the run id",
        )
    return str(found[0].info.run_id)


def _trial_runs(client: MlflowClient, prefix: str) -> list[Any]:
    """The trial runs whose trial id starts with `prefix` (validated by `TRIAL_REF`), newest
    first. MLflow's LIKE reads `_` as any one character and has no escape: the filter takes
    the prefix up to its first `_`, and the ids are compared here."""
    exps = client.search_experiments(filter_string="name LIKE 'bitsweep/%'", max_results=1000)
    if not exps:
        return []
    like = prefix.split("_", 1)[0] + "%"
    flt = f"{tag_filter(Tag.KIND, 'trial')} and tags.`{Tag.TRIAL_ID}` LIKE {literal(like)}"
    found: list[Any] = []
    token = None
    while True:
        page = client.search_runs(
            [e.experiment_id for e in exps],
            filter_string=flt,
            order_by=["attributes.start_time DESC"],
            max_results=1000,
            page_token=token,
        )
        found += [r for r in page if r.data.tags.get(Tag.TRIAL_ID, "").startswith(prefix)]
        token = page.token
        if not token:
            return found


def rerun(client: MlflowClient, ref: str) -> RerunReport:
    """Train the trial `ref` names (see `trial_run_id`) again, on this machine, with the
    thread count it ran with."""
    import torch

    from runners.engine.data import load_dataset
    from runners.engine.trial import resolve, train
    from strategies import strategy_origin

    run_id = trial_run_id(client, ref)
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
    threads = "threads unknown" if report.threads is None else _plural(report.threads, "thread")
    if report.reproduced:
        lines.append(
            f"reproduced: every metric of run {report.run_id} ({report.strategy}, "
            f"{threads}) came out the same"
        )
    else:
        for k, (a, b) in report.differences.items():
            lines.append(f"differs: {k}: recorded {a}, rerun {b}")
        n = len(report.differences)
        lines.append(f"not reproduced: {_plural(n, 'metric')} {'differs' if n == 1 else 'differ'}")
    return lines


def _plural(n: int, word: str) -> str:
    """`1 thread`, `2 threads`."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


__all__ = [
    "Removed",
    "RerunReport",
    "recorded_result",
    "remove_sweep",
    "report_lines",
    "rerun",
    "trial_run_id",
]

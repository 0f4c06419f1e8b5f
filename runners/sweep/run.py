"""A sweep: each strategy of a spec swept as Ray Tune trials, Optuna choosing each trial's
params, MLflow recording every trial as a child run of the sweep's parent run.

`plan_sweep` validates a spec against everything it names and writes nothing; `run_sweep` runs
a plan, or resumes a stopped sweep of the same spec, with every strategy's trials interleaved
in one Tune experiment. The pieces, one job each:

- `runners.sweep.plan`: the plan (`plan_sweep`, `Plan`, `data_home`);
- `runners.sweep.search`: the searcher (a study per strategy) and the scheduler;
- `runners.sweep.state`: the sweep's saved state, for resuming (`SweepState`);
- `runners.sweep.progress`: the trial counts the caller's progress view shows;
- `runners.sweep.record`: every MLflow write of the sweep, and its summary;
- this module: the run loop, which starts Ray and runs the one Tune experiment.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
from ray import tune

from runners.sweep.cluster import (
    EXIT_CLUSTER_LOST,
    ClusterWatch,
    check_resources,
    head_endpoint,
    lost_after,
    reachable_address,
)
from runners.sweep.plan import HOME_ENV, Plan, StrategyPlan, base_trial, data_home, plan_sweep
from runners.sweep.progress import Progress, ProgressCallback, StrategyProgress, TrialEvent
from runners.sweep.quiet import third_party_to_log
from runners.sweep.record import SweepRecord, SweepSummary
from runners.sweep.retry import RetryingRDBStorage
from runners.sweep.search import (
    Confirm,
    fail_lost_study_trials,
    max_trials,
    study_name,
    sweep_scheduler,
    sweep_searcher,
)
from runners.sweep.signals import (
    TUNE_ENV,
    Stop,
    SweepInterrupted,
    kill_own_ray,
    stop_on_signals,
)
from runners.sweep.space import SpecError
from runners.sweep.state import SweepState, find_resumable
from runners.sweep.tracking import board_view_url
from runners.sweep.worker import trainable
from schemas.home import Home

log = logging.getLogger(__name__)

EXPERIMENT = "trials"  # the folder of a sweep's one Tune experiment, under its sweep id

# Per-epoch reports carry validation metrics; the objectives arrive with the final report.
TUNE_REQUIRED = {"TUNE_DISABLE_STRICT_METRIC_CHECKING": "1"}
# Defaults for what Tune reads from the environment, where the user has not set them:
TUNE_DEFAULTS = {
    # bitsweep shows its own progress: Tune's legacy reporter at verbosity 0 prints nothing,
    # where the newer one still prints a header per experiment.
    "RAY_AIR_NEW_OUTPUT": "0",
    # A checkpoint per epoch forces an experiment snapshot, which makes resuming exact.
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
}


PENDING_TRIALS = "TUNE_MAX_PENDING_TRIALS_PG"


@contextlib.contextmanager
def tune_environment(defaults: dict[str, str] | None = None) -> Iterator[None]:
    """Tune's environment for the time an experiment runs: `TUNE_REQUIRED`, and
    `TUNE_DEFAULTS` and `defaults` where the user has not set them; restored after."""
    defaults = {**TUNE_DEFAULTS, **(defaults or {})}
    saved = {k: os.environ.get(k) for k in (*TUNE_REQUIRED, *defaults)}
    for k, v in defaults.items():
        os.environ.setdefault(k, v)
    os.environ.update(TUNE_REQUIRED)
    try:
        yield
    finally:
        for k, old in saved.items():
            if old is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = old


def start_ray(address: str | None) -> str | None:
    """Join the cluster at `address` (or `RAY_ADDRESS`), or start a local one, once; an
    address where nothing answers is refused within seconds (SpecError `--ray-address`).
    Returns the address joined (None: a local cluster, or one this process had joined)."""
    import ray

    if ray.is_initialized():
        return None
    joined = reachable_address(address)
    ray.init(
        address=joined,
        log_to_driver=False,
        logging_level=logging.WARNING,
        include_dashboard=False,
    )
    return joined


def pending_trials(plan: Plan) -> int:
    """How many trials Tune may start at once: as many as the cluster fits now (by CPUs, and
    GPUs where a trial asks for them), within the spec's limit and trial count.

    With a searcher of its own Tune keeps one trial pending at a time. A trial is pending until
    its worker has started (seconds: it imports torch), and trials shorter than that would all
    run one after another on the first worker, which Tune reuses, leaving the rest of the
    cluster idle; with one pending trial per free slot, every slot's worker starts at once.
    """
    import ray

    spec, have = plan.spec, ray.cluster_resources()
    fits = have.get("CPU", 0.0) / spec.resources.cpu
    if spec.resources.gpu > 0:
        fits = min(fits, have.get("GPU", 0.0) / spec.resources.gpu)
    n = min(max(1, int(fits)), max_trials(plan))
    return min(n, spec.max_concurrent_trials) if spec.max_concurrent_trials else n


def run_sweep(
    plan: Plan,
    *,
    ray_address: str | None = None,
    resume: bool = False,
    sweep_id: str | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    on_start: Callable[[str, str], None] | None = None,
    on_event: Callable[[TrialEvent], None] | None = None,
) -> SweepSummary:
    """Run (or resume) the sweep of `plan`; returns its summary once every strategy is done.
    Ray's, Tune's and Optuna's own lines go to the data directory's `bitsweep.log`."""
    with third_party_to_log(Home(plan.home).log):
        return _run_sweep(plan, ray_address, resume, sweep_id, on_progress, on_start, on_event)


def _run_sweep(
    plan: Plan,
    ray_address: str | None,
    resume: bool,
    sweep_id: str | None,
    on_progress: Callable[[Progress], None] | None,
    on_start: Callable[[str, str], None] | None,
    on_event: Callable[[TrialEvent], None] | None,
) -> SweepSummary:
    spec, home = plan.spec, plan.home
    state = find_resumable(home, spec, sweep_id) if resume else None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    silence = lost_after()
    # The cluster first: an unreachable one, or one without the resources a trial asks for,
    # is refused before the sweep writes anything.
    endpoint = head_endpoint(start_ray(ray_address))
    check_resources(plan)
    pending = pending_trials(plan)
    home.mkdir(parents=True, exist_ok=True)
    record = SweepRecord(plan)
    storage = RetryingRDBStorage(plan.optuna_url)
    with stop_on_signals() as stop:
        try:
            if state is None:
                state = record.start(sweep_id)
            else:
                record.reopen(state)
            state.status = "running"
            state.save(home)
            if on_start is not None:
                on_start(state.sweep_id, state.parent_run_id)
            objective = spec.objectives[0]
            progress = Progress(objective.metric, objective.mode, on_progress, on_event)
            confirm = Confirm.of(spec)
            progress.strategies = {
                p.name: StrategyProgress(
                    trials=p.trials, confirm=confirm.trials() if confirm is not None else 0
                )
                for p in plan.strategies
            }
            if resume:
                record.count_into(progress, state)
            for sp in plan.strategies:
                state.strategies[sp.name] = "running"
            state.save(home)
            with (
                tune_environment({PENDING_TRIALS: str(pending), **TUNE_ENV}),
                _watch(endpoint, silence, stop, plan, state, record, storage) as watch,
            ):
                try:
                    _run_experiment(plan, state, record, storage, progress, resume)
                finally:
                    if watch is not None and not stop:
                        watch.settle()  # a lost cluster is recorded as such, not as an end
        except SweepInterrupted as e:  # a signal before the experiment started
            stop.signum = e.signum
        if stop.signum is not None:
            if state is None:
                raise SweepInterrupted(stop.signum)
            _interrupted(plan, state, record, storage)
            raise SweepInterrupted(stop.signum, state.sweep_id)
        assert state is not None
        record.drop_lost_runs(state)
        for sp in plan.strategies:
            fail_lost_study_trials(storage, study_name(state.sweep_id, sp.name))
            state.strategies[sp.name] = "finished"
        state.save(home)

        summary = record.finish(state)
        state.status = "finished"
        state.save(home)
    return summary


def _interrupted(
    plan: Plan, state: SweepState, record: SweepRecord, storage: optuna.storages.BaseStorage
) -> None:
    """Record a sweep stopped by a signal: its unfinished trial runs and its parent run
    KILLED, their Optuna trials FAIL, its state `interrupted` (what `--resume` continues)."""
    record.interrupt(state)
    for sp in plan.strategies:
        fail_lost_study_trials(storage, study_name(state.sweep_id, sp.name))
        if state.strategies.get(sp.name) != "finished":
            state.strategies[sp.name] = "interrupted"
    state.status = "interrupted"
    state.save(plan.home)


@contextlib.contextmanager
def _watch(
    endpoint: tuple[str, int] | None,
    silence: float,
    stop: Stop,
    plan: Plan,
    state: SweepState,
    record: SweepRecord,
    storage: optuna.storages.BaseStorage,
) -> Iterator[ClusterWatch | None]:
    """Watch the cluster's head while the experiment runs (`ClusterWatch`); a lost cluster
    ends the process once the sweep is recorded as interrupted (`_cluster_lost`). A sweep
    stopping on a signal records itself; a local cluster may end with it."""
    if endpoint is None:
        yield None
        return
    where = f"{endpoint[0]}:{endpoint[1]}"

    def on_lost(down: float) -> None:
        if not stop:
            _cluster_lost(plan, state, record, storage, where, down)

    with ClusterWatch(endpoint, silence, on_lost) as watch:
        yield watch


def _cluster_lost(
    plan: Plan,
    state: SweepState,
    record: SweepRecord,
    storage: optuna.storages.BaseStorage,
    where: str,
    down: float,
) -> None:
    """The sweep's cluster is gone: record the sweep as interrupted, as a signal does, then
    exit at once with EXIT_CLUSTER_LOST. The run loop cannot end by itself: it waits on a
    cluster that is gone, until Ray ends the process."""
    sid = state.sweep_id

    def say(line: str) -> None:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()

    say(f"error: the Ray cluster at {where} has not answered for {down:.0f} s; stopping {sid}")
    try:
        _interrupted(plan, state, record, storage)
    except Exception as e:  # resumable still, as after a hard kill; the runs say RUNNING
        say(f"error: sweep {sid} could not be recorded as interrupted: {e}")
    else:
        say(
            f"error: sweep {sid} was interrupted: its Ray cluster was lost; continue it with "
            f"--resume --sweep-id {sid} once a cluster is up"
        )
    if sys.stderr.isatty():
        sys.stderr.write("\x1b[?25h")  # the live view's hidden cursor, shown again
        sys.stderr.flush()
    kill_own_ray()
    os._exit(EXIT_CLUSTER_LOST)


def _run_experiment(
    plan: Plan,
    state: SweepState,
    record: SweepRecord,
    storage: optuna.storages.BaseStorage,
    progress: Progress,
    resume: bool,
) -> None:
    """Every strategy's trials in one Tune experiment (or the rest of it, on resume)."""
    spec = plan.spec
    bases = {sp.name: base_trial(spec, sp.spec) for sp in plan.strategies}
    fn = tune.with_resources(
        tune.with_parameters(
            trainable, data=plan.dataset, bases=bases, export_weights=spec.export_weights
        ),
        {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu},
    )
    root = f"{plan.storage_root}/{state.sweep_id}"
    path = f"{root}/{EXPERIMENT}"
    if resume and tune.Tuner.can_restore(path):
        tuner = tune.Tuner.restore(path, trainable=fn, resume_unfinished=True, resume_errored=False)
        for callback in _callbacks(tuner):
            if isinstance(callback, ProgressCallback):
                callback.bind(progress)
    else:
        if "://" not in path and Path(path).exists():
            shutil.rmtree(path)  # a start that never got as far as a restorable state
        tuner = _new_tuner(plan, state, record, storage, fn, root, progress)
    # Tune prints its own tables on stdout; bitsweep's output is its own, so they go to stderr.
    with contextlib.redirect_stdout(sys.stderr):
        tuner.fit()


def _callbacks(tuner: tune.Tuner) -> list[Any]:
    """The callbacks a restored tuner runs: the unpickled copies of the ones it started with.

    `Tuner.restore` takes no callbacks, and the public API does not expose the restored ones;
    they are read from the tuner's run config. A tuner run through Ray Client (`ray://`) runs
    them in the cluster, where there is no progress view to bind: none are returned.
    """
    local = getattr(tuner, "_local_tuner", None)
    if local is None:
        return []
    return list(local.get_run_config().callbacks or [])


def _new_tuner(
    plan: Plan,
    state: SweepState,
    record: SweepRecord,
    storage: optuna.storages.BaseStorage,
    fn: Any,
    root: str,
    progress: Progress,
) -> tune.Tuner:
    spec = plan.spec
    return tune.Tuner(
        fn,
        tune_config=tune.TuneConfig(
            search_alg=sweep_searcher(plan, state.sweep_id, storage),
            scheduler=sweep_scheduler(plan),
            num_samples=max_trials(plan),
            max_concurrent_trials=spec.max_concurrent_trials,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=EXPERIMENT,
            storage_path=root,
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            # The trial's run is written before the progress view counts it.
            callbacks=[record.callbacks(state), ProgressCallback(progress)],
            verbose=0,
        ),
    )


__all__ = [
    "EXPERIMENT",
    "HOME_ENV",
    "Plan",
    "Progress",
    "SpecError",
    "StrategyPlan",
    "SweepInterrupted",
    "SweepState",
    "SweepSummary",
    "TrialEvent",
    "board_view_url",
    "data_home",
    "find_resumable",
    "plan_sweep",
    "run_sweep",
    "start_ray",
]

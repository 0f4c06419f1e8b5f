"""A sweep: each strategy of a spec swept as Ray Tune trials, Optuna choosing each trial's
params, MLflow recording every trial as a child run of the sweep's parent run.

`plan_sweep` validates a spec against everything it names (strategies, ranges, dataset, model,
stores) and writes nothing; `run_sweep` runs a plan, or resumes a stopped sweep of the same
spec, with every strategy's trials interleaved in one Tune experiment (`runners.sweep_search`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from mlflow.tracking import MlflowClient
from ray import tune
from ray.tune.schedulers import ASHAScheduler

from runners.data import Dataset, DatasetError, load_dataset
from runners.models import build_model
from runners.search import ConstrainedSpace, SpecError, strategy_space
from runners.stores import check_storage_path, check_store, default_uris
from runners.sweep_search import PerStrategyScheduler, StrategySearch, SweepSearcher, split_config
from runners.tracking import (
    TrialLogger,
    bitsweep_version,
    dataset_input,
    describe_experiment,
    ensure_experiment,
    leaderboard_runs,
    log_leaderboard,
    nondominated,
    set_tracking,
    trial_error,
)
from runners.trial import ConfigError, resolve
from runners.worker import trainable
from schemas.sweep import StrategySpec, SweepSpec
from schemas.trial import TrialConfig
from strategies import strategy_origin
from strategies.base import Search, Strategy

log = logging.getLogger(__name__)

HOME_ENV = "BITSWEEP_HOME"


def data_home() -> Path:
    """The data directory: `$BITSWEEP_HOME`, or `./bitsweep-data`."""
    return Path(os.environ.get(HOME_ENV, "bitsweep-data")).expanduser().resolve()


# -- planning --------------------------------------------------------------------------------


@dataclass
class StrategyPlan:
    index: int
    spec: StrategySpec
    cls: type[Strategy]
    space: dict[str, Search]
    trials: int

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass
class Plan:
    """A validated sweep: nothing has been written yet."""

    spec: SweepSpec
    home: Path
    tracking_uri: str
    optuna_url: str
    artifact_root: str
    storage_root: str
    dataset: Dataset
    strategies: list[StrategyPlan]

    @functools.cached_property
    def dataset_input(self) -> Any:
        """MLflow's record of the sweep's dataset (name, digest, split sizes)."""
        return dataset_input(self.spec.dataset, self.dataset.summary(), self.dataset.digest())


def base_trial(spec: SweepSpec, strategy: StrategySpec) -> TrialConfig:
    """The trial config shared by every trial of one strategy (before Optuna's choices): the
    spec's training settings as they are, and the strategy's fixed params."""
    return TrialConfig(
        strategy=strategy.name, params=dict(strategy.params), **spec.training_settings()
    )


def plan_sweep(spec: SweepSpec, *, home: Path | None = None, check_stores: bool = True) -> Plan:
    """Validate `spec` against the registries, the dataset and the stores. Writes nothing.

    Raises `SpecError` naming the field and the reason.
    """
    home = home or data_home()
    plans = []
    for i, s in enumerate(spec.strategies):
        cls, space = strategy_space(s, i)
        try:
            resolve(base_trial(spec, s))
        except ConfigError as e:
            field = e.field if e.field in ("model", "dataset") else f"strategies.{i}.{e.field}"
            if e.field.startswith("model_options"):
                field = e.field
            raise SpecError(field, e.reason) from None
        plans.append(StrategyPlan(i, s, cls, space, s.trials or spec.trials_per_strategy))
    try:
        dataset = load_dataset(spec.dataset, val_fraction=spec.val_fraction)
    except DatasetError as e:
        raise SpecError("dataset", e.reason) from None
    for p in plans:
        try:
            build_model(
                spec.model,
                dataset.input_shape,
                dataset.num_classes,
                spec.model_options,
                defaults=p.cls.recipe.model_options,
            )
        except ValueError as e:
            raise SpecError(getattr(e, "field", "model"), getattr(e, "reason", str(e))) from None
    tracking, optuna_url = default_uris(home)
    tracking = spec.tracking_uri or tracking
    optuna_url = spec.optuna_storage or optuna_url
    if check_stores:
        check_store("tracking_uri", tracking, mlflow_store=True)
        check_store("optuna_storage", optuna_url, mlflow_store=False)
    storage_root = check_storage_path(spec.storage_path, home)
    return Plan(
        spec=spec,
        home=home,
        tracking_uri=tracking,
        optuna_url=optuna_url,
        artifact_root=(home / "artifacts").as_uri(),
        storage_root=storage_root,
        dataset=dataset,
        strategies=plans,
    )


# -- state of a sweep ------------------------------------------------------------------------


@dataclass
class SweepState:
    """What a sweep wrote so far, kept beside its Ray results so that it can resume."""

    sweep_id: str
    spec: dict[str, Any]
    experiment_id: str
    parent_run_id: str
    tracking_uri: str
    optuna_url: str
    status: str = "running"
    strategies: dict[str, str] = field(default_factory=dict)
    created: float = field(default_factory=time.time)

    def save(self, home: Path) -> None:
        path = home / "sweeps" / f"{self.sweep_id}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.__dict__, indent=2, sort_keys=True))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> SweepState:
        return cls(**json.loads(path.read_text()))


def find_resumable(home: Path, spec: SweepSpec, sweep_id: str | None) -> SweepState:
    """The sweep to resume: `sweep_id`, or the newest unfinished sweep of the spec's name."""
    folder = home / "sweeps"
    if sweep_id is not None:
        path = folder / f"{sweep_id}.json"
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


# -- progress --------------------------------------------------------------------------------


@dataclass
class StrategyProgress:
    trials: int
    running: int = 0
    done: int = 0
    failed: int = 0
    best: float | None = None


@dataclass(frozen=True)
class TrialEvent:
    """A trial started, finished (with its objective) or failed (with its reason)."""

    kind: str  # "started", "finished", "failed"
    strategy: str
    trial_id: str
    detail: str = ""

    def line(self) -> str:
        tail = f": {self.detail}" if self.detail else ""
        return f"{self.strategy} trial {self.trial_id} {self.kind}{tail}"


class Progress:
    """Counts of trials per strategy, and the best objective so far; `listener` sees each change."""

    def __init__(
        self,
        objective: str,
        mode: str,
        listener: Callable[[Progress], None] | None,
        on_event: Callable[[TrialEvent], None] | None = None,
    ) -> None:
        self.objective = objective
        self.mode = mode
        self.listener = listener
        self.on_event = on_event
        self.strategies: dict[str, StrategyProgress] = {}

    def event(self, event: TrialEvent) -> None:
        if self.on_event is not None:
            self.on_event(event)

    def changed(self) -> None:
        if self.listener is not None:
            self.listener(self)

    def start(self, strategy: str) -> None:
        self.strategies[strategy].running += 1
        self.changed()

    def finish(
        self, strategy: str, *, failed: bool, value: float | None, was_running: bool
    ) -> None:
        p = self.strategies[strategy]
        if was_running:
            p.running = max(0, p.running - 1)
        if failed:
            p.failed += 1
        else:
            p.done += 1
        if value is not None and (
            p.best is None or (value > p.best if self.mode == "max" else value < p.best)
        ):
            p.best = value
        self.changed()


_PROGRESS: dict[str, Progress] = {}


class SweepLogger(TrialLogger):
    """The trial logger of a sweep, also counting progress.

    Tune pickles its callbacks into the experiment state and a resumed sweep runs the
    unpickled copies: the MLflow client and the progress view are looked up again on use.
    """

    def __init__(self, *, tracking_uri: str, progress_key: str, objective: str, **kw: Any) -> None:
        super().__init__(client=MlflowClient(tracking_uri), **kw)
        self.tracking_uri = tracking_uri
        self.progress_key = progress_key
        self.objective = objective
        self._running: set[str] = set()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["client"] = None
        state["_optuna"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.client = MlflowClient(self.tracking_uri)

    @property
    def progress(self) -> Progress | None:
        return _PROGRESS.get(self.progress_key)

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        super().on_trial_start(iteration, trials, trial, **info)
        if self.progress and trial.trial_id not in self._running:
            self._running.add(trial.trial_id)
            self.progress.start(self.strategy)
            self.progress.event(TrialEvent("started", self.strategy, trial.trial_id))

    def _ended(self, trial: Any, failed: bool) -> None:
        was_running = trial.trial_id in self._running
        self._running.discard(trial.trial_id)
        value = None
        if not failed:
            res = trial.last_result or {}
            v = res.get(self.objective)
            value = float(v) if isinstance(v, (int, float)) else None
        if self.progress:
            self.progress.finish(self.strategy, failed=failed, value=value, was_running=was_running)
            if failed:
                detail = self.errors.get(trial.trial_id) or trial_error(trial)[1]
            elif value is not None:
                detail = f"{self.objective} = {value:.6g}"
            else:
                detail = "stopped early"
            self.progress.event(
                TrialEvent(
                    "failed" if failed else "finished", self.strategy, trial.trial_id, detail
                )
            )

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        super().on_trial_complete(iteration, trials, trial, **info)
        self._ended(trial, failed=False)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        super().on_trial_error(iteration, trials, trial, **info)
        self._ended(trial, failed=True)


# -- running ---------------------------------------------------------------------------------


@dataclass
class SweepSummary:
    sweep_id: str
    experiment: str
    tracking_uri: str
    parent_run_id: str
    completed: int
    failed: int
    best: dict[str, dict[str, Any]]
    leaderboard: list[dict[str, Any]]
    artifact_uri: str = ""
    failures: list[dict[str, str]] = field(default_factory=list)
    objectives: list[str] = field(default_factory=list)
    pareto: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    @property
    def pareto_plot(self) -> str:
        """Where the Pareto plot is: a local path for a local artifact store, else its URI."""
        uri = f"{self.artifact_uri.rstrip('/')}/pareto.png"
        return uri[len("file://") :] if uri.startswith("file://") else uri

    def to_json(self) -> dict[str, Any]:
        """The summary as JSON: one `best` trial per strategy for one objective, the Pareto
        front per strategy (`pareto`) for several."""
        out: dict[str, Any] = {
            "sweep_id": self.sweep_id,
            "experiment": self.experiment,
            "tracking_uri": self.tracking_uri,
            "parent_run_id": self.parent_run_id,
            "objectives": self.objectives,
            "completed": self.completed,
            "failed": self.failed,
        }
        if len(self.objectives) > 1:
            out["pareto"] = self.pareto
        else:
            out["best"] = self.best
        out["pareto_plot"] = self.pareto_plot
        out["failures"] = self.failures
        return out


def _sampler(spec: SweepSpec, trials: int) -> optuna.samplers.BaseSampler:
    several = len(spec.objectives) > 1
    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=spec.seed)
    if spec.sampler == "nsga2" or (spec.sampler == "auto" and several):
        return optuna.samplers.NSGAIISampler(
            population_size=max(2, min(50, trials // 2)), seed=spec.seed
        )
    return optuna.samplers.TPESampler(seed=spec.seed)


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
    """Run (or resume) the sweep of `plan`; returns its summary once every strategy is done."""
    import ray

    spec = plan.spec
    home = plan.home
    objective = spec.objectives[0]
    state = find_resumable(home, spec, sweep_id) if resume else None
    home.mkdir(parents=True, exist_ok=True)
    client = set_tracking(plan.tracking_uri)
    experiment_id = ensure_experiment(client, spec.benchmark, plan.artifact_root)
    describe_experiment(client, experiment_id, dataset=spec.dataset, model=spec.model)
    inputs = [plan.dataset_input]
    version = bitsweep_version()
    if state is None:
        sweep_id = (
            sweep_id or f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
        )
        parent = client.create_run(
            experiment_id,
            run_name=sweep_id,
            tags={
                "bitsweep.kind": "sweep",
                "bitsweep.sweep_id": sweep_id,
                "bitsweep.dataset": spec.dataset,
                "bitsweep.model": spec.model,
                "bitsweep.version": version,
                "bitsweep.strategies": ",".join(s.name for s in spec.strategies),
                "bitsweep.objectives": ",".join(f"{o.metric}:{o.mode}" for o in spec.objectives),
            },
        )
        client.log_inputs(parent.info.run_id, datasets=inputs)
        for k, v in {
            "name": spec.name,
            "epochs": spec.epochs,
            "trials_per_strategy": spec.trials_per_strategy,
            "seed": spec.seed,
        }.items():
            client.log_param(parent.info.run_id, k, str(v))
        with tempfile.TemporaryDirectory() as tmp:
            p = Path(tmp) / "spec.json"
            p.write_text(spec.model_dump_json(indent=2))
            client.log_artifact(parent.info.run_id, str(p))
        state = SweepState(
            sweep_id=sweep_id,
            spec=json.loads(spec.model_dump_json()),
            experiment_id=experiment_id,
            parent_run_id=parent.info.run_id,
            tracking_uri=plan.tracking_uri,
            optuna_url=plan.optuna_url,
            strategies={s.name: "pending" for s in plan.strategies},
        )
    else:
        client.update_run(state.parent_run_id, status="RUNNING")
    state.status = "running"
    state.save(home)
    if on_start is not None:
        on_start(state.sweep_id, state.parent_run_id)

    # Per-epoch reports carry validation metrics; the objectives arrive with the final report.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    # bitsweep shows its own progress: Tune's legacy reporter at verbosity 0 prints nothing,
    # where the newer one still prints a header per experiment.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # A checkpoint per epoch forces an experiment snapshot, which makes resuming exact.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if not ray.is_initialized():
        address = ray_address or os.environ.get("RAY_ADDRESS") or None
        ray.init(
            address=address,
            log_to_driver=False,
            logging_level=logging.WARNING,
            include_dashboard=False,
        )

    progress = Progress(objective.metric, objective.mode, on_progress, on_event)
    progress.strategies = {p.name: StrategyProgress(trials=p.trials) for p in plan.strategies}
    progress_key = state.sweep_id
    _PROGRESS[progress_key] = progress
    storage = optuna.storages.RDBStorage(plan.optuna_url)
    data_ref = plan.dataset
    try:
        for sp in plan.strategies:
            state.strategies[sp.name] = "running"
        state.save(home)
        _run_experiment(plan, state, storage, data_ref, progress_key, resume)
        for sp in plan.strategies:
            state.strategies[sp.name] = "finished"
        state.save(home)
    finally:
        _PROGRESS.pop(progress_key, None)

    tiebreak = [(o.metric, o.mode) for o in spec.objectives[1:]]
    board = log_leaderboard(
        client,
        experiment_id,
        state.parent_run_id,
        metric=objective.metric,
        mode=objective.mode,
        title=f"{spec.benchmark}: test accuracy against weight memory",
        tiebreak=tiebreak,
    )
    runs = _trial_runs(client, experiment_id, state.sweep_id)
    finished = [r for r in runs if r.info.status == "FINISHED"]
    failed_runs = [r for r in runs if r.info.status == "FAILED"]
    completed, failed = len(finished), len(failed_runs)
    failures = [
        {
            "run_id": r.info.run_id,
            "strategy": r.data.tags.get("bitsweep.strategy", ""),
            "trial_id": r.data.tags.get("bitsweep.trial_id", ""),
            "error": r.data.tags.get("bitsweep.error", ""),
        }
        for r in failed_runs
    ]
    best: dict[str, dict[str, Any]] = {}
    for run in leaderboard_runs(
        client,
        experiment_id,
        metric=objective.metric,
        mode=objective.mode,
        strategies=[s.name for s in plan.strategies],
        sweep_id=state.sweep_id,
        tiebreak=tiebreak,
    ):
        best[run.data.tags["bitsweep.strategy"]] = {
            "run_id": run.info.run_id,
            "metrics": run.data.metrics,
        }
    pareto: dict[str, list[dict[str, Any]]] = {}
    if len(spec.objectives) > 1:
        objs = [(o.metric, o.mode) for o in spec.objectives]
        for sp in plan.strategies:
            runs = [r for r in finished if r.data.tags.get("bitsweep.strategy") == sp.name]
            pareto[sp.name] = [
                {"run_id": r.info.run_id, "metrics": r.data.metrics}
                for r in nondominated(runs, objs)
            ]
    client.log_metric(state.parent_run_id, "completed_trials", completed)
    client.log_metric(state.parent_run_id, "failed_trials", failed)
    client.set_terminated(state.parent_run_id, status="FINISHED")
    state.status = "finished"
    state.save(home)
    return SweepSummary(
        sweep_id=state.sweep_id,
        experiment=spec.benchmark,
        tracking_uri=plan.tracking_uri,
        parent_run_id=state.parent_run_id,
        completed=completed,
        failed=failed,
        best=best,
        leaderboard=board["rows"],
        artifact_uri=board["artifact_uri"],
        failures=failures,
        objectives=[f"{o.metric}:{o.mode}" for o in spec.objectives],
        pareto=pareto,
    )


EXPERIMENT = "trials"  # the folder of a sweep's one Tune experiment, under its sweep id


def _run_experiment(
    plan: Plan,
    state: SweepState,
    storage: optuna.storages.BaseStorage,
    data: Dataset,
    progress_key: str,
    resume: bool,
) -> None:
    """Every strategy's trials in one Tune experiment (or the rest of it, on resume)."""
    spec = plan.spec
    bases = {sp.name: base_trial(spec, sp.spec) for sp in plan.strategies}
    fn = tune.with_resources(
        tune.with_parameters(trainable, data=data, bases=bases, export_weights=spec.export_weights),
        {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu},
    )
    root = f"{plan.storage_root}/{state.sweep_id}"
    path = f"{root}/{EXPERIMENT}"
    if resume and tune.Tuner.can_restore(path):
        tuner = tune.Tuner.restore(path, trainable=fn, resume_unfinished=True, resume_errored=False)
    else:
        if "://" not in path and Path(path).exists():
            shutil.rmtree(path)  # a start that never got as far as a restorable state
        tuner = _new_tuner(plan, state, storage, fn, root, progress_key)
    # Tune prints its own tables on stdout; bitsweep's output is its own, so they go to stderr.
    with contextlib.redirect_stdout(sys.stderr):
        tuner.fit()
    for sp in plan.strategies:
        _drop_lost_runs(plan, state, sp.name)
        _fail_lost_study_trials(storage, f"{state.sweep_id}/{sp.name}")


def _fail_lost_study_trials(storage: optuna.storages.BaseStorage, study_name: str) -> None:
    """Mark FAIL the Optuna trials of a lost Tune trial, which would stay RUNNING forever.

    Called once the strategy's experiment has ended, when every trial Tune knows has been told.
    """
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        return  # nothing was searched: the trials were seed replicates
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)


def _drop_lost_runs(plan: Plan, state: SweepState, strategy: str) -> None:
    """Delete the runs of trials that Tune lost when the sweep was killed.

    A trial started less than one experiment snapshot before a kill is unknown to the restored
    experiment: Tune runs a new trial in its place, and the old run would stay RUNNING forever.
    Once the strategy's experiment has ended, every run still RUNNING is such a run; it is
    deleted (MLflow keeps deleted runs restorable) with a tag saying why.
    """
    client = MlflowClient(plan.tracking_uri)
    lost = _trial_runs(
        client, state.experiment_id, state.sweep_id, strategy=strategy, status="RUNNING"
    )
    for run in lost:
        log.warning("trial %s was lost when the sweep stopped; its run is deleted", run.info.run_id)
        client.set_tag(run.info.run_id, "bitsweep.lost", "started before the sweep was killed")
        client.set_terminated(run.info.run_id, status="KILLED")
        client.delete_run(run.info.run_id)


def _new_tuner(
    plan: Plan,
    state: SweepState,
    storage: optuna.storages.BaseStorage,
    fn: Any,
    root: str,
    progress_key: str,
) -> tune.Tuner:
    spec = plan.spec
    metrics = [o.metric for o in spec.objectives]
    modes: list[str] = [o.mode for o in spec.objectives]
    metric: str | list[str] = metrics if len(metrics) > 1 else metrics[0]
    mode: str | list[str] = modes if len(modes) > 1 else modes[0]
    searches: dict[str, StrategySearch | None] = {}
    for sp in plan.strategies:
        # Nothing to search: the strategy's trials are replicates over seeds.
        searches[sp.name] = (
            StrategySearch(
                space=ConstrainedSpace(sp.name, sp.space, dict(sp.spec.params)),
                metric=metric,
                mode=mode,
                sampler=_sampler(spec, sp.trials),
                study_name=f"{state.sweep_id}/{sp.name}",
                storage=storage,
            )
            if sp.space
            else None
        )
    searcher = SweepSearcher(
        searches=searches,
        budgets={sp.name: sp.trials for sp in plan.strategies},
        seeds={sp.name: [spec.seed + k for k in range(sp.trials)] for sp in plan.strategies},
        metric=metric,
        mode=mode,
    )
    scheduler = None
    if spec.early_stopping.enabled:
        scheduler = PerStrategyScheduler(
            {
                sp.name: ASHAScheduler(
                    time_attr="training_iteration",
                    metric="val_accuracy",
                    mode="max",
                    max_t=spec.epochs + 1,
                    grace_period=spec.early_stopping.grace_period,
                    reduction_factor=spec.early_stopping.reduction_factor,
                )
                for sp in plan.strategies
            }
        )
    loggers = {
        sp.name: _strategy_logger(plan, state, sp, progress_key, metrics[0])
        for sp in plan.strategies
    }
    return tune.Tuner(
        fn,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=sum(sp.trials for sp in plan.strategies),
            max_concurrent_trials=spec.max_concurrent_trials,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=EXPERIMENT,
            storage_path=root,
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            callbacks=[StrategyCallbacks(loggers)],
            verbose=0,
        ),
    )


def _strategy_logger(
    plan: Plan, state: SweepState, sp: StrategyPlan, progress_key: str, objective: str
) -> SweepLogger:
    spec = plan.spec
    origin = strategy_origin(sp.name)
    return SweepLogger(
        tracking_uri=plan.tracking_uri,
        progress_key=progress_key,
        objective=objective,
        experiment_id=state.experiment_id,
        parent_run_id=state.parent_run_id,
        sweep_id=state.sweep_id,
        strategy=sp.name,
        tags={
            "bitsweep.sweep_id": state.sweep_id,
            "bitsweep.dataset": spec.dataset,
            "bitsweep.model": spec.model,
            "bitsweep.version": bitsweep_version(),
            "bitsweep.strategy_distribution": origin.distribution,
            "bitsweep.strategy_version": origin.version,
        },
        base=base_trial(spec, sp.spec),
        export_weights=spec.export_weights,
        optuna_url=plan.optuna_url if sp.space else None,
        inputs=[plan.dataset_input],
        study_name=f"{state.sweep_id}/{sp.name}",
    )


class StrategyCallbacks(tune.Callback):
    """Hands each trial's events to the logger of its strategy."""

    def __init__(self, loggers: dict[str, SweepLogger]) -> None:
        self.loggers = loggers

    def _of(self, trial: Any) -> SweepLogger:
        name, _ = split_config(trial.config)
        return self.loggers[name or ""]

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._of(trial).on_trial_start(iteration, trials, trial, **info)

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        self._of(trial).on_trial_result(iteration, trials, trial, result, **info)

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._of(trial).on_trial_complete(iteration, trials, trial, **info)

    def on_trial_recover(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._of(trial).on_trial_recover(iteration, trials, trial, **info)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._of(trial).on_trial_error(iteration, trials, trial, **info)


def _trial_runs(
    client: MlflowClient,
    experiment_id: str,
    sweep_id: str,
    *,
    strategy: str | None = None,
    status: str | None = None,
) -> list[Any]:
    """The trial runs of a sweep, optionally of one strategy and in one status."""
    from runners.tracking import q

    flt = f"tags.`bitsweep.sweep_id` = {q(sweep_id)} and tags.`bitsweep.kind` = 'trial'"
    if strategy is not None:
        flt += f" and tags.`bitsweep.strategy` = {q(strategy)}"
    if status is not None:
        flt += f" and attributes.status = {q(status)}"
    return list(client.search_runs([experiment_id], filter_string=flt, max_results=10000))


def _count_finished(
    client: MlflowClient, state: SweepState, strategy: str, progress: Progress
) -> None:
    runs = _trial_runs(client, state.experiment_id, state.sweep_id, strategy=strategy)
    p = progress.strategies[strategy]
    p.done = sum(1 for r in runs if r.info.status == "FINISHED")
    p.failed = sum(1 for r in runs if r.info.status == "FAILED")
    vals = [
        r.data.metrics[progress.objective] for r in runs if progress.objective in r.data.metrics
    ]
    if vals:
        p.best = max(vals) if progress.mode == "max" else min(vals)
    progress.changed()


__all__ = ["Plan", "SpecError", "SweepSummary", "plan_sweep", "run_sweep"]

"""The MLflow records of a sweep, written from here alone: the experiment, the sweep's parent
run, a child run per trial (through one `TrialLogger` per strategy), and at the end the
leaderboard, the Pareto plot and the summary."""

from __future__ import annotations

import json
import logging
import secrets
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray import tune

from runners.sweep.artifacts import log_leaderboard
from runners.sweep.plan import Plan, StrategyPlan, base_trial
from runners.sweep.progress import Progress
from runners.sweep.retry import retrying, retrying_client
from runners.sweep.state import SweepState
from runners.sweep.tracking import (
    TrialLogger,
    bitsweep_version,
    describe_experiment,
    ensure_experiment,
    set_tracking,
)
from runners.sweep.worker import split_config
from schemas.names import Phase, Tag, literal, tag_filter
from schemas.secrets import masked
from strategies import strategy_origin

log = logging.getLogger(__name__)


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
    selection: str = ""
    """How the board was measured, in words (its title's tail)."""
    experiment_id: str = ""

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
            "tracking_uri": masked(self.tracking_uri),
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


class SweepLogger(TrialLogger):
    """The trial logger of one strategy of a sweep.

    Tune pickles its callbacks into the experiment state and a resumed sweep runs the
    unpickled copies: the MLflow client is made again from the tracking URI.
    """

    def __init__(self, *, tracking_uri: str, **kw: Any) -> None:
        super().__init__(client=retrying_client(tracking_uri), **kw)
        self.tracking_uri = tracking_uri

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "client": None, "_optuna": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.client = retrying_client(self.tracking_uri)


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


class SweepRecord:
    """The sweep's experiment in MLflow, and everything a sweep writes there."""

    def __init__(self, plan: Plan) -> None:
        spec = plan.spec
        self.plan = plan
        self.client = retrying(set_tracking(plan.tracking_uri))
        self.experiment_id = ensure_experiment(self.client, spec.benchmark, plan.artifact_root)
        describe_experiment(self.client, self.experiment_id, dataset=spec.dataset, model=spec.model)

    # -- the parent run ------------------------------------------------------------------------

    def start(self, sweep_id: str | None) -> SweepState:
        """Create the sweep's parent run (with its spec, params and dataset): a new state."""
        spec, client = self.plan.spec, self.client
        sweep_id = (
            sweep_id or f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
        )
        parent = client.create_run(
            self.experiment_id,
            run_name=sweep_id,
            tags={
                Tag.KIND: "sweep",
                Tag.SWEEP_ID: sweep_id,
                Tag.DATASET: spec.dataset,
                Tag.MODEL: spec.model,
                Tag.VERSION: bitsweep_version(),
                Tag.STRATEGIES: ",".join(s.name for s in spec.strategies),
                Tag.OBJECTIVES: ",".join(f"{o.metric}:{o.mode}" for o in spec.objectives),
                Tag.SELECTION: ",".join(f"{o.metric}:{o.mode}" for o in spec.objectives),
                Tag.CONFIRM_SEEDS: str(spec.confirmation.seeds if spec.confirmation.enabled else 0),
            },
        )
        run_id = parent.info.run_id
        client.log_inputs(run_id, datasets=[self.plan.dataset_input])
        for k, v in {
            "name": spec.name,
            "epochs": spec.epochs,
            "trials_per_strategy": spec.trials_per_strategy,
            "seed": spec.seed,
            "val_fraction": spec.val_fraction,
            "confirm_seeds": spec.confirmation.seeds if spec.confirmation.enabled else 0,
            "confirm_max_configs": spec.confirmation.max_configs,
        }.items():
            client.log_param(run_id, k, str(v))
        with tempfile.TemporaryDirectory() as tmp:
            p = Path(tmp) / "spec.json"
            p.write_text(spec.shown().model_dump_json(indent=2))
            client.log_artifact(run_id, str(p))
        return SweepState(
            sweep_id=sweep_id,
            spec=json.loads(spec.model_dump_json()),
            experiment_id=self.experiment_id,
            parent_run_id=run_id,
            tracking_uri=self.plan.tracking_uri,
            optuna_url=self.plan.optuna_url,
            strategies={s.name: "pending" for s in self.plan.strategies},
        )

    def reopen(self, state: SweepState) -> None:
        """Mark a resumed sweep's parent run RUNNING again."""
        self.client.update_run(state.parent_run_id, status="RUNNING")

    # -- trial runs ----------------------------------------------------------------------------

    def callbacks(self, state: SweepState) -> StrategyCallbacks:
        """The Tune callback that logs each trial as a child run of the parent run."""
        return StrategyCallbacks({sp.name: self._logger(state, sp) for sp in self.plan.strategies})

    def _logger(self, state: SweepState, sp: StrategyPlan) -> SweepLogger:
        spec = self.plan.spec
        origin = strategy_origin(sp.name)
        return SweepLogger(
            tracking_uri=self.plan.tracking_uri,
            experiment_id=state.experiment_id,
            parent_run_id=state.parent_run_id,
            sweep_id=state.sweep_id,
            strategy=sp.name,
            tags={
                Tag.SWEEP_ID: state.sweep_id,
                Tag.DATASET: spec.dataset,
                Tag.MODEL: spec.model,
                Tag.VERSION: bitsweep_version(),
                Tag.STRATEGY_DISTRIBUTION: origin.distribution,
                Tag.STRATEGY_VERSION: origin.version,
            },
            base=base_trial(spec, sp.spec),
            export_weights=spec.export_weights,
            optuna_url=self.plan.optuna_url if sp.space else None,
            inputs=[self.plan.dataset_input],
            study_name=f"{state.sweep_id}/{sp.name}",
        )

    def trial_runs(
        self, state: SweepState, *, strategy: str | None = None, status: str | None = None
    ) -> list[Any]:
        """The trial runs of the sweep, optionally of one strategy and in one status."""
        flt = f"{tag_filter(Tag.SWEEP_ID, state.sweep_id)} and {tag_filter(Tag.KIND, 'trial')}"
        if strategy is not None:
            flt += f" and {tag_filter(Tag.STRATEGY, strategy)}"
        if status is not None:
            flt += f" and attributes.status = {literal(status)}"
        return list(
            self.client.search_runs([state.experiment_id], filter_string=flt, max_results=10000)
        )

    def count_into(self, progress: Progress, state: SweepState) -> None:
        """Count into `progress` the trials a resumed sweep already finished or failed."""
        for run in self.trial_runs(state):
            tags, status = run.data.tags, run.info.status
            if status not in ("FINISHED", "FAILED") or tags.get(Tag.STRATEGY) not in (
                progress.strategies
            ):
                continue
            confirmation = tags.get(Tag.PHASE) == Phase.CONFIRM
            progress.finish(
                tags[Tag.STRATEGY],
                tags.get(Tag.TRIAL_ID, run.info.run_id),
                failed=status == "FAILED",
                value=None if confirmation else run.data.metrics.get(progress.objective),
                confirmation=confirmation,
            )

    def interrupt(self, state: SweepState) -> None:
        """A sweep stopped by a signal: each trial run left RUNNING, and the parent run,
        marked KILLED. A resumed sweep finds each trial's run by its tags and continues it."""
        for run in self.trial_runs(state, status="RUNNING"):
            self.client.set_tag(run.info.run_id, Tag.INTERRUPTED, "true")
            self.client.set_terminated(run.info.run_id, status="KILLED")
        self.client.set_terminated(state.parent_run_id, status="KILLED")

    def drop_lost_runs(self, state: SweepState) -> None:
        """Delete the runs of trials that Tune lost when the sweep was killed.

        A trial started less than one experiment snapshot before a kill is unknown to the
        restored experiment: Tune runs a new trial in its place, and the old run would stay
        RUNNING forever. Once the experiment has ended, every run still RUNNING is such a run;
        it is deleted (MLflow keeps deleted runs restorable) with a tag saying why.
        """
        for run in self.trial_runs(state, status="RUNNING"):
            log.warning(
                "trial %s was lost when the sweep stopped; its run is deleted", run.info.run_id
            )
            self.client.set_tag(run.info.run_id, Tag.LOST, "started before the sweep was killed")
            self.client.set_terminated(run.info.run_id, status="KILLED")
            self.client.delete_run(run.info.run_id)

    # -- the end -------------------------------------------------------------------------------

    def finish(self, state: SweepState) -> SweepSummary:
        """Log the leaderboard, the Pareto plot and the trial counts to the parent run, mark it
        FINISHED, and return the summary."""
        spec, client = self.plan.spec, self.client
        strategies = [s.name for s in self.plan.strategies]
        board = log_leaderboard(
            client,
            state.experiment_id,
            state.parent_run_id,
            title=f"{spec.benchmark}: test accuracy against weight memory",
            sweep_id=state.sweep_id,
        )
        runs = self.trial_runs(state)
        finished = [r for r in runs if r.info.status == "FINISHED"]
        failed_runs = [r for r in runs if r.info.status == "FAILED"]
        failures = [
            {
                "run_id": r.info.run_id,
                "strategy": r.data.tags.get(Tag.STRATEGY, ""),
                "trial_id": r.data.tags.get(Tag.TRIAL_ID, ""),
                "error": r.data.tags.get(Tag.ERROR, ""),
            }
            for r in failed_runs
        ]
        best: dict[str, dict[str, Any]] = {}
        pareto: dict[str, list[dict[str, Any]]] = {name: [] for name in strategies}
        for row in board["rows"]:
            entry = {"run_id": row["run_id"], "metrics": numbers(row)}
            best.setdefault(row["strategy"], entry)
            pareto.setdefault(row["strategy"], []).append(entry)
        if len(spec.objectives) == 1:
            pareto = {}
        client.log_metric(state.parent_run_id, "completed_trials", len(finished))
        client.log_metric(state.parent_run_id, "failed_trials", len(failed_runs))
        client.set_terminated(state.parent_run_id, status="FINISHED")
        return SweepSummary(
            sweep_id=state.sweep_id,
            experiment=spec.benchmark,
            tracking_uri=self.plan.tracking_uri,
            parent_run_id=state.parent_run_id,
            completed=len(finished),
            failed=len(failed_runs),
            best=best,
            leaderboard=board["rows"],
            artifact_uri=board["artifact_uri"],
            failures=failures,
            objectives=[f"{o.metric}:{o.mode}" for o in spec.objectives],
            pareto=pareto,
            selection=board["board"].title().split(": ", 1)[-1],
            experiment_id=state.experiment_id,
        )


def numbers(row: dict[str, Any]) -> dict[str, float]:
    """The numbers of a board row (its metrics in a summary)."""
    return {
        k: float(v)
        for k, v in row.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and k != "rank"
    }


__all__ = ["StrategyCallbacks", "SweepLogger", "SweepRecord", "SweepSummary"]

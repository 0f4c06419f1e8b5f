"""The searcher and the scheduler of a sweep's one Tune experiment.

All strategies of a spec run in one experiment, their trials interleaved, so that a sweep fills
the cluster by itself. Each strategy keeps its own Optuna study (its own space and sampler
state) behind `SweepSearcher`, which hands Tune the next trial of the strategy that has issued
the fewest so far, within each strategy's budget: no strategy waits for another to finish.
`PerStrategyScheduler` gives each strategy its own ASHA brackets, so early stopping compares a
trial only with trials of its own strategy. A trial's Tune config carries its strategy under
`STRATEGY_KEY`.
"""

from __future__ import annotations

import logging
import pickle
import threading
import warnings
from dataclasses import dataclass
from typing import Any

import optuna
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from runners.board.selection import select
from runners.sweep.plan import Plan
from runners.sweep.space import ConstrainedSpace, SpecError, check_params
from runners.sweep.tracking import TUNE_TRIAL_ATTR
from runners.sweep.worker import split_config
from schemas.names import CONFIRMS_KEY, FINAL_KEY, STRATEGY_KEY, Tag
from schemas.sweep import SweepSpec
from strategies import get_strategy

log = logging.getLogger(__name__)

__all__ = ["STRATEGY_KEY", "split_config"]  # the worker's, named here for the sweep's readers


class StrategySearch(OptunaSearch):
    """OptunaSearch over a strategy's `ConstrainedSpace`, told only of finished trials, and
    never handing Tune a combination the strategy refuses.

    Per-epoch results would become Optuna intermediate values, which nothing reads here
    (Tune turns Optuna's pruner off; early stopping is ASHA's job). Skipping them also keeps a
    trial that finished before a sweep stopped, and reports again on resume, from writing to
    an Optuna trial that is already complete.

    The space's ranges follow the strategy's relations; a point that a validator of its own
    still refuses is told to Optuna as FAIL (with the reason as a user attribute) and drawn
    again, so it is never trained.
    """

    MAX_DRAWS = 50
    MAX_REPEATS = 20

    def __init__(self, *, space: ConstrainedSpace, **kw: Any) -> None:
        super().__init__(space=space, **kw)
        self._strategy = space.strategy
        self._fixed = space.fixed

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        return None

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is not None and result and not error and trial_id not in self._completed_trials:
            assert self._ot_study is not None
            frozen = self._ot_study.get_trials(deepcopy=False)[ot_trial.number]
            if frozen.state.is_finished():
                self._continued(trial_id, frozen, result)
                return
        super().on_trial_complete(trial_id, result=result, error=error)

    def _continued(self, trial_id: str, frozen: Any, result: dict[str, Any]) -> None:
        """A trial failed when its sweep was interrupted (Optuna cannot reopen it) has finished
        on resume: its result is told as a new Optuna trial of the same params, which names
        the one it continues.

        A trial that finished just before its sweep was stopped (after Tune's last snapshot
        of the experiment, so that the resumed experiment runs its end again) was told
        already: it is not told twice."""
        assert self._ot_study is not None
        metrics = self._metric if isinstance(self._metric, list) else [self._metric]
        values = [result.get(m) for m in metrics]
        told = any(
            t.user_attrs.get(TUNE_TRIAL_ATTR) == trial_id
            for t in self._ot_study.get_trials(
                deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)
            )
        )
        if not told and all(isinstance(v, int | float) for v in values):
            self._ot_study.add_trial(
                optuna.trial.create_trial(
                    params=frozen.params,
                    distributions=frozen.distributions,
                    values=[float(v) for v in values],
                    user_attrs={**frozen.user_attrs, Tag.CONTINUES_TRIAL: frozen.number},
                )
            )
        self._completed_trials.add(trial_id)

    def _setup_study(self, mode: str | list[str]) -> None:
        super()._setup_study(mode)
        assert self._ot_study is not None
        metric = self._metric
        with warnings.catch_warnings():  # Optuna calls naming metrics "experimental": it works
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self._ot_study.set_metric_names(list(metric) if isinstance(metric, list) else [metric])

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        cls = get_strategy(self._strategy)
        for _ in range(self.MAX_DRAWS):
            config = super().suggest(trial_id)
            if not isinstance(config, dict):
                return config
            try:
                check_params(cls, {**self._fixed, **config}, where="params")
            except SpecError as e:
                self._redraw(trial_id, f"{e.field}: {e.reason}")
                log.info("%s: drawn point refused (%s); drawing again", self._strategy, e)
                continue
            repeat = self._repeat_of(trial_id, config)
            if repeat is not None:
                self._redraw(trial_id, f"repeats trial {repeat}")
                continue
            self._ot_trials[trial_id].set_user_attr(TUNE_TRIAL_ATTR, trial_id)
            return config
        raise SpecError(
            "search", f"{self.MAX_DRAWS} points drawn for {self._strategy} were all refused"
        )

    def _redraw(self, trial_id: str, why: str) -> None:
        assert self._ot_study is not None
        ot_trial = self._ot_trials.pop(trial_id)
        ot_trial.set_user_attr(Tag.REFUSED, why)
        self._ot_study.tell(ot_trial, state=optuna.trial.TrialState.FAIL)

    def _repeat_of(self, trial_id: str, config: dict[str, Any]) -> int | None:
        """The number of an earlier trial (not a refused one) drawn with exactly `config`; a
        sampler may repeat a point (NSGA-II's crossover without mutation), which would spend a
        trial learning nothing. Once the space seems exhausted, repeats are allowed."""
        assert self._ot_study is not None
        this = self._ot_trials[trial_id].number
        trials = self._ot_study.get_trials(deepcopy=False)
        refused = sum(1 for t in trials if "repeats trial" in t.user_attrs.get(Tag.REFUSED, ""))
        if refused >= self.MAX_REPEATS:
            return None
        for t in trials:
            if t.number != this and Tag.REFUSED not in t.user_attrs and t.params == config:
                return t.number
        return None


class SweepSearcher(Searcher):
    """One searcher for all strategies of a sweep: `searches[name]` draws that strategy's
    params (None: nothing to search, its trials are replicates over `seeds[name]`), and
    `budgets[name]` bounds its trials. The next trial goes to the strategy that has issued the
    fewest (ties by the spec's order), so strategies share the cluster from the first trial.

    With `confirm`, once every search trial of a strategy has ended, its selected configs
    (`runners.board.selection.select` on the validation objectives) are issued again, one trial
    per fresh seed, each config carrying `CONFIRMS_KEY`: the Tune trial it confirms. They run
    beside the other strategies' trials and are never told to Optuna. The searcher (and so
    what it has issued) is saved with the experiment: a resumed sweep issues each once.
    """

    def __init__(
        self,
        *,
        searches: dict[str, StrategySearch | None],
        budgets: dict[str, int],
        seeds: dict[str, list[int]],
        metric: str | list[str],
        mode: str | list[str],
        confirm: Confirm | None = None,
    ) -> None:
        # The base class takes one metric and mode; each strategy's search holds the objectives.
        super().__init__()
        self.objectives = (metric, mode)
        self.searches = searches
        self.budgets = budgets
        self.seeds = seeds
        self.confirm = confirm
        self.issued: dict[str, int] = dict.fromkeys(budgets, 0)
        self.owner: dict[str, str] = {}  # Tune trial id -> strategy, search trials
        self.drawn: dict[str, dict[str, Any]] = {}  # search trial id -> its config
        self.ended: dict[str, dict[str, dict[str, Any] | None]] = {n: {} for n in budgets}
        self.selected: dict[str, list[str]] = {}  # strategy -> confirmed search trial ids
        self.queue: dict[str, list[dict[str, Any]]] = {}  # strategy -> confirmations to issue
        self.confirming: dict[str, str] = {}  # confirmation trial id -> strategy

    def set_search_properties(
        self, metric: str | None, mode: str | None, config: dict[str, Any], **spec: Any
    ) -> bool:
        return True  # each strategy's search was built with its space, metric and mode

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        confirmation = self._next_confirmation(trial_id)
        if confirmation is not None:
            return confirmation
        waiting = False
        for name in sorted(self.budgets, key=lambda n: self.issued[n]):
            if self.issued[name] >= self.budgets[name]:
                continue
            search = self.searches[name]
            if search is None:
                config: dict[str, Any] | str | None = {"seed": self.seeds[name][self.issued[name]]}
            else:
                config = search.suggest(trial_id)
            if config is None:
                waiting = True  # this strategy cannot draw now; another may
                continue
            if not isinstance(config, dict):  # the strategy's search is exhausted
                self.budgets[name] = self.issued[name]
                continue
            self.issued[name] += 1
            self.owner[trial_id] = name
            self.drawn[trial_id] = dict(config)
            return {STRATEGY_KEY: name, **config}
        if self.confirm is not None and any(self.queue.get(n, True) for n in self.budgets):
            waiting = True  # a strategy still searches, or has confirmations to issue
        # Tune's own searchers end a search by returning the FINISHED marker string.
        return None if waiting else Searcher.FINISHED  # type: ignore[return-value]

    def search_ended(self, name: str) -> bool:
        """Whether every search trial of `name` has been issued and has ended."""
        return (
            self.issued[name] >= self.budgets[name] and len(self.ended[name]) >= self.issued[name]
        )

    def _next_confirmation(self, trial_id: str) -> dict[str, Any] | None:
        if self.confirm is None:
            return None
        for name in self.budgets:
            if name not in self.queue:
                if not self.search_ended(name):
                    continue
                self._select(name)
            if self.queue[name]:
                self.confirming[trial_id] = name
                return {STRATEGY_KEY: name, **self.queue[name].pop(0)}
        return None

    def _select(self, name: str) -> None:
        """Select `name`'s configs on its finished search trials' validation results and queue
        one confirmation per config and fresh seed."""
        assert self.confirm is not None
        mine = [t for t, n in self.owner.items() if n == name]
        candidates = [
            (t, r) for t in mine if (r := self.ended[name].get(t)) is not None and r.get(FINAL_KEY)
        ]
        cap = self.confirm.max_configs if len(self.confirm.objectives) > 1 else 1
        chosen = select(candidates, self.confirm.objectives, cap)
        self.selected[name] = chosen
        self.queue[name] = [
            {**self.drawn[t], "seed": seed, CONFIRMS_KEY: t}
            for t in chosen
            for seed in self.confirm.seeds
        ]
        log.info("%s: confirming %s over seeds %s", name, chosen, self.confirm.seeds)

    def _search_of(self, trial_id: str) -> StrategySearch | None:
        name = self.owner.get(trial_id)
        return None if name is None else self.searches[name]

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        return None  # the strategies' searches are told of finished trials only

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        if trial_id in self.confirming:
            return  # a confirmation: nothing to learn from it, nothing to tell Optuna
        name = self.owner.get(trial_id)
        if name is not None:
            self.ended[name][trial_id] = None if error or not result else dict(result)
        search = self._search_of(trial_id)
        if search is not None:
            search.on_trial_complete(trial_id, result=result, error=error)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__.copy(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))


class PerStrategyScheduler(TrialScheduler):
    """One scheduler per strategy (ASHA in a sweep with early stopping), each seeing only the
    trials of its strategy, so that a strong strategy's trials never stop a weaker one's."""

    def __init__(self, schedulers: dict[str, TrialScheduler]) -> None:
        super().__init__()
        self.schedulers = schedulers
        self._first = next(iter(schedulers.values()))
        # Confirmation trials run every epoch: early stopping is a choice, made in the search.
        self.confirmations = FIFOScheduler()

    def _of(self, trial: Trial) -> TrialScheduler:
        if CONFIRMS_KEY in trial.config:
            return self.confirmations
        name, _ = split_config(trial.config)
        return self.schedulers.get(name or "", self._first)

    @property
    def supports_buffered_results(self) -> bool:
        return all(s.supports_buffered_results for s in self.schedulers.values())

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        schedulers = [*self.schedulers.values(), self.confirmations]
        return all(s.set_search_properties(metric, mode, **spec) for s in schedulers)

    def on_trial_add(self, tune_controller: Any, trial: Trial) -> None:
        self._of(trial).on_trial_add(tune_controller, trial)

    def on_trial_error(self, tune_controller: Any, trial: Trial) -> None:
        self._of(trial).on_trial_error(tune_controller, trial)

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict[str, Any]) -> str:
        return self._of(trial).on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller: Any, trial: Trial, result: dict[str, Any]) -> None:
        self._of(trial).on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller: Any, trial: Trial) -> None:
        self._of(trial).on_trial_remove(tune_controller, trial)

    def choose_trial_to_run(self, tune_controller: Any) -> Trial | None:
        # Every strategy's scheduler is first-in first-out in what it starts: ask the first.
        return self._first.choose_trial_to_run(tune_controller)

    def debug_string(self) -> str:
        return "; ".join(f"{n}: {s.debug_string()}" for n, s in self.schedulers.items())


# -- the searcher and scheduler of a sweep ----------------------------------------------------


@dataclass(frozen=True)
class Confirm:
    """A sweep's confirmation: the fresh `seeds`, the validation `objectives` that select, and
    the most configs confirmed per strategy when there are several objectives."""

    seeds: list[int]
    objectives: list[tuple[str, str]]
    max_configs: int

    @classmethod
    def of(cls, spec: SweepSpec) -> Confirm | None:
        if not spec.confirmation.enabled:
            return None
        return cls(
            seeds=spec.confirmation_seeds(),
            objectives=[(o.metric, o.mode) for o in spec.objectives],
            max_configs=spec.confirmation.max_configs,
        )

    def trials(self) -> int:
        """The most confirmation trials of one strategy."""
        configs = self.max_configs if len(self.objectives) > 1 else 1
        return configs * len(self.seeds)


def max_trials(plan: Plan) -> int:
    """The most trials of a sweep: every strategy's search, and its confirmations."""
    spec = plan.spec
    c = spec.confirmation
    extra = (c.max_configs if len(spec.objectives) > 1 else 1) * c.seeds if c.enabled else 0
    return sum(sp.trials + extra for sp in plan.strategies)


def objectives(spec: SweepSpec) -> tuple[str | list[str], str | list[str]]:
    """(metric, mode) as Tune takes them: one of each, or lists for several objectives."""
    metrics = [o.metric for o in spec.objectives]
    modes: list[str] = [o.mode for o in spec.objectives]
    return (metrics if len(metrics) > 1 else metrics[0]), (modes if len(modes) > 1 else modes[0])


class NSGAIISampler(optuna.samplers.NSGAIISampler):
    """Optuna's NSGA-II, picklable again. Tune saves each searcher, sampler included, in the
    experiment's state; since Optuna 5.1 the genetic samplers hold a `threading.Lock`, which
    pickle refuses, so a sweep with several objectives failed at its start. The lock guards
    one process's threads; a copy restored elsewhere gets a lock of its own."""

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_thread_lock", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._thread_lock = threading.Lock()


def sampler_for(spec: SweepSpec, trials: int) -> optuna.samplers.BaseSampler:
    """The Optuna sampler of one strategy's study: the spec's, or for `auto` TPE with one
    objective and NSGA-II with several."""
    several = len(spec.objectives) > 1
    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=spec.seed)
    if spec.sampler == "nsga2" or (spec.sampler == "auto" and several):
        return NSGAIISampler(population_size=max(2, min(50, trials // 2)), seed=spec.seed)
    return optuna.samplers.TPESampler(seed=spec.seed)


def study_name(sweep_id: str, strategy: str) -> str:
    return f"{sweep_id}/{strategy}"


def sweep_searcher(
    plan: Plan, sweep_id: str, storage: optuna.storages.BaseStorage
) -> SweepSearcher:
    """The searcher of a sweep: one Optuna study per strategy with a space to search, seed
    replicates for a strategy without one, each within its trial budget."""
    spec = plan.spec
    metric, mode = objectives(spec)
    searches: dict[str, StrategySearch | None] = {
        sp.name: (
            StrategySearch(
                space=ConstrainedSpace(sp.name, sp.space, dict(sp.spec.params)),
                metric=metric,
                mode=mode,
                sampler=sampler_for(spec, sp.trials),
                study_name=study_name(sweep_id, sp.name),
                storage=storage,
            )
            if sp.space
            else None
        )
        for sp in plan.strategies
    }
    return SweepSearcher(
        searches=searches,
        budgets={sp.name: sp.trials for sp in plan.strategies},
        seeds={sp.name: [spec.seed + k for k in range(sp.trials)] for sp in plan.strategies},
        metric=metric,
        mode=mode,
        confirm=Confirm.of(spec),
    )


def sweep_scheduler(plan: Plan) -> PerStrategyScheduler | None:
    """ASHA per strategy on validation accuracy when the spec asks for early stopping."""
    spec = plan.spec
    if not spec.early_stopping.enabled:
        return None
    return PerStrategyScheduler(
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


def fail_lost_study_trials(storage: optuna.storages.BaseStorage, name: str) -> None:
    """Mark FAIL the Optuna trials of a lost Tune trial, which would stay RUNNING forever.

    Called once the sweep's experiment has ended, when every trial Tune knows has been told.
    """
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return  # nothing was searched: the trials were seed replicates
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)

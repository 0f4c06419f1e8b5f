"""The plan of a sweep: a spec validated against everything it names (strategies, ranges,
dataset, model, stores), before anything is written."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runners.engine.data import Dataset, DatasetError, load_dataset
from runners.engine.models import parameter_count
from runners.engine.trial import ConfigError, resolve
from runners.sweep.space import SpecError, strategy_space
from runners.sweep.stores import check_storage_path, check_store, default_uris
from runners.sweep.tracking import dataset_input
from schemas.home import Home, data_home
from schemas.names import HOME_ENV
from schemas.sweep import StrategySpec, SweepSpec
from schemas.trial import TrialConfig
from strategies.base import Search, Strategy

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
            parameter_count(  # on the meta device: a spec is checked without its memory
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
        artifact_root=Home(home).artifacts.as_uri(),
        storage_root=storage_root,
        dataset=dataset,
        strategies=plans,
    )


__all__ = ["HOME_ENV", "Plan", "StrategyPlan", "base_trial", "data_home", "plan_sweep"]

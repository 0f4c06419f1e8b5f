"""The strategy contract: how a quantization method plugs into bitsweep's training loop.

A strategy turns an ordinary torch model into one whose deployed weights take few values and
tells the trial runner how to train it. The runner calls the hooks in this order::

    strategy = S(S.Params(**params))
    strategy.validate_trial(epochs)                 # when the trial is resolved: may refuse
    model = strategy.prepare(model)                 # once, before the optimizer is built
    for epoch in range(epochs):
        for batch in epoch:
            loss = criterion(model(x), y)
            loss = loss + strategy.regularizer(model, loss)
            loss.backward(); optimizer.step()
            strategy.on_step(model, progress)       # after every optimizer step
        if strategy.on_epoch_end(model, progress):  # True asks for a fresh optimizer
            optimizer = build_optimizer(...)
    layers = strategy.export(model)                 # the deployed weights; metrics come from these

This module imports torch and pydantic only, so a strategy can be used in any torch loop.
"""

from __future__ import annotations

import inspect
import typing
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

import torch
from torch import nn

from schemas.trial import AugmentConfig, OptimizerConfig, ScheduleConfig
from strategies.exported import ExportedLayer
from strategies.layers import plain_copy
from strategies.params import Relation, Search, StrategyParams
from strategies.space import describe_params

DEFAULT_LR_SEARCH = Search(1e-4, 1e-1, log=True)
"""The learning-rate range every recipe searches unless it names its own `lr` range."""


@dataclass(frozen=True)
class Recipe:
    """A paper's training recipe: the defaults a trial uses unless the user overrides them.

    `model_options` are applied to a model only where the model accepts the option (an MLP
    takes `batch_norm`, a WRN has it always). `search` gives the ranges a sweep searches for
    the training knobs `lr`, `optimizer`, `weight_decay`, `momentum` and `batch_size`; the
    learning rate is searched over `DEFAULT_LR_SEARCH` unless `search` names `lr`.
    """

    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    batch_size: int = 128
    model_options: dict[str, Any] = field(default_factory=dict)
    search: dict[str, Search] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "search", {"lr": DEFAULT_LR_SEARCH, **self.search})


@dataclass
class Progress:
    """Where training is, passed to `on_step` and `on_epoch_end`."""

    epoch: int  # 0-based epoch in progress (or just ended in on_epoch_end)
    epochs: int
    step: int  # optimizer steps taken so far in the trial
    steps_per_epoch: int
    lr: float = 0.0
    loss: float = float("nan")

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    @property
    def fraction(self) -> float:
        """Share of the trial's optimizer steps done, in [0, 1]."""
        return min(1.0, self.step / max(1, self.total_steps))


P = TypeVar("P", bound=StrategyParams)


class Strategy(ABC, Generic[P]):
    """Base class of every strategy. Subclasses set the class attributes and override hooks.

    Write `class MyStrategy(Strategy[MyParams])` to have `self.params` typed as `MyParams`;
    `Params` is then set from the type argument. A nested `class Params(StrategyParams)` works
    as well. `export` is abstract: every strategy says what it deploys.

    Class attributes:
        name: the registry name (set by `register_strategy`).
        paper: title and arXiv id of the paper, or "baseline".
        summary: one line for `bitsweep strategies`.
        fidelity: what follows the paper exactly and what was reconstructed.
        Params: a `StrategyParams` subclass; its fields are the strategy's hyperparameters.
        recipe: the paper's training recipe, used where the trial config leaves a field unset.
    """

    name: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    fidelity: ClassVar[str] = ""
    Params: ClassVar[type[StrategyParams]] = StrategyParams
    recipe: ClassVar[Recipe] = Recipe()

    params: P

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "Params" in cls.__dict__:
            return
        for base in getattr(cls, "__orig_bases__", ()):
            if typing.get_origin(base) is Strategy:
                (arg,) = typing.get_args(base)
                if isinstance(arg, type) and issubclass(arg, StrategyParams):
                    cls.Params = arg

    def __init__(self, params: P | None = None) -> None:
        self.params = params if params is not None else self.Params()  # type: ignore[assignment]

    # -- hooks -----------------------------------------------------------------------------

    def prepare(self, model: nn.Module) -> nn.Module:
        """Called once on the float model, before the optimizer is built.

        Attach the weight transform to the layers the strategy quantizes (prefer
        `torch.nn.utils.parametrize`) and return the model. May replace latent tensors,
        so the optimizer must be built from the returned model's parameters.
        """
        return model

    def validate_trial(self, epochs: int) -> None:
        """Called when a trial is resolved, before anything is built or trained: raise a
        `schemas.errors.FieldError` naming the param when the strategy cannot run a trial of
        `epochs` epochs (a schedule that does not fit). Default: any length is fine."""

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        """Called when an optimizer is built: the parameter groups it optimizes.

        Default: every parameter that requires a gradient, one group.
        """
        return [{"params": [p for p in model.parameters() if p.requires_grad]}]

    def regularizer(self, model: nn.Module, loss: torch.Tensor) -> torch.Tensor | None:
        """Called every training step after the task loss: an extra loss term, or None.

        `loss` is the task loss of the batch (for penalties rescaled to a fraction of it).
        """
        return None

    def on_step(self, model: nn.Module, progress: Progress) -> None:
        """Called after every optimizer step (bit-depth updates, annealing)."""

    def on_epoch_end(self, model: nn.Module, progress: Progress) -> bool:
        """Called after every epoch. Return True to have the runner build a fresh optimizer."""
        return False

    def selectable(self, progress: Progress) -> bool:
        """Called after each epoch: may this epoch's model be selected as the trial's best?

        Default True. A strategy whose deployed form is not final yet (weights still being
        fixed, float pre-training) returns False until it is.
        """
        return True

    @abstractmethod
    def export(self, model: nn.Module) -> dict[str, ExportedLayer]:
        """The deployed weights of every Linear and Conv layer, keyed by module name.

        Called for evaluation and metrics at the end of a trial (and of epochs where the
        deployed and the training forward differ). A layer the strategy leaves in float is
        exported too, as `ExportedLayer.float32(weight)`, so its cost is counted. Must not
        change the model; the model in eval mode must compute with exactly these weights.
        """

    def deploy(self, model: nn.Module) -> nn.Module:
        """Return a plain float model computing with exactly the exported weights.

        The runner evaluates this model for test accuracy. Default: a copy with every
        parametrization removed and each quantized layer's weight set to its export.
        """
        return plain_copy(model, self.export(model))

    def extra_metrics(self, model: nn.Module) -> dict[str, float]:
        """Numbers the strategy reports beside the common metrics (e.g. mean learned bits)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """State of the strategy itself (schedules, bit-depths) that a checkpoint must keep."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned, after `prepare` on a fresh model."""

    # -- description ----------------------------------------------------------------------

    @classmethod
    def describe(cls) -> dict[str, Any]:
        """A JSON-ready description: paper, fidelity, params with bounds and search ranges."""
        r = cls.recipe
        return {
            "name": cls.name,
            "paper": cls.paper,
            "summary": cls.summary,
            "fidelity": cls.fidelity,
            "doc": inspect.cleandoc(cls.__doc__ or ""),
            "params": describe_params(cls.Params),
            "relations": [str(rel) for rel in cls.Params.relations],
            "recipe": {
                "optimizer": r.optimizer.model_dump(),
                "schedule": r.schedule.model_dump(),
                "augment": r.augment.model_dump(),
                "batch_size": r.batch_size,
                "model_options": dict(r.model_options),
                "search": {k: s.as_dict() for k, s in r.search.items()},
            },
        }


__all__ = [
    "DEFAULT_LR_SEARCH",
    "ExportedLayer",
    "Progress",
    "Recipe",
    "Relation",
    "Search",
    "Strategy",
    "StrategyParams",
]

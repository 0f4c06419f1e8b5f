"""Helpers shared by strategies: which layers are quantized, attaching weight transforms,
and the plain float copy of a model that computes with the exported weights."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from typing import TypeVar

import torch
from torch import nn
from torch.nn.utils import parametrize

from strategies.exported import ExportedLayer

M = TypeVar("M", bound=nn.Module)

QUANTIZED_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def quantizable_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Every Linear and Conv layer of `model`, by name, in definition order."""
    for name, module in model.named_modules():
        if isinstance(module, QUANTIZED_TYPES):
            yield name, module


def weight_of(module: nn.Module) -> torch.Tensor:
    """`module.weight` as a tensor (the transformed weight when a parametrization is attached)."""
    w = module.weight
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"{type(module).__name__} has no weight tensor")
    return w


def fan_in(weight: torch.Tensor) -> int:
    """Inputs feeding one output: in_features, or k*k*C_in for a convolution."""
    return int(weight[0].numel())


def he_std(weight: torch.Tensor, gain: float = 2.0) -> float:
    """The He-init standard deviation sqrt(gain / fan_in)."""
    return math.sqrt(gain / fan_in(weight))


def latent_weight(module: nn.Module) -> torch.Tensor:
    """The tensor the optimizer updates for `module.weight` (the parametrization's original)."""
    if parametrize.is_parametrized(module, "weight"):
        return module.parametrizations.weight.original  # type: ignore[union-attr,return-value]
    return module.weight  # type: ignore[return-value]


def attach(model: nn.Module, make: Callable[[str, nn.Module], nn.Module | None]) -> nn.Module:
    """Register `make(name, layer)` as the weight parametrization of every quantizable layer.

    `make` may return None to leave a layer in float. The layer keeps its class and its
    latent weight stays a Parameter (`layer.parametrizations.weight.original`).
    """
    for name, layer in list(quantizable_layers(model)):
        p = make(name, layer)
        if p is not None:
            parametrize.register_parametrization(layer, "weight", p, unsafe=True)
    return model


def parametrizations(model: nn.Module, kind: type[M]) -> Iterator[tuple[str, nn.Module, M]]:
    """(name, layer, transform) for each layer whose weight carries a transform of type `kind`."""
    for name, layer in quantizable_layers(model):
        if parametrize.is_parametrized(layer, "weight"):
            for p in layer.parametrizations.weight:  # type: ignore[union-attr]
                if isinstance(p, kind):
                    yield name, layer, p


def plain_copy(model: nn.Module, exported: dict[str, ExportedLayer]) -> nn.Module:
    """A deep copy of `model` with every parametrization removed and each exported layer's
    weight replaced by its deployed values: an ordinary float model, as deployed.

    `parametrize.remove_parametrizations` is not used on the copy: a deep copy shares the
    generated `Parametrized*` class with the original, and removing deletes the `weight`
    property from that shared class, which breaks the model still being trained. Each copied
    layer gets its original class back instead, with plain Parameters.
    """
    out = copy.deepcopy(model)
    for name, layer in out.named_modules():
        if not parametrize.is_parametrized(layer):
            continue
        values = {
            tensor: (
                exported[name].weight
                if tensor == "weight" and name in exported
                else getattr(layer, tensor)
            ).detach()
            for tensor in list(layer.parametrizations)  # type: ignore[union-attr]
        }
        originals = {t: layer.parametrizations[t].original for t in values}  # type: ignore[index]
        plain_class = parametrize.type_before_parametrizations(layer)
        del layer._modules["parametrizations"]
        layer.__class__ = plain_class
        for tensor, value in values.items():
            original = originals[tensor]
            setattr(
                layer,
                tensor,
                nn.Parameter(
                    value.to(original.device, original.dtype).clone(),
                    requires_grad=original.requires_grad,
                ),
            )
    for name, layer in quantizable_layers(out):
        if name in exported and not parametrize.is_parametrized(layer):
            w = weight_of(layer)
            if not torch.equal(w, exported[name].weight.to(w.device, w.dtype)):
                with torch.no_grad():
                    w.copy_(exported[name].weight.to(w.device, w.dtype))
    return out

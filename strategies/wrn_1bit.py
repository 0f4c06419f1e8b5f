"""1-bit weights with a constant per-layer scale (McDonnell, ICLR 2018): every conv and linear
weight is deployed as +-sqrt(2/fan_in), trained through an identity straight-through gradient."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

import torch
from pydantic import Field
from torch import nn

from schemas.trial import AugmentConfig, OptimizerConfig, ScheduleConfig
from strategies.base import ExportedLayer, Recipe, Search, Strategy, StrategyParams
from strategies.layers import (
    attach,
    fan_in,
    latent_weight,
    parametrizations,
)
from strategies.registry import register_strategy

# Numerator of the scale over sqrt(fan_in): He's sqrt(2), or 2 for plain CNNs (McDonnell 2018,
# arXiv 1802.08530).
SCALE_NUMERATOR: dict[str, float] = {"he": math.sqrt(2.0), "plain": 2.0}


def layer_scale(weight: torch.Tensor, kind: str = "he") -> float:
    """The constant deployed magnitude of a layer: sqrt(2/fan_in) ("he") or 2/sqrt(fan_in)."""
    return SCALE_NUMERATOR[kind] / math.sqrt(fan_in(weight))


class _ScaledSign(torch.autograd.Function):
    """Forward scale*sign(w); backward the identity, neither clipped nor multiplied by scale."""

    @staticmethod
    def forward(ctx: Any, w: torch.Tensor, scale: float) -> torch.Tensor:
        # copysign is ~10x faster than a comparison on CPU; +0 gives +scale and -0 gives
        # -scale, so the layer still holds exactly the two values +-scale.
        return torch.copysign(w.new_tensor(scale), w)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


class _Binarize(nn.Module):
    """The weight parametrization: latent float W -> scale * sign(W)."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return _ScaledSign.apply(w, self.scale)

    def extra_repr(self) -> str:
        return f"scale={self.scale:.6g}"


class WRN1BitParams(StrategyParams):
    scale: Annotated[
        Literal["he", "plain"],
        Field(
            description="deployed magnitude: 'he' = sqrt(2/fan_in) (the paper's, for nets "
            "with skip connections); 'plain' = 2/sqrt(fan_in) (the paper's for plain CNNs)"
        ),
        Search(choices=("he", "plain")),
    ] = "he"


@register_strategy("wrn_1bit")
class WRN1Bit(Strategy[WRN1BitParams]):
    """McDonnell, "Training wide residual networks for deployment using a single bit for each
    weight" (ICLR 2018, arXiv 1802.08530).

    Forward: W^ = s * sign(W) with the constant s = sqrt(2 / fan_in), the He-init std, never
    learned (`scale="plain"`: 2 / sqrt(fan_in)), so each layer holds exactly two values.
    Backward: the identity to the float W, neither clipped nor scaled by s. Every Conv and
    Linear is binarized, the first and the last included; SGD with momentum, weight decay and
    cosine warm restarts trains the float W.

    Paper, fidelity and every choice of bitsweep's: docs/strategies/wrn_1bit.md.
    """

    paper = (
        "Training wide residual networks for deployment using a single bit for each weight "
        "(McDonnell, ICLR 2018, arXiv 1802.08530)"
    )
    summary = "1-bit weights +-sqrt(2/fan_in), identity straight-through gradient, all layers"
    fidelity = (
        "faithful: forward, straight-through gradient, constant He scale, all layers, SGD "
        "recipe; bitsweep's: no augmentation by default, BatchNorm running averages, momentum "
        "kept at restarts (docs/strategies/wrn_1bit.md)"
    )

    # The paper's CIFAR augmentation, for users who train on CIFAR.
    PAPER_AUGMENT = AugmentConfig(crop_padding=4, flip=True)

    recipe = Recipe(
        optimizer=OptimizerConfig(name="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4),
        schedule=ScheduleConfig(name="cosine_restarts", t0=2, t_mult=2, eta_min=1e-4),
        augment=AugmentConfig(),
        batch_size=125,
        model_options={"bn_affine": False, "batch_norm": True, "bias": False},
        search={
            "lr": Search(0.01, 0.5, log=True),
            "weight_decay": Search(1e-5, 1e-3, log=True),
        },
    )

    def prepare(self, model: nn.Module) -> nn.Module:
        kind = self.params.scale
        return attach(
            model, lambda _name, layer: _Binarize(layer_scale(latent_weight(layer), kind))
        )

    def export(self, model: nn.Module) -> dict[str, ExportedLayer]:
        out: dict[str, ExportedLayer] = {}
        for name, layer, p in parametrizations(model, _Binarize):
            assert isinstance(p, _Binarize)
            with torch.no_grad():
                w = latent_weight(layer)
                out[name] = ExportedLayer.binary(p(w).detach().clone(), w, p.scale)
        return out

"""Binary weights trained with exact gradients: a deterministic, differentiable per-group power
map of the latent weights, annealed until it equals the deployed +-scale (reconstruction of
arXiv 2107.01400 from its abstract)."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

import torch
from pydantic import Field
from torch import nn

from schemas.trial import OptimizerConfig, ScheduleConfig
from strategies.base import ExportedLayer, Progress, Recipe, Search, Strategy, StrategyParams
from strategies.layers import attach, fan_in, latent_weight, parametrizations
from strategies.registry import register_strategy


class _PowerMap(torch.autograd.Function):
    """Rows g of a 2-D view: u = g / max|g|, t = scale * u * (u^2 + eps^2)^((p - 1) / 2).

    The backward is this function's exact derivative, the path through the row maximum
    included (checked by torch.autograd.gradcheck in the tests); written out by hand because
    autograd's generic one (an equality mask for amax, pow and div backwards) made a step
    three times slower on CPU. With r = (u^2 + eps^2)^((p-1)/2) and q = u^2 + eps^2:
        dt/du_j = scale * r_j * (eps^2 + p u_j^2) / q_j = scale * r_j * (p + eps^2 (1 - p) / q_j)
        dL/dg_j = (dL/du_j) / m,  plus at the maximum k: sign(g_k) * sum_j -(dL/du_j) u_j / m.
    (Where several entries tie for the maximum, the function has no derivative; they share
    the second term evenly, as the gradient of torch.amax does.)
    How it is computed, for speed on CPU, without changing the function:
    - the maximum is found without its index, as max(max g, -min g) (`max` with indices is
      5x slower, and |g| would be one more layer-sized tensor): the entries at the maximum are
      those with |u| = 1 exactly (g / |g| is exactly +-1, and |g| / m < 1 never rounds up
      to 1), so sign(g) there and 0 elsewhere is floor(|u|) * u;
    - r = 2^(((p - 1) / 2) log2 q), 40% faster than `pow` (a few ulp apart in float32);
    - the forward leaves dt/du for the backward, which then takes one product for it;
    - in-place ops on fresh temporaries: a new layer-sized tensor is a fresh allocation whose
      pages the kernel must fault in, which on CPU costs more than the arithmetic.
    """

    @staticmethod
    def forward(ctx: Any, g: torch.Tensor, p: float, eps: float, scale: float) -> torch.Tensor:
        # max |g| as max(max g, -min g): no layer-sized |g| is allocated for it.
        m = torch.maximum(g.amax(dim=1, keepdim=True), g.amin(dim=1, keepdim=True).neg_())
        # An all-zero row maps to zeros (and gets a zero gradient) instead of 0/0.
        m = m.clamp_min_(torch.finfo(g.dtype).tiny)
        u = g / m
        if p == 1.0:
            ctx.scale = scale
            ctx.save_for_backward(u, m)
            return u * scale
        q = (u * u).add_(eps * eps)
        r = torch.log2(q).mul_((p - 1.0) / 2.0).exp2_()
        # dt/du = scale * r * (p + eps^2 (1 - p) / q), in the memory of q
        slope = q.reciprocal_().mul_(eps * eps * (1.0 - p)).add_(p).mul_(r).mul_(scale)
        ctx.scale = None
        ctx.save_for_backward(u, m, slope)
        return r.mul_(u).mul_(scale)  # scale * u * r, in the memory of r

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        u, m, *slope = ctx.saved_tensors
        gu = grad * ctx.scale if ctx.scale is not None else grad * slope[0]  # dL/du
        dm = torch.linalg.vecdot(gu, u, dim=1).unsqueeze_(1).div_(m).neg_()
        at_max = u.abs().floor_()  # 1 at the row maximum, 0 elsewhere
        ties = at_max.sum(dim=1, keepdim=True).clamp_min_(1.0)
        gv = gu.div_(m)
        return gv.addcmul_(at_max.mul_(u), dm.div_(ties)), None, None, None


def group_power_map(
    v: torch.Tensor, p: float, *, group: str = "row", eps: float = 1e-3, scale: float = 1.0
) -> torch.Tensor:
    """scale * u * (u^2 + eps^2)^((p-1)/2) with u = v / max|v| over each group.

    Groups are rows (one output unit or filter) or the whole layer. At p = 1 this is the
    linear map scale * u; as p -> 0 it tends to scale * sign(v) for every |u| >> eps. eps keeps
    the slope at u = 0 finite (about eps^(p-1)). Differentiable, with the exact gradient.
    """
    g = v.reshape(v.shape[0], -1) if group == "row" else v.reshape(1, -1)
    return _PowerMap.apply(g, p, eps, scale).reshape(v.shape)


class _GroupPowerMap(nn.Module):
    """The weight parametrization: latent v -> group_power_map(v, p); `p` is set by on_step."""

    def __init__(self, scale: float, group: str, eps: float, p: float) -> None:
        super().__init__()
        self.scale = scale
        self.group = group
        self.eps = eps
        self.p = p

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        if not self.training:  # evaluation computes with the deployed weights
            return self.deployed(v)
        return group_power_map(v, self.p, group=self.group, eps=self.eps, scale=self.scale)

    def deployed(self, v: torch.Tensor) -> torch.Tensor:
        # The p -> 0 limit: +-scale, with +0 -> +scale, so exactly two values per layer.
        return torch.copysign(v.new_tensor(self.scale), v)

    def extra_repr(self) -> str:
        return f"scale={self.scale:.6g}, group={self.group}, eps={self.eps:g}, p={self.p:.4g}"


class ExactBinaryParams(StrategyParams):
    group: Annotated[
        Literal["row", "layer"],
        Field(description="weights normalized together: each output unit/filter, or a layer"),
        Search(choices=("row", "layer")),
    ] = "row"
    p_initial: Annotated[
        float,
        Field(gt=0, le=1, description="exponent at the start (1: a linear, normalized map)"),
    ] = 1.0
    p_final: Annotated[
        float,
        Field(gt=0, le=1, description="exponent at the end of the anneal (-> 0 is binary)"),
        Search(0.001, 0.05, log=True),
    ] = 0.005
    anneal_fraction: Annotated[
        float,
        Field(gt=0, le=1, description="share of the optimizer steps over which p anneals"),
        Search(0.5, 1.0),
    ] = 0.8
    anneal: Annotated[
        Literal["geometric", "linear"],
        Field(description="shape of p's path from p_initial to p_final"),
        Search(choices=("geometric", "linear")),
    ] = "geometric"
    eps: Annotated[
        float,
        Field(gt=0, le=0.1, description="smoothing inside the power map; slope at 0 ~ eps^(p-1)"),
        Search(1e-4, 1e-2, log=True),
    ] = 1e-3


@register_strategy("exact_binary")
class ExactBinary(Strategy[ExactBinaryParams]):
    """Shulman, "Exact backpropagation in binary weighted networks with group weight
    transformations" (arXiv 2107.01400), reconstructed from its abstract.

    Within each group of a layer's latent v (a row by default), u = v / max|v| and
    W = s * u * (u^2 + eps^2)^((p - 1) / 2), s = sqrt(2 / fan_in). p anneals from 1 (a
    normalization) towards 0, where W tends to s * sign(v). Gradients are the exact derivative
    of this map (no straight-through estimator); no auxiliary loss. Evaluated and deployed as
    s * sign(v), two values per layer.

    Paper, fidelity and every choice of bitsweep's: docs/strategies/exact_binary.md.
    """

    paper = (
        "Exact backpropagation in binary weighted networks with group weight transformations "
        "(Shulman, arXiv 2107.01400)"
    )
    summary = "binary weights via an annealed per-group power map with exact gradients"
    fidelity = (
        "reconstructed from the abstract: binary deployment, exact gradients of the map (no "
        "STE), per-group scale invariance; not met: after the anneal the map is a soft sign "
        "(docs/strategies/exact_binary.md)"
    )

    recipe = Recipe(
        optimizer=OptimizerConfig(name="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4),
        schedule=ScheduleConfig(name="cosine"),
        batch_size=128,
        model_options={"batch_norm": True, "bias": False},
        search={
            "lr": Search(0.01, 0.5, log=True),
            "weight_decay": Search(1e-5, 1e-3, log=True),
        },
    )

    def __init__(self, params: ExactBinaryParams | None = None) -> None:
        super().__init__(params)
        self.p = float(self.params.p_initial)
        # The transforms of the prepared model, so that a restored p reaches them at once.
        self._transforms: list[_GroupPowerMap] = []

    def exponent(self, fraction: float) -> float:
        """p after `fraction` of the trial's optimizer steps."""
        prm = self.params
        t = min(1.0, max(0.0, fraction / prm.anneal_fraction))
        p0, p1 = float(prm.p_initial), float(prm.p_final)
        if t >= 1.0:
            return p1
        if prm.anneal == "linear":
            return p0 + (p1 - p0) * t
        return p0 * (p1 / p0) ** t

    def prepare(self, model: nn.Module) -> nn.Module:
        prm = self.params

        def make(_name: str, layer: nn.Module) -> nn.Module:
            t = _GroupPowerMap(
                math.sqrt(2.0 / fan_in(latent_weight(layer))),
                prm.group,
                prm.eps,
                self.p,
            )
            self._transforms.append(t)
            return t

        return attach(model, make)

    def _set_p(self, p: float) -> None:
        self.p = p
        for t in self._transforms:
            t.p = p

    def on_step(self, model: nn.Module, progress: Progress) -> None:
        self._set_p(self.exponent(progress.fraction))

    def selectable(self, progress: Progress) -> bool:
        # Before the anneal ends the training forward is not yet the deployed one.
        return progress.fraction >= self.params.anneal_fraction

    def export(self, model: nn.Module) -> dict[str, ExportedLayer]:
        out: dict[str, ExportedLayer] = {}
        for name, layer, t in parametrizations(model, _GroupPowerMap):
            assert isinstance(t, _GroupPowerMap)
            with torch.no_grad():
                v = latent_weight(layer)
                out[name] = ExportedLayer.binary(t.deployed(v), v, t.scale, p=t.p)
        return out

    def extra_metrics(self, model: nn.Module) -> dict[str, float]:
        gap = 0.0
        n = 0
        with torch.no_grad():
            for _, layer, t in parametrizations(model, _GroupPowerMap):
                assert isinstance(t, _GroupPowerMap)
                v = latent_weight(layer)
                trained = group_power_map(v, t.p, group=t.group, eps=t.eps, scale=t.scale)
                gap += float((trained - t.deployed(v)).abs().sum()) / t.scale
                n += v.numel()
        return {"p": self.p, "deploy_gap": gap / max(1, n)}

    def state_dict(self) -> dict[str, Any]:
        return {"p": self.p}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._set_p(float(state.get("p", self.p)))

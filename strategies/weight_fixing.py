"""Weight Fixing Networks (Subia-Waud & Dasmahapatra, ECCV 2022): in ten steps, every conv and
linear weight of the network is fixed to zero or a short signed sum of powers of two drawn from
one whole-network set of centres, so the deployed net holds few distinct values."""

from __future__ import annotations

import math
import weakref
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any

import torch
from pydantic import Field, field_validator
from torch import nn

from schemas.trial import OptimizerConfig, ScheduleConfig
from strategies.base import ExportedLayer, Progress, Recipe, Search, Strategy, StrategyParams
from strategies.layers import attach, latent_weight, parametrizations
from strategies.registry import register_strategy
from strategies.space import SpaceError

# Share of all weights fixed after each step (the authors' ImageNet schedule).
FRACTIONS: tuple[float, ...] = (0.3, 0.6, 0.8, 0.9, 0.95, 0.975, 0.99, 0.9975, 0.999, 1.0)
STEPS = len(FRACTIONS)
# The geometric grid's ratio is (1 + tol) / (1 - tol): 2 at tol = 1/3, infinite at tol = 1.
# Past 1/3 the grid would be sparser than the powers of two, which are centres anyway: the
# ratio stops at 2, and the grid then puts every magnitude within relative distance 1/3.
_MAX_GRID_TOL = 1.0 / 3.0


# -- centres and the greedy clustering ---------------------------------------------------------


def exp2_exact(e: torch.Tensor) -> torch.Tensor:
    """2^e for integer-valued e, built from the float32 exponent bits: exact on every device
    (exp2 need not be), clamped to the normal range."""
    bits = (e.to(torch.int32) + 127).clamp(1, 254) << 23
    return bits.view(torch.float32)


def pow2_round(x: torch.Tensor) -> torch.Tensor:
    """sign(x) * 2^round(log2|x|), and 0 for 0: the nearest power of two in the log domain."""
    mag = x.abs()
    e = torch.round(torch.log2(mag.clamp_min(torch.finfo(x.dtype).tiny)))
    return torch.where(mag > 0, torch.copysign(exp2_exact(e), x), torch.zeros_like(x))


def additive_pow2(v: torch.Tensor, terms: int, tol: float) -> torch.Tensor:
    """`v` as a sum of at most `terms` signed powers of two: a term is added to the running sum
    only while the residual is at least `tol * |v|` (the authors' `convert_to_add_pows_of_2`)."""
    out = pow2_round(v)
    for _ in range(terms - 1):
        r = v - out
        out = out + torch.where(r.abs() >= tol * v.abs(), pow2_round(r), torch.zeros_like(r))
    return out


def grid_ratio(tol: float) -> float:
    """(1 + tol) / (1 - tol) for tol capped at 1/3, so at most 2: between grid neighbours g and
    r * g, the magnitude m equally far from both, |m - g| / m = |r * g - m| / m, is
    m = g * (1 + r) / 2 = g / (1 - tol), at relative distance exactly tol from both."""
    tol = min(tol, _MAX_GRID_TOL)
    return (1.0 + tol) / (1.0 - tol)


def geometric_grid(gamma0: float, top: float, tol: float, device: torch.device) -> torch.Tensor:
    """g_i = gamma0 * r^i, r = grid_ratio(tol), i = 0..n-1, up to the first point >= `top`
    (float64). Every magnitude m in [gamma0, top] has a grid point g with
    |m - g| <= min(tol, 1/3) * m."""
    log_r = math.log(grid_ratio(tol))
    n = math.ceil(math.log(max(top, gamma0) / gamma0) / log_r) + 1
    return gamma0 * torch.exp(log_r * torch.arange(n, device=device, dtype=torch.float64))


def centre_magnitudes(
    max_abs: float, tol: float, terms: int, gamma0: float, device: torch.device
) -> torch.Tensor:
    """Sorted positive centres covering [gamma0, max_abs]: every power of two in range, and the
    `geometric_grid` of ratio (1 + tol) / (1 - tol) (each magnitude lies within relative
    distance tol of a grid point) rounded to sums of at most `terms` signed powers of two,
    a term added while the residual is at least tol times the grid point."""
    lo = round(math.log2(gamma0))
    hi = max(lo, math.ceil(math.log2(max(max_abs, gamma0))))
    exps = torch.arange(lo, hi + 1, device=device, dtype=torch.float32)
    pows = exp2_exact(exps)
    if terms == 1:
        return pows
    grid = geometric_grid(gamma0, 2.0**hi, tol, device)
    mags = additive_pow2(grid.to(torch.float32), terms, tol)
    return torch.unique(torch.cat([pows, mags[mags >= gamma0]]))


def _select(
    w: torch.Tensor, mags: torch.Tensor, allowed: float, gamma0: float, needed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """One level of the greedy clustering over the free weights `w`.

    Each weight's candidate centre is its nearest one (zero below gamma0). Centres are taken
    in order of how many free weights they are nearest to; each fixes its candidates, closest
    first (relative distance |w - c| / |w|), while their mean distance stays <= `allowed`.
    Returns (positions in `w`, their centre values), at most `needed` of them. Vectorized:
    one grouped sort, segment cumulative sums, no loop over centres or weights.
    """
    n, k = w.numel(), mags.numel()
    # Written for speed on CPU, with the results of the plain expressions bit for bit: bool
    # masks (`where`, comparisons) cost 4-15x a multiplication there, so the mask of
    # weights not fixed to zero is a float 0/1 and selections are arithmetic; in-place ops
    # reuse the temporaries (a fresh layer-sized tensor is page-faulted in).
    a = w.abs()
    keep = (a - gamma0).sign_().add_(1.0).clamp_(max=1.0)  # 1[|w| >= gamma0], else 0
    j = torch.searchsorted(mags, a)
    lo = (j - 1).clamp_(0, k - 1)
    hi = j.clamp_(0, k - 1)
    d_lo = (a - mags.index_select(0, lo)).abs_()
    d_hi = (mags.index_select(0, hi) - a).abs_()
    near = lo.add_(d_lo > d_hi)  # the nearer of the two (lo on a tie); hi = lo + 1 or lo
    dist = torch.minimum(d_lo, d_hi).div_(a.clamp_min_(gamma0)).mul_(keep)  # |w - c| / |w|
    # Signed centre id: k - 1 - i for -mags[i], k for zero, k + 1 + i for +mags[i] (exact
    # in float: ids are small integers).
    group = near.to(w.dtype).add_(1.0).mul_(keep).mul_(w.sign()).add_(float(k)).to(torch.int64)

    # Rank centres by how many free weights they are nearest to (ties: lower id first), then
    # sort the weights by (rank of their centre, distance) with one sort of a float64 key:
    # the integer part is the rank, the fraction the distance scaled into [0, 1).
    counts = torch.bincount(group, minlength=2 * k + 1)
    rank = torch.empty_like(counts)
    rank[torch.argsort(counts, descending=True, stable=True)] = torch.arange(
        counts.numel(), device=w.device
    )
    scale = float(dist.max()) + 1.0
    key = rank.to(torch.float64).index_select(0, group)
    key.add_(dist.to(torch.float64).div_(scale))
    # The key is never negative, and the bit patterns of non-negative floats order as
    # integers: a stable sort of them as int64 is the same permutation, and torch sorts
    # integers by radix, about 8x faster than float64 on CPU.
    bits, order = torch.sort(key.view(torch.int64), stable=True)
    key = bits.view(torch.float64)
    # Read rank and distance back from the sorted key instead of gathering them by `order`.
    r = key.floor()
    d = torch.sub(key, r).mul_(scale)
    r = r.long()
    sizes = counts[torch.argsort(rank)]  # group sizes in rank order
    starts = torch.cumsum(sizes, 0) - sizes
    csum = torch.cumsum(d, 0)
    at = starts.clamp(max=n - 1)
    base = csum.index_select(0, at) - d.index_select(0, at)  # sum of all groups before each
    pos = torch.arange(1, n + 1, device=w.device, dtype=torch.float64)
    pos.sub_(starts.to(torch.float64).index_select(0, r))
    # Distances ascend within a group, so the running mean only grows: `ok` is a prefix of
    # each group, and the groups come in rank order, so the first `needed` are the greedy pick.
    ok = csum.sub_(base.index_select(0, r)).div_(pos) <= allowed
    picked = order.index_select(0, torch.nonzero(ok).squeeze(1)[:needed])
    # The centre of each picked weight: +-mags[near], and +0 below gamma0 (-0 + 0 is +0).
    value = torch.copysign(
        mags.index_select(0, near.index_select(0, picked)), w.index_select(0, picked)
    )
    return picked, value.mul_(keep.index_select(0, picked)).add_(0.0)


@dataclass
class FixReport:
    """What one fixing step did."""

    fixed: int  # weights fixed after the step
    newly_fixed: int
    delta_t: float  # the step's allowed mean relative distance
    terms: int  # most power-of-two terms the step had to allow
    allowed: float  # final allowed distance (> delta_t only if max_terms could not reach it)


def fix_weights(
    w: torch.Tensor,
    fixed: torch.Tensor,
    value: torch.Tensor,
    target: int,
    delta_t: float,
    *,
    max_terms: int,
    gamma0: float,
) -> FixReport:
    """Fix free weights of the flat network vector `w` until `target` are fixed, in place on
    the flat `fixed` mask and `value` vector. Starts from powers of two; when every centre's
    acceptable weights are used up, allows one more power-of-two term, and past `max_terms`
    doubles the allowed distance (the authors, who cap no term count, double it after 20 term
    increases), so the target is always reached."""
    before = int(fixed.sum())
    needed = target - before
    terms, allowed = 1, delta_t
    while needed > 0:
        free = torch.nonzero(~fixed).squeeze(1)
        wf = w.index_select(0, free)  # index_select, index_fill_ and index_copy_: the same
        mags = centre_magnitudes(float(wf.abs().max()), delta_t, terms, gamma0, w.device)
        picked, vals = _select(wf, mags, allowed, gamma0, needed)
        where = free.index_select(0, picked)  # as indexing, several times faster on CPU
        fixed.index_fill_(0, where, True)
        value.index_copy_(0, where, vals)
        needed -= picked.numel()
        if needed > 0:
            if terms < max_terms:
                terms += 1
            else:
                allowed *= 2.0
    after = int(fixed.sum())
    return FixReport(
        fixed=after, newly_fixed=after - before, delta_t=delta_t, terms=terms, allowed=allowed
    )


def bracket(w: torch.Tensor, centres: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The centres just below and just above each weight in the sorted `centres` (the end
    centre twice outside their range)."""
    k = centres.numel()
    j = torch.searchsorted(centres, w)
    return centres[(j - 1).clamp(0, k - 1)], centres[j.clamp(0, k - 1)]


def soft_relative_distance(
    w: torch.Tensor, c_lo: torch.Tensor, c_hi: torch.Tensor, tau: float, gamma0: float
) -> torch.Tensor:
    """Per weight: sum_c softmin_c(d_c / tau) * d_c, d_c = |w - c| / max(|w|, gamma0), over the
    pair of centres (c_lo, c_hi) bracketing w, an approximation: the other centres would cost a
    factor K in time and memory, and late in the schedule they can carry a sizeable share of the
    softmin (docs/strategies/weight_fixing.md says how much).
    A weight with |w| < gamma0 is at distance 0: the clustering fixes it to the zero centre,
    as the authors' regularizer has it (no pull up towards +-gamma0)."""
    denom = w.abs().clamp_min(gamma0)
    d_lo = (w - c_lo).abs() / denom
    d_hi = (w - c_hi).abs() / denom
    p_lo = torch.sigmoid((d_hi - d_lo) / tau)  # softmin over the pair
    d = p_lo * d_lo + (1.0 - p_lo) * d_hi
    return torch.where(w.abs() < gamma0, torch.zeros_like(d), d)


class _SoftDistanceSum(torch.autograd.Function):
    """soft_relative_distance(w, c_lo, c_hi, tau, gamma0).sum() over the free weights of
    several layers, with its derivative worked out by hand and computed in the forward pass,
    in place on its temporaries. `apply(c_lo, c_hi, tau, gamma0, idx_1, ..., idx_N, w_1, ...,
    w_N)`: the free weights are w_n.view(-1)[idx_n], and c_lo, c_hi their brackets, the layers
    concatenated in order. Autograd's generic backward of the expression (two abs, two
    divisions, clamp, sigmoid, where) took about 40 passes over the free weights, and
    bool masks (`where`, `masked_fill_`) cost about 15x a multiplication on CPU: the mask of
    weights below gamma0 is a float 0/1 here.

    For |w| >= gamma0 the denominator is |w|, and d_c = |w - c| / |w| has the derivative
    d'_c = sign(w - c) * c * sign(w) / w^2 (0 at w = c, as autograd's abs has it). With
    D = d_hi - d_lo and p = sigmoid(D / tau), the softmin is d = d_hi - p D, so
        dd/dw = (1 - q) d'_hi + q d'_lo,   q = p (1 + (1 - p) D / tau).
    Below gamma0 d = 0, and so is its derivative.
    """

    @staticmethod
    def forward(
        ctx: Any, c_lo: torch.Tensor, c_hi: torch.Tensor, tau: float, gamma0: float, *rest: Any
    ) -> torch.Tensor:
        n = len(rest) // 2
        idx, ws = rest[:n], rest[n:]
        w = c_lo.new_empty(c_lo.shape)
        start = 0
        for i, lw in zip(idx, ws, strict=True):
            torch.index_select(lw.reshape(-1).to(w.device), 0, i, out=w[start : start + i.numel()])
            start += i.numel()
        a = w.abs()
        keep = (a - gamma0).sign_().add_(1.0).clamp_(max=1.0)  # 1[|w| >= gamma0]
        den = a.clamp_min_(gamma0)
        e_lo = w - c_lo
        e_hi = w - c_hi
        d_lo = e_lo.abs().div_(den)
        d = e_hi.abs().div_(den)  # d_hi for now
        big_d = torch.sub(d, d_lo, out=d_lo)  # D
        z = big_d / tau
        p = torch.sigmoid(z)
        total = d.sub_(big_d.mul_(p)).mul_(keep).sum()  # d_hi - p D, 0 below gamma0
        q = torch.rsub(p, 1.0).mul_(z).add_(1.0).mul_(p)
        m_hi = e_hi.sign_().mul_(c_hi)  # sign(w - c_hi) * c_hi
        grad = e_lo.sign_().mul_(c_lo).sub_(m_hi).mul_(q).add_(m_hi)  # (1 - q) m_hi + q m_lo
        grad.mul_(keep.mul_(w.sign_())).div_(den.mul_(den))  # * sign(w) / w^2, 0 below gamma0
        ctx.save_for_backward(grad, *idx)
        ctx.layers = [(lw.shape, lw.dtype, lw.device) for lw in ws]
        return total

    @staticmethod
    def backward(ctx: Any, out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        grad, *idx = ctx.saved_tensors
        g = grad * out
        grads = []
        start = 0
        for i, (shape, dtype, device) in zip(idx, ctx.layers, strict=True):
            # Returned as the tensor itself, not a view of it: autograd then adds the layer's
            # other gradient into it in place instead of into a fresh layer-sized tensor.
            dense = torch.zeros(shape, dtype=dtype, device=device)
            part = g[start : start + i.numel()].to(device, dtype)
            dense.view(-1).index_copy_(0, i.to(device), part)
            grads.append(dense)
            start += i.numel()
        return (None, None, None, None, *(None,) * len(idx), *grads)


# -- the parametrization ------------------------------------------------------------------------


# Integer types of the floats' widths, to select bit patterns with bitwise ops.
_BITS_DTYPE: dict[torch.dtype, torch.dtype] = {
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
    torch.float32: torch.int32,
    torch.float64: torch.int64,
}


class _SelectFree(torch.autograd.Function):
    """where(fixed, value, w) and its gradient where(fixed, 0, grad), bit for bit, as bitwise
    ops on the floats' bit patterns: out = (w & keep) | fixed_bits, with keep all ones at a
    free weight and all zeros at a fixed one, fixed_bits the value's bits at a fixed weight and
    zero elsewhere. torch.where with a bool mask is about 8x slower than these on CPU, and it
    ran twice per layer and step (forward and backward)."""

    @staticmethod
    def forward(
        ctx: Any, w: torch.Tensor, keep: torch.Tensor, fixed_bits: torch.Tensor
    ) -> torch.Tensor:
        ctx.save_for_backward(keep)
        out = torch.bitwise_and(w.view(keep.dtype), keep)
        return out.bitwise_or_(fixed_bits).view(w.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (keep,) = ctx.saved_tensors
        return torch.bitwise_and(grad.view(keep.dtype), keep).view(grad.dtype), None, None


class _Fixable(nn.Module):
    """w -> where(fixed, value, w): a fixed weight is exactly its centre and gets no gradient.

    `fixed` and `value` are buffers, so they live in the model's state_dict and checkpoints.
    """

    fixed: torch.Tensor
    value: torch.Tensor

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("fixed", torch.zeros_like(weight, dtype=torch.bool))
        self.register_buffer("value", torch.zeros_like(weight))
        # (fixed, its version, value, its version, keep, fixed_bits): the masks of
        # _SelectFree, rebuilt only when a buffer is replaced or changed in place (a fixing
        # step, a checkpoint load), not at every step.
        self._masks: tuple[Any, ...] | None = None

    def _select_masks(self) -> tuple[torch.Tensor, torch.Tensor]:
        fixed, value, c = self.fixed, self.value, self._masks
        if (
            c is None
            or c[0] is not fixed
            or c[1] != fixed._version
            or c[2] is not value
            or c[3] != value._version
        ):
            bits = _BITS_DTYPE[value.dtype]
            keep = fixed.to(bits) - 1  # 0 at a fixed weight, -1 (all bits set) at a free one
            fixed_bits = torch.bitwise_and(value.view(bits), keep.bitwise_not())
            c = self._masks = (fixed, fixed._version, value, value._version, keep, fixed_bits)
        return c[4], c[5]

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if w.dtype != self.value.dtype or w.dtype not in _BITS_DTYPE or w.shape != self.fixed.shape:
            return torch.where(self.fixed, self.value, w)
        keep, fixed_bits = self._select_masks()
        return _SelectFree.apply(w, keep, fixed_bits)


def _fixables(model: nn.Module) -> list[tuple[str, torch.Tensor, _Fixable]]:
    """(name, latent weight, transform) of every layer this strategy fixes."""
    return [(name, latent_weight(layer), p) for name, layer, p in parametrizations(model, _Fixable)]


# -- the strategy -------------------------------------------------------------------------------


class WeightFixingParams(StrategyParams):
    delta: Annotated[
        float,
        Field(
            ge=0.001,
            le=0.1,
            description="delta: allowed mean relative distance of the last fixing step; step t "
            "allows max(delta, delta*(10-t)) (paper: 0.0075-0.015 on ImageNet)",
        ),
        Search(0.005, 0.1, log=True),
    ] = 0.015
    max_terms: Annotated[
        int,
        Field(
            ge=1,
            le=3,
            description="most signed powers of two in one centre; each step starts with single "
            "powers of two and adds a term only when no centre can take more weights",
        ),
        Search(1, 3),
    ] = 3
    reg_lambda: Annotated[
        float,
        Field(ge=0, le=10, description="regularizer weight: its value is reg_lambda * CE"),
        Search(0.0, 1.0),
    ] = 0.4
    temperature: Annotated[
        float,
        Field(gt=0, le=10, description="softmin temperature over relative distances"),
    ] = 0.05
    gamma0: Annotated[
        float,
        Field(gt=0, le=1, description="gamma0: magnitudes below it are fixed to zero (2^-7)"),
        Search(2.0**-9, 2.0**-5, log=True),
    ] = 2.0**-7
    pretrain_epochs: Annotated[
        int | None,
        Field(
            ge=0,
            le=10_000,
            description="float training epochs before the first fixing step; default a third "
            "of the trial's epochs (at least 1), or 0 with init_checkpoint",
        ),
    ] = None
    epochs_per_step: Annotated[
        int | None,
        Field(
            ge=1,
            le=1_000,
            description="training epochs between fixing steps (paper: 3); default the "
            "trial's epochs after pre-training spread over the 9 later steps",
        ),
    ] = None
    init_checkpoint: Annotated[
        str | None,
        Field(
            description="path of a torch state_dict of the same float model to start from "
            "instead of training it"
        ),
    ] = None

    @field_validator("init_checkpoint")
    @classmethod
    def _checkpoint_exists(cls, v: str | None) -> str | None:
        if v is not None and not Path(v).is_file():
            raise ValueError(f"no such file: {v}")
        return v


@register_strategy("weight_fixing")
class WeightFixing(Strategy[WeightFixingParams]):
    """Subia-Waud & Dasmahapatra, "Weight Fixing Networks" (ECCV 2022, arXiv 2210.13554).

    After float training (or from `init_checkpoint`), ten fixing steps fix the fractions 0.3,
    0.6, ..., 1.0 of all conv and linear weights to whole-network centres: zero below gamma0,
    else powers of two or short signed sums of them. Each step greedily fixes the weights
    nearest the centres that most weights are nearest to, while their mean relative distance
    |w - c| / |w| stays within delta_t. Fixed weights get zero gradient; a softmin pull towards
    the centres, worth `reg_lambda` * CE, trains the free ones. Deployed as a per-layer
    codebook of its distinct values.

    Paper, fidelity and every choice of bitsweep's: docs/strategies/weight_fixing.md.
    """

    paper = "Weight Fixing Networks (Subia-Waud & Dasmahapatra, ECCV 2022, arXiv 2210.13554)"
    summary = (
        "fix all weights in 10 steps to whole-network power-of-two centres: few unique weights, "
        "low entropy"
    )
    fidelity = (
        "faithful: fixing schedule, whole-network power-of-two centres, greedy clustering, "
        "softmin regularizer; bitsweep's: nearest-centre candidates, no re-clustering, two-centre "
        "softmin, lr from scratch (docs/strategies/weight_fixing.md)"
    )

    recipe = Recipe(
        optimizer=OptimizerConfig(name="adam", lr=1e-3, grad_clip=0.5),
        schedule=ScheduleConfig(name="constant"),
        batch_size=64,
        model_options={"batch_norm": True, "bias": False},
        search={
            "lr": Search(1e-5, 1e-2, log=True),
            "batch_size": Search(choices=(32, 64, 128)),
        },
    )

    @property
    def cfg(self) -> WeightFixingParams:
        return self.params

    def __init__(self, params: WeightFixingParams | None = None) -> None:
        super().__init__(params)
        self.steps_done = 0
        self.last_report: FixReport | None = None
        # Derived from the model, rebuilt on demand: the centres in use (sorted), and per
        # layer the free weights' flat indices with the centres bracketing each of them.
        self._centres: torch.Tensor | None = None
        self._brackets: _Brackets | None = None

    # -- schedule ------------------------------------------------------------------------------

    def pretrain_epochs(self, epochs: int) -> int:
        """Float epochs before fixing starts in a trial of `epochs` epochs."""
        p = self.cfg
        if p.pretrain_epochs is not None:
            return min(p.pretrain_epochs, epochs)
        if p.init_checkpoint is not None:
            return 0
        return min(epochs, max(1, (epochs + 1) // 3))

    def step_epoch(self, step: int, epochs: int) -> int:
        """The 0-based epoch at whose end fixing step `step` runs (-1: in `prepare`)."""
        pre = self.pretrain_epochs(epochs)
        if step == 0:
            return pre - 1
        every = self.cfg.epochs_per_step
        if every is not None:
            return pre - 1 + step * every
        return pre - 1 + -(-step * (epochs - pre) // (STEPS - 1))

    def validate_trial(self, epochs: int) -> None:
        every = self.cfg.epochs_per_step
        if every is None:
            return
        pre = self.pretrain_epochs(epochs)
        need = pre + (STEPS - 1) * every
        if need > epochs:
            raise SpaceError(
                "params.epochs_per_step",
                f"{STEPS - 1} more fixing steps {every} epochs apart after {pre} epochs of "
                f"pre-training need {need} epochs; the trial has {epochs}",
            )

    def delta_t(self, step: int) -> float:
        d = float(self.cfg.delta)
        return max(d, d * (STEPS - step))

    # -- hooks ---------------------------------------------------------------------------------

    def prepare(self, model: nn.Module) -> nn.Module:
        path = self.cfg.init_checkpoint
        if path is not None:
            _load_float_checkpoint(model, path)
        attach(model, lambda _name, layer: _Fixable(latent_weight(layer)))
        if self._starts_fixed():
            self._fix(model)
        return model

    def _starts_fixed(self) -> bool:
        p = self.cfg
        if p.pretrain_epochs is not None:
            return p.pretrain_epochs == 0
        return p.init_checkpoint is not None

    def regularizer(self, model: nn.Module, loss: torch.Tensor) -> torch.Tensor | None:
        lam = float(self.cfg.reg_lambda)
        if lam == 0 or not 0 < self.steps_done < STEPS:
            return None
        d = self.soft_distance(model)
        if d is None:
            return None
        # lam * CE in value, lam * CE / d * dd/dW in gradient. A distance of exactly zero
        # (every free weight below gamma0) gives a zero term with a zero gradient, decided on
        # the device: no host sync in the step.
        dd = d.detach()
        return d * torch.where(dd > 0, lam * loss.detach() / dd, 0.0)

    def soft_distance(self, model: nn.Module) -> torch.Tensor | None:
        """The mean soft relative distance of the free weights to their bracketing centres
        (differentiable), or None before any weight is fixed or once all are."""
        brackets = self._free_brackets(model)
        if brackets is None:
            return None
        total = _SoftDistanceSum.apply(
            brackets.c_lo,
            brackets.c_hi,
            float(self.cfg.temperature),
            float(self.cfg.gamma0),
            *brackets.idx,
            *brackets.latents,
        )
        return total / brackets.c_lo.numel()

    def on_epoch_end(self, model: nn.Module, progress: Progress) -> bool:
        self._brackets = None  # weights moved: find their bracketing centres again
        fixed_any = False
        while (
            self.steps_done < STEPS
            and self.step_epoch(self.steps_done, progress.epochs) <= progress.epoch
        ):
            self._fix(model)
            fixed_any = True
        return fixed_any

    def selectable(self, progress: Progress) -> bool:
        return self.steps_done >= STEPS

    def export(self, model: nn.Module) -> dict[str, ExportedLayer]:
        out: dict[str, ExportedLayer] = {}
        for name, latent, p in _fixables(model):
            with torch.no_grad():
                weight = torch.where(p.fixed, p.value, latent).detach().clone()
            if not bool(p.fixed.all()):
                out[name] = ExportedLayer(
                    weight=weight,
                    bits=32.0,
                    info={"fixed_fraction": float(p.fixed.float().mean())},
                )
                continue
            book, codes = torch.unique(weight, sorted=True, return_inverse=True)
            k = book.numel()
            dtype = torch.uint8 if k <= 256 else torch.int16 if k <= 32768 else torch.int32
            out[name] = ExportedLayer(
                weight=weight,
                bits=float(max(1, math.ceil(math.log2(k)))),
                n_floats=k,
                codes=codes.to(dtype),
                codebook=book.detach().clone(),
                info={"codebook": book.tolist(), "decode": "weight = codebook[code]"},
            )
        return out

    def extra_metrics(self, model: nn.Module) -> dict[str, float]:
        n = fixed = 0
        for _, _, p in _fixables(model):
            n += p.fixed.numel()
            fixed += int(p.fixed.sum())
        centres = self._centres_in_use(model)
        out = {
            "fixed_fraction": fixed / n if n else 0.0,
            "centres_in_use": float(0 if centres is None else centres.numel()),
            "fixing_steps": float(self.steps_done),
        }
        if self.last_report is not None:
            out["delta_t"] = self.last_report.delta_t
            out["max_terms_used"] = float(self.last_report.terms)
        return out

    def state_dict(self) -> dict[str, Any]:
        # The fixed masks and centre values are buffers of the model's state_dict.
        report = None if self.last_report is None else asdict(self.last_report)
        return {"steps_done": self.steps_done, "last_report": report}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps_done = int(state.get("steps_done", 0))
        report = state.get("last_report")
        self.last_report = None if report is None else FixReport(**report)
        self._centres = None
        self._brackets = None

    # -- fixing --------------------------------------------------------------------------------

    def _fix(self, model: nn.Module) -> FixReport:
        """Run fixing step `self.steps_done` on the whole network."""
        layers = [(latent, p) for _, latent, p in _fixables(model)]
        if not layers:
            raise ValueError("weight_fixing found no Linear or Conv layer to fix")
        device = layers[0][1].fixed.device
        with torch.no_grad():
            w = torch.cat([lw.detach().reshape(-1).to(device) for lw, _ in layers])
            fixed = torch.cat([p.fixed.reshape(-1).to(device) for _, p in layers])
            value = torch.cat([p.value.reshape(-1).to(device) for _, p in layers])
            step = self.steps_done
            target = math.floor(FRACTIONS[step] * w.numel() + 0.5)
            report = fix_weights(
                w,
                fixed,
                value,
                target,
                self.delta_t(step),
                max_terms=self.cfg.max_terms,
                gamma0=self.cfg.gamma0,
            )
            start = 0
            for lw, p in layers:
                n = p.fixed.numel()
                p.fixed.copy_(fixed[start : start + n].view_as(p.fixed))
                p.value.copy_(value[start : start + n].view_as(p.value))
                # Keep the latent equal to the deployed value, so a plain copy of it agrees:
                # where(fixed, value, latent), by the transform itself (its bitwise select is
                # faster than `where`, and the masks it builds serve the next forward).
                lw.copy_(p(lw))
                start += n
        self.steps_done += 1
        self.last_report = report
        self._centres = None
        self._brackets = None
        return report

    def _centres_in_use(self, model: nn.Module) -> torch.Tensor | None:
        if self._centres is None:
            vals = [p.value[p.fixed] for _, _, p in _fixables(model)]
            if sum(v.numel() for v in vals) == 0:
                return None
            self._centres = torch.unique(torch.cat([v.to(vals[0].device) for v in vals]))
        return self._centres

    def _free_brackets(self, model: nn.Module) -> _Brackets | None:
        # One search per epoch instead of per step: a weight rarely crosses a centre within an
        # epoch, and if it does, the bracket it left still pulls it to the nearer old centre.
        if self._brackets is None or self._brackets.model() is not model:
            centres = self._centres_in_use(model)
            if centres is None:
                return None
            idx, latents, lo, hi = [], [], [], []
            for _, latent, p in _fixables(model):
                i = torch.nonzero(~p.fixed.reshape(-1)).squeeze(1)
                if i.numel() == 0:
                    continue
                w = latent.detach().reshape(-1)[i]
                c_lo, c_hi = bracket(w, centres.to(w.device))
                idx.append(i)
                latents.append(latent)
                lo.append(c_lo.to(centres.device))
                hi.append(c_hi.to(centres.device))
            if not idx:
                return None
            self._brackets = _Brackets(
                weakref.ref(model), idx, latents, torch.cat(lo), torch.cat(hi)
            )
        return self._brackets

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_brackets": None}  # a weak reference does not pickle


@dataclass
class _Brackets:
    """The layers of `model` that have free weights: their latent weights and the free
    weights' flat indices, and, concatenated over those layers in order, the centres just
    below and above each free weight."""

    model: weakref.ref[nn.Module]
    idx: list[torch.Tensor]
    latents: list[torch.Tensor]
    c_lo: torch.Tensor
    c_hi: torch.Tensor


def _load_float_checkpoint(model: nn.Module, path: str) -> None:
    """Load a torch state_dict of the same float model; any failure names the param."""
    field = "params.init_checkpoint"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise SpaceError(
            field, f"cannot read {path} as a state_dict saved by torch.save ({type(e).__name__})"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SpaceError(field, f"{path} does not hold a state_dict (a dict of tensors)")
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        reason = " ".join(str(e).split())
        raise SpaceError(
            field, f"{path} is not a state_dict of this float model: {reason}"
        ) from None

"""BitNet (arXiv 1708.04788): per-layer min-max uniform quantization whose integer bit-depth is
learned during training by a thresholded sign step on an MDL-inspired regularizer."""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from typing import Annotated, Any, Literal

import torch
from pydantic import Field
from torch import nn

from schemas.trial import AugmentConfig, OptimizerConfig, ScheduleConfig
from strategies.base import (
    ExportedLayer,
    Progress,
    Recipe,
    Relation,
    Search,
    Strategy,
    StrategyParams,
)
from strategies.layers import attach, latent_weight, parametrizations
from strategies.registry import register_strategy

_Quantized = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def _decode(z: torch.Tensor, alpha: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """alpha + delta * Z, the one expression both the forward and the export evaluate, so the
    deployed weights equal the trained forward's bit for bit."""
    return (z * delta).add_(alpha)


# float32 holds every integer up to 2^24 exactly: codes of more bits are computed in float64.
_EXACT_BITS = 24


@torch.no_grad()
def _quantize(
    w: torch.Tensor, bits: torch.Tensor, wide: bool = False, top: torch.Tensor | None = None
) -> _Quantized:
    """(W~, Z, alpha, delta) of one layer at bit-depth `bits`; Z holds integers in [0, 2^B - 1].

    `wide` (a layer that may exceed 24 bits) finds the codes in float64, so that they fit
    2^B - 1; Z is then float64 and W~ is decoded from its float32 value, as the export decodes.
    Every step is a tensor op, so neither the forward nor the bit update waits on the device.
    `top` may pass 2^B - 1 as computed here, in the codes' dtype, for a caller that keeps it.
    """
    alpha, beta = torch.aminmax(w)
    x = w.double() if wide else w
    if top is None:
        top = _top_code(bits, x.dtype)
    span = (beta - alpha).to(x.dtype)
    # A constant layer has beta == alpha: the floor keeps delta positive and all codes at 0.
    delta = (span / top).clamp_min(torch.finfo(w.dtype).tiny)
    # w >= alpha exactly, so codes are never negative; the clamp only catches the rounding of
    # (beta - alpha) / delta just above 2^B - 1.
    z = (x - alpha.to(x.dtype)).div_(delta).round_().clamp_(max=top)
    delta = delta.to(w.dtype)
    return _decode(z.to(w.dtype), alpha, delta), z, alpha, delta


def _top_code(bits: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The highest code, 2^B - 1, as `dtype`."""
    return torch.exp2(bits.to(dtype)) - 1


def _code_dtype(bits: int) -> torch.dtype:
    """The narrowest integer type that holds codes of `bits` bits, for a compact export."""
    if bits <= 8:
        return torch.uint8
    if bits <= 15:
        return torch.int16
    return torch.int32 if bits <= 31 else torch.int64


class _StraightThrough(torch.autograd.Function):
    """Forward W~ exactly as given; backward d loss / dW = d loss / dW~ (identity to W)."""

    @staticmethod
    def forward(ctx: Any, w: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        return q.view_as(q)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


class _HalfSquaredError(torch.autograd.Function):
    """sum_n 1/2 ||W_n - W~_n||^2 for constant W~_n, given err_n = W_n - W~_n computed without
    grad: `apply(W_1, ..., W_N, err_1, ..., err_N)`, one call for all layers.

    The W_n are inputs only so that the gradients, err_n * grad, reach them: one dot product
    per layer forward and one product backward, where the autograd of (W - W~)^2 takes four
    passes over W.
    """

    @staticmethod
    def forward(ctx: Any, *tensors: torch.Tensor) -> torch.Tensor:
        errs = tensors[len(tensors) // 2 :]
        ctx.save_for_backward(*errs)
        total = torch.dot(errs[0].reshape(-1), errs[0].reshape(-1))
        for err in errs[1:]:
            flat = err.reshape(-1)
            total = total + torch.dot(flat, flat).to(total.device)
        return 0.5 * total

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        errs = ctx.saved_tensors
        return (*(err * grad.to(err.device) for err in errs), *(None,) * len(errs))


class _BitQuant(nn.Module):
    """The layer's weight in the forward: W~ = alpha + delta * round((W - alpha) / delta).

    In training with `full_precision` (the paper) the forward computes with W itself and W~ is
    kept for the regularizer; otherwise (eval always, training with the `quantized` variant)
    it computes with W~ and passes the gradient to W unchanged (straight-through). The
    bit-depth B is a buffer, so it lives in `model.state_dict()` and moves with the model.
    """

    bits: torch.Tensor

    def __init__(self, bits: int, device: torch.device, full_precision: bool, wide: bool) -> None:
        super().__init__()
        self.register_buffer("bits", torch.tensor(bits, dtype=torch.long, device=device))
        self.full_precision = full_precision
        self.wide = wide
        # The last forward's quantization for the step's regularizer, keyed by the tensors'
        # identity and version counters, and whether the forward handed W~ out (then its memory
        # is not the regularizer's to reuse). The forward itself always recomputes, and the bit
        # update drops it: a fused optimizer updates W without bumping its version.
        self._cache: tuple[tuple[int, ...], _Quantized, bool] | None = None
        # 2^B - 1 for the forward, kept until B changes (keyed like the cache).
        self._top: tuple[tuple[int, ...], torch.Tensor] | None = None
        # dQ/dB at the forward's W~, left by the regularizer for the step's bit update.
        self.dq_db: torch.Tensor | None = None

    def _key(self, w: torch.Tensor) -> tuple[int, ...]:
        return (w.data_ptr(), w._version, self.bits.data_ptr(), self.bits._version)

    def quantize(self, w: torch.Tensor) -> _Quantized:
        dtype = torch.float64 if self.wide else w.dtype
        key = (self.bits.data_ptr(), self.bits._version, id(dtype))
        if self._top is None or self._top[0] != key:
            self._top = (key, _top_code(self.bits, dtype))
        return _quantize(w, self.bits, self.wide, self._top[1])

    def forget(self) -> None:
        """Drop the last forward's quantization (W has moved since)."""
        self._cache = None

    def last_forward(self, w: torch.Tensor) -> _Quantized:
        """The quantization of the last forward when it was of `w`, else a fresh one."""
        if self._cache is not None and self._cache[0] == self._key(w):
            return self._cache[1]
        return self.quantize(w)

    def error(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(W - W~, Z, delta) at the last forward's W~ when it was of `w` (else a fresh one),
        without grad. Consumes that quantization: where the forward did not hand W~ out, the
        error is computed into W~'s memory (a layer-sized allocation fewer per step)."""
        cached = self._cache
        self._cache = None
        if cached is not None and cached[0] == self._key(w):
            (q, z, _, delta), shared = cached[1], cached[2]
        else:
            (q, z, _, delta), shared = self.quantize(w), False
        w = w.detach()
        return (w - q if shared else torch.sub(w, q, out=q)), z, delta

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        quantized = self.quantize(w)
        hands_out = not (self.training and self.full_precision)
        self._cache = (self._key(w), quantized, hands_out)
        if not hands_out:
            return w
        return _StraightThrough.apply(w, quantized[0])


class BitRegularizationParams(StrategyParams):
    lambda1: Annotated[
        float,
        Field(ge=0, le=10, description="Weight of the quantization error 1/2 ||W~ - W||^2."),
        Search(1e-5, 1e-1, log=True),
    ] = 1e-3
    lambda2: Annotated[
        float,
        Field(ge=0, le=10, description="Weight of the bit cost sum_n 2^{B_n}."),
        Search(1e-8, 1e-4, log=True),
    ] = 1e-6
    mu: Annotated[
        float,
        Field(ge=0, le=10, description="Step size of the bit-depth update (paper: 1e-3)."),
    ] = 1e-3
    mu_from_lr: Annotated[
        bool,
        Field(description="Decay mu with the learning-rate schedule: mu * lr_t / lr_0."),
    ] = True
    eps: Annotated[
        float,
        Field(ge=0, le=1, description="B moves only when |update| >= eps (sign_eps)."),
        Search(1e-9, 1e-5, log=True),
    ] = 1e-7
    init_bits: Annotated[
        int,
        Field(ge=1, le=32, description="Bit-depth B_0 of every layer at the start."),
        Search(2, 16),
    ] = 8
    min_bits: Annotated[int, Field(ge=1, le=32, description="Lowest bit-depth B may take.")] = 1
    max_bits: Annotated[
        int,
        Field(ge=1, le=32, description="Highest bit-depth B may take (32: the paper's limit)."),
    ] = 16
    train_forward: Annotated[
        Literal["full_precision", "quantized"],
        Field(
            description="What the training forward computes with: 'full_precision' W (the "
            "paper's CE(W)) or 'quantized' W~ with a straight-through gradient; evaluation "
            "and deployment always use W~."
        ),
    ] = "full_precision"

    relations = (
        Relation("init_bits", ">=", "min_bits"),
        Relation("init_bits", "<=", "max_bits"),
    )


@register_strategy("bit_regularization")
class BitRegularization(Strategy[BitRegularizationParams]):
    """BitNet: bit-regularized deep neural networks (Raghavan et al., arXiv 1708.04788).

    Each layer has a min-max integer grid whose bit-depth B is learned: alpha = min W,
    delta = (max W - alpha) / (2^B - 1), W~ = alpha + delta * round((W - alpha) / delta). The
    loss adds lambda1 * sum 1/2 ||W~ - W||^2 + lambda2 * sum 2^B with W~ held constant, and
    after each optimizer step B moves by one integer step:
        B <- B - sign_eps(mu * lambda1 * dQ/dB + mu * lambda2 * 2^B).
    Evaluation and deployment use W~: integer codes plus alpha and delta per layer.

    Paper, fidelity and every choice of bitsweep's: docs/strategies/bit_regularization.md.
    """

    paper = "BitNet: Bit-Regularized Deep Neural Networks (arXiv 1708.04788)"
    summary = "per-layer min-max integer grid; each layer's bit-depth learned by a regularized step"
    fidelity = (
        "faithful: min-max grid, regularized loss at W, eval at W~, sign_eps update of B, the "
        "paper's mu, lambdas and batch; bitsweep's: momentum SGD for W, delta = range/(2^B-1), "
        "the unstated eps and initial B (docs/strategies/bit_regularization.md)"
    )

    recipe = Recipe(
        optimizer=OptimizerConfig(name="sgd", lr=0.05, momentum=0.9),
        schedule=ScheduleConfig(name="halving", every_steps=200, gamma=0.5),
        augment=AugmentConfig(),
        batch_size=200,
        model_options={"activation": "tanh"},
        search={"lr": Search(5e-3, 0.2, log=True)},
    )

    def __init__(self, params: BitRegularizationParams | None = None) -> None:
        super().__init__(params)
        self._lr0: float | None = None  # learning rate of the first step, for mu_from_lr
        self._found: tuple[weakref.ref[nn.Module], list[tuple[str, nn.Module, _BitQuant]]] | None
        self._found = None

    def _quantized(self, model: nn.Module) -> list[tuple[str, nn.Module, _BitQuant]]:
        # The model's quantized layers, found once per model: a walk of the model's modules
        # costs about 50 us, twice a step for an MLP whose whole step is 2 ms.
        found = self._found
        if found is not None and found[0]() is model:
            return found[1]
        layers = list(parametrizations(model, _BitQuant))
        self._found = (weakref.ref(model), layers)
        return layers

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_found": None}  # a weak reference does not pickle

    def _layers(self, model: nn.Module) -> Iterator[tuple[str, torch.Tensor, _BitQuant]]:
        for name, layer, quant in self._quantized(model):
            yield name, latent_weight(layer), quant

    def prepare(self, model: nn.Module) -> nn.Module:
        p = self.params
        full = p.train_forward == "full_precision"
        wide = p.max_bits > _EXACT_BITS
        self._found = None
        return attach(
            model,
            lambda _name, layer: _BitQuant(p.init_bits, latent_weight(layer).device, full, wide),
        )

    def regularizer(self, model: nn.Module, loss: torch.Tensor) -> torch.Tensor | None:
        p = self.params
        if p.lambda1 == 0 and p.lambda2 == 0:
            return None
        layers = list(self._layers(model))
        if not layers:
            return loss.new_zeros(())
        # Constant in W: it only matters to the bit update, but it is part of the paper's loss.
        bits = torch.stack([quant.bits.to(loss.device) for _, _, quant in layers])
        total = p.lambda2 * torch.exp2(bits.to(loss.dtype)).sum()
        if p.lambda1 == 0:
            return total
        ws, errs = [], []
        for _, w, quant in layers:
            err, z, delta = quant.error(w)  # W - W~ at the forward's W~, a constant here
            ws.append(w)
            errs.append(err)
            # dQ/dB = sum (W~ - W) * (-delta) * Z = delta * sum (W - W~) * Z, at this step's W~
            quant.dq_db = delta * torch.dot(err.reshape(-1), z.to(err.dtype).reshape(-1))
        return total + p.lambda1 * _HalfSquaredError.apply(*ws, *errs).to(total.device)

    def _mu(self, progress: Progress) -> float:
        p = self.params
        if not p.mu_from_lr or progress.lr <= 0:
            return p.mu
        if self._lr0 is None:
            self._lr0 = progress.lr
        return p.mu * progress.lr / self._lr0

    @torch.no_grad()
    def on_step(self, model: nn.Module, progress: Progress) -> None:
        p = self.params
        mu = self._mu(progress)
        layers = list(self._layers(model))
        dq_dbs: list[torch.Tensor | None] = []
        for _, w, quant in layers:
            dq_db, quant.dq_db = quant.dq_db, None
            # The optimizer has moved W: the forward's quantization is stale (a fused optimizer
            # does not bump W's version, so the cache key would not show it).
            quant.forget()
            if p.lambda1 != 0 and dq_db is None:
                # No regularizer this step: take dQ/dB at the updated weights.
                q, z, _, delta = quant.quantize(w)
                dq_db = -delta * torch.dot((q - w).reshape(-1), z.to(w.dtype).reshape(-1))
            dq_dbs.append(dq_db)
        if not layers:
            return
        same = {(w.dtype, w.device, quant.bits.device) for _, w, quant in layers}
        if len(same) > 1:  # layers of several dtypes or devices: one update each
            for (_, w, quant), dq_db in zip(layers, dq_dbs, strict=True):
                quant.bits.copy_(self._new_bits(quant.bits, dq_db, mu, w.dtype))
            return
        # One update for all layers: the same elementwise ops as one per layer, on a vector.
        bits = torch.stack([quant.bits for _, _, quant in layers])
        dq = None if p.lambda1 == 0 else torch.stack([d for d in dq_dbs if d is not None])
        new = self._new_bits(bits, dq, mu, layers[0][1].dtype)
        for (_, _, quant), b in zip(layers, new.unbind(), strict=True):
            quant.bits.copy_(b)

    def _new_bits(
        self, bits: torch.Tensor, dq_db: torch.Tensor | None, mu: float, dtype: torch.dtype
    ) -> torch.Tensor:
        """B - sign_eps(mu * lambda1 * dQ/dB + mu * lambda2 * 2^B), clipped to the bounds."""
        p = self.params
        update = mu * p.lambda2 * torch.exp2(bits.to(dtype))
        if p.lambda1 != 0:
            assert dq_db is not None
            update = update + mu * p.lambda1 * dq_db
        move = torch.where(update.abs() < p.eps, 0.0, torch.sign(update)).long()
        return (bits - move).clamp(p.min_bits, p.max_bits)

    def export(self, model: nn.Module) -> dict[str, ExportedLayer]:
        out: dict[str, ExportedLayer] = {}
        for name, layer, quant in self._quantized(model):
            w = latent_weight(layer)
            bits = int(quant.bits)
            _, z, alpha, delta = quant.quantize(w.detach())
            codes = z.to(_code_dtype(bits))
            weight = _decode(codes.to(w.dtype), alpha, delta)  # the forward's W~, bit for bit
            # The recipe's biases stay float32: counted here as floats stored with the layer.
            bias = getattr(layer, "bias", None)
            n_bias = int(bias.numel()) if isinstance(bias, torch.Tensor) else 0
            out[name] = ExportedLayer(
                weight=weight,
                bits=float(bits),
                n_floats=2 + n_bias,
                codes=codes,
                scale=float(delta),
                offset=float(alpha),
                info={
                    "alpha": float(alpha),
                    "delta": float(delta),
                    "bit_depth": bits,
                    "bias_floats": n_bias,
                },
            )
        return out

    def extra_metrics(self, model: nn.Module) -> dict[str, float]:
        bits = {f"layer.{name}.bits": float(quant.bits) for name, _, quant in self._layers(model)}
        if not bits:
            return {}
        mean = sum(bits.values()) / len(bits)
        # The paper's compression: 32 over the unweighted mean of the layers' bit-depths.
        return {"mean_bits_learned": mean, "compression_ratio_paper": 32.0 / mean, **bits}

    def state_dict(self) -> dict[str, Any]:
        # The bit-depths are buffers in the model's own state_dict; only mu's reference lr is here.
        return {"lr0": self._lr0}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._lr0 = state.get("lr0")

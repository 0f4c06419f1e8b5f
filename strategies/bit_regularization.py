"""BitNet (arXiv 1708.04788): per-layer min-max uniform quantization whose integer bit-depth is
learned during training by a thresholded sign step on an MDL-inspired regularizer."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

import torch
from pydantic import Field, model_validator
from torch import nn

from schemas.trial import AugmentConfig, OptimizerConfig, ScheduleConfig
from strategies.base import ExportedLayer, Progress, Recipe, Search, Strategy, StrategyParams
from strategies.layers import attach, latent_weight, parametrizations
from strategies.registry import register_strategy


@torch.no_grad()
def _quantize(
    w: torch.Tensor, bits: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(W~, Z, alpha, delta) of one layer at bit-depth `bits`; Z holds integers in [0, 2^B - 1].

    Every step is a tensor op, so neither the forward nor the bit update waits on the device.
    """
    alpha = w.min()
    top = torch.exp2(bits.to(w.dtype)) - 1  # the highest code, 2^B - 1
    # A constant layer has beta == alpha: the floor keeps delta positive and all codes at 0.
    delta = ((w.max() - alpha) / top).clamp_min(torch.finfo(w.dtype).tiny)
    # w >= alpha exactly, so codes are never negative; the minimum only catches the rounding
    # of (beta - alpha) / delta just above 2^B - 1.
    z = torch.minimum(torch.round((w - alpha) / delta), top)
    return alpha + delta * z, z, alpha, delta


def _code_dtype(bits: int) -> torch.dtype:
    """The narrowest integer type that holds codes of `bits` bits, for a compact export."""
    if bits <= 8:
        return torch.uint8
    if bits <= 15:
        return torch.int16
    return torch.int32 if bits <= 31 else torch.int64


class _BitQuant(nn.Module):
    """W -> W~ = alpha + delta * round((W - alpha) / delta) in the forward, identity gradient to W.

    The bit-depth B is a buffer, so it lives in `model.state_dict()` and moves with the model.
    """

    bits: torch.Tensor

    def __init__(self, bits: int, device: torch.device) -> None:
        super().__init__()
        self.register_buffer("bits", torch.tensor(bits, dtype=torch.long, device=device))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        q = _quantize(w, self.bits)[0]
        # w - w.detach() is exactly zero, so the forward computes with W~ bit for bit (the export
        # matches it) while the gradient reaches W unchanged.
        return q + (w - w.detach())


@register_strategy("bit_regularization")
class BitRegularization(Strategy):
    """BitNet: bit-regularized deep neural networks (Raghavan, Amer, Chai, Taylor; arXiv 1708.04788).

    Forward, per quantized layer n with integer bit-depth B_n:
        alpha = min W, beta = max W, delta = (beta - alpha) / (2^B - 1),
        Z = round((W - alpha) / delta) in {0, ..., 2^B - 1},  W~ = alpha + delta * Z.
    The network computes with W~; the layer deploys the integer codes Z (B bits each) and the
    two floats alpha and delta.

    Gradient: straight-through. W is kept in float32 and d loss / dW = d loss / dW~ (alpha,
    beta and delta are not differentiated).

    Regularizer: lambda1 * sum_n 1/2 ||W~ - W||^2 + lambda2 * sum_n 2^{B_n}, with W~ a constant,
    so the first term pulls W towards its grid (gradient lambda1 * (W - W~)) and the second is
    constant in W (it only drives the bit update).

    Schedule: after each optimizer step every B_n moves by one integer step,
        B_n <- clip(B_n - sign_eps(mu * lambda1 * dQ/dB + mu * lambda2 * 2^{B_n}), min_bits, max_bits),
        dQ/dB = sum (W~ - W) * (-delta) * Z,  sign_eps(x) = 0 if |x| < eps else sign(x),
    computed on the weights just updated. With `mu_from_lr` the step size mu follows the
    learning-rate schedule: mu_t = mu * lr_t / lr_0 (lr_0 the first step's learning rate).

    Faithful to the paper: the min-max grid with per-layer alpha and delta, the integer codes,
    the loss with W~ held constant, the sign_eps integer update of B with dQ/dB for fixed Z,
    mu = lambda1 = 1e-3 and lambda2 = 1e-6, plain SGD with batch 200 and the learning rate
    halved every 200 iterations, no augmentation.

    Reconstructed:
    - delta = (beta - alpha) / (2^B - 1) instead of the paper's (beta - alpha) / 2^B. The
      paper's grid has 2^B + 1 points (codes 0..2^B), which do not fit in B bits; with 2^B - 1
      intervals both alpha and beta are codes and exactly 2^B levels are used, so the exported
      bit-depth is B. (At B = 1 this gives {alpha, beta}; clamping the paper's grid to 2^B
      codes would deploy {alpha, (alpha + beta) / 2} and zero out every positive weight.)
    - dQ/dB is the paper's expression. The exact derivative of W~ = alpha + delta * Z for fixed
      Z is Z * d delta / dB = -Z * delta * ln 2 * 2^B / (2^B - 1); the positive factor
      ln 2 * 2^B / (2^B - 1) is left out as in the paper, so eps and lambda2 keep the paper's
      scale.
    - The forward uses W~ with a straight-through gradient (the paper: "W~ is used in the
      forward pass, the gradient flows to W"); biases and BatchNorm stay float32, as in the
      paper only weights carry a bit-depth.
    - Unstated in the paper and made parameters: the initial bit-depth (8), eps (1e-7), the
      bounds of B (1..16), and whether mu decays with the learning rate (on by default; with a
      constant mu the bit-depths keep moving by +-1 every step, see docs).
    - The learning rate (0.1 by default) is not in the paper's summary; 0.1 is what plain SGD
      needs to train the MLP on digits in a short run. Hidden activations are tanh, as in the
      paper's nets.
    """

    paper = "BitNet: Bit-Regularized Deep Neural Networks (arXiv 1708.04788)"
    summary = "per-layer min-max integer grid; bit-depth per layer learned by a regularized sign step"
    fidelity = (
        "faithful: min-max grid with alpha/delta per layer, loss CE(W~) + lambda1/2 ||W~-W||^2 + "
        "lambda2 sum 2^B, sign_eps integer update of B, paper's lambdas and SGD recipe; "
        "reconstructed: delta = range/(2^B-1) so codes fit B bits, straight-through gradient, "
        "initial B, eps, B bounds, mu following the lr schedule, lr"
    )

    class Params(StrategyParams):
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
            Field(ge=1, le=32, description="Highest bit-depth B may take (float32 resolves ~24)."),
        ] = 16

        @model_validator(mode="after")
        def _bits_in_range(self) -> BitRegularization.Params:
            if not self.min_bits <= self.init_bits <= self.max_bits:
                raise ValueError(
                    f"init_bits ({self.init_bits}) must lie in [min_bits, max_bits] "
                    f"= [{self.min_bits}, {self.max_bits}]"
                )
            return self

    recipe = Recipe(
        optimizer=OptimizerConfig(name="sgd", lr=0.1, momentum=0.0),
        schedule=ScheduleConfig(name="halving", every_steps=200, gamma=0.5),
        augment=AugmentConfig(),
        batch_size=200,
        model_options={"activation": "tanh"},
        search={"lr": Search(1e-3, 1.0, log=True)},
    )

    def __init__(self, params: StrategyParams | None = None) -> None:
        super().__init__(params)
        self.params: BitRegularization.Params
        self._lr0: float | None = None  # learning rate of the first step, for mu_from_lr

    def _layers(self, model: nn.Module) -> Iterator[tuple[str, torch.Tensor, _BitQuant]]:
        for name, layer, quant in parametrizations(model, _BitQuant):
            yield name, latent_weight(layer), quant  # type: ignore[misc]

    def prepare(self, model: nn.Module) -> nn.Module:
        bits = self.params.init_bits
        return attach(model, lambda _name, layer: _BitQuant(bits, layer.weight.device))

    def regularizer(self, model: nn.Module, loss: torch.Tensor) -> torch.Tensor | None:
        p = self.params
        if p.lambda1 == 0 and p.lambda2 == 0:
            return None
        total = loss.new_zeros(())
        for _, w, quant in self._layers(model):
            q = _quantize(w, quant.bits)[0]  # computed without grad: W~ is a constant here
            total = total + 0.5 * p.lambda1 * (q - w).pow(2).sum()
            total = total + p.lambda2 * torch.exp2(quant.bits.to(total.dtype))
        return total

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
        for _, w, quant in self._layers(model):
            q, z, _, delta = _quantize(w, quant.bits)
            dq_db = -delta * ((q - w) * z).sum()
            update = mu * (p.lambda1 * dq_db + p.lambda2 * torch.exp2(quant.bits.to(w.dtype)))
            move = torch.where(update.abs() < p.eps, 0.0, torch.sign(update)).long()
            quant.bits.copy_((quant.bits - move).clamp(p.min_bits, p.max_bits))

    def export(self, model: nn.Module) -> dict[str, ExportedLayer]:
        out: dict[str, ExportedLayer] = {}
        for name, w, quant in self._layers(model):
            bits = int(quant.bits)
            _, z, alpha, delta = _quantize(w.detach(), quant.bits)
            codes = z.to(_code_dtype(bits))
            # The same float expression as the forward, so weight is W~ bit for bit.
            weight = alpha + delta * codes.to(w.dtype)
            out[name] = ExportedLayer(
                weight=weight,
                bits=float(bits),
                n_floats=2,
                codes=codes,
                scale=float(delta),
                info={"alpha": float(alpha), "delta": float(delta), "bit_depth": bits},
            )
        return out

    def extra_metrics(self, model: nn.Module) -> dict[str, float]:
        bits = {f"bits.{name}": float(quant.bits) for name, _, quant in self._layers(model)}
        if not bits:
            return {}
        return {"mean_bits_learned": sum(bits.values()) / len(bits), **bits}

    def state_dict(self) -> dict[str, Any]:
        # The bit-depths are buffers in the model's own state_dict; only mu's reference lr is here.
        return {"lr0": self._lr0}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._lr0 = state.get("lr0")

"""Bit-wise training (arXiv 2202.09571): each weight is an n-bit sign-magnitude integer whose
bits are learned one by one through straight-through latents; frozen bits may carry a payload."""

from __future__ import annotations

import hashlib
import math
import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import torch
from pydantic import Field, ValidationInfo, field_validator, model_validator
from torch import nn

from schemas.errors import FieldError
from schemas.trial import OptimizerConfig, ScheduleConfig
from strategies.base import ExportedLayer, Recipe, Relation, Search, Strategy, StrategyParams
from strategies.layers import (
    attach,
    he_std,
    latent_weight,
    parametrizations,
    quantizable_layers,
    weight_of,
)
from strategies.registry import register_strategy

# Payload header: 8-byte little-endian length, then the SHA-256 of the payload bytes.
HEADER_BYTES = 8 + 32


class PayloadError(FieldError):
    """A payload that cannot be written or read. `field` names the culprit, `reason` says why."""


# -- bits, codes and payload streams (no model needed) ---------------------------------------


def _bit(x: torch.Tensor) -> torch.Tensor:
    """1[x > 0] as x's dtype: the authors' sign(relu(x)). sign+clamp beats `x > 0` on CPU by
    about 3x, and a comparison kernel is the hot spot of a bit-wise MLP step."""
    return x.sign().clamp_(min=0)


def decode_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """W_int of sign-magnitude codes `(sign_bit << (bits-1)) | magnitude` (int64)."""
    codes = codes.to(torch.int64)
    magnitude = codes & ((1 << (bits - 1)) - 1)
    negative = (codes >> (bits - 1)) & 1
    return magnitude * (1 - 2 * negative)


def encode_payload(data: bytes) -> torch.Tensor:
    """The bit stream written into frozen bits: header (length, SHA-256) then `data`, each byte
    most significant bit first. Returns a uint8 tensor of 0/1."""
    header = len(data).to_bytes(8, "little") + hashlib.sha256(data).digest()
    raw = torch.frombuffer(bytearray(header + data), dtype=torch.uint8)
    shifts = torch.arange(7, -1, -1, dtype=torch.uint8)
    return ((raw.unsqueeze(1) >> shifts) & 1).reshape(-1)


def _pack(bits: torch.Tensor) -> bytes:
    weights = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.int64)
    packed = (bits.reshape(-1, 8).to(torch.int64) * weights).sum(1).to(torch.uint8)
    return bytes(packed.tolist())


def frozen_bit_stream(codes: torch.Tensor, frozen_planes: Sequence[int]) -> torch.Tensor:
    """A layer's frozen bits in payload order: plane by plane (ascending plane index, the sign
    plane last), each plane's elements in row-major order. Plane p is bit p of each code."""
    flat = codes.detach().reshape(1, -1).to(torch.int64).cpu()
    planes = torch.tensor(list(frozen_planes), dtype=torch.int64).reshape(-1, 1)
    return ((flat >> planes) & 1).to(torch.uint8).reshape(-1)


def decode_payload(stream: torch.Tensor) -> bytes:
    """The payload bytes of a frozen-bit stream; raises PayloadError if the header's length or
    checksum does not hold."""
    head = 8 * HEADER_BYTES
    if stream.numel() < head:
        raise PayloadError("payload", f"{stream.numel()} frozen bits cannot hold the header")
    header = _pack(stream[:head])
    length = int.from_bytes(header[:8], "little")
    if length > (stream.numel() - head) // 8:
        raise PayloadError("payload", f"header claims {length} bytes, more than the bits hold")
    data = _pack(stream[head : head + 8 * length])
    if hashlib.sha256(data).digest() != header[8:]:
        raise PayloadError("payload", "SHA-256 checksum does not match (not a payload, or altered)")
    return data


def read_payload(layers: Sequence[tuple[torch.Tensor, Sequence[int]]]) -> bytes:
    """The payload carried by exported layers, given as (codes, frozen planes) in layer order."""
    streams = [frozen_bit_stream(codes, planes) for codes, planes in layers]
    return decode_payload(torch.cat(streams) if streams else torch.zeros(0, dtype=torch.uint8))


# -- the weight transform --------------------------------------------------------------------


class _ComposeBits(torch.autograd.Function):
    """W = alpha * sign * (frozen magnitude + sum_i b_i 2^i), b_i = 1[m_i > 0],
    sign = -1 if s > 0 else +1. Straight-through backward (the authors' to_bit / to_sign):
    dL/dm_i = dL/dW * alpha * sign * 2^i and dL/ds = -dL/dW * alpha * |W_int|."""

    @staticmethod
    def forward(
        ctx: Any,
        m: torch.Tensor,
        s: torch.Tensor,
        frozen_magnitude: torch.Tensor,
        powers: torch.Tensor,
        alpha: torch.Tensor,
    ) -> torch.Tensor:
        # In-place ops on fresh temporaries (the same values as the expressions in the
        # docstring): each layer-sized allocation is a fresh page-faulted buffer on CPU.
        magnitude = frozen_magnitude
        if m.shape[0]:
            # sum_i b_i 2^i + frozen magnitude (addition commutes exactly)
            magnitude = (powers @ _bit(m).reshape(m.shape[0], -1)).view_as(s)
            magnitude.add_(frozen_magnitude)
        sign = _bit(s).mul_(-2.0).add_(1.0)
        ctx.save_for_backward(sign, magnitude, powers, alpha)
        return (sign * alpha).mul_(magnitude)  # alpha * sign * magnitude

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        sign, magnitude, powers, alpha = ctx.saved_tensors
        g = grad * alpha
        grad_m = grad_s = None
        if ctx.needs_input_grad[0]:
            grad_m = torch.outer(powers, (g * sign).reshape(-1)).view(powers.shape[0], *g.shape)
        if ctx.needs_input_grad[1]:
            grad_s = g.mul_(magnitude).neg_()  # -(g * magnitude); g is not needed after this
        return grad_m, grad_s, None, None, None


class _BitWeight(nn.Module):
    """The parametrization of one layer. Its `original` is the sign latent s; the trainable
    magnitude latents are the Parameter `magnitude` (planes `trainable_planes`), the frozen
    ones the buffer `frozen` (planes `frozen_planes`), so no optimizer can change them."""

    def __init__(self, latents: torch.Tensor, mask: Sequence[bool], alpha: float) -> None:
        super().__init__()
        n = latents.shape[0]
        self.bits = n
        self.alpha: torch.Tensor
        self.frozen: torch.Tensor
        self.powers: torch.Tensor
        self.frozen_magnitude: torch.Tensor
        self.train_sign = bool(mask[n - 1])
        self.trainable_planes = tuple(i for i in range(n - 1) if mask[i])
        self.frozen_planes = tuple(i for i in range(n - 1) if not mask[i])
        t, f = list(self.trainable_planes), list(self.frozen_planes)
        self.magnitude = nn.Parameter(latents[t].clone(), requires_grad=bool(t))
        self.register_buffer("frozen", latents[f].clone())
        self.register_buffer("alpha", latents.new_tensor(alpha))
        self.register_buffer("powers", latents.new_tensor([2.0**i for i in t]), persistent=False)
        self.register_buffer("frozen_magnitude", self._frozen_magnitude(), persistent=False)
        self.register_load_state_dict_post_hook(_refresh_frozen_magnitude)

    def _frozen_magnitude(self) -> torch.Tensor:
        # The frozen planes never change: their share of the magnitude is composed once.
        out = self.frozen.new_zeros(self.frozen.shape[1:])
        for j, i in enumerate(self.frozen_planes):
            out += _bit(self.frozen[j]) * 2.0**i
        return out

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return _ComposeBits.apply(self.magnitude, s, self.frozen_magnitude, self.powers, self.alpha)

    @torch.no_grad()
    def codes(self, s: torch.Tensor) -> torch.Tensor:
        """int64 codes (sign_bit << (bits-1)) | magnitude: bit p of a code is plane p."""
        code = (s > 0).to(torch.int64) << (self.bits - 1)
        for j, i in enumerate(self.frozen_planes):
            code |= (self.frozen[j] > 0).to(torch.int64) << i
        for j, i in enumerate(self.trainable_planes):
            code |= (self.magnitude[j] > 0).to(torch.int64) << i
        return code

    def mask(self) -> list[int]:
        """Trainable bits in the authors' order: magnitude bits from the LSB, the sign last."""
        trainable = set(self.trainable_planes)
        return [int(i in trainable) for i in range(self.bits - 1)] + [int(self.train_sign)]

    def extra_repr(self) -> str:
        return f"bits={self.bits}, trainable={self.mask()}, alpha={float(self.alpha):.6g}"


def _refresh_frozen_magnitude(module: nn.Module, _incompatible: Any) -> None:
    assert isinstance(module, _BitWeight)
    module.frozen_magnitude = module._frozen_magnitude()


def _write_bits(latents: torch.Tensor, fixed: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Set latents where `fixed` so that 1[latent > 0] == values, keeping their magnitudes."""
    tiny = torch.finfo(latents.dtype).tiny
    forced = torch.where(values, latents.abs().clamp_min(tiny), -latents.abs())
    return torch.where(fixed, forced, latents)


def init_latents(
    shape: Sequence[int],
    bits: int,
    std: float,
    *,
    sign_std: float | None = None,
    fixed: torch.Tensor | None = None,
    values: torch.Tensor | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The paper's init of one layer: (bits, *shape) latents ~ std * N(0, 1) (planes 0..bits-2
    magnitude from the LSB, plane bits-1 the sign, drawn with `sign_std` when given), then every
    weight whose magnitude bits are all 0 redraws its magnitude latents until none is zero
    (global generator).

    `fixed`/`values` (bool, same shape) force payload bits; a zero weight then redraws only its
    unforced magnitude latents, and stays zero if all of them are forced.
    """
    latents = torch.randn((bits, *shape), device=device, dtype=dtype) * std
    if sign_std is not None:
        latents[-1] *= sign_std / std
    free = None
    if fixed is not None and values is not None:
        latents = _write_bits(latents, fixed, values)
        free = ~fixed[:-1].reshape(bits - 1, -1)
    flat = latents.view(bits, -1)
    while True:
        zero = _bit(flat[:-1]).sum(0) == 0
        if free is not None:
            zero &= free.any(0)
        where = zero.nonzero().squeeze(1)
        if where.numel() == 0:
            return latents
        new = torch.randn((bits - 1, where.numel()), device=flat.device, dtype=dtype) * std
        if free is not None:
            new = torch.where(free[:, where], new, flat[:-1, where])
        flat[:-1, where] = new


def compose_int(latents: torch.Tensor) -> torch.Tensor:
    """W_int = sign * sum_i b_i 2^i of (bits, *shape) latents, as their float dtype."""
    n = latents.shape[0]
    powers = latents.new_tensor([2.0**i for i in range(n - 1)])
    magnitude = (powers @ _bit(latents[:-1]).reshape(n - 1, -1)).view(latents.shape[1:])
    return (1 - 2 * _bit(latents[-1])) * magnitude


def he_alpha(w_int: torch.Tensor, std: float) -> float:
    """The per-layer constant with std(alpha * W_int) = std (population std)."""
    sd = float(w_int.to(torch.float64).std(correction=0))
    return std / sd if sd > 0 else std


# -- the strategy ----------------------------------------------------------------------------


def _check_payload(v: str | None) -> str | None:
    if v is None:
        return v
    path = Path(os.path.expanduser(v))
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise ValueError(f"file {v!r} does not exist") from None
    except OSError as e:
        raise ValueError(f"cannot read {v!r} ({e.strerror})") from None
    if not stat.S_ISREG(mode):
        raise ValueError(f"{v!r} is not a regular file")
    if not os.access(path, os.R_OK):
        raise ValueError(f"{v!r} is not readable")
    # Absolute, so that a trial running in another working directory (a Ray worker) finds it.
    return str(path.resolve())


class BitLearningParams(StrategyParams):
    bits: Annotated[
        int,
        Field(
            ge=2,
            le=32,
            description="n: bits per weight, sign included; W_int in [-(2^(n-1)-1), 2^(n-1)-1]",
        ),
        Search(3, 8),
    ] = 6
    trainable_msbs: Annotated[
        int,
        Field(
            ge=0,
            le=31,
            description="most significant magnitude bits that train (at most bits-1; "
            "unset: min(2, bits-1)); the others are frozen at their random init or carry "
            "the payload",
        ),
        Search(0, 31),  # narrowed to bits - 1: 1..n trainable bits with the sign
    ] = 2
    train_sign: Annotated[bool, Field(description="whether the sign bit trains")] = True
    train_bits: Annotated[
        str | None,
        Field(
            pattern=r"^[01]+$",
            description="explicit mask instead of trainable_msbs/train_sign: one 0/1 per "
            "bit, magnitude bits from the LSB then the sign (the authors' order); "
            "'000111' = sign + 2 MSBs at 6 bits",
        ),
    ] = None
    payload: Annotated[
        str | None,
        Field(description="path of a file whose bytes are written into the frozen bits"),
    ] = None

    @model_validator(mode="before")
    @classmethod
    def _default_msbs(cls, data: Any) -> Any:
        # The paper's "sign + 2 MSBs", capped so that bits=2 alone is valid; the value is
        # filled in (not left implicit) so a dumped Params validates again unchanged.
        if isinstance(data, dict) and "trainable_msbs" not in data:
            bits = data.get("bits")
            if isinstance(bits, int) and not isinstance(bits, bool) and bits >= 2:
                return {**data, "trainable_msbs": min(2, bits - 1)}
        return data

    @field_validator("train_sign")
    @classmethod
    def _something_trains(cls, v: bool, info: ValidationInfo) -> bool:
        if not v and info.data.get("trainable_msbs") == 0:
            raise ValueError("with trainable_msbs=0 and train_sign=false no bit would train")
        return v

    @field_validator("train_bits", mode="before")
    @classmethod
    def _mask_from_number(cls, v: Any) -> Any:
        # `--param train_bits=111111` arrives as a JSON number; without a leading zero its
        # digits are the mask exactly (a leading zero keeps it a string).
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v

    @field_validator("train_bits")
    @classmethod
    def _mask_fits(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is None:
            return v
        bits = info.data.get("bits")
        if bits is not None and len(v) != bits:
            raise ValueError(f"has {len(v)} characters; a {bits}-bit weight needs {bits}")
        if "1" not in v:
            raise ValueError("trains no bit; put a 1 at each bit that trains")
        default_msbs = min(2, (bits or 6) - 1)
        if info.data.get("trainable_msbs", default_msbs) != default_msbs or not info.data.get(
            "train_sign", True
        ):
            raise ValueError("give train_bits or trainable_msbs/train_sign, not both")
        return v

    _payload_file = field_validator("payload")(_check_payload)

    relations = (Relation("trainable_msbs", "<=", "bits", -1),)


@register_strategy("bit_learning")
class BitLearning(Strategy[BitLearningParams]):
    """Ivan & Florian, "Bit-wise training of neural network weights" (arXiv 2202.09571).

    Each weight is an n-bit sign-magnitude integer times a per-layer constant, learned bit by
    bit: b_i = 1[m_i > 0] for the magnitude latents m_0 (LSB) ... m_{n-2}, sign = -1 if s > 0
    else +1, W = alpha * sign * sum_i b_i 2^i, with straight-through gradients to the latents.
    alpha is fixed when the layer is built, so that std(W) = sqrt(2/fan_in) at init. Only the
    sign and the `trainable_msbs` most significant bits train (default: sign + 2 MSBs); the
    frozen bits keep their random init or carry the bytes of a `payload` file.

    Paper, fidelity and every choice of bitsweep's: docs/strategies/bit_learning.md.
    """

    paper = "Bit-wise training of neural network weights (Ivan & Florian, arXiv 2202.09571)"
    summary = "n-bit integer weights learned bit by bit; frozen bits can carry a payload"
    fidelity = (
        "faithful: bit composition, straight-through gradients, init, alpha fixed at build, "
        "trainable-bit mask, Adam recipe; bitsweep's: BatchNorm in MLPs, lr steps in epochs, "
        "payload format (docs/strategies/bit_learning.md)"
    )

    recipe = Recipe(
        optimizer=OptimizerConfig(name="adam", lr=9e-4, weight_decay=0.0),
        schedule=ScheduleConfig(name="step", milestones=[40, 80], gamma=0.1),
        batch_size=25,
        model_options={"bias": False, "batch_norm": True},
        search={
            "lr": Search(3e-4, 1e-2, log=True),
            "optimizer": Search(choices=("adam", "sgd")),
            "batch_size": Search(choices=(25, 64, 128)),
        },
    )

    def __init__(self, params: BitLearningParams | None = None) -> None:
        super().__init__(params)
        self.payload_bytes = 0
        self.payload_stream_bits = 0

    def trainable_mask(self) -> list[bool]:
        """One flag per bit in the authors' order: magnitude bits from the LSB, the sign last."""
        p = self.params
        if p.train_bits is not None:
            return [c == "1" for c in p.train_bits]
        n, k = p.bits, p.trainable_msbs
        return [i >= n - 1 - k for i in range(n - 1)] + [p.train_sign]

    def prepare(self, model: nn.Module) -> nn.Module:
        n = self.params.bits
        mask = self.trainable_mask()
        frozen = [i for i in range(n) if not mask[i]]
        weights = {name: weight_of(m) for name, m in quantizable_layers(model)}
        stream = self._payload_stream(len(frozen) * sum(w.numel() for w in weights.values()))
        made: dict[str, _BitWeight] = {}
        offset = 0
        for name, w in weights.items():
            std = he_std(w)
            fixed = values = None
            if stream is not None:
                # This layer's share of the stream, laid out as its frozen planes.
                cap = len(frozen) * w.numel()
                seg = stream[offset : offset + cap].to(w.device, torch.bool)
                offset += seg.numel()
                fixed = torch.zeros((n, *w.shape), dtype=torch.bool, device=w.device)
                values = torch.zeros_like(fixed)
                carried = torch.arange(cap, device=w.device) < seg.numel()
                fixed[frozen] = carried.view(-1, *w.shape)
                padded = torch.cat([seg, seg.new_zeros(cap - seg.numel())])
                values[frozen] = padded.view(-1, *w.shape)
            # The authors draw the magnitude latents with sqrt(2 / (n * fan_in)) (their bit
            # tensor's fan-in counts the bit dimension) and the sign latent with sqrt(2 / fan_in).
            latents = init_latents(
                w.shape,
                n,
                std / math.sqrt(n),
                sign_std=std,
                fixed=fixed,
                values=values,
                device=w.device,
                dtype=w.dtype,
            )
            with torch.no_grad():
                w.copy_(latents[-1])
            w.requires_grad_(mask[-1])
            made[name] = _BitWeight(latents, mask, he_alpha(compose_int(latents), std))
        return attach(model, lambda name, _layer: made[name])

    def _payload_stream(self, capacity_bits: int) -> torch.Tensor | None:
        path = self.params.payload
        if path is None:
            return None
        try:
            data = Path(os.path.expanduser(path)).read_bytes()
        except OSError as e:
            raise PayloadError("params.payload", f"cannot read {path!r} ({e.strerror})") from None
        capacity = max(0, capacity_bits // 8 - HEADER_BYTES)
        if len(data) > capacity:
            raise PayloadError(
                "params.payload",
                f"{len(data)} bytes do not fit: the frozen bits of this model hold {capacity} "
                f"bytes (after a {HEADER_BYTES}-byte header)",
            )
        stream = encode_payload(data)
        self.payload_bytes = len(data)
        self.payload_stream_bits = stream.numel()
        return stream

    def export(self, model: nn.Module) -> dict[str, ExportedLayer]:
        out: dict[str, ExportedLayer] = {}
        remaining = self.payload_stream_bits
        for index, (name, layer, p) in enumerate(parametrizations(model, _BitWeight)):
            assert isinstance(p, _BitWeight)
            codes = p.codes(latent_weight(layer))
            w_int = decode_codes(codes, p.bits).to(p.alpha.dtype)
            frozen = [*p.frozen_planes, *([] if p.train_sign else [p.bits - 1])]
            carried = min(remaining, len(frozen) * codes.numel())
            remaining -= carried
            out[name] = ExportedLayer(
                weight=(p.alpha * w_int).detach().clone(),
                bits=float(p.bits),
                n_floats=1,
                codes=codes,
                scale=float(p.alpha),
                encoding="sign_magnitude",
                info={
                    "bits": p.bits,
                    "trainable_bits": p.mask(),
                    "frozen_planes": frozen,
                    "layer_index": index,
                    "payload_bits": carried,
                    "decode": "scale * (1 - 2 * (code >> bits-1)) * (code & (2^(bits-1) - 1))",
                },
            )
        return out

    def extra_metrics(self, model: nn.Module) -> dict[str, float]:
        total = frozen = 0
        for _, layer, p in parametrizations(model, _BitWeight):
            assert isinstance(p, _BitWeight)
            numel = latent_weight(layer).numel()
            total += numel * p.bits
            frozen += numel * (p.bits - sum(p.mask()))
        capacity = max(0, frozen // 8 - HEADER_BYTES)
        return {
            "trainable_bits_per_weight": float(sum(self.trainable_mask())),
            "frozen_bit_fraction": frozen / total if total else 0.0,
            "payload_capacity_bytes": float(capacity),
            "payload_bytes": float(self.payload_bytes),
            "payload_fraction": self.payload_stream_bits / total if total else 0.0,
            "payload_used_fraction": self.payload_stream_bits / frozen if frozen else 0.0,
        }

"""`ExportedLayer`: the deployed weights of one layer, from which every cost metric is computed.

Imports torch only. How each field enters the metrics is in `strategies.metrics`; what the
contract suite checks of each field is in `strategies.testing`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

Encoding = Literal["unsigned", "signed", "sign_magnitude"]

#: The release that deprecated an undeclared encoding of negative codes, and the one that will
#: read an undeclared encoding as `unsigned` whatever the codes (docs/writing-a-strategy.md).
UNDECLARED_SIGNED_DEPRECATED_IN = "0.2"
UNDECLARED_SIGNED_REMOVED_IN = "0.4"


@dataclass
class ExportedLayer:
    """The deployed weights of one layer.

    - `weight`: the exact values a deployment computes with: a detached float32 tensor of the
      layer's weight shape.
    - `bits`: storage bits per weight (32 for a layer left in float).
    - `n_floats`: per-layer 32-bit floats stored beside the codes: 1 for `scale`, 1 for
      `offset`, one per `codebook` entry, at least.
    - `codes`: the integer codes, when the strategy has them, of the weight's shape (or with a
      leading bit-plane dimension); `decode()` of them is `weight`, exactly.
    - `encoding` of the codes in `bits` bits: `unsigned` (0 .. 2^bits - 1), `signed` (two's
      complement; at 1 bit the two values are -1 and +1), or `sign_magnitude` (an unsigned
      bit pattern: the top bit is the sign, the bits below the magnitude). Declare it. Left
      out, it is inferred from the codes as the plugin API before 0.2 read them: `signed`
      when any code is negative (deprecated: a `DeprecationWarning` says so), else
      `unsigned`.
    - `scale`, `offset`: value = scale * code + offset (for `sign_magnitude`: scale * signed
      magnitude + offset); `codebook`: value = codebook[code] instead.
    - `info`: anything else worth keeping with the export (JSON-ready values).
    """

    weight: torch.Tensor
    bits: float
    n_floats: int = 0
    codes: torch.Tensor | None = None
    scale: float | None = None
    info: dict[str, Any] = field(default_factory=dict)
    offset: float | None = None
    codebook: torch.Tensor | None = None
    encoding: Encoding = None  # type: ignore[assignment]  # None: inferred in __post_init__

    def __post_init__(self) -> None:
        if self.encoding is None:
            self.encoding = infer_encoding(self.codes, self.codebook)

    @classmethod
    def float32(cls, weight: torch.Tensor, **info: Any) -> ExportedLayer:
        """A layer left in float: its weights as they are, 32 bits each."""
        return cls(weight=weight.detach().to(torch.float32).clone(), bits=32.0, info=dict(info))

    @classmethod
    def binary(
        cls, weight: torch.Tensor, latent: torch.Tensor, scale: float, **info: Any
    ) -> ExportedLayer:
        """A 1-bit layer deploying `weight` = +-scale: code +1 where `latent` is >= +0, else -1,
        and the scale stored as one float."""
        codes = torch.where(torch.signbit(latent), -1, 1).to(torch.int8)
        return cls(
            weight=weight,
            bits=1.0,
            n_floats=1,
            codes=codes,
            scale=float(scale),
            encoding="signed",
            info={"decode": "weight = scale * code", **info},
        )

    def stored_floats(self) -> int:
        """The per-layer floats this export declares: its scale, offset and codebook entries."""
        n = int(self.scale is not None) + int(self.offset is not None)
        return n + (0 if self.codebook is None else int(self.codebook.numel()))

    def code_range(self) -> tuple[int, int]:
        """(lowest, highest) code that `bits` bits hold in this `encoding`."""
        b = int(self.bits)
        if self.encoding == "signed":
            return (-1, 1) if b == 1 else (-(2 ** (b - 1)), 2 ** (b - 1) - 1)
        return 0, 2**b - 1

    def decode(self) -> torch.Tensor:
        """The weights the codes stand for (float32), by `codebook` or by scale and offset."""
        if self.codes is None:
            raise ValueError("this export has no codes")
        codes = self.codes.to(torch.int64)
        if self.codebook is not None:
            return self.codebook.to(torch.float32)[codes]
        if self.encoding == "sign_magnitude":
            top = int(self.bits) - 1
            values = torch.where((codes >> top) & 1 == 1, -1, 1) * (codes & ((1 << top) - 1))
        else:
            values = codes
        out = values.to(torch.float32)
        if self.scale is not None:
            out = torch.tensor(self.scale, dtype=torch.float32) * out
        if self.offset is not None:
            out = out + torch.tensor(self.offset, dtype=torch.float32)
        return out


def infer_encoding(codes: torch.Tensor | None, codebook: torch.Tensor | None) -> Encoding:
    """The encoding of codes exported without one: `signed` when any code is negative (how the
    plugin API before 0.2 read them; deprecated, with a warning), else `unsigned`."""
    if codes is None or codebook is not None or codes.numel() == 0:
        return "unsigned"
    if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
        return "unsigned"  # not integer codes at all: the contract suite names that fault
    if int(codes.min()) >= 0:
        return "unsigned"
    warnings.warn(
        "ExportedLayer with negative codes and no `encoding`: read as two's complement "
        "(encoding='signed'). Declare it, ExportedLayer(..., encoding='signed'); an "
        f"undeclared encoding is deprecated since bitsweep {UNDECLARED_SIGNED_DEPRECATED_IN} "
        f"and will mean 'unsigned' from {UNDECLARED_SIGNED_REMOVED_IN} "
        "(docs/writing-a-strategy.md, 'Deprecations').",
        DeprecationWarning,
        stacklevel=4,
    )
    return "signed"

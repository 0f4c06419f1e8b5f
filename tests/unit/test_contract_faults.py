"""The contract suite against deliberately broken strategies: two small plugin strategies
(ternary weights; a learned-step-size b-bit quantizer) pass it, and each broken variant fails
it with a message that names the fault."""

from __future__ import annotations

import time
from typing import Annotated, Any

import pytest
import torch
from pydantic import Field
from torch import nn

from strategies import ExportedLayer, Search, Strategy, StrategyParams
from strategies.layers import attach, latent_weight, parametrizations
from strategies.testing import run_contract

# -- two correct strategies -----------------------------------------------------------------


class TernaryParams(StrategyParams):
    threshold: Annotated[float, Field(ge=0, le=2), Search(0.1, 1.0)] = 0.7


class _Ternarize(nn.Module):
    """w -> s * t, t = sign(w) where |w| > threshold * mean|w| else 0, s = mean |w| kept."""

    def __init__(self, threshold: float) -> None:
        super().__init__()
        self.threshold = threshold

    def codes_and_scale(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        keep = w.abs() > self.threshold * w.abs().mean()
        t = torch.where(keep, torch.sign(w), torch.zeros_like(w))
        scale = (w.abs() * keep).sum() / keep.sum().clamp_min(1)
        return t, scale.detach()

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        t, scale = self.codes_and_scale(w)
        if not self.training:
            return scale * t
        return w + (scale * t - w).detach()  # straight-through


class Ternary(Strategy[TernaryParams]):
    """Ternary weights {-s, 0, s}, straight-through gradient."""

    paper = "test"
    summary = "ternary"
    fidelity = "exact"

    def prepare(self, model: nn.Module) -> nn.Module:
        return attach(model, lambda _n, _l: _Ternarize(self.params.threshold))

    def layer(self, t: torch.Tensor, scale: torch.Tensor) -> ExportedLayer:
        return ExportedLayer(
            weight=(scale * t).detach().float(),
            bits=2,
            n_floats=1,
            codes=t.to(torch.int8),
            scale=float(scale),
            encoding="signed",
        )

    def export(self, model: nn.Module) -> dict[str, ExportedLayer]:
        out = {}
        for name, layer, p in parametrizations(model, _Ternarize):
            with torch.no_grad():
                t, scale = p.codes_and_scale(latent_weight(layer))  # type: ignore[operator]
            out[name] = self.layer(t, scale)
        return out


class LsqParams(StrategyParams):
    bits: Annotated[int, Field(ge=2, le=8), Search(2, 6)] = 4


def _round_ste(v: torch.Tensor) -> torch.Tensor:
    return v + (v.round() - v).detach()


class _Lsq(nn.Module):
    """w -> s * clamp(round(w / s), -2^(b-1), 2^(b-1) - 1) with a learned step size s."""

    def __init__(self, w: torch.Tensor, bits: int) -> None:
        super().__init__()
        self.lo, self.hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        self.step = nn.Parameter(2 * w.detach().abs().mean() / self.hi**0.5)

    def step_size(self) -> torch.Tensor:
        return self.step

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        s = self.step_size()
        return _round_ste(torch.clamp(w / s, self.lo, self.hi)) * s

    @torch.no_grad()
    def codes(self, w: torch.Tensor) -> torch.Tensor:
        return torch.clamp(torch.round(w / self.step), self.lo, self.hi).to(torch.int16)


class Lsq(Strategy[LsqParams]):
    """b-bit signed integer weights times a learned step size (LSQ-style)."""

    paper = "test"
    summary = "lsq"
    fidelity = "exact"

    declared_bits_extra = 0

    def prepare(self, model: nn.Module) -> nn.Module:
        return attach(model, lambda _n, layer: _Lsq(latent_weight(layer), self.params.bits))

    def export(self, model: nn.Module) -> dict[str, ExportedLayer]:
        out = {}
        for name, layer, p in parametrizations(model, _Lsq):
            codes = p.codes(latent_weight(layer))  # type: ignore[operator]
            s = float(p.step)  # type: ignore[arg-type]
            out[name] = ExportedLayer(
                weight=torch.tensor(s) * codes.float(),
                bits=self.params.bits + self.declared_bits_extra,
                n_floats=1,
                codes=codes,
                scale=s,
                encoding="signed",
            )
        return out


# -- broken variants ------------------------------------------------------------------------


class TernaryAsOneBit(Ternary):
    def layer(self, t: torch.Tensor, scale: torch.Tensor) -> ExportedLayer:
        out = super().layer(t, scale)
        out.bits = 1
        return out


class TernaryUnsigned(Ternary):
    def layer(self, t: torch.Tensor, scale: torch.Tensor) -> ExportedLayer:
        out = super().layer(t, scale)
        out.encoding = "unsigned"
        return out


class TernaryScaleNotCounted(Ternary):
    def layer(self, t: torch.Tensor, scale: torch.Tensor) -> ExportedLayer:
        out = super().layer(t, scale)
        out.n_floats = 0
        return out


class TernaryLayerLeftOut(Ternary):
    def export(self, model: nn.Module) -> dict[str, ExportedLayer]:
        out = super().export(model)
        out.pop("fc1")
        return out


class TernaryCodesDoNotDecode(Ternary):
    def layer(self, t: torch.Tensor, scale: torch.Tensor) -> ExportedLayer:
        out = super().layer(t, scale)
        out.scale = float(scale) * 0.5
        return out


class TernaryExportOtherSettings(Ternary):
    def export(self, model: nn.Module) -> dict[str, ExportedLayer]:
        out = {}
        for name, layer, _ in parametrizations(model, _Ternarize):
            with torch.no_grad():
                t, scale = _Ternarize(self.params.threshold * 2 + 0.3).codes_and_scale(
                    latent_weight(layer)
                )
            out[name] = self.layer(t, scale)
        return out


class _BlockedTernarize(_Ternarize):
    def forward(self, w: torch.Tensor) -> torch.Tensor:
        t, scale = self.codes_and_scale(w.detach())
        return scale * t


class TernaryGradientBlocked(Ternary):
    def prepare(self, model: nn.Module) -> nn.Module:
        return attach(model, lambda _n, _l: _BlockedTernarize(self.params.threshold))


class TernaryFloat64Export(Ternary):
    def layer(self, t: torch.Tensor, scale: torch.Tensor) -> ExportedLayer:
        out = super().layer(t, scale)
        out.weight = out.weight.double()
        return out


class TernaryFlattenedExport(Ternary):
    def layer(self, t: torch.Tensor, scale: torch.Tensor) -> ExportedLayer:
        out = super().layer(t, scale)
        out.weight = out.weight.reshape(-1)
        assert out.codes is not None
        out.codes = out.codes.reshape(-1)
        return out


class TernaryNoCodesOneBit(Ternary):
    def layer(self, t: torch.Tensor, scale: torch.Tensor) -> ExportedLayer:
        return ExportedLayer(weight=(scale * t).float(), bits=1, n_floats=1)


class TernaryNaNExport(Ternary):
    def layer(self, t: torch.Tensor, scale: torch.Tensor) -> ExportedLayer:
        out = super().layer(t, scale)
        out.weight = out.weight.clone()
        out.weight.view(-1)[0] = float("nan")
        return out


class TernaryExportChangesModel(Ternary):
    def export(self, model: nn.Module) -> dict[str, ExportedLayer]:
        out = super().export(model)
        for _, layer, _ in parametrizations(model, _Ternarize):
            with torch.no_grad():
                latent_weight(layer).mul_(0.99)
        return out


class TernaryNondeterministicExport(Ternary):
    def layer(self, t: torch.Tensor, scale: torch.Tensor) -> ExportedLayer:
        g = torch.Generator().manual_seed(time.perf_counter_ns())
        jitter = 1.0 + 1e-3 * float(torch.rand((), generator=g))
        return super().layer(t, scale * jitter)


class TernaryCodebookNotCounted(Ternary):
    def layer(self, t: torch.Tensor, scale: torch.Tensor) -> ExportedLayer:
        book = torch.stack([-scale, torch.zeros(()), scale]).float()
        return ExportedLayer(
            weight=book[(t + 1).long()], bits=2, n_floats=1, codes=(t + 1).to(torch.uint8),
            codebook=book,
        )  # fmt: skip


class LsqOneBitShort(Lsq):
    declared_bits_extra = -1


class _FrozenStepLsq(_Lsq):
    def step_size(self) -> torch.Tensor:
        return self.step.detach()


class LsqStepNeverLearns(Lsq):
    def prepare(self, model: nn.Module) -> nn.Module:
        return attach(
            model, lambda _n, layer: _FrozenStepLsq(latent_weight(layer), self.params.bits)
        )


class LsqStepNotOptimized(Lsq):
    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        params = [p for n, p in model.named_parameters() if not n.endswith(".step")]
        return [{"params": params}]


class LsqFixedBitsBeyondDefault(Lsq):
    """Right at the default bits (4), wrong at every other point of the search space."""

    def export(self, model: nn.Module) -> dict[str, ExportedLayer]:
        out = super().export(model)
        for layer in out.values():
            layer.bits = 4
        return out


class _NoisyEvalLsq(_Lsq):
    def forward(self, w: torch.Tensor) -> torch.Tensor:
        out = super().forward(w)
        return out if self.training else out * 1.05


class LsqEvalForwardDiffers(Lsq):
    def prepare(self, model: nn.Module) -> nn.Module:
        return attach(
            model, lambda _n, layer: _NoisyEvalLsq(latent_weight(layer), self.params.bits)
        )


FAULTS: list[tuple[type[Strategy], str]] = [
    (TernaryAsOneBit, "declared 1 bit (signed) holds codes -1 and +1, but codes span -1..1"),
    (TernaryUnsigned, "(unsigned) holds codes 0..3, but codes span -1..1"),
    (TernaryScaleNotCounted, "declares a scale (1 floats) but counts n_floats = 0"),
    (TernaryLayerLeftOut, "layers ['fc1'] are missing from the export"),
    (TernaryCodesDoNotDecode, "differ from their decoded codes"),
    (TernaryExportOtherSettings, "the model in eval mode and a plain copy"),
    (TernaryGradientBlocked, "the task loss's gradient is None"),
    (TernaryFloat64Export, "weight is torch.float64, not float32"),
    (TernaryFlattenedExport, "weight shape"),
    (TernaryNoCodesOneBit, "declared 1 bit holds 2 values, but the weights take 3"),
    (TernaryNaNExport, "weights are NaN or inf"),
    (TernaryExportChangesModel, "export changed"),
    (TernaryNondeterministicExport, "export twice: layer conv weight differs"),
    (TernaryCodebookNotCounted, "declares a 3-entry codebook (3 floats) but counts n_floats = 1"),
    (LsqOneBitShort, "declared 3 bits (signed) holds codes -4..3, but codes span"),
    (LsqStepNeverLearns, "step (1 values) did not move"),
    (LsqStepNotOptimized, "is trainable but not in param_groups"),
    (LsqFixedBitsBeyondDefault, "bits at the high end"),
    (LsqEvalForwardDiffers, "the model in eval mode and a plain copy"),
]


@pytest.mark.parametrize("cls", [Ternary, Lsq], ids=lambda c: c.__name__)
def test_correct_strategies_pass_the_contract(cls: type[Strategy]) -> None:
    assert run_contract(cls) == []


@pytest.mark.parametrize(("cls", "fault"), FAULTS, ids=[c.__name__ for c, _ in FAULTS])
def test_broken_strategy_fails_the_contract_naming_the_fault(
    cls: type[Strategy], fault: str
) -> None:
    failures = run_contract(cls)
    assert any(fault in f for f in failures), "\n".join(failures) or "no failure"


def test_failure_names_the_point_and_the_layer() -> None:
    failures = run_contract(LsqFixedBitsBeyondDefault)
    assert any(
        "bits at the high end (bits=6)" in f and "layer conv: declared 4 bits" in f
        for f in failures
    ), failures

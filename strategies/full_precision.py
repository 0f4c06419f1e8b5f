"""The float32 baseline: no quantization, every weight deployed as trained."""

from __future__ import annotations

from torch import nn

from schemas.trial import OptimizerConfig, ScheduleConfig
from strategies.base import ExportedLayer, Recipe, Search, Strategy, StrategyParams
from strategies.layers import quantizable_layers, weight_of
from strategies.registry import register_strategy


class FullPrecisionParams(StrategyParams):
    pass


@register_strategy("full_precision")
class FullPrecision(Strategy[FullPrecisionParams]):
    """Baseline: float32 weights, trained and deployed unchanged.

    Every Linear and Conv weight is reported as a 32-bit layer, so its cost sits on the same
    leaderboard as the quantized strategies.

    Paper, fidelity and every choice of bitsweep's: docs/strategies/full_precision.md.
    """

    paper = "baseline (float32 weights)"
    summary = "float32 weights, the reference every strategy is compared with"
    fidelity = "exact: no transform (docs/strategies/full_precision.md)"

    recipe = Recipe(
        optimizer=OptimizerConfig(name="adam", lr=1e-3),
        schedule=ScheduleConfig(name="cosine"),
        batch_size=64,
        search={
            "lr": Search(1e-4, 3e-2, log=True),
            "optimizer": Search(choices=("adam", "sgd")),
        },
    )

    def export(self, model: nn.Module) -> dict[str, ExportedLayer]:
        return {
            name: ExportedLayer(weight=weight_of(layer).detach().clone(), bits=32.0)
            for name, layer in quantizable_layers(model)
        }

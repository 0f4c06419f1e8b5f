"""One paper claim per strategy that holds at small scale, on mnist-5k and one seed: the shorter
form of the rows of docs/reproduction.md (benchmarks/reproduce.py), so that a change breaking a
claim fails here. "float" is full_precision trained with the strategy's own recipe."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import pytest
import torch
from scripts import load_script

from runners.engine.trial import train
from schemas.trial import TrialConfig, TrialResult

pytestmark = pytest.mark.slow


REPRODUCE = load_script("reproduce", "bitsweep_reproduce")


def _config(strategy: str, epochs: int, **kw: Any) -> TrialConfig:
    return TrialConfig(strategy=strategy, dataset="mnist-5k", model="mlp", epochs=epochs, **kw)


def _run(config: TrialConfig) -> TrialResult:
    return train(config).result


def _with_float(config: TrialConfig) -> tuple[TrialResult, TrialResult]:
    return _run(config), _run(REPRODUCE.same_recipe_float(config))


def test_bit_learning_sign_and_two_msbs_match_float_and_all_bits_bring_zeros() -> None:
    net = {"model_options": REPRODUCE.LENET_300_100}
    sign2, float_ = _with_float(_config("bit_learning", 4, params={"trainable_msbs": 2}, **net))
    every = _run(_config("bit_learning", 4, params={"trainable_msbs": 5}, **net))
    assert float_.test_accuracy - sign2.test_accuracy <= 0.02, (sign2, float_)
    assert every.weights.sparsity > 2 * sign2.weights.sparsity, (every.weights, sign2.weights)


def test_bitnet_ends_level_with_float_at_the_bits_of_the_eps_threshold() -> None:
    # The report's reading (bn-bits, bn-acc): BitNet trains to float's level, not 2 points
    # above it, and its mean bits are where eps stops the bit cost (the lambda1 = 0 control's),
    # with lambda1 moving single layers at most.
    bitnet, float_ = _with_float(_config("bit_regularization", 8))
    control = _run(_config("bit_regularization", 8, params={"lambda1": 0.0}))
    bits = [lm.bits for lm in bitnet.weights.layers]
    mean = statistics.fmean(bits)
    assert 5 <= mean <= 7 and bitnet.strategy_info["compression_ratio_paper"] == 32 / mean
    assert {lm.bits for lm in control.weights.layers} == {6.0}, control.weights
    assert abs(float_.test_accuracy - bitnet.test_accuracy) <= 0.02, (bitnet, float_)


def test_weight_fixing_from_a_float_start_fewer_values_as_delta_grows(tmp_path: Path) -> None:
    start = train(REPRODUCE.same_recipe_float(_config("weight_fixing", 5)))
    checkpoint = tmp_path / "float.pt"
    torch.save(start.model.state_dict(), checkpoint)

    def fixed(delta: float) -> TrialResult:
        params = {"delta": delta, "init_checkpoint": str(checkpoint)}
        return _run(_config("weight_fixing", 10, params=params))

    fine, coarse = fixed(0.015), fixed(0.05)
    assert start.result.test_accuracy - fine.test_accuracy <= 0.02, (fine, start.result)
    assert fine.weights.unique_nonzero_weights <= 100, fine.weights
    assert coarse.weights.unique_nonzero_weights < fine.weights.unique_nonzero_weights
    assert coarse.weights.weight_entropy_nonzero_bits < fine.weights.weight_entropy_nonzero_bits


@pytest.mark.parametrize("strategy", ["wrn_1bit", "exact_binary"])
def test_one_bit_weights_within_three_points_of_float(strategy: str) -> None:
    binary, float_ = _with_float(_config(strategy, 6))
    assert {lm.bits for lm in binary.weights.layers} == {1.0}
    assert float_.test_accuracy - binary.test_accuracy <= 0.03, (binary, float_)

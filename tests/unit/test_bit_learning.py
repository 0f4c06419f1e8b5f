"""bit_learning against its paper (arXiv 2202.09571): integer weights of learned bits, He-matched
constant scale, no zero at init, frozen bits untouched, straight-through gradients, payloads."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pydantic
import pytest
import torch
from torch import nn

from runners.engine.export import save_weights
from runners.engine.trial import train
from schemas.trial import TrialConfig
from service.cli import main
from strategies.bit_learning import (
    HEADER_BYTES,
    BitLearning,
    _BitWeight,
    decode_codes,
    read_payload,
)
from strategies.full_precision import FullPrecision
from strategies.layers import he_std, latent_weight, parametrizations
from strategies.metrics import weight_metrics
from strategies.testing import TinyNet, short_training


def _prepared(model: nn.Module, seed: int = 0, **params: object) -> tuple[BitLearning, nn.Module]:
    torch.manual_seed(seed)
    strategy = BitLearning(BitLearning.Params(**params))
    return strategy, strategy.prepare(model)


def _mlp() -> nn.Module:
    return nn.Sequential(
        nn.Flatten(), nn.Linear(64, 300, bias=False), nn.Linear(300, 10, bias=False)
    )


def _frozen_bits(strategy: BitLearning, model: nn.Module) -> list[torch.Tensor]:
    out = []
    for layer in strategy.export(model).values():
        planes = torch.tensor(layer.info["frozen_planes"]).view(-1, *[1] * layer.codes.dim())
        out.append((layer.codes.unsqueeze(0) >> planes) & 1)
    return out


def test_exported_weights_are_integers_in_range_times_one_scale() -> None:
    strategy, model = short_training(BitLearning, {"bits": 4}, seed=0)
    for layer in strategy.export(model).values():
        w_int = decode_codes(layer.codes, 4)
        assert w_int.abs().max() <= 2**3 - 1
        # float32(alpha) * W_int: the one rounding of a float32 product, nothing else
        assert torch.equal(layer.weight, torch.tensor(layer.scale) * w_int.float())
        assert torch.allclose(layer.weight.double() / layer.scale, w_int.double(), atol=1e-5)


def test_alpha_matches_he_std_at_init() -> None:
    strategy, model = _prepared(_mlp())
    for (_, layer, _), exported in zip(
        parametrizations(model, _BitWeight), strategy.export(model).values(), strict=True
    ):
        std = float(exported.weight.double().std(correction=0))
        assert std == pytest.approx(he_std(layer.weight), rel=1e-5)


def test_no_weight_is_zero_at_init() -> None:
    # 2 magnitude bits: a quarter of the first draw is zero, so the resampling must run.
    strategy, model = _prepared(nn.Sequential(nn.Linear(784, 300, bias=False)), bits=3)
    assert all(bool((layer.weight != 0).all()) for layer in strategy.export(model).values())


def test_no_weight_is_zero_at_init_under_a_payload(tmp_path: Path) -> None:
    # An all-zero payload zeroes the 3 frozen LSBs: the free MSB latents must be redrawn.
    (tmp_path / "zeros.bin").write_bytes(bytes(800))
    strategy, model = _prepared(TinyNet(), payload=str(tmp_path / "zeros.bin"))
    assert all(bool((layer.weight != 0).all()) for layer in strategy.export(model).values())


def test_default_mask_trains_sign_and_two_msbs() -> None:
    strategy = BitLearning()
    assert strategy.trainable_mask() == [False, False, False, True, True, True]
    assert (
        BitLearning(BitLearning.Params(train_bits="000111")).trainable_mask()
        == strategy.trainable_mask()
    )


def test_frozen_bits_are_unchanged_by_training_bit_exactly() -> None:
    torch.manual_seed(0)  # the same draws as short_training's prepare
    strategy = BitLearning()
    before = _frozen_bits(strategy, strategy.prepare(TinyNet()))
    trained_strategy, trained = short_training(BitLearning, {}, seed=0)
    after = _frozen_bits(trained_strategy, trained)
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))


def test_only_trainable_latents_reach_the_optimizer() -> None:
    strategy, model = _prepared(TinyNet(), train_sign=False)
    trained = {id(p) for g in strategy.param_groups(model) for p in g["params"]}
    for _, layer, p in parametrizations(model, _BitWeight):
        assert id(p.magnitude) in trained and id(latent_weight(layer)) not in trained
        assert not any(id(b) in trained for b in p.buffers())


def test_gradient_is_straight_through_and_negated_for_the_sign() -> None:
    # Two weights, bits=3 (m_0, m_1, s), every bit trains, alpha = 0.5, L = sum(c * W).
    _, model = _prepared(nn.Sequential(nn.Linear(2, 1, bias=False)), bits=3, train_bits="111")
    layer = model[0]
    ((_, _, p),) = parametrizations(model, _BitWeight)
    with torch.no_grad():
        p.alpha.fill_(0.5)
        # weight 0: b = (1, 1), s < 0 -> +3; weight 1: b = (1, 0), s > 0 -> -1
        p.magnitude.copy_(torch.tensor([[[0.2, 0.3]], [[0.1, -0.4]]]))
        latent_weight(layer).copy_(torch.tensor([[-0.5, 0.7]]))
    c = torch.tensor([[2.0, -3.0]])
    w = layer.weight
    (w * c).sum().backward()
    # dL/dm_i = c * alpha * sign * 2^i ; dL/ds = -c * alpha * |W_int|
    assert torch.equal(w.detach(), torch.tensor([[1.5, -0.5]]))
    assert torch.equal(p.magnitude.grad, torch.tensor([[[1.0, 1.5]], [[2.0, 3.0]]]))
    assert torch.equal(latent_weight(layer).grad, torch.tensor([[-3.0, 1.5]]))


def test_training_forward_uses_the_exported_weights() -> None:
    strategy, model = short_training(BitLearning, {}, seed=1)
    exported = strategy.export(model)
    for name, layer, _ in parametrizations(model, _BitWeight):
        assert torch.equal(layer.weight.detach(), exported[name].weight)


def test_codes_keep_the_sign_of_a_zero_weight() -> None:
    strategy, model = _prepared(
        nn.Sequential(nn.Linear(2, 1, bias=False)), bits=3, train_bits="111"
    )
    ((_, layer, p),) = parametrizations(model, _BitWeight)
    with torch.no_grad():
        p.magnitude.fill_(-1.0)  # magnitude 0
        latent_weight(layer).copy_(torch.tensor([[0.3, -0.3]]))  # negative zero, positive zero
    exported = strategy.export(model)["0"]
    assert exported.codes.tolist() == [[4, 0]] and exported.weight.abs().sum() == 0


def test_sparsity_is_the_share_of_exact_zeros_of_w_int() -> None:
    strategy, model = short_training(BitLearning, {"bits": 3, "train_bits": "111"}, seed=0)
    exported = strategy.export(model)
    zeros = sum(int((decode_codes(e.codes, 3) == 0).sum()) for e in exported.values())
    total = sum(e.codes.numel() for e in exported.values())
    assert weight_metrics(exported).sparsity == pytest.approx(zeros / total)


def test_payload_fills_frozen_planes_in_the_documented_order(tmp_path: Path) -> None:
    data = os.urandom(300)
    (tmp_path / "p.bin").write_bytes(data)
    strategy, model = _prepared(TinyNet(), payload=str(tmp_path / "p.bin"))
    first = strategy.export(model)["conv"]
    # Layer 'conv' first, plane 0 first, row-major elements: the header's first byte is the
    # length's low byte, 300 & 0xff = 0b00101100, most significant bit first.
    assert (first.codes.reshape(-1)[:8] & 1).tolist() == [0, 0, 1, 0, 1, 1, 0, 0]
    layers = [(e.codes, e.info["frozen_planes"]) for e in strategy.export(model).values()]
    assert read_payload(layers) == data


def test_payload_metrics_report_capacity_and_use(tmp_path: Path) -> None:
    (tmp_path / "p.bin").write_bytes(b"x" * 100)
    strategy, model = _prepared(TinyNet(), payload=str(tmp_path / "p.bin"))
    m = strategy.extra_metrics(model)
    weights = sum(
        latent_weight(layer).numel() for _, layer, _ in parametrizations(model, _BitWeight)
    )
    assert m["payload_capacity_bytes"] == weights * 3 // 8 - HEADER_BYTES
    assert m["payload_fraction"] == pytest.approx(8 * (100 + HEADER_BYTES) / (6 * weights))


def test_trainable_msbs_beyond_bits_is_refused() -> None:
    with pytest.raises(
        pydantic.ValidationError, match=r"3 breaks trainable_msbs <= bits - 1 \(bits = 3\)"
    ):
        BitLearning.Params(bits=3, trainable_msbs=3)


def test_payload_must_be_a_regular_file(tmp_path: Path) -> None:
    with pytest.raises(pydantic.ValidationError, match="is not a regular file"):
        BitLearning.Params(payload=str(tmp_path))


def test_params_survive_a_dump_and_reload() -> None:
    params = BitLearning.Params(bits=4, train_bits="0011")
    assert BitLearning.Params(**params.model_dump(mode="json")) == params


def test_a_mask_parsed_as_a_number_keeps_its_digits() -> None:
    # `--param train_bits=111111` reaches Params as the JSON number 111111
    assert BitLearning.Params(train_bits=111111).train_bits == "111111"


def _cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().err.strip()


_SMALL = ["--strategy", "bit_learning", "--epochs", "1", "-m", "hidden=[32]"]


def test_payload_round_trips_through_train_and_extract(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = os.urandom(700)
    (tmp_path / "p.bin").write_bytes(data)
    model, out = tmp_path / "m.safetensors", tmp_path / "out.bin"
    train = [
        "train",
        *_SMALL,
        "-p",
        f"payload={tmp_path / 'p.bin'}",
        "--export",
        str(model),
        "--json",
    ]
    assert _cli(train, capsys)[0] == 0
    assert _cli(["payload", "extract", str(model), str(out)], capsys)[0] == 0
    assert out.read_bytes() == data


def test_payload_too_large_exits_2_naming_params_payload(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "big.bin").write_bytes(os.urandom(2000))
    code, err = _cli(["train", *_SMALL, "-p", f"payload={tmp_path / 'big.bin'}"], capsys)
    assert code == 2 and err.startswith("error: params.payload:") and "848 bytes" in err
    assert len(err.splitlines()) == 1


def test_extract_refuses_an_export_without_payload(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    strategy, model = _prepared(TinyNet())
    path = tmp_path / "m.safetensors"
    save_weights(
        path,
        strategy.export(model),
        strategy="bit_learning",
        params={"payload": None},
        packed=False,
    )
    code, err = _cli(["payload", "extract", str(path), str(tmp_path / "o")], capsys)
    assert (code, err) == (2, "error: weights: this bit_learning export carries no payload")


def test_extract_refuses_another_strategys_export(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "m.safetensors"
    save_weights(
        path, FullPrecision().export(TinyNet()), strategy="full_precision", params={}, packed=False
    )
    code, err = _cli(["payload", "extract", str(path), str(tmp_path / "o")], capsys)
    assert (
        code == 2
        and err == "error: weights: written by strategy 'full_precision', not bit_learning"
    )


@pytest.mark.slow
def test_digits_mlp_reaches_90_percent_with_integer_weights() -> None:
    config = TrialConfig(strategy="bit_learning", dataset="digits", model="mlp", epochs=5)
    trained = train(config)
    exported = trained.strategy.export(trained.model)
    integral = all(
        torch.equal(e.weight, e.scale * decode_codes(e.codes, 6).float()) for e in exported.values()
    )
    assert trained.result.test_accuracy >= 0.90 and integral


def test_init_draws_magnitude_latents_with_the_bit_dimension_in_the_fan_in() -> None:
    # The authors' init: magnitude latents ~ N(0, 2 / (n * fan_in)), the sign ~ N(0, 2 / fan_in).
    torch.manual_seed(0)
    fan_in, n = 1000, 6
    model = BitLearning(BitLearning.Params(bits=n)).prepare(nn.Sequential(nn.Linear(fan_in, 400)))
    ((_, layer, p),) = list(parametrizations(model, _BitWeight))
    planes = torch.cat([p.magnitude.detach().reshape(-1), p.frozen.reshape(-1)])
    sign = layer.parametrizations.weight.original.detach()
    assert float(planes.std()) == pytest.approx(math.sqrt(2 / (n * fan_in)), rel=0.05)
    assert float(sign.std()) == pytest.approx(math.sqrt(2 / fan_in), rel=0.05)

"""BitNet (bit_regularization) against its paper: the min-max integer grid, the training forward
at W (the paper) or at W~ (straight-through), the regularizer, the sign_eps bit-depth update and
its limits, and the export."""

from __future__ import annotations

import copy

import pydantic
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from strategies.base import Progress
from strategies.bit_regularization import BitRegularization, _quantize
from strategies.layers import latent_weight, quantizable_layers
from strategies.metrics import weight_metrics
from strategies.testing import TinyNet, short_training, tiny_data


def _bits(strategy: BitRegularization, model: nn.Module) -> dict[str, int]:
    return {name: int(q.bits) for name, _, q in strategy._layers(model)}


def _prepared(**params: object) -> tuple[BitRegularization, nn.Module]:
    torch.manual_seed(0)
    strategy = BitRegularization(BitRegularization.Params(**params))
    return strategy, strategy.prepare(TinyNet())


def _progress(step: int = 1, lr: float = 0.05) -> Progress:
    return Progress(epoch=0, epochs=1, step=step, steps_per_epoch=10, lr=lr)


def test_large_bit_penalty_drives_every_layer_to_min_bits() -> None:
    strategy, model = short_training(BitRegularization, {"lambda2": 1.0}, seed=0)
    assert set(_bits(strategy, model).values()) == {1}


def test_no_penalty_keeps_init_bits_exactly() -> None:
    params = {"lambda1": 0.0, "lambda2": 0.0, "eps": 0.0, "init_bits": 5}
    strategy, model = short_training(BitRegularization, params, seed=0)
    assert set(_bits(strategy, model).values()) == {5}


def test_quantization_error_alone_raises_coarse_bit_depths() -> None:
    # Without the bit cost, dQ/dB for fixed codes is negative on a bell-shaped layer quantized
    # coarsely (weights round away from the centre), so the sign step adds bits.
    strategy, model = _prepared(lambda1=1.0, lambda2=0.0, mu=1.0, eps=0.0, init_bits=2)
    strategy.on_step(model, _progress())
    assert set(_bits(strategy, model).values()) == {3}


def test_bit_update_is_the_papers_sign_eps_step() -> None:
    strategy, model = _prepared(lambda1=1e-3, lambda2=1e-6, mu=1e-3, eps=1e-7, mu_from_lr=False)
    expected = {}
    for name, w, quant in strategy._layers(model):
        q, z, _, delta = _quantize(w, quant.bits)
        dq_db = float((q - w).mul(-delta).mul(z).sum().detach())
        update = 1e-3 * (1e-3 * dq_db + 1e-6 * 2 ** int(quant.bits))
        move = 0 if abs(update) < 1e-7 else (1 if update > 0 else -1)
        expected[name] = int(quant.bits) - move
    strategy.on_step(model, _progress())
    assert _bits(strategy, model) == expected


def test_bit_step_takes_dq_db_at_the_steps_forward() -> None:
    # W and B move simultaneously: the optimizer's change to W after the forward is not seen.
    strategy, model = _prepared(lambda1=1.0, lambda2=0.0, mu=1.0, eps=0.0, init_bits=2)
    x, y = tiny_data()
    strategy.regularizer(model, F.cross_entropy(model(x[:8]), y[:8]))
    expected = {}
    with torch.no_grad():
        for name, w, quant in strategy._layers(model):
            q, z, _, delta = _quantize(w, quant.bits)
            dq_db = float((q - w).mul(-delta).mul(z).sum().detach())
            expected[name] = int(quant.bits) - (dq_db > 0) + (dq_db < 0)
            # An update after which dQ/dB changes sign: on the grid {0, 1, 2, 3} every weight
            # but the ends sits at 2.4 and rounds down.
            w.fill_(2.4).view(-1)[:2] = torch.tensor([0.0, 3.0])
    strategy.on_step(model, _progress())
    assert _bits(strategy, model) == expected


def test_eps_above_every_update_freezes_bits() -> None:
    strategy, model = _prepared(eps=1.0)
    for step in range(1, 20):
        strategy.on_step(model, _progress(step))
    assert set(_bits(strategy, model).values()) == {8}


def test_mu_follows_learning_rate_decay() -> None:
    # mu * lambda2 * 2^B is 2.6e-4 at lr_0 and 1.3e-9 < eps once the lr has fallen 1e8-fold.
    strategy, model = _prepared(lambda1=0.0, lambda2=1e-3, mu=1.0, eps=1e-7)
    strategy.on_step(model, _progress(1, lr=0.1))
    strategy.on_step(model, _progress(2, lr=1e-9))
    assert set(_bits(strategy, model).values()) == {7}


def test_exported_weights_are_alpha_plus_delta_times_codes() -> None:
    strategy, model = short_training(BitRegularization, {}, seed=1)
    for layer in strategy.export(model).values():
        alpha, delta = layer.info["alpha"], layer.info["delta"]
        codes = layer.codes
        assert codes is not None
        steps = (layer.weight.double() - alpha) / delta
        assert (
            int(codes.min()) >= 0
            and int(codes.max()) <= 2 ** int(layer.bits) - 1
            and torch.equal(layer.weight, alpha + delta * codes.to(layer.weight.dtype))
            and torch.allclose(steps, steps.round(), atol=1e-3)
        )


def test_one_bit_layer_deploys_its_min_and_max() -> None:
    strategy, model = _prepared(init_bits=1)
    for name, layer in strategy.export(model).items():
        w = latent_weight(dict(quantizable_layers(model))[name])
        # alpha + delta * 1 is beta up to one rounding of (beta - alpha) / 1 + alpha
        assert torch.allclose(layer.weight.unique(), torch.stack([w.min(), w.max()]).detach())


@pytest.mark.parametrize("train_forward", ["full_precision", "quantized"])
def test_eval_forward_computes_with_the_exported_weights(train_forward: str) -> None:
    strategy, model = short_training(BitRegularization, {"train_forward": train_forward}, seed=2)
    model.eval()
    exported = strategy.export(model)
    layers = dict(quantizable_layers(model))
    assert all(torch.equal(layers[n].weight.detach(), e.weight) for n, e in exported.items())


def test_papers_training_forward_computes_with_the_float_weights() -> None:
    # "we cannot simply plug in W~ ... l(W) can be used instead": training sees W, not W~.
    strategy, model = _prepared(init_bits=2)
    model.train()
    layers = dict(quantizable_layers(model))
    exported = strategy.export(model)
    assert all(
        torch.equal(layers[n].weight.detach(), latent_weight(layers[n]).detach())
        and not torch.equal(layers[n].weight.detach(), e.weight)
        for n, e in exported.items()
    )


def test_quantized_training_forward_computes_with_the_grid() -> None:
    strategy, model = _prepared(init_bits=2, train_forward="quantized")
    model.train()
    layers = dict(quantizable_layers(model))
    exported = strategy.export(model)
    assert all(torch.equal(layers[n].weight.detach(), e.weight) for n, e in exported.items())


@pytest.mark.parametrize("train_forward", ["full_precision", "quantized"])
def test_gradient_reaches_latent_unchanged(train_forward: str) -> None:
    _, model = _prepared(train_forward=train_forward)
    model.train()
    layer = model.fc1
    c = torch.randn_like(layer.weight)
    (layer.weight * c).sum().backward()
    assert torch.equal(latent_weight(layer).grad, c)


def test_regularizer_gradient_pulls_weights_to_their_grid() -> None:
    strategy, model = _prepared(lambda1=0.5, init_bits=3)
    x, y = tiny_data()
    reg = strategy.regularizer(model, F.cross_entropy(model(x[:8]), y[:8]))
    assert reg is not None
    reg.backward()
    w = latent_weight(model.fc1)
    q = _quantize(w, torch.tensor(3))[0]
    assert torch.allclose(w.grad, 0.5 * (w - q).detach(), atol=1e-7)


def test_learned_bits_are_reported_and_priced_per_layer() -> None:
    strategy, model = short_training(BitRegularization, {"lambda2": 1e-3}, seed=0)
    info = strategy.extra_metrics(model)
    exported = strategy.export(model)
    # alpha and delta, and the layer's float32 bias (TinyNet's conv has none, its fcs do)
    biases = {"conv": 0, "fc1": 24, "fc2": 4}
    expected_bits = sum(
        e.weight.numel() * info[f"layer.{n}.bits"] + 32 * (2 + biases[n])
        for n, e in exported.items()
    )
    mean_bits = sum(info[f"layer.{n}.bits"] for n in exported) / len(exported)
    assert (
        weight_metrics(exported).weight_bits == expected_bits
        and info["mean_bits_learned"] == mean_bits
        and info["compression_ratio_paper"] == 32.0 / mean_bits
        and [e.info["bias_floats"] for e in exported.values()] == list(biases.values())
    )


def test_max_bits_reaches_the_papers_32_bit_limit_exactly() -> None:
    # lambda2 = 0 keeps 32 bits (the paper's limit); codes past float32's 24 exact bits still
    # fit 32 bits and decode to the forward's W~.
    params = {"lambda2": 0.0, "init_bits": 32, "max_bits": 32}
    strategy, model = short_training(BitRegularization, params, seed=0)
    model.eval()
    layers = dict(quantizable_layers(model))
    for name, e in strategy.export(model).items():
        assert e.bits == 32 and e.codes is not None and e.codes.dtype == torch.int64
        assert int(e.codes.min()) >= 0 and int(e.codes.max()) <= 2**32 - 1
        assert torch.equal(e.decode(), e.weight)
        assert torch.equal(layers[name].weight.detach(), e.weight)
        w = latent_weight(layers[name]).detach()
        assert float((e.weight - w).abs().max()) <= float(w.max() - w.min()) * 2.0**-23


def test_quantization_error_outweighing_bit_cost_ends_with_more_bits() -> None:
    # lambda1 >> lambda2 adds bits to a coarse start; lambda2 >> lambda1 removes them.
    start = {"init_bits": 3, "eps": 0.0, "mu": 1.0, "max_bits": 16}
    error_heavy, m1 = short_training(
        BitRegularization, {**start, "lambda1": 1.0, "lambda2": 1e-9}, seed=0
    )
    cost_heavy, m2 = short_training(
        BitRegularization, {**start, "lambda1": 1e-9, "lambda2": 1.0}, seed=0
    )
    more, fewer = _bits(error_heavy, m1), _bits(cost_heavy, m2)
    assert (
        sum(more.values()) / len(more) > 3 + 1
        and all(more[n] > fewer[n] for n in more)
        and set(fewer.values()) == {1}
    ), (more, fewer)


def test_resume_continues_bits_and_weights_exactly() -> None:
    def run(model: nn.Module, strategy: BitRegularization, steps: range) -> None:
        opt = torch.optim.SGD(strategy.param_groups(model), lr=0.1)
        x, y = tiny_data(4)
        for step in steps:
            xb, yb = x[step % 8 * 8 : step % 8 * 8 + 8], y[step % 8 * 8 : step % 8 * 8 + 8]
            loss = F.cross_entropy(model(xb), yb)
            reg = strategy.regularizer(model, loss)
            opt.zero_grad()
            (loss if reg is None else loss + reg).backward()
            opt.step()
            strategy.on_step(model, _progress(step + 1, lr=0.1 * 0.5 ** (step // 3)))

    params = {"lambda2": 1e-4, "eps": 1e-8}
    strategy, model = _prepared(**params)
    run(model, strategy, range(6))
    fresh, fresh_model = _prepared(**params)
    fresh_model.load_state_dict(copy.deepcopy(model.state_dict()))
    fresh.load_state_dict(copy.deepcopy(strategy.state_dict()))
    run(model, strategy, range(6, 12))
    run(fresh_model, fresh, range(6, 12))
    a, b = strategy.export(model), fresh.export(fresh_model)
    assert all(a[k].bits == b[k].bits and torch.equal(a[k].weight, b[k].weight) for k in a)


def test_init_bits_outside_bounds_is_refused() -> None:
    with pytest.raises(pydantic.ValidationError, match="init_bits"):
        BitRegularization.Params(init_bits=12, max_bits=10)


@pytest.mark.slow
def test_digits_mlp_reaches_90_percent_with_learned_bits_in_band() -> None:
    from runners.engine.trial import run_trial
    from schemas.trial import TrialConfig

    result = run_trial(
        TrialConfig(strategy="bit_regularization", dataset="digits", model="mlp", epochs=20)
    )
    layer_bits = [lm.bits for lm in result.weights.layers]
    assert (
        result.test_accuracy >= 0.90
        and all(3 <= b <= 8 for b in layer_bits)
        and layer_bits
        == [result.strategy_info[f"layer.{lm.name}.bits"] for lm in result.weights.layers]
        and result.weights.unique_weights <= sum(2 ** int(b) for b in layer_bits)
    )


def test_bit_update_of_all_layers_at_once_equals_one_layer_at_a_time() -> None:
    # mu * lambda1 * dQ/dB and mu * lambda2 * 2^B near eps: the stacked update must take
    # each layer's step exactly as a per-layer update does.
    for seed in range(5):
        strategy, model = _prepared(lambda1=1e-3, lambda2=1e-6, mu=1e-3, eps=3e-8, init_bits=6)
        torch.manual_seed(seed)
        with torch.no_grad():
            for _, w, _ in strategy._layers(model):
                w.mul_(torch.rand(()) * 4)
        expected = {}
        for name, w, quant in strategy._layers(model):
            q, z, _, delta = _quantize(w.detach(), quant.bits)
            dq_db = -delta * torch.dot((q - w.detach()).reshape(-1), z.reshape(-1))
            expected[name] = int(strategy._new_bits(quant.bits, dq_db, 1e-3, w.dtype))
        strategy.on_step(model, _progress(lr=0.0))  # lr 0: mu stays mu
        assert _bits(strategy, model) == expected


def test_regularizer_gradient_is_lambda1_times_w_minus_its_grid_point() -> None:
    strategy, model = _prepared(lambda1=0.5, lambda2=0.0, init_bits=3)
    x, _ = tiny_data()
    model(x[:8])  # the forward's W~
    reg = strategy.regularizer(model, torch.tensor(0.0))
    assert reg is not None
    reg.backward()
    for _, w, quant in strategy._layers(model):
        q, _, _, _ = _quantize(w.detach(), quant.bits)
        assert w.grad is not None and torch.equal(w.grad, 0.5 * (w.detach() - q))


def test_bit_update_drops_the_forwards_quantization() -> None:
    # The trial's fused optimizer changes W without bumping its version counter: after the
    # step the forward's W~ must not be taken for the updated W's.
    from runners.engine.trial import build_optimizer
    from schemas.trial import OptimizerConfig

    strategy, model = _prepared(eps=1.0)  # B stays: only W's change could show
    opt = build_optimizer(strategy.param_groups(model), OptimizerConfig(name="sgd", lr=0.5))
    x, y = tiny_data()
    loss = F.cross_entropy(model(x[:8]), y[:8])
    reg = strategy.regularizer(model, loss)
    assert reg is not None
    model(x[:8])  # a forward whose W~ stays cached until the bit update
    (loss + reg).backward()
    versions = [w._version for _, w, _ in strategy._layers(model)]
    opt.step()
    strategy.on_step(model, _progress())
    for (_, w, quant), version in zip(strategy._layers(model), versions, strict=True):
        assert w._version == version  # the fused step did not bump it
        q, _, _, _ = quant.last_forward(w)
        assert torch.equal(q, _quantize(w, quant.bits)[0])

"""wrn_1bit against its paper (McDonnell, arXiv 1802.08530): +-sqrt(2/fan_in) on every layer,
an identity straight-through gradient, the paper's recipe and WRN architecture, and SGD
momentum carried through warm restarts."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

import runners.engine.trial
from runners.engine.models import build_model
from runners.engine.trial import lr_factor, run_trial, train
from schemas.trial import TrialConfig
from strategies.base import Progress
from strategies.layers import latent_weight, quantizable_layers
from strategies.wrn_1bit import WRN1Bit, _Binarize


def _prepared(model: nn.Module, scale: str = "he") -> tuple[WRN1Bit, nn.Module]:
    strategy = WRN1Bit(WRN1Bit.Params(scale=scale))  # type: ignore[arg-type]
    return strategy, strategy.prepare(model)


def _f32(x: float) -> float:
    return float(torch.tensor(x, dtype=torch.float32))


def test_each_layer_deploys_exactly_two_values_even_with_zero_latents() -> None:
    torch.manual_seed(0)
    strategy, model = _prepared(nn.Sequential(nn.Linear(20, 8), nn.ReLU(), nn.Linear(8, 3)))
    with torch.no_grad():
        latent_weight(model[0]).view(-1)[:5] = 0.0
    for layer in strategy.export(model).values():
        s = layer.scale
        assert s is not None
        assert torch.unique(layer.weight).tolist() == [_f32(-s), _f32(s)]


def test_a_zero_latent_deploys_as_plus_scale() -> None:
    p = _Binarize(0.25)
    assert p(torch.zeros(4)).tolist() == [0.25] * 4


def test_scale_is_the_he_std_of_the_fan_in() -> None:
    strategy, model = _prepared(nn.Sequential(nn.Conv2d(16, 4, 3), nn.Flatten(), nn.Linear(36, 5)))
    exported = strategy.export(model)
    assert exported["0"].weight.abs().unique().item() == _f32(math.sqrt(2 / (3 * 3 * 16)))
    assert exported["2"].weight.abs().unique().item() == _f32(math.sqrt(2 / 36))


def test_plain_scale_is_two_over_sqrt_fan_in() -> None:
    strategy, model = _prepared(nn.Sequential(nn.Linear(49, 5)), scale="plain")
    assert strategy.export(model)["0"].weight.abs().unique().item() == _f32(2 / 7)


def test_gradient_is_the_unclipped_unscaled_identity() -> None:
    w = torch.tensor([-3.0, -0.5, 0.0, 1e-4, 0.7, 5.0], requires_grad=True)
    upstream = torch.tensor([0.3, -1.2, 2.0, -0.1, 0.05, 7.0])
    _Binarize(0.01)(w).backward(upstream)
    assert w.grad is not None and torch.equal(w.grad, upstream)


def test_codes_decode_to_the_deployed_weights() -> None:
    torch.manual_seed(0)
    strategy, model = _prepared(nn.Sequential(nn.Linear(10, 6)))
    layer = strategy.export(model)["0"]
    assert layer.codes is not None and layer.scale is not None
    decoded = layer.scale * layer.codes.to(torch.float32)  # codes are -1 and +1
    assert torch.equal(decoded, layer.weight) and torch.equal(layer.decode(), layer.weight)
    assert layer.bits == 1 and layer.n_floats == 1  # the scale is stored


def test_every_conv_of_the_wrn_is_binarized_first_and_classifier_included() -> None:
    _, model = _prepared(build_model("wrn", (3, 32, 32), 10, {"width": 1}))
    convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    assert "conv1" in convs and "classifier" in convs
    assert all(parametrize.is_parametrized(m, "weight") for m in convs.values())


def test_prepare_keeps_the_papers_wrn_architecture() -> None:
    opts = WRN1Bit.recipe.model_options
    plain = build_model("wrn", (3, 32, 32), 10, {"width": 1}, defaults=opts)
    _, model = _prepared(build_model("wrn", (3, 32, 32), 10, {"width": 1}, defaults=opts))

    def layout(m: nn.Module) -> list[tuple[str, type, tuple[int, ...] | None]]:
        return [
            (
                n,
                parametrize.type_before_parametrizations(x),
                tuple(latent_weight(x).shape) if isinstance(x, nn.Conv2d) else None,
            )
            for n, x in m.named_modules()
            if "parametrizations" not in n
        ]

    bn_affine = [m.affine for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert layout(model) == layout(plain) and not any(bn_affine)


@pytest.mark.parametrize(
    ("name", "shape"),
    [("mlp", (1, 8, 8)), ("lenet", (1, 8, 8)), ("conv6", (3, 8, 8)), ("resnet20", (3, 8, 8))],
)
def test_binarizes_every_layer_of_every_builtin_model(name: str, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    model = build_model(name, shape, 10, defaults=WRN1Bit.recipe.model_options)
    strategy, model = _prepared(model)
    x, y = torch.randn(4, *shape), torch.arange(4)
    F.cross_entropy(model(x), y).backward()
    exported = strategy.export(model)
    assert set(exported) == {n for n, _ in quantizable_layers(model)}
    assert all(torch.unique(e.weight).numel() == 2 for e in exported.values())


def test_deployed_model_is_the_trained_forward_and_leaves_it_intact() -> None:
    torch.manual_seed(0)
    strategy, model = _prepared(nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)))
    x = torch.randn(7, 6)
    deployed = strategy.deploy(model)
    assert torch.equal(deployed(x), model(x))


def test_recipe_decays_lr_from_point_one_to_1e_4_with_doubling_cycles() -> None:
    r = WRN1Bit.recipe
    ends = [
        lr_factor(r.schedule, epoch_float=e, step=0, epochs=14, base_lr=r.optimizer.lr)
        for e in (0.0, 2.0 - 1e-9, 2.0, 6.0 - 1e-9, 6.0)
    ]
    assert (r.optimizer.name, r.optimizer.momentum, r.optimizer.weight_decay, r.batch_size) == (
        "sgd",
        0.9,
        5e-4,
        125,
    )
    assert [round(r.optimizer.lr * f, 6) for f in ends] == [0.1, 0.0001, 0.1, 0.0001, 0.1]


def test_sgd_momentum_buffers_carry_through_a_warm_restart(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The trial engine builds one optimizer and only sets its lr at a restart, as the Keras
    # port's LR_WarmRestart callback does; the authors' Matlab code zeroes the buffers there.
    built: list[torch.optim.Optimizer] = []
    build = runners.engine.trial.build_optimizer

    def spy_build(*args: Any, **kwargs: Any) -> torch.optim.Optimizer:
        built.append(build(*args, **kwargs))
        return built[-1]

    seen: list[dict[str, Any]] = []  # after each optimizer step

    def spy_step(self: WRN1Bit, model: nn.Module, progress: Progress) -> None:
        params = [q for g in built[-1].param_groups for q in g["params"]]
        seen.append(
            {
                "step": progress.step,
                "first_of_epoch": progress.step % progress.steps_per_epoch == 1,
                "lr": progress.lr,
                "buf": [built[-1].state[q]["momentum_buffer"].clone() for q in params],
                "grad": [q.grad.clone() for q in params],
                "weight": [q.detach().clone() for q in params],
            }
        )

    monkeypatch.setattr(runners.engine.trial, "build_optimizer", spy_build)
    monkeypatch.setattr(WRN1Bit, "on_step", spy_step)
    train(TrialConfig(strategy="wrn_1bit", dataset="digits", model="mlp", epochs=3))

    # The first step of epoch 3 starts the second cycle (t0 = 2 epochs).
    r = [i for i, rec in enumerate(seen) if rec["first_of_epoch"]][2]
    before, at = seen[r - 1], seen[r]
    opt = WRN1Bit.recipe.optimizer
    assert len(built) == 1 and before["lr"] < 1e-3 and at["lr"] == pytest.approx(opt.lr)
    for buf0, buf1, grad, w in zip(
        before["buf"], at["buf"], at["grad"], before["weight"], strict=True
    ):
        added = grad + opt.weight_decay * w  # what SGD adds to the buffer at this step
        assert torch.allclose(buf1, opt.momentum * buf0 + added, rtol=1e-5, atol=1e-7)
        # Kept, not zeroed: the carried part is a sizeable share of the new buffer.
        assert float((opt.momentum * buf0).norm()) > 0.1 * float(added.norm())


@pytest.mark.slow
def test_digits_mlp_reaches_90_percent_with_two_values_per_layer() -> None:
    result = run_trial(TrialConfig(strategy="wrn_1bit", dataset="digits", model="mlp", epochs=6))
    layers = result.weights.layers
    assert result.test_accuracy >= 0.90
    assert all(lm.unique_weights == 2 and lm.bits == 1 for lm in layers)
    assert result.weights.weight_bits == result.weights.numel + 32 * len(layers)  # + scales

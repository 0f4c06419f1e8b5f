"""exact_binary against the properties its paper's abstract states (arXiv 2107.01400): exact
gradients through a group transform, binary deployment, scale invariance, no auxiliary loss,
no change to the architecture, the float recipe, and no deploy gap; and the slope profile of
the map after the anneal, an annealed soft sign."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from runners.engine.data import load_dataset
from runners.engine.models import build_model
from runners.engine.trial import Trained, evaluate, train
from schemas.trial import TrialConfig
from strategies.base import Progress
from strategies.exact_binary import ExactBinary, group_power_map
from strategies.layers import latent_weight


def _prepared(model: nn.Module, **params: object) -> tuple[ExactBinary, nn.Module]:
    strategy = ExactBinary(ExactBinary.Params(**params))  # type: ignore[arg-type]
    return strategy, strategy.prepare(model)


def _at(fraction: float, steps: int = 100) -> Progress:
    return Progress(epoch=0, epochs=1, step=round(fraction * steps), steps_per_epoch=steps)


@pytest.mark.parametrize("group", ["row", "layer"])
@pytest.mark.parametrize("p", [1.0, 0.5, 0.1, 0.02, 0.005])
def test_gradient_is_the_exact_gradient_of_the_training_forward(group: str, p: float) -> None:
    torch.manual_seed(0)
    v = torch.randn(4, 3, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x: group_power_map(x, p, group=group, eps=1e-3, scale=0.7), (v,)
    )


def test_layer_gradient_flows_through_the_transform_not_straight_through() -> None:
    torch.manual_seed(0)
    _, model = _prepared(nn.Sequential(nn.Linear(5, 4, bias=False)))
    model[0].parametrizations.weight[0].p = 0.1
    v = latent_weight(model[0])
    upstream = torch.randn(4, 5)
    expected = torch.autograd.functional.vjp(
        lambda x: group_power_map(x, 0.1, scale=math.sqrt(2 / 5)), v.detach(), upstream
    )[1]
    model[0].weight.backward(upstream)
    assert (
        v.grad is not None
        and torch.allclose(v.grad, expected)
        and not torch.allclose(v.grad, upstream)
    )


def _slopes(fraction: float, us: list[float]) -> tuple[float, float, list[float]]:
    """(p, eps, dt/du at each |u| in `us`): the slope of the strategy's own training forward
    after `fraction` of the steps, by autograd, in normalized units (t = W / s, u = v / max|v|).

    The layer's single row is [1, *us], so the group maximum is 1 and no entry of `us` moves
    it: the gradient of the sum of the other weights is then exactly their own slopes times s.
    """
    n = len(us) + 1
    strategy, model = _prepared(nn.Sequential(nn.Linear(n, 1, bias=False)).double())
    strategy.on_step(model, _at(fraction))
    v = latent_weight(model[0])
    with torch.no_grad():
        v.copy_(torch.tensor([[1.0, *us]], dtype=torch.float64))
    model[0].weight[0, 1:].sum().backward()
    assert v.grad is not None
    eps = float(strategy.params.eps)  # type: ignore[attr-defined]
    return strategy.p, eps, (v.grad[0, 1:] / math.sqrt(2 / n)).tolist()


def test_slope_profile_is_p_u_to_the_p_minus_1_an_annealed_soft_sign() -> None:
    us = [0.5, 0.1, 1e-3, 0.0]

    # Before the anneal (p = 1): a linear normalization, slope 1 everywhere, zero included.
    p, _, start = _slopes(0.0, us)
    assert p == 1.0 and start == pytest.approx([1.0] * 4, rel=1e-12)

    p, eps, end = _slopes(1.0, us)  # after the anneal: p = p_final (0.005 by default)
    slope = dict(zip(us, end, strict=True))
    # The closed form of the map's slope; it is p*|u|^(p-1) where |u| >> eps / sqrt(p).
    smooth = {
        u: (u * u + eps * eps) ** ((p - 1) / 2) * (eps**2 + p * u * u) / (u * u + eps**2)
        for u in us
    }
    assert slope == pytest.approx(smooth, rel=1e-9)
    assert slope[0.5] == pytest.approx(p * 0.5 ** (p - 1), rel=1e-3)
    assert slope[0.1] == pytest.approx(p * 0.1 ** (p - 1), rel=0.03)
    # Near zero eps caps the power law's infinite slope at eps^(p - 1).
    assert slope[0.0] == pytest.approx(eps ** (p - 1), rel=1e-9)
    assert slope[1e-3] == pytest.approx(eps ** (p - 1) * (1 + p) / 2 ** ((3 - p) / 2), rel=1e-9)
    # The profile at the defaults: flat (0.01) over most of the group, ~1000 at zero.
    assert (p, eps) == (0.005, 1e-3)
    assert slope[0.5] == pytest.approx(0.00997, abs=5e-5)
    assert slope[1e-3] == pytest.approx(344, abs=1) and slope[0.0] == pytest.approx(966, abs=1)
    assert slope[0.0] / slope[0.5] > 1e4


def test_export_holds_exactly_two_values_per_layer() -> None:
    torch.manual_seed(0)
    strategy, model = _prepared(nn.Sequential(nn.Conv2d(2, 4, 3), nn.Flatten(), nn.Linear(16, 3)))
    with torch.no_grad():
        latent_weight(model[2]).view(-1)[:4] = 0.0
    exported = strategy.export(model)
    for layer in exported.values():
        s = torch.tensor(layer.scale, dtype=torch.float32).item()
        assert torch.unique(layer.weight).tolist() == [-s, s] and layer.bits == 1


def test_deployed_scale_is_the_he_std_of_the_fan_in() -> None:
    strategy, model = _prepared(nn.Sequential(nn.Conv2d(8, 4, 3)))
    assert strategy.export(model)["0"].scale == pytest.approx(math.sqrt(2 / (3 * 3 * 8)))


def test_no_auxiliary_loss() -> None:
    strategy, model = _prepared(nn.Sequential(nn.Linear(4, 2)))
    assert strategy.regularizer(model, torch.tensor(1.0)) is None


def test_transform_is_invariant_to_each_groups_scale_unlike_a_saturating_map() -> None:
    torch.manual_seed(0)
    v = torch.randn(6, 10, dtype=torch.float64)
    a = torch.logspace(-3, 3, 6, dtype=torch.float64)[:, None]
    assert torch.allclose(group_power_map(a * v, 0.05), group_power_map(v, 0.05), atol=1e-12)


def test_transform_starts_as_a_linear_per_row_normalization() -> None:
    v = torch.tensor([[0.5, -2.0, 1.0], [3.0, 0.0, -1.5]])
    expected = v / torch.tensor([[2.0], [3.0]])
    assert torch.equal(group_power_map(v, 1.0), expected)


def test_prepare_keeps_the_architecture() -> None:
    plain = build_model("resnet20", (3, 8, 8), 10)
    _, model = _prepared(build_model("resnet20", (3, 8, 8), 10))

    def layout(m: nn.Module) -> list[tuple[str, type]]:
        mods = m.named_modules()
        return [
            (n, parametrize.type_before_parametrizations(x))
            for n, x in mods
            if "parametri" not in n
        ]

    def shapes(m: nn.Module) -> dict[str, torch.Size]:
        named = m.named_parameters()
        return {n.replace("parametrizations.weight.original", "weight"): p.shape for n, p in named}

    assert layout(model) == layout(plain) and shapes(model) == shapes(plain)


def test_p_anneals_geometrically_to_p_final_then_stays() -> None:
    strategy = ExactBinary(ExactBinary.Params(p_final=0.01, anneal_fraction=0.5))
    ps = [strategy.exponent(f) for f in (0.0, 0.25, 0.5, 1.0)]
    assert ps == pytest.approx([1.0, 0.1, 0.01, 0.01])


def test_on_step_sets_p_on_every_layer_and_state_dict_restores_it() -> None:
    strategy, model = _prepared(nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2)))
    strategy.on_step(model, _at(0.4))
    fresh, fresh_model = _prepared(nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2)))
    fresh.load_state_dict(strategy.state_dict())
    ps = [m.parametrizations.weight[0].p for m in fresh_model]
    assert ps == [strategy.p, strategy.p] and strategy.p == pytest.approx(strategy.exponent(0.4))


def test_after_the_anneal_every_weight_is_within_one_minus_u_to_the_p_of_deployed() -> None:
    torch.manual_seed(0)
    strategy, model = _prepared(nn.Sequential(nn.Linear(50, 20)))
    strategy.on_step(model, _at(1.0))
    v = latent_weight(model[0])
    u = (v / v.abs().amax(1, keepdim=True)).abs()
    s = strategy.export(model)["0"].scale
    assert s is not None
    with torch.no_grad():
        gap = ((model[0].weight - strategy.export(model)["0"].weight).abs() / s)[u >= 0.01]
    # t is increasing in |u|, so no weight with |u| >= 0.01 is further than t(0.01) from 1.
    bound = 1 - 0.01 * (0.01**2 + 1e-3**2) ** ((strategy.p - 1) / 2)
    assert float(gap.max()) <= bound < 0.03


def test_only_epochs_after_the_anneal_are_selectable() -> None:
    strategy = ExactBinary(ExactBinary.Params(anneal_fraction=0.8))
    assert [strategy.selectable(_at(f)) for f in (0.5, 0.79, 0.8, 1.0)] == [
        False,
        False,
        True,
        True,
    ]


def test_recipe_is_the_float_recipe_momentum_sgd_large_lr_and_l2() -> None:
    opt = ExactBinary.recipe.optimizer
    assert (opt.name, opt.momentum, opt.lr, opt.weight_decay) == ("sgd", 0.9, 0.1, 5e-4)


def test_trains_on_a_convnet_with_finite_loss() -> None:
    torch.manual_seed(0)
    strategy, model = _prepared(build_model("lenet", (1, 8, 8), 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    for i in range(4):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        strategy.on_step(model, _at((i + 1) / 4, steps=4))
    assert torch.isfinite(loss) and strategy.p == pytest.approx(0.005)


@pytest.fixture(scope="module")
def digits_run() -> Trained:
    return train(TrialConfig(strategy="exact_binary", dataset="digits", model="mlp", epochs=10))


@pytest.mark.slow
def test_digits_mlp_reaches_90_percent_deployed_as_two_values_per_layer(
    digits_run: Trained,
) -> None:
    result = digits_run.result
    assert result.test_accuracy >= 0.90
    assert all(lm.unique_weights == 2 and lm.bits == 1 for lm in result.weights.layers)


@pytest.mark.slow
def test_training_forward_and_deployed_forward_agree_after_training(digits_run: Trained) -> None:
    data = load_dataset("digits")
    trained_acc, _ = evaluate(digits_run.model, data.x_test, data.y_test, 4096)
    assert abs(trained_acc - digits_run.result.test_accuracy) <= 0.01


def _plain_power_map(v: torch.Tensor, p: float, eps: float, scale: float) -> torch.Tensor:
    """The row-wise map in plain torch ops, differentiated by autograd (amax shares its
    gradient evenly among tied maxima)."""
    g = v.reshape(v.shape[0], -1)
    u = g / g.abs().amax(dim=1, keepdim=True)
    return (scale * u * (u * u + eps * eps) ** ((p - 1) / 2)).reshape(v.shape)


@pytest.mark.parametrize("p", [1.0, 0.3, 0.005])
def test_hand_written_gradient_matches_autograd_of_the_plain_map(p: float) -> None:
    torch.manual_seed(0)
    v = torch.randn(6, 9, dtype=torch.float64)
    v[1, 3] = -v[1].abs().max()  # a row whose maximum is negative
    v[2, 4] = v[2, 7] = v[2].abs().max()  # a tie for the maximum: shared evenly, as amax
    v[3, 5] = 0.0
    up = torch.randn(6, 9, dtype=torch.float64)
    a = v.clone().requires_grad_(True)
    b = v.clone().requires_grad_(True)
    out_a = group_power_map(a, p, eps=1e-3, scale=0.7)
    out_b = _plain_power_map(b, p, 1e-3, 0.7)
    out_a.backward(up)
    out_b.backward(up)
    assert torch.allclose(out_a, out_b, rtol=1e-12, atol=0)
    assert a.grad is not None and b.grad is not None
    assert torch.allclose(a.grad, b.grad, rtol=1e-9, atol=1e-12)


def test_float32_map_stays_within_a_few_ulp_of_pow() -> None:
    torch.manual_seed(0)
    v = torch.randn(300, 784)
    fast = group_power_map(v, 0.02, eps=1e-3, scale=1.0)
    exact = _plain_power_map(v.double(), 0.02, 1e-3, 1.0)
    assert torch.allclose(fast.double(), exact, rtol=2e-6, atol=0)

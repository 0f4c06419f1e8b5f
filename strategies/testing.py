"""The strategy contract suite: the checks every strategy must pass, built-in or a plugin's.

Use it from a plugin's own tests::

    from strategies.testing import StrategyContract

    class TestMyStrategy(StrategyContract):
        strategy_name = "my_strategy"      # a registered name
        params = {"bits": 3}               # optional: params to check besides the defaults

pytest collects every `test_*` method for that strategy. Needs pytest; imports no runner.
"""

from __future__ import annotations

import copy
import random
from typing import Any, ClassVar

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrize import type_before_parametrizations

from strategies.base import ExportedLayer, Progress, Strategy
from strategies.layers import latent_weight, quantizable_layers, weight_of
from strategies.metrics import value_histogram, weight_metrics
from strategies.registry import get_strategy
from strategies.space import check_search, default_search, searchable_fields


class TinyNet(nn.Module):
    """A conv layer, BatchNorm, and two linear layers: every kind of layer a strategy meets."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(6)
        self.fc1 = nn.Linear(6 * 4 * 4, 24)
        self.fc2 = nn.Linear(24, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn(self.conv(x))), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


def tiny_data(seed: int = 0, n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """A learnable toy problem: the class is the quadrant holding the brightest pixel."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=g) * 0.1
    y = torch.randint(0, 4, (n,), generator=g)
    for i, c in enumerate(y.tolist()):
        r, q = divmod(c, 2)
        x[i, 0, r * 4 : r * 4 + 4, q * 4 : q * 4 + 4] += 1.0
    return x, y


def short_training(
    cls: type[Strategy], params: dict[str, Any], seed: int, steps: int = 6, epochs: int = 2
) -> tuple[Strategy, nn.Module]:
    """Train TinyNet for a few steps through every hook, the way the trial runner calls them."""
    random.seed(seed)
    torch.manual_seed(seed)
    strategy = cls(cls.Params(**params))
    model = strategy.prepare(TinyNet())
    opt = torch.optim.SGD(strategy.param_groups(model), lr=0.05, momentum=0.9)
    x, y = tiny_data(seed)
    step = 0
    for epoch in range(epochs):
        progress = Progress(epoch=epoch, epochs=epochs, step=step, steps_per_epoch=steps, lr=0.05)
        for i in range(steps):
            xb, yb = x[i * 8 : i * 8 + 8], y[i * 8 : i * 8 + 8]
            loss = F.cross_entropy(model(xb), yb)
            reg = strategy.regularizer(model, loss)
            total = loss if reg is None else loss + reg
            opt.zero_grad()
            total.backward()
            opt.step()
            step += 1
            progress.step = step
            strategy.on_step(model, progress)
        progress.loss = float(loss.detach())
        if strategy.on_epoch_end(model, progress):
            opt = torch.optim.SGD(strategy.param_groups(model), lr=0.05, momentum=0.9)
    return strategy, model


class StrategyContract:
    """Checks that hold for every strategy. Set `strategy_name` (and optionally `params`)."""

    strategy_name: ClassVar[str] = ""
    params: ClassVar[dict[str, Any]] = {}

    @pytest.fixture
    def cls(self) -> type[Strategy]:
        assert self.strategy_name, "set strategy_name on the contract subclass"
        return get_strategy(self.strategy_name)

    @pytest.fixture
    def trained(self, cls: type[Strategy]) -> tuple[Strategy, nn.Module]:
        return short_training(cls, self.params, seed=0)

    def test_describes_itself(self, cls: type[Strategy]) -> None:
        d = cls.describe()
        assert d["name"] == self.strategy_name and d["paper"] and d["summary"] and d["fidelity"]

    def test_default_params_validate(self, cls: type[Strategy]) -> None:
        assert isinstance(cls.Params(**self.params), cls.Params)

    def test_search_ranges_lie_inside_bounds(self, cls: type[Strategy]) -> None:
        fields = searchable_fields(cls.Params)
        ranges = {**cls.recipe.search, **default_search(cls.Params)}
        for name, search in ranges.items():
            assert name in fields, f"search range for unknown field {name!r}"
            check_search(name, search, fields[name])

    def test_prepare_keeps_layer_types(self, cls: type[Strategy]) -> None:
        before = [type(m) for _, m in quantizable_layers(TinyNet())]
        model = cls(cls.Params(**self.params)).prepare(TinyNet())
        after = [type_before_parametrizations(m) for _, m in quantizable_layers(model)]
        assert after == before

    def test_deploying_leaves_the_trained_model_working(
        self, trained: tuple[Strategy, nn.Module]
    ) -> None:
        strategy, model = trained
        x, _ = tiny_data(2)
        before = model(x).detach()
        deployed = strategy.deploy(model)
        assert all(type(m).__name__.find("Parametrized") < 0 for m in deployed.modules())
        assert torch.equal(model(x).detach(), before)

    def test_backward_reaches_every_trainable_latent(self, cls: type[Strategy]) -> None:
        torch.manual_seed(0)
        strategy = cls(cls.Params(**self.params))
        model = strategy.prepare(TinyNet())
        x, y = tiny_data()
        loss = F.cross_entropy(model(x[:16]), y[:16])
        reg = strategy.regularizer(model, loss)
        (loss if reg is None else loss + reg).backward()
        groups = strategy.param_groups(model)
        params = [p for g in groups for p in g["params"]]
        assert params, "the strategy gives the optimizer nothing to train"
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
        for _, layer in quantizable_layers(model):
            lw = latent_weight(layer)
            if lw.requires_grad:
                assert lw.grad is not None, "a trainable latent weight got no gradient"

    def test_training_keeps_loss_finite(self, trained: tuple[Strategy, nn.Module]) -> None:
        _, model = trained
        x, y = tiny_data(1)
        assert torch.isfinite(F.cross_entropy(model(x), y))

    def test_export_covers_quantized_layers(self, trained: tuple[Strategy, nn.Module]) -> None:
        strategy, model = trained
        exported = strategy.export(model)
        shapes = {n: tuple(weight_of(m).shape) for n, m in quantizable_layers(model)}
        assert exported and set(exported) <= set(shapes)
        for name, layer in exported.items():
            assert isinstance(layer, ExportedLayer)
            assert tuple(layer.weight.shape) == shapes[name]
            assert torch.isfinite(layer.weight).all()
            assert 0 < layer.bits <= 32 and layer.n_floats >= 0

    def test_export_does_not_change_the_model(self, trained: tuple[Strategy, nn.Module]) -> None:
        strategy, model = trained
        before = copy.deepcopy(model.state_dict())
        strategy.export(model)
        after = model.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before)

    def test_deployed_model_computes_with_exported_weights(
        self, trained: tuple[Strategy, nn.Module]
    ) -> None:
        strategy, model = trained
        exported = strategy.export(model)
        deployed = strategy.deploy(model)
        layers = dict(quantizable_layers(deployed))
        for name, layer in exported.items():
            assert torch.equal(weight_of(layers[name]).detach(), layer.weight.detach())

    def test_codes_match_weights_when_given(self, trained: tuple[Strategy, nn.Module]) -> None:
        strategy, model = trained
        for layer in strategy.export(model).values():
            if layer.codes is not None:
                # integer codes, optionally with a leading bit-plane dimension
                assert not layer.codes.is_floating_point()
                assert layer.codes.shape[-layer.weight.dim() :] == layer.weight.shape

    def test_metrics_count_exported_values(self, trained: tuple[Strategy, nn.Module]) -> None:
        strategy, model = trained
        exported = strategy.export(model)
        m = weight_metrics(exported)
        values = torch.cat([layer.weight.reshape(-1) for layer in exported.values()])
        uniq, _ = value_histogram(values)
        assert m.unique_weights == uniq.numel()
        assert m.numel == values.numel()
        assert m.sparsity == pytest.approx(float((values == 0).float().mean()))

    def test_same_seed_gives_same_export(self, cls: type[Strategy]) -> None:
        a_strategy, a = short_training(cls, self.params, seed=3)
        b_strategy, b = short_training(cls, self.params, seed=3)
        ea, eb = a_strategy.export(a), b_strategy.export(b)
        assert all(torch.equal(ea[k].weight, eb[k].weight) for k in ea)

    def test_state_dict_round_trips(
        self, trained: tuple[Strategy, nn.Module], cls: type[Strategy]
    ) -> None:
        strategy, model = trained
        fresh = cls(cls.Params(**self.params))
        fresh_model = fresh.prepare(TinyNet())
        fresh.load_state_dict(copy.deepcopy(strategy.state_dict()))
        fresh_model.load_state_dict(model.state_dict())
        ea, eb = strategy.export(model), fresh.export(fresh_model)
        assert all(torch.equal(ea[k].weight, eb[k].weight) for k in ea)

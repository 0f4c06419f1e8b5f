"""The plain float copy of a parametrized model, as deployed."""

from __future__ import annotations

import torch
from torch import nn

from strategies.base import ExportedLayer
from strategies.layers import attach, plain_copy


class Sign(nn.Module):
    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w + (torch.sign(w) - w).detach()


def model() -> nn.Module:
    torch.manual_seed(0)
    return attach(
        nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)), lambda name, layer: Sign()
    )


def test_plain_copy_leaves_the_original_parametrized_and_working():
    m = model()
    x = torch.randn(5, 4)
    before = m(x)
    plain_copy(m, {})
    assert torch.equal(m(x), before) and hasattr(m[0], "parametrizations")


def test_plain_copy_is_plain_torch_layers():
    copy = plain_copy(model(), {})
    assert [type(layer) for layer in copy] == [nn.Linear, nn.ReLU, nn.Linear]


def test_plain_copy_computes_with_the_exported_weights():
    m = model()
    w = torch.full((3, 4), 0.5)
    copy = plain_copy(m, {"0": ExportedLayer(weight=w, bits=1)})
    assert torch.equal(copy[0].weight.detach(), w)
    assert torch.equal(copy[2].weight.detach(), m[2].weight.detach())

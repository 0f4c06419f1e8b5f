"""Weight metrics against values computed by hand on small tensors."""

from __future__ import annotations

import math

import pytest
import torch

from strategies.base import ExportedLayer
from strategies.metrics import entropy_bits, weight_metrics


def layer(values: list[float], bits: float, n_floats: int = 0) -> ExportedLayer:
    return ExportedLayer(weight=torch.tensor(values), bits=bits, n_floats=n_floats)


@pytest.fixture
def two_layers() -> dict[str, ExportedLayer]:
    # values over both layers: 0 x3, 0.5 x3, -0.5 x1, 1 x1  -> 8 weights
    return {
        "a": layer([0.0, 0.5, 0.5, -0.5], bits=2, n_floats=1),
        "b": layer([0.0, 0.0, 0.5, 1.0], bits=3, n_floats=2),
    }


def test_unique_counts_all_layers_together(two_layers):
    assert weight_metrics(two_layers).unique_weights == 4


def test_unique_nonzero_excludes_zero(two_layers):
    assert weight_metrics(two_layers).unique_nonzero_weights == 3


def test_entropy_of_the_whole_network(two_layers):
    p = [3 / 8, 3 / 8, 1 / 8, 1 / 8]
    expected = -sum(q * math.log2(q) for q in p)
    assert weight_metrics(two_layers).weight_entropy_bits == pytest.approx(expected)


def test_entropy_nonzero_uses_nonzero_histogram(two_layers):
    p = [3 / 5, 1 / 5, 1 / 5]
    expected = -sum(q * math.log2(q) for q in p)
    assert weight_metrics(two_layers).weight_entropy_nonzero_bits == pytest.approx(expected)


def test_sparsity_is_fraction_of_exact_zeros(two_layers):
    assert weight_metrics(two_layers).sparsity == pytest.approx(3 / 8)


def test_bits_count_weights_at_their_depth_plus_32_per_float(two_layers):
    m = weight_metrics(two_layers)
    expected = 4 * 2 + 32 * 1 + 4 * 3 + 32 * 2
    assert (m.weight_bits, m.weight_bytes) == (expected, expected / 8)


def test_compression_ratio_against_float32(two_layers):
    m = weight_metrics(two_layers)
    assert m.compression_ratio == pytest.approx(32 * 8 / (4 * 2 + 32 + 4 * 3 + 64))


def test_per_layer_metrics(two_layers):
    a = weight_metrics(two_layers).layers[0]
    assert (a.unique_weights, a.unique_nonzero_weights, a.sparsity) == (3, 2, 0.25)


def test_negative_zero_counts_as_zero():
    m = weight_metrics({"x": layer([-0.0, 0.0, 1.0, 1.0], bits=1)})
    assert (m.unique_weights, m.sparsity) == (2, 0.5)


def test_entropy_of_uniform_histogram_is_log2_of_values():
    assert entropy_bits(torch.tensor([5, 5, 5, 5])) == pytest.approx(2.0)


def test_empty_export_is_refused():
    with pytest.raises(ValueError, match="no layers"):
        weight_metrics({})


def test_float32_layer_has_compression_one():
    m = weight_metrics({"w": layer([0.1, 0.2, 0.3], bits=32)})
    assert m.compression_ratio == pytest.approx(1.0)

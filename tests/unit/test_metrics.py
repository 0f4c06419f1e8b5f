"""Weight metrics against values computed by hand on small tensors."""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from strategies.base import ExportedLayer
from strategies.metrics import WeightMetrics, entropy_bits, weight_metrics


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


# -- the histogram from codes and per-layer merging against a plain reference -----------------
#
# The reference concatenates every deployed weight and takes one float unique over it (and one
# per layer): the definition, written out. `weight_metrics` counts codes where a layer has them
# and merges per-layer histograms; the two must agree exactly, entropies bit for bit.


def _load_reference() -> Callable[..., WeightMetrics]:
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_weight_metrics.py"
    spec = importlib.util.spec_from_file_location("bench_weight_metrics", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.reference_weight_metrics


# The benchmark measures `weight_metrics` against the same reference.
reference_weight_metrics = _load_reference()


def coded(codes: torch.Tensor, bits: int, **kw) -> ExportedLayer:
    """A layer deploying exactly what its codes decode to (the contract's equality)."""
    lay = ExportedLayer(weight=torch.empty(0), bits=float(bits), codes=codes, **kw)
    lay.n_floats = lay.stored_floats()
    lay.weight = lay.decode().reshape(codes.shape)
    return lay


def _shape(g: torch.Generator) -> tuple[int, ...]:
    shapes = [(1,), (7,), (33, 5), (16, 3, 3, 3), (257,), (2, 1, 1, 1)]
    return shapes[int(torch.randint(len(shapes), (1,), generator=g))]


def _scale(g: torch.Generator) -> float:
    # Negative scales too: code 0 then decodes to -0.0, which counts as zero with +0.0.
    return float((torch.rand((), generator=g) - 0.3) * 0.2)


def random_binary(g: torch.Generator) -> ExportedLayer:
    codes = torch.where(torch.rand(_shape(g), generator=g) < 0.5, -1, 1).to(torch.int8)
    return coded(codes, 1, scale=_scale(g), encoding="signed")


def random_unsigned(g: torch.Generator, bits: int = 4) -> ExportedLayer:
    top = 2**bits
    dtype = torch.uint8 if bits <= 8 else torch.int16 if bits <= 15 else torch.int64
    codes = torch.randint(0, top, _shape(g), generator=g).to(dtype)
    return coded(
        codes, bits, scale=abs(_scale(g)), offset=-0.05 * float(torch.rand((), generator=g))
    )


def random_signed(g: torch.Generator, bits: int = 3) -> ExportedLayer:
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    codes = torch.randint(lo, hi + 1, _shape(g), generator=g).to(torch.int8)
    return coded(codes, bits, scale=_scale(g), encoding="signed")


def random_sign_magnitude(g: torch.Generator) -> ExportedLayer:
    bits = int(torch.randint(2, 9, (1,), generator=g))
    # Both zero patterns (+0 and the sign bit over magnitude 0) occur, as bit_learning's do.
    codes = torch.randint(0, 2**bits, _shape(g), generator=g).to(torch.int16)
    codes.view(-1)[:2] = torch.tensor([0, 1 << (bits - 1)], dtype=torch.int16)[: codes.numel()]
    return coded(codes, bits, scale=abs(_scale(g)), encoding="sign_magnitude")


def random_codebook(g: torch.Generator, duplicates: bool = False) -> ExportedLayer:
    """weight_fixing's export: a sorted codebook of the layer's values and indices into it;
    with `duplicates`, entries repeat (and -0.0 beside 0.0), so codes share a value."""
    w = torch.round(torch.randn(_shape(g), generator=g) * 4) / 8
    if duplicates:
        book = torch.tensor([0.25, -0.0, 0.25, 0.0, -0.5, 0.125, -0.5])
        codes = torch.randint(0, book.numel(), w.shape, generator=g).to(torch.uint8)
        return coded(codes, 3, codebook=book)
    book, codes = torch.unique(w, sorted=True, return_inverse=True)
    bits = max(1, math.ceil(math.log2(book.numel()))) if book.numel() > 1 else 1
    return coded(codes.to(torch.uint8), bits, codebook=book)


def random_float(g: torch.Generator) -> ExportedLayer:
    w = torch.randn(_shape(g), generator=g) * 0.1
    flat = w.view(-1)
    # Exact zeros of both signs, and values shared with the coded layers' grids.
    flat[torch.rand(flat.shape, generator=g) < 0.2] = 0.0
    flat[torch.rand(flat.shape, generator=g) < 0.1] = -0.0
    flat[torch.rand(flat.shape, generator=g) < 0.2] = 0.125
    return ExportedLayer.float32(w)


def random_wide(g: torch.Generator) -> ExportedLayer:
    """BitNet's wide layers: up to 32-bit unsigned codes, int64, with scale and offset."""
    bits = int(torch.randint(17, 33, (1,), generator=g))
    codes = torch.randint(0, 2**bits, _shape(g), generator=g, dtype=torch.int64)
    if float(torch.rand((), generator=g)) < 0.5:  # a narrow span of wide codes
        codes = codes % 5 + 2 ** (bits - 1)
    return coded(codes, bits, scale=abs(_scale(g)) * 2.0**-20, offset=-0.01)


def bit_plane_layer(g: torch.Generator) -> ExportedLayer:
    """Codes with a leading bit-plane dimension (not the weight's shape): counted from weight."""
    bits = 3
    shape = _shape(g)
    planes = torch.randint(0, 2, (bits, *shape), generator=g).to(torch.uint8)
    value = sum(planes[p].to(torch.int64) << p for p in range(bits))
    return ExportedLayer(
        weight=(value.to(torch.float32) * 0.25).reshape(shape),
        bits=3.0,
        n_floats=1,
        codes=planes,
        scale=0.25,
    )


MAKERS = (
    random_binary,
    random_unsigned,
    random_signed,
    random_sign_magnitude,
    random_codebook,
    lambda g: random_codebook(g, duplicates=True),
    random_float,
    random_wide,
    bit_plane_layer,
)


def _same(layers: dict[str, ExportedLayer], per_layer: bool = True) -> None:
    got = weight_metrics(layers, per_layer=per_layer).model_dump()
    assert got == reference_weight_metrics(layers, per_layer=per_layer).model_dump()


@pytest.mark.parametrize(
    "maker",
    MAKERS,
    ids=[
        "binary",
        "unsigned_offset",
        "signed",
        "sign_magnitude",
        "codebook",
        "codebook_duplicates",
        "float",
        "wide_codes",
        "bit_planes",
    ],
)
def test_one_kind_of_layer_matches_the_reference(maker):
    for seed in range(6):
        g = torch.Generator().manual_seed(seed)
        _same({f"l{i}": maker(g) for i in range(int(torch.randint(1, 5, (1,), generator=g)))})


@pytest.mark.parametrize("seed", range(12))
def test_mixed_networks_match_the_reference(seed):
    g = torch.Generator().manual_seed(100 + seed)
    n = int(torch.randint(1, 9, (1,), generator=g))
    picks = torch.randint(len(MAKERS), (n,), generator=g).tolist()
    layers = {f"layer{i}": MAKERS[k](g) for i, k in enumerate(picks)}
    _same(layers)
    _same(layers, per_layer=False)


def test_codes_decoding_to_the_same_float_are_one_value():
    # 1-bit at scale 0.5 and a 2-bit grid through 0.5, and a float layer holding 0.5: one value.
    a = coded(torch.tensor([-1, 1, 1], dtype=torch.int8), 1, scale=0.5, encoding="signed")
    b = coded(torch.tensor([0, 1, 2, 3], dtype=torch.uint8), 2, scale=0.5, offset=-0.5)
    c = ExportedLayer.float32(torch.tensor([0.5, 0.0, -0.0]))
    layers = {"a": a, "b": b, "c": c}
    _same(layers)
    assert weight_metrics(layers).unique_weights == 4  # -0.5, 0, 0.5, 1.0


def test_negative_zero_from_codes_counts_as_zero():
    # A negative scale decodes code 0 to -0.0; sign-magnitude has two zero codes.
    a = coded(torch.tensor([0, 0, 1], dtype=torch.uint8), 1, scale=-0.25)
    b = coded(
        torch.tensor([0, 4, 1, 5], dtype=torch.int16), 3, scale=0.5, encoding="sign_magnitude"
    )
    layers = {"a": a, "b": b}
    _same(layers)
    m = weight_metrics(layers)
    assert (m.unique_weights, m.sparsity, m.layers[1].unique_weights) == (4, 4 / 7, 3)


def test_empty_layers_among_others_match_the_reference():
    g = torch.Generator().manual_seed(7)
    empty_codes = coded(torch.zeros(0, 3, dtype=torch.uint8), 2, scale=0.5)
    empty_float = ExportedLayer.float32(torch.zeros(0))
    _same({"e": empty_codes, "a": random_unsigned(g), "f": empty_float, "b": random_float(g)})
    _same({"e": empty_codes, "f": empty_float})


def test_histograms_merge_in_key_ranges(monkeypatch):
    """Histograms are merged in ranges of keys: with a tiny range size the same merging runs
    on a small network."""
    import strategies.metrics as metrics

    monkeypatch.setattr(metrics, "_CHUNK", 128)
    g = torch.Generator().manual_seed(3)
    layers = {f"f{i}": random_float(g) for i in range(4)}
    layers["big"] = ExportedLayer.float32(torch.round(torch.randn(5000, generator=g) * 300) / 64)
    layers["codes"] = random_unsigned(g, bits=12)
    layers["book"] = random_codebook(g, duplicates=True)
    _same(layers)
    _same(layers, per_layer=False)

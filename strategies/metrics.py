"""Cost of deployed weights: unique values, entropy, sparsity, bits and bytes.

Computed the same way for every strategy, from `Strategy.export()` (what would be deployed),
never from latent floats. The definitions (listed with their units in docs/records.md):

- `unique_weights`: distinct deployed values over all quantized layers together;
  `unique_nonzero_weights` the same without zero.
- `weight_entropy_bits`: -sum p_v log2 p_v over the histogram of deployed values;
  `weight_entropy_nonzero_bits` over the non-zero values only (WFN's tables).
- `sparsity`: fraction of deployed weights exactly zero.
- `weight_bits`: sum over layers of numel * bit-depth + 32 per per-layer float;
  `weight_bytes` = weight_bits / 8; `compression_ratio` = 32 * numel / weight_bits;
  `mean_bits` = weight_bits / numel.

Values are compared as float32 numbers: two layers whose weights are the same float32 share
one value, and -0.0 is the same value as +0.0 (zero). The histogram of the whole network is
merged from one histogram per layer, never from all weights at once:

- a layer with codes of the weight's shape is counted over its codes (`torch.bincount` over
  the span of codes present, or an integer unique for codes spanning more than 2^16 values)
  and only the codes present are decoded (`ExportedLayer.decode()`);
- a layer without such codes is counted over its float32 weights (one unique of one layer);
- histograms are kept by an order-preserving int32 key of each float32 value (`_keys`) and
  merged in key ranges of about `_CHUNK` entries (`_merged_counts`), so each sort stays small.

The merged histogram lists values in ascending order, as one `torch.unique` over every
deployed weight would, so the entropies are summed in the same order and come out the same.
Measured speed: docs/benchmarks.md ("Weight metrics").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import torch

from schemas.trial import LayerMetrics, WeightMetrics
from strategies.base import ExportedLayer

# Entries per merged key range: merging 20M keys of ten float layers takes 0.56 s in ranges of
# this size and 1.1 s in one unique (one thread), as sorts of fewer keys stay in cache.
_CHUNK = 1 << 19
# Codes spanning at most this many values are counted by bincount (16-bit codes and below);
# wider spans (BitNet's codes of up to 32 bits) by an integer unique of the codes.
_BINCOUNT_SPAN = 1 << 16

Histogram = tuple[torch.Tensor, torch.Tensor]  # (int32 keys ascending, int64 counts)


def value_histogram(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct values of a tensor and how often each occurs (one sort, vectorized)."""
    return torch.unique(values.detach().reshape(-1), sorted=True, return_counts=True)


def entropy_bits(counts: torch.Tensor) -> float:
    """Shannon entropy, base 2, of a histogram given by its counts."""
    counts = counts[counts > 0].to(torch.float64)
    if counts.numel() == 0:
        return 0.0
    p = counts / counts.sum()
    return max(0.0, float(-(p * torch.log2(p)).sum()))


def _keys(values: torch.Tensor) -> torch.Tensor:
    """int32 keys in the order of the float32 `values` (no NaN): the bit pattern of a positive
    value, minus the magnitude bits of a negative one. Equal floats get equal keys, and -0.0
    gets 0, the key of +0.0; zero is the only value with key 0. One int32 copy of `values`
    (and a bool mask) is all it allocates."""
    bits = values.view(torch.int32)
    key = bits >> 31  # -1 where negative, else 0
    key &= 0x7FFFFFFF
    key ^= bits  # negative: -1 - magnitude bits; positive: the bits unchanged
    key += key < 0  # negative: -magnitude bits
    return key


def _empty(device: torch.device | None) -> Histogram:
    return (
        torch.zeros(0, dtype=torch.int32, device=device),
        torch.zeros(0, dtype=torch.int64, device=device),
    )


def _sum_by_key(keys: torch.Tensor, counts: torch.Tensor) -> Histogram:
    """The histogram of (key, count) pairs in any order, equal keys summed, keys ascending."""
    uniq, inverse = torch.unique(keys, sorted=True, return_inverse=True)
    total = torch.zeros(uniq.numel(), dtype=torch.int64, device=keys.device)
    return uniq, total.index_add_(0, inverse, counts.to(torch.int64))


def _zero_at(keys: torch.Tensor) -> int | None:
    """Where zero is in ascending keys (only zero has key 0, so once at most), or None."""
    at = int(torch.searchsorted(keys, torch.zeros(1, dtype=keys.dtype, device=keys.device)))
    return at if at < keys.numel() and int(keys[at]) == 0 else None


def _merged_counts(hists: Sequence[Histogram]) -> tuple[torch.Tensor, int | None]:
    """The float64 counts of several histograms merged (ascending by value), and where zero
    is among them, merged range by range of keys into one buffer.

    Each histogram is sampled every `_CHUNK // 4` entries and every fourth sample of them all
    bounds a range, so a range holds on the order of `_CHUNK` entries (each histogram adds at
    most `_CHUNK // 4` beyond its samples in it). Equal keys fall in the same range in every
    histogram, and the ranges are in ascending order.
    Counts are whole numbers below 2^53, so summing them in float64 is exact.
    """
    present = [h for h in hists if h[0].numel()]
    if not present:
        return torch.zeros(0, dtype=torch.float64), None
    if len(present) == 1:
        keys, counts = present[0]
        return counts.to(torch.float64), _zero_at(keys)
    device = present[0][0].device
    total = sum(int(k.numel()) for k, _ in present)
    if total <= _CHUNK:
        cuts = [[0, int(k.numel())] for k, _ in present]
    else:
        stride = max(1, _CHUNK // 4)
        samples = torch.cat([k[::stride] for k, _ in present]).sort().values
        bounds = torch.unique(samples[4::4])  # the first key of every range but the first
        cuts = [[0, *torch.searchsorted(k, bounds).tolist(), int(k.numel())] for k, _ in present]
    out = torch.zeros(total, dtype=torch.float64, device=device)
    filled, zero_at = 0, None
    for j in range(len(cuts[0]) - 1):
        parts = [
            (k[cut[j] : cut[j + 1]], c[cut[j] : cut[j + 1]])
            for (k, c), cut in zip(present, cuts, strict=True)
        ]
        keys = torch.cat([k for k, _ in parts])
        counts = torch.cat([c for _, c in parts]).to(torch.float64)
        uniq, inverse = torch.unique(keys, sorted=True, return_inverse=True)
        out[filled : filled + uniq.numel()].index_add_(0, inverse, counts)
        at = _zero_at(uniq)
        if at is not None:
            zero_at = filled + at
        filled += int(uniq.numel())
    return out[:filled], zero_at


def _code_histogram(layer: ExportedLayer, codes: torch.Tensor) -> Histogram:
    """The histogram of a layer's deployed values, counted over its integer codes.

    Only the codes present are decoded: `decode()` is elementwise, and the contract suite
    (`check_codes_decode_to_weights`) holds it equal to `weight`, so the values counted here
    are the deployed ones.
    """
    flat = codes.detach().reshape(-1)
    lo_t, hi_t = torch.aminmax(flat)
    lo, hi = int(lo_t), int(hi_t)
    if hi - lo < _BINCOUNT_SPAN:
        if lo == 0:
            shifted = flat
        elif flat.dtype == torch.int64:
            shifted = flat - lo
        else:  # narrower codes: shifted in int32, which holds every difference here
            shifted = flat.to(torch.int32, copy=True).sub_(lo)
        counts = torch.bincount(shifted, minlength=hi - lo + 1)
        present = counts.nonzero().reshape(-1)
        code_values, counts = present + lo, counts[present]
    else:
        code_values, counts = torch.unique(flat, sorted=True, return_counts=True)
    values = dataclasses.replace(layer, codes=code_values).decode().to(torch.float32)
    # Different codes may decode to one float (a codebook's repeated entries, +0 and -0).
    return _sum_by_key(_keys(values.contiguous()), counts)


def _float_histogram(weight: torch.Tensor) -> Histogram:
    """The histogram of a layer's float32 weights: one unique over int32 keys (a sort of
    integers, faster than one of floats), on one copy of the layer."""
    keys = _keys(weight.detach().reshape(-1).to(torch.float32))
    uniq, counts = torch.unique(keys, sorted=True, return_counts=True)
    return uniq, counts


def layer_histogram(layer: ExportedLayer) -> Histogram:
    """(int32 keys ascending, int64 counts) of one layer's deployed values (see `_keys`)."""
    codes = layer.codes
    if layer.weight.numel() == 0:
        return _empty(layer.weight.device)
    # Only integer codes of the weight's shape are one code per weight; codes of another shape
    # (a leading bit-plane dimension) are counted over the layer's weights instead.
    if (
        codes is not None
        and tuple(codes.shape) == tuple(layer.weight.shape)
        and not (codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool)
    ):
        return _code_histogram(layer, codes)
    return _float_histogram(layer.weight)


def _entropy_of(counts: torch.Tensor) -> float:
    """`entropy_bits` of float64 counts that are all positive, computed by the same operations
    on an array of the same length (so to the same bits); `counts` is overwritten."""
    if counts.numel() == 0:
        return 0.0
    p = counts.div_(counts.sum())
    terms = torch.log2(p).mul_(p)
    return max(0.0, float(-terms.sum()))


def _stats(
    counts: torch.Tensor, zero_at: int | None, n: int
) -> tuple[int, int, float, float, float]:
    """(unique, unique non-zero, entropy, entropy of non-zeros, sparsity) of `n` values from
    the float64 counts of their histogram (overwritten), zero's among them at `zero_at`."""
    if n == 0:
        return 0, 0, 0.0, 0.0, 0.0
    u = int(counts.numel())
    n_zero = 0 if zero_at is None else int(counts[zero_at])
    nonzero = None if zero_at is None else torch.cat([counts[:zero_at], counts[zero_at + 1 :]])
    h = _entropy_of(counts)
    return (
        u,
        u - int(zero_at is not None),
        h,
        h if nonzero is None else _entropy_of(nonzero),
        n_zero / n,
    )


def weight_metrics(layers: Mapping[str, ExportedLayer], *, per_layer: bool = True) -> WeightMetrics:
    """Every weight metric above, from a strategy's export."""
    if not layers:
        raise ValueError("the strategy exported no layers")
    hists: list[Histogram] = []
    rows: list[LayerMetrics] = []
    total_bits = 0.0
    n = 0
    # One device for the merge: layers may live on different devices under model parallelism.
    device = next(iter(layers.values())).weight.device
    for name, layer in layers.items():
        numel = layer.weight.numel()
        n += numel
        bits = float(numel) * float(layer.bits) + 32.0 * layer.n_floats
        total_bits += bits
        hist = layer_histogram(layer)
        if per_layer:
            keys, counts = hist
            u, unz, h, _, sp = _stats(counts.to(torch.float64), _zero_at(keys), numel)
            rows.append(
                LayerMetrics(
                    name=name,
                    shape=list(layer.weight.shape),
                    numel=numel,
                    bits=float(layer.bits),
                    unique_weights=u,
                    unique_nonzero_weights=unz,
                    weight_entropy_bits=h,
                    sparsity=sp,
                    weight_bits=bits,
                )
            )
        hists.append((hist[0].to(device), hist[1].to(device)))
    counts, zero_at = _merged_counts(hists)
    hists.clear()  # the per-layer histograms are merged: free them before the entropy
    u, unz, h, hnz, sp = _stats(counts, zero_at, n)
    return WeightMetrics(
        numel=n,
        unique_weights=u,
        unique_nonzero_weights=unz,
        weight_entropy_bits=h,
        weight_entropy_nonzero_bits=hnz,
        sparsity=sp,
        weight_bits=total_bits,
        weight_bytes=total_bits / 8.0,
        compression_ratio=(32.0 * n / total_bits) if total_bits > 0 else float("inf"),
        mean_bits=total_bits / n if n else 0.0,
        layers=rows,
    )

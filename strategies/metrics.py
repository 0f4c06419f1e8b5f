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
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from schemas.trial import LayerMetrics, WeightMetrics
from strategies.base import ExportedLayer


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


def _stats(values: torch.Tensor) -> tuple[int, int, float, float, float]:
    """(unique, unique non-zero, entropy, entropy of non-zeros, sparsity) of `values`."""
    n = values.numel()
    if n == 0:
        return 0, 0, 0.0, 0.0, 0.0
    uniq, counts = value_histogram(values)
    zero = uniq == 0
    n_zero = int(counts[zero].sum())
    return (
        int(uniq.numel()),
        int((~zero).sum()),
        entropy_bits(counts),
        entropy_bits(counts[~zero]),
        n_zero / n,
    )


def weight_metrics(layers: Mapping[str, ExportedLayer], *, per_layer: bool = True) -> WeightMetrics:
    """Every weight metric above, from a strategy's export."""
    if not layers:
        raise ValueError("the strategy exported no layers")
    flat = []
    rows: list[LayerMetrics] = []
    total_bits = 0.0
    for name, layer in layers.items():
        w = layer.weight.detach().reshape(-1).to(torch.float32)
        flat.append(w)
        bits = float(w.numel()) * float(layer.bits) + 32.0 * layer.n_floats
        total_bits += bits
        if per_layer:
            u, unz, h, _, sp = _stats(w)
            rows.append(
                LayerMetrics(
                    name=name,
                    shape=list(layer.weight.shape),
                    numel=w.numel(),
                    bits=float(layer.bits),
                    unique_weights=u,
                    unique_nonzero_weights=unz,
                    weight_entropy_bits=h,
                    sparsity=sp,
                    weight_bits=bits,
                )
            )
    # One device for the concatenation: layers may live on different devices under model
    # parallelism; the histogram is cheap next to training either way.
    device = flat[0].device
    allw = torch.cat([f.to(device) for f in flat])
    n = allw.numel()
    u, unz, h, hnz, sp = _stats(allw)
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

"""Time `weight_metrics` on synthetic exports, beside the concatenate-and-unique it replaced.

    python benchmarks/bench_weight_metrics.py [--sizes 1M,10M,50M] [--layers 10]
        [--kind codes|float|both] [--threads N] [--smoke] [--no-reference]

Each size is the total number of deployed weights, split evenly over `--layers` layers:

- `codes`: 4-bit unsigned codes (uint8) with a per-layer scale and offset, weight = decode();
- `float`: float32 layers of Gaussian weights (std sqrt(2 / fan-in), fan-ins 27 to 576).

Both implementations run on the same export in the same process, so machine noise hits both:
`weight_metrics` (a histogram per layer, from codes where a layer has them, merged by value)
and the reference, every weight concatenated and one float unique over them (the previous
implementation). Seconds are the best of `--repeats` runs after one warm-up run. Peak extra
memory is the rise of the process's resident-set high-water mark (VmHWM in /proc/self/status,
reset through /proc/self/clear_refs before the warm-up run) above the resident set before it,
after glibc's malloc_trim: what the computation held at its peak beyond the export itself.
Where that reset is not allowed the column says n/a. The results of the two are compared
(they must be equal).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import math
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

from schemas.trial import LayerMetrics, WeightMetrics
from strategies.base import ExportedLayer
from strategies.metrics import weight_metrics

SMOKE_SIZES = "10k,100k"


def _entropy(counts: torch.Tensor) -> float:
    counts = counts[counts > 0].to(torch.float64)
    if counts.numel() == 0:
        return 0.0
    p = counts / counts.sum()
    return max(0.0, float(-(p * torch.log2(p)).sum()))


def _stats(values: torch.Tensor) -> tuple[int, int, float, float, float]:
    n = values.numel()
    if n == 0:
        return 0, 0, 0.0, 0.0, 0.0
    uniq, counts = torch.unique(values, sorted=True, return_counts=True)
    zero = uniq == 0
    return (
        uniq.numel(),
        int((~zero).sum()),
        _entropy(counts),
        _entropy(counts[~zero]),
        int(counts[zero].sum()) / n,
    )


def reference_weight_metrics(
    layers: dict[str, ExportedLayer], per_layer: bool = True
) -> WeightMetrics:
    """The definition written out, and the previous implementation: every deployed weight
    concatenated, one float unique over them, and one per layer. `weight_metrics` must agree
    with it exactly (tests/unit/test_metrics.py), entropies bit for bit."""
    flat = [lay.weight.detach().reshape(-1).to(torch.float32) for lay in layers.values()]
    rows, total_bits = [], 0.0
    for (name, lay), w in zip(layers.items(), flat, strict=True):
        bits = float(w.numel()) * float(lay.bits) + 32.0 * lay.n_floats
        total_bits += bits
        u, unz, h, _, sp = _stats(w)
        rows.append(
            LayerMetrics(
                name=name,
                shape=list(lay.weight.shape),
                numel=w.numel(),
                bits=float(lay.bits),
                unique_weights=u,
                unique_nonzero_weights=unz,
                weight_entropy_bits=h,
                sparsity=sp,
                weight_bits=bits,
            )
        )
    allw = torch.cat(flat)
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
        layers=rows if per_layer else [],
    )


def parse_size(text: str) -> int:
    """'10k' -> 10_000, '2.5M' -> 2_500_000, '1G' -> 1_000_000_000."""
    text = text.strip()
    scale = {"k": 10**3, "m": 10**6, "g": 10**9}.get(text[-1:].lower(), 1)
    number = text[:-1] if scale != 1 else text
    return int(float(number) * scale)


def label(n: int) -> str:
    for unit, scale in (("G", 10**9), ("M", 10**6), ("k", 10**3)):
        if n >= scale and n % (scale // 10) == 0:
            return f"{n / scale:g}{unit}"
    return str(n)


def build(kind: str, total: int, n_layers: int, seed: int = 0) -> dict[str, ExportedLayer]:
    """`n_layers` layers of `total` weights in all (the last takes the remainder)."""
    g = torch.Generator().manual_seed(seed)
    sizes = [total // n_layers] * n_layers
    sizes[-1] += total - sum(sizes)
    layers: dict[str, ExportedLayer] = {}
    for i, n in enumerate(sizes):
        fan_in = 27 + (576 - 27) * i / max(1, n_layers - 1)
        std = math.sqrt(2.0 / fan_in)
        if kind == "codes":
            codes = torch.randint(0, 16, (n,), generator=g, dtype=torch.uint8)
            scale = 2 * 3 * std / 15  # a +-3 std grid of 16 levels
            layer = ExportedLayer(
                weight=torch.empty(0),
                bits=4.0,
                n_floats=2,
                codes=codes,
                scale=scale,
                offset=-3 * std,
            )
            layer.weight = layer.decode()
        else:
            layer = ExportedLayer.float32(torch.randn(n, generator=g) * std)
        layers[f"layer{i}"] = layer
    return layers


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _trim() -> None:
    """Hand freed heap memory back to the system (glibc keeps freed blocks of up to 32 MiB
    resident), so that each measurement starts from the memory actually in use."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def measure(
    fn: Callable[[], WeightMetrics], repeats: int
) -> tuple[float, float | None, WeightMetrics]:
    """(best seconds of `repeats` after a warm-up, peak extra MiB of the warm-up, result)."""
    peak: float | None = None
    gc.collect()
    _trim()
    try:
        before = _status_kib("VmRSS")
        resettable = _reset_peak()
    except (OSError, KeyError):
        resettable = False
    result = fn()
    if resettable:
        peak = max(0, _status_kib("VmHWM") - before) / 1024
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best, peak, result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1M,10M,50M", help="total weights, comma-separated")
    ap.add_argument("--layers", type=int, default=10)
    ap.add_argument("--kind", choices=["codes", "float", "both"], default="both")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs after one warm-up")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--smoke", action="store_true", help=f"tiny sizes ({SMOKE_SIZES}), one run")
    ap.add_argument("--no-reference", action="store_true", help="skip the concat+unique")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes_text, repeats = (SMOKE_SIZES, 1) if args.smoke else (args.sizes, args.repeats)
    sizes = [parse_size(s) for s in sizes_text.split(",") if s.strip()]
    kinds = ["codes", "float"] if args.kind == "both" else [args.kind]

    # Load every kernel both use once, so the first row's memory is not the library's.
    for kind in ("codes", "float"):
        reference_weight_metrics(build(kind, 1000, 2))
        weight_metrics(build(kind, 1000, 2))

    def mib(v: float | None) -> str:
        return "n/a" if v is None else "-" if math.isnan(v) else f"{v:.0f}"

    print(
        f"{args.layers} layers, {torch.get_num_threads()} torch threads, best of {repeats} "
        "after one warm-up; peak = rise of VmHWM over VmRSS during the warm-up (MiB)\n"
    )
    print(
        "| weights | kind | concat+unique (s) | weight_metrics (s) | speed-up "
        "| peak extra, concat+unique (MiB) | peak extra, weight_metrics (MiB) | equal |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for size in sizes:
        for kind in kinds:
            layers = build(kind, size, args.layers)
            new_s, new_peak, new = measure(partial(weight_metrics, layers), repeats)
            if args.no_reference:
                old_s, old_peak, same = math.nan, math.nan, "-"
            else:
                old_s, old_peak, old = measure(partial(reference_weight_metrics, layers), repeats)
                same = "yes" if old.model_dump() == new.model_dump() else "NO"
            speedup = "-" if math.isnan(old_s) else f"{old_s / new_s:.1f}x"
            old_text = "-" if math.isnan(old_s) else f"{old_s:.3f}"
            print(
                f"| {label(size)} | {kind} | {old_text} | {new_s:.3f} | {speedup} "
                f"| {mib(old_peak)} | {mib(new_peak)} | {same} |",
                flush=True,
            )
            del layers
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

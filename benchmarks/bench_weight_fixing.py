"""Time weight_fixing's clustering: the ten fixing steps on a whole-network vector of 266k
weights (about ResNet-20's), as the prototype measured (0.13 s for one step).

    python benchmarks/bench_weight_fixing.py [--weights 266000] [--delta 0.015] [--max-terms 3]
    python benchmarks/bench_weight_fixing.py --smoke        # 2,000 weights: for the tests

Weights are He-initialised-like Gaussians with a per-layer spread; between steps they are not
trained, so later steps see the same far-from-centre weights (a pessimistic case: training with
the regularizer pulls free weights towards centres). Prints the seconds of each step. On a
CPU shared with other jobs, `--threads 1` avoids intra-op threads waiting for each other.
Ends with a markdown table: the largest step, all steps, and the values in use.
"""

from __future__ import annotations

import argparse
import time

import torch

from strategies.weight_fixing import FRACTIONS, STEPS, fix_weights


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", type=int, default=266_000)
    ap.add_argument("--delta", type=float, default=0.015)
    ap.add_argument("--max-terms", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--smoke", action="store_true", help="2,000 weights, for the tests")
    args = ap.parse_args(argv)
    if args.smoke:
        args.weights = 2_000
    if args.threads:
        torch.set_num_threads(args.threads)

    g = torch.Generator().manual_seed(args.seed)
    # Ten "layers" with fan-ins from 27 to 576: std sqrt(2 / fan_in), as in a CIFAR ResNet.
    sizes = torch.full((10,), args.weights // 10)
    sizes[-1] += args.weights - int(sizes.sum())
    fan_ins = torch.linspace(27, 576, 10)
    w = torch.cat(
        [
            torch.randn(int(n), generator=g) * (2.0 / f).sqrt()
            for n, f in zip(sizes, fan_ins, strict=True)
        ]
    )
    fixed = torch.zeros_like(w, dtype=torch.bool)
    value = torch.zeros_like(w)
    total = largest = 0.0
    for step in range(STEPS):
        delta_t = max(args.delta, args.delta * (STEPS - step))
        target = int(FRACTIONS[step] * w.numel() + 0.5)
        t0 = time.perf_counter()
        report = fix_weights(
            w, fixed, value, target, delta_t, max_terms=args.max_terms, gamma0=2.0**-7
        )
        dt = time.perf_counter() - t0
        total += dt
        largest = max(largest, dt)
        print(
            f"step {step}: {report.fixed:7d} fixed (+{report.newly_fixed:6d}), "
            f"delta_t {delta_t:.4f}, terms {report.terms}, allowed {report.allowed:.4f}, "
            f"{dt * 1e3:7.1f} ms"
        )
    uniq = torch.unique(value).numel()
    print(
        f"{w.numel()} weights, {torch.get_num_threads()} threads: {total:.3f} s for {STEPS} steps "
        f"({total / STEPS * 1e3:.1f} ms per step); {uniq} distinct values"
    )
    print()
    print("| weights | threads | largest step | all steps | distinct values |")
    print("| --- | --- | --- | --- | --- |")
    print(f"| {w.numel()} | {torch.get_num_threads()} | {largest:.3f} s | {total:.3f} s | {uniq} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

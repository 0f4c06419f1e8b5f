"""On a GPU: each strategy's step cost against float, and trials packed on one GPU.

    python benchmarks/bench_gpu.py                  # a few minutes on a machine with a GPU
    python benchmarks/bench_gpu.py --write-docs     # and the tables into docs/benchmarks.md
    python benchmarks/bench_gpu.py --smoke          # seconds: tiny sizes

(a) Step cost: `benchmarks/bench_step_cost.py` (its `main`, with the same flags a person would
give it) on a CIFAR-shaped WRN (`wrn`, 3x32x32, batch 128, an epoch of CIFAR-10's 45,000
training images) and on the MLP (MNIST-shaped 1x28x28, an epoch of 54,000), every registered
strategy against `full_precision` on the same model; its memory column is the peak CUDA memory
allocated during a run's steps (`torch.cuda.max_memory_allocated`).

(b) Packing: 1, 2 and 4 trials (`--pack`) on the same GPU at once, as a sweep with
`resources.gpu` of 1, 0.5 and 0.25 runs them: one process per trial, each training the same
small model (`--pack-model`, resnet20 by default, full precision, crop + flip augmentation,
on a CIFAR-shaped synthetic dataset resident on the GPU) with the trial engine
(`runners.engine.trial.train`) and the memory cap a sweep worker sets (its share of the GPU). The
processes start, build their data on the GPU, then all start training at once; each reports
its training samples per second over its epochs after the first (the first pays for CUDA's
warm-up), and the table gives them per trial and summed over the trials packed.

Without a GPU it runs the smoke sizes on the CPU and says so: the numbers then only show the
script works. Prints Markdown tables; `--write-docs` writes them into the "GPU" section of
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

BENCHMARKS = Path(__file__).resolve().parent
ROOT = BENCHMARKS.parent
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))

import bench_step_cost  # noqa: E402
from bench_loader import write_section  # noqa: E402

from runners.engine.trial import pick_device  # noqa: E402

SECTION = "GPU"
NO_GPU = (
    "not measured here: this machine has no GPU; run `python benchmarks/bench_gpu.py` on a GPU "
    "machine"
)
PROTOCOL = "BENCH_GPU "  # prefix of the lines a packed trial's process speaks to the parent


# -- (a) step cost ---------------------------------------------------------------------------


def step_cost_argv(model: str, device: torch.device, smoke: bool) -> list[str]:
    """The flags of `bench_step_cost` for `model`, at full or smoke size."""
    if model == "wrn":
        argv = ["--models", "wrn", "--input", "3,8,8" if smoke else "3,32,32"]
        argv += ["--train-size", "45000"]
        if smoke:
            argv += ["--strategies", "full_precision,wrn_1bit"]
    else:
        argv = ["--models", "mlp", "--input", "1,28,28", "--train-size", "54000"]
        if smoke:
            argv += ["--strategies", "full_precision,bit_learning"]
    argv += ["--batch", "128", "--threads", "0", "--device", str(device)]
    return argv + (["--smoke"] if smoke else [])


def step_cost(model: str, device: torch.device, smoke: bool) -> str:
    """`bench_step_cost`'s output for `model` (its header line and table)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = bench_step_cost.main(step_cost_argv(model, device, smoke))
    if code:
        raise RuntimeError(f"bench_step_cost exited with {code} for {model}")
    return out.getvalue().strip()


# -- (b) trials packed on one GPU ------------------------------------------------------------


def pack_sizes(smoke: bool) -> dict[str, Any]:
    if smoke:
        return {"train": 128, "batch": 32, "epochs": 2, "shape": [3, 8, 8]}
    return {"train": 20_000, "batch": 128, "epochs": 4, "shape": [3, 32, 32]}


def child(spec: dict[str, Any]) -> int:
    """One packed trial: build its data and trial on the device, say ready, wait for go,
    train, and print its measurements."""
    from runners.engine.data import Dataset
    from runners.engine.trial import resolve, train
    from runners.sweep.worker import cap_gpu_memory
    from schemas.trial import AugmentConfig, TrialConfig

    device = torch.device(spec["device"])
    if device.type == "cpu":
        torch.set_num_threads(1)
    cap_gpu_memory(device, 1.0 / spec["packed"])  # as a sweep worker holding that share
    g = torch.Generator().manual_seed(spec["index"])
    shape, n, small = tuple(spec["shape"]), spec["train"], max(1, spec["train"] // 10)

    def split(k: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn((k, *shape), generator=g)
        return x.to(device), torch.randint(0, 10, (k,), generator=g).to(device)

    (xt, yt), (xv, yv), (xs, ys) = split(n), split(small), split(small)
    data = Dataset("synthetic", xt, yt, xv, yv, xs, ys, num_classes=10)
    trial = resolve(
        TrialConfig(
            strategy="full_precision",
            model=spec["model"],
            epochs=spec["epochs"],
            batch_size=spec["batch"],
            augment=AugmentConfig(crop_padding=max(1, shape[1] // 8), flip=True),
            seed=spec["index"],
            device=str(device),
        )
    )
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    print(PROTOCOL + "ready", flush=True)
    sys.stdin.readline()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.time()
    result = train(trial, dataset=data, device=device).result
    end = time.time()
    seconds = [h.seconds for h in result.history]
    steady = seconds[1:] or seconds
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
    report = {
        "samples_per_second": n * len(steady) / sum(steady),
        "start": start,
        "end": end,
        "peak_bytes": peak,
        "epoch_seconds": seconds,
    }
    print(PROTOCOL + json.dumps(report), flush=True)
    return 0


def run_packed(k: int, args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    """Start `k` trial processes on `device`, release them together, and collect reports."""
    spec = {"device": str(device), "packed": k, "model": args.pack_model, **pack_sizes(args.smoke)}
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    procs: list[tuple[subprocess.Popen[str], Any]] = []
    with contextlib.ExitStack() as stack:
        stack.callback(_kill_all, procs)
        for i in range(k):
            err = stack.enter_context(tempfile.TemporaryFile(mode="w+"))
            p = subprocess.Popen(
                [sys.executable, __file__, "--child", json.dumps({**spec, "index": i})],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                cwd=ROOT,
                env=env,
            )
            procs.append((p, err))
        for p, err in procs:
            _read_protocol(p, err)  # "ready"
        for p, _ in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        reports = [json.loads(_read_protocol(p, err)) for p, err in procs]
        for p, err in procs:
            if p.wait(timeout=args.timeout) != 0:
                err.seek(0)
                raise RuntimeError(f"a packed trial exited with {p.returncode}:\n{err.read()}")
        return reports


def _kill_all(procs: list[tuple[subprocess.Popen[str], Any]]) -> None:
    """End the packed trials' processes still running (the parent failed or timed out)."""
    for p, _ in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


def _read_protocol(p: subprocess.Popen[str], err: Any) -> str:
    assert p.stdout is not None
    for line in p.stdout:
        if line.startswith(PROTOCOL):
            return line[len(PROTOCOL) :].strip()
    p.wait()
    err.seek(0)
    raise RuntimeError(f"a packed trial ended early (exit {p.returncode}):\n{err.read()}")


def packing_table(results: dict[int, list[dict[str, Any]]], device: torch.device) -> str:
    unit = "GPU" if device.type == "cuda" else "CPU (smoke)"
    lines = [
        f"| trials on one {unit} | samples/s per trial (mean, min-max) | samples/s in all "
        "| vs 1 trial | peak MiB per trial | wall s |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    base = None
    for k, reports in sorted(results.items()):
        rates = [r["samples_per_second"] for r in reports]
        total = sum(rates)
        base = total if base is None else base
        wall = max(r["end"] for r in reports) - min(r["start"] for r in reports)
        peak = max(r["peak_bytes"] for r in reports) / 2**20
        mem = f"{peak:,.0f}" if device.type == "cuda" else "-"
        lines.append(
            f"| {k} | {statistics.fmean(rates):,.0f} ({min(rates):,.0f}-{max(rates):,.0f}) "
            f"| {total:,.0f} | {total / base:.2f}x | {mem} | {wall:.1f} |"
        )
    return "\n".join(lines)


# -- main ------------------------------------------------------------------------------------


INTRO = """\
    python benchmarks/bench_gpu.py

Each strategy's step cost against float on a CIFAR-shaped WRN and on the MLP, and the
throughput of 1, 2 and 4 trials packed on one GPU (fractional `resources.gpu`). See the
script's docstring for what is timed.
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda:N")
    ap.add_argument("--pack", default="1,2,4", help="trials packed on one GPU, per run")
    ap.add_argument("--pack-model", default="resnet20", help="the packed trials' model")
    ap.add_argument(
        "--parts", default="step,pack", help="what to run: step (step cost), pack (packing)"
    )
    ap.add_argument("--timeout", type=float, default=600, help="seconds a packed trial may take")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (seconds), for the tests")
    ap.add_argument(
        "--write-docs", action="store_true", help="write the tables into docs/benchmarks.md"
    )
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(json.loads(args.child))
    device = pick_device(args.device)
    gpu = device.type == "cuda"
    if not gpu:
        args.smoke = True
        header = f"{NO_GPU}. Ran without a GPU: smoke sizes on the CPU, numbers say nothing."
    else:
        header = (
            f"{torch.cuda.get_device_name(device)} ({device}), torch {torch.__version__}, "
            f"CUDA {torch.version.cuda}{' (smoke)' if args.smoke else ''}"
        )
    print(header)
    parts = {p for p in args.parts.split(",") if p}
    out: list[str] = []
    if "step" in parts:
        for model in ("wrn", "mlp"):
            text = step_cost(model, device, args.smoke)
            print(f"\n{text}")
            out.append(text)
    if "pack" in parts:
        results = {k: run_packed(k, args, device) for k in (int(s) for s in args.pack.split(","))}
        sizes = pack_sizes(args.smoke)
        text = (
            f"{args.pack_model}, input {'x'.join(map(str, sizes['shape']))}, batch "
            f"{sizes['batch']}, {sizes['train']} samples x {sizes['epochs']} epochs per trial:"
            f"\n\n{packing_table(results, device)}"
        )
        print(f"\n{text}")
        out.append(text)
    if args.write_docs:
        body = "\n\n".join(out)
        if gpu:
            body = f"{header}:\n\n{body}"
        else:
            body = (
                f"{NO_GPU}. The smoke run on this machine's CPU (tiny sizes, a few steps each: "
                f"it shows the script runs, its numbers say nothing):\n\n{body}"
            )
        write_section(SECTION, "bench_gpu", body, INTRO)
        print("\nwritten to docs/benchmarks.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

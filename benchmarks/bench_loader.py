"""Batching on the trial's device against a torch DataLoader that augments sample by sample.

    python benchmarks/bench_loader.py
    python benchmarks/bench_loader.py --samples 50000 --workers 0,1,4 --write-docs

The trial engine keeps a dataset's tensors on its device and batches them there
(`runners.engine.data.batches`): one permutation and every augmentation draw of the epoch from a CPU
generator, moved once, then per batch a gather and the vectorized crop, flip and cutout of
`augment_batch`. Against it, the usual pipeline: a `torch.utils.data.DataLoader` over the same
tensors on the host (a TensorDataset whose items are augmented one by one: zero padding and a
random crop window, a random horizontal flip, a random cutout square, the same operations),
collated into batches and copied to the device (`pin_memory` and `non_blocking` on CUDA), with
`--workers` worker processes (0: in the main process; persistent workers otherwise).

Data are synthetic, of CIFAR's shape (3x32x32, crop 4 + flip + cutout 8, the 1-bit WRN
paper's augmentation with cutout) and MNIST's (1x28x28, crop 2). Each loader runs one untimed
epoch (workers start, caches warm), then `--repeats` timed epochs; the table gives the best
epoch's samples per second (on CUDA, with `torch.cuda.synchronize` before the clock stops).
Nothing trains: this is the cost of producing the batches on the device.

Prints a Markdown table; `--write-docs` puts it in the "Data loading" section of
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import platform
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from runners.engine.data import batches
from runners.engine.trial import pick_device
from schemas.trial import AugmentConfig

DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
SECTION = "Data loading"


@dataclass(frozen=True)
class Case:
    name: str
    shape: tuple[int, int, int]
    augment: AugmentConfig

    def describe(self) -> str:
        a = self.augment
        parts = [f"crop {a.crop_padding}"] if a.crop_padding else []
        parts += ["flip"] if a.flip else []
        parts += [f"cutout {a.cutout}"] if a.cutout else []
        return " + ".join(parts) or "none"


CASES = (
    Case("CIFAR-shaped 3x32x32", (3, 32, 32), AugmentConfig(crop_padding=4, flip=True, cutout=8)),
    Case("MNIST-shaped 1x28x28", (1, 28, 28), AugmentConfig(crop_padding=2)),
)


class HostAugmented(TensorDataset):
    """Images and labels on the host, each image augmented as it is fetched: the per-sample
    pipeline of a DataLoader (draws from Python's `random`, which the DataLoader seeds in
    each worker)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, augment: AugmentConfig) -> None:
        super().__init__(x, y)
        self.augment = augment

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        img, label = self.tensors[0][i], self.tensors[1][i]
        return augment_sample(img, self.augment, random), label


class Draws(Protocol):
    """Python's `random` module or a `random.Random`."""

    def randrange(self, stop: int, /) -> int: ...
    def random(self) -> float: ...


def augment_sample(img: torch.Tensor, augment: AugmentConfig, rng: Draws) -> torch.Tensor:
    """Crop (after zero padding), flip and cut out one (C, H, W) image, as `augment_batch`
    does to each image of a batch."""
    _, h, w = img.shape
    if augment.crop_padding > 0:
        p = augment.crop_padding
        dy, dx = rng.randrange(2 * p + 1), rng.randrange(2 * p + 1)
        img = F.pad(img, (p, p, p, p))[:, dy : dy + h, dx : dx + w]
    if augment.flip and rng.random() < 0.5:
        img = img.flip(2)
    if augment.cutout > 0:
        sh, sw = min(augment.cutout, h), min(augment.cutout, w)
        top, left = rng.randrange(h - sh + 1), rng.randrange(w - sw + 1)
        img = img.clone()
        img[:, top : top + sh, left : left + sw] = 0.0
    return img.contiguous()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_rate(
    epoch: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]],
    n: int,
    repeats: int,
    device: torch.device,
) -> float:
    """Samples per second of the fastest of `repeats` timed epochs, after one untimed."""
    times = []
    for k in range(repeats + 1):
        sync(device)
        t0 = time.perf_counter()
        seen = 0
        for xb, _ in epoch():
            seen += xb.shape[0]
        sync(device)
        if k:
            times.append(time.perf_counter() - t0)
        assert seen == n
    return n / min(times)


def measure(case: Case, args: argparse.Namespace, device: torch.device) -> list[tuple[str, float]]:
    """(loader, samples/s) for the on-device batches and each DataLoader."""
    g = torch.Generator().manual_seed(args.seed)
    x = torch.randn((args.samples, *case.shape), generator=g)
    y = torch.randint(0, 10, (args.samples,), generator=g)
    rows: list[tuple[str, float]] = []

    xd, yd = x.to(device), y.to(device)
    gen = torch.Generator().manual_seed(args.seed)

    def on_device() -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        return batches(xd, yd, args.batch, shuffle=True, generator=gen, augment=case.augment)

    rows.append(("on-device `batches`", best_rate(on_device, args.samples, args.repeats, device)))

    cuda = device.type == "cuda"
    for workers in args.workers:
        loader = DataLoader(
            HostAugmented(x, y, case.augment),
            batch_size=args.batch,
            shuffle=True,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=cuda,
            generator=torch.Generator().manual_seed(args.seed),
        )

        def from_host(
            loader: DataLoader[tuple[torch.Tensor, ...]] = loader,
        ) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
            for xb, yb in loader:
                yield xb.to(device, non_blocking=cuda), yb.to(device, non_blocking=cuda)

        label = f"DataLoader, {workers} worker{'s' if workers != 1 else ''}"
        rows.append((label, best_rate(from_host, args.samples, args.repeats, device)))
    return rows


def table(results: list[tuple[Case, list[tuple[str, float]]]]) -> str:
    lines = [
        "| data | augmentation | loader | samples/s | vs on-device |",
        "| --- | --- | --- | --- | --- |",
    ]
    for case, rows in results:
        ref = rows[0][1]
        for label, rate in rows:
            vs = "1.00x (ref)" if label == rows[0][0] else f"{rate / ref:.2f}x"
            lines.append(f"| {case.name} | {case.describe()} | {label} | {rate:,.0f} | {vs} |")
    return "\n".join(lines)


def machine(device: torch.device) -> str:
    name = str(device)
    if device.type == "cuda":
        name += f" ({torch.cuda.get_device_name(device)})"
    threads = torch.get_num_threads()
    return (
        f"device {name}, {threads} torch thread{'s' if threads != 1 else ''}, Python "
        f"{platform.python_version()}, torch {torch.__version__}"
    )


# -- docs/benchmarks.md ---------------------------------------------------------------------


def marker(name: str) -> tuple[str, str]:
    """The comments around the part of a section that a benchmark script rewrites."""
    return f"<!-- {name}: start -->", f"<!-- {name}: end -->"


def write_section(title: str, name: str, body: str, intro: str, path: Path = DOCS) -> None:
    """Put `body` between the markers of `name` in the `## title` section of `path`.

    Only the marked part changes; a missing section is appended, `intro` first, and a section
    without the markers gets them at its end.
    """
    start, end = marker(name)
    block = f"{start}\n{body.strip()}\n{end}"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    heading = f"## {title}"
    at = text.find(f"\n{heading}\n")
    if at < 0:
        text = text.rstrip("\n") + f"\n\n{heading}\n\n{intro.strip()}\n\n{block}\n"
    else:
        nxt = text.find("\n## ", at + 1)
        nxt = len(text) if nxt < 0 else nxt
        section = text[at:nxt]
        i, j = section.find(start), section.find(end)
        if i >= 0 and j > i:
            section = section[:i] + block + section[j + len(end) :]
        else:
            section = section.rstrip("\n") + f"\n\n{block}\n"
            if nxt < len(text):
                section += "\n"
        text = text[:at] + section + text[nxt:]
    path.write_text(text)


INTRO = """\
    python benchmarks/bench_loader.py

The trial engine's batching on the device (`runners.engine.data.batches`) against a DataLoader that
augments sample by sample on the host. See the script's docstring for what is timed.
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=10_000, help="synthetic images per epoch")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--workers", default="0,1", help="DataLoader worker counts to run")
    ap.add_argument("--repeats", type=int, default=3, help="timed epochs per loader")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true", help="tiny run (seconds), for the tests")
    ap.add_argument("--write-docs", action="store_true", help=f"write the table into {DOCS.name}")
    args = ap.parse_args(argv)
    args.workers = [int(w) for w in str(args.workers).split(",") if w != ""]
    if args.smoke:
        args.samples, args.batch, args.repeats = 96, 32, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    header = (
        f"{machine(device)}; {args.samples} samples, batch {args.batch}, best of "
        f"{args.repeats} epochs{' (smoke)' if args.smoke else ''}"
    )
    print(header)
    results = [(case, measure(case, args, device)) for case in CASES]
    out = table(results)
    print()
    print(out)
    if args.write_docs:
        write_section(SECTION, "bench_loader", f"{header}:\n\n{out}", INTRO)
        print(f"\nwritten to {DOCS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

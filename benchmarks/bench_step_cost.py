"""The training-step cost of each strategy against `full_precision` on the same model.

    python benchmarks/bench_step_cost.py --models mlp,lenet --threads 1
    python benchmarks/bench_step_cost.py --models resnet20 --input 1,16,16 --steps 5 --rounds 3

Every strategy is built the way a trial builds it (`runners.engine.trial.resolve`, `build_model`,
`strategy.prepare`, `strategy.param_groups`, `build_optimizer`), and one step is what the
trial loop does per batch: the learning-rate factor, forward, cross-entropy,
`strategy.regularizer`, backward, gradient clipping when configured, the optimizer step,
`strategy.on_step` and the epoch's running loss and accuracy. After each round of `--steps`
steps a strategy also runs its epoch end (`on_epoch_end`, and a fresh optimizer when it asks
for one); that time is spread over the steps of an epoch (`--train-size / --batch`, mnist-5k's
3600 training images by default) and added to the median step time. Evaluation and deploy at
an epoch end are the runner's, not a step's, and are not timed.

Same model: a strategy's recipe asks models for options (BatchNorm, no biases, tanh), and a
trial builds its model with them; each strategy is therefore compared with a `full_precision`
run of the model built with the same options. Same optimizer: every run, float or not, uses
`full_precision`'s recipe optimizer (Adam, lr 1e-3, no clipping) and schedule at batch 128;
`--own-optimizer` adds a row per strategy with its own recipe optimizer (and gradient
clipping), still compared with the float run on Adam.

Runs interleave: a warm-up, then `--rounds` rounds in which every run takes `--steps` timed
steps in turn, so that machine noise falls on all of them alike. The input is synthetic, of
the dataset's shape (`--input`, MNIST's 1,28,28 by default), a few fixed batches on the
device. `weight_fixing` runs its fixing phase: no float pre-training and one fixing step at
every epoch end (`pretrain_epochs=0, epochs_per_step=1`), so its regularizer is active and
each round's epoch end is a fixing step.

Memory: on CUDA the peak allocated during a run's steps and epoch end
(torch.cuda.max_memory_allocated, activations included); on CPU, where tracemalloc does not
see torch's allocations, the bytes of the model's parameters, buffers and gradients and the
optimizer's state after a round's last step, before the epoch end (activations, about equal
across the runs of one model, and tensors a strategy caches outside its buffers are not
counted).

Prints a Markdown table: per model and run the median step time, the epoch-end time, the
amortized step time, its ratio to the float run of the same model, the project's target and the
memory of the run (see Memory; the header says which is measured).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import strategies
from runners.engine.models import build_model, model_options
from runners.engine.trial import ResolvedTrial, build_optimizer, lr_factor, pick_device, resolve
from schemas.trial import OptimizerConfig, TrialConfig
from strategies.base import Progress, Strategy
from strategies.full_precision import FullPrecision

# The project's targets: amortized step time over the float run's, per model kind.
CONV_TARGET = 1.1
MLP_TARGETS: dict[str, float] = {
    "wrn_1bit": 1.2,
    "bit_regularization": 1.3,
    "weight_fixing": 1.3,
    "exact_binary": 1.6,
    "bit_learning": 2.0,
}
CONV_MODELS = ("lenet", "resnet20", "conv6", "wrn")

# Params that put a strategy into the phase whose cost is measured.
BENCH_PARAMS: dict[str, dict[str, Any]] = {
    "weight_fixing": {"pretrain_epochs": 0, "epochs_per_step": 1},
}
EPOCHS = 10  # the trial length the schedules see
NUM_CLASSES = 10


def target(model: str, strategy: str) -> float | None:
    if strategy == "full_precision":
        return None
    if model in CONV_MODELS:
        return CONV_TARGET
    return MLP_TARGETS.get(strategy)


@dataclass
class Run:
    """One strategy on one model, trained step by step as `runners.engine.trial.train` does."""

    label: str
    model_name: str
    strategy_name: str
    trial: ResolvedTrial
    strategy: Strategy
    model: nn.Module
    optimizer: torch.optim.Optimizer
    progress: Progress
    device: torch.device
    reference: str = ""  # label of the float run of the same model
    step_times: list[float] = field(default_factory=list)
    epoch_times: list[float] = field(default_factory=list)
    peak_bytes: int = 0
    loss_sum: torch.Tensor | None = None
    correct: torch.Tensor | None = None
    seen: int = 0
    i: int = 0  # step within the epoch

    def step(self, xb: torch.Tensor, yb: torch.Tensor) -> None:
        # The body of the batch loop of runners.engine.trial.train.
        cfg = self.trial.config
        assert cfg.optimizer and cfg.schedule
        spe = self.progress.steps_per_epoch
        base_lr = cfg.optimizer.lr
        factor = lr_factor(
            cfg.schedule,
            epoch_float=self.progress.epoch + self.i / spe,
            step=self.progress.step,
            epochs=cfg.epochs,
            base_lr=base_lr,
        )
        for g in self.optimizer.param_groups:
            g["lr"] = g["base_lr"] * factor
        out = self.model(xb)
        loss = F.cross_entropy(out, yb)
        reg = self.strategy.regularizer(self.model, loss)
        total = loss if reg is None else loss + reg
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        if cfg.optimizer.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optimizer.grad_clip)
        self.optimizer.step()
        self.progress.step += 1
        self.progress.lr = base_lr * factor
        self.strategy.on_step(self.model, self.progress)
        assert self.loss_sum is not None and self.correct is not None
        self.loss_sum += loss.detach() * yb.shape[0]
        self.correct += (out.argmax(1) == yb).sum()
        self.seen += yb.shape[0]
        self.i += 1

    def start_epoch(self) -> None:
        self.model.train()
        self.loss_sum = torch.zeros((), device=self.device)
        self.correct = torch.zeros((), device=self.device, dtype=torch.long)
        self.seen = 0
        self.i = 0

    def end_epoch(self) -> None:
        # The epoch end of runners.engine.trial.train, up to (not including) deploy and evaluation.
        assert self.loss_sum is not None and self.trial.config.optimizer
        self.progress.loss = float(self.loss_sum) / max(1, self.seen)
        if self.strategy.on_epoch_end(self.model, self.progress):
            self.optimizer = build_optimizer(
                self.strategy.param_groups(self.model), self.trial.config.optimizer
            )
        self.progress.epoch = min(self.progress.epoch + 1, self.progress.epochs - 1)
        self.start_epoch()

    def state_bytes(self) -> int:
        """Bytes of parameters, buffers, gradients and optimizer state."""
        n = sum(t.numel() * t.element_size() for t in self.model.parameters())
        n += sum(t.numel() * t.element_size() for t in self.model.buffers())
        n += sum(
            t.grad.numel() * t.grad.element_size()
            for t in self.model.parameters()
            if t.grad is not None
        )
        for state in self.optimizer.state.values():
            for v in state.values():
                if isinstance(v, torch.Tensor):
                    n += v.numel() * v.element_size()
        return n


def build_run(
    label: str,
    model_name: str,
    strategy_name: str,
    *,
    input_shape: tuple[int, ...],
    batch: int,
    steps_per_epoch: int,
    device: torch.device,
    model_opts: dict[str, Any],
    optimizer: OptimizerConfig | None,
    seed: int,
) -> Run:
    """A run built as `runners.engine.trial.train` builds a trial (no dataset loaded)."""
    trial = resolve(
        TrialConfig(
            strategy=strategy_name,
            model=model_name,
            model_options=model_opts,
            params=BENCH_PARAMS.get(strategy_name, {}),
            optimizer=optimizer,
            schedule=FullPrecision.recipe.schedule,
            batch_size=batch,
            epochs=EPOCHS,
            seed=seed,
            device=str(device),
        )
    )
    cfg = trial.config
    assert cfg.optimizer is not None
    torch.manual_seed(seed)
    model = build_model(
        cfg.model,
        input_shape,
        NUM_CLASSES,
        cfg.model_options,
        defaults=trial.strategy.recipe.model_options,
    ).to(device)
    strategy = trial.strategy(trial.params)
    model = strategy.prepare(model).to(device)
    opt = build_optimizer(strategy.param_groups(model), cfg.optimizer)
    progress = Progress(epoch=0, epochs=EPOCHS, step=0, steps_per_epoch=steps_per_epoch)
    run = Run(
        label=label,
        model_name=model_name,
        strategy_name=strategy_name,
        trial=trial,
        strategy=strategy,
        model=model,
        optimizer=opt,
        progress=progress,
        device=device,
    )
    run.start_epoch()
    return run


def recipe_options(model_name: str, strategy_name: str) -> dict[str, Any]:
    """The options a trial of `strategy_name` builds `model_name` with (its recipe's)."""
    fields = model_options(model_name).model_fields
    recipe = strategies.get_strategy(strategy_name).recipe.model_options
    return {k: v for k, v in sorted(recipe.items()) if k in fields}


def build_runs(
    model_name: str, names: list[str], args: argparse.Namespace, device: torch.device
) -> list[Run]:
    """The float runs (one per distinct set of model options) and the strategies' runs."""
    shape = tuple(int(d) for d in args.input.split(","))
    spe = max(1, math.ceil(args.train_size / args.batch))
    common: dict[str, Any] = dict(
        input_shape=shape, batch=args.batch, steps_per_epoch=spe, device=device, seed=args.seed
    )
    float_opt = FullPrecision.recipe.optimizer
    floats: dict[str, Run] = {}
    runs: list[Run] = []

    def reference(opts: dict[str, Any]) -> Run:
        key = ",".join(f"{k}={v}" for k, v in opts.items())
        if key not in floats:
            label = "full_precision" + (f" [{key}]" if key else "")
            floats[key] = build_run(
                label,
                model_name,
                "full_precision",
                model_opts=opts,
                optimizer=float_opt,
                **common,
            )
            floats[key].reference = label
            runs.append(floats[key])
        return floats[key]

    reference({})
    for name in names:
        if name == "full_precision":
            continue
        opts = recipe_options(model_name, name)
        ref = reference(opts)
        variants: list[tuple[str, OptimizerConfig | None]] = [(name, float_opt)]
        if args.own_optimizer:
            variants.append((f"{name} (own optimizer)", None))
        for label, opt in variants:
            run = build_run(label, model_name, name, model_opts=opts, optimizer=opt, **common)
            run.reference = ref.label
            runs.append(run)
    return runs


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(runs: list[Run], args: argparse.Namespace, device: torch.device) -> None:
    shape = tuple(int(d) for d in args.input.split(","))
    g = torch.Generator().manual_seed(args.seed)
    data = [
        (
            torch.randn((args.batch, *shape), generator=g).to(device),
            torch.randint(0, NUM_CLASSES, (args.batch,), generator=g).to(device),
        )
        for _ in range(4)
    ]
    for run in runs:
        for k in range(args.warmup):
            run.step(*data[k % len(data)])
        sync(device)
    for _ in range(args.rounds):
        for run in runs:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            for k in range(args.steps):
                xb, yb = data[k % len(data)]
                t0 = time.perf_counter()
                run.step(xb, yb)
                sync(device)
                run.step_times.append(time.perf_counter() - t0)
            if device.type != "cuda":  # before the epoch end may build a fresh optimizer
                run.peak_bytes = max(run.peak_bytes, run.state_bytes())
            t0 = time.perf_counter()
            run.end_epoch()
            sync(device)
            run.epoch_times.append(time.perf_counter() - t0)
            if device.type == "cuda":
                run.peak_bytes = max(run.peak_bytes, torch.cuda.max_memory_allocated(device))


def amortized(run: Run) -> float:
    """Median step time plus the mean epoch end spread over an epoch's steps (seconds)."""
    epoch = statistics.fmean(run.epoch_times) if run.epoch_times else 0.0
    return statistics.median(run.step_times) + epoch / run.progress.steps_per_epoch


def table(model_name: str, runs: list[Run], device: torch.device) -> str:
    by_label = {r.label: r for r in runs}
    mem = "peak CUDA MiB" if device.type == "cuda" else "params+buffers+grads+opt state MiB"
    lines = [
        f"| model | run | step ms (median) | epoch end ms | amortized ms | vs float | target "
        f"| met | {mem} |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for run in runs:
        ref = by_label[run.reference]
        ratio = amortized(run) / amortized(ref)
        tgt = None if run is ref else target(model_name, run.strategy_name)
        if "(own optimizer)" in run.label:
            tgt = None
        met = "" if tgt is None else ("yes" if ratio <= tgt else "no")
        epoch = statistics.fmean(run.epoch_times) if run.epoch_times else 0.0
        vs = "1.00x (ref)" if run is ref else f"{ratio:.2f}x"
        if run is not ref and ref.label != "full_precision":
            vs += f" of {ref.label.removeprefix('full_precision ')}"
        lines.append(
            f"| {model_name} | {run.label} | {statistics.median(run.step_times) * 1e3:.2f} "
            f"| {epoch * 1e3:.1f} | {amortized(run) * 1e3:.2f} | {vs} "
            f"| {'' if tgt is None else f'{tgt:.1f}x'} | {met} | {run.peak_bytes / 2**20:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="mlp,lenet", help="comma-separated model names")
    ap.add_argument(
        "--strategies", default="", help="comma-separated strategy names (default: all registered)"
    )
    ap.add_argument("--steps", type=int, default=20, help="timed steps per run and round")
    ap.add_argument("--rounds", type=int, default=5, help="round-robin rounds (epoch ends)")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps per run first")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--input", default="1,28,28", help="input shape C,H,W (mnist-5k's default)")
    ap.add_argument(
        "--train-size", type=int, default=3600, help="training images per epoch (mnist-5k: 3600)"
    )
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--own-optimizer",
        action="store_true",
        help="add a row per strategy trained with its own recipe optimizer",
    )
    ap.add_argument("--smoke", action="store_true", help="tiny run (seconds), for the tests")
    args = ap.parse_args(argv)
    if args.smoke:
        args.steps, args.rounds, args.warmup, args.batch, args.train_size = 3, 1, 1, 8, 32
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    names = [s for s in args.strategies.split(",") if s] or list(strategies.list_strategies())
    print(
        f"device {device}, {torch.get_num_threads()} threads, batch {args.batch}, "
        f"input {args.input}, {args.rounds} rounds x {args.steps} steps, "
        f"{math.ceil(args.train_size / args.batch)} steps per epoch, optimizer "
        f"{FullPrecision.recipe.optimizer.name} lr {FullPrecision.recipe.optimizer.lr:g} for all"
    )
    for model_name in [m for m in args.models.split(",") if m]:
        runs = build_runs(model_name, names, args, device)
        measure(runs, args, device)
        print()
        print(table(model_name, runs, device))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

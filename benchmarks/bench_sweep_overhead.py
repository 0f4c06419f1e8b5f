"""What a bitsweep sweep costs beside a plain in-process Optuna loop doing the same trials.

Both train the same trials with the same engine on the same machine: one strategy on
`digits`/`mlp`, E epochs each, TPE choosing the learning rate, and no others (the sweep's
confirmation is off). The plain loop runs them one after another in this process with an
in-memory study and no records. bitsweep runs them as
`bitsweep sweep SPEC`, a fresh process from command start to exit, as a user runs it: local
Ray, an Optuna study and an MLflow store in SQLite, a checkpoint per epoch, the deployed
weights, the leaderboard and the Pareto plot.

Reported, side by side in one run:
- wall time of each for the large trial count, and the speed-up;
- bitsweep's fixed cost and marginal cost per trial, from sweeps of a small and a large trial
  count in the same (already created) store: marginal = (T_large - T_small) / (large - small),
  fixed = T_small - small x marginal; and the first sweep into a new store, which also creates
  the MLflow and Optuna databases;
- the share of bitsweep's wall time that trials spent training (their `train_seconds` summed,
  over wall time x the trials that ran at once).

    python benchmarks/bench_sweep_overhead.py                      # 4 and 16 trials, 1 epoch
    python benchmarks/bench_sweep_overhead.py --small 4 --large 16 --epochs 3
    python benchmarks/bench_sweep_overhead.py --smoke              # seconds: for the tests
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def plain_optuna(strategy: str, trials: int, epochs: int, seed: int) -> tuple[float, float]:
    """(wall seconds, seconds inside the trials) of an in-process Optuna loop."""
    import optuna

    from runners.engine.data import load_dataset
    from runners.engine.trial import run_trial
    from schemas.trial import TrialConfig

    t0 = time.perf_counter()
    data = load_dataset("digits")
    inside = 0.0

    def objective(trial: optuna.Trial) -> float:
        nonlocal inside
        lr = trial.suggest_float("lr", 1e-4, 3e-2, log=True)
        t = time.perf_counter()
        result = run_trial(
            TrialConfig(strategy=strategy, params={"lr": lr}, epochs=epochs, seed=seed),
            dataset=data,
        )
        inside += time.perf_counter() - t
        return result.test_accuracy

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    study.optimize(objective, n_trials=trials)
    return time.perf_counter() - t0, inside


def sweep_command(
    home: Path, name: str, strategy: str, trials: int, epochs: int, seed: int
) -> dict[str, float]:
    """`bitsweep sweep` of `trials` trials in a fresh process: wall seconds from command start
    to exit, and what its trials spent training."""
    spec = {
        "name": name,
        "dataset": "digits",
        "model": "mlp",
        "epochs": epochs,
        "trials_per_strategy": trials,
        "seed": seed,
        # The plain loop trains the search's trials alone: so does the sweep (no confirmation
        # seeds after the search).
        "confirmation": {"enabled": False},
        "strategies": [
            {"name": strategy, "search": {"lr": [1e-4, 3e-2]}, "search_defaults": False}
        ],
    }
    path = home / f"{name}.json"
    path.write_text(json.dumps(spec))
    env = {**os.environ, "BITSWEEP_HOME": str(home)}
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "service.cli", "sweep", str(path), "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"bitsweep sweep failed ({done.returncode}):\n{done.stderr[-3000:]}")
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    return {"wall": wall, "completed": summary["completed"], **_trial_times(summary)}


def _trial_times(summary: dict) -> dict[str, float]:
    """Training seconds of the sweep's trials, and how many ran at once, from its records."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(summary["tracking_uri"])
    exp = client.get_experiment_by_name(summary["experiment"])
    assert exp is not None
    runs = client.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`bitsweep.sweep_id` = '{summary['sweep_id']}' "
        "and tags.`bitsweep.kind` = 'trial'",
    )
    spans = sorted((r.info.start_time, r.info.end_time or r.info.start_time) for r in runs)
    at_once = max((sum(1 for s, e in spans if s <= t < e) for t, _ in spans), default=1)
    return {
        "train": sum(r.data.metrics.get("train_seconds", 0.0) for r in runs),
        "at_once": float(max(at_once, 1)),
    }


def measure(
    strategy: str, small: int, large: int, epochs: int, seed: int, *, new_store: bool = True
) -> dict[str, float]:
    """The numbers of the table. Without `new_store`, the first sweep into the new store is the
    small one (three sweeps become two)."""
    plain_wall, plain_inside = plain_optuna(strategy, large, epochs, seed)
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        first = sweep_command(home, "first", strategy, small, epochs, seed)
        lo = sweep_command(home, "small", strategy, small, epochs, seed) if new_store else first
        hi = sweep_command(home, "large", strategy, large, epochs, seed)
    marginal = (hi["wall"] - lo["wall"]) / (large - small)
    return {
        "plain": plain_wall,
        "plain_inside": plain_inside,
        "first": first["wall"],
        "small": lo["wall"],
        "large": hi["wall"],
        "completed": hi["completed"],
        "speedup": plain_wall / hi["wall"],
        "marginal": marginal,
        "fixed": lo["wall"] - small * marginal,
        "training_share": hi["train"] / (hi["wall"] * hi["at_once"]),
        "at_once": hi["at_once"],
    }


def table(strategy: str, small: int, large: int, epochs: int, r: dict[str, float]) -> str:
    head = (
        "| run | plain Optuna | bitsweep | speed-up | fixed cost | marginal per trial "
        f"| first sweep ({small} trials, new store) | training share |"
    )
    row = (
        f"| {strategy}, {large} trials x {epochs} epoch(s) | {r['plain']:.3g} s "
        f"| {r['large']:.3g} s | {r['speedup']:.2f}x | {r['fixed']:.1f} s "
        f"| {r['marginal']:.2f} s | {r['first']:.1f} s "
        f"| {100 * r['training_share']:.0f}% ({r['at_once']:.0f} at once) |"
    )
    return "\n".join([head, "| " + " | ".join(["---"] * 8) + " |", row])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--strategy", default="full_precision")
    ap.add_argument("--small", type=int, default=4, help="trials of the small sweep")
    ap.add_argument("--large", type=int, default=16, help="trials of the large sweep")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--smoke", action="store_true", help="1 and 2 trials, two sweeps: for the tests"
    )
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = ap.parse_args(argv)
    if args.smoke:
        args.small, args.large, args.epochs = 1, 2, 1
    if not 0 < args.small < args.large:
        ap.error("--small must be at least 1 and below --large")
    r = measure(
        args.strategy, args.small, args.large, args.epochs, args.seed, new_store=not args.smoke
    )
    print(table(args.strategy, args.small, args.large, args.epochs, r))
    if args.json:
        args.json.write_text(json.dumps(r, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""What a bitsweep sweep costs beside a plain in-process Optuna loop doing the same trials.

Both run the same trial engine on the same machine: N trials of one strategy, E epochs each,
Optuna's TPE choosing the learning rate. The plain loop runs trials one after another in this
process with an in-memory study; bitsweep runs them as Ray Tune trials (local Ray, as many at
once as there are CPUs), with an Optuna RDB study and every trial logged to MLflow (SQLite).

Reports wall time of each, the speed-up, and the per-trial overhead of bitsweep:
(bitsweep wall time x concurrency - the trials' own training and evaluation time) / N.

    python benchmarks/bench_sweep_overhead.py --trials 8 --epochs 5
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import optuna


def plain_optuna(strategy: str, trials: int, epochs: int, seed: int) -> tuple[float, float]:
    """(wall seconds, seconds inside run_trial) of an in-process Optuna loop."""
    from runners.data import load_dataset
    from runners.trial import run_trial
    from schemas.trial import TrialConfig

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
    t0 = time.perf_counter()
    study.optimize(objective, n_trials=trials)
    return time.perf_counter() - t0, inside


def bitsweep_sweep(strategy: str, trials: int, epochs: int, seed: int, home: Path) -> dict:
    """Wall seconds of a bitsweep sweep with Ray start-up and without it."""
    import ray

    from runners.sweep import plan_sweep, run_sweep
    from schemas.sweep import SweepSpec

    spec = SweepSpec.model_validate(
        {
            "name": "bench",
            "epochs": epochs,
            "trials_per_strategy": trials,
            "seed": seed,
            "export_weights": True,
            "strategies": [
                {"name": strategy, "search": {"lr": [1e-4, 3e-2]}, "search_defaults": False}
            ],
        }
    )
    t0 = time.perf_counter()
    ray.init(include_dashboard=False, log_to_driver=False)
    t1 = time.perf_counter()
    summary = run_sweep(plan_sweep(spec, home=home))
    t2 = time.perf_counter()
    cpus = int(ray.cluster_resources().get("CPU", 1))
    ray.shutdown()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(summary.tracking_uri)
    runs = client.search_runs(
        [client.get_experiment_by_name(summary.experiment).experiment_id],
        filter_string=f"tags.`bitsweep.sweep_id` = '{summary.sweep_id}' "
        "and tags.`bitsweep.kind` = 'trial'",
    )
    return {
        "ray_start_seconds": t1 - t0,
        "sweep_seconds": t2 - t1,
        "completed": summary.completed,
        "concurrency": cpus,
        "trial_train_seconds": sum(r.data.metrics.get("train_seconds", 0.0) for r in runs),
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--strategy", default="full_precision")
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="also write the numbers here (JSON)")
    args = ap.parse_args()

    plain_wall, plain_inside = plain_optuna(args.strategy, args.trials, args.epochs, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["BITSWEEP_HOME"] = tmp
        swept = bitsweep_sweep(args.strategy, args.trials, args.epochs, args.seed, Path(tmp))
    n = args.trials
    report = {
        "strategy": args.strategy,
        "trials": n,
        "epochs": args.epochs,
        "cpus": os.cpu_count(),
        "plain_optuna_seconds": plain_wall,
        "plain_seconds_per_trial": plain_wall / n,
        "plain_run_trial_seconds": plain_inside,
        **swept,
        "speedup_excluding_ray_start": plain_wall / swept["sweep_seconds"],
        "speedup_including_ray_start": plain_wall
        / (swept["sweep_seconds"] + swept["ray_start_seconds"]),
        "bitsweep_overhead_seconds_per_trial": (
            swept["sweep_seconds"] * swept["concurrency"] - plain_inside
        )
        / n,
    }
    for k, v in report.items():
        print(f"{k:40s} {v:.3f}" if isinstance(v, float) else f"{k:40s} {v}")
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

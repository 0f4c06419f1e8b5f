"""What logging a trial's deployed weights as an MLflow logged model costs a sweep.

    python benchmarks/bench_logged_model.py [--models mlp,lenet,wrn] [--repeats 5] [--smoke]

For each model, one trial of `wrn_1bit` is trained on digits for one epoch (its packed file
written as a sweep worker writes it), then the two things a sweep does with that file once the
trial ends are timed on a SQLite store: logging it as a run artifact (what a sweep did before),
and logging it as a logged model (`runners.sweep.logged_model.log_deployed_model`: the pyfunc
saved with its signature, its artifacts copied, the model finalized and linked to the run).
Seconds are the median of `--repeats` after one warm-up (the first call also imports MLflow's
model code once per process: shown apart). The trial's own training time is shown beside.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _median(f: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="mlp,lenet,wrn")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--smoke", action="store_true", help="one model, two repeats")
    args = ap.parse_args(argv)
    models = ["mlp"] if args.smoke else args.models.split(",")
    repeats = 2 if args.smoke else args.repeats

    from mlflow.tracking import MlflowClient

    from runners.engine.data import load_dataset
    from runners.engine.export import save_trained
    from runners.engine.trial import train
    from runners.sweep.logged_model import log_deployed_model
    from schemas.trial import TrialConfig

    data = load_dataset("digits")
    print("| model | weights file | trial (1 epoch) | run artifact | logged model | first call |")
    print("| --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        client = MlflowClient(f"sqlite:///{folder}/mlflow.db")
        exp = client.create_experiment("bench", artifact_location=str(folder / "artifacts"))
        for model in models:
            config = TrialConfig(strategy="wrn_1bit", model=model, epochs=1)
            t0 = time.perf_counter()
            trained = train(config, dataset=data)
            trial_s = time.perf_counter() - t0
            weights = folder / f"{model}.safetensors"
            save_trained(weights, trained, data, packed=True)
            run_id = client.create_run(exp).info.run_id
            t0 = time.perf_counter()
            log_deployed_model(client, exp, run_id, weights, name=model)
            first = time.perf_counter() - t0
            artifact = _median(partial(client.log_artifact, run_id, str(weights)), repeats)
            logged = _median(
                partial(log_deployed_model, client, exp, run_id, weights, name=model), repeats
            )
            print(
                f"| {model} | {weights.stat().st_size:,} B | {trial_s:.2f} s | "
                f"{artifact * 1e3:.0f} ms | {logged * 1e3:.0f} ms | {first * 1e3:.0f} ms |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""How honest the board is: each strategy's reported accuracy against an independent retrain of
the config it reports, before (selection on test, one seed) and after (selection on
validation, confirmed over fresh seeds).

    python benchmarks/bench_selection_bias.py [--dataset mnist-5k] [--trials 30] [--epochs 10]
        [--strategies full_precision wrn_1bit bit_learning] [--retrain-seeds 5]
        [--confirm-seeds 3] [--jobs 2] [--home DIR] [--doc docs/benchmarks.md] [--smoke]

One real sweep (local Ray through `run_sweep`, Optuna search, MLflow records in a temporary
BITSWEEP_HOME unless `--home`) of each strategy on built-in data, with the confirmation phase
on. Then, per strategy:

- **before** (what bitsweep reported up to 0.1): the search trial with the best *test*
  accuracy among the sweep's finished search runs (`bitsweep.phase = search`; ties broken by
  validation accuracy, then run id), and its one seed's test accuracy as the reported number;
- **after** (the board): the row of `query_leaderboard(..., sweep_id=...)`, the config
  selected on validation and its mean test accuracy over the confirmation's fresh seeds, with
  its 95% Student-t interval;
- **independent**: both configs (read back from each run's `result.json`) trained again with
  `run_trial` on `--retrain-seeds` further seeds, `seed + 20000 + k`, disjoint from the
  search's (`seed` .. `seed + 9999`) and the confirmation's (`seed + 10000` ..), `--jobs`
  processes of one torch thread each (as a sweep's trial of one CPU runs).

Reported: per strategy, each side's number against its independent mean ± std and the gap
(reported minus independent), and whether the independent mean of the board's config lies in
the board's 95% interval; then the ranking agreement (Kendall's tau and pairs ordered alike)
of each side's order with the independent order of its configs, and whether every pair the
board orders, where the lower row is not tied with row 1, is ordered the same way by the
independent means. With `--doc` the "Selection bias" section of that markdown file is
written (replaced). The targets are reported as measured, met or not.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import tempfile
import textwrap
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere in the checkout
    sys.path.insert(0, str(ROOT))

SECTION = "## Selection bias"
STRATEGIES = ("full_precision", "wrn_1bit", "bit_learning")
RETRAIN_OFFSET = 20_000  # retrain seeds: seed + 20000 + k (search: +0..9999; confirm: +10000..)
SMOKE = {"dataset": "digits", "trials": 2, "epochs": 2, "retrain_seeds": 2}


# -- the sweep -------------------------------------------------------------------------------


def run_the_sweep(args: argparse.Namespace, home: Path) -> tuple[Any, Any, float]:
    """Run one sweep of `args` into `home`; (plan, summary, seconds)."""
    os.environ.pop("RAY_ADDRESS", None)  # a shell's cluster must not steer the benchmark
    os.environ["BITSWEEP_HOME"] = str(home)
    from runners.sweep.run import plan_sweep, run_sweep
    from schemas.sweep import Confirmation, StrategySpec, SweepSpec

    spec = SweepSpec(
        name="selection-bias",
        dataset=args.dataset,
        model=args.model,
        epochs=args.epochs,
        seed=args.seed,
        trials_per_strategy=args.trials,
        strategies=[StrategySpec(name=s) for s in args.strategies],
        confirmation=Confirmation(enabled=True, seeds=args.confirm_seeds),
        export_weights=False,
    )
    plan = plan_sweep(spec, home=home)

    def on_event(event: Any) -> None:
        print(f"{time.strftime('%H:%M:%S')} {event.line()}", file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    summary = run_sweep(plan, on_event=on_event)
    return plan, summary, time.perf_counter() - t0


# -- what each side reports ------------------------------------------------------------------


@dataclass
class Side:
    """One strategy's reported number on one side (before / after) and its config's retrain."""

    run_id: str
    trial_id: str
    reported: float
    low: float | None = None  # the board's 95% interval (after only)
    high: float | None = None
    n: int = 1  # seeds the reported number is the mean of
    independent: list[float] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.independent)

    @property
    def std(self) -> float:
        return statistics.stdev(self.independent) if len(self.independent) > 1 else 0.0

    @property
    def gap(self) -> float:
        return self.reported - self.mean

    @property
    def inside(self) -> bool | None:
        if self.low is None or self.high is None:
            return None
        return self.low <= self.mean <= self.high


@dataclass
class Strategy:
    name: str
    before: Side
    after: Side
    rank: int  # the board's
    tied: bool | None  # the board's: p >= 0.05 against row 1 (None: row 1)
    p_value: float | None
    status: str


def search_runs(client: Any, experiment_id: str, sweep_id: str) -> list[Any]:
    """The sweep's finished search-phase trial runs (MLflow's public search)."""
    from schemas.names import Phase, Tag, tag_filter

    flt = " and ".join(
        (
            tag_filter(Tag.KIND, "trial"),
            tag_filter(Tag.SWEEP_ID, sweep_id),
            "attributes.status = 'FINISHED'",
        )
    )
    runs: list[Any] = []
    token = None
    while True:
        page = client.search_runs(
            [experiment_id], filter_string=flt, max_results=1000, page_token=token
        )
        runs += list(page)
        token = page.token
        if not token:
            break
    return [r for r in runs if r.data.tags.get(Tag.PHASE, Phase.SEARCH) == Phase.SEARCH]


def read_sides(plan: Any, sweep_id: str) -> list[Strategy]:
    """Each strategy's before (best test among search runs) and after (board row), in the
    board's order."""
    from mlflow.tracking import MlflowClient

    from runners.board import query_leaderboard
    from schemas.names import Tag

    board = query_leaderboard(plan.tracking_uri, sweep_id=sweep_id)[0]
    client = MlflowClient(tracking_uri=plan.tracking_uri)
    runs = search_runs(client, board.experiment_id, sweep_id)
    out = []
    for row in board.rows:
        mine = [
            r
            for r in runs
            if r.data.tags.get(Tag.STRATEGY) == row.strategy
            and _finite(r.data.metrics.get("test_accuracy"))
        ]

        def key(r: Any) -> tuple[float, float, str]:
            m = r.data.metrics
            val = m.get("best_val_accuracy")
            return (-m["test_accuracy"], -(val if _finite(val) else -math.inf), r.info.run_id)

        best = min(mine, key=key)
        test = row.test
        assert test is not None, f"{row.strategy}: the board has no test accuracy"
        out.append(
            Strategy(
                name=row.strategy,
                before=Side(
                    best.info.run_id,
                    best.data.tags.get(Tag.TRIAL_ID, best.info.run_id),
                    best.data.metrics["test_accuracy"],
                ),
                after=Side(row.run_id, row.trial_id, test.mean, test.low, test.high, test.n),
                rank=row.rank,
                tied=row.tied,
                p_value=row.p_value,
                status=row.status,
            )
        )
    return out


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


# -- the independent retrain -----------------------------------------------------------------

_DATA: dict[tuple[str, float], Any] = {}


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def _retrain(job: tuple[str, str, int]) -> tuple[str, int, float, float]:
    """(run id, seed, test accuracy, seconds) of one retrain of the config in `job`."""
    run_id, config_json, seed = job
    from runners.engine.data import load_dataset
    from runners.engine.trial import run_trial
    from schemas.trial import TrialConfig

    config = TrialConfig.model_validate_json(config_json)
    config = config.model_copy(update={"seed": seed, "device": "cpu"})
    key = (config.dataset, config.val_fraction)
    if key not in _DATA:
        _DATA[key] = load_dataset(config.dataset, val_fraction=config.val_fraction)
    t0 = time.perf_counter()
    result = run_trial(config, dataset=_DATA[key])
    return run_id, seed, result.test_accuracy, time.perf_counter() - t0


def retrain(
    plan: Any, rows: list[Strategy], seeds: list[int], jobs: int
) -> tuple[float, list[tuple[str, float, float]]]:
    """Train every before and after config on `seeds`, filling each side's `independent`;
    a config that is both is trained once. Each config is also trained once at its own search
    seed, to check that the retrain rebuilds the config the sweep trained. Returns the seconds
    taken and (run id, recorded, retrained) test accuracy at the search seed, per config."""
    from mlflow.tracking import MlflowClient

    from runners.sweep.records import recorded_result

    client = MlflowClient(tracking_uri=plan.tracking_uri)
    configs, recorded = {}, {}
    for r in rows:
        for side in (r.before, r.after):
            if side.run_id not in configs:
                result = recorded_result(client, side.run_id)
                configs[side.run_id] = result.config.model_dump_json()
                recorded[side.run_id] = (result.config.seed, result.test_accuracy)
    work = [(rid, cfg, s) for rid, cfg in configs.items() for s in seeds]
    work += [(rid, cfg, recorded[rid][0]) for rid, cfg in configs.items()]
    found: dict[str, dict[int, float]] = {rid: {} for rid in configs}
    t0 = time.perf_counter()
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")  # no fork of a process that ran Ray and torch
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_init_worker) as pool:
        for rid, seed, acc, secs in pool.map(_retrain, work):
            found[rid][seed] = acc
            print(f"retrain {rid[:8]} seed {seed}: {acc:.4f} ({secs:.1f} s)", flush=True)
    for r in rows:
        for side in (r.before, r.after):
            side.independent = [found[side.run_id][s] for s in seeds]
    check = [(rid, recorded[rid][1], found[rid][recorded[rid][0]]) for rid in configs]
    return time.perf_counter() - t0, check


# -- the verdicts ----------------------------------------------------------------------------


@dataclass
class Ranking:
    order: list[str]  # the side's order (reported, best first)
    independent: list[str]  # by independent mean of the same configs, best first
    tau: float
    alike: int
    pairs: int


def ranking(rows: list[Strategy], side: str) -> Ranking:
    from scipy.stats import kendalltau

    sides = [(r.name, getattr(r, side)) for r in rows]
    if side == "before":
        order = [n for n, _ in sorted(sides, key=lambda x: (-x[1].reported, x[0]))]
    else:
        order = [r.name for r in sorted(rows, key=lambda r: r.rank)]
    mean = {n: s.mean for n, s in sides}
    reported = {n: s.reported for n, s in sides}
    indep = sorted(mean, key=lambda n: (-mean[n], n))
    alike = pairs = 0
    for i, a in enumerate(order):
        for b in order[i + 1 :]:
            pairs += 1
            alike += mean[a] >= mean[b]
    tau = (
        float(kendalltau([reported[n] for n in order], [mean[n] for n in order]).statistic)
        if len(order) > 1
        else math.nan
    )
    return Ranking(order, indep, tau, alike, pairs)


def untied_order(rows: list[Strategy]) -> tuple[bool, list[str], int]:
    """Whether every pair (i above j on the board) whose lower row j is not tied with row 1 is
    ordered alike by the independent means: (holds, the pairs that are not, pairs checked)."""
    board = sorted(rows, key=lambda r: r.rank)
    wrong, checked = [], 0
    for i, a in enumerate(board):
        for b in board[i + 1 :]:
            if b.tied is not False:
                continue
            checked += 1
            if a.after.mean < b.after.mean:
                wrong.append(
                    f"{a.name} (#{a.rank}) above {b.name} (#{b.rank}) on the board, but "
                    f"independently {a.after.mean:.4f} < {b.after.mean:.4f}"
                )
    return not wrong, wrong, checked


# -- the report ------------------------------------------------------------------------------


def _pm(side: Side) -> str:
    return f"{side.mean:.4f} ± {side.std:.4f}"


def _ci(side: Side) -> str:
    if side.low is None or side.high is None:
        return f"{side.reported:.4f} (n={side.n})"
    return f"{side.reported:.4f} [{side.low:.4f}, {side.high:.4f}]"


def _tied(r: Strategy) -> str:
    if r.rank == 1:
        return "#1"
    if r.tied is None:
        return "n/a"
    return f"{'tied' if r.tied else 'apart'} (p={r.p_value:.3g})"


def table(rows: list[Strategy], retrain_seeds: int) -> str:
    k = retrain_seeds
    lines = [
        f"| # | strategy | before: reported (best test, 1 seed) | before: independent ({k} seeds) "
        f"| before: gap | after: board mean [95% CI] | after: independent ({k} seeds) "
        "| inside CI | after: gap | vs #1 | same config |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in sorted(rows, key=lambda r: r.rank):
        b, a = r.before, r.after
        lines.append(
            f"| {r.rank} | {r.name} | {b.reported:.4f} | {_pm(b)} | {b.gap:+.4f} | {_ci(a)} | "
            f"{_pm(a)} | {'yes' if a.inside else '**no**'} | {a.gap:+.4f} | {_tied(r)} | "
            f"{'yes' if a.run_id == b.run_id else 'no'} |"
        )
    return "\n".join(lines)


def ranking_table(before: Ranking, after: Ranking) -> str:
    lines = [
        "| side | reported order | independent order of its configs | Kendall tau "
        "| pairs ordered alike |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, rk in (("before", before), ("after (board)", after)):
        lines.append(
            f"| {name} | {' > '.join(rk.order)} | {' > '.join(rk.independent)} | "
            f"{rk.tau:.2f} | {rk.alike}/{rk.pairs} |"
        )
    return "\n".join(lines)


def command(args: argparse.Namespace) -> str:
    if args.smoke:
        cmd = "python benchmarks/bench_selection_bias.py --smoke"
    else:
        cmd = (
            f"python benchmarks/bench_selection_bias.py --dataset {args.dataset} "
            f"--trials {args.trials} --epochs {args.epochs} "
            f"--retrain-seeds {args.retrain_seeds}"
        )
        if list(args.strategies) != list(STRATEGIES):
            cmd += " --strategies " + " ".join(args.strategies)
    return cmd + (f" --doc {args.doc}" if args.doc else "")


def verdicts(rows: list[Strategy]) -> tuple[bool, str, bool, str]:
    outside = [r for r in rows if not r.after.inside]
    ok1 = not outside
    if ok1:
        text1 = "**Met**: every strategy's independent mean lies inside the board's 95% interval."
    else:
        text1 = "**Missed**: " + "; ".join(
            f"{r.name}'s independent mean {r.after.mean:.4f} lies outside the board's "
            f"[{r.after.low:.4f}, {r.after.high:.4f}]"
            if r.after.low is not None and r.after.high is not None
            else f"{r.name} has no interval on the board (status {r.status})"
            for r in outside
        )
        text1 += f" ({len(rows) - len(outside)} of {len(rows)} inside)."
    ok2, wrong, checked = untied_order(rows)
    if ok2:
        text2 = (
            f"**Met**: the {checked} pair(s) the board tells apart (lower row not tied with "
            "#1) are ordered alike by the independent means."
            if checked
            else "**Met, vacuously**: the board ties every row with #1, so it claims no order."
        )
    else:
        text2 = f"**Missed** ({len(wrong)} of {checked} pairs): " + "; ".join(wrong) + "."
    return ok1, text1, ok2, text2


def section(
    args: argparse.Namespace,
    rows: list[Strategy],
    seeds: list[int],
    sweep_id: str,
    timings: dict[str, float],
    check: list[tuple[str, float, float]],
) -> str:
    import torch

    before, after = ranking(rows, "before"), ranking(rows, "after")
    _, text1, _, text2 = verdicts(rows)
    bgap = statistics.fmean(r.before.gap for r in rows)
    agap = statistics.fmean(r.after.gap for r in rows)
    n = args.trials
    lines = [
        SECTION,
        "",
        f"    {command(args)}",
        "",
        f"One sweep (`{sweep_id}`) of {', '.join(f'`{s}`' for s in args.strategies)} on "
        f"`{args.dataset}`/`{args.model}`, {n} search trials per strategy of {args.epochs} "
        f"epochs, Optuna's default sampler, validation split {args.val_fraction:g}, objective "
        f"`best_val_accuracy`, confirmation over {args.confirm_seeds} fresh seeds; local Ray, "
        f"{os.cpu_count()} cores, {platform.python_version()}, torch {torch.__version__}, "
        f"measured {time.strftime('%Y-%m-%d')}. **Before** is what bitsweep reported up to 0.1: "
        f"per strategy the search trial with the best *test* accuracy of its {n}, one seed. "
        "**After** is the board: the config selected on validation, its mean test accuracy over "
        "the confirmation's seeds with the 95% Student-t interval, `vs #1` Welch's test. "
        f"**Independent**: each of those configs trained again (`run_trial`, one thread) on "
        f"{len(seeds)} further seeds ({seeds[0]}..{seeds[-1]}, disjoint from the search's and "
        "the confirmation's), mean ± std; gap = reported - independent.",
        "",
        table(rows, len(seeds)),
        "",
        ranking_table(before, after),
        "",
        f"Mean gap (reported - independent): before {bgap:+.4f}, after {agap:+.4f}.",
        "",
        f"- Every strategy's independent mean inside the board's 95% interval: {text1}",
        f"- The board's order of the strategies it does not call tied is the independent order "
        f"(each pair i above j with j not tied with #1 has independent mean i >= j): {text2}",
        "",
        reproduced_text(check),
        "",
        "The independent retrains are scored on the same test split that *before* selected "
        "on: they remove the luck of the one seed from the before number, not the config's own "
        "fit to that split, so *before: independent* is itself still optimistic for unseen "
        "data, and the before gap understates its bias.",
        "",
        f"The sweep took {timings['sweep']:.0f} s (Ray's start included), the "
        f"{timings['retrains']} retrains {timings['retrain']:.0f} s on {args.jobs} processes, "
        f"the whole run {timings['total']:.0f} s (load average {timings['load_start']:.1f} at "
        f"the start, {timings['load_end']:.1f} at the end). A 95% interval over "
        f"{args.confirm_seeds} seeds covers the config's true mean 95% of the time; the "
        f"independent mean is itself an estimate over {len(seeds)} seeds, so it falls inside "
        "somewhat less often than that even when the board is unbiased.",
        "",
    ]
    return wrap("\n".join(lines))


def reproduced_text(check: list[tuple[str, float, float]]) -> str:
    """Whether the retrain rebuilds the sweep's configs: each trained again at its own seed."""
    same = [c for c in check if c[1] == c[2]]
    text = (
        f"Retrain check: each of the {len(check)} configs trained again at its own search seed "
        f"gave the test accuracy its sweep run recorded in {len(same)} of {len(check)} cases"
    )
    off = [c for c in check if c[1] != c[2]]
    if off:
        text += " (" + "; ".join(f"{rid[:8]}: {a:.4f} recorded, {b:.4f} again" for rid, a, b in off)
        text += ")"
    return text + "."


def wrap(text: str, width: int = 96) -> str:
    """The section's prose paragraphs and list items wrapped at `width`, as the document's
    other sections are; tables, the indented command and headings as they are."""
    out = []
    for block in text.split("\n\n"):
        if block.startswith(("|", "    ", "#")):
            out.append(block)
        elif block.startswith("- "):
            items = ["- " + item for item in block[2:].split("\n- ")]
            out.append("\n".join(textwrap.fill(i, width, subsequent_indent="  ") for i in items))
        else:
            out.append(textwrap.fill(block, width))
    return "\n\n".join(out)


def write_section(doc: Path, text: str) -> None:
    """Put `text` in place of the document's Selection bias section (up to the next `## `
    heading), or at its end: as bench_leaderboard writes its own."""
    here = str(Path(__file__).resolve().parent)
    if here not in sys.path:
        sys.path.insert(0, here)
    from bench_leaderboard import write_section as replace

    replace(doc, text, SECTION)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="mnist-5k", help="built-in data: mnist-5k or digits")
    p.add_argument("--model", default="mlp")
    p.add_argument("--strategies", nargs="+", default=list(STRATEGIES))
    p.add_argument("--trials", type=int, default=30, help="search trials per strategy")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seed", type=int, default=0, help="the sweep's seed")
    p.add_argument("--confirm-seeds", type=int, default=3, help="the board's fresh seeds")
    p.add_argument("--retrain-seeds", type=int, default=5, help="independent seeds per config")
    p.add_argument("--jobs", type=int, default=2, help="retrains at once, one thread each")
    p.add_argument("--home", type=Path, default=None, help="keep the sweep's stores here")
    p.add_argument("--doc", type=Path, default=None, help="write the Selection bias section here")
    p.add_argument("--smoke", action="store_true", help="digits, 2 trials, 2 epochs, 2 seeds")
    args = p.parse_args(argv)
    if args.smoke:
        for k, v in SMOKE.items():
            setattr(args, k, v)
    if args.retrain_seeds < 2 or args.jobs < 1 or args.trials < 1:
        p.error("--retrain-seeds must be at least 2, --jobs and --trials at least 1")
    args.val_fraction = 0.2  # the sweep spec's default
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    t0, load_start = time.perf_counter(), os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bitsweep-selection-bias-") as tmp:
        home = args.home or Path(tmp)
        plan, summary, sweep_seconds = run_the_sweep(args, home)
        import ray

        ray.shutdown()
        rows = read_sides(plan, summary.sweep_id)
        seeds = [(args.seed + RETRAIN_OFFSET + k) % 2**32 for k in range(args.retrain_seeds)]
        assert not set(seeds) & set(plan.spec.confirmation_seeds())
        configs = len({s.run_id for r in rows for s in (r.before, r.after)})
        retrain_seconds, check = retrain(plan, rows, seeds, args.jobs)
    timings = {
        "sweep": sweep_seconds,
        "retrain": retrain_seconds,
        "retrains": configs * (len(seeds) + 1),
        "total": time.perf_counter() - t0,
        "load_start": load_start,
        "load_end": os.getloadavg()[0],
    }
    text = section(args, rows, seeds, summary.sweep_id, timings, check)
    print()
    print(text)
    if args.doc:
        write_section(args.doc, text)
        print(f"wrote the Selection bias section of {args.doc}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

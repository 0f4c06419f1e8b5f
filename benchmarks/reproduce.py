"""The reproduction report: each paper's claims that can be checked at small scale, measured
on the built-in data over several seeds, beside the paper's number, written as Markdown.

    python benchmarks/reproduce.py [--seeds 3] [--jobs 2] [--claims ID ...] \\
        [--out docs/reproduction.md] [--json results.json] [--list]

Every claim is a set of trials (`TrialConfig`s) run once per seed, on one CPU thread per
trial (`--jobs` trials at once), and a rule that reads the paper's quantity off their
results. "float" in a claim is `full_precision` trained with the strategy's own resolved
recipe (optimizer, schedule, batch, augmentation, model options) on the same model, so the
comparison isolates the weights' transform. A claim's row says whether it holds by the rule
stated in it. `tests/integration/test_paper_claims.py` holds a one-seed, shorter version of one
claim per strategy, so a change that breaks a claim fails CI.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere in the checkout
    sys.path.insert(0, str(ROOT))

from schemas.trial import TrialConfig, TrialResult  # noqa: E402
from strategies.space import split_params  # noqa: E402

# The paper's LeNet-300-100: an MLP 784-300-100-10 without BatchNorm and without biases.
LENET_300_100 = {"batch_norm": False}
# A small WRN: one pre-activation block per stage (WRN-8-1), the 1-bit paper's architecture.
SMALL_WRN = {"depth": 8, "width": 1}
CHECKPOINT = "{checkpoint}"  # replaced by the float start's state_dict file of the same seed
PAYLOAD = "{payload}"  # replaced by a file of random bytes


@dataclass(frozen=True)
class Trial:
    """One trial of a claim, run at every seed. `float_of` makes it `full_precision` with the
    resolved recipe of the claim's trial of that label; `saves` keeps its model's state_dict
    as the `{checkpoint}` of the claim's other trials."""

    label: str
    strategy: str = "full_precision"
    dataset: str = "mnist-5k"
    model: str = "mlp"
    epochs: int = 10
    params: dict[str, Any] = field(default_factory=dict)
    model_options: dict[str, Any] = field(default_factory=dict)
    float_of: str | None = None
    saves: bool = False

    def config(self, seed: int) -> TrialConfig:
        return TrialConfig(
            strategy=self.strategy,
            dataset=self.dataset,
            model=self.model,
            epochs=self.epochs,
            seed=seed,
            params=dict(self.params),
            model_options=dict(self.model_options),
        )


Results = dict[str, TrialResult]  # one seed's results of a claim, by trial label
Measure = Callable[[Results], dict[str, float]]
Verdict = Callable[[dict[str, list[float]]], bool]


@dataclass(frozen=True)
class Claim:
    id: str
    paper: str
    claim: str  # what the paper says, in its setting
    paper_value: str
    trials: tuple[Trial, ...]
    measure: Measure  # the quantities of one seed
    rule: str  # when the claim holds here, in words
    holds: Verdict


def _acc(r: TrialResult) -> float:
    return r.test_accuracy


def _zeros(r: TrialResult) -> float:
    return r.weights.sparsity


def _bits(r: TrialResult) -> list[float]:
    return [lm.bits for lm in r.weights.layers]


def _mean(xs: Sequence[float]) -> float:
    return statistics.fmean(xs)


def _bl(label: str, **params: Any) -> Trial:
    return Trial(label, "bit_learning", epochs=10, params=params, model_options=LENET_300_100)


def _claims() -> list[Claim]:
    bl_float = Trial("float", float_of="sign+2", epochs=10, model_options=LENET_300_100)
    bn = Trial("bitnet", "bit_regularization", epochs=20)
    wfn_float = Trial("float start", float_of="delta 0.015", epochs=10, saves=True)

    def wfn(delta: float) -> Trial:
        params = {"delta": delta, "init_checkpoint": CHECKPOINT, "epochs_per_step": 3}
        return Trial(f"delta {delta}", "weight_fixing", epochs=30, params=params)

    def binary_vs_float(strategy: str, model: str, opts: dict[str, Any], epochs: int) -> Claim:
        name = f"{strategy} {model}"
        return Claim(
            id=f"{'wrn1' if strategy == 'wrn_1bit' else 'eb'}-{model}",
            paper=strategy,
            claim=f"1-bit weights against float on the same model and recipe ({model}, "
            f"mnist-5k, {epochs} epochs)",
            paper_value="1-bit within about 1 point of float (WRN-20-10 CIFAR-10: 4.72 % vs "
            "4.22 % error)"
            if strategy == "wrn_1bit"
            else "binary weights at close to float accuracy, the float recipe [abstract]",
            trials=(
                Trial(name, strategy, model=model, epochs=epochs, model_options=opts),
                Trial("float", float_of=name, model=model, epochs=epochs, model_options=opts),
            ),
            measure=lambda r: {
                "1-bit acc": _acc(r[name]),
                "float acc": _acc(r["float"]),
                "gap": _acc(r["float"]) - _acc(r[name]),
            },
            rule="1-bit within 0.03 of float (mean over seeds)",
            holds=lambda m: _mean(m["gap"]) <= 0.03,
        )

    return [
        Claim(
            id="bl-msbs",
            paper="bit_learning",
            claim="training the sign and the 2 most significant of 6 bits matches float; "
            "the sign alone or sign + 1 MSB costs accuracy (LeNet-300-100, mnist-5k, 10 epochs)",
            paper_value="ResNet-20 CIFAR-10 [fig]: float 89.7, sign 86.4, sign+1 89.5, "
            "sign+2 89.8-89.9",
            trials=(
                _bl("sign", trainable_msbs=0),
                _bl("sign+1", trainable_msbs=1),
                _bl("sign+2", trainable_msbs=2),
                bl_float,
            ),
            measure=lambda r: {
                "float": _acc(r["float"]),
                "sign": _acc(r["sign"]),
                "sign+1": _acc(r["sign+1"]),
                "sign+2": _acc(r["sign+2"]),
            },
            rule="sign+2 within 0.02 of float, and sign below sign+2",
            holds=lambda m: (
                _mean(m["float"]) - _mean(m["sign+2"]) <= 0.02
                and _mean(m["sign"]) < _mean(m["sign+2"])
            ),
        ),
        Claim(
            id="bl-zeros",
            paper="bit_learning",
            claim="with all bits trainable, exact zeros appear (sparsity for free); far fewer "
            "with sign + 2 MSBs (LeNet-300-100, mnist-5k, 10 epochs)",
            paper_value="ResNet-20 CIFAR-10 [fig]: all bits ~88 % accuracy with 26-33 % of "
            "weights non-zero",
            trials=(_bl("all bits", trainable_msbs=5), _bl("sign+2", trainable_msbs=2)),
            measure=lambda r: {
                "all-bits zeros": _zeros(r["all bits"]),
                "sign+2 zeros": _zeros(r["sign+2"]),
                "all-bits acc": _acc(r["all bits"]),
            },
            rule="all bits give more than twice the zeros of sign+2",
            holds=lambda m: _mean(m["all-bits zeros"]) > 2 * _mean(m["sign+2 zeros"]),
        ),
        Claim(
            id="bl-payload",
            paper="bit_learning",
            claim="the frozen bits can carry an arbitrary payload without hurting accuracy "
            "(sign + 2 MSBs of 6 trained, LeNet-300-100, mnist-5k, 10 epochs)",
            paper_value="no accuracy loss with random noise, a file or another net in the "
            "frozen bits (>90 % of the network)",
            trials=(
                _bl("random bits", trainable_msbs=2),
                _bl("payload", trainable_msbs=2, payload=PAYLOAD),
            ),
            measure=lambda r: {
                "without payload": _acc(r["random bits"]),
                "with payload": _acc(r["payload"]),
            },
            rule="with payload within 0.01 of without",
            holds=lambda m: _mean(m["without payload"]) - _mean(m["with payload"]) <= 0.01,
        ),
        Claim(
            id="bn-bits",
            paper="bit_regularization",
            claim="about 6 bits per layer learned; compression 32 / mean bits; test accuracy "
            "close to the float net (MLP tanh, mnist-5k, 20 epochs)",
            paper_value="about 6 bits per layer, 5.33x; about 2 points more test error than "
            "float after 100 epochs (MNIST, CIFAR-10)",
            trials=(bn, Trial("float", float_of="bitnet", epochs=20)),
            measure=lambda r: {
                "mean bits": _mean(_bits(r["bitnet"])),
                "compression (paper)": r["bitnet"].strategy_info["compression_ratio_paper"],
                "compression (bitsweep)": r["bitnet"].weights.compression_ratio,
                "bitnet acc": _acc(r["bitnet"]),
                "float acc": _acc(r["float"]),
            },
            rule="mean bits in 5..7 and accuracy within 0.02 of float",
            holds=lambda m: (
                5 <= _mean(m["mean bits"]) <= 7
                and _mean(m["float acc"]) - _mean(m["bitnet acc"]) <= 0.02
            ),
        ),
        Claim(
            id="bn-limits",
            paper="bit_regularization",
            claim="lambda1 = 0 drives B to 1 bit; lambda2 = 0 keeps 32 bits (MLP tanh, "
            "mnist-5k, 20 epochs; eps = 0 for lambda1 = 0, 32-bit start for lambda2 = 0)",
            paper_value="1 bit and 32 bits",
            trials=(
                Trial(
                    "lambda1=0",
                    "bit_regularization",
                    epochs=20,
                    params={"lambda1": 0.0, "eps": 0.0},
                ),
                Trial(
                    "lambda2=0",
                    "bit_regularization",
                    epochs=20,
                    params={"lambda2": 0.0, "init_bits": 32, "max_bits": 32},
                ),
            ),
            measure=lambda r: {
                "lambda1=0 bits": max(_bits(r["lambda1=0"])),
                "lambda2=0 bits": min(_bits(r["lambda2=0"])),
                "lambda1=0 acc": _acc(r["lambda1=0"]),
            },
            rule="every layer at 1 bit, and at 32 bits",
            holds=lambda m: max(m["lambda1=0 bits"]) == 1 and min(m["lambda2=0 bits"]) == 32,
        ),
        Claim(
            id="bn-paper-lr",
            paper="bit_regularization",
            claim="the paper's single learning rate mu = 1e-3 (plain SGD) for W, against "
            "bitsweep's SGD momentum 0.9 lr 0.05 (MLP tanh, mnist-5k, 20 epochs)",
            paper_value="mu = 1e-3 for W and B (30 epochs of full MNIST, ~9000 steps)",
            trials=(
                Trial(
                    "paper lr",
                    "bit_regularization",
                    epochs=20,
                    params={"lr": 1e-3, "momentum": 0.0},
                ),
                bn,
            ),
            measure=lambda r: {
                "paper lr acc": _acc(r["paper lr"]),
                "bitsweep acc": _acc(r["bitnet"]),
            },
            rule="(no claim: why bitsweep's recipe differs) bitsweep's recipe above the paper's",
            holds=lambda m: _mean(m["bitsweep acc"]) > _mean(m["paper lr acc"]),
        ),
        Claim(
            id="wfn-delta",
            paper="weight_fixing",
            claim="from a float start, few unique non-zero weights and low entropy at no loss "
            "of accuracy; unique values and entropy fall as delta grows (MLP, mnist-5k, "
            "10 float epochs, then 10 fixing steps 3 epochs apart)",
            paper_value="ResNet-18 ImageNet, delta 0.0075 / 0.01 / 0.015: 193 / 164 / 90 "
            "unique, 4.15 / 3.01 / 2.72 bits, 70.3 / 69.7 / 67.3 % (float 69.8 %)",
            trials=(wfn_float, wfn(0.0075), wfn(0.015), wfn(0.05)),
            measure=lambda r: {
                "float start acc": _acc(r["float start"]),
                **{
                    f"{k} {d}": f(r[f"delta {d}"])
                    for d in (0.0075, 0.015, 0.05)
                    for k, f in (
                        ("unique", lambda x: float(x.weights.unique_nonzero_weights)),
                        ("entropy", lambda x: x.weights.weight_entropy_nonzero_bits),
                        ("acc", _acc),
                    )
                },
            },
            rule="accuracy within 0.02 of the float start at delta 0.015, and unique values "
            "and entropy not rising as delta grows",
            holds=lambda m: (
                _mean(m["float start acc"]) - _mean(m["acc 0.015"]) <= 0.02
                and _mean(m["unique 0.0075"]) >= _mean(m["unique 0.015"]) >= _mean(m["unique 0.05"])
                and _mean(m["entropy 0.0075"])
                >= _mean(m["entropy 0.015"])
                >= _mean(m["entropy 0.05"])
            ),
        ),
        binary_vs_float("wrn_1bit", "mlp", {}, 14),
        binary_vs_float("wrn_1bit", "wrn", SMALL_WRN, 6),
        binary_vs_float("exact_binary", "mlp", {}, 14),
        binary_vs_float("exact_binary", "wrn", SMALL_WRN, 6),
    ]


CLAIMS: dict[str, Claim] = {c.id: c for c in _claims()}


# -- running -----------------------------------------------------------------------------------


def same_recipe_float(config: TrialConfig) -> TrialConfig:
    """`full_precision` trained exactly as `config`'s strategy would be: its resolved
    optimizer, schedule, batch and augmentation, and its recipe's model options where the model
    takes them, on the same data and model."""
    from runners.engine.models import model_options
    from runners.engine.trial import resolve

    trial = resolve(config)
    r = trial.config
    accepted = model_options(r.model).model_fields
    recipe_options = {k: v for k, v in trial.strategy.recipe.model_options.items() if k in accepted}
    return TrialConfig(
        strategy="full_precision",
        **{**r.training_settings(), "model_options": {**recipe_options, **r.model_options}},
        optimizer=r.optimizer,
    )


def _config(claim: Claim, trial: Trial, seed: int, files: dict[str, str]) -> TrialConfig:
    if trial.float_of is not None:
        other = next(t for t in claim.trials if t.label == trial.float_of)
        base = _config(claim, other, seed, files)
        # The float run takes the strategy's training knobs, not its own params.
        base = base.model_copy(update={"params": split_params(base.params)[1]})
        return same_recipe_float(base).model_copy(update={"epochs": trial.epochs})
    params = {
        k: (
            files[f"{claim.id}:{seed}"]
            if v == CHECKPOINT
            else files["payload"]
            if v == PAYLOAD
            else v
        )
        for k, v in trial.params.items()
    }
    return trial.config(seed).model_copy(update={"params": params})


def _run(job: tuple[str, str, int, dict[str, str]]) -> tuple[str, str, int, dict[str, Any], float]:
    claim_id, label, seed, files = job
    import torch

    from runners.engine.trial import train

    torch.set_num_threads(1)
    claim = CLAIMS[claim_id]
    trial = next(t for t in claim.trials if t.label == label)
    t0 = time.perf_counter()
    trained = train(_config(claim, trial, seed, files))
    if trial.saves:
        torch.save(trained.model.state_dict(), files[f"{claim_id}:{seed}"])
    return claim_id, label, seed, trained.result.model_dump(mode="json"), time.perf_counter() - t0


def run_claims(
    claims: Sequence[Claim], seeds: Sequence[int], jobs: int, workdir: Path
) -> dict[str, dict[int, Results]]:
    """Every trial of `claims` at every seed; trials that save a float start run first."""
    payload = workdir / "payload.bin"
    payload.write_bytes(bytes(((i * 2654435761) >> 7) & 0xFF for i in range(1 << 16)))
    files = {"payload": str(payload)}
    files |= {f"{c.id}:{s}": str(workdir / f"{c.id}-{s}.pt") for c in claims for s in seeds}
    first = [(c.id, t.label, s, files) for c in claims for t in c.trials if t.saves for s in seeds]
    rest = [
        (c.id, t.label, s, files) for c in claims for t in c.trials if not t.saves for s in seeds
    ]
    out: dict[str, dict[int, Results]] = {c.id: {s: {} for s in seeds} for c in claims}
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        for batch in (first, rest):
            for claim_id, label, seed, result, seconds in pool.map(_run, batch):
                out[claim_id][seed][label] = TrialResult.model_validate(result)
                print(f"{claim_id:12s} {label:16s} seed {seed}: {seconds:6.1f} s", flush=True)
    return out


# -- the report --------------------------------------------------------------------------------


def _fmt(xs: list[float]) -> str:
    m = _mean(xs)
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    if all(float(x).is_integer() for x in xs):
        return f"{m:.0f}" if sd == 0 else f"{m:.1f} ± {sd:.1f}"
    digits = 3 if abs(m) < 10 else 2
    return f"{m:.{digits}f} ± {sd:.{digits}f}"


def summarize(claim: Claim, results: dict[int, Results]) -> tuple[dict[str, list[float]], bool]:
    per_seed = [claim.measure(r) for _, r in sorted(results.items())]
    values = {k: [m[k] for m in per_seed] for k in per_seed[0]}
    return values, bool(claim.holds(values))


PAPERS = {
    "bit_learning": "Bit-wise training of neural network weights (arXiv 2202.09571)",
    "bit_regularization": "BitNet: bit-regularized deep neural networks (arXiv 1708.04788)",
    "weight_fixing": "Weight Fixing Networks (arXiv 2210.13554)",
    "wrn_1bit": "Training wide residual networks for deployment using a single bit for each "
    "weight (arXiv 1802.08530)",
    "exact_binary": "Exact backpropagation in binary weighted networks with group weight "
    "transformations (arXiv 2107.01400)",
}

WHY = {
    "bit_learning": "The paper's numbers are ResNet-20 on CIFAR-10 over 200 epochs; here "
    "LeNet-300-100 on 4 500 MNIST images for 10 epochs. Small MNIST nets are easy enough that "
    "the sign alone already trains well, so the gaps between the trainable-bit settings are "
    "smaller than on CIFAR-10. Zeros grow with training: 9 % after 10 epochs with all bits "
    "trainable, where the paper reports 67-74 % after 200.",
    "bit_regularization": "The paper trains 30 to 100 epochs of full MNIST or CIFAR-10 with "
    "plain SGD at mu = 1e-3; bitsweep trains W with momentum SGD at 0.05 (the bn-paper-lr "
    "row shows why) and keeps the paper's mu for the bit update. The bit-depths follow from "
    "2^B ~ eps / (mu lambda2), with the unstated eps = 1e-7.",
    "weight_fixing": "The paper's numbers are ImageNet ResNets fine-tuned from pre-trained "
    "weights; here a 266k-weight MLP trained from scratch for 10 epochs, then fixed in the "
    "paper's 10 steps with 3 epochs of training between them. A small net needs "
    "fewer distinct values, so the counts are far below the paper's.",
    "wrn_1bit": "The paper's numbers are WRN-20-10 on CIFAR over 126-254 epochs with "
    "augmentation; here WRN-8-1 and an MLP on mnist-5k over 6-14 epochs without augmentation. "
    "The paper's nets are wide (k = 4 to 10) and its gap grows as they narrow; WRN-8-1 has "
    "16 to 64 channels per layer, and on it the 1-bit net is 4 to 10 points behind float "
    "after 6 epochs, where the MLP (300 and 100 units) is within a point.",
    "exact_binary": "The paper's method text and code could not be read; bitsweep's "
    "transformation is reconstructed from the abstract (docs/strategies/exact_binary.md). The "
    "comparison is the abstract's claim, binary weights near float accuracy. Like wrn_1bit, "
    "it is within a point of float on the MLP and about 6 points behind on the narrow WRN-8-1.",
}


def render(
    claims: Sequence[Claim],
    results: dict[str, dict[int, Results]],
    seeds: Sequence[int],
    seconds: float,
) -> str:
    n = len(seeds)
    lines = [
        "# Reproduction report",
        "",
        "Each paper's claims that can be checked at small scale, measured by bitsweep on the "
        "built-in data (`mnist-5k`: 5 000 MNIST images) over "
        f"{n} seeds ({', '.join(map(str, seeds))}), "
        'mean ± standard deviation, beside the paper\'s number and setting. "float" is '
        "`full_precision` trained with the strategy's own recipe on the same model. Written by:",
        "",
        "```",
        f"python benchmarks/reproduce.py --seeds {n} --jobs 2 --out docs/reproduction.md",
        "```",
        "",
        f"The whole report took {seconds:.0f} s on {os.cpu_count()} cores. "
        "Each row's own command reruns that claim alone (one CPU thread per trial). A claim "
        "holds when its rule, stated in the row, does; a claim that does not hold here is "
        "reported as such.",
        "",
    ]
    for paper in PAPERS:
        rows = [c for c in claims if c.paper == paper]
        if not rows:
            continue
        lines += [f"## `{paper}`: {PAPERS[paper]}", ""]
        lines += [
            "| claim | paper | bitsweep | rule | holds | command |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for c in rows:
            values, ok = summarize(c, results[c.id])
            measured = "; ".join(f"{k} {_fmt(v)}" for k, v in values.items())
            cmd = f"`python benchmarks/reproduce.py --claims {c.id} --seeds {n}`"
            lines.append(
                f"| {c.claim} | {c.paper_value} | {measured} | {c.rule} | "
                f"{'yes' if ok else '**no**'} | {cmd} |"
            )
        lines += ["", f"Where this setting differs from the paper's: {WHY[paper]}", ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    ap.add_argument("--jobs", type=int, default=1, help="trials run at once, one thread each")
    ap.add_argument("--claims", nargs="+", choices=sorted(CLAIMS), help="only these claims")
    ap.add_argument("--out", type=Path, help="write the Markdown report here")
    ap.add_argument("--json", type=Path, help="write the measured values here")
    ap.add_argument("--list", action="store_true", help="list the claims and exit")
    args = ap.parse_args(argv)
    if args.list:
        for c in CLAIMS.values():
            print(f"{c.id:12s} {c.paper:18s} {c.claim}")
        return 0
    if args.seeds < 1 or args.jobs < 1:
        ap.error("--seeds and --jobs must be at least 1")
    claims = [CLAIMS[i] for i in (args.claims or CLAIMS)]
    seeds = list(range(args.seeds))
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bitsweep-reproduce-") as tmp:
        results = run_claims(claims, seeds, args.jobs, Path(tmp))
    report = render(claims, results, seeds, time.perf_counter() - t0)
    print(f"{len(claims)} claims, {len(seeds)} seeds, {time.perf_counter() - t0:.0f} s")
    if args.out:
        args.out.write_text(report + "\n")
    else:
        print(report)
    if args.json:
        summary = {
            c.id: dict(zip(("values", "holds"), summarize(c, results[c.id]), strict=True))
            for c in claims
        }
        args.json.write_text(json.dumps(summary, indent=1))
    failed = [c.id for c in claims if not summarize(c, results[c.id])[1]]
    if failed:
        print("claims that do not hold here: " + ", ".join(failed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

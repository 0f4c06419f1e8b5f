"""Each paper's own protocol (`benchmarks/reproduce.py --scale paper`) runs end to end on
synthetic stand-ins of its data, so that no preset rots while it waits for a GPU: every trial
builds its model at the paper's size, reads its folder in the standard format, trains with its
recipe and is measured. What the stand-ins measure is not checked: it means nothing."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from scripts import load_script

from runners.engine.data import load_dataset
from runners.engine.models import build_model

pytestmark = pytest.mark.slow


R = load_script("reproduce", "bitsweep_reproduce_presets")


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> tuple[list, dict]:
    work = tmp_path_factory.mktemp("presets")
    claims = R.stand_in(list(R.PAPER_CLAIMS.values()), work)
    return claims, R.run_claims(claims, seeds=1, jobs=1, workdir=work)


def test_every_preset_trial_runs_on_its_protocol(ran: tuple[list, dict]) -> None:
    claims, results = ran
    assert [c.id for c in claims] == list(R.PAPER_CLAIMS)
    for claim in claims:
        got = results[claim.id][0]
        assert set(got) == {t.label for t in claim.trials}, claim.id
        for label, result in got.items():
            config = result.config
            kind = config.dataset.split(":", 1)[0]
            _, _, shape, classes = R.PAPER_DATA[kind]
            assert config.epochs == 1 and math.isfinite(result.test_loss), (claim.id, label)
            # The paper's model at the paper's size: every weight of it was measured.
            model = build_model(config.model, shape, classes, config.model_options)
            weights = sum(
                m.weight.numel()
                for m in model.modules()
                if type(m).__name__ in ("Conv2d", "Linear")
            )
            assert result.weights.numel == weights, (claim.id, label)
        # A float trial takes its strategy's recipe on the same protocol.
        for t in claim.trials:
            if t.float_of is not None:
                mine, theirs = got[t.label].config, got[t.float_of].config
                assert mine.strategy == "full_precision"
                for field in ("dataset", "model", "batch_size", "schedule", "augment"):
                    assert getattr(mine, field) == getattr(theirs, field), (claim.id, field)


def test_the_protocols_are_the_papers(ran: tuple[list, dict]) -> None:
    _, results = ran
    wrn = results["wrn1-wrn20-10-cifar100"][0]["1-bit"].config
    assert (wrn.model_options["depth"], wrn.model_options["width"]) == (20, 10)
    assert wrn.schedule.name == "cosine_restarts" and wrn.batch_size == 125
    assert wrn.augment.crop_padding == 4 and wrn.augment.flip
    assert R.PAPER_CLAIMS["wrn1-wrn20-10-cifar100"].trials[0].epochs == 126
    bl = results["bl-resnet20-cifar10"][0]["sign+2"].config
    assert bl.model_options == {"shortcut": "B", "batch_norm": False}
    assert (bl.optimizer.name, bl.optimizer.lr, bl.batch_size) == ("adam", 6e-4, 64)
    assert bl.schedule.milestones == [150, 170]
    bn = results["bn-lenet32-cifar10"][0]["bitnet"]
    assert bn.config.model_options["kernel"] == 3 and bn.val_steps  # the curve is measured
    assert (bn.config.optimizer.lr, bn.config.optimizer.momentum) == (1e-3, 0.0)
    assert load_dataset(results["bn-lenet32-mnist"][0]["bitnet"].config.dataset).num_classes == 10


def test_the_report_and_the_estimates(ran: tuple[list, dict], tmp_path: Path) -> None:
    claims, results = ran
    report = R.render(claims, results, 1, 1.0, scale="paper", stand_in=True)
    assert "**Stand-in data.**" in report and "| **no** |" not in report
    estimates = {c.id: R.gpu_hours(c, 3) for c in R.PAPER_CLAIMS.values()}
    assert all(h > 0 for h in estimates.values())
    # WRN-20-10 over 126 epochs costs far more than LeNet32 on MNIST over 30.
    assert estimates["wrn1-wrn20-10-cifar10"] > 20 * estimates["bn-lenet32-mnist"]
    section = "\n".join(R.presets_section(3))
    assert all(f"`{i}`" in section for i in R.PAPER_CLAIMS)


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--scale", "paper", "--claims", "bn-lenet32-mnist"], "these claims read mnist=DIR"),
        (["--scale", "paper", "--data", "imagenet=/tmp"], "KIND one of mnist, cifar10, cifar100"),
        (["--scale", "paper", "--data", "mnist=/no/such/folder"], "is not a folder"),
        (["--claims", "bn-lenet32-mnist"], "unknown at --scale small"),
        (["--stand-in"], "go with --scale paper"),
    ],
)
def test_bad_arguments_are_refused_in_one_line(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as e:
        R.main(argv)
    assert e.value.code == 2 and says in capsys.readouterr().err


def test_the_command_line_writes_a_stand_in_report(tmp_path: Path) -> None:
    out, data = tmp_path / "r.md", tmp_path / "r.json"
    argv = ["--scale", "paper", "--stand-in", "--claims", "bn-lenet32-mnist"]
    assert R.main([*argv, "--out", str(out), "--json", str(data)]) == 0
    assert "--scale paper --stand-in" in out.read_text()
    assert json.loads(data.read_text())["bn-lenet32-mnist"]["holds"] is None

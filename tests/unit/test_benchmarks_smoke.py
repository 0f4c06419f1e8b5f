"""The benchmark scripts run end to end at tiny sizes (no timing is checked)."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture
def load(monkeypatch: pytest.MonkeyPatch) -> Iterator:
    """Load a benchmark script as a module, registered in `sys.modules` while the test runs
    (dataclasses look their module up there)."""

    def _load(name: str) -> ModuleType:
        spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, name, module)
        spec.loader.exec_module(module)
        return module

    yield _load


def test_bench_weight_metrics_smoke_prints_a_table(load, capsys):
    bench = load("bench_weight_metrics")
    assert bench.main(["--smoke"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("|")]
    assert rows[0].startswith("| weights | kind |") and rows[1].startswith("| --- |")
    body = rows[2:]
    # Two sizes by two kinds, and the two implementations agree on every one.
    assert len(body) == 4
    assert {row.split("|")[2].strip() for row in body} == {"codes", "float"}
    assert all(row.rstrip(" |").endswith("yes") for row in body)


def test_bench_step_cost_smoke_prints_a_table(load, capsys, monkeypatch):
    bench = load("bench_step_cost")
    assert bench.main(["--smoke", "--models", "mlp", "--own-optimizer"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("|")]
    assert rows[0].startswith("| model | run |") and rows[1].startswith("| --- |")
    runs = {row.split("|")[2].strip() for row in rows[2:]}
    # Every registered strategy ran, and each quantized one has a float run of its model.
    for name in ("full_precision", "wrn_1bit", "exact_binary", "bit_learning"):
        assert name in runs
    assert "weight_fixing (own optimizer)" in runs
    for row in rows[2:]:
        cells = [c.strip() for c in row.split("|")[1:-1]]
        assert cells[0] == "mlp"
        assert float(cells[2]) > 0 and float(cells[4]) > 0
        assert cells[5].endswith("(ref)") or "x" in cells[5]


@pytest.mark.system  # starts real processes
def test_bench_sweep_overhead_smoke_prints_a_table(load, capsys, tmp_path):
    bench = load("bench_sweep_overhead")
    assert bench.main(["--smoke", "--json", str(tmp_path / "r.json")]) == 0
    # The sweep trains the plain loop's trials and no confirmation seeds beside them.
    assert json.loads((tmp_path / "r.json").read_text())["completed"] == 2
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("|")]
    assert rows[0].startswith("| run | plain Optuna | bitsweep | speed-up |")
    assert len(rows) == 3
    cells = [c.strip() for c in rows[2].split("|")[1:-1]]
    assert cells[0] == "full_precision, 2 trials x 1 epoch(s)"
    assert float(cells[1].removesuffix(" s")) > 0 and float(cells[2].removesuffix(" s")) > 0
    assert cells[7].endswith("at once)")


def test_bench_weight_fixing_smoke_prints_a_table(load, capsys):
    bench = load("bench_weight_fixing")
    assert bench.main(["--smoke"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("|")]
    assert rows[0].startswith("| weights | threads | largest step |") and len(rows) == 3
    cells = [c.strip() for c in rows[2].split("|")[1:-1]]
    assert cells[0] == "2000" and int(cells[1]) >= 1 and int(cells[4]) > 1


@pytest.mark.system  # starts real processes
def test_bench_leaderboard_smoke_prints_a_table_and_writes_its_section(
    load, capsys, monkeypatch, tmp_path
):
    bench = load("bench_leaderboard")
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n## Leaderboard\n\nold\n\n## Step cost\n\nkept\n")
    argv = ["--smoke", "--store", str(tmp_path / "store"), "--doc", str(doc)]
    assert bench.main(argv) == 0
    out = capsys.readouterr().out
    # 50 search trials, and 3 confirmations of each strategy of each sweep (12 of them)
    assert "wrote 86 trial runs and 5 sweeps" in out
    rows = [line for line in out.splitlines() if line.startswith("|")]
    assert rows[0] == "| read | scope | rows | seconds |" and rows[1].startswith("| --- |")
    body = [[c.strip() for c in row.split("|")[1:-1]] for row in rows[2:]]
    # Four query shapes, two through MLflow's search, a fresh process, three CLI runs.
    assert len(body) == 10
    assert all(len(cells) == 4 and int(cells[2]) > 0 and float(cells[3]) > 0 for cells in body)
    assert {cells[1] for cells in body} == {"benchmark", "one sweep"}
    assert sum("bitsweep leaderboard" in cells[0] for cells in body) == 3
    assert "none of the heavy modules" in out
    text = doc.read_text()
    assert "old" not in text and text.count("## Leaderboard") == 1
    assert text.endswith("## Step cost\n\nkept\n") and "| read | scope | rows | seconds |" in text
    assert bench.main(argv) == 0  # the store is built once, then reused
    assert "trial runs and" not in capsys.readouterr().out


@pytest.fixture
def benchmark_modules(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The benchmarks importable by name, as when a script runs; sys.modules as it was after."""
    names = ("bench_step_cost", "bench_loader", "bench_gpu")
    before = {name: sys.modules[name] for name in names if name in sys.modules}
    for name in names:
        sys.modules.pop(name, None)
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    yield
    for name in names:
        sys.modules.pop(name, None)
    sys.modules.update(before)


def _rows(out: str) -> list[list[str]]:
    return [
        [c.strip() for c in line.split("|")[1:-1]]
        for line in out.splitlines()
        if line.startswith("|")
    ]


def test_bench_loader_smoke_compares_on_device_batches_with_dataloaders(
    capsys: pytest.CaptureFixture[str], benchmark_modules: None
) -> None:
    import bench_loader

    assert bench_loader.main(["--smoke", "--workers", "0,1"]) == 0
    rows = _rows(capsys.readouterr().out)
    assert rows[0][:3] == ["data", "augmentation", "loader"] and rows[1][0] == "---"
    body = rows[2:]
    # Two datasets, each: the on-device batches, then a DataLoader with 0 and with 1 worker.
    assert [r[2] for r in body] == [
        "on-device `batches`",
        "DataLoader, 0 workers",
        "DataLoader, 1 worker",
    ] * 2
    assert {r[0] for r in body} == {"CIFAR-shaped 3x32x32", "MNIST-shaped 1x28x28"}
    assert all(float(r[3].replace(",", "")) > 0 for r in body)
    assert [r[4] for r in body if r[2].startswith("on-device")] == ["1.00x (ref)"] * 2


def test_host_augmentation_of_the_dataloader_is_the_same_transform(
    benchmark_modules: None,
) -> None:
    import random

    import bench_loader
    import torch

    from runners.engine.data import _apply, _Draws
    from schemas.trial import AugmentConfig

    aug = AugmentConfig(crop_padding=3, flip=True, cutout=4)
    img = torch.randn(3, 10, 12)
    rng = random.Random(5)
    got = bench_loader.augment_sample(img, aug, rng)
    # The same draws, replayed for the batch implementation.
    replay = random.Random(5)
    dy, dx = replay.randrange(7), replay.randrange(7)
    flip = replay.random() < 0.5
    top, left = replay.randrange(7), replay.randrange(9)
    draws = _Draws(*(torch.tensor([v]) for v in (dy, dx, flip, top, left)))
    assert torch.equal(got, _apply(img[None], aug, draws)[0])


def test_write_section_rewrites_only_its_marked_block(
    tmp_path: Path, benchmark_modules: None
) -> None:
    import bench_loader

    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n## Other\n\nkeep me\n\n## Last\n\nme too\n")
    bench_loader.write_section("Mine", "mine", "| a |\n| - |", "How to run.", path=doc)
    first = doc.read_text()
    assert first.startswith("# Benchmarks\n\n## Other\n\nkeep me\n\n## Last\n\nme too\n")
    assert first.endswith(
        "## Mine\n\nHow to run.\n\n<!-- mine: start -->\n| a |\n| - |\n<!-- mine: end -->\n"
    )
    # Hand-written text around the block stays; only the block changes.
    doc.write_text(first.replace("How to run.", "How to run, edited.") + "\n## After\n\nx\n")
    bench_loader.write_section("Mine", "mine", "| b |", "ignored", path=doc)
    second = doc.read_text()
    assert "How to run, edited." in second and "| a |" not in second and "| b |" in second
    assert second.endswith("<!-- mine: end -->\n\n## After\n\nx\n")
    bench_loader.write_section("Mine", "mine", "| b |", "ignored", path=doc)
    assert doc.read_text() == second


@pytest.mark.system  # starts real processes
def test_bench_gpu_smoke_runs_step_cost_and_packed_trials(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    benchmark_modules: None,
) -> None:
    import bench_gpu
    import torch

    written: list[str] = []
    monkeypatch.setattr(
        bench_gpu, "write_section", lambda title, name, body, intro: written.append(body)
    )
    assert bench_gpu.main(["--smoke", "--pack", "1,2", "--write-docs"]) == 0
    out = capsys.readouterr().out
    if not torch.cuda.is_available():
        assert out.startswith(bench_gpu.NO_GPU) and "without a GPU" in out
        assert written[0].startswith(bench_gpu.NO_GPU)
    rows = _rows(out)
    models = {r[0] for r in rows if r[0] in ("wrn", "mlp")}
    assert models == {"wrn", "mlp"}
    assert {r[1] for r in rows if r[0] == "wrn"} >= {"full_precision", "wrn_1bit"}
    packed = [r for r in rows if r[0] in ("1", "2")]
    assert [r[0] for r in packed] == ["1", "2"]
    assert all(float(r[2].replace(",", "")) > 0 for r in packed)
    assert packed[0][3] == "1.00x"
    assert len(written) == 1 and "| trials on one" in written[0] and "| wrn |" in written[0]


def test_bench_selection_bias_verdicts_check_what_the_board_claims(load):
    """The benchmark's verdicts on known numbers (its sweep runs under benchmarks/, by hand):
    an order the board claims (a row not tied with #1) that the retrains reverse is reported,
    an order between tied rows is not a claim, and an interval is checked as it is."""
    bench = load("bench_selection_bias")

    def row(name: str, rank: int, tied: bool | None, mean: float, low: float, high: float):
        after = bench.Side("r" + name, "t" + name, mean, low, high, 3, [mean - 0.01, mean + 0.01])
        before = bench.Side("b" + name, "u" + name, mean + 0.02, independent=[mean, mean])
        return bench.Strategy(name, before, after, rank, tied, None, "confirmed")

    rows = [
        row("a", 1, None, 0.90, 0.88, 0.92),
        row("b", 2, True, 0.91, 0.89, 0.93),  # tied with #1: its place above c is no claim
        row("c", 3, False, 0.95, 0.90, 0.93),  # not tied, yet better independently
    ]
    holds, wrong, checked = bench.untied_order(rows)
    assert not holds and checked == 2 and len(wrong) == 2 and "a (#1) above c (#3)" in wrong[0]
    rows[2] = row("c", 3, False, 0.80, 0.78, 0.82)
    assert bench.untied_order(rows)[0]
    assert [r.after.inside for r in rows] == [True, True, True]
    assert bench.Side("x", "y", 0.9, 0.85, 0.86, 3, [0.9, 0.9]).inside is False
    after = bench.ranking(rows, "after")
    assert after.order == ["a", "b", "c"] and after.independent == ["b", "a", "c"]
    assert (after.alike, after.pairs) == (2, 3)


def test_bench_logged_model_smoke_prints_a_table(load, capsys):
    bench = load("bench_logged_model")
    assert bench.main(["--smoke"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("|")]
    assert rows[0].startswith("| model | weights file | trial (1 epoch) |") and len(rows) == 3
    cells = [c.strip() for c in rows[2].split("|")[1:-1]]
    assert cells[0] == "mlp" and cells[4].endswith(" ms")

"""The benchmark scripts run end to end at tiny sizes (no timing is checked)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_weight_metrics_smoke_prints_a_table(capsys):
    bench = _load("bench_weight_metrics")
    assert bench.main(["--smoke"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("|")]
    assert rows[0].startswith("| weights | kind |") and rows[1].startswith("| --- |")
    body = rows[2:]
    # Two sizes by two kinds, and the two implementations agree on every one.
    assert len(body) == 4
    assert {row.split("|")[2].strip() for row in body} == {"codes", "float"}
    assert all(row.rstrip(" |").endswith("yes") for row in body)


def test_bench_step_cost_smoke_prints_a_table(capsys, monkeypatch):
    # Registered as a module while it loads: its dataclasses look their module up there.
    spec = importlib.util.spec_from_file_location(
        "bench_step_cost", BENCHMARKS / "bench_step_cost.py"
    )
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_step_cost", bench)
    spec.loader.exec_module(bench)
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


def test_bench_sweep_overhead_smoke_prints_a_table(capsys):
    bench = _load("bench_sweep_overhead")
    assert bench.main(["--smoke"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("|")]
    assert rows[0].startswith("| run | plain Optuna | bitsweep | speed-up |")
    assert len(rows) == 3
    cells = [c.strip() for c in rows[2].split("|")[1:-1]]
    assert cells[0] == "full_precision, 2 trials x 1 epoch(s)"
    assert float(cells[1].removesuffix(" s")) > 0 and float(cells[2].removesuffix(" s")) > 0
    assert cells[7].endswith("at once)")


def test_bench_weight_fixing_smoke_prints_a_table(capsys):
    bench = _load("bench_weight_fixing")
    assert bench.main(["--smoke"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("|")]
    assert rows[0].startswith("| weights | threads | largest step |") and len(rows) == 3
    cells = [c.strip() for c in rows[2].split("|")[1:-1]]
    assert cells[0] == "2000" and int(cells[1]) >= 1 and int(cells[4]) > 1

"""The benchmark scripts run end to end at tiny sizes (no timing is checked)."""

from __future__ import annotations

import importlib.util
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

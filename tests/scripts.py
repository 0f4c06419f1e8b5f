"""The project's scripts under `benchmarks/` loaded as modules, for the tests that read their
claims and helpers."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def load_script(name: str, as_module: str) -> ModuleType:
    """`benchmarks/<name>.py` as the module `as_module`, registered in `sys.modules` (its
    dataclasses look their module up there)."""
    spec = importlib.util.spec_from_file_location(as_module, BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[as_module] = module
    spec.loader.exec_module(module)
    return module

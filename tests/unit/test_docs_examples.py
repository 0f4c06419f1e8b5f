"""The strategies the README and docs/writing-a-strategy.md show run as written: they register,
pass the contract suite and train."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from runners.engine.trial import run_trial
from schemas.trial import TrialConfig
from strategies import unregister_strategy
from strategies.testing import run_contract

ROOT = Path(__file__).resolve().parents[2]


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


@pytest.fixture
def module_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def _import(name: str, code: str, folder: Path) -> object:
    path = folder / (name.replace(".", "/") + ".py")
    path.parent.mkdir(parents=True, exist_ok=True)
    for parent in list(path.parents)[: name.count(".")]:
        (parent / "__init__.py").touch()
    path.write_text(code)
    sys.modules.pop(name, None)
    return importlib.import_module(name)


def test_readme_strategy_passes_the_contract_and_trains(module_dir: Path) -> None:
    strategy_code = python_blocks(ROOT / "README.md")[0]
    module = _import("readme_ternary", strategy_code, module_dir)
    try:
        cls = module.Ternary  # type: ignore[attr-defined]
        assert run_contract(cls) == []
        result = run_trial(TrialConfig(strategy="ternary", epochs=2))
        assert result.test_accuracy > 0.5
        assert result.weights.unique_weights <= 3 * len(result.weights.layers)
    finally:
        unregister_strategy("ternary")
        sys.modules.pop("readme_ternary", None)


@pytest.mark.system  # starts real processes
def test_guide_strategy_and_its_contract_test_run_as_written(module_dir: Path) -> None:
    strategy_code, test_code = python_blocks(ROOT / "docs" / "writing-a-strategy.md")[:2]
    module = _import("my_strategies.lsq", strategy_code, module_dir)
    try:
        assert run_contract(module.Lsq) == []  # type: ignore[attr-defined]
        result = run_trial(TrialConfig(strategy="lsq", epochs=2, params={"bits": 3}))
        assert result.test_accuracy > 0.5
        assert [lm.bits for lm in result.weights.layers] == [8, 3, 8]
    finally:
        unregister_strategy("lsq")
        for name in ("my_strategies.lsq", "my_strategies"):
            sys.modules.pop(name, None)
    (module_dir / "test_lsq.py").write_text(test_code)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(module_dir), str(ROOT)])}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_lsq.py"],
        cwd=module_dir,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert re.search(r"\d+ passed", proc.stdout)

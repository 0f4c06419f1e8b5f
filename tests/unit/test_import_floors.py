"""The floors between the packages, beyond what `lint-imports` checks in CI: no import circle
inside a package (imports inside functions count), and a Ray worker's start that loads neither
Optuna nor MLflow."""

from __future__ import annotations

import json
import subprocess
import sys

import grimp
import pytest

PACKAGES = ("schemas", "strategies", "runners", "service")


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph(*PACKAGES, include_external_packages=True)


def circles(graph: grimp.ImportGraph) -> list[list[str]]:
    """The import circles among the project's modules (Tarjan's strongly connected components
    of more than one module)."""
    modules = sorted(m for m in graph.modules if m.split(".")[0] in PACKAGES)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(m: str) -> None:
        index[m] = low[m] = len(index)
        stack.append(m)
        on_stack.add(m)
        for n in sorted(graph.find_modules_directly_imported_by(m)):
            if n.split(".")[0] not in PACKAGES:
                continue
            if n not in index:
                visit(n)
                low[m] = min(low[m], low[n])
            elif n in on_stack:
                low[m] = min(low[m], index[n])
        if low[m] == index[m]:
            component = []
            while True:
                n = stack.pop()
                on_stack.discard(n)
                component.append(n)
                if n == m:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for m in modules:
        if m not in index:
            visit(m)
    return found


def test_no_package_has_an_import_circle(graph: grimp.ImportGraph) -> None:
    assert circles(graph) == []


def test_the_circle_check_finds_a_circle() -> None:
    g = grimp.ImportGraph()
    for m in ("runners.a", "runners.b", "runners.c"):
        g.add_module(m)
    g.add_import(importer="runners.a", imported="runners.b")
    g.add_import(importer="runners.b", imported="runners.c")
    g.add_import(importer="runners.c", imported="runners.a")
    assert circles(g) == [["runners.a", "runners.b", "runners.c"]]


def test_the_worker_imports_neither_optuna_nor_mlflow_even_inside_functions(
    graph: grimp.ImportGraph,
) -> None:
    reached = graph.find_upstream_modules("runners.sweep.worker") | {"runners.sweep.worker"}
    heavy = {
        f"{m} -> {n}"
        for m in reached
        for n in graph.find_modules_directly_imported_by(m)
        if n.split(".")[0] in ("optuna", "mlflow")
    }
    assert heavy == set()


@pytest.mark.system  # a fresh interpreter
def test_a_worker_start_loads_no_optuna_or_mlflow_module() -> None:
    code = (
        "import json, sys; import runners.sweep.worker; "
        "print(json.dumps([m for m in sys.modules if m.split('.')[0] in ('optuna', 'mlflow')]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert json.loads(out.stdout) == []

"""The test tiers, and shared fixtures: a data directory per test, PostgreSQL databases, and a
Ray cluster.

Every test has exactly one tier, decided for it (docs/contributing.md):

- **unit**: nothing but the package (SQLite, in-process apps and stores). Its folder is
  `tests/unit`. A unit test that starts a real process (Python, bitsweep, Ray, MLflow, Chromium,
  PostgreSQL) or leaves Ray running fails, saying which tier it belongs to.
- **integration**: one real dependency: PostgreSQL or a Ray cluster, or minutes of real training
  (the paper claims). `tests/integration`, or any test that uses `pg_database`,
  `module_pg_database` or `local_ray`, or is marked `@pytest.mark.integration`.
- **system**: real processes: `bitsweep sweep|serve`, a PostgreSQL or MLflow server of its own,
  Chromium. `tests/system`, or a test marked `@pytest.mark.system`.

Under pytest-xdist (`-n 2 --dist loadgroup`) unit tests spread over the workers one by one.
Integration and system tests run in two groups, each one test after another on one worker,
beside each other:

- `sweep-processes`: the modules of `SWEEP_PROCESS_MODULES`, whose `bitsweep sweep` processes
  start Ray without an address, and the one test cluster (`ray.cluster_utils.Cluster`) that
  leaves its address where such a process would join it: never at the same time;
- `clusters-and-services`: every other one: in-process clusters of their own (`local_ray`
  starts a new one, whatever the machine runs), services with Ray heads of their own,
  PostgreSQL, Chromium.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

PG_ADMIN_URL = os.environ.get("BITSWEEP_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
TIERS = ("unit", "integration", "system")
TESTS = Path(__file__).parent
# Fixtures that bring a real dependency, and so lift a test to the integration tier.
INTEGRATION_FIXTURES = {"pg_database", "module_pg_database", "local_ray"}
# Executables whose start makes a test a system test.
PROCESS_NAMES = ("python", "bitsweep", "ray", "raylet", "gcs_server", "mlflow", "chromium")
PROCESS_NAMES += ("postgres", "pg_ctl", "initdb", "uvicorn")
SWEEP_PROCESS_MODULES = {
    "test_sweep_cluster.py",
    "test_sweep_interrupt.py",
    "test_sweep_resume.py",
    "test_store_faults.py",
    "test_benchmarks_smoke.py",
}


def _tier(item: pytest.Item) -> str:
    folder = Path(str(item.path)).relative_to(TESTS).parts[0]
    if folder not in TIERS:
        raise pytest.UsageError(f"{item.nodeid}: a test lives in tests/unit, integration or system")
    marked = [t for t in TIERS if item.get_closest_marker(t) is not None]
    tier = max([folder, *marked], key=TIERS.index)
    if tier == "unit" and INTEGRATION_FIXTURES & set(getattr(item, "fixturenames", ())):
        tier = "integration"
    return tier


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        tier = _tier(item)
        item.add_marker(getattr(pytest.mark, tier))
        item.user_properties.append(("tier", tier))
        if tier != "unit":  # unit tests go to whichever worker is free
            own = Path(str(item.path)).name in SWEEP_PROCESS_MODULES
            group = "sweep-processes" if own else "clusters-and-services"
            item.add_marker(pytest.mark.xdist_group(group))


def _is_unit(item: pytest.Item) -> bool:
    return ("tier", "unit") in item.user_properties


@pytest.fixture(autouse=True)
def _unit_tests_start_no_process(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """Hold a unit test to its tier: no real process, no Ray left running."""
    if not _is_unit(request.node):
        yield
        return
    start = subprocess.Popen._execute_child  # type: ignore[attr-defined]

    def refuse(self, args, executable, *rest):  # type: ignore[no-untyped-def]
        argv = [args] if isinstance(args, (str, bytes)) else list(args)
        program = Path(str(executable or argv[0])).name
        if program == Path(sys.executable).name or program.startswith(PROCESS_NAMES):
            raise RuntimeError(
                f"a unit test starts no process ({program}): mark it @pytest.mark.system, or "
                "move it to tests/system (tests/conftest.py)"
            )
        return start(self, args, executable, *rest)

    monkeypatch.setattr(subprocess.Popen, "_execute_child", refuse)
    yield
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
        pytest.fail("a unit test left Ray running: use the local_ray fixture (integration)")


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh BITSWEEP_HOME (not created: commands must create it themselves)."""
    path = tmp_path / "bitsweep-data"
    monkeypatch.setenv("BITSWEEP_HOME", str(path))
    return path


def _admin():
    import sqlalchemy

    return sqlalchemy.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")


@contextlib.contextmanager
def _pg_databases() -> Iterator[callable]:
    import sqlalchemy

    engine = _admin()
    try:
        with engine.connect():
            pass
    except sqlalchemy.exc.OperationalError as e:
        if _in_ci():
            raise  # CI provides PostgreSQL: its absence is a failure there
        pytest.skip(f"no PostgreSQL answers at {PG_ADMIN_URL} (set BITSWEEP_TEST_PG): {e}")
    created: list[str] = []

    def make(prefix: str) -> str:
        name = f"bitsweep_test_{prefix}_{uuid.uuid4().hex[:8]}"
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
        created.append(name)
        return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"

    try:
        yield make
    finally:
        with engine.connect() as conn:
            for name in created:
                conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()


@pytest.fixture
def pg_database() -> Iterator[callable]:
    """A factory of throwaway PostgreSQL databases on 127.0.0.1; dropped after the test.

    PostgreSQL is part of the test environment: with `CI=true` (as `.ci/run` sets) a test that
    needs it fails, with the connection error, when it is absent; elsewhere it skips, saying
    so.
    """
    with _pg_databases() as make:
        yield make


@pytest.fixture(scope="module")
def module_pg_database() -> Iterator[callable]:
    """`pg_database` for a module's fixtures: dropped after the module."""
    with _pg_databases() as make:
        yield make


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """A local one-node Ray cluster for the module's in-process sweeps."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(
        address="local",  # a cluster of its own, never one another test left running
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    yield
    ray.shutdown()

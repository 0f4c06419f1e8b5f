"""The service's core, shared by the HTTP API, the page and the scheduler: settings, the
database of sweeps, the Ray jobs that run them, admission of a spec, and the reads of MLflow
and Optuna that the routes answer from. Knows nothing of HTTP: `service.http` shows its rows
in the API's models (`service.http.views`)."""

from __future__ import annotations

import logging
import sys
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from schemas.errors import FieldError
from schemas.names import Tag, tag_filter
from schemas.secrets import scrubbed
from schemas.sweep import SweepSpec
from service.db import Status, SweepRow, engine_for, sessions, sqlite_file
from service.jobs import LocalHead, RayJobs
from service.scheduler import Scheduler
from service.settings import ServiceSettings

log = logging.getLogger(__name__)

PLOTS_KEPT = 32  # Pareto plots kept, each of one benchmark (or sweep) at one store state

STORE_FIELDS = {
    "tracking_uri": "BITSWEEP_TRACKING_URI",
    "optuna_storage": "BITSWEEP_OPTUNA_STORAGE",
    "storage_path": "BITSWEEP_STORAGE_PATH",
}


class NotFound(FieldError):
    """A request naming something the service does not have (404)."""


class Conflict(FieldError):
    """A request the thing it names is in no state for (409)."""


class Unauthorized(FieldError):
    """A state-changing request without a valid token (401)."""


class Forbidden(FieldError):
    """A valid token asking for what it has no right to (403)."""


class Busy(FieldError):
    """A request the service has no room for now (503): submit again."""


class Service:
    """What the routes share: settings, database, Ray jobs, scheduler."""

    def __init__(self, settings: ServiceSettings, run_jobs: bool) -> None:
        self.settings = settings
        self.run_jobs = run_jobs
        self.engine = engine_for(settings.database)
        self.sessions = sessions(self.engine)
        self.head: LocalHead | None = None
        self._jobs: RayJobs | None = None
        self.scheduler = Scheduler(
            self.sessions,
            lambda: self.jobs,
            max_running=settings.max_concurrent_sweeps,
            finalize=self.finalize,
            locate=self.locate,
        )
        self._plots: OrderedDict[tuple[Any, ...], bytes] = OrderedDict()
        self._plots_lock = threading.Lock()

    # -- Ray -----------------------------------------------------------------------------------

    def start_ray(self) -> None:
        s = self.settings
        address = s.ray_address
        if address is None:
            self.head = LocalHead(s.home, cpus=s.ray_cpus)
            address = self.head.start()
        python = s.job_python or (sys.executable if s.embedded_ray else "python")
        self._jobs = RayJobs(address, python=python, env={"BITSWEEP_HOME": str(s.home)})

    @property
    def ray_address(self) -> str:
        return self._jobs.address if self._jobs is not None else (self.settings.ray_address or "")

    @property
    def jobs(self) -> RayJobs:
        if self._jobs is None:
            raise RuntimeError("this service runs no Ray jobs")
        return self._jobs

    # -- MLflow --------------------------------------------------------------------------------

    def locate(self, sweep_id: str) -> tuple[str, str, str] | None:
        found = self.read_runs(sweep_id)
        if found is None:
            return None
        return found.experiment_id, found.parent_run_id, found.parent_status

    def read_runs(self, sweep_id: str) -> Any:
        from runners.board import sweep_runs

        try:
            return sweep_runs(self.settings.tracking, sweep_id)
        except FieldError as e:
            if e.field == "tracking_uri" and not self.store_exists():
                return None  # no sweep has written yet
            raise

    def init_stores(self) -> None:
        """Create the MLflow store and the Optuna storage of the sweeps before any sweep runs:
        a sweep's job and the service reading a store it is still creating would both run its
        migrations."""
        from mlflow.tracking import MlflowClient

        from runners.board import is_database_uri

        s = self.settings
        for uri in (s.tracking, s.optuna):
            file = sqlite_file(uri)
            if file is not None:
                file.parent.mkdir(parents=True, exist_ok=True)
        if is_database_uri(s.tracking):
            MlflowClient(s.tracking).search_experiments(max_results=1)
        import optuna

        optuna.storages.RDBStorage(s.optuna)

    def store_exists(self) -> bool:
        file = sqlite_file(self.settings.tracking)
        return file is None or file.exists()

    def read_boards(self, **query: Any) -> list[Any]:
        """The leaderboards `query_leaderboard` reads for `query`: none before any sweep has
        written, NotFound for a benchmark or sweep that is not there."""
        from runners.board import query_leaderboard

        if not self.store_exists():
            if query.get("sweep_id") is not None:
                raise NotFound("sweep", f"no sweep {query['sweep_id']}")
            return []
        try:
            return query_leaderboard(self.settings.tracking, **query)
        except FieldError as e:
            if e.field == "dataset" and query.get("dataset") is None and query.get("model") is None:
                if query.get("sweep_id") is not None:
                    raise NotFound("sweep", f"no sweep {query['sweep_id']}") from None
                return []  # no benchmark yet
            if e.field in ("dataset", "sweep_id"):
                raise NotFound("sweep" if e.field == "sweep_id" else "dataset", e.reason) from None
            raise

    def finalize(self, row: SweepRow, status: Status) -> None:
        """A sweep that ended without finishing (cancelled, failed, lost): its parent run and
        every trial run left RUNNING are marked KILLED (FAILED for the parent of a failed
        sweep), and its Optuna trials left RUNNING are failed, so that nothing stays RUNNING."""
        if status == Status.succeeded:
            return
        found = self.read_runs(row.id)
        if found is None:
            return
        from mlflow.tracking import MlflowClient

        client = MlflowClient(self.settings.tracking)
        flt = f"{tag_filter(Tag.SWEEP_ID, row.id)} and attributes.status = 'RUNNING'"
        for run in client.search_runs([found.experiment_id], filter_string=flt, max_results=50000):
            end = (
                "FAILED"
                if status == Status.failed and run.info.run_id == found.parent_run_id
                else "KILLED"
            )
            client.set_tag(run.info.run_id, Tag.ENDED_BY, f"the service: sweep {status.value}")
            client.set_terminated(run.info.run_id, status=end)
        import optuna

        from runners.sweep.search import fail_lost_study_trials, study_name

        storage = optuna.storages.RDBStorage(self.settings.optuna)
        for strategy in row.spec.get("strategies", []):
            fail_lost_study_trials(storage, study_name(row.id, strategy["name"]))

    def job_log(self, row: SweepRow, tail: int) -> list[str]:
        """The last `tail` lines of the sweep's Ray job log, with any store password scrubbed
        (a sweep prints its stores masked; a driver's error may still quote one)."""
        if row.ray_job_id is None or not self.run_jobs:
            return []
        s = self.settings
        return scrubbed(self.jobs.logs(row.ray_job_id), [s.tracking, s.optuna]).splitlines()[-tail:]

    def run_link(self, experiment_id: str | None, run_id: str) -> str | None:
        ui = self.settings.mlflow_ui_url
        return f"{ui}/#/experiments/{experiment_id}/runs/{run_id}" if ui and experiment_id else None

    def pareto_png(self, dataset: str, model: str, sweep_id: str | None) -> bytes:
        """The Pareto plot of a benchmark's board (`runners.board.pareto_png`), drawn once per
        state of a database store and kept (the newest `PLOTS_KEPT`); drawn each time from a
        tracking server, whose state is not read."""
        from runners.board import pareto_png, store_version

        uri = self.settings.tracking
        version = store_version(uri)
        key = (dataset, model, sweep_id, version)
        with self._plots_lock:
            png = self._plots.get(key) if version is not None else None
            if png is not None:
                self._plots.move_to_end(key)
                return png
        png = pareto_png(uri, dataset=dataset, model=model, sweep_id=sweep_id)
        if version is not None:
            with self._plots_lock:
                self._plots[key] = png
                while len(self._plots) > PLOTS_KEPT:
                    self._plots.popitem(last=False)
        return png

    # -- admission -----------------------------------------------------------------------------

    def admit(self, spec: SweepSpec) -> SweepSpec:
        """The spec as the sweep will run it, after the checks the CLI makes (`plan_sweep`)
        and the service's own: its limits, its stores, its data roots. Raises FieldError."""
        s = self.settings
        for name, env in STORE_FIELDS.items():
            if getattr(spec, name) is not None:
                raise FieldError(name, f"is the service's to choose ({env}); leave it out")
        counts = [st.trials or spec.trials_per_strategy for st in spec.strategies]
        if sum(counts) > s.max_trials_per_sweep:
            over = next((i for i, st in enumerate(spec.strategies) if st.trials), None)
            name = f"strategies.{over}.trials" if over is not None else "trials_per_strategy"
            raise FieldError(
                name,
                f"the sweep asks for {sum(counts)} trials; this service runs at most "
                f"{s.max_trials_per_sweep} per sweep",
            )
        if spec.total_trials() > s.max_trials_per_sweep:
            raise FieldError(
                "confirmation.seeds",
                f"with its confirmations the sweep asks for {spec.total_trials()} trials; this "
                f"service runs at most {s.max_trials_per_sweep} per sweep",
            )
        dataset = checked_dataset(spec.dataset, s.data_roots)
        data = spec.model_dump(mode="json")
        data.update(
            dataset=dataset,
            tracking_uri=s.tracking,
            optuna_storage=s.optuna,
            storage_path=s.tune_storage,
        )
        filled = SweepSpec.model_validate(data)
        from runners.sweep.plan import plan_sweep

        plan_sweep(filled, home=s.home, check_stores=False)
        return filled


def checked_dataset(ref: str, roots: list[Path]) -> str:
    """A dataset reference a request may give: a built-in, or a format and a path under one of
    the data roots (after symlinks; no '..', no '~'). Returns it with the path resolved."""
    kind, sep, arg = ref.partition(":")
    if not sep:
        return ref
    raw = Path(arg)
    if arg.startswith("~") or ".." in raw.parts:
        raise FieldError("dataset", "a dataset path may not contain '..' or start with '~'")
    if not roots:
        raise FieldError(
            "dataset", "this service takes no dataset files (no BITSWEEP_DATA_ROOTS set)"
        )
    if "\x00" in arg or any(0xD800 <= ord(c) <= 0xDFFF for c in arg):
        raise FieldError("dataset", "a dataset path may not hold a NUL or a lone surrogate")
    candidates = [raw] if raw.is_absolute() else [root / raw for root in roots]
    for candidate in candidates:
        real = candidate.resolve()
        if any(real.is_relative_to(root) for root in roots) and real.exists():
            if real.is_dir():
                # A folder's files are read one by one: each must stay under a root too.
                for f in sorted(real.rglob("*")):
                    target = f.resolve()
                    if not any(target.is_relative_to(root) for root in roots):
                        raise FieldError(
                            "dataset",
                            f"{arg} holds {f.relative_to(real)}, which links outside the "
                            "service's data roots",
                        )
            return f"{kind}:{real}"
    raise FieldError("dataset", f"{arg} is not a file or folder under the service's data roots")


__all__ = [
    "Busy",
    "Conflict",
    "Forbidden",
    "NotFound",
    "Service",
    "Unauthorized",
    "checked_dataset",
]

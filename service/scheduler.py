"""The queue and the job follower: keeps each sweep's row in step with its Ray job.

One pass (`Scheduler.step`) does, in order:
1. every running sweep: ask Ray for its job; a finished job finishes the row (succeeded,
   failed, or cancelled when it was stopped); a job Ray does not know (a new head after the
   old one stopped) is submitted again, to continue the sweep where it stopped (`--resume`);
   a cancel requested is sent to Ray;
2. the queued sweeps, oldest first, are submitted while fewer than `max_concurrent_sweeps`
   run.

A sweep's row is marked running with its job id *before* the job is submitted, and the job id
is deterministic, so a service stopped at any point resubmits nothing that Ray already has: at
its next pass it asks Ray about that id. The service runs a pass every `poll_seconds`, and one
at start, which is how a restarted service picks up what was running.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from service.db import Status, SweepRow, utcnow
from service.jobs import JobState, RayJobs

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3  # submissions of one sweep, when Ray keeps losing its job


FOLLOW_ATTEMPTS = 3  # passes in a row that may fail to follow a sweep before it is failed
SUBMIT_ATTEMPTS = 5  # passes that may submit a sweep again after an error Ray calls transient
# What Ray's job API answers when it may accept the same job a moment later.
TRANSIENT = ("try again later", "no available agent", "connection refused", "timed out")


def transient(error: BaseException) -> bool:
    """Whether Ray's job API refused a submission for now, not for good."""
    text = str(error).lower()
    return isinstance(error, ConnectionError | TimeoutError) or any(t in text for t in TRANSIENT)


def job_id(sweep_id: str, attempt: int) -> str:
    return f"bitsweep-{sweep_id}" if attempt <= 1 else f"bitsweep-{sweep_id}-{attempt}"


def attempt_of(sweep_id: str, job: str) -> int:
    tail = job.removeprefix(f"bitsweep-{sweep_id}")
    return int(tail[1:]) if tail.startswith("-") and tail[1:].isdigit() else 1


def job_error(state: JobState, logs: str) -> str:
    """Why a job failed: the sweep's own `error:` line when it printed one, else Ray's."""
    lines = [line.strip() for line in logs.splitlines() if line.strip()]
    mine = [line for line in lines if line.startswith("error: ")]
    if mine:
        return mine[-1].removeprefix("error: ")[:2000]
    return (state.message or "the job failed")[:2000]


class Scheduler:
    """Submits queued sweeps and follows running ones (see the module's docstring)."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        jobs: Callable[[], RayJobs],
        *,
        max_running: int,
        finalize: Callable[[SweepRow, Status], None],
        locate: Callable[[str], tuple[str, str, str] | None],
    ) -> None:
        self.sessions = sessions
        self._jobs = jobs
        self.max_running = max_running
        self.finalize = finalize
        self.locate = locate
        self.lock = threading.Lock()
        self.unfollowed: dict[str, int] = {}  # sweep id -> passes in a row it failed to follow
        self.submit_tries: dict[str, int] = {}  # sweep id -> submissions refused for now

    @property
    def jobs(self) -> RayJobs:
        return self._jobs()

    def step(self) -> None:
        with self.lock:
            self._follow()
            self._start_queued()

    # -- running sweeps ------------------------------------------------------------------------

    def _follow(self) -> None:
        with self.sessions() as s:
            ids = s.scalars(
                select(SweepRow.id).where(SweepRow.status == Status.running).order_by(SweepRow.seq)
            ).all()
        for sid in ids:
            try:
                self.follow(sid)
            except Exception as e:  # one sweep's trouble must not stop the others being followed
                n = self.unfollowed[sid] = self.unfollowed.get(sid, 0) + 1
                if n < FOLLOW_ATTEMPTS:
                    log.warning(
                        "following sweep %s failed (%d of %d): %s", sid, n, FOLLOW_ATTEMPTS, e
                    )
                    continue
                # A row no pass can follow would hold its slot, and the queue, for good.
                log.error("sweep %s could not be followed %d times; it failed: %s", sid, n, e)
                try:
                    self._finish(sid, Status.failed, f"the service could not follow its job: {e}")
                except Exception:
                    log.exception("sweep %s could not be marked failed", sid)
            else:
                self.unfollowed.pop(sid, None)

    def follow(self, sweep_id: str) -> None:
        with self.sessions() as s:
            row = s.get(SweepRow, sweep_id)
            if row is None or row.status != Status.running or row.ray_job_id is None:
                return
            job = row.ray_job_id
            cancel = row.cancel_requested
            known = row.parent_run_id is not None
        if not known:
            self.record_location(sweep_id)
        state = self.jobs.state(job)
        if state is None:
            if cancel:
                self._finish(sweep_id, Status.cancelled, None)
                return
            self._resubmit(sweep_id, job)
            return
        if cancel and not state.final:
            self.jobs.stop(job)
            return
        if not state.final:
            return
        if state.status == "SUCCEEDED":
            self._finish(sweep_id, Status.succeeded, None)
        elif state.status == "STOPPED":
            self._finish(sweep_id, Status.cancelled, None if cancel else state.message)
        else:
            self._finish(sweep_id, Status.failed, job_error(state, self.jobs.logs(job)))

    def _resubmit(self, sweep_id: str, job: str) -> None:
        """Ray does not know the job: it was never submitted (the service stopped in between)
        or the cluster lost it (a new head). Submit it (again), continuing the sweep."""
        attempt = attempt_of(sweep_id, job)
        parent = self.record_location(sweep_id)
        if parent == "FINISHED":  # it ended before its job was lost
            self._finish(sweep_id, Status.succeeded, None)
            return
        started = parent is not None
        with self.sessions() as s:
            row = s.get(SweepRow, sweep_id)
            assert row is not None
            spec = row.spec
        if started:
            attempt += 1
            if attempt > MAX_ATTEMPTS:
                self._finish(
                    sweep_id,
                    Status.failed,
                    f"the Ray cluster lost the sweep's job {attempt - 1} times",
                )
                return
            job = job_id(sweep_id, attempt)
            with self.sessions() as s, s.begin():
                row = s.get(SweepRow, sweep_id)
                assert row is not None
                row.ray_job_id = job
        log.info("submitting sweep %s as Ray job %s", sweep_id, job)
        self.jobs.submit(job, sweep_id, spec, resume=started)

    def record_location(self, sweep_id: str) -> str | None:
        """Record the sweep's MLflow experiment and parent run once it has them; the parent
        run's status, or None when the sweep has not started writing."""
        found = self.locate(sweep_id)
        if found is None:
            return None
        with self.sessions() as s, s.begin():
            row = s.get(SweepRow, sweep_id)
            if row is not None and row.parent_run_id is None:
                row.experiment_id, row.parent_run_id = found[:2]
        return found[2]

    def _finish(self, sweep_id: str, status: Status, error: str | None) -> None:
        self.record_location(sweep_id)
        with self.sessions() as s, s.begin():
            row = s.get(SweepRow, sweep_id)
            assert row is not None
            row.status = status
            row.error = error
            row.finished_at = utcnow()
        self.finalize(row, status)

    # -- the queue -----------------------------------------------------------------------------

    def _start_queued(self) -> None:
        while True:
            with self.sessions() as s, s.begin():
                running = s.scalar(
                    select(func.count())
                    .select_from(SweepRow)
                    .where(SweepRow.status == Status.running)
                )
                if (running or 0) >= self.max_running:
                    return
                row = s.scalars(
                    select(SweepRow)
                    .where(SweepRow.status == Status.queued)
                    .order_by(SweepRow.seq)
                    .limit(1)
                ).first()
                if row is None:
                    return
                row.status = Status.running
                row.started_at = utcnow()
                row.ray_job_id = job_id(row.id, 1)
                sweep_id, spec = row.id, row.spec
            try:
                log.info("submitting sweep %s", sweep_id)
                self.jobs.submit(job_id(sweep_id, 1), sweep_id, spec, resume=False)
            except Exception as e:
                tries = self.submit_tries[sweep_id] = self.submit_tries.get(sweep_id, 0) + 1
                if transient(e) and tries < SUBMIT_ATTEMPTS:
                    # Ray said to try again (a head whose agent is still starting): the sweep
                    # goes back to the head of the queue for the next pass.
                    log.warning("submitting sweep %s: %s; trying again (%d)", sweep_id, e, tries)
                    with self.sessions() as s, s.begin():
                        row = s.get(SweepRow, sweep_id)
                        if row is not None:
                            row.status, row.started_at, row.ray_job_id = Status.queued, None, None
                    return
                log.exception("submitting sweep %s failed", sweep_id)
                self._finish(sweep_id, Status.failed, f"submitting the Ray job failed: {e}")
            else:
                self.submit_tries.pop(sweep_id, None)

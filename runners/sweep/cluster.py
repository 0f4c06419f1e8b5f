"""The cluster a sweep runs on: joined only when it answers, asked only for what it has.

`reachable_address` refuses, within seconds, a Ray address where nothing answers (Ray itself
retries a bare address forever and a `ray://` one for about 40 s), and sets aside a stale
`/tmp/ray/ray_current_cluster` (left by a killed `ray start` or test cluster), which
`ray.init()` would otherwise join and wait on forever. `check_resources` refuses a trial that
no node of the cluster could ever hold (`gpu: 1` on CPU nodes, `cpu: 64` on 2 cores), where
Tune would wait forever; resources that exist but are busy are waited for.

`ClusterWatch` notices a cluster lost while a sweep runs (its head gone: the GCS, or the Ray
Client server of a `ray://` address, no longer answers). Ray itself ends a driver whose GCS
has been gone for `RAY_gcs_rpc_server_reconnect_timeout_s` (60 s), at once and without a word
to the sweep, whose runs would stay RUNNING; the watch declares the cluster lost sooner
(`BITSWEEP_CLUSTER_LOST_SECONDS`, 30 s), so that the sweep can record itself as interrupted
first (`runners.sweep.run`).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from runners.sweep.plan import Plan
from runners.sweep.space import SpecError
from schemas.names import CLUSTER_LOST_ENV

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 3.0
ADDRESS_FILE = Path("/tmp/ray/ray_current_cluster")  # where `ray start` leaves its address

LOST_ENV = CLUSTER_LOST_ENV
LOST_DEFAULT_S = 30.0
# How long Ray keeps a driver whose GCS does not answer, and what the sweep keeps of that time
# to record its interruption.
RAY_RECONNECT_ENV = "RAY_gcs_rpc_server_reconnect_timeout_s"
RAY_RECONNECT_DEFAULT_S = 60.0
RECORD_MARGIN_S = 10.0
EXIT_CLUSTER_LOST = 75  # EX_TEMPFAIL: the sweep can go on later (--resume)


def _host_port(address: str) -> tuple[str, int] | None:
    rest = address.split("://", 1)[-1].split("/", 1)[0]
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]") or "127.0.0.1", int(port)


def _answers(host: str, port: int) -> str | None:
    """None when a TCP connection to host:port opens, else why not."""
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            return None
    except OSError as e:
        return e.strerror or type(e).__name__


def reachable_address(address: str | None, field: str = "--ray-address") -> str | None:
    """The address to give `ray.init`: `address` (or `RAY_ADDRESS`) once it answers, or
    None (a new local cluster, or a live one `ray start` left here). Raises SpecError."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address in (None, "local"):
        if address is None and ADDRESS_FILE.exists():
            hp = _host_port(ADDRESS_FILE.read_text().strip())
            if hp is not None and _answers(*hp) is not None:
                log.warning("%s names a Ray cluster that is gone; starting a new one", ADDRESS_FILE)
                return "local"
        return address
    if address == "auto":
        return address
    hp = _host_port(address)
    if hp is None:
        raise SpecError(field, f"{address!r} is not HOST:PORT or ray://HOST:PORT")
    why = _answers(*hp)
    if why is not None:
        raise SpecError(
            field, f"no Ray cluster answers at {address} ({why}, {CONNECT_TIMEOUT_S:g} s)"
        )
    return address


def check_resources(plan: Plan) -> None:
    """Refuse a trial that no alive node of the cluster can hold (SpecError naming the
    resource, what each trial asks and what the nodes have)."""
    import ray

    res = plan.spec.resources
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    if any(n.get("CPU", 0.0) >= res.cpu and n.get("GPU", 0.0) >= res.gpu for n in nodes):
        return
    most_cpu = max((n.get("CPU", 0.0) for n in nodes), default=0.0)
    most_gpu = max((n.get("GPU", 0.0) for n in nodes), default=0.0)
    if res.gpu > most_gpu:
        field, asked, most, what = "resources.gpu", res.gpu, most_gpu, "GPUs"
    elif res.cpu > most_cpu:
        field, asked, most, what = "resources.cpu", res.cpu, most_cpu, "CPUs"
    else:
        field, asked, most, what = "resources", res.cpu, most_cpu, "CPUs beside its GPUs"
    raise SpecError(
        field,
        f"each trial asks for {asked:g} {what}; no node of the cluster has that many "
        f"({len(nodes)} node{'s' if len(nodes) != 1 else ''}, at most {most:g} {what} on one)",
    )


def lost_after() -> float:
    """Seconds of silence after which a sweep's cluster counts as lost (`LOST_ENV`).
    Raises SpecError for a value that is not a number of seconds, or that leaves the sweep no
    time to record itself before Ray ends the driver."""
    raw = os.environ.get(LOST_ENV, "").strip()
    if not raw:
        value = LOST_DEFAULT_S
    else:
        try:
            value = float(raw)
        except ValueError:
            raise SpecError(LOST_ENV, f"{raw!r} is not a number of seconds") from None
        if not value > 0:  # also refuses NaN
            raise SpecError(LOST_ENV, f"must be more than 0 seconds, not {raw}")
    try:
        ray_limit = float(os.environ.get(RAY_RECONNECT_ENV) or RAY_RECONNECT_DEFAULT_S)
    except ValueError:
        ray_limit = RAY_RECONNECT_DEFAULT_S  # Ray's own check of its setting stands
    most = ray_limit - RECORD_MARGIN_S
    if value > most:
        if not raw:  # Ray's timeout set lower than the default: follow it
            return max(1.0, most)
        raise SpecError(
            LOST_ENV,
            f"{value:g} s leaves no time to record the sweep: Ray ends the driver after "
            f"{ray_limit:g} s without its cluster ({RAY_RECONNECT_ENV}); at most {most:g} s",
        )
    return value


def head_endpoint(address: str | None) -> tuple[str, int] | None:
    """The head's (host, port) that tells whether the cluster is there: the Ray Client server
    of a `ray://` address, else the GCS of the cluster this process has joined."""
    if address is not None and address.startswith("ray://"):
        return _host_port(address)
    import ray

    try:
        return _host_port(ray.get_runtime_context().gcs_address)
    except Exception as e:  # no GCS to watch (a Ray without one): nothing is watched
        log.warning("the Ray cluster's head is not watched: %s", e)
        return None


class ClusterLost(Exception):
    """The sweep's Ray cluster stopped answering; the sweep is interrupted and resumable."""

    exit_code = EXIT_CLUSTER_LOST


class ClusterWatch:
    """Probe the head every `interval` seconds while a sweep runs (a TCP connection, which
    costs the head nothing); once it has not answered for `lost_after` seconds, call
    `on_lost(seconds)` once, from the watch's thread.

    `settle` is for the sweep's own thread once its experiment has ended, with or without an
    error: an experiment can end because its cluster went away, and must then not be
    recorded as finished (or failed) while the watch records it as interrupted.
    """

    def __init__(
        self,
        endpoint: tuple[str, int],
        lost_after: float,
        on_lost: Callable[[float], None],
        interval: float = 1.0,
    ) -> None:
        self.endpoint = endpoint
        self.lost_after = lost_after
        self.on_lost = on_lost
        self.interval = interval
        self.fired = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bitsweep-cluster-watch")

    @property
    def where(self) -> str:
        return f"{self.endpoint[0]}:{self.endpoint[1]}"

    def _answers(self) -> bool:
        return _answers(*self.endpoint) is None

    def _run(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(self.interval):
            if self._answers():
                last = time.monotonic()
            elif time.monotonic() - last >= self.lost_after:
                log.error("the Ray cluster at %s is lost", self.where)
                self.fired.set()
                self.on_lost(time.monotonic() - last)
                return

    def __enter__(self) -> ClusterWatch:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self.fired.is_set():
            self._stop.set()
        self._thread.join()

    def settle(self) -> None:
        """Return once the head answers. Where it does not, wait for the watch to declare the
        cluster lost (its `on_lost` records the sweep), and raise ClusterLost."""
        while not self.fired.is_set():
            if self._answers():
                return
            self.fired.wait(self.interval)
        self._thread.join()
        raise ClusterLost(f"the Ray cluster at {self.where} was lost")


__all__ = [
    "EXIT_CLUSTER_LOST",
    "LOST_ENV",
    "ClusterLost",
    "ClusterWatch",
    "check_resources",
    "head_endpoint",
    "lost_after",
    "reachable_address",
]

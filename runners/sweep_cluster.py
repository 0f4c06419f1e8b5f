"""The cluster a sweep runs on: joined only when it answers, asked only for what it has.

`reachable_address` refuses, within seconds, a Ray address where nothing answers (Ray itself
retries a bare address forever and a `ray://` one for about 40 s), and sets aside a stale
`/tmp/ray/ray_current_cluster` (left by a killed `ray start` or test cluster), which
`ray.init()` would otherwise join and wait on forever. `check_resources` refuses a trial that
no node of the cluster could ever hold (`gpu: 1` on CPU nodes, `cpu: 64` on 2 cores), where
Tune would wait forever; resources that exist but are busy are waited for.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

from runners.search import SpecError
from runners.sweep_plan import Plan

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 3.0
ADDRESS_FILE = Path("/tmp/ray/ray_current_cluster")  # where `ray start` leaves its address


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


__all__ = ["check_resources", "reachable_address"]

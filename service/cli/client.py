"""A Python client of the bitsweep service (httpx), with the API's own models.

    from service.cli.client import Client
    with Client("http://127.0.0.1:8000", token="...") as c:
        sweep = c.submit(spec)            # a SweepSpec, or a dict of its fields
        c.sweep(sweep.id).status          # queued, running, succeeded, failed, cancelled

A refusal (4xx) raises `ServiceRefused`, a `FieldError` naming the field and the reason; a
service that cannot be reached raises `ServiceUnreachable`.
"""

from __future__ import annotations

import os
import time
from typing import Any

import httpx

from schemas.errors import FieldError
from schemas.names import TOKEN_ENV
from schemas.sweep import SweepSpec
from service.errors import ServiceUnreachable
from service.http.api import Health, Leaderboard, StrategyView, SweepDetail, SweepPage, SweepView


class ServiceRefused(FieldError):
    """The service refused the request: `status` (HTTP), `field` and `reason`."""

    def __init__(self, field: str, reason: str, status: int = 422) -> None:
        super().__init__(field, reason)
        self.status = status

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.field, self.reason, self.status))


class Client:
    """The service's API at `url`; `token` (default `$BITSWEEP_TOKEN`) for state changes."""

    def __init__(self, url: str, *, token: str | None = None, timeout: float = 60.0) -> None:
        token = token if token is not None else os.environ.get(TOKEN_ENV)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def _call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            r = self.http.request(method, path, **kw)
        except httpx.TransportError as e:
            raise ServiceUnreachable(self.url, _why(e)) from None
        if r.status_code >= 400:
            try:
                body = r.json()
                field, reason = str(body["field"]), str(body["reason"])
            except (ValueError, KeyError, TypeError):
                field, reason = "request", f"HTTP {r.status_code}: {r.text[:200]}"
            raise ServiceRefused(field, reason, r.status_code)
        return r

    # -- the API -------------------------------------------------------------------------------

    def health(self) -> Health:
        return Health.model_validate(self._call("GET", "/health").json())

    def strategies(self) -> list[StrategyView]:
        return [StrategyView.model_validate(d) for d in self._call("GET", "/strategies").json()]

    def submit(self, spec: SweepSpec | dict[str, Any]) -> SweepView:
        body = (
            spec.model_dump(mode="json", exclude_unset=True)
            if isinstance(spec, SweepSpec)
            else spec
        )
        return SweepView.model_validate(self._call("POST", "/sweeps", json=body).json())

    def sweeps(self, *, status: str | None = None, offset: int = 0, limit: int = 50) -> SweepPage:
        params: dict[str, Any] = {"offset": offset, "limit": limit}
        if status is not None:
            params["status"] = status
        return SweepPage.model_validate(self._call("GET", "/sweeps", params=params).json())

    def sweep(self, sweep_id: str) -> SweepDetail:
        return SweepDetail.model_validate(self._call("GET", f"/sweeps/{sweep_id}").json())

    def cancel(self, sweep_id: str) -> SweepView:
        return SweepView.model_validate(self._call("POST", f"/sweeps/{sweep_id}/cancel").json())

    def logs(self, sweep_id: str, tail: int = 1000) -> str:
        return self._call("GET", f"/sweeps/{sweep_id}/logs", params={"tail": tail}).text

    def leaderboard(self, **query: Any) -> Leaderboard:
        params = {k: v for k, v in query.items() if v is not None}
        return Leaderboard.model_validate(self._call("GET", "/leaderboard", params=params).json())

    def pareto_png(self, dataset: str, model: str, sweep: str | None = None) -> bytes:
        params = {"dataset": dataset, "model": model, **({"sweep": sweep} if sweep else {})}
        return self._call("GET", "/leaderboard/pareto.png", params=params).content

    def wait(self, sweep_id: str, *, timeout: float = 3600.0, poll: float = 2.0) -> SweepDetail:
        """The sweep once it has ended (succeeded, failed or cancelled)."""
        deadline = time.monotonic() + timeout
        while True:
            detail = self.sweep(sweep_id)
            if detail.status not in ("queued", "running"):
                return detail
            if time.monotonic() > deadline:
                raise TimeoutError(f"sweep {sweep_id} is still {detail.status}")
            time.sleep(poll)


def _why(e: httpx.TransportError) -> str:
    """What a connection met, in a few words: httpx's message, else the kind of failure."""
    text = " ".join(str(e).split())
    return text or type(e).__name__


__all__ = ["TOKEN_ENV", "Client", "ServiceRefused", "ServiceUnreachable"]

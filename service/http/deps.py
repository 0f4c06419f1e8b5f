"""What the routes depend on, in one place: the app's `Service`, the caller's token name
(`Caller`), a sweep id in a path (`SweepId`), a sweep's row, who may cancel it, and the
admission of submissions (`Admissions`)."""

from __future__ import annotations

import hmac
import threading
from typing import Annotated

from fastapi import Depends, Request
from fastapi import Path as PathParam
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from schemas.names import SWEEP_ID_ANCHORED
from schemas.sweep import SweepSpec
from service.core import Busy, Forbidden, NotFound, Service, Unauthorized
from service.db import SweepRow

# Submissions checked at once (each loads its dataset and counts its model's parameters), and
# how long one more waits for its turn before a 503.
MAX_ADMITTING, ADMIT_WAIT_S = 2, 30.0
SWEEP_ID = SWEEP_ID_ANCHORED


def get_service(request: Request) -> Service:
    """The app's `Service`, which `create_app` keeps on `app.state`."""
    service: Service = request.app.state.service
    return service


ServiceDep = Annotated[Service, Depends(get_service)]

# The bearer scheme, named in the OpenAPI document. Every refusal is the service's own
# (`token_name`): with auto_error=False a missing header, another scheme or an empty token
# gives None.
bearer = HTTPBearer(
    auto_error=False,
    description="a token of BITSWEEP_TOKENS; state changes need one when tokens are set",
)


def token_name(
    service: ServiceDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> str:
    """The name of the request's token; every state change needs one when tokens are set."""
    settings = service.settings
    if not settings.tokens:
        return "anonymous"
    if credentials is None:
        raise Unauthorized("authorization", "a bearer token is required")
    given = credentials.credentials.encode()  # stripped by HTTPBearer
    found = None
    for name, token in settings.tokens.items():  # every token compared, in constant time
        if hmac.compare_digest(given, token.encode()):
            found = name
    if found is None:
        raise Unauthorized("authorization", "the token is not valid")
    return found


Caller = Annotated[str, Depends(token_name)]


def read_access(
    service: ServiceDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> None:
    """With `reads_need_token` (BITSWEEP_READS_NEED_TOKEN), a read needs a valid token as a
    state change does; without it anyone who reaches the port may read."""
    if service.settings.reads_need_token:
        token_name(service, credentials)


Reader = Depends(read_access)
SweepId = Annotated[str, PathParam(pattern=SWEEP_ID, max_length=128)]


def get_row(service: Service, sweep_id: str) -> SweepRow:
    """The sweep's row; NotFound (404) when there is none. Called from a route's body, after
    FastAPI has checked every parameter (a dependency would answer 404 before a 422)."""
    with service.sessions() as s:
        row = s.get(SweepRow, sweep_id)
    if row is None:
        raise NotFound("sweep_id", f"no sweep {sweep_id}")
    return row


def may_cancel(service: Service, caller: str, row: SweepRow) -> None:
    """A token cancels the sweeps it submitted; an admin token (`BITSWEEP_ADMINS`) any.
    Without tokens (`anonymous`), anyone on the machine may, as anyone may submit."""
    if caller in (row.submitted_by, "anonymous") or caller in service.settings.admins:
        return
    raise Forbidden(
        "authorization",
        f"sweep {row.id} was submitted by {row.submitted_by}; token {caller} may cancel "
        "its own sweeps (an admin token, BITSWEEP_ADMINS, any)",
    )


class Admission:
    """An app's admission of submissions: `MAX_ADMITTING` specs checked at once, the next
    waiting up to `ADMIT_WAIT_S` before Busy (503); and one allocation of a sweep's place in
    the queue at a time (`allocating`)."""

    def __init__(self) -> None:
        self.checking = threading.BoundedSemaphore(MAX_ADMITTING)
        self.allocating = threading.Lock()

    def admit(self, service: Service, spec: SweepSpec) -> SweepSpec:
        """`Service.admit`, when a turn comes."""
        if not self.checking.acquire(timeout=ADMIT_WAIT_S):
            raise Busy("spec", f"{MAX_ADMITTING} submissions are being checked; submit again")
        try:
            return service.admit(spec)
        finally:
            self.checking.release()


def get_admission(request: Request) -> Admission:
    """The app's `Admission`, which `create_app` keeps on `app.state`."""
    admission: Admission = request.app.state.admission
    return admission


Admissions = Annotated[Admission, Depends(get_admission)]

__all__ = [
    "ADMIT_WAIT_S",
    "MAX_ADMITTING",
    "SWEEP_ID",
    "Admission",
    "Admissions",
    "Caller",
    "Reader",
    "ServiceDep",
    "SweepId",
    "bearer",
    "get_admission",
    "get_row",
    "get_service",
    "may_cancel",
    "read_access",
    "token_name",
]

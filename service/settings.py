"""The service's settings: environment variables `BITSWEEP_*`, or an env file.

Every setting has an embedded default, so that `bitsweep serve` on a laptop needs none: the
service's database, the MLflow store and the Optuna storage are SQLite files under
`BITSWEEP_HOME`, and the service starts a local Ray head of its own for the sweeps it submits.
On a cluster the same service is pointed at PostgreSQL, an MLflow tracking server and the Ray
head's dashboard by setting addresses alone.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from schemas.errors import FieldError
from schemas.home import DEFAULT_HOME, Home

ENV_FILE_VAR = "BITSWEEP_ENV_FILE"
# Variables of bitsweep's other commands, which a shell that serves may also hold.
OTHER_VARS = frozenset(
    {
        ENV_FILE_VAR,
        "BITSWEEP_TOKEN",  # `bitsweep submit`'s token
        "BITSWEEP_SERVER",  # `bitsweep submit|status`'s server
        "BITSWEEP_CLUSTER_LOST_SECONDS",  # a sweep's
        "BITSWEEP_STORE_RETRY_SECONDS",  # a sweep's
        "BITSWEEP_TEST_PG",  # the tests'
    }
)
TOKEN_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")
MIN_TOKEN_LENGTH = 16
# A Host header name the service may answer: a name or IPv4 address (`*.` for subdomains),
# or an IPv6 address in brackets.
HOST_NAME = re.compile(r"(\*\.)?[A-Za-z0-9]([A-Za-z0-9.-]{0,252})|\[[0-9A-Fa-f:.]{2,45}\]")


class ServiceSettings(BaseSettings):
    """What the service reads at start. Each field is the environment variable
    `BITSWEEP_<FIELD>` (case-insensitive)."""

    model_config = SettingsConfigDict(
        env_prefix="BITSWEEP_", extra="ignore", validate_default=True, frozen=True
    )

    home: Path = Field(
        Path(DEFAULT_HOME),
        description="data directory: the default stores, sweep states, job logs",
    )
    database_url: str | None = Field(
        None, description="the service's own database (default sqlite:///HOME/service.db)"
    )
    ray_address: str | None = Field(
        None,
        description="the Ray dashboard that takes job submissions (http://HOST:8265); "
        "unset: the service starts a local Ray head for itself",
    )
    ray_cpus: int | None = Field(
        None, ge=1, le=4096, description="CPUs of the local Ray head (default: all)"
    )
    tracking_uri: str | None = Field(
        None, description="MLflow store of every sweep (default sqlite:///HOME/mlflow.db)"
    )
    optuna_storage: str | None = Field(
        None, description="Optuna storage of every sweep (default sqlite:///HOME/optuna.db)"
    )
    storage_path: str | None = Field(
        None, description="Ray Tune storage of every sweep (default HOME/ray)"
    )
    mlflow_ui_url: str | None = Field(
        None, description="the MLflow UI, for links to experiments and runs"
    )
    tokens: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict,
        description="API tokens as comma-separated name=token pairs; every request that "
        "changes state must carry one",
    )
    admins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="token names (comma-separated) that may cancel any sweep; the others "
        "cancel the sweeps they submitted",
    )
    reads_need_token: bool = Field(
        False,
        description="every read (the sweeps, their specs and logs, the leaderboards, the page) "
        "needs a token too; /health stays open for probes",
    )
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Host header names the service answers (comma-separated), against DNS "
        "rebinding; default: loopback names when it listens on loopback, else any",
    )
    data_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="folders (separated by ':') under which a spec may name dataset files",
    )
    max_trials_per_sweep: int = Field(200, ge=1, le=100_000)
    max_concurrent_sweeps: int = Field(1, ge=1, le=1000)
    max_request_bytes: int = Field(65_536, ge=1024, le=16 * 1024 * 1024)
    body_timeout_seconds: float = Field(
        30.0, gt=0, le=600, description="how long a request's body may take to arrive (408)"
    )
    poll_seconds: float = Field(2.0, gt=0, le=60, description="how often jobs are followed")
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="origins allowed by CORS (comma-separated); none"
    )
    job_python: str | None = Field(
        None,
        description="the Python that runs `bitsweep sweep` on the Ray head (default: this "
        "service's own for a local head, `python` on a remote one)",
    )

    @field_validator("home")
    @classmethod
    def _home(cls, v: Path) -> Path:
        return v.expanduser().resolve()

    @field_validator("tokens", mode="before")
    @classmethod
    def _tokens(cls, v: Any) -> Any:
        if not isinstance(v, str):
            return v
        pairs: dict[str, str] = {}
        for item in (p.strip() for p in v.split(",")):
            if not item:
                continue
            name, sep, token = item.partition("=")
            name, token = name.strip(), token.strip()
            if not sep or not name or not token:
                raise ValueError(f"{item.split('=')[0]!r}...: each token must be name=token")
            if name in pairs:
                raise ValueError(f"token name {name!r} is given twice")
            pairs[name] = token
        return pairs

    @field_validator("tokens")
    @classmethod
    def _token_values(cls, v: dict[str, str]) -> dict[str, str]:
        for name, token in v.items():
            if not set(name) <= TOKEN_NAME_CHARS or len(name) > 64:
                raise ValueError(f"token name {name!r}: letters, digits, '_', '.', '-' only")
            if len(token) < MIN_TOKEN_LENGTH:
                raise ValueError(f"token {name!r} is shorter than {MIN_TOKEN_LENGTH} characters")
        if len(set(v.values())) < len(v):
            raise ValueError("two token names share one token")
        return v

    @field_validator("admins", mode="before")
    @classmethod
    def _admins(cls, v: Any) -> Any:
        return [n.strip() for n in v.split(",") if n.strip()] if isinstance(v, str) else v

    @field_validator("admins")
    @classmethod
    def _admins_are_tokens(cls, v: list[str], info: ValidationInfo) -> list[str]:
        tokens = info.data.get("tokens") or {}
        unknown = [n for n in v if n not in tokens]
        if unknown:
            raise ValueError(f"{unknown[0]!r} names no token of BITSWEEP_TOKENS")
        return v

    @field_validator("reads_need_token")
    @classmethod
    def _reads_need_tokens(cls, v: bool, info: ValidationInfo) -> bool:
        if v and not info.data.get("tokens"):
            raise ValueError("reads can need a token only when BITSWEEP_TOKENS is set")
        return v

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _hosts(cls, v: Any) -> Any:
        return [h.strip() for h in v.split(",") if h.strip()] if isinstance(v, str) else v

    @field_validator("allowed_hosts")
    @classmethod
    def _host_names(cls, v: list[str]) -> list[str]:
        for host in v:
            if not HOST_NAME.fullmatch(host):
                raise ValueError(f"{host!r} is not a host name (a name, an address, or *.domain)")
        return v

    @field_validator("data_roots", mode="before")
    @classmethod
    def _roots(cls, v: Any) -> Any:
        if isinstance(v, str):
            return [p for p in v.split(os.pathsep) if p.strip()]
        return v

    @field_validator("data_roots")
    @classmethod
    def _resolve_roots(cls, v: list[Path]) -> list[Path]:
        roots = [p.expanduser().resolve() for p in v]
        for given, root in zip(v, roots, strict=True):
            if not root.is_dir():  # a typo would refuse every dataset file, saying nothing
                raise ValueError(f"{given} is not a folder")
        return roots

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _origins(cls, v: Any) -> Any:
        if isinstance(v, str):
            return [p.strip() for p in v.split(",") if p.strip()]
        return v

    @field_validator("ray_address", "mlflow_ui_url")
    @classmethod
    def _http(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// address")
        return v.rstrip("/") if v else v

    # -- what the settings imply ---------------------------------------------------------------

    @property
    def database(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'service.db'}"

    @property
    def tracking(self) -> str:
        return self.tracking_uri or Home(self.home).tracking_uri

    @property
    def optuna(self) -> str:
        return self.optuna_storage or Home(self.home).optuna_uri

    @property
    def tune_storage(self) -> str:
        return self.storage_path or str(Home(self.home).ray)

    @property
    def embedded_ray(self) -> bool:
        return self.ray_address is None


def load_settings(env_file: str | None = None, **overrides: Any) -> ServiceSettings:
    """The settings from the environment, an env file (`env_file` or `$BITSWEEP_ENV_FILE`;
    the environment wins over it) and `overrides`. Raises FieldError naming the variable."""
    from pydantic import ValidationError

    env_file = env_file or os.environ.get(ENV_FILE_VAR)
    if env_file is not None and not Path(env_file).is_file():
        raise FieldError(ENV_FILE_VAR, f"{env_file} is not a file")
    check_variables(os.environ)
    try:
        return ServiceSettings(_env_file=env_file, **overrides)  # type: ignore[call-arg]
    except ValidationError as e:
        err = e.errors()[0]
        name = str(err["loc"][0]) if err["loc"] else "settings"
        reason = str(err["msg"]).removeprefix("Value error, ")
        raise FieldError(f"BITSWEEP_{name.upper()}", reason) from None


def check_variables(env: Any) -> None:
    """Refuse a `BITSWEEP_*` variable the service does not read, naming it: a misspelled one
    (`BITSWEEP_API_TOKENS`) would leave its setting at the default, tokens off."""
    known = {f"BITSWEEP_{name.upper()}" for name in ServiceSettings.model_fields} | OTHER_VARS
    unknown = sorted(k for k in env if k.upper().startswith("BITSWEEP_") and k.upper() not in known)
    if unknown:
        raise FieldError(
            unknown[0],
            "is not a variable the service reads; its settings are "
            + ", ".join(sorted(f"BITSWEEP_{n.upper()}" for n in ServiceSettings.model_fields)),
        )
    if "BITSWEEP_TOKEN" in env and "BITSWEEP_TOKENS" not in env:
        raise FieldError(
            "BITSWEEP_TOKEN",
            "is the token `bitsweep submit` sends; the service's tokens are BITSWEEP_TOKENS "
            "(name=token pairs): set that, or unset BITSWEEP_TOKEN to serve without tokens",
        )


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or an address) is this machine alone."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(settings: ServiceSettings, host: str) -> None:
    """Refuse to listen beyond this machine without API tokens."""
    if not is_loopback(host) and not settings.tokens:
        raise FieldError(
            "--host",
            f"{host} is reachable from other machines; set BITSWEEP_TOKENS (name=token pairs) "
            "to serve there, or listen on 127.0.0.1",
        )

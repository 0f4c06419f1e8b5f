"""The service's defences that need no process: credentials masked everywhere one helper can
reach, ids and names matched whole, the Ray job's command quoted word by word, a row the
scheduler cannot follow failed instead of wedging the queue, `bitsweep remove` kept inside its
folders, and the local Ray head given every port of its own and none of the service's secrets."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from schemas.secrets import masked, scrubbed
from service.cli import main
from service.db import Base, Status, SweepRow, engine_for, sessions, utcnow
from service.jobs import LocalHead, RayJobs, head_environment, without_ray_address
from service.scheduler import FOLLOW_ATTEMPTS, Scheduler, job_id

SECRET = "pw-Zq8fK2mX9"
TOKEN = "hardening-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        (f"postgresql://bob:{SECRET}@db:5432/x", "postgresql://bob:***@db:5432/x"),
        (f"postgresql+psycopg://bob:{SECRET}@db/x", "postgresql+psycopg://bob:***@db/x"),
        (f"http://bob:{SECRET}@mlflow:5000", "http://bob:***@mlflow:5000"),
        (f"https://bob:{SECRET}@mlflow", "https://bob:***@mlflow"),
        ("postgresql://bob:p%40ss@db/x", "postgresql://bob:***@db/x"),
        ("sqlite:////data/mlflow.db", "sqlite:////data/mlflow.db"),
        ("postgresql://bob@db/x", "postgresql://bob@db/x"),
        ("http://mlflow:5000", "http://mlflow:5000"),
        ("/a/folder", "/a/folder"),
    ],
)
def test_every_store_uri_is_shown_without_its_password(uri: str, shown: str) -> None:
    assert masked(uri) == shown
    assert SECRET not in masked(uri) and "p%40ss" not in masked(uri)


def test_a_password_quoted_in_a_message_is_scrubbed() -> None:
    url = "postgresql://bob:p%40ss-word@db/x"
    text = "could not connect: postgresql://bob:p%40ss-word@db/x (password p@ss-word refused)"
    assert scrubbed(text, [url, None, "sqlite:///x.db"]) == (
        "could not connect: postgresql://bob:***@db/x (password *** refused)"
    )


def test_a_sweep_name_or_id_with_a_trailing_newline_is_refused(api_app: TestClient) -> None:
    body = {"name": "quick\n", "strategies": [{"name": "full_precision"}], "epochs": 1}
    r = api_app.post("/sweeps", json=body, headers=AUTH)
    assert r.status_code == 422 and r.json()["field"] == "name", r.text
    for path in ("/sweeps/x%0A", "/sweeps/x%0A/logs", "/leaderboard?sweep=x%0A"):
        assert api_app.get(path).status_code == 422, path
    assert api_app.post("/sweeps/x%0A/cancel", headers=AUTH).status_code == 422


@pytest.fixture
def api_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    from service.http.app import create_app
    from service.settings import ServiceSettings

    for k in ("RAY_ADDRESS", "BITSWEEP_TOKENS"):
        monkeypatch.delenv(k, raising=False)
    settings = ServiceSettings(home=tmp_path / "home", tokens={"ci": TOKEN})
    with TestClient(create_app(settings, run_jobs=False)) as client:
        yield client


def test_the_ray_jobs_command_is_quoted_word_by_word() -> None:
    class Client:
        def submit_job(self, **kw: Any) -> None:
            self.kw = kw

    jobs = RayJobs("http://127.0.0.1:1", python="/opt/py thon/bin/python", env={})
    jobs._client = client = Client()
    jobs.submit("bitsweep-s1", "s1; touch /tmp/x", {"name": "s"}, resume=True)
    argv = shlex.split(client.kw["entrypoint"])
    assert argv == [
        "/opt/py thon/bin/python", "-m", "service.cli", "sweep", "spec.json",
        "--sweep-id", "s1; touch /tmp/x", "--resume",
    ]  # fmt: skip


def _scheduler(tmp_path: Path, jobs: Any) -> tuple[Scheduler, Any]:
    engine = engine_for(f"sqlite:///{tmp_path / 'service.db'}")
    Base.metadata.create_all(engine)
    make = sessions(engine)
    with make() as s, s.begin():
        s.add(
            SweepRow(
                id="stuck", seq=1, name="stuck", spec={}, status=Status.running,
                benchmark="bitsweep/digits/mlp", ray_job_id="bitsweep-stuck",
                submitted_by="ci", started_at=utcnow(),
            )
        )  # fmt: skip
        s.add(
            SweepRow(
                id="next", seq=2, name="next", spec={}, status=Status.queued,
                benchmark="bitsweep/digits/mlp", submitted_by="ci",
            )
        )  # fmt: skip
    finalized: list[str] = []
    sched = Scheduler(
        make,
        lambda: jobs,
        max_running=1,
        finalize=lambda row, status: finalized.append(row.id),
        locate=lambda sid: None,
    )
    return sched, make


def test_a_row_the_scheduler_cannot_follow_fails_and_frees_the_queue(tmp_path: Path) -> None:
    class Jobs:
        submitted: list[str] = []

        def state(self, job: str) -> Any:
            if job == "bitsweep-stuck":
                raise RuntimeError("the job's id cannot be followed")
            return None

        def submit(self, job: str, *a: Any, **kw: Any) -> None:
            self.submitted.append(job)

    jobs = Jobs()
    sched, make = _scheduler(tmp_path, jobs)
    for _ in range(FOLLOW_ATTEMPTS - 1):
        sched.step()
    with make() as s:
        assert s.get(SweepRow, "stuck").status == Status.running  # a passing trouble: retried
        assert s.get(SweepRow, "next").status == Status.queued
    sched.step()
    with make() as s:
        stuck = s.get(SweepRow, "stuck")
        assert stuck.status == Status.failed and "could not follow" in (stuck.error or "")
        assert s.get(SweepRow, "next").status == Status.running
    assert jobs.submitted == [job_id("next", 1)]


def test_remove_refuses_an_id_that_leaves_the_storage_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "home"
    (home / "ray").mkdir(parents=True)
    victim = home / "victimdir"
    victim.mkdir()
    (victim / "keep.txt").write_text("mine")
    monkeypatch.setenv("BITSWEEP_HOME", str(home))
    for bad in ("../victimdir", "x\n", "a/b", ".hidden"):
        assert main(["remove", bad, "--yes"]) == 2, bad
        err = capsys.readouterr().err
        assert err.startswith("error: sweep_id:") and len(err.strip().splitlines()) == 1
    assert (victim / "keep.txt").read_text() == "mine"


def test_the_local_head_takes_every_port_of_its_own_on_loopback(tmp_path: Path) -> None:
    command = LocalHead(home=tmp_path, cpus=2).command(tmp_path / "t")
    assert command[:6] == [
        sys.executable,
        "-m",
        "ray.scripts.scripts",
        "start",
        "--head",
        "--block",
    ]
    ports = {
        a.split("=")[0]: int(a.split("=")[1]) for a in command if a.split("=")[0].endswith("-port")
    }
    assert set(ports) >= {
        "--port", "--dashboard-port", "--object-manager-port", "--node-manager-port",
        "--ray-client-server-port", "--dashboard-agent-listen-port",
        "--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--metrics-export-port",
    }  # fmt: skip
    assert len(set(ports.values())) == len(ports)  # distinct
    assert not {52365, 10001, 6379, 8265} & set(ports.values())  # Ray's defaults: free ones
    assert "--node-ip-address=127.0.0.1" in command and "--dashboard-host=127.0.0.1" in command
    assert "--num-cpus=2" in command


def test_the_head_and_the_job_client_inherit_no_secret_and_no_ray_address(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BITSWEEP_TOKENS", f"ci={SECRET}")
    monkeypatch.setenv("BITSWEEP_TRACKING_URI", f"postgresql://u:{SECRET}@db/x")
    monkeypatch.setenv("RAY_ADDRESS", "ray://elsewhere:10001")
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", "http://elsewhere:8265")
    env = head_environment()
    assert SECRET not in repr(env)
    assert "RAY_ADDRESS" not in env and "RAY_API_SERVER_ADDRESS" not in env
    import os

    with without_ray_address():
        assert "RAY_ADDRESS" not in os.environ and "RAY_API_SERVER_ADDRESS" not in os.environ
    assert os.environ["RAY_ADDRESS"] == "ray://elsewhere:10001"  # restored


def test_concurrent_submits_are_all_taken_each_with_its_own_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pg_database: Any
) -> None:
    """40 submits at once on a PostgreSQL service database (where `max(seq) + 1` raced: 10 of
    40 were refused 409): every one is taken, each with its own id and place in the queue."""

    from service.http.app import create_app
    from service.settings import ServiceSettings

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    settings = ServiceSettings(
        home=tmp_path / "home", tokens={"ci": TOKEN}, database_url=pg_database("burst")
    )
    with TestClient(create_app(settings, run_jobs=False)) as api_app:
        _burst(api_app, 40)


def _burst(api_app: TestClient, n: int) -> None:
    body = {"name": "burst", "strategies": [{"name": "full_precision"}], "epochs": 1}

    def submit(_: int) -> int:
        return api_app.post("/sweeps", json=body, headers=AUTH).status_code

    with ThreadPoolExecutor(max_workers=10) as pool:
        codes = list(pool.map(submit, range(n)))
    assert codes == [202] * n
    page = api_app.get("/sweeps?limit=100").json()
    assert page["total"] == n and len({v["id"] for v in page["items"]}) == n


def test_a_submission_ray_refuses_for_now_is_tried_again(tmp_path: Path) -> None:
    """Ray's "no available agent, try again later" (a head whose agent still starts) puts the
    sweep back in the queue for the next pass, not to failed; an error for good fails it."""
    from service.scheduler import SUBMIT_ATTEMPTS

    class Jobs:
        refusals = 2
        submitted: list[str] = []

        def state(self, job: str) -> Any:
            return None if job not in self.submitted else type("S", (), {"final": False})()

        def submit(self, job: str, *a: Any, **kw: Any) -> None:
            if self.refusals:
                self.refusals -= 1
                raise RuntimeError("No available agent to submit job, please try again later.")
            self.submitted.append(job)

    sched, make = _scheduler(tmp_path, Jobs())
    with make() as s, s.begin():
        s.delete(s.get(SweepRow, "stuck"))
    for expected in (Status.queued, Status.queued, Status.running):
        sched.step()
        with make() as s:
            assert s.get(SweepRow, "next").status == expected
    assert SUBMIT_ATTEMPTS > 2


def test_a_model_too_big_to_build_is_refused_without_building_it(tmp_path: Path) -> None:
    """Three hidden layers of 16,384 (each within its bound) would be 538 million parameters:
    refused naming model_options, counted on torch's meta device in milliseconds."""
    import time

    from runners.sweep.plan import plan_sweep
    from runners.sweep.space import SpecError
    from schemas.sweep import SweepSpec

    spec = SweepSpec.model_validate(
        {
            "name": "huge",
            "strategies": [{"name": "full_precision"}],
            "model_options": {"hidden": [16384, 16384, 16384]},
        }
    )
    started = time.monotonic()
    with pytest.raises(SpecError) as e:
        plan_sweep(spec, home=tmp_path / "data", check_stores=False)
    assert e.value.field == "model_options" and "538,132,490 parameters" in e.value.reason
    assert time.monotonic() - started < 10
    assert not (tmp_path / "data").exists()


def test_an_npz_that_would_inflate_a_thousandfold_is_refused_before_reading(
    tmp_path: Path,
) -> None:
    import numpy as np

    from runners.engine.data import DatasetError, load_dataset

    path = tmp_path / "bomb.npz"
    zeros = np.zeros((80 * 2**20,), dtype=np.uint8)  # 80 MiB of zeros: about 80 KB compressed
    np.savez_compressed(
        path, x_train=zeros, y_train=zeros[:10], x_test=zeros[:10], y_test=zeros[:10]
    )
    assert path.stat().st_size < 2**20
    with pytest.raises(DatasetError, match="inflates from"):
        load_dataset(f"npz:{path}")


def test_submissions_beyond_those_being_checked_wait_then_get_503(
    api_app: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    import service.http.deps as deps
    from service.core import Service

    gate = threading.Event()
    real = Service.admit

    def slow(self: Any, spec: Any) -> Any:
        gate.wait(5)
        return real(self, spec)

    monkeypatch.setattr(Service, "admit", slow)
    monkeypatch.setattr(deps, "ADMIT_WAIT_S", 0.5)
    body = {"name": "wait", "strategies": [{"name": "full_precision"}], "epochs": 1}

    def submit(_: int) -> tuple[int, dict[str, Any]]:
        r = api_app.post("/sweeps", json=body, headers=AUTH)
        return r.status_code, r.json()

    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = [pool.submit(submit, i) for i in range(3)]
        threading.Timer(2.0, gate.set).start()
        answers = [f.result() for f in futures]
    codes = sorted(code for code, _ in answers)
    assert codes == [202, 202, 503], answers
    busy = next(body for code, body in answers if code == 503)
    assert busy["field"] == "spec" and "submit again" in busy["reason"]


def test_a_loopback_service_answers_loopback_names_alone(tmp_path: Path) -> None:
    """A page on another site whose name resolves to 127.0.0.1 (DNS rebinding) sends its own
    name as Host: refused (400); the loopback names are answered."""
    from service.cli.serve import LOOPBACK_HOSTS
    from service.http.app import create_app
    from service.settings import ServiceSettings

    settings = ServiceSettings(home=tmp_path / "home", tokens={"ci": TOKEN})
    app = create_app(settings, run_jobs=False, trusted_hosts=LOOPBACK_HOSTS)
    with TestClient(app, base_url="http://127.0.0.1:8000") as c:
        assert c.get("/health").status_code == 200
        assert c.get("/health", headers={"Host": "localhost:8000"}).status_code == 200
        assert c.get("/health", headers={"Host": "evil.example"}).status_code == 400
        assert c.get("/", headers={"Host": "rebind.attacker.test:8000"}).status_code == 400


def test_a_token_cancels_its_own_sweeps_an_admin_any_and_the_canceller_is_kept(
    tmp_path: Path,
) -> None:
    from schemas.errors import FieldError
    from service.http.app import create_app
    from service.settings import ServiceSettings, load_settings

    alice, bob, root = "alice-token-0123456789", "bob-token-0123456789x", "root-token-0123456789"
    settings = ServiceSettings(
        home=tmp_path / "home", tokens={"alice": alice, "bob": bob, "root": root}, admins=["root"]
    )
    body = {"name": "mine", "strategies": [{"name": "full_precision"}], "epochs": 1}

    def auth(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    with TestClient(create_app(settings, run_jobs=False)) as c:
        first = c.post("/sweeps", json=body, headers=auth(alice)).json()["id"]
        second = c.post("/sweeps", json=body, headers=auth(alice)).json()["id"]
        r = c.post(f"/sweeps/{first}/cancel", headers=auth(bob))
        assert r.status_code == 403 and r.json()["field"] == "authorization", r.text
        assert c.get(f"/sweeps/{first}").json()["status"] == "queued"  # untouched
        r = c.post(f"/sweeps/{first}/cancel", headers=auth(alice))
        assert r.status_code == 200 and r.json()["cancelled_by"] == "alice", r.text
        r = c.post(f"/sweeps/{second}/cancel", headers=auth(root))
        assert r.status_code == 200 and r.json()["cancelled_by"] == "root", r.text
        assert c.get(f"/sweeps/{second}").json()["cancelled_by"] == "root"
    with pytest.raises(FieldError) as e:
        load_settings(tokens=f"alice={alice}", admins="nobody")
    assert e.value.field == "BITSWEEP_ADMINS" and "names no token" in e.value.reason


def test_the_api_schema_builds_and_bounds_a_read(api_app: TestClient) -> None:
    """Every route's parameters resolve (the schema builds), and one anonymous read asks for
    at most 1,000 leaderboard rows."""
    schema = api_app.get("/openapi.json")
    assert schema.status_code == 200
    (limit,) = [
        p
        for p in schema.json()["paths"]["/leaderboard"]["get"]["parameters"]
        if p["name"] == "limit"
    ]
    assert limit["schema"]["maximum"] == 1000
    assert api_app.get("/leaderboard?limit=1001").status_code == 422


def test_an_operator_fails_a_stuck_row_and_the_queue_moves_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`bitsweep queue fail` ends a stuck row in the service's database, with the reason,
    whether or not the service runs; the next pass starts the queued sweep behind it."""

    class Jobs:
        submitted: list[str] = []

        def state(self, job: str) -> Any:
            return None if job != "bitsweep-stuck" else type("S", (), {"final": False})()

        def submit(self, job: str, *a: Any, **kw: Any) -> None:
            self.submitted.append(job)

    sched, make = _scheduler(tmp_path, Jobs())
    for k in ("BITSWEEP_TOKENS", "BITSWEEP_DATABASE_URL"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("BITSWEEP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("BITSWEEP_DATABASE_URL", f"sqlite:///{tmp_path / 'service.db'}")
    assert main(["queue", "list"]) == 0
    listed = capsys.readouterr().out
    assert "stuck" in listed and "running" in listed and "next" in listed
    for args, field in (
        (["queue", "fail", "stuck"], "--reason"),
        (["queue", "fail", "stuck", "--reason", "  "], "--reason"),
        (["queue", "fail", "nope", "--reason", "x"], "ID"),
        (["queue", "fail", "../x", "--reason", "x"], "ID"),
    ):
        assert main(args) == 2, args
        assert field in capsys.readouterr().err
    assert main(["queue", "fail", "stuck", "--reason", "its job cannot be followed"]) == 0
    assert "ray job stop bitsweep-stuck" in capsys.readouterr().err
    assert main(["queue", "fail", "stuck", "--reason", "again"]) == 2  # it has ended
    assert "already ended (failed)" in capsys.readouterr().err
    with make() as s:
        row = s.get(SweepRow, "stuck")
        assert row.status == Status.failed and row.finished_at is not None
        assert row.error == "failed by the operator: its job cannot be followed"
    sched.step()
    with make() as s:
        assert s.get(SweepRow, "next").status == Status.running


def test_reads_need_a_token_when_the_operator_says_so(tmp_path: Path) -> None:
    from service.http.app import create_app
    from service.settings import ServiceSettings, load_settings

    settings = ServiceSettings(home=tmp_path / "home", tokens={"ci": TOKEN}, reads_need_token=True)
    reads = ["/strategies", "/sweeps", "/sweeps/nope", "/sweeps/nope/logs", "/leaderboard", "/"]
    with TestClient(create_app(settings, run_jobs=False)) as c:
        for path in reads:
            r = c.get(path)
            assert r.status_code == 401, (path, r.text)
            assert r.json()["field"] == "authorization"
            assert c.get(path, headers={"Authorization": "Bearer not-the-token"}).status_code == 401
            assert c.get(path, headers=AUTH).status_code in (200, 404, 422), path
        assert c.get("/health").status_code == 200  # probes stay open
    with TestClient(create_app(settings.model_copy(update={"reads_need_token": False}),
                               run_jobs=False)) as c:  # fmt: skip
        assert c.get("/sweeps").status_code == 200
    with pytest.raises(Exception, match="only when BITSWEEP_TOKENS is set"):
        load_settings(home=tmp_path / "home", reads_need_token=True)


@pytest.mark.parametrize(
    ("hosts", "ok"), [("bitsweep.example.org,*.lab.example", True), ("a/b", False), ("x y", False)]
)
def test_allowed_hosts_are_host_names(tmp_path: Path, hosts: str, ok: bool) -> None:
    from schemas.errors import FieldError
    from service.settings import load_settings

    if ok:
        names = load_settings(home=tmp_path, allowed_hosts=hosts).allowed_hosts
        assert names == hosts.split(",")
    else:
        with pytest.raises(FieldError, match="BITSWEEP_ALLOWED_HOSTS"):
            load_settings(home=tmp_path, allowed_hosts=hosts)


def test_a_body_that_does_not_arrive_in_time_gets_408(tmp_path: Path) -> None:
    """A sender that starts a body and stalls holds nothing past `body_timeout_seconds`."""
    import asyncio

    from service.http.app import create_app
    from service.settings import ServiceSettings

    settings = ServiceSettings(home=tmp_path / "home", body_timeout_seconds=0.2)
    app = create_app(settings, run_jobs=False)
    sent: list[dict[str, Any]] = []
    parts = [{"type": "http.request", "body": b'{"name": ', "more_body": True}]

    async def receive() -> dict[str, Any]:
        if parts:
            return parts.pop()
        await asyncio.sleep(3600)  # the rest never comes
        raise AssertionError

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http", "method": "POST", "path": "/sweeps", "raw_path": b"/sweeps",
        "query_string": b"", "headers": [(b"host", b"testserver"),
        (b"content-type", b"application/json")], "server": ("testserver", 80),
        "client": ("127.0.0.1", 5), "scheme": "http", "root_path": "", "http_version": "1.1",
    }  # fmt: skip
    asyncio.run(asyncio.wait_for(app(scope, receive, send), 10))
    assert sent[0]["status"] == 408
    assert b"did not arrive within 0.2 s" in sent[1]["body"]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"name": "\xff"}', "is not valid JSON (not UTF-8 text: byte 10)"),
        (b'{"name": "x", ', "is not valid JSON (Expecting property name enclosed in double quotes"),
        (b"[1,2", "Expecting ',' delimiter at character 4"),
    ],
)
def test_a_body_that_cannot_be_parsed_says_why(api_app: TestClient, body: bytes, reason: str):
    r = api_app.post("/sweeps", content=body, headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["field"] == "body", r.text
    assert reason in r.json()["reason"]


def test_params_nested_deeply_are_refused_with_422(api_app: TestClient) -> None:
    deep: Any = 1
    for _ in range(500):
        deep = {"a": deep}
    body = {"name": "deep", "epochs": 1, "strategies": [{"name": "full_precision", "params": deep}]}
    r = api_app.post("/sweeps", json=body, headers=AUTH)
    assert r.status_code == 422, r.text
    assert r.json()["field"].startswith("strategies.0.params"), r.text


def test_the_api_documents_itself_offline(api_app: TestClient) -> None:
    """/docs and /redoc load Swagger UI and ReDoc from the service itself, not a CDN."""
    for page, asset in (("/docs", "swagger-ui-bundle.js"), ("/redoc", "redoc.standalone.js")):
        html = api_app.get(page).text
        assert "cdn." not in html and "https://" not in html.split("<body")[0], page
        src = next(p.split('"')[0] for p in html.split('src="')[1:] if asset in p)
        js = api_app.get(src)
        assert js.status_code == 200 and len(js.content) > 100_000, src


def test_the_pareto_plot_is_drawn_once_per_store_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The plot is kept per benchmark, sweep and store state: drawn again only once a run of
    the store starts, ends or is deleted."""
    from mlflow.tracking import MlflowClient

    import runners.board
    from service.core import Service
    from service.settings import ServiceSettings

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("bitsweep/digits/mlp")
    drawn: list[tuple[str, str | None]] = []

    def draw(store: str, *, dataset: str, model: str, sweep_id: str | None = None) -> bytes:
        drawn.append((dataset, sweep_id))
        return f"png {len(drawn)}".encode()

    monkeypatch.setattr(runners.board, "pareto_png", draw)
    service = Service(ServiceSettings(home=tmp_path, tracking_uri=uri), run_jobs=False)
    assert service.pareto_png("digits", "mlp", None) == b"png 1"
    assert service.pareto_png("digits", "mlp", None) == b"png 1"  # the same state: kept
    assert service.pareto_png("digits", "mlp", "s1") == b"png 2"  # another sweep
    run = client.create_run(exp).info.run_id
    assert service.pareto_png("digits", "mlp", None) == b"png 3"  # a run started
    client.set_terminated(run)
    assert service.pareto_png("digits", "mlp", None) == b"png 4"  # it ended
    client.delete_run(run)
    assert service.pareto_png("digits", "mlp", None) == b"png 5"  # it was deleted
    assert service.pareto_png("digits", "mlp", None) == b"png 5"
    service.engine.dispose()

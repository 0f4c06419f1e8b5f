"""The REST API without Ray: admission of sweep specs, refusals, auth, paging, settings, CLI.

Every app here is built with `run_jobs=False`: POST /sweeps stores a queued row and nothing
runs. The MLflow and Optuna stores of one module-wide home are shared by every app (creating
MLflow's store takes seconds); each app has a service database of its own.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

import service.core
import service.http.deps
from schemas.errors import FieldError
from schemas.sweep import SweepSpec
from service.cli import main
from service.db import SweepRow
from service.http.app import create_app
from service.settings import check_bind, is_loopback, load_settings

TOKENS = {
    "alice": "alice-token-0123456789",
    "bob": "bob-token-0123456789ab",
    "carol": "carol-token-0123456789",
}
AUTH = {"Authorization": f"Bearer {TOKENS['alice']}"}
MAX_TRIALS = 20
MAX_BYTES = 2048
STATUSES = {"queued", "running", "succeeded", "failed", "cancelled"}
BUILT_IN = {
    "bit_learning",
    "bit_regularization",
    "exact_binary",
    "full_precision",
    "weight_fixing",
    "wrn_1bit",
}


def spec(**fields: Any) -> dict[str, Any]:
    """A small valid spec (digits, mlp, one strategy), with `fields` replaced."""
    base: dict[str, Any] = {
        "name": "quick",
        "strategies": [{"name": "full_precision"}],
        "epochs": 1,
        "trials_per_strategy": 2,
    }
    base.update(fields)
    return base


def write_npz(path: Path, n_train: int = 40, n_test: int = 10, features: int = 6) -> Path:
    """A tiny dataset in the layout runners.engine.data._read_npz reads: x/y for train and test."""
    rng = np.random.default_rng(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(
        path,
        x_train=rng.normal(size=(n_train, features)).astype(np.float32),
        y_train=np.arange(n_train, dtype=np.int64) % 3,
        x_test=rng.normal(size=(n_test, features)).astype(np.float32),
        y_test=np.arange(n_test, dtype=np.int64) % 3,
    )
    return path


def total(c: TestClient) -> int:
    r = c.get("/sweeps")
    assert r.status_code == 200, r.text
    return r.json()["total"]


def assert_refused(r: Any, status: int, field: str) -> dict[str, Any]:
    """The refusal's body: exactly field, reason and detail, naming `field`."""
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"field", "reason", "detail"}, body
    assert body["field"] == field, body
    assert body["reason"], body
    assert body["detail"] == f"{field}: {body['reason']}", body
    return body


# -- apps ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The home whose MLflow and Optuna stores every app of this module shares (empty)."""
    return tmp_path_factory.mktemp("stores") / "home"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A data root with a tiny .npz, and a file outside it that a symlink inside points to."""
    base = tmp_path_factory.mktemp("data")
    root = base / "root"
    inside = write_npz(root / "sub" / "tiny.npz")
    outside = write_npz(base / "outside" / "secret.npz")
    (root / "escape.npz").symlink_to(outside)
    (root / "linked-dir").symlink_to(outside.parent, target_is_directory=True)
    (root / "mnist-dir").mkdir()  # a folder dataset whose file links out of the root
    (root / "mnist-dir" / "train-images-idx3-ubyte").symlink_to(outside)
    return {"root": root, "inside": inside, "outside": outside}


@contextlib.contextmanager
def serve(db_dir: Path, stores: Path, **overrides: Any) -> Iterator[TestClient]:
    settings = load_settings(
        home=str(stores), database_url=f"sqlite:///{db_dir / 'service.db'}", **overrides
    )
    app = create_app(settings, run_jobs=False)
    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="module")
def api(
    tmp_path_factory: pytest.TempPathFactory, stores: Path, data: dict[str, Path]
) -> Iterator[TestClient]:
    """The module's main app: three tokens, a data root, 20 trials and 2 KiB a request."""
    with serve(
        tmp_path_factory.mktemp("api"),
        stores,
        tokens=TOKENS,
        data_roots=[data["root"]],
        max_trials_per_sweep=MAX_TRIALS,
        max_request_bytes=MAX_BYTES,
    ) as c:
        yield c


@pytest.fixture
def fresh(tmp_path: Path, stores: Path) -> Iterator[Callable[..., TestClient]]:
    """Apps with an empty service database of their own, built from settings overrides."""
    with contextlib.ExitStack() as stack:
        n = iter(range(100))

        def make(**overrides: Any) -> TestClient:
            db_dir = tmp_path / f"app{next(n)}"
            db_dir.mkdir()
            return stack.enter_context(serve(db_dir, stores, **overrides))

        yield make


def settings_of(c: TestClient) -> Any:
    return c.app.state.service.settings


def stored_row(c: TestClient, sweep_id: str) -> SweepRow | None:
    with c.app.state.service.sessions() as s:
        return s.get(SweepRow, sweep_id)


# -- refusals of a submission ----------------------------------------------------------------

STRATEGY_BOTH = [{"name": "full_precision"}, {"name": "bit_learning", "trials": MAX_TRIALS}]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param(spec(bogus=1), "bogus", id="unknown-top-level-field"),
        pytest.param(
            spec(strategies=[{"name": "full_precision", "bogus": 1}]),
            "strategies.0.bogus",
            id="unknown-strategy-field",
        ),
        pytest.param(spec(epochs="many"), "epochs", id="epochs-not-an-int"),
        pytest.param(spec(strategies="full_precision"), "strategies", id="strategies-not-a-list"),
        pytest.param(spec(name=5), "name", id="name-not-a-string"),
        pytest.param(spec(epochs=0), "epochs", id="epochs-0"),
        pytest.param(spec(trials_per_strategy=0), "trials_per_strategy", id="trials-0"),
        pytest.param(spec(name="bad name!"), "name", id="name-pattern"),
        pytest.param(spec(strategies=[]), "strategies", id="no-strategies"),
        pytest.param(
            spec(strategies=[{"name": "nope"}]), "strategies.0.name", id="unknown-strategy"
        ),
        pytest.param(
            spec(strategies=[{"name": "bit_learning", "params": {"nope": 1}}]),
            "strategies.0.params.nope",
            id="unknown-strategy-param",
        ),
        pytest.param(spec(dataset="imagenet"), "dataset", id="unknown-dataset"),
        pytest.param(spec(model="transformer"), "model", id="unknown-model"),
        pytest.param(spec(tracking_uri="sqlite:///mine.db"), "tracking_uri", id="tracking_uri"),
        pytest.param(
            spec(optuna_storage="sqlite:///mine.db"), "optuna_storage", id="optuna_storage"
        ),
        pytest.param(spec(storage_path="/tmp/mine"), "storage_path", id="storage_path"),
        pytest.param(
            spec(trials_per_strategy=MAX_TRIALS + 1), "trials_per_strategy", id="too-many-trials"
        ),
        pytest.param(
            spec(strategies=[{"name": "full_precision", "trials": MAX_TRIALS + 1}]),
            "strategies.0.trials",
            id="too-many-trials-of-a-strategy",
        ),
        pytest.param(
            spec(strategies=STRATEGY_BOTH), "strategies.1.trials", id="too-many-trials-in-all"
        ),
        pytest.param(
            spec(objectives=[{"metric": "test_accuracy"}]),
            "objectives.0.metric",
            id="selection-on-test",
        ),
        pytest.param(
            spec(objectives=[{"metric": "weight_bits", "mode": "min"}, {"metric": "test_loss"}]),
            "objectives.1.metric",
            id="selection-on-test-loss",
        ),
        pytest.param(spec(val_fraction=0.9), "val_fraction", id="val-fraction"),
        pytest.param(spec(confirmation={"seeds": 100}), "confirmation.seeds", id="seeds"),
        pytest.param(
            spec(trials_per_strategy=MAX_TRIALS - 2),
            "confirmation.seeds",
            id="too-many-with-confirmation",
        ),
        pytest.param(spec(dataset="npz:/etc/passwd"), "dataset", id="path-outside-the-roots"),
        pytest.param(spec(dataset="npz:missing.npz"), "dataset", id="path-missing"),
        pytest.param(spec(dataset="npz:../outside/secret.npz"), "dataset", id="dotdot"),
        pytest.param(spec(dataset="npz:sub/../sub/tiny.npz"), "dataset", id="dotdot-inside"),
        pytest.param(spec(dataset="npz:~/tiny.npz"), "dataset", id="tilde"),
        pytest.param(spec(dataset="npz:escape.npz"), "dataset", id="symlink-out-of-the-root"),
        pytest.param(spec(dataset="npz:linked-dir/secret.npz"), "dataset", id="symlinked-dir-out"),
        pytest.param(spec(dataset="mnist:mnist-dir"), "dataset", id="folder-file-linked-out"),
        pytest.param(spec(dataset="npz:sub/ti\u0000ny.npz"), "dataset", id="nul-in-path"),
    ],
)
def test_bad_input_is_refused_naming_the_field_and_nothing_is_stored(
    api: TestClient, body: dict[str, Any], field: str
) -> None:
    before = total(api)
    assert_refused(api.post("/sweeps", json=body, headers=AUTH), 422, field)
    assert total(api) == before


def test_a_symlink_out_of_the_root_is_refused_by_its_absolute_path_too(
    api: TestClient, data: dict[str, Path]
) -> None:
    before = total(api)
    r = api.post("/sweeps", json=spec(dataset=f"npz:{data['root'] / 'escape.npz'}"), headers=AUTH)
    # the refusal does not say where the link leads
    assert str(data["outside"]) not in assert_refused(r, 422, "dataset")["reason"]
    r = api.post("/sweeps", json=spec(dataset=f"npz:{data['outside']}"), headers=AUTH)
    assert_refused(r, 422, "dataset")
    assert total(api) == before


def test_malformed_json_is_refused(api: TestClient) -> None:
    before = total(api)
    r = api.post("/sweeps", content=b"{bad", headers={**AUTH, "content-type": "application/json"})
    assert "JSON" in assert_refused(r, 422, "body")["reason"]
    assert total(api) == before


def test_a_body_over_the_limit_is_refused_with_413(api: TestClient) -> None:
    before = total(api)
    big = json.dumps(spec(model_options={"pad": "x" * (2 * MAX_BYTES)})).encode()
    r = api.post("/sweeps", content=big, headers={**AUTH, "content-type": "application/json"})
    assert str(MAX_BYTES) in assert_refused(r, 413, "body")["reason"]
    assert total(api) == before


def test_a_chunked_body_over_the_limit_is_refused_with_413(api: TestClient) -> None:
    big = json.dumps(spec(model_options={"pad": "x" * (2 * MAX_BYTES)})).encode()

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(big), 256):
            yield big[i : i + 256]

    before = total(api)
    r = api.post("/sweeps", content=chunks(), headers={**AUTH, "content-type": "application/json"})
    assert "content-length" not in r.request.headers
    assert r.request.headers["transfer-encoding"] == "chunked"
    assert_refused(r, 413, "body")
    assert total(api) == before


def test_a_chunked_body_under_the_limit_is_taken(api: TestClient) -> None:
    small = json.dumps(spec(name="chunked")).encode()
    r = api.post(
        "/sweeps",
        content=iter([small[:10], small[10:]]),
        headers={**AUTH, "content-type": "application/json"},
    )
    assert r.status_code == 202, r.text
    assert r.json()["name"] == "chunked"


# -- what is admitted ------------------------------------------------------------------------


def test_the_stored_spec_is_the_admitted_one(api: TestClient) -> None:
    s = settings_of(api)
    r = api.post("/sweeps", json=spec(name="admitted"), headers=AUTH)
    assert r.status_code == 202, r.text
    view = r.json()
    assert view["status"] == "queued" and view["benchmark"] == "bitsweep/digits/mlp"
    assert view["submitted_by"] == "alice" and view["ray_job_id"] is None
    stored = api.get(f"/sweeps/{view['id']}").json()["spec"]
    row = stored_row(api, view["id"])
    assert row is not None
    for got in (stored, row.spec):
        assert got["tracking_uri"] == s.tracking
        assert got["optuna_storage"] == s.optuna
        assert got["storage_path"] == s.tune_storage
        assert got["name"] == "admitted" and got["epochs"] == 1
        assert got["trials_per_strategy"] == 2


def test_confirmation_trials_count_against_the_limit(api: TestClient) -> None:
    """18 search trials fit the limit of 20; with 3 seeds of confirmation they make 21."""
    r = api.post("/sweeps", json=spec(trials_per_strategy=MAX_TRIALS - 2), headers=AUTH)
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "confirmation.seeds" and "21 trials" in r.json()["reason"]
    r = api.post(
        "/sweeps", json=spec(trials_per_strategy=MAX_TRIALS - 3, name="fits"), headers=AUTH
    )
    assert r.status_code == 202, r.text
    detail = api.get(f"/sweeps/{r.json()['id']}").json()
    assert detail["trials"]["planned"] == MAX_TRIALS


def test_as_many_trials_as_the_limit_are_taken(api: TestClient) -> None:
    r = api.post(
        "/sweeps",
        json=spec(trials_per_strategy=MAX_TRIALS, confirmation={"enabled": False}),
        headers=AUTH,
    )
    assert r.status_code == 202, r.text
    detail = api.get(f"/sweeps/{r.json()['id']}").json()
    assert detail["trials"] == {
        "planned": MAX_TRIALS,
        "done": 0,
        "running": 0,
        "failed": 0,
        "killed": 0,
    }


@pytest.mark.parametrize("relative", [True, False])
def test_a_dataset_inside_a_data_root_is_taken_with_its_resolved_path(
    api: TestClient, data: dict[str, Path], relative: bool
) -> None:
    ref = "npz:sub/tiny.npz" if relative else f"npz:{data['inside']}"
    before = total(api)
    r = api.post("/sweeps", json=spec(name="npz", dataset=ref), headers=AUTH)
    assert r.status_code == 202, r.text
    assert total(api) == before + 1
    resolved = f"npz:{data['inside'].resolve()}"
    assert r.json()["benchmark"] == f"bitsweep/{resolved}/mlp"
    assert api.get(f"/sweeps/{r.json()['id']}").json()["spec"]["dataset"] == resolved
    row = stored_row(api, r.json()["id"])
    assert row is not None and row.spec["dataset"] == resolved


def test_no_dataset_files_without_data_roots(fresh: Callable[..., TestClient]) -> None:
    c = fresh()
    r = c.post("/sweeps", json=spec(dataset="npz:/tmp/tiny.npz"))
    assert "BITSWEEP_DATA_ROOTS" in assert_refused(r, 422, "dataset")["reason"]
    assert total(c) == 0


# -- sweeps: lookup, cancel, paging ----------------------------------------------------------


def test_an_unknown_sweep_is_404(api: TestClient) -> None:
    assert_refused(api.get("/sweeps/no-such-sweep"), 404, "sweep_id")
    assert_refused(api.get("/sweeps/no-such-sweep/logs"), 404, "sweep_id")
    assert_refused(api.post("/sweeps/no-such-sweep/cancel", headers=AUTH), 404, "sweep_id")


@pytest.mark.parametrize("bad", ["-leading-dash", "a%20space", "x" * 129, "semi;colon"])
def test_a_malformed_sweep_id_is_422(api: TestClient, bad: str) -> None:
    assert_refused(api.get(f"/sweeps/{bad}"), 422, "sweep_id")
    assert_refused(api.post(f"/sweeps/{bad}/cancel", headers=AUTH), 422, "sweep_id")


def test_cancelling_a_queued_sweep_then_again(api: TestClient) -> None:
    sid = api.post("/sweeps", json=spec(name="to-cancel"), headers=AUTH).json()["id"]
    r = api.post(f"/sweeps/{sid}/cancel", headers=AUTH)
    assert r.status_code == 200, r.text
    view = r.json()
    assert view["id"] == sid and view["status"] == "cancelled"
    assert view["cancel_requested"] is True and view["finished_at"] is not None
    assert api.get(f"/sweeps/{sid}").json()["status"] == "cancelled"
    again = api.post(f"/sweeps/{sid}/cancel", headers=AUTH)
    assert "cancelled" in assert_refused(again, 409, "sweep_id")["reason"]
    row = stored_row(api, sid)
    assert row is not None and row.status.value == "cancelled"


def test_paging_is_newest_first_with_a_total_and_a_status_filter(
    fresh: Callable[..., TestClient],
) -> None:
    c = fresh()
    ids = [c.post("/sweeps", json=spec(name=f"s{i}")).json()["id"] for i in range(3)]
    page = c.get("/sweeps", params={"limit": 2}).json()
    assert (page["total"], page["offset"], page["limit"]) == (3, 0, 2)
    assert [v["id"] for v in page["items"]] == [ids[2], ids[1]]
    page = c.get("/sweeps", params={"offset": 2, "limit": 2}).json()
    assert (page["total"], page["offset"]) == (3, 2)
    assert [v["id"] for v in page["items"]] == [ids[0]]
    assert c.get("/sweeps", params={"offset": 5}).json()["items"] == []

    assert c.post(f"/sweeps/{ids[1]}/cancel").status_code == 200
    cancelled = c.get("/sweeps", params={"status": "cancelled"}).json()
    assert cancelled["total"] == 1 and [v["id"] for v in cancelled["items"]] == [ids[1]]
    queued = c.get("/sweeps", params={"status": "queued"}).json()
    assert queued["total"] == 2 and [v["id"] for v in queued["items"]] == [ids[2], ids[0]]
    assert c.get("/sweeps", params={"status": "failed"}).json() == {
        "items": [],
        "total": 0,
        "offset": 0,
        "limit": 50,
    }
    created = [dt.datetime.fromisoformat(v["created_at"]) for v in c.get("/sweeps").json()["items"]]
    assert created == sorted(created, reverse=True)


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"status": "bogus"}, "status"),
        ({"limit": 0}, "limit"),
        ({"limit": 501}, "limit"),
        ({"offset": -1}, "offset"),
        ({"offset": "x"}, "offset"),
    ],
)
def test_bad_paging_is_422_naming_the_parameter(
    api: TestClient, params: dict[str, Any], field: str
) -> None:
    assert_refused(api.get("/sweeps", params=params), 422, field)


# -- auth ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="no-token"),
        pytest.param({"Authorization": "Bearer wrong-token-0123456789"}, id="wrong-token"),
        pytest.param({"Authorization": "Bearer"}, id="empty-bearer"),
        pytest.param({"Authorization": f"Basic {TOKENS['alice']}"}, id="basic-scheme"),
        pytest.param({"Authorization": TOKENS["alice"]}, id="no-scheme"),
        pytest.param({"Authorization": f"Bearer {TOKENS['alice'][:-1]}"}, id="prefix"),
    ],
)
def test_state_changes_without_a_valid_token_are_401(
    api: TestClient, headers: dict[str, str]
) -> None:
    before = total(api)
    r = api.post("/sweeps", json=spec(name="unauthorized"), headers=headers)
    assert_refused(r, 401, "authorization")
    assert r.headers["www-authenticate"] == "Bearer"
    assert total(api) == before

    sid = api.post("/sweeps", json=spec(name="victim"), headers=AUTH).json()["id"]
    r = api.post(f"/sweeps/{sid}/cancel", headers=headers)
    assert_refused(r, 401, "authorization")
    assert r.headers["www-authenticate"] == "Bearer"
    assert api.get(f"/sweeps/{sid}").json()["status"] == "queued"


@pytest.mark.parametrize("name", sorted(TOKENS))
def test_a_valid_token_is_202_and_names_the_submitter(api: TestClient, name: str) -> None:
    headers = {"Authorization": f"Bearer {TOKENS[name]}"}
    r = api.post("/sweeps", json=spec(name=f"by-{name}"), headers=headers)
    assert r.status_code == 202, r.text
    assert r.json()["submitted_by"] == name
    row = stored_row(api, r.json()["id"])
    assert row is not None and row.submitted_by == name
    assert api.post(f"/sweeps/{row.id}/cancel", headers=headers).json()["status"] == "cancelled"


def test_reads_need_no_token(api: TestClient) -> None:
    sid = api.post("/sweeps", json=spec(name="readable"), headers=AUTH).json()["id"]
    for path in (
        "/health",
        "/strategies",
        "/sweeps",
        f"/sweeps/{sid}",
        f"/sweeps/{sid}/logs",
        "/leaderboard",
        "/",
    ):
        assert api.get(path).status_code == 200, path
    assert api.get(f"/sweeps/{sid}/logs").text == ""


def test_every_token_is_compared_in_constant_time(
    api: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = service.http.deps.hmac.compare_digest
    calls: list[tuple[bytes, bytes]] = []

    def counting(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(service.http.deps.hmac, "compare_digest", counting)
    for given, status in (
        (TOKENS["alice"], 202),  # the first configured token: the others are compared still
        (TOKENS["carol"], 202),
        ("wrong-token-0123456789", 401),
    ):
        calls.clear()
        r = api.post("/sweeps", json=spec(name="ct"), headers={"Authorization": f"Bearer {given}"})
        assert r.status_code == status, r.text
        assert len(calls) == len(TOKENS)
        assert {b for _, b in calls} == {t.encode() for t in TOKENS.values()}
        assert {a for a, _ in calls} == {given.encode()}


def test_without_tokens_submissions_are_anonymous(fresh: Callable[..., TestClient]) -> None:
    c = fresh()
    r = c.post("/sweeps", json=spec())
    assert r.status_code == 202, r.text
    assert r.json()["submitted_by"] == "anonymous"
    row = stored_row(c, r.json()["id"])
    assert row is not None and row.submitted_by == "anonymous"
    assert c.post(f"/sweeps/{row.id}/cancel").json()["status"] == "cancelled"


# -- health, strategies, leaderboards, page --------------------------------------------------


def test_health_has_its_shape(fresh: Callable[..., TestClient]) -> None:
    c = fresh()
    c.post("/sweeps", json=spec())
    body = c.get("/health").json()
    assert set(body) == {"status", "version", "database", "ray", "ray_ok", "tracking_uri", "sweeps"}
    assert body["ray_ok"] is None  # this app runs no jobs
    assert body["status"] == "ok" and body["version"]
    assert body["database"] == "sqlite"
    assert body["ray"] == ""  # no Ray jobs in this app
    assert body["tracking_uri"] == settings_of(c).tracking
    assert body["sweeps"] == {
        "queued": 1,
        "running": 0,
        "succeeded": 0,
        "failed": 0,
        "cancelled": 0,
    }


def test_a_shown_spec_hides_every_store_password() -> None:
    spec = SweepSpec(
        name="x",
        strategies=[{"name": "full_precision"}],
        tracking_uri="postgresql://bitsweep:s3cret@db.example:5432/mlflow",
        optuna_storage="postgresql://bitsweep:s3cret@db.example:5432/optuna",
        storage_path="s3://key:s3cret@bucket/ray",
    )
    shown = spec.shown().model_dump_json()
    assert "s3cret" not in shown and "db.example" in shown and "bucket/ray" in shown


def test_strategies_lists_the_built_ins_with_numeric_bounds(api: TestClient) -> None:
    listed = {d["name"]: d for d in api.get("/strategies").json()}
    assert set(listed) == BUILT_IN
    for name, d in listed.items():
        assert d["paper"] and d["summary"], name
        for p in d["params"]:
            if p["type"] in ("int", "float"):
                bounds = p["bounds"]
                for end in ("low", "high"):
                    assert bounds[end] is None or isinstance(bounds[end], int | float), (name, p)
                assert isinstance(bounds["low_inclusive"], bool), (name, p)
            search = p.get("search") or {}
            if "low" in search:
                assert isinstance(search["low"], int | float), (name, p)
                assert isinstance(search["high"], int | float), (name, p)
    bits = next(p for p in listed["bit_learning"]["params"] if p["name"] == "bits")
    assert bits["bounds"]["low"] == 2 and bits["bounds"]["high"] == 32
    assert listed["full_precision"]["params"] == []


def test_the_leaderboard_of_an_empty_store(fresh: Callable[..., TestClient]) -> None:
    c = fresh()
    r = c.get("/leaderboard")
    assert r.status_code == 200 and r.json() == {"boards": []}
    assert_refused(c.get("/leaderboard", params={"metric": "nope"}), 422, "metric")
    assert_refused(c.get("/leaderboard", params={"mode": "up"}), 422, "mode")


def test_the_leaderboard_of_an_unknown_sweep_is_404(fresh: Callable[..., TestClient]) -> None:
    c = fresh()
    assert_refused(c.get("/leaderboard", params={"sweep": "unknown"}), 404, "sweep")


def test_the_pareto_plot_of_an_unknown_benchmark_is_404(fresh: Callable[..., TestClient]) -> None:
    c = fresh()
    r = c.get("/leaderboard/pareto.png", params={"dataset": "digits", "model": "mlp"})
    assert_refused(r, 404, "dataset")
    assert_refused(c.get("/leaderboard/pareto.png", params={"dataset": "digits"}), 422, "model")


def test_the_page_says_there_is_no_benchmark_yet(fresh: Callable[..., TestClient]) -> None:
    c = fresh()
    r = c.get("/")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert 'id="empty"' in r.text and "No benchmark" in r.text


def test_unknown_routes_answer_with_the_error_body(api: TestClient) -> None:
    assert_refused(api.get("/nowhere"), 404, "path")
    assert_refused(api.delete("/sweeps"), 405, "path")


def test_a_405_allows_every_method_of_the_path_across_routes(api: TestClient) -> None:
    """GET and POST /sweeps are two routes (inside an included router): Allow names both."""
    assert api.delete("/sweeps").headers["allow"] == "GET, POST"
    assert api.put("/sweeps/some-sweep").headers["allow"] == "GET"
    assert api.get("/sweeps/some-sweep/cancel").headers["allow"] == "POST"


# -- CORS ------------------------------------------------------------------------------------


def test_cors_is_off_by_default(api: TestClient) -> None:
    r = api.get("/health", headers={"Origin": "https://ui.example"})
    assert r.status_code == 200
    assert "access-control-allow-origin" not in r.headers


def test_cors_allows_the_configured_origins(fresh: Callable[..., TestClient]) -> None:
    c = fresh(cors_origins=["https://ui.example"])
    r = c.get("/health", headers={"Origin": "https://ui.example"})
    assert r.headers["access-control-allow-origin"] == "https://ui.example"
    r = c.get("/health", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in r.headers
    pre = c.options(
        "/sweeps",
        headers={
            "Origin": "https://ui.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "Authorization",
        },
    )
    assert pre.status_code == 200
    assert pre.headers["access-control-allow-origin"] == "https://ui.example"


# -- settings --------------------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    for var in ("BITSWEEP_TOKENS", "BITSWEEP_DATA_ROOTS", "BITSWEEP_ENV_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("BITSWEEP_HOME", str(tmp_path / "home"))
    return monkeypatch


def test_tokens_are_parsed_from_the_environment(clean_env: pytest.MonkeyPatch) -> None:
    a, b = "a" * 16, "b" * 20
    clean_env.setenv("BITSWEEP_TOKENS", f" alice={a} , bob={b},")
    assert load_settings().tokens == {"alice": a, "bob": b}
    assert load_settings(tokens=f"carol={a}").tokens == {"carol": a}


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("alice", "name=token"),
        ("alice=", "name=token"),
        ("=" + "a" * 20, "name=token"),
        ("alice=short", "shorter than 16"),
        (f"alice={'a' * 20},alice={'b' * 20}", "twice"),
        (f"alice={'a' * 20},bob={'a' * 20}", "share one token"),
        (f"al ice={'a' * 20}", "letters"),
    ],
)
def test_bad_tokens_are_refused_naming_the_variable(
    clean_env: pytest.MonkeyPatch, raw: str, why: str
) -> None:
    clean_env.setenv("BITSWEEP_TOKENS", raw)
    with pytest.raises(FieldError) as e:
        load_settings()
    assert e.value.field == "BITSWEEP_TOKENS"
    assert why in e.value.reason
    assert "a" * 16 not in e.value.reason and "b" * 16 not in e.value.reason  # no secret


def test_data_roots_are_split_on_colons(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    clean_env.setenv("BITSWEEP_DATA_ROOTS", f"{tmp_path / 'a'}:{tmp_path / 'b'}:")
    roots = load_settings().data_roots
    assert roots == [(tmp_path / "a").resolve(), (tmp_path / "b").resolve()]


def test_other_settings_are_refused_naming_the_variable(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("BITSWEEP_MAX_TRIALS_PER_SWEEP", "0")
    with pytest.raises(FieldError) as e:
        load_settings()
    assert e.value.field == "BITSWEEP_MAX_TRIALS_PER_SWEEP"
    with pytest.raises(FieldError) as e:
        load_settings(max_trials_per_sweep=5, ray_address="ray://head:10001")
    assert e.value.field == "BITSWEEP_RAY_ADDRESS"


def test_check_bind_refuses_other_machines_without_tokens(clean_env: pytest.MonkeyPatch) -> None:
    open_settings = load_settings()
    for host in ("0.0.0.0", "::", "192.168.1.10", "example.org"):
        assert not is_loopback(host)
        with pytest.raises(FieldError) as e:
            check_bind(open_settings, host)
        assert e.value.field == "--host" and "BITSWEEP_TOKENS" in e.value.reason
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        assert is_loopback(host)
        check_bind(open_settings, host)
    check_bind(load_settings(tokens={"alice": "a" * 16}), "0.0.0.0")


# -- CLI -------------------------------------------------------------------------------------


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_serve_refuses_an_open_host_without_tokens(
    capsys: pytest.CaptureFixture[str], home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BITSWEEP_TOKENS", raising=False)
    monkeypatch.delenv("BITSWEEP_ENV_FILE", raising=False)
    code, out, err = run_cli(capsys, "serve", "--host", "0.0.0.0", "--port", "1")
    assert isinstance(code, int) and code == 2
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --host: 0.0.0.0"), err
    assert out == ""


def test_serve_refuses_bad_settings_with_one_line(
    capsys: pytest.CaptureFixture[str], home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BITSWEEP_TOKENS", "alice")
    code, _, err = run_cli(capsys, "serve", "--port", "1")
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("error: BITSWEEP_TOKENS: "), err


def test_submit_refuses_a_server_that_is_not_http(
    capsys: pytest.CaptureFixture[str], home: Path, tmp_path: Path
) -> None:
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec()))
    code, out, err = run_cli(capsys, "submit", str(path), "--server", "ftp://x")
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("error: --server: "), err
    assert out == ""


def test_status_of_a_server_that_does_not_answer_is_one_line(
    capsys: pytest.CaptureFixture[str], home: Path
) -> None:
    code, out, err = run_cli(capsys, "status", "--server", "http://127.0.0.1:1")
    assert code == 2  # the --server given is bad input
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --server: no answer from "), err
    assert "127.0.0.1:1" in err and "Traceback" not in err
    assert out == ""


def test_a_sweep_shows_its_stores_without_their_password(tmp_path, stores, pg_database):
    url = pg_database("pw").replace("postgres@", "postgres:s3cret-pw@")  # trust auth takes it
    with serve(tmp_path, stores, optuna_storage=url) as api:
        r = api.post("/sweeps", json=spec(name="hidden"))
        assert r.status_code == 202, r.text
        shown = api.get(f"/sweeps/{r.json()['id']}")
        assert "s3cret-pw" not in shown.text
        assert shown.json()["spec"]["optuna_storage"] == url.replace("s3cret-pw", "***")
        assert stored_row(api, r.json()["id"]).spec["optuna_storage"] == url  # the job's own


@pytest.mark.parametrize(
    ("var", "why"),
    [
        ("BITSWEEP_API_TOKENS", "is not a variable the service reads"),
        ("BITSWEEP_TOKEN", "the service's tokens are BITSWEEP_TOKENS"),
        ("bitsweep_max_trials", "is not a variable the service reads"),
    ],
)
def test_a_misspelled_variable_is_refused_not_ignored(
    clean_env: pytest.MonkeyPatch, var: str, why: str
) -> None:
    """A misspelling would leave its setting at the default: for tokens, a service open to
    everyone on the machine. It is refused at start, naming the variable."""
    clean_env.delenv("BITSWEEP_TOKEN", raising=False)
    clean_env.setenv(var, "x" * 20)
    with pytest.raises(FieldError) as e:
        load_settings()
    assert e.value.field == var and why in e.value.reason
    clean_env.setenv("BITSWEEP_TOKENS", f"ci={'y' * 16}")
    if var == "BITSWEEP_TOKEN":  # beside the service's own tokens: `bitsweep submit`'s
        assert load_settings().tokens == {"ci": "y" * 16}

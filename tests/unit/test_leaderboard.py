"""The leaderboard query (runners/board/) and `bitsweep leaderboard`, on small MLflow
stores shaped like a sweep's (written by benchmarks/bench_leaderboard.py's store builder)."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import math
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from runners.board import check_query, leaderboard_runs, query_leaderboard
from runners.sweep.artifacts import log_leaderboard
from schemas.errors import FieldError
from service.cli import main

ROOT = Path(__file__).resolve().parents[2]
BENCH = "bitsweep/digits/mlp"


def _bench() -> ModuleType:
    if "bench_leaderboard" in sys.modules:
        return sys.modules["bench_leaderboard"]
    spec = importlib.util.spec_from_file_location(
        "bench_leaderboard", ROOT / "benchmarks" / "bench_leaderboard.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_leaderboard"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


SHAPE = {"sweeps": 3, "trials": 8, "strategies": 3}


def _experiment_id(client: MlflowClient) -> str:
    exp = client.get_experiment_by_name(BENCH)
    assert exp is not None
    return str(exp.experiment_id)


def _sweep_ids() -> list[str]:
    bench = _bench()
    return [p.tags["bitsweep.sweep_id"] for p, _ in bench.sweep_records(bench.Shape(**SHAPE))]


def _add_edge_runs(uri: str) -> dict[str, str]:
    """Runs that test the ranking's edges, added to the first sweep: a NaN accuracy, two runs
    tied above every other (the newer must rank first), one without weight_bytes, and two
    that no board may show (KILLED, deleted)."""
    client = MlflowClient(uri)
    eid = _experiment_id(client)
    sid = _sweep_ids()[0]
    parent = client.search_runs(
        [eid],
        f"tags.`bitsweep.kind` = 'sweep' and tags.`bitsweep.sweep_id` = '{sid}'",
    )[0]
    strategy = parent.data.tags["bitsweep.strategies"].split(",")[0]
    made = {}
    for n, (name, status, acc, start) in enumerate(
        [
            ("nan", "FINISHED", math.nan, 10),
            ("tie_old", "FINISHED", 0.99995, 20),
            ("tie_new", "FINISHED", 0.99995, 30),
            ("nobytes", "FINISHED", 0.5, 40),
            ("killed", "KILLED", 1.0, 50),
            ("deleted", "FINISHED", 1.0, 60),
        ]
    ):
        run = client.create_run(
            eid,
            start_time=1_800_000_000_000 + start,
            run_name=f"edge-{name}",
            tags={
                "mlflow.parentRunId": parent.info.run_id,
                "bitsweep.kind": "trial",
                "bitsweep.trial_id": f"edge_{n:05d}",
                "bitsweep.strategy": strategy,
                "bitsweep.sweep_id": sid,
            },
        )
        rid = run.info.run_id
        metrics = {"test_accuracy": acc, "test_loss": 0.3, "sparsity": 0.5}
        if name != "nobytes":
            metrics["weight_bytes"] = 1000.0 + n
        client.log_batch(
            rid,
            metrics=[Metric(k, v, 0, 0) for k, v in metrics.items()],
            params=[Param("epochs", parent.data.params["epochs"])],
        )
        client.set_terminated(rid, status=status)
        if name == "deleted":
            client.delete_run(rid)
        made[name] = rid
    return made


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """(client-written store, bulk-written store, edge runs of each) of the same shape."""
    bench = _bench()
    folder = tmp_path_factory.mktemp("stores")
    out = {}
    for writer in ("client", "bulk"):
        uri = bench.build_store(folder, bench.Shape(**SHAPE, writer=writer), log=lambda _: None)
        out[writer] = (uri, _add_edge_runs(uri))
    return out


@pytest.fixture(scope="module")
def uri(stores):
    return stores["client"][0]


@pytest.fixture(scope="module")
def edges(stores):
    return stores["client"][1]


def _comparable(board) -> list[dict]:
    """The rows but their run ids (which differ between stores), NaN as a string, and the
    training seconds of a search (summed in another order, equal to rounding)."""
    ids = ("run_id", "confirm_run_ids")
    return [
        {
            k: "nan" if v != v else round(v, 9) if k == "search_seconds" else v
            for k, v in r.to_dict().items()
            if k not in ids
        }
        for r in board.rows
    ]


# -- imports ---------------------------------------------------------------------------------


@pytest.mark.system  # starts real processes
def test_the_module_imports_neither_ray_nor_torch():
    code = (
        "import sys, runners.board, service.cli.sweep; "
        "bad = [m for m in ('ray', 'torch', 'mlflow') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


@pytest.mark.system  # starts real processes
def test_the_leaderboard_command_imports_neither_ray_nor_torch(uri):
    code = (
        "import sys; from service.cli import main; "
        f"assert main(['leaderboard', '--tracking-uri', {uri!r}, '--json']) == 0; "
        "heavy = ('ray', 'torch', 'optuna', 'strategies', 'runners.engine.trial', "
        "'runners.sweep.run'); "
        "bad = [m for m in heavy if m in sys.modules]; "
        "assert not bad, bad"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert BENCH in json.loads(done.stdout)


# -- the store the benchmark builds -----------------------------------------------------------


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"every_trial": True, "limit": 1000},
        {"metric": "weight_bytes", "mode": "min", "every_trial": True},
        {"sweep_id": "SWEEP1"},
    ],
)
def test_bulk_written_store_reads_as_the_client_written_one(stores, kw):
    if kw.get("sweep_id") == "SWEEP1":
        kw = {**kw, "sweep_id": _sweep_ids()[1]}
    (a,) = query_leaderboard(stores["client"][0], **kw)
    (b,) = query_leaderboard(stores["bulk"][0], **kw)
    assert a.rows and _comparable(a) == _comparable(b)


# -- ranking ---------------------------------------------------------------------------------


@pytest.mark.parametrize("every", [False, True])
@pytest.mark.parametrize("scoped", [False, True])
@pytest.mark.parametrize(
    ("metric", "mode", "tiebreak"),
    [
        ("test_accuracy", "max", ()),
        ("weight_bytes", "min", ()),
        ("test_loss", "min", (("weight_bytes", "min"),)),
        ("sparsity", "max", (("test_loss", "min"),)),
    ],
)
def test_sql_ranking_is_mlflows_search_ranking(uri, every, scoped, metric, mode, tiebreak):
    client = MlflowClient(uri)
    eid = _experiment_id(client)
    kw = {
        "metric": metric,
        "mode": mode,
        "strategies": None,
        "every_trial": every,
        "sweep_id": _sweep_ids()[0] if scoped else None,
        "limit": 1000,
        "tiebreak": tiebreak,
    }
    by_sql = [r.info.run_id for r in leaderboard_runs(client, eid, use_sql=True, **kw)]
    by_search = [r.info.run_id for r in leaderboard_runs(client, eid, use_sql=False, **kw)]
    assert by_sql and by_sql == by_search


def test_ranking_puts_ties_newest_first_nan_last_and_hides_killed_and_deleted(uri, edges):
    (board,) = query_leaderboard(uri, every_trial=True, limit=1000)
    ids = [r.run_id for r in board.rows]
    assert ids[:2] == [edges["tie_new"], edges["tie_old"]]
    assert ids[-1] == edges["nan"]
    assert edges["killed"] not in ids and edges["deleted"] not in ids
    (by_bytes,) = query_leaderboard(uri, metric="weight_bytes", mode="min", every_trial=True)
    assert by_bytes.rows[-1].run_id == edges["nobytes"]  # no value: after every value


def test_the_board_shows_confirmed_configs_never_the_best_test_trial(uri, edges):
    """The edge runs beat every trial on test accuracy, and have no validation accuracy: no
    board shows them. Each row is the config its sweep confirmed, measured on the fresh seeds."""
    client = MlflowClient(uri)
    eid = _experiment_id(client)
    (board,) = query_leaderboard(uri, sweep_id=_sweep_ids()[0])
    assert not {r.run_id for r in board.rows} & set(edges.values())
    trials = client.search_runs([eid], f"tags.`bitsweep.sweep_id` = '{_sweep_ids()[0]}'")
    by_run = {r.info.run_id: r for r in trials}
    for row in board.rows:
        searched = by_run[row.run_id]
        assert row.status == "confirmed" and row.test is not None and row.test.n == 3
        mine = [by_run[i] for i in row.confirm_run_ids]
        assert {r.data.tags["bitsweep.confirms_trial"] for r in mine} == {row.trial_id}
        assert {r.data.tags["bitsweep.phase"] for r in mine} == {"confirm"}
        accs = [r.data.metrics["test_accuracy"] for r in mine]
        assert row.test.mean == pytest.approx(sum(accs) / 3)
        assert searched.data.metrics["test_accuracy"] not in accs  # the search seed is not in it
        assert row.val_accuracy == searched.data.metrics["best_val_accuracy"]
        same = [
            r for r in trials
            if r.data.tags.get("bitsweep.strategy") == row.strategy
            and r.data.tags.get("bitsweep.phase", "search") == "search"
            and "best_val_accuracy" in r.data.metrics
        ]  # fmt: skip
        assert row.val_accuracy == max(r.data.metrics["best_val_accuracy"] for r in same)
        assert row.budget.trials == sum(
            1 for r in trials
            if r.data.tags.get("bitsweep.strategy") == row.strategy
            and r.data.tags.get("bitsweep.phase", "search") == "search"
            and r.data.tags.get("bitsweep.kind") == "trial"
            and r.info.status != "RUNNING"
        )  # fmt: skip
        assert row.params["strategy"] == row.strategy and "seed" not in row.params
    ranked = [r.test.mean for r in board.rows if r.test is not None]
    assert ranked == sorted(ranked, reverse=True)
    first, *rest = board.rows
    assert first.rank == 1 and first.p_value is None
    assert all(r.p_value is not None and r.tied == (r.p_value >= 0.05) for r in rest)
    fp = [r for r in board.rows if r.strategy == "full_precision"]
    assert fp and all(
        r.gap is not None and r.gap.low < r.gap.mean < r.gap.high
        for r in board.rows
        if r is not fp[0]
    )


def test_a_store_recorded_before_confirmation_reads_as_it_was_and_says_so(tmp_path):
    """Sweeps written by bitsweep 0.1 (no phase, no selection tag, selected on test accuracy):
    each is read as its board was, the best trial per strategy on test, and every row and
    title says it was selected on test and is one unconfirmed seed."""
    bench = _bench()
    old = bench.build_store(tmp_path, bench.Shape(**SHAPE, legacy=True), log=lambda _: None)
    (board,) = query_leaderboard(old)
    assert len(board.sweep_infos) == SHAPE["sweeps"]
    assert all(i.legacy for i in board.sweep_infos)
    for row in board.rows:
        assert row.status == "unconfirmed" and row.test is not None and row.test.n == 1
        assert row.selection == "test_accuracy (max), recorded before 0.2"
        assert row.tied is None and row.p_value is None and row.test.low is None
    assert "recorded before 0.2" in board.markdown() and "unconfirmed" in board.markdown()
    client = MlflowClient(old)
    eid = _experiment_id(client)
    for info, rows in board.by_sweep():
        trials = client.search_runs(
            [eid],
            f"tags.`bitsweep.sweep_id` = '{info.sweep_id}' and attributes.status = 'FINISHED' "
            "and tags.`bitsweep.kind` = 'trial'",
        )
        for r in rows:
            mine = [t for t in trials if t.data.tags["bitsweep.strategy"] == r["strategy"]]
            assert r["test_accuracy"] == max(t.data.metrics["test_accuracy"] for t in mine)


def test_the_sql_read_is_the_client_read(uri):
    """The board read from MLflow's tables (no MLflow) equals the board read through
    `MlflowClient`, as a tracking server is read: every sweep's, and one sweep's."""
    from runners.board import board_of
    from runners.board.read import ClientReader, SqlReader

    client = MlflowClient(uri)
    eid = _experiment_id(client)
    sql, by_client = SqlReader(uri), ClientReader(client)
    try:
        assert sql.sweeps(eid) == by_client.sweeps(eid)
        for sweep in (None, [_sweep_ids()[1]]):
            a = sorted(sql.trials(eid, sweep), key=lambda t: t.run_id)
            b = sorted(by_client.trials(eid, sweep), key=lambda t: t.run_id)
            assert a and [repr(t) for t in a] == [repr(t) for t in b]
        for kw in ({}, {"sweep_id": _sweep_ids()[2]}, {"metric": "weight_bytes", "mode": "min"}):
            rows_a, infos_a = board_of(sql, eid, **kw)
            rows_b, infos_b = board_of(by_client, eid, **kw)
            assert rows_a and infos_a == infos_b

            def seconds_rounded(rows: list) -> list[dict]:  # summed in SQL, or in Python
                return [{**r.to_dict(), "search_seconds": round(r.budget.seconds, 9)} for r in rows]

            assert seconds_rounded(rows_a) == seconds_rounded(rows_b)
    finally:
        sql.close()
    for kw in (
        {"every_trial": True, "limit": 1000},
        {"every_trial": True, "sweep_id": _sweep_ids()[0]},
    ):
        (by_tables,) = query_leaderboard(uri, **kw)
        (by_mlflow,) = query_leaderboard(client, **kw)
        assert by_tables.rows  # NaN as JSON writes it, so that it equals itself
        assert json.dumps(by_tables.to_json()) == json.dumps(by_mlflow.to_json())


def test_query_refuses_bad_arguments_naming_the_field(uri):
    cases: list[tuple[dict[str, Any], str]] = [
        ({"metric": "accuracy"}, "metric"),
        ({"mode": "up"}, "mode"),
        ({"limit": 0}, "limit"),
        ({"limit": 10**6}, "limit"),
        ({"sweep_id": "x' or '1'='1"}, "sweep_id"),
        ({"sweep_id": "no-such-sweep"}, "sweep_id"),
        ({"model": "nope"}, "dataset"),
        ({"tiebreak": [("lr", "max")]}, "tiebreak.0"),
    ]
    for kw, name in cases:
        with pytest.raises(FieldError) as e:
            query_leaderboard(uri, **kw)
        assert e.value.field == name, kw
    with pytest.raises(FieldError, match="limit"):
        check_query(metric="test_accuracy", mode="max", limit=True)


def test_a_missing_sqlite_store_is_refused_and_not_created(tmp_path):
    path = tmp_path / "none.db"
    with pytest.raises(FieldError) as e:
        query_leaderboard(f"sqlite:///{path}")
    assert e.value.field == "tracking_uri" and not path.exists()


# -- scope -----------------------------------------------------------------------------------


def test_the_benchmarks_board_spans_its_sweeps_and_says_so(uri):
    (board,) = query_leaderboard(uri, every_trial=True, limit=1000)
    assert board.scope == "benchmark" and board.several_sweeps
    assert set(board.sweeps) == set(_sweep_ids())
    assert {r.epochs for r in board.rows} == {1, 2, 3}
    assert "from 3 sweeps, 1-3 epochs" in board.title()
    header = board.markdown().splitlines()[2]
    assert header.startswith("| rank | strategy | sweep_id | epochs | phase | test_accuracy |")
    (boards,) = query_leaderboard(uri)
    assert [i.sweep_id for i in boards.sweep_infos] == _sweep_ids()[::-1]  # newest first
    assert "the board of each of its 3 sweeps, newest first" in boards.title()
    md = boards.markdown()
    assert all(f"*sweep {sid}, " in md for sid in _sweep_ids())
    assert md.count("| # | strategy | test accuracy |") == 3  # one table per sweep
    assert all({"sweep_id", "epochs"} <= set(row) for row in board.to_json())


def test_a_sweeps_board_holds_that_sweep_alone(uri):
    sid = _sweep_ids()[1]
    (board,) = query_leaderboard(uri, sweep_id=sid, every_trial=True, limit=1000)
    assert board.scope == "sweep" and board.sweeps == [sid] and not board.several_sweeps
    assert board.epochs == 2 and {r.epochs for r in board.rows} == {2}
    assert sum(r.phase == "search" for r in board.rows) == SHAPE["trials"]
    assert {r.phase for r in board.rows} == {"search", "confirm"}
    assert f"sweep {sid}, 2 epochs" in board.title()
    md = board.markdown()
    assert "sweep_id" not in md.splitlines()[2] and sid in md.splitlines()[0]
    (best,) = query_leaderboard(uri, sweep_id=sid)
    names = [r.strategy for r in best.rows]
    assert len(names) == len(set(names)) >= 2 and all(r.sweep_id == sid for r in best.rows)


def test_log_leaderboard_writes_the_sweeps_own_board(uri, tmp_path):
    client = MlflowClient(uri)
    eid = _experiment_id(client)
    sid = _sweep_ids()[2]
    parent = client.search_runs(
        [eid], f"tags.`bitsweep.kind` = 'sweep' and tags.`bitsweep.sweep_id` = '{sid}'"
    )[0]
    board = log_leaderboard(client, eid, parent.info.run_id, title=BENCH)
    assert board["rows"] and {r["sweep_id"] for r in board["rows"]} == {sid}
    confirmations = 3 * len(board["rows"])
    assert board["trials"] == SHAPE["trials"] + confirmations
    folder = Path(client.download_artifacts(parent.info.run_id, "", str(tmp_path)))
    md = (folder / "leaderboard.md").read_text()
    assert md.startswith(
        f"**{BENCH}, sweep {sid}, 3 epochs: selected on best_val_accuracy (max), confirmed "
        "over 3 fresh seeds**"
    )
    assert "| # | strategy | test accuracy | 95% CI | seeds | vs #1 | gap to float |" in md
    assert "Welch's t-test" in md and "fresh seeds" in md
    trials = (folder / "trials.csv").read_text().splitlines()
    assert len(trials) == 1 + SHAPE["trials"] + confirmations
    assert all(sid in ln for ln in trials[1:])
    rows = list(csv.DictReader(io.StringIO((folder / "leaderboard.csv").read_text())))
    assert [r["run_id"] for r in rows] == [r["run_id"] for r in board["rows"]]
    assert all(len(json.loads(r["confirm_run_ids"])) == 3 for r in rows)
    assert {"leaderboard.csv", "pareto.png"} <= {p.name for p in folder.iterdir()}


# -- the command -----------------------------------------------------------------------------


def test_cli_json_is_the_whole_benchmark_with_sweep_and_epochs(uri, capsys):
    assert main(["leaderboard", "--tracking-uri", uri, "--all", "--limit", "1000", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)[BENCH]
    assert {r["sweep_id"] for r in rows} == set(_sweep_ids())
    assert {r["epochs"] for r in rows} == {1, 2, 3}


def test_cli_sweep_id_gives_that_sweeps_board(uri, capsys):
    sid = _sweep_ids()[0]
    assert main(["leaderboard", "--tracking-uri", uri, "--sweep-id", sid, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)[BENCH]
    assert rows and {r["sweep_id"] for r in rows} == {sid}


def test_cli_table_shows_sweep_and_epochs_only_for_several_sweeps(uri, capsys):
    assert main(["leaderboard", "--tracking-uri", uri, "--all", "--limit", "1000"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(ln for ln in lines if ln.startswith("┃") and "strategy" in ln)
    assert [c.strip() for c in header.strip("┃").split("┃")][:4] == ["#", "strategy", "sweep", "ep"]
    assert max(len(ln) for ln in lines) <= 130
    text = "\n".join(lines)
    assert all(sid in text for sid in _sweep_ids())  # whole, one line each
    sid = _sweep_ids()[1]
    assert main(["leaderboard", "--tracking-uri", uri, "--sweep-id", sid]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(ln for ln in lines if ln.startswith("┃") and "strategy" in ln)
    cells = [c.strip() for c in header.strip("┃").split("┃")]
    assert cells[:7] == [
        "#",
        "strategy",
        "test accuracy",
        "95% CI",
        "seeds",
        "vs #1",
        "gap to float",
    ]
    assert lines[0].startswith(f"{BENCH}, sweep {sid}, 2 epochs: selected on best_val_accuracy")
    assert max(len(ln) for ln in lines) <= 160
    rows = [ln for ln in lines if ln.startswith("│")]
    assert rows and all(" ± " in ln and "[" in ln for ln in rows)


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["--sweep-id", "no-such-sweep"], "error: --sweep-id: no sweep no-such-sweep"),
        (["--sweep-id", "a'b"], "error: --sweep-id:"),
        (["--metric", "lr"], "error: --metric: must be one of"),
        (["--limit", "0"], "error: --limit:"),
        (["--model", "nope"], "error: dataset: no benchmark matches bitsweep/*/nope"),
    ],
)
def test_cli_refusals_exit_2_naming_the_option(uri, capsys, args, line):
    assert main(["leaderboard", "--tracking-uri", uri, *args]) == 2
    assert capsys.readouterr().err.startswith(line)


def test_cli_refuses_a_missing_store_without_creating_it(tmp_path, capsys):
    path = tmp_path / "missing.db"
    assert main(["leaderboard", "--tracking-uri", f"sqlite:///{path}"]) == 2
    assert "does not exist" in capsys.readouterr().err and not path.exists()


def test_default_store_is_where_a_sweep_writes(tmp_path, monkeypatch):
    from runners.board import default_store
    from runners.sweep.run import data_home
    from runners.sweep.stores import default_uris

    monkeypatch.setenv("BITSWEEP_HOME", str(tmp_path / "home"))
    assert default_store()[1] == default_uris(data_home())[0]
    monkeypatch.delenv("BITSWEEP_HOME")
    assert default_store()[1] == default_uris(data_home())[0]


def test_postgres_store_ranks_as_sqlite(pg_database, tmp_path):
    """The same runs in PostgreSQL: the SQL ranking equals MLflow's there, and the boards equal
    the SQLite store's."""
    bench = _bench()
    pg = pg_database("leaderboard")
    bench.write_store(pg, bench.Shape(**SHAPE, writer="bulk"), tmp_path / "artifacts")
    client = MlflowClient(pg)
    eid = _experiment_id(client)
    queries: list[dict[str, Any]] = [
        {"metric": "test_accuracy", "mode": "max"},
        {"metric": "weight_bytes", "mode": "min", "every_trial": True},
        {"metric": "test_loss", "mode": "min", "sweep_id": _sweep_ids()[1]},
    ]
    for kw in queries:
        args: dict[str, Any] = {"strategies": None, "limit": 1000, **kw}
        by_sql = [r.info.run_id for r in leaderboard_runs(client, eid, use_sql=True, **args)]
        by_search = [r.info.run_id for r in leaderboard_runs(client, eid, use_sql=False, **args)]
        assert by_sql and by_sql == by_search
    sqlite = bench.build_store(tmp_path, bench.Shape(**SHAPE), log=lambda _: None)  # no edges
    boards: list[dict[str, Any]] = [{}, {"every_trial": True}, {"sweep_id": _sweep_ids()[2]}]
    for kw in boards:
        (a,) = query_leaderboard(pg, **kw)
        (b,) = query_leaderboard(sqlite, **kw)
        assert a.rows and _comparable(a) == _comparable(b)

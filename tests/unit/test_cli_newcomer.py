"""The command line as a newcomer meets it: ids that `rerun` takes on every board, `cancel`,
short `strategies`, questions without a terminal, plurals, files never overwritten unasked, and
refusals that say what to write instead (exit 2, one line, nothing written)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

import service.cli.client as client_module
from runners.sweep.records import RerunReport, report_lines
from schemas.errors import FieldError
from service.cli import main

ROOT = Path(__file__).resolve().parents[2]
BENCH = "bitsweep/digits/mlp"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_error_line(code: int, err: str, start: str) -> str:
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith(f"error: {start}"), err
    assert "Traceback" not in err
    return lines[0]


# -- a small MLflow store of trial runs ------------------------------------------------------

TRIALS = {  # trial id: (strategy, start, test accuracy)
    "a1b2c3d4": ("full_precision", 10, 0.9),
    "a1b2ffff": ("full_precision", 20, 0.8),
    "beef0001": ("bit_learning", 30, 0.7),
    "edge_001": ("bit_learning", 40, 0.6),
    "edgex001": ("bit_learning", 50, 0.5),
}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, str]]:
    """(tracking URI, {trial id: run id}) of finished trial runs in one benchmark."""
    folder = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = MlflowClient(uri)
    eid = client.create_experiment(BENCH, artifact_location=(folder / "artifacts").as_uri())
    ids = {}
    for tid, (strategy, start, acc) in TRIALS.items():
        run = client.create_run(
            eid,
            start_time=1_800_000_000_000 + start,
            tags={
                "bitsweep.kind": "trial",
                "bitsweep.trial_id": tid,
                "bitsweep.strategy": strategy,
                "bitsweep.sweep_id": "s-1",
            },
        )
        client.log_batch(run.info.run_id, metrics=[Metric("test_accuracy", acc, 0, 0)])
        client.set_terminated(run.info.run_id)
        ids[tid] = run.info.run_id
    return uri, ids


# -- 1. rerun takes a trial id, or an unambiguous prefix of one ------------------------------


def test_a_trial_id_or_its_unambiguous_prefix_names_its_run(store):
    from runners.sweep.records import trial_run_id

    uri, ids = store
    client = MlflowClient(uri)
    assert trial_run_id(client, "a1b2c3d4") == ids["a1b2c3d4"]
    assert trial_run_id(client, "a1b2c") == ids["a1b2c3d4"]
    assert trial_run_id(client, "beef") == ids["beef0001"]
    assert trial_run_id(client, ids["beef0001"]) == ids["beef0001"]  # a run id, as before
    # MLflow's LIKE reads `_` as any character: the ids are compared exactly.
    assert trial_run_id(client, "edge_") == ids["edge_001"]


@pytest.mark.parametrize(
    ("ref", "reason"),
    [
        ("a1b2", "'a1b2' is ambiguous: it starts 2 trials: a1b2ffff (sweep s-1, run "),
        ("a1b", "'a1b' is too short: give 4 characters of a trial id at least"),
        ("zzzz", "no run 'zzzz' in this tracking store, and no trial id starts with it"),
        ("a1b2%", "'a1b2%' is not a trial id or a run id"),
        ("a1' or '1'='1", "is not a trial id or a run id"),
    ],
)
def test_rerun_refuses_an_ambiguous_short_or_unknown_id_in_one_line(store, capsys, ref, reason):
    uri, _ = store
    code, out, err = run(capsys, "rerun", ref, "--tracking-uri", uri)
    line = one_error_line(code, err, "run_id: ")
    assert reason in line and out == ""
    if "ambiguous" in reason:
        assert "a1b2c3d4 (sweep s-1" in line and "give more of the trial id" in line


def test_rerun_by_prefix_trains_the_trial_again(capsys, tmp_path):
    code, out, _ = run(capsys, "train", "--epochs", "1", "--json")
    assert code == 0
    (tmp_path / "result.json").write_text(out)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    eid = client.create_experiment(BENCH, artifact_location=(tmp_path / "art").as_uri())
    tags = {"bitsweep.kind": "trial", "bitsweep.trial_id": "0f1e2d3c"}
    rid = client.create_run(eid, tags=tags).info.run_id
    client.log_artifact(rid, str(tmp_path / "result.json"))
    client.set_terminated(rid)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code, out, _ = run(capsys, "rerun", "0f1e", "--tracking-uri", uri, "--json")
    report = json.loads(out)
    assert report["run_id"] == rid and code == (0 if report["reproduced"] else 1)


# -- 2. every board shows the id rerun takes --------------------------------------------------


def board_row(rank: int, strategy: str, trial_id: str, sweep_id: str = "s-1") -> dict[str, Any]:
    return {
        "rank": rank,
        "strategy": strategy,
        "status": "confirmed",
        "test_accuracy": 0.9,
        "test_accuracy_std": 0.01,
        "seeds": 3,
        "trial_id": trial_id,
        "run_id": "f" * 32,
        "sweep_id": sweep_id,
        "epochs": 2,
    }


def full_board() -> list[dict[str, Any]]:
    """A board of two rows whose second fills every column: a float row's 200800 bytes, the
    gap to float with its interval, Welch's test, the search budget."""
    full = {
        **board_row(2, "bit_regularization", "2361a3c4e5f6"),
        "test_accuracy_ci_low": 0.9506,
        "test_accuracy_ci_high": 0.9586,
        "p_vs_best": 0.001,
        "tied_with_best": False,
        "gap_to_float": -0.0176,
        "gap_to_float_ci_low": -0.0282,
        "gap_to_float_ci_high": -0.0069,
        "val_accuracy": 0.9583,
        "weight_bytes": 200800.0,
        "search_trials": 3,
        "search_epochs": 24,
    }
    return [board_row(1, "full_precision", "a1b2c3d4"), full]


def header_cells(out: str) -> list[str]:
    header = next(ln for ln in out.splitlines() if ln.startswith("┃"))
    return [c.strip() for c in header.strip("┃").split("┃")]


def test_the_board_of_a_sweep_ends_with_the_trial_id(capsys):
    from service.cli.sweep import show_board

    show_board([board_row(1, "full_precision", "a1b2c3d4e5f6")], "board")
    out = capsys.readouterr().out
    assert header_cells(out)[-1] == "trial"
    assert "a1b2c3d4" in out and "a1b2c3d4e5" not in out
    assert max(len(ln) for ln in out.splitlines()) <= 180


def test_a_full_board_shows_every_number_whole_in_a_file_and_a_narrow_terminal(capsys, monkeypatch):
    """A board of every column (a float row's 200800 bytes, the gap to float with its interval)
    takes a line a row in a file. On a screen too narrow for it, columns are left out in turn
    and a line says which, the intervals wrap at their spaces, and no number is cut short."""
    import io

    from rich.console import Console

    import service.cli.sweep as sweep

    rows = full_board()
    sweep.show_board(rows, "board")
    in_a_file = capsys.readouterr().out
    terminal = io.StringIO()
    monkeypatch.setattr(
        sweep, "out", Console(file=terminal, force_terminal=True, width=120, color_system=None)
    )
    sweep.show_board(rows, "board")
    (line,) = [ln for ln in in_a_file.splitlines() if "bit_regularization" in ln]
    assert "-0.0176 [-0.0282, -0.0069]" in line and "3 tr / 24 ep" in line
    for out, width in ((in_a_file, 180), (terminal.getvalue(), 120)):
        table = [ln for ln in out.splitlines() if ln[:1] in "┏┃┡│└"]
        assert max(len(ln) for ln in table) <= width
        assert "…" not in out
        for text in ("0.9000 ± 0.0100", "200800", "2361a3c4", "-0.0176", "[-0.0282,"):
            assert text in out, (width, text, out)
        assert "apart" in out and "(p=0.001)" in out
    assert "0.9583" in in_a_file and "3 tr / 24 ep" in in_a_file
    # 120 columns leave out the search budget, and say so.
    narrow = terminal.getvalue()
    assert "24 ep" not in narrow and "0.9583" in narrow
    assert "not shown at 120 columns: search (a wider window shows them)" in narrow
    # Too narrow for the essential columns: those whole, the table as wide as they need.
    tiny = io.StringIO()
    monkeypatch.setattr(
        sweep, "out", Console(file=tiny, force_terminal=True, width=60, color_system=None)
    )
    sweep.show_board(rows, "board")
    shown = tiny.getvalue()
    assert "not shown at 60 columns: search, val, 95% CI, gap to float" in shown
    # The test accuracy wraps between its mean and its spread.
    for text in ("0.9000 ±", "0.0100", "200800", "2361a3c4", "apart", "(p=0.001)"):
        assert text in shown, (text, shown)
    assert "…" not in shown and sweep.out.width == 60


@pytest.mark.parametrize("sweeps", [1, 2])
def test_every_trial_table_shows_the_trial_id_with_one_sweep_or_several(capsys, sweeps):
    from service.cli.sweep import show_rows

    rows = [
        board_row(i + 1, "bit_learning", f"{i}bcdef01_00001", f"s-{i % sweeps}") for i in range(2)
    ]
    show_rows(rows, "trials")
    out = capsys.readouterr().out
    cells = header_cells(out)
    assert "trial" in cells and ("sweep" in cells) == (sweeps > 1)
    assert "0bcdef01" in out and "1bcdef01" in out and "0bcdef01_" not in out
    assert max(len(ln) for ln in out.splitlines()) <= (130 if sweeps > 1 else 100)


def test_the_board_fits_every_screen_from_80_columns_whole(monkeypatch):
    """At every width from 80 to 170 columns the board as Rich lays it out fits the screen
    (Rich narrows wrapping columns evenly, then widens each back to its least width: the fit
    is checked on the layout, not on a sum of widths), and no number is cut."""
    import io

    from rich.console import Console

    import service.cli.sweep as sweep

    for width in range(80, 171):
        screen = io.StringIO()
        console = Console(file=screen, force_terminal=True, width=width, color_system=None)
        monkeypatch.setattr(sweep, "out", console)
        sweep.show_board(full_board(), "board")
        shown = screen.getvalue()
        table = [ln for ln in shown.splitlines() if ln[:1] in "┏┃┡│└"]
        assert max(len(ln) for ln in table) <= width, (width, shown)
        assert "…" not in shown and "200800" in shown and "0.0100" in shown, (width, shown)


def test_a_trial_table_on_a_narrow_screen_leaves_columns_out_and_cuts_no_cell(monkeypatch):
    import io

    from rich.console import Console

    import service.cli.sweep as sweep

    row = {
        **board_row(1, "bit_regularization", "2361a3c4e5f6", "digits-benchmark-20261205-1"),
        "weight_bytes": 200800.0,
        "compression_ratio": 1.0,
        "unique_weights": 12345.0,
        "weight_entropy_bits": 13.2,
        "sparsity": 0.0123,
    }
    rows = [row, {**row, "sweep_id": "digits-benchmark-20261205-2"}]
    shown = {}
    for width in (160, 60):
        screen = io.StringIO()
        console = Console(file=screen, force_terminal=True, width=width, color_system=None)
        monkeypatch.setattr(sweep, "out", console)
        sweep.show_rows(rows, "trials")
        shown[width] = screen.getvalue()
        assert "…" not in shown[width] and sweep.out.width == width
        for text in ("bit_regularization", "200800", "2361a3c4", "0.9"):
            assert text in shown[width], (text, shown[width])
    assert all(text in shown[160] for text in ("12345", "13.2", "0.0123"))
    assert "not shown" not in shown[160]
    assert "not shown at 60 columns: ratio, sparsity, entropy, unique, ep" in shown[60]
    assert not any(text in shown[60] for text in ("12345", "13.2", "0.0123"))


# -- 3. cancel, and the client's refusals ------------------------------------------------------

SWEEP = {
    "id": "quick-20260101-000000-abcdef",
    "name": "quick",
    "status": "cancelled",
    "benchmark": BENCH,
    "submitted_by": "alice",
    "ray_job_id": None,
    "experiment_id": "1",
    "parent_run_id": None,
    "cancel_requested": True,
    "cancelled_by": "alice",
    "error": None,
    "created_at": "2026-01-01T00:00:00Z",
    "started_at": None,
    "finished_at": "2026-01-01T00:01:00Z",
    "links": {
        "experiment": None,
        "parent_run": None,
        "leaderboard": "/leaderboard?sweep=x",
        "logs": "/sweeps/x/logs",
        "page": "/sweeps/x/page",
    },
}


@pytest.fixture
def service(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Callable[..., httpx.Response]]]:
    """The client's HTTP calls answered by the handler appended to the list (the last one)."""
    handlers: list[Callable[..., httpx.Response]] = []
    real = httpx.Client

    def fake(*args: Any, **kw: Any) -> httpx.Client:
        kw["transport"] = httpx.MockTransport(lambda request: handlers[-1](request))
        return real(*args, **kw)

    monkeypatch.setattr(client_module.httpx, "Client", fake)
    yield handlers


def test_cancel_prints_the_sweeps_new_status(service, capsys, monkeypatch):
    monkeypatch.setenv("BITSWEEP_TOKEN", "t" * 20)
    seen = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=SWEEP)

    service.append(answer)
    code, out, _ = run(capsys, "cancel", SWEEP["id"], "--server", "http://svc")
    assert code == 0 and out.strip() == f"{SWEEP['id']}: cancelled"
    assert seen[0].method == "POST" and seen[0].url.path == f"/sweeps/{SWEEP['id']}/cancel"
    assert seen[0].headers["authorization"] == f"Bearer {'t' * 20}"


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        (404, "no sweep quick-1"),
        (403, "submitted by bob; only bob or an admin may cancel it"),
        (409, "sweep quick-1 has ended (succeeded)"),
    ],
)
def test_cancel_refusals_exit_2_in_one_line(service, capsys, status, reason):
    body = {"field": "sweep_id", "reason": reason, "detail": f"sweep_id: {reason}"}
    service.append(lambda _: httpx.Response(status, json=body))
    code, _, err = run(capsys, "cancel", "quick-1", "--server", "http://svc")
    assert one_error_line(code, err, "sweep_id: ") == f"error: sweep_id: {reason}"


def test_cancel_refuses_a_bad_id_and_a_missing_server_before_calling(service, capsys):
    service.append(lambda _: pytest.fail("no call"))  # type: ignore[arg-type,return-value]
    code, _, err = run(capsys, "cancel", "../x", "--server", "http://svc")
    one_error_line(code, err, "ID: ")
    code, _, err = run(capsys, "cancel", "quick-1")
    one_error_line(code, err, "--server: ")


def test_a_service_that_does_not_answer_is_one_line_naming_server(service, capsys):
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    service.append(refuse)
    code, _, err = run(capsys, "status", "--server", "http://127.0.0.1:9")
    line = one_error_line(code, err, "--server: ")
    assert (
        line
        == "error: --server: no answer from http://127.0.0.1:9 ([Errno 111] Connection refused)"
    )


def test_status_prints_run_links_whole(service, capsys):
    link = "http://mlflow.example.org:5000/#/experiments/123456/runs/" + "0123456789abcdef" * 2
    detail = {
        **SWEEP,
        "status": "running",
        "spec": {"name": "quick", "strategies": [{"name": "full_precision"}]},
        "trials": {"planned": 4, "done": 1, "running": 1, "failed": 0, "killed": 0},
        "best": {
            "full_precision": {
                "run_id": "0123456789abcdef" * 2,
                "trial_id": "a1b2c3d4",
                "metric": "best_val_accuracy",
                "value": 0.9,
                "metrics": {},
                "link": link,
            }
        },
        "links": {**SWEEP["links"], "parent_run": link + "/parent"},
    }
    service.append(lambda _: httpx.Response(200, json=detail))
    code, out, _ = run(capsys, "status", SWEEP["id"], "--server", "http://svc")
    assert code == 0 and "…" not in out
    assert f"full_precision: {link}" in out.splitlines()
    assert f"MLflow: {link}/parent" in out.splitlines()


# -- 4. strategies: one line each; one in full ------------------------------------------------


def test_strategies_prints_one_line_per_strategy_within_80_columns(capsys):
    from strategies import list_strategies

    code, out, _ = run(capsys, "strategies")
    lines = out.rstrip("\n").splitlines()
    names = list(list_strategies())
    assert code == 0 and len(lines) == 1 + len(names)  # a header, then a line each
    assert all(len(ln) <= 80 for ln in lines)
    for name in names:
        assert sum(ln.split()[0] == name for ln in lines) == 1
    assert "b_i = 1[m_i > 0]" not in out and "recipe:" not in out  # the docstring: NAME only


def test_strategies_name_prints_its_docstring_lines_whole_and_its_docs_page(capsys):
    import inspect

    from strategies import get_strategy

    code, out, _ = run(capsys, "strategies", "full_precision")
    assert code == 0 and "docs: docs/strategies/full_precision.md" in out
    assert (ROOT / "docs" / "strategies" / "full_precision.md").is_file()
    printed = [ln.strip() for ln in out.splitlines()]
    doc = inspect.cleandoc(get_strategy("full_precision").__doc__ or "")
    assert all(ln.strip() in printed for ln in doc.splitlines())  # never wrapped again
    assert "recipe:" in out and "lr" in out


def test_an_unknown_strategy_gets_a_did_you_mean(capsys):
    code, _, err = run(capsys, "strategies", "bit_lerning")
    line = one_error_line(code, err, "name: ")
    assert line == "error: name: unknown strategy 'bit_lerning'; did you mean bit_learning?"
    code, _, err = run(capsys, "strategies", "zzz")
    assert "known: bit_learning" in one_error_line(code, err, "name: ")


# -- 5. remove without a terminal, and "n" at its question ------------------------------------


@pytest.fixture
def a_store_to_remove_from(home: Path) -> Path:
    home.mkdir()
    (home / "mlflow.db").write_bytes(b"")  # a store exists: remove goes on to ask
    return home


def test_remove_without_a_terminal_asks_for_yes_and_removes_nothing(
    a_store_to_remove_from, capsys, monkeypatch
):
    monkeypatch.setattr("service.cli.records.can_ask", lambda: False)
    code, out, err = run(capsys, "remove", "quick-1")
    assert "pass --yes" in one_error_line(code, err, "--yes: ") and out == ""
    assert [p.name for p in a_store_to_remove_from.iterdir()] == ["mlflow.db"]


def test_remove_answered_no_removes_nothing_and_exits_0(
    a_store_to_remove_from, capsys, monkeypatch
):
    monkeypatch.setattr("service.cli.records.can_ask", lambda: True)
    monkeypatch.setattr("typer.confirm", lambda *a, **kw: False)
    monkeypatch.setattr("runners.sweep.records.remove_sweep", lambda **kw: pytest.fail("removed"))
    code, out, err = run(capsys, "remove", "quick-1")
    assert code == 0 and out.strip() == "nothing removed" and err == ""


def test_remove_counts_in_words_that_agree(a_store_to_remove_from, capsys, monkeypatch):
    from runners.sweep.records import Removed

    monkeypatch.setattr(
        "runners.sweep.records.remove_sweep",
        lambda **kw: Removed(runs=1, studies=["quick-1/full_precision"], folders=["ray/quick-1"]),
    )
    code, out, _ = run(capsys, "remove", "quick-1", "--yes")
    text = " ".join(out.split())
    assert code == 0 and "1 MLflow run (" in text
    assert "1 Optuna study," in text and text.endswith("1 checkpoint folder")


# -- 5. plurals ---------------------------------------------------------------------------------


def test_plural():
    from service.cli.text import plural

    assert [plural(n, "trial") for n in (0, 1, 2)] == ["0 trials", "1 trial", "2 trials"]
    assert plural(1, "Optuna study", "studies") == "1 Optuna study"
    assert plural(3, "Optuna study", "studies") == "3 Optuna studies"


def test_rerun_report_agrees_in_number():
    same = RerunReport("r", "full_precision", 1, {"test_accuracy": 0.5}, {"test_accuracy": 0.5})
    assert "(full_precision, 1 thread)" in report_lines(same)[-1]
    one = RerunReport("r", "full_precision", 2, {"test_accuracy": 0.5}, {"test_accuracy": 0.6})
    assert report_lines(one)[-1] == "not reproduced: 1 metric differs"
    nan = RerunReport("r", "x", None, {"a": math.nan, "b": 1.0}, {"a": 1.0, "b": 2.0})
    assert report_lines(nan)[-1] == "not reproduced: 2 metrics differ"


# -- 5. --export never overwrites unasked -------------------------------------------------------


def test_export_refuses_an_existing_file_without_force(capsys, tmp_path):
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"mine")
    code, out, err = run(capsys, "train", "--epochs", "1", "--export", str(path))
    assert "exists; pass --force" in one_error_line(code, err, "export: ") and out == ""
    assert path.read_bytes() == b"mine"
    code, _, _ = run(capsys, "train", "--epochs", "1", "--json", "--export", str(path), "--force")
    assert code == 0 and path.read_bytes() != b"mine"


# -- 5. spec refusals that say what to write ----------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "line"),
    [
        (
            "name: s\nepoch: 3\nstrategies: [{name: full_precision}]\n",
            "error: epoch: is not a field; did you mean epochs?",
        ),
        (
            "name: s\nstrategies: [{name: full_precision, serch: {}}]\n",
            "error: strategies.0.serch: is not a field; did you mean search?",
        ),
        (
            "name: s\nstrategies: [full_precision]\n",
            "error: strategies.0: must be an object such as {name: full_precision}",
        ),
        (
            "name: s\nstrategies: [{name: full_precision}]\nconfirmation: {sedes: 2}\n",
            "error: confirmation.sedes: is not a field; did you mean seeds?",
        ),
    ],
)
def test_spec_refusals_say_what_to_write(capsys, home, tmp_path, spec, line):
    path = tmp_path / "s.yaml"
    path.write_text(spec)
    code, _, err = run(capsys, "sweep", str(path))
    assert one_error_line(code, err, "") == line
    assert "StrategySpec" not in err and not home.exists()


def test_a_text_file_as_npz_is_said_to_be_no_npz_archive(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "data.npz"
    path.write_text("x_train,y_train\n1,2\n")
    code, _, err = run(capsys, "train", "--epochs", "1", "--dataset", f"npz:{path}")
    line = one_error_line(code, err, "dataset: ")
    assert line.startswith(f"error: dataset: {path} is not an npz archive (")
    assert "pickle" not in line and sorted(p.name for p in tmp_path.iterdir()) == ["data.npz"]


# -- 5. settings, .gitignore ----------------------------------------------------------------------


def test_a_missing_data_root_is_refused_at_start_naming_the_variable(capsys, monkeypatch, tmp_path):
    from service.settings import load_settings

    for var in ("BITSWEEP_TOKENS", "BITSWEEP_ENV_FILE", "BITSWEEP_DATABASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("BITSWEEP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("BITSWEEP_DATA_ROOTS", f"{tmp_path}:{tmp_path / 'missing'}")
    with pytest.raises(FieldError) as e:
        load_settings()
    assert e.value.field == "BITSWEEP_DATA_ROOTS" and "missing is not a folder" in e.value.reason
    code, _, err = run(capsys, "queue", "list")
    one_error_line(code, err, "BITSWEEP_DATA_ROOTS: ")
    assert not (tmp_path / "home").exists()


def test_the_virtual_environment_is_ignored():
    assert ".venv/" in (ROOT / ".gitignore").read_text().splitlines()


# -- 5. ties: one order everywhere ----------------------------------------------------------------


@pytest.fixture(scope="module")
def tied(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, str]]:
    """Two strategies whose trials tie on every metric: `alpha`'s run older than `beta`'s."""
    folder = tmp_path_factory.mktemp("tied")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = MlflowClient(uri)
    eid = client.create_experiment(BENCH, artifact_location=(folder / "artifacts").as_uri())
    ids = {}
    for strategy, start in (("alpha", 10), ("beta", 20)):
        rid = client.create_run(
            eid,
            start_time=1_800_000_000_000 + start,
            tags={"bitsweep.kind": "trial", "bitsweep.strategy": strategy},
        ).info.run_id
        metrics = {"test_accuracy": 0.9, "best_val_accuracy": 0.8}
        client.log_batch(rid, metrics=[Metric(k, v, 0, 0) for k, v in metrics.items()])
        client.set_terminated(rid)
        ids[strategy] = rid
    return uri, ids


@pytest.mark.parametrize("use_sql", [True, False])
@pytest.mark.parametrize("metric", ["test_accuracy", "best_val_accuracy"])
def test_ties_rank_the_newest_run_first_in_every_list(tied, use_sql, metric):
    from runners.board import leaderboard_runs

    uri, ids = tied
    client = MlflowClient(uri)
    eid = client.get_experiment_by_name(BENCH).experiment_id
    kw = {"metric": metric, "mode": "max", "strategies": ["alpha", "beta"], "use_sql": use_sql}
    every = [r.info.run_id for r in leaderboard_runs(client, eid, every_trial=True, **kw)]
    best = [r.info.run_id for r in leaderboard_runs(client, eid, every_trial=False, **kw)]
    assert every == best == [ids["beta"], ids["alpha"]]

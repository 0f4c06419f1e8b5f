"""The command line: results as JSON and tables, weights export, and refusals of bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runners.engine.export import load_weights
from service.cli import main


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_train_json_prints_one_object(capsys):
    code, out, _ = run(capsys, "train", "--epochs", "1", "--json")
    assert code == 0 and json.loads(out)["config"]["strategy"] == "full_precision"


def test_train_table_shows_the_metrics(capsys):
    code, out, _ = run(capsys, "train", "--epochs", "1")
    assert code == 0 and "weight_entropy_bits" in out and "test_accuracy" in out


def test_export_writes_the_deployed_weights(capsys, tmp_path: Path):
    path = tmp_path / "w.safetensors"
    code, out, _ = run(capsys, "train", "--epochs", "1", "--json", "--export", str(path))
    weights, _, meta = load_weights(path)
    result = json.loads(out)
    assert code == 0 and meta["strategy"] == "full_precision"
    assert sum(w.numel() for w in weights.values()) == result["weights"]["numel"]
    assert {v["bits"] for v in meta["layers"].values()} == {32.0}


@pytest.mark.parametrize(
    ("argv", "field"),
    [
        (["--strategy", "nope"], "strategy"),
        (["--dataset", "imagenet"], "dataset"),
        (["--dataset", "npz:/does/not/exist.npz"], "dataset"),
        (["--model", "transformer"], "model"),
        (["--param", "lr=-3"], "params.lr"),
        (["--param", "lr=fast"], "params.lr"),
        (["--param", "bogus=1"], "params.bogus"),
        (["--param", "optimizer=lbfgs"], "params.optimizer: Input should be 'sgd', 'adam'"),
        (["--param", "batch_size=0"], "params.batch_size"),
        (["--param", "novalue"], "--param"),
        (["--model-option", "hidden=[0]"], "model_options.hidden"),
        (["--epochs", "0"], "epochs"),
        (["--device", "tpu"], "device"),
        (["--export", "/no/such/dir/w.safetensors"], "export"),
    ],
)
def test_bad_input_exits_2_with_one_line_naming_the_field(
    capsys, tmp_path, monkeypatch, argv, field
):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "train", "--epochs", "1", *argv)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith(f"error: {field}"), err
    assert out == "" and list(tmp_path.iterdir()) == []


def test_unknown_option_exits_2_with_one_line(capsys):
    code, _, err = run(capsys, "train", "--bogus")
    assert code == 2 and len(err.strip().splitlines()) == 1


def test_strategies_json_lists_params_and_search(capsys):
    code, out, _ = run(capsys, "strategies", "--json")
    listed = {s["name"]: s for s in json.loads(out)}
    assert code == 0 and "full_precision" in listed
    assert all({"paper", "params", "recipe", "fidelity"} <= set(s) for s in listed.values())


def test_strategies_table_names_every_strategy(capsys):
    from strategies import list_strategies

    code, out, _ = run(capsys, "strategies")
    assert code == 0 and all(name in out for name in list_strategies())


def test_schema_prints_trial_and_sweep_json_schema(capsys):
    code, out, _ = run(capsys, "schema")
    doc = json.loads(out)
    assert (
        code == 0
        and doc["trial"]["title"] == "TrialConfig"
        and doc["sweep"]["title"] == "SweepSpec"
    )


def test_strategies_prints_docstrings_verbatim_and_bounds_as_numbers(capsys):
    code, out, _ = run(capsys, "strategies", "bit_learning")
    assert code == 0 and "b_i = 1[m_i > 0]" in " ".join(out.split())
    code, out, _ = run(capsys, "strategies", "bit_learning", "--json")
    (bits,) = [p for p in json.loads(out)[0]["params"] if p["name"] == "bits"]
    assert bits["bounds"] == {"low": 2, "high": 32, "low_inclusive": True, "high_inclusive": True}


def test_sweep_id_of_a_new_sweep_is_checked_before_anything_is_written(capsys, home, tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text("name: s\nstrategies: [{name: full_precision}]\nepochs: 1\n")
    code, _, err = run(capsys, "sweep", str(spec), "--sweep-id", "not an id!")
    assert code == 2 and err.startswith("error: --sweep-id: ")
    assert not home.exists()
    taken = home / "sweeps" / "s-1.json"
    taken.parent.mkdir(parents=True)
    taken.write_text("{}")
    code, _, err = run(capsys, "sweep", str(spec), "--sweep-id", "s-1")
    assert code == 2 and "sweep s-1 exists; continue it with --resume" in err
    assert sorted(p.name for p in home.rglob("*")) == ["s-1.json", "sweeps"]

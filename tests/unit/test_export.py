"""The packed export: its weight payload is what `weight_bytes` says it costs, and it loads
back to a float model with the trained model's outputs."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from runners.engine.data import load_dataset
from runners.engine.export import load_deployed, load_weights, pack, save_trained, unpack
from runners.engine.trial import train
from schemas.trial import TrialConfig
from strategies import list_strategies


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.mark.parametrize("bits", [1, 2, 3, 5, 8, 13])
def test_pack_round_trips_every_pattern(bits: int) -> None:
    rng = np.random.default_rng(bits)
    p = rng.integers(0, 2**bits, size=1001, dtype=np.uint64)
    packed = pack(p, bits)
    assert packed.nbytes == -(-1001 * bits // 8) and np.array_equal(unpack(packed, bits, 1001), p)


@pytest.mark.parametrize("name", sorted(list_strategies()))
def test_packed_export_costs_its_weight_bytes_and_loads_back(name, digits, tmp_path: Path):
    epochs = 4 if name == "weight_fixing" else 2  # every weight fixed by the end
    trained = train(TrialConfig(strategy=name, epochs=epochs), dataset=digits)
    path = tmp_path / "w.safetensors"
    payload = save_trained(path, trained, digits, packed=True)
    cost = trained.result.weights.weight_bytes
    layers = len(trained.result.weights.layers)
    assert cost <= payload <= 1.1 * cost + layers  # + rounding each layer up to whole bytes
    model = load_deployed(path)
    deployed = trained.strategy.deploy(trained.model).eval()
    with torch.no_grad():
        assert torch.equal(model(digits.x_test), deployed(digits.x_test))
    weights, codes, info = load_weights(path)
    exported = trained.strategy.export(trained.model)
    for layer, e in exported.items():
        assert torch.equal(weights[layer], e.weight)
        if e.codes is not None:
            assert torch.equal(codes[layer], e.codes.to(torch.int64))
    assert info["format"] == "bitsweep.packed/1"
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.fixture(scope="module")
def packed_file(digits, tmp_path_factory) -> Path:
    trained = train(TrialConfig(strategy="bit_learning", epochs=1), dataset=digits)
    path = tmp_path_factory.mktemp("packed") / "w.safetensors"
    save_trained(path, trained, digits, packed=True)
    return path


def _rewritten(src: Path, dst: Path, edit) -> Path:
    """`src` with its metadata (a dict of JSON strings) changed by `edit`."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src), framework="pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    decoded = {k: json.loads(v) if k in ("layers", "model") else v for k, v in meta.items()}
    edit(decoded)
    save_file(
        tensors,
        str(dst),
        metadata={k: json.dumps(v) if k in ("layers", "model") else v for k, v in decoded.items()},
    )
    return dst


def _first_layer(meta: dict) -> dict:
    return next(iter(meta["layers"].values()))


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        # A claim of 2^31 codes in a layer of a few hundred bytes: refused before unpacking.
        (lambda m: _first_layer(m).update(numel=2**31, shape=[2**31]), "take"),
        (lambda m: _first_layer(m).update(numel=7), "not the product of its shape"),
        (lambda m: _first_layer(m).update(bits=65), "bits must be an integer from 1 to 64"),
        (lambda m: _first_layer(m).update(encoding="zigzag"), "encoding must be one of"),
        (lambda m: _first_layer(m).update(codebook=3), "stored floats"),
        # A model of 16,384-wide hidden layers named by a file that holds a small one.
        (lambda m: m["model"]["options"].update(hidden=[16384, 16384]), "the model needs"),
        (lambda m: m["model"].update(name="no-such-model"), "cannot be built"),
        (lambda m: m.pop("layers"), "metadata is incomplete"),
    ],
)
def test_a_file_whose_metadata_lies_is_refused_before_it_costs_memory(
    packed_file: Path, tmp_path: Path, edit, reason: str
) -> None:
    bad = _rewritten(packed_file, tmp_path / "bad.safetensors", edit)
    with pytest.raises(ValueError, match=reason):
        load_deployed(bad)


def test_the_rewritten_file_itself_loads(packed_file: Path, tmp_path: Path) -> None:
    load_deployed(_rewritten(packed_file, tmp_path / "same.safetensors", lambda m: None))


@pytest.fixture(scope="module")
def trained_mlp(digits):
    return train(TrialConfig(strategy="full_precision", epochs=1), dataset=digits)


def _pyfunc(path: Path):
    from types import SimpleNamespace

    from runners.sweep.logged_model import WEIGHTS_ARTIFACT, DeployedModel

    model = DeployedModel()
    model.load_context(SimpleNamespace(artifacts={WEIGHTS_ARTIFACT: str(path)}))
    return model


def test_the_logged_model_takes_inputs_as_the_files_hold_them(digits, trained_mlp, tmp_path):
    """The packed file keeps the training split's statistics, and the pyfunc standardizes raw
    inputs with them: its logits on the raw test split are the network's on the standardized
    one, bit for bit."""
    from runners.engine.data import _read
    from runners.engine.export import packed_model_spec

    path = tmp_path / "w.safetensors"
    std = digits.standardization
    assert std is not None and std["shape"] == [1, 1, 1]  # digits: one channel
    save_trained(path, trained_mlp, digits, packed=True)
    assert packed_model_spec(path).standardization == std
    raw = np.asarray(_read("digits").x_test, dtype=np.float32)
    assert raw.max() == 16.0  # digits' pixel values, 0 to 16
    with torch.no_grad():
        expected = load_deployed(path)(digits.x_test).numpy()
    assert np.array_equal(_pyfunc(path).predict(None, raw), expected)


def test_a_file_without_statistics_takes_standardized_inputs(digits, trained_mlp, tmp_path):
    import dataclasses

    from runners.engine.export import packed_model_spec

    path = tmp_path / "w.safetensors"
    # As a file written before bitsweep kept the statistics.
    unscaled = dataclasses.replace(digits, input_mean=None, input_std=None)
    save_trained(path, trained_mlp, unscaled, packed=True)
    assert packed_model_spec(path).standardization is None
    with torch.no_grad():
        expected = load_deployed(path)(digits.x_test).numpy()
    assert np.array_equal(_pyfunc(path).predict(None, digits.x_test.numpy()), expected)


@pytest.mark.parametrize(
    ("standardization", "reason"),
    [
        ({"shape": [1, 1, 1], "mean": [0.0], "std": [0.0]}, "std that is not a positive"),
        ({"shape": [1, 1, 1], "mean": [float("nan")], "std": [1.0]}, "mean that is not finite"),
        ({"shape": [1, 8, 8], "mean": [0.0], "std": [1.0]}, "holds 1/1 values"),
        # digits' inputs are (1, 8, 8): three channels, or a shape of another rank, do not fit
        ({"shape": [3, 1, 1], "mean": [0.0] * 3, "std": [1.0] * 3}, "does not fit inputs"),
        ({"shape": [8], "mean": [0.0] * 8, "std": [1.0] * 8}, "does not fit inputs"),
        ({"shape": [1, 1, 1], "mean": [0.0]}, "std"),
    ],
)
def test_a_file_whose_statistics_lie_is_refused(
    packed_file: Path, tmp_path: Path, standardization, reason: str
) -> None:
    from runners.engine.export import packed_model_spec

    bad = _rewritten(
        packed_file,
        tmp_path / "bad.safetensors",
        lambda m: m["model"].update(standardization=standardization),
    )
    with pytest.raises(ValueError, match=reason):
        packed_model_spec(bad)

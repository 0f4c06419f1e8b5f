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
    payload = save_trained(path, trained, digits.input_shape, digits.num_classes, packed=True)
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

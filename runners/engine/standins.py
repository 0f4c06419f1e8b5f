"""Synthetic stand-ins for MNIST, CIFAR-10 and CIFAR-100, written in their standard formats.

A stand-in folder has the real dataset's files, image shape and label range, with a few random
images: `mnist:DIR`, `cifar10:DIR` and `cifar100:DIR` read it as they read the real
one. It runs a protocol meant for the real data (a paper-scale preset of
`benchmarks/reproduce.py`) end to end in seconds, so that its models, recipes and readers are
checked where the data are not at hand; nothing trained on it means anything.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

CLASSES: dict[str, int] = {"mnist": 10, "cifar10": 10, "cifar100": 100}


def write_standin(
    kind: str, folder: Path, *, n_train: int = 10, n_test: int = 5, seed: int = 0
) -> Path:
    """Write a stand-in of `kind` with `n_train` training and `n_test` test images into
    `folder` (labels 0, 1, 2, ... in turn: MNIST, whose classes are read off its labels, needs
    10 images to have all 10); returns `folder`."""
    if kind not in CLASSES:
        raise ValueError(f"unknown stand-in kind {kind!r}; expected one of {sorted(CLASSES)}")
    if n_train < 5 or n_test < 1:
        raise ValueError("a stand-in needs 5 training images (one a CIFAR-10 batch) and 1 test")
    rng = np.random.default_rng(seed)
    classes = CLASSES[kind]
    y_train = np.arange(n_train) % classes
    y_test = np.arange(n_test) % classes
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "mnist":
        for name, array in (
            ("train-images-idx3-ubyte", rng.integers(0, 256, (n_train, 28, 28))),
            ("train-labels-idx1-ubyte", y_train),
            ("t10k-images-idx3-ubyte", rng.integers(0, 256, (n_test, 28, 28))),
            ("t10k-labels-idx1-ubyte", y_test),
        ):
            _write_idx(folder / name, array.astype(np.uint8))
        return folder
    pixels = 3 * 32 * 32
    if kind == "cifar10":
        sub = folder / "cifar-10-batches-py"
        files = [f"data_batch_{i}" for i in range(1, 6)]
        label_key = b"labels"
        # The five batches share the training images; each holds at least one.
        parts = np.array_split(np.arange(n_train), len(files))
        train = {name: part for name, part in zip(files, parts, strict=True)}
        test = {"test_batch": np.arange(n_test)}
    else:
        sub = folder / "cifar-100-python"
        label_key = b"fine_labels"
        train = {"train": np.arange(n_train)}
        test = {"test": np.arange(n_test)}
    sub.mkdir(parents=True, exist_ok=True)
    for batches, labels in ((train, y_train), (test, y_test)):
        for name, index in batches.items():
            data = rng.integers(0, 256, (index.size, pixels), dtype=np.uint8)
            batch = {b"data": data, label_key: [int(v) for v in labels[index]]}
            (sub / name).write_bytes(pickle.dumps(batch, protocol=2))
    return folder


def _write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file of unsigned bytes (type 0x08), as MNIST's are."""
    header = (0x0800 | array.ndim).to_bytes(4, "big")
    header += b"".join(d.to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.tobytes())

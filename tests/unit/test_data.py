"""Datasets read from files written here in their real formats, fixed built-in splits, batching
and augmentation."""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from runners.engine.data import (
    DATASET_HELP,
    Dataset,
    DatasetError,
    augment_batch,
    batches,
    load_dataset,
)
from schemas.trial import AugmentConfig

RNG = np.random.default_rng(1234)


# ---------------------------------------------------------------------------- writers


def write_idx(path: Path, array: np.ndarray, *, magic: int | None = None) -> Path:
    array = np.asarray(array, dtype=np.uint8)
    magic = (0x0800 | array.ndim) if magic is None else magic
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    data = header + array.tobytes()
    if path.name.endswith(".gz"):
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)
    return path


def mnist_arrays(n_train: int = 12, n_test: int = 6) -> dict[str, np.ndarray]:
    return {
        "train-images-idx3-ubyte": RNG.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.arange(n_train, dtype=np.uint8) % 10,
        "t10k-images-idx3-ubyte": RNG.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": np.arange(n_test, dtype=np.uint8)[::-1] % 10,
    }


def write_mnist(folder: Path, *, gz: bool = False) -> dict[str, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    arrays = mnist_arrays()
    for name, array in arrays.items():
        write_idx(folder / (name + (".gz" if gz else "")), array)
    return arrays


def cifar_images(n: int) -> np.ndarray:
    return RNG.integers(0, 256, (n, 3072), dtype=np.uint8)


def write_pickle(path: Path, obj: object, protocol: int = 2) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=protocol))


def write_cifar10_python(folder: Path, *, per_batch: int = 20, protocol: int = 2) -> dict:
    sub = folder / "cifar-10-batches-py"
    sub.mkdir(parents=True)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = cifar_images(per_batch)
        labels = [int(v) for v in RNG.integers(0, 10, per_batch)]
        write_pickle(sub / name, {b"data": data, b"labels": labels}, protocol)
        written[name] = (data, labels)
    return written


def write_cifar10_binary(folder: Path, *, per_batch: int = 20) -> dict:
    sub = folder / "cifar-10-batches-bin"
    sub.mkdir(parents=True)
    written = {}
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        data = cifar_images(per_batch)
        labels = RNG.integers(0, 10, per_batch, dtype=np.uint8)
        (sub / name).write_bytes(np.concatenate([labels[:, None], data], axis=1).tobytes())
        written[name] = (data, labels)
    return written


def error_of(ref: str, **kwargs: object) -> str:
    with pytest.raises(DatasetError) as info:
        load_dataset(ref, **kwargs)
    message = str(info.value)
    assert message.startswith("dataset: ")
    assert "\n" not in message
    assert info.value.field == "dataset"
    return message


# ---------------------------------------------------------------------------- mnist idx


def test_mnist_folder_of_plain_idx_files_loads_as_single_channel_images(tmp_path: Path) -> None:
    write_mnist(tmp_path)
    data = load_dataset(f"mnist:{tmp_path}", val_fraction=0)
    assert (data.x_train.shape, data.x_test.shape) == ((12, 1, 28, 28), (6, 1, 28, 28))


def test_mnist_folder_of_gzipped_idx_files_keeps_the_labels(tmp_path: Path) -> None:
    arrays = write_mnist(tmp_path, gz=True)
    data = load_dataset(f"mnist:{tmp_path}", val_fraction=0)
    assert data.y_test.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()


def test_mnist_pixels_round_trip_through_train_split_standardization(tmp_path: Path) -> None:
    arrays = write_mnist(tmp_path)
    data = load_dataset(f"mnist:{tmp_path}", val_fraction=0)
    train = arrays["train-images-idx3-ubyte"].astype(np.float64)
    expected = (arrays["t10k-images-idx3-ubyte"] - train.mean()) / train.std()
    np.testing.assert_allclose(data.x_test[:, 0].numpy(), expected, rtol=1e-4, atol=1e-4)


def test_mnist_training_split_is_standardized_to_zero_mean_unit_std(tmp_path: Path) -> None:
    write_mnist(tmp_path)
    data = load_dataset(f"mnist:{tmp_path}", val_fraction=0.25)
    stats = (data.x_train.mean().item(), data.x_train.std(correction=0).item())
    assert stats == pytest.approx((0.0, 1.0), abs=1e-4)


def test_mnist_labels_decide_the_number_of_classes(tmp_path: Path) -> None:
    write_mnist(tmp_path)
    assert load_dataset(f"mnist:{tmp_path}").num_classes == 10


# ---------------------------------------------------------------------------- cifar


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar10_python_batches_in_their_subfolder_load_in_order(
    tmp_path: Path, protocol: int
) -> None:
    written = write_cifar10_python(tmp_path, protocol=protocol)
    data = load_dataset(f"cifar10:{tmp_path}", val_fraction=0)
    train_labels = [v for i in range(1, 6) for v in written[f"data_batch_{i}"][1]]
    assert (data.x_train.shape, data.y_train.tolist(), data.y_test.tolist()) == (
        (100, 3, 32, 32),
        train_labels,
        written["test_batch"][1],
    )


def test_cifar10_pixels_are_channel_major_rows(tmp_path: Path) -> None:
    written = write_cifar10_python(tmp_path)
    data = load_dataset(f"cifar10:{tmp_path}", val_fraction=0)
    train = np.concatenate([written[f"data_batch_{i}"][0] for i in range(1, 6)])
    train = train.reshape(-1, 3, 32, 32).astype(np.float64)
    mean, std = train.mean(axis=(0, 2, 3), keepdims=True), train.std(axis=(0, 2, 3), keepdims=True)
    expected = (written["test_batch"][0].reshape(-1, 3, 32, 32) - mean) / std
    np.testing.assert_allclose(data.x_test.numpy(), expected, atol=1e-4)


def test_cifar10_binary_batches_load_with_their_label_byte(tmp_path: Path) -> None:
    written = write_cifar10_binary(tmp_path)
    data = load_dataset(f"cifar10:{tmp_path}", val_fraction=0)
    assert (data.x_test.shape, data.y_test.tolist(), data.num_classes) == (
        (20, 3, 32, 32),
        written["test_batch.bin"][1].tolist(),
        10,
    )


def test_cifar10_standardizes_each_channel_on_the_training_split(tmp_path: Path) -> None:
    write_cifar10_binary(tmp_path)
    data = load_dataset(f"cifar10:{tmp_path}", val_fraction=0.2)
    means = data.x_train.mean(dim=(0, 2, 3))
    assert torch.allclose(means, torch.zeros(3), atol=1e-4)


def test_cifar100_python_files_use_the_fine_labels(tmp_path: Path) -> None:
    sub = tmp_path / "cifar-100-python"
    sub.mkdir()
    fine = {"train": list(range(50, 80)), "test": list(range(90, 100))}
    for name, labels in fine.items():
        record = {
            b"data": cifar_images(len(labels)),
            b"fine_labels": labels,
            b"coarse_labels": [0] * len(labels),
        }
        write_pickle(sub / name, record)
    data = load_dataset(f"cifar100:{tmp_path}", val_fraction=0)
    assert (data.y_test.tolist(), data.num_classes, data.x_train.shape[0]) == (
        fine["test"],
        100,
        30,
    )


def test_cifar100_binary_records_skip_the_coarse_label(tmp_path: Path) -> None:
    sub = tmp_path / "cifar-100-binary"
    sub.mkdir()
    for name, n in (("train.bin", 30), ("test.bin", 10)):
        coarse = np.full(n, 7, dtype=np.uint8)
        fine = np.arange(n, dtype=np.uint8) + 60
        rows = np.concatenate([coarse[:, None], fine[:, None], cifar_images(n)], axis=1)
        (sub / name).write_bytes(rows.tobytes())
    data = load_dataset(f"cifar100:{tmp_path}", val_fraction=0)
    assert data.y_test.tolist() == list(range(60, 70))


def test_cifar_pickle_naming_anything_but_numpy_is_refused(tmp_path: Path) -> None:
    write_cifar10_python(tmp_path)

    class Evil:
        def __reduce__(self) -> tuple:
            return (os.system, ("true",))

    write_pickle(tmp_path / "cifar-10-batches-py" / "data_batch_2", {b"data": Evil()})
    assert "refusing to load" in error_of(f"cifar10:{tmp_path}")


def test_cifar_folder_missing_a_batch_names_it(tmp_path: Path) -> None:
    write_cifar10_python(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    assert "missing file data_batch_3" in error_of(f"cifar10:{tmp_path}")


def test_cifar_truncated_binary_batch_is_reported(tmp_path: Path) -> None:
    write_cifar10_binary(tmp_path)
    path = tmp_path / "cifar-10-batches-bin" / "test_batch.bin"
    path.write_bytes(path.read_bytes()[:-100])
    assert "test_batch.bin is truncated" in error_of(f"cifar10:{tmp_path}")


def test_cifar_folder_without_batches_says_what_it_expected(tmp_path: Path) -> None:
    assert "expected data_batch_1" in error_of(f"cifar10:{tmp_path}")


# ---------------------------------------------------------------------------- npz


def write_npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)  # numpy's stubs type **kwds as bool
    return path


def features_npz(path: Path, **overrides: np.ndarray) -> Path:
    arrays = {
        "x_train": RNG.normal(5.0, 3.0, (40, 6)) * np.arange(1, 7),
        "y_train": np.arange(40) % 4,
        "x_test": RNG.normal(5.0, 3.0, (10, 6)),
        "y_test": np.arange(10) % 4,
    }
    arrays.update(overrides)
    return write_npz(path, **arrays)


def test_npz_rank2_features_stay_flat(tmp_path: Path) -> None:
    path = features_npz(tmp_path / "f.npz")
    data = load_dataset(f"npz:{path}")
    assert (data.input_shape, data.num_classes) == ((6,), 4)


def test_npz_features_are_standardized_one_by_one(tmp_path: Path) -> None:
    path = features_npz(tmp_path / "f.npz")
    data = load_dataset(f"npz:{path}", val_fraction=0)
    assert torch.allclose(data.x_train.std(dim=0, correction=0), torch.ones(6), atol=1e-4)


def test_npz_constant_feature_does_not_blow_up_other_splits(tmp_path: Path) -> None:
    x_train = RNG.normal(size=(40, 6))
    x_train[:, 1] = 2.0
    path = features_npz(tmp_path / "f.npz", x_train=x_train)
    data = load_dataset(f"npz:{path}", val_fraction=0)
    assert data.x_test[:, 1].abs().max() < 100


@pytest.mark.parametrize(
    ("shape", "expected"),
    [((8, 5, 7), (1, 5, 7)), ((8, 5, 7, 3), (3, 5, 7)), ((8, 3, 6, 6), (3, 6, 6))],
)
def test_npz_images_become_channels_first(
    tmp_path: Path, shape: tuple[int, ...], expected: tuple[int, ...]
) -> None:
    x = RNG.normal(size=shape).astype(np.float32)
    path = write_npz(
        tmp_path / "i.npz", x_train=x, y_train=np.arange(8) % 2, x_test=x, y_test=np.arange(8) % 2
    )
    assert load_dataset(f"npz:{path}", val_fraction=0).input_shape == expected


def test_npz_without_y_test_names_the_missing_array(tmp_path: Path) -> None:
    path = write_npz(
        tmp_path / "d.npz",
        x_train=np.zeros((4, 2)),
        y_train=np.zeros(4, int),
        x_test=np.zeros((4, 2)),
    )
    assert "has no array 'y_test'" in error_of(f"npz:{path}")


def test_npz_negative_labels_are_refused(tmp_path: Path) -> None:
    path = features_npz(tmp_path / "f.npz", y_test=np.arange(10) - 1)
    assert "y_test in " in (message := error_of(f"npz:{path}")) and "negative labels" in message


def test_npz_fractional_labels_are_refused(tmp_path: Path) -> None:
    path = features_npz(tmp_path / "f.npz", y_train=np.full(40, 0.5))
    assert "non-integer labels" in error_of(f"npz:{path}")


def test_npz_sample_count_must_match_labels(tmp_path: Path) -> None:
    path = features_npz(tmp_path / "f.npz", y_train=np.arange(39) % 4)
    assert "40 samples but y_train has 39 labels" in error_of(f"npz:{path}")


def test_npz_that_is_not_an_archive_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "junk.npz"
    path.write_bytes(b"not a zip at all")
    message = error_of(f"npz:{path}")
    assert f"{path} is not an npz archive" in message and "pickle" not in message


# ---------------------------------------------------------------------------- errors


def test_unknown_reference_lists_the_accepted_ones() -> None:
    assert error_of("xyz") == f"dataset: unknown dataset 'xyz'; expected {DATASET_HELP}"


def test_missing_folder_is_named(tmp_path: Path) -> None:
    assert f"no such folder {tmp_path / 'nope'}" in error_of(f"mnist:{tmp_path / 'nope'}")


def test_missing_npz_file_is_named(tmp_path: Path) -> None:
    assert f"no such file {tmp_path / 'x.npz'}" in error_of(f"npz:{tmp_path / 'x.npz'}")


def test_mnist_folder_missing_one_file_names_it(tmp_path: Path) -> None:
    write_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    assert "missing file t10k-labels-idx1-ubyte" in error_of(f"mnist:{tmp_path}")


def test_idx_file_with_bad_magic_is_refused(tmp_path: Path) -> None:
    write_mnist(tmp_path)
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((2, 28, 28)), magic=0x0000_0903)
    assert "bad idx magic 0x00000903" in error_of(f"mnist:{tmp_path}")


def test_truncated_idx_file_is_refused(tmp_path: Path) -> None:
    write_mnist(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-5])
    assert "train-images-idx3-ubyte is truncated" in error_of(f"mnist:{tmp_path}")


def test_corrupt_gzip_idx_file_is_a_dataset_error(tmp_path: Path) -> None:
    write_mnist(tmp_path, gz=True)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    assert "cannot read" in error_of(f"mnist:{tmp_path}")


def test_images_and_labels_must_agree_in_count(tmp_path: Path) -> None:
    write_mnist(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(11))
    assert "11 labels" in error_of(f"mnist:{tmp_path}")


def test_dataset_error_survives_pickling_unchanged() -> None:
    error = DatasetError("mnist: bad file")
    assert str(pickle.loads(pickle.dumps(error))) == "dataset: mnist: bad file"


# ---------------------------------------------------------------------------- built-ins


def test_digits_splits_add_up_with_a_fixed_test_split() -> None:
    data = load_dataset("digits")
    sizes = [data.x_train.shape[0], data.x_val.shape[0], data.x_test.shape[0]]
    assert (sum(sizes), sizes[2], data.input_shape, data.num_classes) == (1797, 360, (1, 8, 8), 10)


def test_digits_splits_do_not_depend_on_the_seed() -> None:
    a, b = load_dataset("digits", seed=0), load_dataset("digits", seed=7)
    assert all(
        torch.equal(getattr(a, f), getattr(b, f))
        for f in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")
    )


def test_digits_training_split_is_standardized() -> None:
    data = load_dataset("digits")
    assert (data.x_train.mean().item(), data.x_train.std(correction=0).item()) == pytest.approx(
        (0.0, 1.0), abs=1e-4
    )


def test_digits_validation_split_is_stratified() -> None:
    counts = torch.bincount(load_dataset("digits", val_fraction=0.2).y_val, minlength=10)
    assert counts.min() >= 25


def test_zero_val_fraction_gives_an_empty_split_of_the_right_shape() -> None:
    data = load_dataset("digits", val_fraction=0)
    assert (tuple(data.x_val.shape), data.y_val.dtype) == ((0, 1, 8, 8), torch.int64)


def test_loaded_tensors_are_float32_and_int64() -> None:
    data = load_dataset("digits")
    assert (data.x_train.dtype, data.y_train.dtype, data.y_test.dtype) == (
        torch.float32,
        torch.int64,
        torch.int64,
    )


def test_mnist_5k_is_5000_mnist_images() -> None:
    data = load_dataset("mnist-5k")
    total = sum(t.shape[0] for t in (data.x_train, data.x_val, data.x_test))
    assert (total, data.input_shape, data.x_test.shape[0]) == (5000, (1, 28, 28), 1000)


def test_summary_and_to_describe_the_same_dataset() -> None:
    data = load_dataset("digits")
    moved = data.to("cpu")
    assert isinstance(moved, Dataset) and moved.summary() == {
        "name": "digits",
        "train_size": 1293,
        "val_size": 144,
        "test_size": 360,
        "input_shape": [1, 8, 8],
        "num_classes": 10,
    }


# ---------------------------------------------------------------------------- batches


def test_shuffled_batches_cover_every_sample_once() -> None:
    x, y = torch.arange(103.0)[:, None], torch.arange(103)
    seen = torch.cat([yb for _, yb in batches(x, y, 10, shuffle=True)])
    assert sorted(seen.tolist()) == list(range(103))


def test_batches_keep_inputs_and_labels_paired() -> None:
    x, y = torch.arange(50.0)[:, None], torch.arange(50)
    gen = torch.Generator().manual_seed(3)
    assert all(
        torch.equal(xb[:, 0].long(), yb) for xb, yb in batches(x, y, 7, shuffle=True, generator=gen)
    )


def test_seeded_generator_makes_shuffling_deterministic() -> None:
    x, y = torch.arange(64.0)[:, None], torch.arange(64)

    def order(seed: int) -> list[int]:
        gen = torch.Generator().manual_seed(seed)
        return torch.cat([yb for _, yb in batches(x, y, 16, shuffle=True, generator=gen)]).tolist()

    assert order(5) == order(5) != order(6)


def test_unshuffled_batches_keep_order_and_a_short_last_batch() -> None:
    x, y = torch.zeros(10, 2), torch.arange(10)
    assert [yb.tolist() for _, yb in batches(x, y, 4, shuffle=False)] == [
        [0, 1, 2, 3],
        [4, 5, 6, 7],
        [8, 9],
    ]


def test_drop_last_drops_the_short_batch() -> None:
    x, y = torch.zeros(10, 2), torch.arange(10)
    assert [len(yb) for _, yb in batches(x, y, 4, shuffle=True, drop_last=True)] == [4, 4]


def test_batches_apply_augmentation_to_image_batches() -> None:
    x, y = torch.ones(8, 1, 6, 6), torch.arange(8)
    out = [xb for xb, _ in batches(x, y, 4, shuffle=False, augment=AugmentConfig(cutout=2))]
    assert all((xb == 0).sum() == 4 * 4 for xb in out)


# ---------------------------------------------------------------------------- augmentation


def images(n: int = 64, c: int = 3, h: int = 8, w: int = 8) -> torch.Tensor:
    return torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(0)) + 1


def test_no_augmentation_returns_the_batch_unchanged() -> None:
    x = images()
    assert torch.equal(augment_batch(x, AugmentConfig()), x)


def test_augmentation_leaves_flat_features_alone() -> None:
    x = torch.randn(16, 10)
    assert torch.equal(augment_batch(x, AugmentConfig(crop_padding=2, flip=True, cutout=3)), x)


def test_crop_keeps_the_shape() -> None:
    assert augment_batch(images(), AugmentConfig(crop_padding=4)).shape == (64, 3, 8, 8)


def test_crop_takes_a_window_of_the_zero_padded_image() -> None:
    x, p = images(), 2
    out = augment_batch(x, AugmentConfig(crop_padding=p), torch.Generator().manual_seed(1))
    padded = torch.nn.functional.pad(x, (p, p, p, p))
    windows = padded.unfold(2, 8, 1).unfold(3, 8, 1)  # (N, C, 2p+1, 2p+1, 8, 8)
    matches = (windows == out[:, :, None, None]).flatten(4).all(-1).all(1)
    assert bool(matches.flatten(1).any(1).all())


def test_crop_offsets_differ_between_samples() -> None:
    x = images()
    out = augment_batch(x, AugmentConfig(crop_padding=2), torch.Generator().manual_seed(1))
    assert len({tuple((o == 0).flatten().tolist()) for o in out}) > 1


def test_flip_returns_each_image_or_its_mirror_and_both_occur() -> None:
    x = images()
    out = augment_batch(x, AugmentConfig(flip=True), torch.Generator().manual_seed(2))
    same = (out == x).flatten(1).all(1)
    mirrored = (out == x.flip(3)).flatten(1).all(1)
    assert bool((same ^ mirrored).all()) and 0 < int(mirrored.sum()) < 64


def test_flip_choice_follows_the_generator() -> None:
    x = images()
    a = augment_batch(x, AugmentConfig(flip=True), torch.Generator().manual_seed(9))
    b = augment_batch(x, AugmentConfig(flip=True), torch.Generator().manual_seed(9))
    assert torch.equal(a, b)


def test_cutout_zeros_one_square_of_the_given_side_per_image() -> None:
    out = augment_batch(images(), AugmentConfig(cutout=3), torch.Generator().manual_seed(4))
    zero = out[:, 0] == 0
    rows, cols = zero.any(2).sum(1), zero.any(1).sum(1)
    assert bool(((zero.sum((1, 2)) == 9) & (rows == 3) & (cols == 3)).all())


def test_cutout_zeros_the_same_square_in_every_channel() -> None:
    out = augment_batch(images(), AugmentConfig(cutout=3), torch.Generator().manual_seed(4))
    assert torch.equal(out[:, 0] == 0, out[:, 2] == 0)


def test_cutout_larger_than_the_image_clears_it() -> None:
    out = augment_batch(images(h=4, w=4), AugmentConfig(cutout=6))
    assert bool((out == 0).all())


def test_digits_are_scikit_learns_digits_sample_for_sample() -> None:
    from sklearn.datasets import load_digits

    from runners.engine.data import _digits, _fixed_test_split

    bunch = load_digits()
    x = np.asarray(bunch.data, dtype=np.float32).reshape(-1, 1, 8, 8)
    expected = _fixed_test_split(x, np.asarray(bunch.target, dtype=np.int64), 10)
    got = _digits()
    assert got.num_classes == expected.num_classes == 10
    for a, b in zip(got[:4], expected[:4], strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b)


def test_batches_draw_the_whole_pass_when_called_as_augment_batch_would() -> None:
    # Each batch gets the draws augment_batch makes for it with the same generator after the
    # permutation: the pass's batches do not depend on where the data lives.
    x, y = images(n=50), torch.arange(50)
    aug = AugmentConfig(crop_padding=2, flip=True, cutout=3)
    gen = torch.Generator().manual_seed(7)
    it = batches(x, y, 16, shuffle=True, generator=gen, augment=aug)
    after_call = gen.get_state()
    got = list(it)
    # Every draw was made when batches() was called; iterating draws nothing more.
    assert torch.equal(gen.get_state(), after_call)
    ref = torch.Generator().manual_seed(7)
    order = torch.randperm(50, generator=ref)
    assert len(got) == 4
    for i, (xb, yb) in enumerate(got):
        idx = order[16 * i : 16 * (i + 1)]
        assert torch.equal(yb, y[idx])
        assert torch.equal(xb, augment_batch(x[idx], aug, ref))
    assert torch.equal(ref.get_state(), after_call)


def test_dropped_last_batch_draws_no_augmentation() -> None:
    x, y = images(n=10), torch.arange(10)
    aug = AugmentConfig(flip=True)
    gen = torch.Generator().manual_seed(1)
    assert (
        len(list(batches(x, y, 4, shuffle=False, generator=gen, augment=aug, drop_last=True))) == 2
    )
    ref = torch.Generator().manual_seed(1)
    torch.rand(8, generator=ref)
    assert torch.equal(gen.get_state(), ref.get_state())


def _augment_step_by_step(x: torch.Tensor, augment: AugmentConfig, d: object) -> torch.Tensor:
    """Crop, then flip, then cutout, each as its own pass: what the one gather must equal."""
    n, c, h, w = x.shape
    if d.dy is not None:  # type: ignore[attr-defined]
        p = augment.crop_padding
        padded = torch.nn.functional.pad(x, (p, p, p, p))
        rows = d.dy[:, None] + torch.arange(h)  # type: ignore[attr-defined]
        cols = d.dx[:, None] + torch.arange(w)  # type: ignore[attr-defined]
        padded = padded.gather(2, rows[:, None, :, None].expand(n, c, h, w + 2 * p))
        x = padded.gather(3, cols[:, None, None, :].expand(n, c, h, w))
    if d.flip is not None:  # type: ignore[attr-defined]
        x = torch.where(d.flip[:, None, None, None], x.flip(3), x)  # type: ignore[attr-defined]
    if d.top is not None:  # type: ignore[attr-defined]
        sh, sw = min(augment.cutout, h), min(augment.cutout, w)
        top, left = d.top, d.left  # type: ignore[attr-defined]
        ys, xs = torch.arange(h)[None, :], torch.arange(w)[None, :]
        in_rows = (ys >= top[:, None]) & (ys < top[:, None] + sh)
        in_cols = (xs >= left[:, None]) & (xs < left[:, None] + sw)
        x = x.masked_fill((in_rows[:, :, None] & in_cols[:, None, :])[:, None], 0.0)
    return x


@pytest.mark.parametrize("crop", [0, 1, 3])
@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("cutout", [0, 2, 9])
def test_one_gather_equals_crop_flip_and_cutout_done_one_after_another(
    crop: int, flip: bool, cutout: int
) -> None:
    from runners.engine.data import _apply, _draw

    aug = AugmentConfig(crop_padding=crop, flip=flip, cutout=cutout)
    x = torch.randn(40, 2, 7, 5, generator=torch.Generator().manual_seed(crop + 10 * cutout))
    x[0, 0, 0, 0] = -0.0
    d = _draw(40, 7, 5, aug, torch.Generator().manual_seed(int(flip)), x.device)
    got, want = _apply(x, aug, d), _augment_step_by_step(x, aug, d)
    # Bit for bit, signed zeros included.
    assert torch.equal(got.view(torch.int32), want.view(torch.int32))


@pytest.mark.parametrize(
    ("kind", "shape", "classes"),
    [("mnist", (1, 28, 28), 10), ("cifar10", (3, 32, 32), 10), ("cifar100", (3, 32, 32), 100)],
)
def test_a_stand_in_reads_as_its_dataset_does(
    tmp_path: Path, kind: str, shape: tuple[int, ...], classes: int
) -> None:
    from runners.engine.standins import write_standin

    folder = write_standin(kind, tmp_path / kind, n_train=20, n_test=10)
    data = load_dataset(f"{kind}:{folder}", val_fraction=0.1)
    assert data.input_shape == shape and data.num_classes == classes
    assert data.x_train.shape[0] + data.x_val.shape[0] == 20 and data.x_test.shape[0] == 10
    with pytest.raises(ValueError, match="needs 5 training images"):
        write_standin(kind, tmp_path / "few", n_train=4)

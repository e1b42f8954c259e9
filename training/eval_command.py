"""Evaluate a checkpoint on its games: raw score, normalised score, capped sum.

Examples:
  python run.py eval --checkpoint runs/smoke
  python run.py eval --checkpoint runs/smoke --json eval.json
  python run.py eval --checkpoint runs/paper/checkpoints/ckpt_000020000000.pt --games Pong Breakout --episodes 10

CHECKPOINT may be a checkpoint file, a run directory or its checkpoints/ directory (the newest
readable checkpoint is used). Each game is played with its own task's gains and biases; the
capped sum is the paper's metric: the sum over games of normalised scores capped at 1.
Prints a table (game, mean score, episodes, normalised score) on stdout; --json also writes every
episode's score and the settings to a file. Progress goes to stderr (--quiet silences it).
Runs in this process, without Ray.
"""
from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from common.errors import UsageError
from common.results import Progress, write_json_atomic
from envs import scores
from envs.games import resolve_game


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="checkpoint file or run directory")
    parser.add_argument("--games", nargs="+", default=None, help="games to play (default: the run's schedule)")
    parser.add_argument("--episodes", type=int, default=None, help="episodes per game (default: the run's eval.episodes)")
    parser.add_argument("--epsilon", type=float, default=None, help="exploration rate (default: the run's epsilon.evaluation)")
    parser.add_argument("--max-episode-frames", type=int, default=None, help="cap on frames per episode")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, metavar="PATH",
                        help="also write the results, with every episode's score, to this JSON file")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress output on stderr (the table is still printed)")


def main(args: argparse.Namespace) -> int:
    from agents.dqn.actor import EnvRunner
    from training import checkpoint

    if args.json is not None and Path(args.json).is_dir():  # before the games are played, not after
        raise UsageError(f"--json {args.json}: it is a directory; give a file name")
    progress = Progress(quiet=args.quiet)
    trained, _ = checkpoint.policy(args.checkpoint)
    config, task_ids = trained.config, trained.game_tasks
    games = [resolve_game(g) for g in (args.games or list(task_ids))]
    unknown = [g for g in games if g not in task_ids]
    if unknown:
        raise UsageError(f"the checkpoint has no task for {unknown}; it was trained on {list(task_ids)}")
    episodes = args.episodes if args.episodes is not None else config.eval.episodes
    epsilon = args.epsilon if args.epsilon is not None else config.epsilon.evaluation
    max_frames = args.max_episode_frames or config.eval.max_episode_frames
    if episodes < 1 or not 0.0 <= epsilon <= 1.0 or max_frames < 1:
        raise UsageError("--episodes and --max-episode-frames must be positive and --epsilon in [0, 1]")
    runner = EnvRunner(0, 1, config.agent.network, config.env, seed=args.seed)
    runner.set_weights(trained.weights)
    results, normalized = {}, {}
    for game in games:
        played = runner.evaluate(game, task_ids[game], episodes, epsilon, max_frames)
        mean = sum(played) / len(played)
        normalized[game] = scores.normalized(game, mean)
        results[game] = {"task": task_ids[game], "scores": played, "score": mean, "normalized": normalized[game]}
        progress(f"{game}: score {mean:.1f} over {episodes} episode(s)")
    output = {
        "checkpoint": str(trained.path),
        "frames": trained.frames,
        "games": results,
        "capped_sum": scores.capped_sum(normalized),
        "config": {"episodes": episodes, "epsilon": epsilon, "max_episode_frames": max_frames, "seed": args.seed},
    }
    print(results_table(results, output["capped_sum"]), flush=True)
    if args.json is not None:
        progress(f"wrote {write_json_atomic(args.json, output)}")
    return 0


def results_table(results: Mapping[str, Mapping[str, Any]], capped_sum: float) -> str:
    """The scores as a plain-text table, one row per game, then the capped normalised sum."""
    header = ("game", "score (mean)", "episodes", "normalised")
    rows = [(game, f"{entry['score']:.1f}", str(len(entry["scores"])),
             "n/a" if entry["normalized"] is None else f"{entry['normalized']:.3f}")
            for game, entry in results.items()]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) if i == 0 else cell.rjust(width) for i, (cell, width) in
                       enumerate(zip(row, widths))).rstrip() for row in (header, *rows)]
    lines.insert(1, "  ".join("-" * width for width in widths))
    lines.append(f"capped normalised sum: {capped_sum:.3f}")
    return "\n".join(lines)

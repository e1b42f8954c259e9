"""Evaluate a checkpoint on its games: raw score, normalised score, capped sum.

Examples:
  python run.py eval --checkpoint runs/smoke --json eval.json
  python run.py eval --checkpoint runs/paper/checkpoints/ckpt_000020000000.pt --games Pong Breakout --episodes 10

CHECKPOINT may be a checkpoint file, a run directory or its checkpoints/ directory (the newest
readable checkpoint is used). Each game is played with its own task's gains and biases; the
capped sum is the paper's metric: the sum over games of normalised scores capped at 1.
Runs in this process, without Ray.
"""
from __future__ import annotations

import argparse
import sys

from common.errors import UsageError
from common.results import write_json_atomic
from envs import scores
from envs.games import resolve_game


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="checkpoint file or run directory")
    parser.add_argument("--games", nargs="+", default=None, help="games to play (default: the run's schedule)")
    parser.add_argument("--episodes", type=int, default=None, help="episodes per game (default: the run's eval.episodes)")
    parser.add_argument("--epsilon", type=float, default=None, help="exploration rate (default: the run's eval.epsilon)")
    parser.add_argument("--max-episode-frames", type=int, default=None, help="cap on frames per episode")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", required=True, help="where to write the results")
    parser.add_argument("--quiet", action="store_true")


def main(args: argparse.Namespace) -> int:
    from agents.dqn.actor import EnvRunner
    from training import checkpoint

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
        if not args.quiet:
            norm = "n/a" if normalized[game] is None else f"{normalized[game]:.3f}"
            print(f"{game}: score {mean:.1f} over {episodes} episode(s), normalised {norm}", file=sys.stderr)
    output = {
        "checkpoint": str(trained.path),
        "frames": trained.frames,
        "games": results,
        "capped_sum": scores.capped_sum(normalized),
        "config": {"episodes": episodes, "epsilon": epsilon, "max_episode_frames": max_frames, "seed": args.seed},
    }
    write_json_atomic(args.json, output)
    if not args.quiet:
        print(f"capped normalised sum: {output['capped_sum']:.3f} -> {args.json}", file=sys.stderr)
    return 0

"""Forget-me-not's accuracy: does it tell the games apart, how fast does it see a switch?

    python -m perf.fmn_accuracy --config configs/minatar.yaml \\
        --games MinAtar/Freeway,MinAtar/SpaceInvaders,MinAtar/Breakout,MinAtar/Asterix,MinAtar/Seaquest

Plays every game with a random policy (or, with --checkpoint, a trained agent's epsilon-greedy
policy: an agent that plays well shows screens random play never reaches), builds streams that
visit the games in several orders (two rounds each, a different visit length per stream; a revisit
continues the game's play), feeds each stream to a fresh ForgetMeNot with the config's `fmn`
options (`--set fmn.window=16` to try others) and prints, per stream and on average: the adjusted
Rand index of the inferred ids against the games played, the tasks found, how many games got an id
of their own, and the frames from each switch until the new game's id is reported (median and
worst).
"""
from __future__ import annotations

import argparse
import itertools
import sys

import numpy as np

from common.errors import UsageError
from envs.games import family_of, random_policy_frames, resolve_game
from fmn import ForgetMeNot
from fmn.segmentation import adjusted_rand_index, detection_delays, majority_ids
from training.config import load_config


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="run config whose fmn options are measured")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config entry")
    parser.add_argument("--games", help="comma-separated games (default: the config's)")
    parser.add_argument("--visit-frames", default="1000,1500,2000",
                        help="frames per visit, one stream per value (default 1000,1500,2000)")
    parser.add_argument("--rounds", type=int, default=2, help="visits of every game per stream (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the play and of the visit orders (default 0)")
    parser.add_argument("--checkpoint", help="play with this checkpoint's agent (file or run directory) instead of "
                        "at random; every game must be one it was trained on")
    parser.add_argument("--epsilon", type=float, default=0.05,
                        help="the agent's exploration rate with --checkpoint (default 0.05, evaluation's)")
    return parser.parse_args(argv)


def streams(games: list[str], visit_lengths: list[int], rounds: int, seed: int, play=random_policy_frames):
    """(order, visit length, frames, true game per frame) per stream: the given order first, then shuffled ones.

    `play(game, num_frames, seed=...)` gives a game's frames (default: random play)."""
    rng = np.random.default_rng(seed)
    pools = {game: play(game, rounds * max(visit_lengths), seed=seed + i) for i, game in enumerate(games)}
    for index, visit in enumerate(visit_lengths):
        order = list(games) if index == 0 else [games[i] for i in rng.permutation(len(games))]
        frames = np.concatenate([pools[g][r * visit:(r + 1) * visit] for r in range(rounds) for g in order])
        truth = np.array([g for _ in range(rounds) for g in order for _ in range(visit)])
        yield order, visit, frames, truth


def agent_player(checkpoint_path: str, epsilon: float):
    """A `play` for `streams`: frames of the checkpoint's agent, epsilon-greedy with each game's own task."""
    from agents.dqn.actor import EnvRunner
    from training import checkpoint

    trained, _ = checkpoint.policy(checkpoint_path)

    def play(game: str, num_frames: int, seed: int = 0) -> np.ndarray:
        if game not in trained.game_tasks:
            raise UsageError(f"--checkpoint was trained on {list(trained.game_tasks)}, not {game}")
        runner = EnvRunner(0, 1, trained.config.agent.network, trained.config.env, seed=seed)
        runner.set_weights(trained.weights)
        runner.set_game(game, trained.game_tasks[game])
        frames = np.empty((num_frames, *trained.config.agent.network.frame_shape), dtype=np.uint8)
        for i in range(num_frames):
            runner.collect(1, epsilon)
            frames[i] = runner.newest_frames()[0]
        runner.close()
        return frames

    return play


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = load_config(args.config, args.set)
        games = [resolve_game(g.strip()) for g in args.games.split(",")] if args.games else list(config.games)
        frame_shapes = {family_of(game).frame_shape(config.env) for game in games}
        if len(frame_shapes) != 1:
            raise UsageError(f"--games mixes frame shapes {sorted(frame_shapes)}: give games of one family")
        try:
            visit_lengths = [int(v) for v in args.visit_frames.split(",")]
        except ValueError:
            raise UsageError(f"--visit-frames expects comma-separated integers, got {args.visit_frames!r}") from None
        if len(games) < 2 or min(visit_lengths) < 1 or args.rounds < 1:
            raise UsageError("give at least 2 games, positive --visit-frames and --rounds >= 1")
        ForgetMeNot.from_config(config.fmn, frame_shape=frame_shapes.pop())  # the options are valid
        if not 0.0 <= args.epsilon <= 1.0:
            raise UsageError(f"--epsilon must be in [0, 1], got {args.epsilon}")
        play = random_policy_frames if args.checkpoint is None else agent_player(args.checkpoint, args.epsilon)
        pools = streams(games, visit_lengths, args.rounds, args.seed, play)
        first = next(pools)  # plays the games: an unknown game or a bad checkpoint shows here
    except (UsageError, ValueError) as error:
        print(f"perf.fmn_accuracy: error: {error}", file=sys.stderr)
        return 2

    print(f"fmn options: {config.fmn}")
    print("play: " + ("random" if args.checkpoint is None else f"{args.checkpoint}, epsilon {args.epsilon}"))
    print(f"{'visit':>6} {'ARI':>6} {'tasks':>5} {'own ids':>7} {'median':>6} {'worst':>6}  order")
    results = []
    for order, visit, frames, truth in itertools.chain([first], pools):
        fmn = ForgetMeNot.from_config(config.fmn, frame_shape=frames.shape[1:])
        labels = np.array(fmn.observe_batch(frames))
        delays = detection_delays(truth, labels)
        own_ids = len(set(majority_ids(truth, labels).values()))
        ari = adjusted_rand_index(truth, labels)
        results.append((ari, fmn.num_tasks, own_ids, np.median(delays), max(delays)))
        print(f"{visit:>6} {ari:>6.3f} {fmn.num_tasks:>5} {own_ids:>4}/{len(games):<2} {np.median(delays):>6.0f} "
              f"{max(delays):>6}  {' '.join(order)}")
    ari, tasks, own, median, worst = (np.array(column, dtype=float) for column in zip(*results))
    print(f"{'mean':>6} {ari.mean():>6.3f} {tasks.mean():>5.1f} {own.mean():>7.1f} {median.mean():>6.0f} "
          f"{worst.max():>6.0f}  (worst: the slowest detection of all streams)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

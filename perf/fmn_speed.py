"""Forget-me-not throughput: frames/s with 1, 5 and 10 known tasks, on one core.

    python -m perf.fmn_speed [--frames 20000] [--observe-every 4]

Plays each of 10 Atari games with a random policy (a few seconds of ALE), teaches a
ForgetMeNot the first K of them, then times it on a stream that visits those K games in
turn (so switches and their decisions are part of the cost), frame by frame with
`observe` and in one call with `observe_batch`. BLAS is limited to one thread so the figure
is per core. The target is >= 5,000 frames/s per core with 10 tasks.
"""
from __future__ import annotations

import os

for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")  # before numpy is imported: per-core numbers

import argparse
import copy
import time

import numpy as np

from envs.games import random_policy_frames
from fmn import ForgetMeNot

# Games whose random-policy frames stay one task each (Krull and Enduro change scenes).
GAMES = (
    "Pong", "Breakout", "SpaceInvaders", "Boxing", "Freeway", "Seaquest", "Gopher", "Asterix", "MsPacman", "Tennis",
)
WARMUP_FRAMES = 200  # per game, to create its task
VISIT_FRAMES = 300  # per visit in the timed stream
POOL_FRAMES = 600  # per game for the timed stream, reused cyclically


def timed_stream(frames_by_game: list[np.ndarray], num_frames: int) -> np.ndarray:
    """num_frames frames visiting the games in turn, VISIT_FRAMES at a time (cycling through each game's pool)."""
    stream = np.empty((num_frames, 84, 84), dtype=np.uint8)
    for start in range(0, num_frames, VISIT_FRAMES):
        visit = start // VISIT_FRAMES
        pool = frames_by_game[visit % len(frames_by_game)]
        offset = (visit // len(frames_by_game)) * VISIT_FRAMES
        length = min(VISIT_FRAMES, num_frames - start)
        stream[start : start + length] = pool[(offset + np.arange(length)) % len(pool)]
    return stream


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=20_000, help="frames timed per task count (default 20000)")
    parser.add_argument("--observe-every", type=int, default=4, help="ForgetMeNot observe_every (default 4)")
    args = parser.parse_args()

    started = time.perf_counter()
    pools = [random_policy_frames(game, WARMUP_FRAMES + POOL_FRAMES) for game in GAMES]
    print(f"played {len(GAMES)} games in {time.perf_counter() - started:.1f}s; "
          f"timing {args.frames} frames per row, observe_every={args.observe_every}")
    print(f"{'games':>5} {'tasks':>5} {'observe fr/s':>13} {'batch fr/s':>11} {'us/frame':>9}")

    for num_games in (1, 5, 10):
        fmn = ForgetMeNot(observe_every=args.observe_every)
        for pool in pools[:num_games]:
            fmn.observe_batch(pool[:WARMUP_FRAMES])
        stream = timed_stream([pool[WARMUP_FRAMES:] for pool in pools[:num_games]], args.frames)
        batch_fmn = copy.deepcopy(fmn)  # the same starting state for both ways of feeding frames

        start = time.perf_counter()
        for frame in stream:
            fmn.observe(frame)
        per_frame_rate = len(stream) / (time.perf_counter() - start)

        start = time.perf_counter()
        batch_fmn.observe_batch(stream)
        batch_rate = len(stream) / (time.perf_counter() - start)

        print(
            f"{num_games:>5} {fmn.num_tasks:>5} {per_frame_rate:>13,.0f} {batch_rate:>11,.0f} "
            f"{1e6 / per_frame_rate:>9.1f}"
        )


if __name__ == "__main__":
    main()

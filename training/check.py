"""`run.py train --check`: what a run will cost on this machine, measured, before it starts.

The config goes through every check `run.py train` makes; then its network and replay are built
and timed here, without Ray and without training:

- replay memory: bytes per stored transition (the buffer's real layout; with compressed frames, their
  size measured on a few hundred frames of random play of each game) x `agent.replay_capacity`
  per task x one buffer per game;
- seconds per learner update: a few real `Learner.update` calls on random batches of the config's
  size and network (with a synthetic EWC anchor when EWC is on, as after the first task switch),
  on the learner's device where this machine has it, else on the CPU;
- seconds per agent step: a few hundred steps of the first game through `EnvRunner`, with the
  config's env settings and network, on one torch thread as each env actor has;
- the schedule's wall time: the env actors and the learner run in parallel, so the slower side
  sets the pace,
      wall ~ max(agent steps x step time / actors.num_env_actors, updates x update time),
      updates = (agent steps - games x agent.learning_starts) / agent.update_period
  (no update is owed while a game's buffer first fills). Evaluation, Fisher computations at task
  switches and start-up are not included, and the estimate assumes the actors and the learner
  each have their own cores: where they share them, the sum of the two is the bound.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from agents.dqn.actor import EnvRunner
from agents.dqn.learning import anchored_learner
from agents.replay import Batch, LZ4Frames
from common.threads import torch_threads
from envs.games import random_policy_frames
from training.config import RunConfig, learner_device, replay_bytes_per_transition

COMPRESSION_SAMPLE_FRAMES = 300  # frames of random play per game whose compressed size is measured
TIMED_UPDATES = 5  # the paper's network takes ~80 ms per update on one core: a few suffice for a median
WARMUP_UPDATES = 2  # the first updates allocate buffers and fill caches
TIMED_ENV_STEPS = 300  # agent steps per environment of the first game
WARMUP_ENV_STEPS = 10


def check_run(config: RunConfig, say: Callable[[str], None] = print) -> None:
    """Measure and say what `config` needs: replay memory, update and env-step times, the schedule's wall time."""
    agent, actors = config.agent, config.actors
    games = len(config.games)
    say(f"config {config.run_name!r} is valid: {games} games ({', '.join(config.games)}), "
        f"{config.schedule.repeats} rounds of {config.schedule.frames_per_visit:,} frames per visit")

    frame_bytes, measured = compressed_frame_bytes(config)
    per_transition = replay_bytes_per_transition(agent, frame_bytes=frame_bytes)
    total = per_transition * agent.replay_capacity * games
    say(f"replay memory: {per_transition:,.0f} B per stored transition x {agent.replay_capacity:,} per task x "
        f"{games} tasks = {_gib(total)}{measured}")
    if config.task_inference == "fmn":
        most = per_transition * agent.replay_capacity * agent.network.max_tasks
        say(f"  forget-me-not may open up to agent.network.max_tasks = {agent.network.max_tasks} buffers: {_gib(most)}")

    update_s, where = time_learner_update(config)
    say(f"learner update: {1e3 * update_s:.1f} ms per update ({where})")
    step_s, played = time_env_step(config)
    say(f"env step: {1e3 * step_s:.2f} ms per agent step ({played})")

    steps = config.total_frames // config.env.frame_skip
    updates = max(0, steps - games * agent.learning_starts) // agent.update_period
    env_s = steps * step_s / actors.num_env_actors
    learner_s = updates * update_s
    say(f"schedule: {steps:,} agent steps ({config.total_frames:,} frames / env.frame_skip {config.env.frame_skip}), "
        f"{updates:,} updates ((agent steps - {games} games x agent.learning_starts {agent.learning_starts:,}) "
        f"/ agent.update_period {agent.update_period})")
    pace = "the learner sets" if learner_s >= env_s else "the env actors set"
    say(f"estimated wall time: {_duration(max(env_s, learner_s))} = max(env {steps:,} steps x "
        f"{1e3 * step_s:.2f} ms / {actors.num_env_actors} actors = {_duration(env_s)}, learner {updates:,} updates x "
        f"{1e3 * update_s:.1f} ms = {_duration(learner_s)}): {pace} the pace; at most "
        f"{_duration(env_s + learner_s)} where they share cores (evaluation, Fisher and start-up not included)")


def compressed_frame_bytes(config: RunConfig) -> tuple[float | None, str]:
    """With compressed replay: the mean bytes per stored frame over the config's games, measured on
    random play, and what to say about it; (None, "") with raw frames."""
    if config.agent.replay_compression == "none":
        return None, ""
    per_game = {}
    for i, game in enumerate(dict.fromkeys(config.games)):
        frames = random_policy_frames(game, COMPRESSION_SAMPLE_FRAMES, seed=config.seed + i, settings=config.env)
        per_game[game] = LZ4Frames.mean_compressed_bytes(frames)
    largest = max(per_game, key=per_game.get)
    raw = int(np.prod(config.agent.network.frame_shape))
    mean = sum(per_game.values()) / len(per_game)
    return mean, (f" (frames {config.agent.replay_compression}-compressed: {mean:,.0f} B per frame on average over "
                  f"{COMPRESSION_SAMPLE_FRAMES} frames of random play per game, up to {per_game[largest]:,.0f} B "
                  f"for {largest}; {raw:,} B raw)")


def time_learner_update(config: RunConfig) -> tuple[float, str]:
    """Median seconds of `Learner.update` on random batches for `config`, and where it was measured."""
    agent, actors = config.agent, config.actors
    has_gpu = torch.cuda.is_available()
    device = learner_device(config.device, has_gpu)
    note = ""
    if device == "cuda" and not has_gpu:
        device, note = "cpu", "; device: cuda, but this machine has no GPU"
    with torch_threads(actors.learner_threads):
        # as after the first task switch, the update pays for the EWC penalty when the run has one
        learner = anchored_learner(agent, ewc_tasks=int(agent.ewc_enabled), seed=config.seed, device=device)
        batch = Batch.random(agent.batch_size, agent.network, gamma=agent.gamma, seed=config.seed)
        for _ in range(WARMUP_UPDATES):
            learner.update(batch, 0, report_penalty=False)
        seconds = []
        for _ in range(TIMED_UPDATES):
            started = time.perf_counter()
            learner.update(batch, 0, report_penalty=False)  # returns its metrics as floats: the device has synced
            seconds.append(time.perf_counter() - started)
        threads = torch.get_num_threads()
    plural = "s" if threads > 1 else ""
    hardware = f"cpu, {threads} torch thread{plural}" if device == "cpu" else torch.cuda.get_device_name()
    where = (f"{hardware}, batch {agent.batch_size}, median of {TIMED_UPDATES}, eager optimizer step"
             f"{', with the EWC penalty' if agent.ewc_enabled else ''}{note}")
    return statistics.median(seconds), where


def time_env_step(config: RunConfig) -> tuple[float, str]:
    """Seconds per agent step of one env actor on the first game (emulator, acting, chunking), and what was played."""
    actors, game = config.actors, config.games[0]
    with torch_threads(1):  # as each env actor runs (training/actors.py)
        runner = EnvRunner(0, actors.envs_per_actor, config.agent.network, config.env, seed=config.seed)
        runner.set_game(game, task=0)
        runner.collect(WARMUP_ENV_STEPS, config.epsilon.start)
        started = time.perf_counter()
        result = runner.collect(TIMED_ENV_STEPS, config.epsilon.start)
        seconds = time.perf_counter() - started
        runner.close()
    envs = f"{actors.envs_per_actor} env{'s' if actors.envs_per_actor > 1 else ''}"
    played = (f"{game}, {result.steps} steps in {envs} of one actor, cpu, 1 torch thread, "
              f"epsilon {config.epsilon.start:g}")
    return seconds / result.steps, played


def _gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.2f} GiB"


def _duration(seconds: float) -> str:
    for unit, length in (("days", 86_400), ("h", 3_600), ("min", 60)):
        if seconds >= 2 * length:
            return f"{seconds / length:.1f} {unit}"
    return f"{seconds:.1f} s"

"""RLlib's DQN (new API stack, Ray 2.60) configured like our agent, for a side-by-side throughput run.

`build_rllib_config(run_config)` translates our `RunConfig` into an RLlib `DQNConfig`: the
same game and preprocessing (our own `envs.atari` environment: 84x84 grey, action repeat 4,
no-ops, clipped rewards), frame stack 4, the paper's network shape, batch, replay ratio,
learning-start threshold, number of env runners and CPU reservations. What cannot be made
identical is listed by `config_notes` and lands under "notes" in the benchmark JSON.

`measure_rllib(config, seconds)` builds the algorithm, trains until learning has started,
then measures env steps/s and updates/s over `seconds` of wall time, from RLlib's own counters.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import sys
import time
from typing import Any

import gymnasium as gym
import numpy as np

from common.errors import UsageError
from envs.games import family_of
from envs.games import make_env as make_game_env
from envs.settings import EnvSettings
from training.config import RunConfig

ENV_NAME = "continual_ewc_atari"
DEFAULT_FRAGMENT = 50  # env steps per runner per sampling round (see choose in docs/performance.md)


class ChannelsLastFrameStack(gym.Wrapper):
    """The last `stack` frames as float32 (H, W, channels x stack) in [0, 1]: what RLlib's CNN encoder takes.

    RLlib's encoder feeds observations to its first Conv2d as they come (uint8 fails there),
    and its own Atari wrapper also emits float32, so this is the usual RLlib set-up. A grey
    frame (H, W) is one channel, a MinAtar grid (C, H, W) is C. Zero-padded at an episode's
    start, like our `FrameStack`. RLlib's frame-stacking connectors are not used (see
    `config_notes`), so stacked observations go into its replay.
    """

    def __init__(self, env: gym.Env, frame_shape: tuple[int, ...], stack: int = 4):
        super().__init__(env)
        channels = frame_shape[0] if len(frame_shape) == 3 else 1
        self._frames = np.zeros((*frame_shape[-2:], channels * stack), dtype=np.float32)
        self._channels = channels
        self.observation_space = gym.spaces.Box(0.0, 1.0, self._frames.shape, np.float32)

    def _push(self, frame: np.ndarray) -> np.ndarray:
        c = self._channels
        self._frames[..., :-c] = self._frames[..., c:]
        grid = frame if frame.ndim == 2 else np.moveaxis(frame, 0, -1)
        self._frames[..., -c:] = grid.reshape(*grid.shape[:2], c) * (1.0 / 255.0)
        return self._frames.copy()

    def reset(self, **kwargs):
        frame, info = self.env.reset(**kwargs)
        self._frames[:] = 0
        return self._push(frame), info

    def step(self, action):
        frame, reward, terminated, truncated, info = self.env.step(action)
        return self._push(frame), reward, terminated, truncated, info


def make_env(env_config: dict) -> gym.Env:
    """Env creator registered with Ray Tune (runs inside RLlib's env runner processes)."""
    settings = EnvSettings(**env_config["settings"])
    seed = env_config.get("seed", 0) + 1000 * getattr(env_config, "worker_index", 0) + getattr(env_config, "vector_index", 0)
    game = env_config["game"]
    family = family_of(game)
    env = ChannelsLastFrameStack(make_game_env(game, seed=seed, settings=settings), family.frame_shape(settings),
                                 env_config["stack"])
    env.action_space = gym.spaces.Discrete(family.num_actions)
    return env


def updates_per_round(run_config: RunConfig, fragment: int) -> int:
    """Learner updates per RLlib sampling round at our replay ratio (one per `update_period` env steps)."""
    actors = run_config.actors
    steps = fragment * actors.envs_per_actor * actors.num_env_actors
    if fragment < 1 or steps % run_config.agent.update_period:
        raise UsageError(
            f"rllib fragment {fragment} x {actors.envs_per_actor} envs x {actors.num_env_actors} runners = {steps} "
            f"env steps per round is not a multiple of agent.update_period {run_config.agent.update_period}"
        )
    return steps // run_config.agent.update_period


def build_rllib_config(run_config: RunConfig, *, fragment: int = DEFAULT_FRAGMENT, game: str | None = None):
    """An RLlib `DQNConfig` matching `run_config` (first game unless `game`); see the module docstring."""
    from ray.rllib.algorithms.dqn import DQNConfig
    from ray.rllib.algorithms.dqn.dqn import calculate_rr_weights
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig
    from ray.tune.registry import register_env

    register_env(ENV_NAME, make_env)
    agent, net, actors = run_config.agent, run_config.agent.network, run_config.actors
    valid = [[c, k, s, "valid"] for c, k, s in zip(net.channels, net.kernels, net.strides)]  # our geometry
    rounds = updates_per_round(run_config, fragment)
    # RLlib's replay ratio knob: `training_intensity` = replayed / sampled steps relative to a "native
    # ratio" that counts one runner too many (the local one); solve for the weights we want.
    native = agent.batch_size / (fragment * actors.envs_per_actor * (actors.num_env_actors + 1))
    eps = run_config.epsilon
    config = (
        DQNConfig()
        .environment(
            ENV_NAME,
            env_config={
                "game": game or run_config.games[0],
                "settings": dataclasses.asdict(run_config.env),
                "stack": net.frame_stack,
                "seed": run_config.seed,
            },
        )
        .framework("torch")
        .env_runners(
            num_env_runners=actors.num_env_actors,
            num_envs_per_env_runner=actors.envs_per_actor,
            num_cpus_per_env_runner=actors.cpus_per_actor,
            rollout_fragment_length=fragment,
        )
        .resources(num_cpus_for_main_process=actors.learner_cpus)  # num_learners=0: the learner runs here
        .learners(num_learners=0, num_gpus_per_learner=int(run_config.device == "cuda"))
        .rl_module(
            model_config=DefaultModelConfig(
                conv_filters=valid, conv_activation="relu", head_fcnet_hiddens=[net.hidden], head_fcnet_activation="relu"
            )
        )
        .training(
            train_batch_size_per_learner=agent.batch_size,
            lr=agent.learning_rate,
            gamma=agent.gamma,
            grad_clip=agent.max_grad_norm,
            grad_clip_by="global_norm",
            double_q=True,
            dueling=False,
            n_step=agent.n_step,
            num_atoms=1,
            td_error_loss_fn="huber",
            # RLlib counts the target period in sampled env steps; ours counts updates.
            target_network_update_freq=agent.target_update_period * agent.update_period,
            num_steps_sampled_before_learning_starts=max(agent.learning_starts, agent.batch_size),
            epsilon=[(0, eps.start), (eps.decay_steps, eps.end)],
            replay_buffer_config={"type": "EpisodeReplayBuffer", "capacity": agent.replay_capacity},
            training_intensity=rounds * native,
        )
        .reporting(min_sample_timesteps_per_iteration=0, min_time_s_per_iteration=0, min_train_timesteps_per_iteration=0)
        .debugging(log_level="ERROR", seed=run_config.seed)
        .fault_tolerance(restart_failed_env_runners=False)  # a broken runner must fail the benchmark, not loop
    )
    store, train = calculate_rr_weights(config)
    if (store, train) != (1, rounds):
        raise AssertionError(f"RLlib replay ratio weights {store, train} != (1, {rounds})")
    return config


def config_notes(run_config: RunConfig, fragment: int = DEFAULT_FRAGMENT) -> list[str]:
    """Where the RLlib run necessarily differs from ours (recorded in the benchmark JSON and docs)."""
    agent = run_config.agent
    rounds = updates_per_round(run_config, fragment)
    return [
        f"optimizer: RLlib's torch learner hard-codes Adam (lr {agent.learning_rate:g}); ours is RMSProp "
        f"({'centered, ' if agent.rmsprop_centered else ''}lr {agent.learning_rate:g}, alpha {agent.rmsprop_alpha}, eps {agent.rmsprop_eps}); the per-update cost is similar",
        f"network: the same convolutions {list(run_config.agent.network.channels)} (valid padding) + FC "
        f"{run_config.agent.network.hidden} + {run_config.agent.network.num_actions} outputs, but plain biases instead "
        "of per-task gains and biases, and no EWC penalty (RLlib has none)",
        "frame stacking: done in an env wrapper (RLlib's FrameStacking connectors are not used: their DQN path "
        "broke between releases), so RLlib's replay stores whole stacked observations per step, as float32 "
        "(its CNN encoder does not take uint8)",
        f"replay ratio: RLlib alternates sample and train: each round samples {fragment} steps per runner "
        f"({rounds * agent.update_period} in all), then does {rounds} updates and broadcasts weights once; "
        "ours samples and trains concurrently (Ape-X style)",
        "replay: RLlib's uniform EpisodeReplayBuffer; target period converted to env steps",
    ]


def _module_updates(result: dict, batch_size: int) -> float:
    """Learner updates so far, from RLlib's count of trained module steps (samples)."""
    from ray.rllib.core import DEFAULT_MODULE_ID
    from ray.rllib.utils.metrics import (
        LEARNER_RESULTS,
        NUM_MODULE_STEPS_TRAINED_LIFETIME,
    )

    learners = result.get(LEARNER_RESULTS, {})
    trained = learners.get(DEFAULT_MODULE_ID, {}).get(NUM_MODULE_STEPS_TRAINED_LIFETIME, 0)
    return float(trained) / batch_size


class _PhaseTimers:
    """Wall time spent in RLlib's phases, by wrapping the algorithm's own objects' methods (this instance only)."""

    def __init__(self, algo) -> None:
        self.seconds: dict[str, float] = {}
        self._wrap("replay_sample", algo.local_replay_buffer, "sample")
        self._wrap("learner_update", algo.learner_group, "update")
        self._wrap("weight_sync", algo.env_runner_group, "sync_weights")

    def _wrap(self, phase: str, owner: Any, method: str) -> None:
        original = getattr(owner, method)
        self.seconds[phase] = 0.0

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[phase] += time.perf_counter() - start

        setattr(owner, method, timed)

    def snapshot(self) -> dict[str, float]:
        return dict(self.seconds)


def measure_rllib(
    run_config: RunConfig,
    seconds: float,
    *,
    fragment: int = DEFAULT_FRAGMENT,
    threads: int = 1,
    quiet: bool = False,
    max_warmup_s: float = 300.0,
) -> dict[str, Any]:
    """Build RLlib's DQN, train until learning started, then measure for `seconds` of wall time.

    Needs `ray.init` done by the caller. `threads`: torch threads of RLlib's learner, which runs
    in this process (0: leave torch's default, all cores). Returns env steps/s and updates/s over
    the measured window (whole training iterations), the replay ratio RLlib achieved, and timings.
    """
    from ray.rllib.utils.metrics import (
        ENV_RUNNER_RESULTS,
        NUM_ENV_STEPS_SAMPLED_LIFETIME,
    )

    def say(message: str) -> None:
        if not quiet:
            print(f"[bench/rllib] {message}", file=sys.stderr, flush=True)

    import torch

    batch = run_config.agent.batch_size
    previous_threads = torch.get_num_threads()
    if threads > 0:  # num_learners=0: RLlib's learner computes in this process, with its torch threads
        torch.set_num_threads(threads)
    for name in ("ray.rllib", "ray.tune", "ray.util"):  # deprecation and "new API stack" notices: not ours to act on
        logging.getLogger(name).setLevel(logging.ERROR)
    t_build = time.monotonic()
    algo = build_rllib_config(run_config, fragment=fragment).build_algo()
    build_s = time.monotonic() - t_build
    say(f"algorithm built in {build_s:.1f} s; sampling until learning starts")
    timers = _PhaseTimers(algo)
    try:
        def snapshot() -> tuple[float, float, float]:
            result = algo.train()
            steps = float(result.get(ENV_RUNNER_RESULTS, {}).get(NUM_ENV_STEPS_SAMPLED_LIFETIME, 0))
            return time.monotonic(), steps, _module_updates(result, batch)

        warm_start = time.monotonic()
        now, steps, updates = snapshot()
        while updates == 0:
            if now - warm_start > max_warmup_s:
                raise RuntimeError(f"RLlib did not start learning within {max_warmup_s:g} s")
            now, steps, updates = snapshot()
        start = (now, steps, updates)
        phases_start = timers.snapshot()
        say(f"learning started after {now - warm_start:.1f} s ({steps:.0f} env steps); measuring {seconds:g} s")
        iterations = 0
        while now - start[0] < seconds:
            now, steps, updates = snapshot()
            iterations += 1
        wall = now - start[0]
        env_steps, n_updates = steps - start[1], updates - start[2]
        # Where the wall time went: the rest is sampling (the learner waits for the runners) and bookkeeping.
        phases = {k: (v - phases_start[k]) / wall for k, v in timers.snapshot().items()}
        phases["sampling_and_other"] = 1.0 - sum(phases.values())
        return {
            "env_steps_per_s": env_steps / wall,
            "updates_per_s": n_updates / wall,
            "env_steps_per_update": env_steps / n_updates if n_updates else math.nan,
            "measured_s": wall,
            "iterations": iterations,
            "build_s": build_s,
            "warmup_s": start[0] - warm_start,
            "fragment": fragment,
            "torch_threads": torch.get_num_threads(),
            "time_shares": phases,
            "learner_update_ms": 1e3 * phases["learner_update"] * wall / n_updates if n_updates else math.nan,
        }
    finally:
        algo.stop()
        torch.set_num_threads(previous_threads)


def rllib_time_to_score(run_config: RunConfig, threshold: float, cap_s: float, *, eval_every_steps: int,
                        episodes: int, fragment: int = DEFAULT_FRAGMENT, threads: int = 1) -> dict[str, Any]:
    """Seconds from building RLlib's DQN to its first evaluation at `threshold` (None within `cap_s`).

    RLlib evaluates in its own loop, every `eval_every_steps` sampled steps (whole iterations), with
    `episodes` greedy episodes (explore off: its evaluation cannot set a small epsilon). Needs `ray.init`.
    """
    import torch
    from ray.rllib.utils.metrics import (
        ENV_RUNNER_RESULTS,
        EPISODE_RETURN_MEAN,
        EVALUATION_RESULTS,
    )

    previous_threads = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    for name in ("ray.rllib", "ray.tune", "ray.util"):
        logging.getLogger(name).setLevel(logging.ERROR)
    actors = run_config.actors
    per_iteration = fragment * actors.envs_per_actor * actors.num_env_actors
    started = time.monotonic()
    config = build_rllib_config(run_config, fragment=fragment).evaluation(
        evaluation_interval=max(1, eval_every_steps // per_iteration),
        evaluation_duration=episodes,
        evaluation_duration_unit="episodes",
        evaluation_num_env_runners=0,
        evaluation_config={"explore": False},
    )
    algo = config.build_algo()
    evaluations: list[tuple[float, float]] = []
    try:
        while time.monotonic() - started < cap_s:
            result = algo.train()
            score = result.get(EVALUATION_RESULTS, {}).get(ENV_RUNNER_RESULTS, {}).get(EPISODE_RETURN_MEAN)
            if score is None or (isinstance(score, float) and math.isnan(score)):
                continue
            elapsed = time.monotonic() - started
            evaluations.append((elapsed, float(score)))
            if score >= threshold:
                return {"seconds": elapsed, "evaluations": evaluations}
        return {"seconds": None, "evaluations": evaluations}
    finally:
        algo.stop()
        torch.set_num_threads(previous_threads)

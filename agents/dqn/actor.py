"""EnvRunner: plays one game in several environments with a local copy of the Q-network.

The plain class behind the Ray `EnvActor` (Acme style: the logic is tested without Ray).
It keeps a frame stack per environment for acting, and ships what it saw as
`TransitionChunk`s of single frames (never stacked) for the learner's replay.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from agents.dqn.networks import NetworkConfig, QNetwork
from agents.replay import ChunkBuilder, FrameStack, TransitionChunk
from envs.games import make_env
from envs.settings import EnvSettings


@dataclass
class CollectResult:
    """What an actor sends back after `collect`: chunks for the replay and episode statistics."""

    game: str
    task: int
    steps: int  # agent steps taken, over all environments
    fresh_actor: bool  # this runner had never received weights: e.g. Ray restarted the actor and it lost them
    chunks: list[tuple[tuple, TransitionChunk]]  # (replay source key, chunk) per environment
    episode_returns: list[float] = field(default_factory=list)  # raw (unclipped) game scores
    episode_frames: list[int] = field(default_factory=list)


class EnvRunner:
    """Runs `num_envs` environments of the current game; acts epsilon-greedily with its network.

    `net`: act with this network itself instead of a copy of its own that `set_weights` fills
    (in a single process, the learner's online network: every update shows in the next action
    without copying weights).
    """

    def __init__(
        self,
        actor_id: int,
        num_envs: int,
        network: NetworkConfig,
        settings: EnvSettings = EnvSettings(),
        *,
        seed: int = 0,
        device: str = "cpu",
        net: QNetwork | None = None,
    ):
        self.actor_id = actor_id
        self.num_envs = num_envs
        self.settings = settings
        if net is None:
            self.device = torch.device(device)
            self.net = QNetwork(network).to(self.device).eval()
        else:
            self.device = next(net.parameters()).device
            self.net = net
        self.rng = np.random.default_rng([seed, actor_id])
        self.game: str | None = None
        self.task = 0
        self.has_weights = net is not None
        self._visit = 0  # bumps at each game change: a new replay source, so no episode spans two visits
        self._envs: list = []
        self._stacks: list[FrameStack] = []
        self._builders: list[ChunkBuilder] = []
        self._states: np.ndarray | None = None
        self._returns = np.zeros(num_envs)
        self._frames = np.zeros(num_envs, dtype=np.int64)

    def reseed(self, seed: int, generation: int) -> None:
        """New random streams (exploration, environment seeds), e.g. for a resumed run's actors."""
        self.rng = np.random.default_rng([seed, self.actor_id, generation])

    def set_weights(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        self.net.load_state_dict(state_dict)
        self.has_weights = True

    def set_game(self, game: str, task: int) -> None:
        """Switch every environment to `game` (played as task id `task`) and start fresh episodes."""
        self.task = task
        self.net.set_task(task)
        if game == self.game:
            return
        self.close()
        self.game = game
        self._visit += 1
        seeds = self.rng.integers(0, 2**31 - 1, size=self.num_envs)
        self._envs = [make_env(game, seed=int(s), settings=self.settings) for s in seeds]
        self._stacks = [self._new_stack() for _ in self._envs]
        self._builders = [ChunkBuilder(self.net.config.frame_shape) for _ in self._envs]
        states = []
        for i, env in enumerate(self._envs):
            frame, _ = env.reset()
            self._builders[i].start_episode(frame)
            states.append(self._stacks[i].reset(frame))
        self._states = np.stack(states)
        self._returns[:] = 0
        self._frames[:] = 0

    def close(self) -> None:
        """Close the environments (the next `set_game` opens new ones)."""
        for env in self._envs:
            env.close()
        self._envs = []
        self.game = None

    def newest_frames(self) -> np.ndarray:
        """Each environment's latest frame, the one the next action sees: (num_envs, *frame_shape)."""
        if self._states is None:
            raise RuntimeError("EnvRunner.newest_frames before set_game")
        return self._states[:, -1].copy()

    def _new_stack(self) -> FrameStack:
        return FrameStack(self.net.config.frame_stack, self.net.config.frame_shape)

    @torch.no_grad()
    def act(self, states: np.ndarray, epsilon: float) -> np.ndarray:
        """Epsilon-greedy actions for a batch of stacked states."""
        q = self.net(torch.from_numpy(states).to(self.device))
        actions = q.argmax(1).cpu().numpy()
        explore = self.rng.random(len(actions)) < epsilon
        actions[explore] = self.rng.integers(0, q.shape[1], size=int(explore.sum()))
        return actions

    def collect(self, steps_per_env: int, epsilon: float, game: str | None = None, task: int = 0) -> CollectResult:
        """Play `steps_per_env` agent steps in every environment; return the chunks and finished episodes.

        `game` and `task`, when given, switch first (a no-op when already playing them): a caller
        that always passes them gets correct chunks even from an actor Ray has just restarted.
        """
        if game is not None:
            self.set_game(game, task)
        if self.game is None:
            raise RuntimeError("EnvRunner.collect before set_game")
        result = CollectResult(game=self.game, task=self.task, steps=0, chunks=[], fresh_actor=not self.has_weights)
        for _ in range(steps_per_env):
            actions = self.act(self._states, epsilon)
            for i, env in enumerate(self._envs):
                frame, reward, terminated, truncated, info = env.step(int(actions[i]))
                self._returns[i] += info["raw_reward"]
                self._frames[i] += self.settings.frame_skip
                episode_end = terminated or truncated
                terminal = terminated or (self.settings.terminal_on_life_loss and info["life_lost"])
                self._builders[i].add(int(actions[i]), reward, terminal, frame, episode_end)
                if episode_end:
                    result.episode_returns.append(float(self._returns[i]))
                    result.episode_frames.append(int(self._frames[i]))
                    self._returns[i], self._frames[i] = 0.0, 0
                    frame, _ = env.reset()
                    self._builders[i].start_episode(frame)
                    self._states[i] = self._stacks[i].reset(frame)
                else:
                    self._states[i] = self._stacks[i].push(frame)
            result.steps += len(self._envs)
        result.chunks = [
            ((self.actor_id, i, self._visit), builder.take()) for i, builder in enumerate(self._builders)
        ]
        return result

    def evaluate(self, game: str, task: int, episodes: int, epsilon: float, max_episode_frames: int,
                 parallel: int | None = None) -> list[float]:
        """Raw scores of `episodes` full episodes of `game`, in their own environments (training state untouched).

        Up to `parallel` episodes (default: all) are played at once, with one forward pass per step for
        all of them: many episodes cost little more than one. Exactly `episodes` are started and every
        one is played to its end, so short episodes are not over-counted.
        """
        settings = dataclasses.replace(self.settings, max_episode_frames=max_episode_frames)
        width = max(1, min(episodes, parallel or episodes))
        seeds = self.rng.integers(0, 2**31 - 1, size=width)
        envs = [make_env(game, seed=int(seed), settings=settings) for seed in seeds]
        stacks = [self._new_stack() for _ in envs]
        states: list[np.ndarray | None] = [None] * width
        totals = [0.0] * width
        previous_task = self.net.task
        self.net.set_task(task)
        scores: list[float] = []
        try:
            playing = list(range(width))
            for i in playing:
                frame, _ = envs[i].reset()
                states[i] = stacks[i].reset(frame)
            started = width
            while playing:
                actions = self.act(np.stack([states[i] for i in playing]), epsilon)
                still_playing = []
                for i, action in zip(playing, actions):
                    frame, _, terminated, truncated, info = envs[i].step(int(action))
                    totals[i] += info["raw_reward"]
                    if not (terminated or truncated):
                        states[i] = stacks[i].push(frame)
                        still_playing.append(i)
                        continue
                    scores.append(totals[i])
                    totals[i] = 0.0
                    if started < episodes:  # this environment plays one of the episodes not yet started
                        frame, _ = envs[i].reset()
                        states[i] = stacks[i].reset(frame)
                        started += 1
                        still_playing.append(i)
                playing = still_playing
        finally:
            for env in envs:
                env.close()
            self.net.set_task(previous_task)
        return scores

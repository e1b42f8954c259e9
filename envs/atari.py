"""Atari environments with the preprocessing of the DQN/EWC papers.

One environment step is one *agent* step: the action is repeated `frame_skip` times
(max-pooled over the last two frames), the screen is converted to luminance and resized to
`screen_size` x `screen_size` (84 x 84, the papers', unless the config says otherwise), and
up to `noop_max` random no-ops start each episode. Observations are single uint8 frames:
frame stacking belongs to the actor and the replay buffer, so that stacked frames are
never stored twice.

`step` returns the clipped reward (what the learner trains on); the raw game reward is in
`info["raw_reward"]` (what episode returns and human-normalised scores use), and a lost
life is flagged in `info["life_lost"]` so the caller can treat it as terminal for
bootstrapping without resetting the game.
"""
from __future__ import annotations

import difflib
import functools
import re

import gymnasium as gym
import numpy as np

from common.errors import UsageError
from envs.settings import EnvSettings

FRAME_SHAPE = (EnvSettings.screen_size, EnvSettings.screen_size)  # the default; env.screen_size sets it
NUM_ACTIONS = 18  # the full ALE action set, the same for every game


@functools.cache
def available_games() -> tuple[str, ...]:
    """CamelCase names of every ALE game that gymnasium registers (e.g. 'SpaceInvaders')."""
    import ale_py

    gym.register_envs(ale_py)
    names = [key[4:-3] for key in gym.registry if key.startswith("ALE/") and key.endswith("-v5")]
    return tuple(sorted(names))


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def resolve_game(name: str) -> str:
    """Canonical game name; accepts 'SpaceInvaders', 'space_invaders', 'spaceinvaders'.

    Raises UsageError listing close matches for an unknown name.
    """
    by_key = {_key(game): game for game in available_games()}
    if _key(name) in by_key:
        return by_key[_key(name)]
    close = difflib.get_close_matches(_key(name), list(by_key), n=5, cutoff=0.6)
    hint = ", ".join(by_key[k] for k in close) if close else "none; see envs.atari.available_games()"
    raise UsageError(f"unknown Atari game {name!r}; close matches: {hint}")


class _TrainingSignals(gym.Wrapper):
    """Clips rewards to [-1, 1] (optionally) and reports raw rewards and life losses in `info`."""

    def __init__(self, env: gym.Env, clip_rewards: bool):
        super().__init__(env)
        self._clip = clip_rewards
        self._lives = 0

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self._lives = self.env.unwrapped.ale.lives()
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        lives = self.env.unwrapped.ale.lives()
        info["raw_reward"] = float(reward)
        info["life_lost"] = lives < self._lives
        self._lives = lives
        if self._clip:
            reward = float(np.sign(reward))
        return obs, reward, terminated, truncated, info


def make_atari_env(game: str, *, seed: int | None = None, settings: EnvSettings = EnvSettings()) -> gym.Env:
    """A preprocessed ALE environment whose observations are uint8 (screen_size, screen_size) frames."""
    import ale_py

    gym.register_envs(ale_py)
    ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Error)  # no banner per environment
    game = resolve_game(game)
    env = gym.make(
        f"ALE/{game}-v5",
        frameskip=1,  # AtariPreprocessing does the action repeat (and the max-pool over 2 frames)
        repeat_action_probability=settings.repeat_action_probability,
        full_action_space=settings.full_action_space,
        max_num_frames_per_episode=settings.max_episode_frames,
    )
    env = gym.wrappers.AtariPreprocessing(
        env,
        noop_max=settings.noop_max,
        frame_skip=settings.frame_skip,
        screen_size=settings.screen_size,
        terminal_on_life_loss=False,  # life loss is a training signal in info, not a reset
        grayscale_obs=True,
    )
    env = _TrainingSignals(env, settings.clip_rewards)
    if seed is not None:
        env.reset(seed=seed)
        env.action_space.seed(seed)
    return env

"""MinAtar games (Young & Tian 2019): Atari-like games on 10x10 grids, for laptop-scale continual RL.

The authors' `minatar` package runs the games; this wraps one as a gymnasium environment with
the same conventions as `envs.atari`, so the agent, replay and forget-me-not need nothing else:

- a game is named `MinAtar/<Game>` (Asterix, Breakout, Freeway, Seaquest, SpaceInvaders);
- an observation is one uint8 frame (C, 10, 10): the game's C binary channels as 0 / 255 (ALE
  frames are uint8 too, and networks scale both by 1/255), zero-padded to C = 10 channels (the
  most any game has) so one network serves every game, the convention of continual-RL work;
- the full set of 6 actions; MinAtar's defaults: sticky actions with probability 0.1
  (`env.repeat_action_probability`) and difficulty ramping (`env.difficulty_ramping`);
- one environment step is one MinAtar step (no frame skip), so a "frame" is a step;
- `info["raw_reward"]` and `info["life_lost"]` (always False: a MinAtar game ends at its first death).

The games' own modules (`minatar/environments/<game>.py`, numpy only) are loaded directly:
`import minatar` pulls in matplotlib, seaborn and pandas for its display code, seconds of start-up
in every actor for nothing. The wrapper's two jobs are done here as upstream does them: sticky
actions (repeat the previous action with `repeat_action_probability`) drawn from the same
RandomState as the game's own randomness.
"""
from __future__ import annotations

import difflib
import functools
import importlib.util

import gymnasium as gym
import numpy as np

from common.errors import UsageError
from envs.settings import EnvSettings

PREFIX = "MinAtar/"
GAMES = {"Asterix": "asterix", "Breakout": "breakout", "Freeway": "freeway", "Seaquest": "seaquest",
         "SpaceInvaders": "space_invaders"}
CHANNELS = 10  # Seaquest's; the other games' channels are zero-padded up to it
FRAME_SHAPE = (CHANNELS, 10, 10)
NUM_ACTIONS = 6
ON = 255  # the value of a set cell


def resolve_game(name: str) -> str:
    """'MinAtar/Breakout' (also 'minatar/breakout', 'MinAtar/space_invaders') -> 'MinAtar/Breakout'."""
    short = name.split("/", 1)[-1]
    by_key = {key.lower(): key for key in GAMES} | {module: key for key, module in GAMES.items()}
    key = short.lower().replace("-v0", "").replace("-v1", "")
    if key in by_key:
        return PREFIX + by_key[key]
    close = difflib.get_close_matches(key, list(by_key), n=3, cutoff=0.6)
    hint = ", ".join(PREFIX + by_key[k] for k in close) or ", ".join(PREFIX + g for g in GAMES)
    raise UsageError(f"unknown MinAtar game {name!r}; close matches: {hint}")


@functools.cache
def game_class(module: str) -> type:
    """The `Env` class of `minatar/environments/<module>.py`, loaded without the `minatar` package."""
    package = importlib.util.find_spec("minatar")
    if package is None or not package.submodule_search_locations:
        raise UsageError("MinAtar games need the `minatar` package: pip install minatar")
    path = f"{package.submodule_search_locations[0]}/environments/{module}.py"
    spec = importlib.util.spec_from_file_location(f"_minatar_{module}", path)
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    return loaded.Env


class MinAtarEnv(gym.Env):
    """One MinAtar game with the conventions of the module docstring."""

    metadata = {"render_modes": []}

    def __init__(self, game: str, settings: EnvSettings = EnvSettings(frame_skip=1), seed: int | None = None):
        self.game = resolve_game(game)
        self.settings = settings
        self._game = game_class(GAMES[self.game[len(PREFIX):]])(ramping=settings.difficulty_ramping)
        self._random = np.random.RandomState(seed)  # the game's randomness and the sticky actions, as upstream
        self._game.random = self._random
        self._last_action = 0
        self.observation_space = gym.spaces.Box(0, ON, FRAME_SHAPE, np.uint8)
        self.action_space = gym.spaces.Discrete(NUM_ACTIONS)
        self._frame = np.zeros(FRAME_SHAPE, dtype=np.uint8)
        self._rng = np.random.default_rng(seed)
        self._steps = 0
        if seed is not None:
            self.reset(seed=seed)

    def reset(self, *, seed: int | None = None, options=None):
        if seed is not None:
            self._random = np.random.RandomState(seed)
            self._game.random = self._random
            self._rng = np.random.default_rng(seed)
            self.action_space.seed(seed)
        self._game.reset()
        for _ in range(int(self._rng.integers(0, self.settings.noop_max + 1))):
            if self._act(0)[1]:
                self._game.reset()
        self._steps = 0
        return self._observe(), {}

    def _act(self, action: int) -> tuple[float, bool]:
        if self._random.rand() < self.settings.repeat_action_probability:
            action = self._last_action
        self._last_action = action
        return self._game.act(action)

    def step(self, action):
        reward, done = self._act(int(action))
        self._steps += 1
        truncated = not done and self._steps >= self.settings.max_episode_frames
        info = {"raw_reward": float(reward), "life_lost": False}
        if self.settings.clip_rewards:
            reward = float(np.sign(reward))
        return self._observe(), float(reward), bool(done), truncated, info

    def _observe(self) -> np.ndarray:
        state = self._game.state()  # (10, 10, C) bool
        self._frame[: state.shape[2]] = np.moveaxis(state, 2, 0) * np.uint8(ON)
        return self._frame.copy()

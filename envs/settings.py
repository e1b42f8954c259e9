"""How the environments are played: the `env` section of a run config.

The defaults are the EWC paper's Atari set-up. MinAtar games read the same settings where they
apply (sticky actions, no-ops, the episode cap, reward clipping) and add `difficulty_ramping`;
`envs.games.check_settings` refuses the ones a family cannot honour (MinAtar has no frame skip and
no screen to resize).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EnvSettings:
    frame_skip: int = 4  # emulator frames per agent step (ALE; MinAtar takes one step per action)
    screen_size: int = 84  # Atari only: side of the square grey frame the screen is resized to
    noop_max: int = 30  # up to this many no-op actions start each episode
    max_episode_frames: int = 108_000  # 30 minutes of play at 60 Hz, as in DQN evaluations
    repeat_action_probability: float = 0.0  # sticky actions; the 2015-17 papers used deterministic ALE
    full_action_space: bool = True
    clip_rewards: bool = True
    terminal_on_life_loss: bool = False  # training only: a lost life cuts bootstrapping, the game goes on
    difficulty_ramping: bool = True  # MinAtar only: games speed up as the agent progresses (MinAtar's default)

"""Game families: which games a schedule can play, how their environments are made, what they look like.

A schedule plays games of one family (their frames must fit one network):

    family   names                         frame (uint8)       actions   one agent step
    atari    Pong, SpaceInvaders, ...      (S, S), S = 84 by   18        env.frame_skip emulator frames
                                           env.screen_size
    minatar  MinAtar/Breakout, ...         (10, 10, 10)        6         one MinAtar step (frame_skip 1)
"""
from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np

from common.errors import UsageError
from envs import atari, minatar
from envs.settings import EnvSettings


@dataclass(frozen=True)
class Family:
    name: str
    fixed_frame_shape: tuple[int, ...] | None  # None: square screens of env.screen_size
    num_actions: int
    frame_skip: int | None  # the only frame skip the family supports (None: any)

    def frame_shape(self, settings: EnvSettings) -> tuple[int, ...]:
        """The shape of one frame of this family's games played with `settings`."""
        return self.fixed_frame_shape or (settings.screen_size, settings.screen_size)


ATARI = Family("atari", None, atari.NUM_ACTIONS, frame_skip=None)
MINATAR = Family("minatar", minatar.FRAME_SHAPE, minatar.NUM_ACTIONS, frame_skip=1)


def is_minatar(name: str) -> bool:
    return name.lower().startswith(minatar.PREFIX.lower())


def resolve_game(name: str) -> str:
    """The canonical name of a game ('space_invaders' -> 'SpaceInvaders', 'minatar/breakout' -> 'MinAtar/Breakout');
    UsageError with close matches for an unknown one."""
    if is_minatar(name):
        return minatar.resolve_game(name)
    return atari.resolve_game(name.removeprefix("ALE/"))


def family_of(game: str) -> Family:
    return MINATAR if is_minatar(game) else ATARI


def schedule_family(games: list[str] | tuple[str, ...]) -> Family:
    """The one family of a schedule's games; UsageError if they mix families."""
    families = {family_of(game).name: family_of(game) for game in games}
    if len(families) > 1:
        by_family = {name: [g for g in games if family_of(g).name == name] for name in families}
        raise UsageError("a schedule plays games of one family (one network must fit their frames), got "
                         + "; ".join(f"{name}: {', '.join(gs)}" for name, gs in by_family.items()))
    return next(iter(families.values()))


def check_settings(family: Family, settings: EnvSettings) -> None:
    """Refuse env settings the family cannot honour."""
    if family.frame_skip is not None and settings.frame_skip != family.frame_skip:
        raise UsageError(f"config key 'env.frame_skip' must be {family.frame_skip} for {family.name} games "
                         f"(one step per action), got {settings.frame_skip}")
    if family.fixed_frame_shape is not None and settings.screen_size != EnvSettings.screen_size:
        raise UsageError(f"config key 'env.screen_size' must be {EnvSettings.screen_size} for {family.name} games "
                         f"(their frames are {list(family.fixed_frame_shape)}, never resized), "
                         f"got {settings.screen_size}")
    if not settings.full_action_space:
        raise UsageError("config key 'env.full_action_space' must be true: one network plays every game of the "
                         "schedule with the same actions")


def make_env(game: str, *, seed: int | None = None, settings: EnvSettings = EnvSettings()) -> gym.Env:
    """An environment of `game` whose observations are uint8 frames of its family's shape; `step`'s info
    holds "raw_reward" and "life_lost"."""
    if is_minatar(game):
        return minatar.MinAtarEnv(game, settings, seed=seed)
    return atari.make_atari_env(game, seed=seed, settings=settings)


def random_policy_frames(game: str, num_frames: int, seed: int = 0, settings: EnvSettings | None = None) -> np.ndarray:
    """`num_frames` frames of `game` played by a uniformly random policy, shaped (N, *frame_shape)."""
    family = family_of(game)
    if settings is None:
        settings = EnvSettings(frame_skip=family.frame_skip or EnvSettings.frame_skip)
    env = make_env(game, seed=seed, settings=settings)
    frames = np.empty((num_frames, *family.frame_shape(settings)), dtype=np.uint8)
    for i in range(num_frames):
        frame, _, terminated, truncated, _ = env.step(env.action_space.sample())
        frames[i] = frame
        if terminated or truncated:
            env.reset()
    env.close()
    return frames

"""The paper's Atari preprocessing, checked against a reference built from the raw ALE screens.

The reference repeats each action 4 times on an unwrapped ALE environment, max-pools the last
two grey screens, and resizes to 84x84 with OpenCV's area interpolation (the DQN recipe that
gymnasium's AtariPreprocessing implements); our environment must produce the same frames,
the same clipped rewards and the same life-loss flags.
"""
from __future__ import annotations

import cv2
import gymnasium as gym
import numpy as np
import pytest

from common.errors import UsageError
from envs.atari import (
    FRAME_SHAPE,
    make_atari_env,
    resolve_game,
)
from envs.games import random_policy_frames
from envs.settings import EnvSettings


def reference_env(game: str, seed: int) -> gym.Env:
    import ale_py

    gym.register_envs(ale_py)
    env = gym.make(f"ALE/{game}-v5", frameskip=1, repeat_action_probability=0.0, full_action_space=True,
                   obs_type="grayscale")
    env.reset(seed=seed)
    return env


@pytest.mark.parametrize("game", ["Breakout", "Pong"])
def test_frames_rewards_and_lives_match_the_raw_emulator(game):
    settings = EnvSettings(noop_max=0)  # no random no-ops, so both streams stay in lockstep
    ours = make_atari_env(game, seed=3, settings=settings)
    reference = reference_env(game, seed=3)
    ale = reference.unwrapped.ale
    ours.reset(seed=3)
    rng = np.random.default_rng(0)
    lives = ale.lives()
    life_losses = rewards = 0
    for _ in range(400):
        action = int(rng.integers(0, 18))
        screens, raw_reward = [], 0.0
        for _ in range(settings.frame_skip):
            _, reward, terminated, truncated, _ = reference.step(action)
            raw_reward += reward
            screens.append(ale.getScreenGrayscale())
            if terminated or truncated:
                break
        frame, reward, done, cut, info = ours.step(action)
        if terminated or truncated:  # the game ended inside the action repeat: both stop here
            assert done or cut
            break
        expected = cv2.resize(np.maximum(screens[-1], screens[-2]), FRAME_SHAPE, interpolation=cv2.INTER_AREA)
        assert frame.dtype == np.uint8 and frame.shape == FRAME_SHAPE
        np.testing.assert_array_equal(frame, expected)
        assert info["raw_reward"] == raw_reward and reward == np.sign(raw_reward)
        assert info["life_lost"] == (ale.lives() < lives)
        life_losses += info["life_lost"]
        rewards += raw_reward != 0
        lives = ale.lives()
    assert life_losses or rewards  # the stretch exercised at least one of the signals


def test_game_names_are_resolved_or_refused_with_close_matches():
    assert resolve_game("space_invaders") == resolve_game("spaceinvaders") == "SpaceInvaders"
    with pytest.raises(UsageError, match="close matches: Breakout"):
        resolve_game("Breakot")


def test_random_policy_frames_are_preprocessed_frames():
    frames = random_policy_frames("Pong", 20, seed=1)
    assert frames.shape == (20, *FRAME_SHAPE) and frames.dtype == np.uint8
    assert frames.std() > 0


def test_frames_come_out_at_the_configured_screen_size():
    settings = EnvSettings(noop_max=0, screen_size=64)
    ours = make_atari_env("Pong", seed=5, settings=settings)
    reference = reference_env("Pong", seed=5)
    frame, _ = ours.reset(seed=5)
    assert frame.shape == (64, 64) and frame.dtype == np.uint8
    for action in np.random.default_rng(1).integers(0, 18, size=20):
        screens = []
        for _ in range(settings.frame_skip):
            reference.step(int(action))
            screens.append(reference.unwrapped.ale.getScreenGrayscale())
        frame, *_ = ours.step(int(action))
        expected = cv2.resize(np.maximum(screens[-1], screens[-2]), (64, 64), interpolation=cv2.INTER_AREA)
        np.testing.assert_array_equal(frame, expected)  # the same preprocessing, at the configured size
    assert random_policy_frames("Pong", 3, settings=settings).shape == (3, 64, 64)

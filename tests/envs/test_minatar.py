"""MinAtar games through `envs.games`: padded uint8 frames, names, settings, and a schedule's one family."""
from __future__ import annotations

import numpy as np
import pytest

from common.errors import UsageError
from envs import games, minatar
from envs.settings import EnvSettings

SETTINGS = EnvSettings(frame_skip=1, noop_max=0, max_episode_frames=50, repeat_action_probability=0.1)


@pytest.mark.parametrize("game", list(minatar.GAMES))
def test_frames_are_the_games_channels_as_0_or_255_zero_padded_to_10(game):
    import minatar as upstream  # the authors' wrapper, as a reference for the game's own randomness

    ours = games.make_env(f"MinAtar/{game}", seed=0, settings=SETTINGS)
    reference = upstream.Environment(minatar.GAMES[game], sticky_action_prob=0.1)
    reference.seed(5)
    ours.reset(seed=5)
    reference.reset()
    channels = reference.state_shape()[2]
    rng = np.random.default_rng(0)
    for _ in range(40):
        action = int(rng.integers(0, 6))
        frame, reward, terminated, _, _ = ours.step(action)
        expected_reward, expected_done = reference.act(action)
        assert frame.shape == (10, 10, 10) and frame.dtype == np.uint8 and set(np.unique(frame)) <= {0, 255}
        assert not frame[channels:].any()  # the padding stays empty
        np.testing.assert_array_equal(frame[:channels] == 255, np.moveaxis(reference.state(), 2, 0))
        assert (reward, terminated) == (np.sign(expected_reward), expected_done)
        if terminated:
            break


def test_episodes_are_cut_at_max_episode_frames_and_rewards_are_reported_raw():
    env = games.make_env("MinAtar/Freeway", seed=1, settings=SETTINGS)  # Freeway runs 2,500 steps on its own
    env.reset(seed=1)
    for step in range(1, 51):
        _, reward, terminated, truncated, info = env.step(2)  # up
        assert info["life_lost"] is False and reward == np.sign(info["raw_reward"])
        if step < 50:
            assert not (terminated or truncated)
    assert truncated and not terminated


def test_difficulty_ramping_reaches_the_game():
    env = games.make_env("MinAtar/Asterix", seed=0, settings=EnvSettings(frame_skip=1, difficulty_ramping=False))
    assert env.unwrapped._game.ramping is False  # Breakout has no ramping; Asterix speeds up


def test_names_resolve_to_one_spelling_and_unknown_ones_list_close_matches():
    for name in ("MinAtar/SpaceInvaders", "minatar/space_invaders", "MinAtar/spaceinvaders"):
        assert games.resolve_game(name) == "MinAtar/SpaceInvaders"
    with pytest.raises(UsageError, match="close matches: MinAtar/Breakout"):
        games.resolve_game("MinAtar/Breakot")
    assert games.family_of("MinAtar/Breakout") is games.MINATAR and games.family_of("Pong") is games.ATARI


def test_a_schedule_is_one_family_and_minatar_has_no_frame_skip():
    assert games.schedule_family(["MinAtar/Breakout", "MinAtar/Asterix"]) is games.MINATAR
    with pytest.raises(UsageError, match="one family"):
        games.schedule_family(["Pong", "MinAtar/Breakout"])
    with pytest.raises(UsageError, match="'env.frame_skip' must be 1 for minatar games"):
        games.check_settings(games.MINATAR, EnvSettings(frame_skip=4))


def test_random_policy_frames_of_minatar():
    frames = games.random_policy_frames("MinAtar/SpaceInvaders", 30, seed=2)
    assert frames.shape == (30, 10, 10, 10) and frames.dtype == np.uint8 and frames.any()

"""Normalised scores (human for Atari, published DQN for MinAtar) and the paper's capped sum."""
from __future__ import annotations

import pytest

from envs.scores import (
    ATARI_SCORES,
    MINATAR_DQN_CURVES,
    MINATAR_RANDOM,
    capped_sum,
    normalized,
    published_dqn_score,
)


def test_random_play_is_0_and_the_human_tester_is_1_on_atari():
    for game, (random_score, human_score) in ATARI_SCORES.items():
        assert normalized(game, random_score) == pytest.approx(0.0)
        assert normalized(game, human_score) == pytest.approx(1.0)
    # Pong: random -20.7, human 9.3 (Mnih et al. 2015, Extended Data Table 2)
    assert normalized("Pong", -5.7) == pytest.approx(0.5)
    assert normalized("NoSuchGame", 10.0) is None


def test_minatar_is_normalised_by_random_play_and_published_dqn():
    assert normalized("MinAtar/Breakout", MINATAR_RANDOM["MinAtar/Breakout"]) == pytest.approx(0.0)
    assert normalized("MinAtar/Breakout", 10.0) == pytest.approx(1.0)  # DQN's plateau from 1M steps
    assert normalized("MinAtar/Seaquest", 5.0) is None  # no usable DQN reference: raw scores


def test_published_dqn_curve_is_linear_from_random_play_and_flat_after_its_last_point():
    game = "MinAtar/SpaceInvaders"
    (first_steps, first_score), (last_steps, last_score) = MINATAR_DQN_CURVES[game]
    assert published_dqn_score(game, 0) == pytest.approx(MINATAR_RANDOM[game])
    assert published_dqn_score(game, first_steps // 2) == pytest.approx((MINATAR_RANDOM[game] + first_score) / 2)
    assert published_dqn_score(game, first_steps) == pytest.approx(first_score)
    assert published_dqn_score(game, 10 * last_steps) == pytest.approx(last_score)
    assert published_dqn_score("Pong", 1000) is None


def test_capped_sum_caps_each_game_at_1_and_skips_games_without_references():
    assert capped_sum({"Pong": 0.5, "Breakout": 3.0, "Other": None}) == pytest.approx(1.5)
    assert capped_sum({"Pong": -0.2, "Breakout": 0.4}) == pytest.approx(0.2)  # below random counts as it is
    assert capped_sum({}) == 0.0

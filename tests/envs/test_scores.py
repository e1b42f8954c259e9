"""Human-normalised scores and the paper's capped sum."""
from __future__ import annotations

import pytest

from envs.scores import REFERENCE_SCORES, capped_sum, human_normalized


def test_random_play_is_0_and_the_human_tester_is_1():
    for game, (random_score, human_score) in REFERENCE_SCORES.items():
        assert human_normalized(game, random_score) == pytest.approx(0.0)
        assert human_normalized(game, human_score) == pytest.approx(1.0)
    # Pong: random -20.7, human 9.3 (Mnih et al. 2015, Extended Data Table 2)
    assert human_normalized("Pong", -5.7) == pytest.approx(0.5)
    assert human_normalized("NoSuchGame", 10.0) is None


def test_capped_sum_caps_each_game_at_1_and_skips_games_without_references():
    assert capped_sum({"Pong": 0.5, "Breakout": 3.0, "Other": None}) == pytest.approx(1.5)
    assert capped_sum({"Pong": -0.2, "Breakout": 0.4}) == pytest.approx(0.2)  # below random counts as it is
    assert capped_sum({}) == 0.0

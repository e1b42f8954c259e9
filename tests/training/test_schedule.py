"""The schedule: visits in fixed or seeded random order, never the same game twice in a row."""
from __future__ import annotations

import pytest

from training.config import ScheduleConfig
from training.schedule import Schedule

GAMES = ["Pong", "Breakout", "SpaceInvaders"]


def test_fixed_order_repeats_the_games_as_listed():
    schedule = Schedule(GAMES, ScheduleConfig(order="fixed", repeats=2, frames_per_visit=100))
    assert [v.game for v in schedule.visits] == GAMES * 2
    assert [v.index for v in schedule.visits] == list(range(6))
    assert schedule.games() == GAMES and schedule.total_frames == 600


@pytest.mark.parametrize("seed", range(30))
def test_random_rounds_are_shuffles_that_never_repeat_a_game_across_a_round_boundary(seed):
    schedule = Schedule(GAMES, ScheduleConfig(order="random", repeats=4, frames_per_visit=100, seed=seed))
    order = [v.game for v in schedule.visits]
    for round_ in range(4):
        assert sorted(order[3 * round_: 3 * round_ + 3]) == sorted(GAMES)  # each round plays every game once
    assert all(a != b for a, b in zip(order, order[1:]))


def test_random_order_is_seeded():
    def order(seed):
        return [v.game for v in Schedule(GAMES, ScheduleConfig(order="random", repeats=5, seed=seed)).visits]

    assert order(1) == order(1)
    assert any(order(0) != order(s) for s in range(1, 5))


def test_two_games_alternate_even_in_random_order():
    for seed in range(10):
        schedule = Schedule(["Pong", "Breakout"], ScheduleConfig(order="random", repeats=3, seed=seed))
        order = [v.game for v in schedule.visits]
        assert all(a != b for a, b in zip(order, order[1:]))

"""The report's figures on a synthetic run directory: what each panel shows, not how it looks."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import yaml
from matplotlib.patches import Rectangle

from reporting import plots
from reporting.metrics import build_matrix
from reporting.runs import TrainingLog, load_run, played_visits
from tests.conftest import ROOT
from training.records import (
    CONFIG_FILE,
    EVAL_FILE,
    METRICS_FILE,
    EvalRound,
    MetricsLine,
)
from training.schedule import Visit

VISIT = 1000  # frames per visit; schedule Pong, Breakout, Pong, Breakout


def write_run(run_dir, name="synthetic", ewc=True, late=0):
    """A run directory as `run.py train` leaves it: config, four visit_end rounds, a training log.
    `late`: frames each visit ends after its planned end (they add up: the next one starts that late)."""
    run_dir.mkdir()
    config = yaml.safe_load((ROOT / "configs" / "smoke.yaml").read_text())
    config.update(run_name=name)
    config["schedule"].update(frames_per_visit=VISIT, repeats=2, order="fixed")
    config["agent"]["ewc_enabled"] = ewc
    (run_dir / CONFIG_FILE).write_text(yaml.safe_dump(config))
    rounds = [EvalRound("initial", 0, 0, {"Pong": -21.0, "Breakout": 1.0}, {"Pong": -0.01, "Breakout": -0.02}, 0.0)]
    for visit in range(4):
        scores = {"Pong": -20.0 + 5 * visit, "Breakout": 2.0 + visit}
        normalized = {"Pong": (scores["Pong"] + 20.7) / 30, "Breakout": (scores["Breakout"] - 1.7) / 30.1}
        rounds.append(EvalRound("visit_end", (visit + 1) * (VISIT + late), visit, scores, normalized,
                                sum(normalized.values())))
    (run_dir / EVAL_FILE).write_text("".join(json.dumps(r.to_json()) + "\n" for r in rounds))
    lines = []
    for i in range(4 * (VISIT + late) // 100):
        frames = (i + 1) * 100
        lines.append(MetricsLine(
            time_s=i, frames=frames, env_steps=frames // 4, env_steps_per_s=100.0, updates=i * 10, updates_per_s=10.0,
            task=(frames - 1) // (VISIT + late) % 2, game=["Pong", "Breakout"][(frames - 1) // (VISIT + late) % 2],
            epsilon=0.5,
            replay_size=frames, episodes=i, episode_return=float(i % 7), loss=0.1 / (i + 1), td_error=0.1,
            ewc_penalty=0.01 * i if ewc else 0.0, q_mean=0.0, skipped_nonfinite=0.0, ewc_grad_ratio=None))
    (run_dir / METRICS_FILE).write_text("".join(json.dumps(line.to_json()) + "\n" for line in lines))
    return load_run(run_dir)


@pytest.fixture
def runs(tmp_path):
    return [write_run(tmp_path / "ewc"), write_run(tmp_path / "plain", "no_ewc", ewc=False)]


def test_game_scores_have_a_panel_per_game_a_line_per_run_and_the_trained_visits_shaded(runs):
    fig = plots.plot_game_scores(runs)
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["Pong", "Breakout"]
    for ax in panels:
        assert len(ax.get_lines()) == 2  # one per run
        scores = ax.get_lines()[0].get_ydata()
        assert len(scores) == 5  # the initial round and four visit ends
        shaded = [p for p in ax.patches if not isinstance(p, Rectangle) or p.get_width() > 0]
        assert len(shaded) == 2  # each game is trained in two of the four visits
    assert list(panels[0].get_lines()[0].get_ydata()) == [-21.0, -20.0, -15.0, -10.0, -5.0]


def test_capped_sum_has_a_line_per_run_and_the_human_level(runs):
    fig = plots.plot_capped_sum(runs)
    ax = fig.axes[0]
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels[:2] == ["synthetic", "no_ewc"] and "every game at human level" in labels
    human = next(line for line in ax.get_lines() if line.get_label() == "every game at human level")
    assert set(human.get_ydata()) == {2}


def test_matrix_plot_outlines_the_trained_game_of_each_row(runs):
    matrix = build_matrix(runs[0].rounds, [v.game for v in runs[0].visits], list(runs[0].games))
    fig = plots.plot_matrix(matrix, "synthetic")
    ax = fig.axes[0]
    outlines = [p for p in ax.patches if isinstance(p, Rectangle) and p.get_edgecolor()[0] == 1.0]
    assert len(outlines) == 4  # one trained cell per visit
    image = ax.get_images()[0].get_array()
    assert image.shape == (5, 2)  # the untrained row and four visits, two games
    np.testing.assert_allclose(image[1:, 0], [(s + 20.7) / 30 for s in (-20, -15, -10, -5)])


def test_matrix_outlines_stay_inside_their_cells_and_long_game_names_are_tilted(runs):
    # trained cells of consecutive rows touch at a corner: full-cell outlines merged into a red grid
    matrix = build_matrix(runs[0].rounds, [v.game for v in runs[0].visits], list(runs[0].games))
    ax = plots.plot_matrix(matrix, "synthetic").axes[0]
    outlines = [p for p in ax.patches if isinstance(p, Rectangle) and p.get_edgecolor()[0] == 1.0]
    for outline, game, row in zip(outlines, matrix.trained, range(1, 5)):
        x, y = outline.get_xy()
        column = matrix.games.index(game)
        assert column - 0.5 < x and x + outline.get_width() < column + 0.5
        assert row - 0.5 < y and y + outline.get_height() < row + 0.5
    assert all(label.get_rotation() == 0 for label in ax.get_xticklabels())  # "Pong", "Breakout" fit
    long_names = dataclasses.replace(matrix, games=("MinAtar/SpaceInvaders", "MinAtar/Breakout"),
                                     trained=("MinAtar/SpaceInvaders", "MinAtar/Breakout") * 2)
    ax = plots.plot_matrix(long_names, "long").axes[0]
    assert all(label.get_rotation() == 30 for label in ax.get_xticklabels())


def visit_plan(games: list[str], length: int = VISIT) -> list[Visit]:
    return [Visit(i, game, i * length, (i + 1) * length) for i, game in enumerate(games)]


def test_played_visits_start_where_the_previous_visit_end_round_was_taken():
    plan = visit_plan(["Pong", "Breakout", "Pong"])
    rounds = [EvalRound("initial", 0, 0, {}, {}, None), EvalRound("visit_end", 1040, 0, {}, {}, None),
              EvalRound("periodic", 1500, 1, {}, {}, None), EvalRound("visit_end", 2100, 1, {}, {}, None),
              EvalRound("visit_end", 2090, 1, {}, {}, None)]  # a resumed run logged visit 1's end twice: the last counts
    played = played_visits(plan, rounds, None)
    assert [(v.start_frame, v.end_frame) for v in played] == [(0, 1040), (1040, 2090), (2090, 3090)]
    assert [v.game for v in played] == ["Pong", "Breakout", "Pong"]  # the visit still being played: its planned length


def test_played_visits_without_visit_end_rounds_come_from_the_training_log():
    plan = visit_plan(["Pong", "Breakout", "Pong"])
    frames = np.arange(100, 3301, 100)
    games = np.where(frames <= 1100, "Pong", np.where(frames <= 2300, "Breakout", "Pong"))  # switches at 1080, 2250
    log = TrainingLog({"frames": frames.astype(float)}, games)
    played = played_visits(plan, [], log)
    # each switch is placed at the first line logged after it (within one log interval)
    assert [(v.start_frame, v.end_frame) for v in played] == [(0, 1200), (1200, 2400), (2400, 3400)]


def test_plots_shade_the_visits_where_they_were_really_played(tmp_path):
    run = write_run(tmp_path / "late", late=100)  # every visit 100 frames longer than planned
    assert [(v.start_frame, v.end_frame) for v in run.played_visits] == [(0, 1100), (1100, 2200), (2200, 3300),
                                                                         (3300, 4400)]
    pong = next(ax for ax in plots.plot_game_scores([run]).axes if ax.get_title() == "Pong")
    shaded = sorted(tuple(np.round(p.get_path().get_extents(p.get_patch_transform()).intervalx)) for p in pong.patches
                    if not isinstance(p, Rectangle) or p.get_width() > 0)
    assert [(start, end) for start, end in shaded] == [(0, 1100), (2200, 3300)]
    assert pong.get_xlim()[1] == 4400
    training = plots.plot_training(run).axes[0]
    assert training.get_xlim()[1] == 4400


def test_training_log_has_returns_loss_and_penalty_and_says_when_ewc_is_off(runs):
    fig = plots.plot_training(runs[0])
    returns, loss, penalty = fig.axes[:3]
    assert len(returns.get_lines()) == 4  # one line per visit, so no bin mixes two visits of a game
    assert {line.get_label() for line in returns.get_lines() if not line.get_label().startswith("_")} == {"Pong", "Breakout"}
    assert loss.get_yscale() == "log" and penalty.get_yscale() == "log"
    off = plots.plot_training(runs[1])
    assert any(text.get_text() == "EWC off" for text in off.axes[2].texts)


def test_downsample_drops_nans_and_averages_bins():
    x = np.arange(10.0)
    y = np.where(x == 3, np.nan, x)
    xs, ys = plots.downsample(x, y, max_points=3)
    assert len(xs) == 3 and not np.isnan(ys).any()
    assert xs[0] == pytest.approx(np.mean([0, 1, 2]))

"""The report's figures on a synthetic run directory: what each panel shows, not how it looks."""
from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from matplotlib.patches import Rectangle

from reporting import plots
from reporting.metrics import build_matrix
from reporting.runs import load_run
from tests.conftest import ROOT
from training.records import (
    CONFIG_FILE,
    EVAL_FILE,
    METRICS_FILE,
    EvalRound,
    MetricsLine,
)

VISIT = 1000  # frames per visit; schedule Pong, Breakout, Pong, Breakout


def write_run(run_dir, name="synthetic", ewc=True):
    """A run directory as `run.py train` leaves it: config, four visit_end rounds, a training log."""
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
        rounds.append(EvalRound("visit_end", (visit + 1) * VISIT, visit, scores, normalized, sum(normalized.values())))
    (run_dir / EVAL_FILE).write_text("".join(json.dumps(r.to_json()) + "\n" for r in rounds))
    lines = []
    for i in range(40):
        frames = (i + 1) * 100
        lines.append(MetricsLine(
            time_s=i, frames=frames, env_steps=frames // 4, env_steps_per_s=100.0, updates=i * 10, updates_per_s=10.0,
            task=(frames - 1) // VISIT % 2, game=["Pong", "Breakout"][(frames - 1) // VISIT % 2], epsilon=0.5,
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

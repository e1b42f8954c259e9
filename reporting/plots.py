"""The report's figures: per-game scores (paper Fig. 3A), the capped sum (Fig. 3B), the evaluation
matrix, and the training log.

Figures are built on the Agg canvas with matplotlib's object API (no pyplot, no global
state). Long runs stay cheap to draw: the training log is reduced to bin means
(`MAX_LINE_POINTS` per line) before plotting, and markers and cell labels are drawn only
when there are few of them.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from common.figures import agg_figure
from envs.scores import reference
from reporting.metrics import NORMALIZED, EvaluationMatrix
from reporting.runs import RunLog

DPI = 100  # report figures are larger than the experiments' panels: a lower resolution keeps the PNGs small
MAX_LINE_POINTS = 1500  # per line of the training log; a 40M-frame run has ~10^5 log lines
MAX_MARKERS = 60  # evaluation curves with more points are drawn as plain lines
SPARSE_POINTS = 12  # training-return segments this short get markers
MAX_LABELLED_CELLS = 400  # matrices with more cells get no number in each cell
MAX_COLUMNS = 3
OUTLINE_INSET = 0.06  # of a cell, on each side of the red box around a matrix row's trained game
COLUMN_LABEL_CHARS = 10  # matrix column names longer than this no longer fit level under a column
SHADE = "0.88"


def game_color(index: int) -> str:
    return f"C{index % 10}"


def _millions(ax: Axes) -> None:
    ax.xaxis.set_major_formatter(lambda x, _: f"{x / 1e6:g}M" if abs(x) >= 1e6 else f"{x:,.0f}")
    ax.set_xlabel("frames")


def downsample(x: np.ndarray, y: np.ndarray, max_points: int = MAX_LINE_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """Drop NaNs, then average consecutive points into at most `max_points` bins."""
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if len(x) <= max_points:
        return x, y
    starts = np.linspace(0, len(x), max_points + 1).astype(int)[:-1]  # strictly increasing: len(x) > max_points
    counts = np.diff(np.append(starts, len(x)))
    return np.add.reduceat(x, starts) / counts, np.add.reduceat(y, starts) / counts


def _shade_visits(ax: Axes, run: RunLog, game: str | None = None, *, color: str | None = SHADE) -> None:
    """Shade the visits of `game` (all visits, coloured by game, when `game` is None) where they were really played."""
    for visit in run.played_visits:
        if game is None:
            shade = game_color(run.games.index(visit.game))
            ax.axvspan(visit.start_frame, visit.end_frame, color=shade, alpha=0.12, lw=0, zorder=0)
        elif visit.game == game:
            ax.axvspan(visit.start_frame, visit.end_frame, color=color, lw=0, zorder=0)


def plot_game_scores(runs: Sequence[RunLog]) -> Figure:
    """Fig. 3A: each game's score over the whole schedule, its training periods shaded (first run's schedule)."""
    games = list(dict.fromkeys(g for run in runs for g in run.games))
    cols = min(len(games), MAX_COLUMNS)
    rows = -(-len(games) // cols)
    fig = agg_figure(4.2 * cols, 2.9 * rows, dpi=DPI)
    grid = fig.add_gridspec(rows, cols)
    for index, game in enumerate(games):
        ax = fig.add_subplot(grid[index // cols, index % cols])
        _shade_visits(ax, runs[0], game)
        for position, run in enumerate(runs):
            points = sorted((r.frames, r.scores[game]) for r in run.rounds if game in r.scores)
            if not points:
                continue
            frames, scores = zip(*points)
            marker = "o" if len(points) <= MAX_MARKERS else None
            ax.plot(frames, scores, color=f"C{position}", marker=marker, markersize=3.5, lw=1.4, label=run_label(run, runs))
        ax.set_title(game)
        ax.set_ylabel("score")
        _millions(ax)
        ax.set_xlim(0, max(run.played_visits[-1].end_frame for run in runs))
        ax.grid(True, alpha=0.3)
        ref = reference(game)
        if ref is not None:  # the same curve read as a normalised score
            low, high, name = ref
            ax.secondary_yaxis("right", functions=(lambda s, a=low, b=high: (s - a) / (b - a),
                                                   lambda h, a=low, b=high: a + h * (b - a))).set_ylabel(f"{name}-normalised")
        if index == 0:
            ax.legend(fontsize="small", loc="best")
    fig.suptitle("score of every game over training (shaded: when the game is trained)")
    return fig


def plot_capped_sum(runs: Sequence[RunLog]) -> Figure:
    """Fig. 3B: the sum over games of normalised scores capped at 1, one line per run."""
    fig = agg_figure(7.0, 3.8, dpi=DPI)
    ax = fig.add_subplot()
    for position, run in enumerate(runs):
        points = sorted((r.frames, r.capped_sum) for r in run.rounds if r.capped_sum is not None)
        if points:
            frames, sums = zip(*points)
            marker = "o" if len(points) <= MAX_MARKERS else None
            ax.plot(frames, sums, color=f"C{position}", marker=marker, markersize=3.5, lw=1.6, label=run_label(run, runs))
    references = {reference(g)[2] for g in dict.fromkeys(g for run in runs for g in run.games) if reference(g)}
    games = [g for g in dict.fromkeys(g for run in runs for g in run.games) if reference(g)]
    if games:
        level = " or ".join(sorted(references))
        ax.axhline(len(games), color="0.5", ls="--", lw=1, label=f"every game at {level} level")
    for visit in runs[0].played_visits[1:]:
        ax.axvline(visit.start_frame, color="0.85", lw=0.8, zorder=0)  # task switches
    ax.set_ylabel("capped normalised sum")
    ax.set_title("sum over games of min(normalised score, 1)")
    _millions(ax)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", loc="best")
    return fig


def plot_matrix(matrix: EvaluationMatrix, title: str) -> Figure:
    """The evaluation matrix as a heat map: rows = after each visit, columns = games; trained cell outlined."""
    values = matrix.values()
    initial = matrix.initial_values()
    labels = [f"{i + 1}: {game}" for i, game in enumerate(matrix.trained)]
    if initial is not None:
        values, labels = [initial, *values], ["untrained", *labels]
    offset = 1 if initial is not None else 0
    grid = np.array([[np.nan if v is None else v for v in row] for row in values], dtype=float)
    rows, cols = grid.shape
    fig = agg_figure(min(2.2 + 1.3 * cols, 16), min(1.6 + 0.32 * rows, 30), dpi=DPI)
    ax = fig.add_subplot()
    image = ax.imshow(grid, aspect="auto", cmap="viridis", interpolation="nearest")
    scales = set(matrix.scales().values())
    unit = "normalised score" if scales == {NORMALIZED} else (
        "raw score" if NORMALIZED not in scales else "normalised (raw where no reference)")
    fig.colorbar(image, ax=ax, label=unit, shrink=0.9)
    for i, game in enumerate(matrix.trained):
        # inset, so that the trained cells of consecutive rows, which touch, do not merge into a grid of red lines
        column, row = matrix.games.index(game), i + offset
        ax.add_patch(Rectangle((column - 0.5 + OUTLINE_INSET, row - 0.5 + OUTLINE_INSET), 1 - 2 * OUTLINE_INSET,
                               1 - 2 * OUTLINE_INSET, fill=False, ec="red", lw=2.0))
    if rows * cols <= MAX_LABELLED_CELLS:
        middle = np.nanmean(grid) if np.isfinite(grid).any() else 0.0
        errors = [[None] * cols] * offset + [list(row) for row in matrix.stderr]  # the untrained row: none shown
        for (i, j), value in np.ndenumerate(grid):
            error = errors[i][j] if i < len(errors) else None
            text = "-" if np.isnan(value) else f"{value:.3g}" + ("" if error is None else f"\n±{error:.2g}")
            ax.text(j, i, text, ha="center", va="center", fontsize="small",
                    color="black" if not np.isnan(value) and value > middle else "white")
    if offset:
        ax.axhline(0.5, color="white", lw=2)
    # a name wider than its column would run into its neighbours: tilt the names then
    tilt = max(len(game) for game in matrix.games) > COLUMN_LABEL_CHARS
    ax.set_xticks(range(cols), matrix.games, rotation=30 if tilt else 0, ha="right" if tilt else "center",
                  rotation_mode="anchor" if tilt else "default")
    step = max(1, rows // 40)  # at most ~40 row labels
    ax.set_yticks(range(0, rows, step), labels[::step], fontsize="small")
    ax.set_xlabel("evaluated game")
    ax.set_ylabel("after visit (trained game)")
    ax.set_title(f"{title}\n(red box: the game trained in that visit)", fontsize="medium")
    return fig


def plot_training(run: RunLog) -> Figure:
    """The training log: episode returns of the game being trained, TD loss, EWC penalty; visits shaded."""
    log = run.training
    fig = agg_figure(9.0, 7.0, dpi=DPI)
    axes = fig.subplots(3, 1, sharex=True)
    frames = log.columns["frames"]
    # Returns: one line per visit segment, so bin means never mix two visits of a game.
    boundaries = np.flatnonzero(log.game[1:] != log.game[:-1]) + 1
    segments = np.split(np.arange(len(log)), boundaries)
    budget = max(20, MAX_LINE_POINTS // max(len(segments), 1))
    labelled: set[str] = set()
    for segment in segments:
        if not len(segment):
            continue
        game = str(log.game[segment[0]])
        x, y = downsample(frames[segment], log.columns["episode_return"][segment], budget)
        index = run.games.index(game) if game in run.games else len(run.games)
        marker = "o" if len(x) <= SPARSE_POINTS else None  # a visit with few finished episodes stays visible
        axes[0].plot(x, y, color=game_color(index), lw=1.2, marker=marker, markersize=3,
                     label=None if game in labelled else game)
        labelled.add(game)
    axes[0].set_ylabel("episode return\n(training, raw)")
    if labelled:
        axes[0].legend(fontsize="small", loc="best")
    for ax, name, label in ((axes[1], "loss", "TD loss (Huber)"), (axes[2], "ewc_penalty", "EWC penalty")):
        x, y = downsample(frames, log.columns[name])
        ax.plot(x, y, color="0.2", lw=1.0)
        if (y > 0).any():
            ax.set_yscale("log")
        ax.set_ylabel(label)
    if not run.config.agent.ewc_enabled:
        axes[2].text(0.5, 0.5, "EWC off", transform=axes[2].transAxes, ha="center", va="center", color="0.4")
    for ax in axes:
        _shade_visits(ax, run)
        ax.grid(True, alpha=0.3)
    _millions(axes[-1])
    axes[0].set_xlim(0, run.played_visits[-1].end_frame)
    fig.suptitle(f"{run.name}: training log (background: the game trained)")
    return fig


def run_label(run: RunLog, runs: Sequence[RunLog]) -> str:
    """The run's name; its directory too when two runs share a name."""
    if sum(other.name == run.name for other in runs) > 1:
        return f"{run.name} ({run.run_dir})"
    return run.name

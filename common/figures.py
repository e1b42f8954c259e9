"""Figures on matplotlib's Agg canvas, shared by the experiments and the reports (no display needed).

Figures are built with matplotlib's object API on the Agg canvas instead of `pyplot`, so
nothing here touches the global backend or leaks open figures in long-running processes.
"""
from __future__ import annotations

import os
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.gridspec import GridSpec

from common.errors import UsageError

PANEL_SIZE_IN = (3.2, 2.6)  # width, height of one panel in inches
DPI = 120


def agg_figure(width_in: float, height_in: float, dpi: int = DPI) -> Figure:
    """An empty figure of that size on the Agg canvas (no pyplot state), laid out by constraints."""
    fig = Figure(figsize=(width_in, height_in), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def new_figure(rows: int, cols: int) -> tuple[Figure, GridSpec]:
    """A figure on the Agg canvas sized for rows x cols panels, and the grid to place them on."""
    fig = agg_figure(PANEL_SIZE_IN[0] * cols, PANEL_SIZE_IN[1] * rows)
    return fig, fig.add_gridspec(rows, cols)


def panels(count: int) -> tuple[Figure, list[Axes]]:
    """A figure on the Agg canvas (no pyplot state) with `count` panels side by side."""
    fig, grid = new_figure(1, count)
    return fig, [fig.add_subplot(grid[0, i]) for i in range(count)]


def check_figure_path(path: str | os.PathLike[str]) -> Path:
    """Fail early (before a long run) if `path` is a directory or has an unsupported suffix."""
    target = Path(path)
    formats = FigureCanvasAgg(Figure()).get_supported_filetypes()
    suffix = target.suffix.lower().lstrip(".")
    if suffix not in formats:
        raise UsageError(f"cannot save a figure as {target}: use one of the suffixes .{', .'.join(sorted(formats))}")
    if target.is_dir():
        raise UsageError(f"cannot save a figure as {target}: it is a directory")
    return target


def save_figure(fig: Figure, path: str | os.PathLike[str]) -> Path:
    """Save `fig` to `path` (format from the suffix), creating parent directories."""
    target = check_figure_path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(target)
    except OSError as err:
        raise UsageError(f"cannot save figure to {target}: {err.strerror or err}") from err
    return target

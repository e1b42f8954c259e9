"""The supervised experiments' figures: methods' colours, task names, Fig. 2A/2B-style panels.

The Agg-canvas figure helpers they build on are `common.figures`.
"""
from __future__ import annotations

import string
from collections.abc import Mapping, Sequence

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from common.errors import UsageError
from common.figures import new_figure

# The paper's colours in Fig. 2A: SGD blue, L2 green, EWC red; anything else cycles.
METHOD_STYLES: dict[str, dict[str, str]] = {
    "sgd": {"color": "tab:blue", "marker": "o", "label": "SGD"},
    "l2": {"color": "tab:green", "marker": "s", "label": "L2"},
    "ewc": {"color": "tab:red", "marker": "^", "label": "EWC"},
}
MAX_COLUMNS = 5
Y_MARGIN = 0.05  # accuracy-axis headroom below the lowest point


def task_name(index: int) -> str:
    """'A', 'B', ... as in the paper, then '27', '28', ... past the alphabet (1-based)."""
    return string.ascii_uppercase[index] if index < len(string.ascii_uppercase) else str(index + 1)


def method_style(method: str, position: int) -> dict[str, str]:
    fallback = {"color": f"C{position % 10}", "marker": "o", "label": method}
    return METHOD_STYLES.get(method, fallback)


def average_accuracy(matrix: Sequence[Sequence[float]]) -> list[float]:
    """Row means of a triangular accuracy matrix: average accuracy over the tasks seen so far."""
    return [sum(row) / len(row) for row in matrix]


def plot_task_accuracies(
    accuracy: Mapping[str, Sequence[Sequence[float]]],
    *,
    title: str | None = None,
    show_average: bool | None = None,
) -> Figure:
    """Fig. 2A-style panels: one per task, its test accuracy at every training stage, per method.

    `accuracy[method][i][j]` is the accuracy on task j after training tasks 0..i (row i has
    i + 1 entries). Task j's curve starts at the stage where it is learned. With
    `show_average` (default: more than 3 tasks) a last panel shows the average accuracy
    over the tasks seen so far, as in Fig. 2B.
    """
    if not accuracy:
        raise UsageError("nothing to plot: no methods")
    num_tasks = max(len(matrix) for matrix in accuracy.values())
    if show_average is None:
        show_average = num_tasks > 3
    cols = min(num_tasks, MAX_COLUMNS)
    task_rows = -(-num_tasks // cols)
    free_cells = task_rows * cols - num_tasks
    rows = task_rows + int(show_average and free_cells == 0)
    fig, grid = new_figure(rows, cols)
    stages = list(range(1, num_tasks + 1))
    stage_labels = [task_name(i) for i in range(num_tasks)]
    lowest = min(a for matrix in accuracy.values() for row in matrix for a in row)
    y_limits = (max(0.0, lowest - Y_MARGIN), 1.0 + Y_MARGIN / 2)

    first_ax = None
    for task in range(num_tasks):
        ax = fig.add_subplot(grid[task // cols, task % cols], sharey=first_ax)
        first_ax = first_ax or ax
        for position, (method, matrix) in enumerate(accuracy.items()):
            xs = [i + 1 for i in range(task, len(matrix))]
            ys = [matrix[i][task] for i in range(task, len(matrix))]
            ax.plot(xs, ys, linewidth=1.5, markersize=4, **method_style(method, position))
        ax.set_title(f"task {task_name(task)}")
        ax.axvspan(task + 0.5, task + 1.5, color="0.92", zorder=0)  # the stage where this task is trained
        _format_stage_axis(ax, stages, stage_labels)
    if show_average:  # the rest of the last row, or a full-width row of its own
        cell = grid[task_rows - 1, cols - free_cells :] if free_cells else grid[rows - 1, :]
        ax = fig.add_subplot(cell, sharey=first_ax)
        for position, (method, matrix) in enumerate(accuracy.items()):
            xs = list(range(1, len(matrix) + 1))
            ax.plot(xs, average_accuracy(matrix), linewidth=1.5, markersize=4, **method_style(method, position))
        ax.set_title("average over tasks seen")
        _format_stage_axis(ax, stages, [str(s) for s in stages])
        ax.set_xlabel("number of tasks trained")
    first_ax.set_ylim(*y_limits)  # shared by every panel, so they compare at a glance
    first_ax.set_ylabel("test accuracy")
    first_ax.legend(loc="lower left", fontsize="small")
    if title:
        fig.suptitle(title)
    return fig


def _format_stage_axis(ax: Axes, stages: list[int], labels: list[str]) -> None:
    ax.set_xlim(0.5, len(stages) + 0.5)
    ax.set_xticks(stages, labels, fontsize="small" if len(stages) > 6 else "medium")
    ax.set_xlabel("after training task")
    ax.grid(True, alpha=0.3)

"""What every experiment command does before and after its run: check the outputs, report, write."""
from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure

from common.errors import UsageError
from common.figures import check_figure_path, save_figure
from common.results import Progress, write_json_atomic


def comma_list(text: str, option: str, convert: Callable[[str], Any]) -> tuple:
    """'8, 16,26' -> (8, 16, 26) with `convert` per item; a bad item is a UsageError naming the option."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    try:
        return tuple(convert(item) for item in items)
    except ValueError:
        raise UsageError(f"{option} expects a comma-separated list, got {text!r}") from None


def add_output_arguments(parser: argparse.ArgumentParser, plot_help: str) -> None:
    """--json, --plot, --threads, --quiet: the options start_command and finish_command act on."""
    out = parser.add_argument_group("output")
    out.add_argument("--json", metavar="PATH", help="write the results as JSON")
    out.add_argument("--plot", metavar="PATH", help=plot_help)
    # these networks are too small to split over threads: a second one mostly spins and costs CPU
    out.add_argument("--threads", type=int, default=1,
                     help="torch CPU threads (default: %(default)s; these small networks gain little from more)")
    out.add_argument("--quiet", action="store_true", help="no progress output on stderr")


def start_command(args: argparse.Namespace) -> Progress:
    """Check --threads, --json and --plot before a long run (not after it); returns the progress printer."""
    if args.threads < 1:
        raise UsageError(f"--threads must be at least 1, got {args.threads}")
    if args.plot:
        check_figure_path(args.plot)
    if args.json and Path(args.json).is_dir():
        raise UsageError(f"--json {args.json} is a directory")
    torch.set_num_threads(args.threads)
    return Progress(quiet=args.quiet)


def finish_command(
    args: argparse.Namespace, progress: Progress, result: dict[str, Any], summary: str, figure: Callable[[], Figure]
) -> int:
    """Print the summary table to stdout, then write --json and --plot."""
    print(summary)
    if args.json:
        progress(f"wrote {write_json_atomic(args.json, result)}")
    if args.plot:
        progress(f"wrote {save_figure(figure(), args.plot)}")
    return 0


def run_on_mnist(
    args: argparse.Namespace,
    cfg: Any,
    run_experiment: Callable[[Any, Any, Progress], dict[str, Any]],
    summary: Callable[[dict[str, Any]], str],
    figure: Callable[[dict[str, Any]], Figure],
) -> int:
    """An MNIST experiment command from its checked config: load the digits, run, report, write."""
    from experiments.mnist_data import load_mnist

    progress = start_command(args)
    data = load_mnist(cfg.data_dir)
    progress(f"data: {data.source}")
    result = run_experiment(cfg, data, progress)
    return finish_command(args, progress, result, summary(result), lambda: figure(result))

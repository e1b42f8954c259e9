#!/usr/bin/env python
"""Single entry point: `python run.py <command> --help` describes each command.

Commands are imported lazily so that `run.py --help` stays fast and a command's
heavy dependencies (Ray, ALE, matplotlib) load only when that command runs.
Each command module exposes `add_arguments(parser)` and `main(args) -> int`.

Commands compose here, at the top: `train` ends with `report` on the run it wrote (its plots,
metrics and HTML page in RUN_DIR/report/), unless given `--no-report`.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from common.errors import RunAborted, UsageError

# name -> (module, one-line help). The module's docstring is the command's long help.
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("training.train_command", "continual Double DQN with EWC on Ray, Atari or MinAtar (configs/*.yaml)"),
    "eval": ("training.eval_command", "evaluate a checkpoint: raw and human-normalised scores per game"),
    "mnist": ("experiments.permuted_mnist", "permuted-MNIST continual learning: SGD vs L2 vs EWC (paper Fig. 2A/2B)"),
    "overlap": ("experiments.fisher_overlap", "Fisher overlap vs depth for similar and dissimilar tasks (paper Fig. 2C)"),
    "patterns": ("experiments.random_patterns", "random-pattern memory capacity: tuned GD vs EWC (paper's SNR analysis)"),
    "report": ("reporting.report", "plots, HTML page and continual-learning metrics of training runs (paper Fig. 3A/3B)"),
    "perturb": ("reporting.perturb", "score under weight noise: uniform vs inverse-Fisher vs Fisher nullspace (paper Fig. 3C)"),
    "sweep": ("tuning.sweep", "Ray Tune sweep: one training run per combination of config values and seed, ranked"),
    "bench": ("perf.command", "benchmark: our trainer vs RLlib's DQN and the hardware limit, learner, EWC, replay, Fisher, actors"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run.py",
        description="Continual learning with Elastic Weight Consolidation (Kirkpatrick et al. 2017).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, summary) in COMMANDS.items():
        sub.add_parser(name, help=summary, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] not in COMMANDS:
        parser.parse_args(argv)  # prints help or a clear "invalid choice" error
        parser.print_help()
        return 2
    name, rest = argv[0], argv[1:]
    module = importlib.import_module(COMMANDS[name][0])
    sub = argparse.ArgumentParser(
        prog=f"run.py {name}",
        description=(module.__doc__ or COMMANDS[name][1]).strip(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    module.add_arguments(sub)
    if name == "train":
        sub.add_argument("--no-report", dest="report", action="store_false",
                         help="do not write the report (plots, metrics, HTML) into RUN_DIR/report/ at the end")
    args = sub.parse_args(rest)
    try:
        code = int(module.main(args) or 0)
        if name == "train" and code == 0 and args.report:
            report_after_training(args.run_dir, quiet=args.quiet)
        return code
    except UsageError as err:
        print(f"run.py {name}: error: {err}", file=sys.stderr)
        return 2
    except RunAborted as err:
        print(f"run.py {name}: stopped: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"run.py {name}: interrupted", file=sys.stderr)
        return 130


def report_after_training(run_dir, *, quiet: bool) -> None:
    """`run.py report RUN_DIR`; a run that cannot be reported (no evaluation round) is said so, not an error."""
    report = importlib.import_module(COMMANDS["report"][0])
    try:
        report.make_report([run_dir], None, progress=report.Progress(quiet=quiet))
    except UsageError as err:
        print(f"run.py train: no report: {err}", file=sys.stderr)
        return
    print(f"report: {run_dir}/report/report.html (plots and report.json beside it)", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())

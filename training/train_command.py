"""Train one Double-DQN agent with EWC on a schedule of Atari or MinAtar games, on Ray.

Examples:
  python run.py train --config configs/minatar_quick.yaml             # MinAtar, a few minutes on 2 cores
  python run.py train --config configs/smoke.yaml
  python run.py train --config configs/paper.yaml --set agent.ewc_lambda=100 --logdir runs
  python run.py train --config configs/paper.yaml --address auto      # join a running Ray cluster
  python run.py train --resume runs/paper                              # continue after a crash or a kill
  python run.py train --config configs/paper.yaml --resume auto        # continue runs/paper if it exists, else start it
  python run.py train --config configs/paper.yaml --check              # memory and time it needs, then exit

Writes to LOGDIR/<run_name>/: config.yaml (resolved), metrics.jsonl, eval.jsonl, TensorBoard
event files (tensorboard --logdir LOGDIR), checkpoints/ and summary.json, and at the end the
report (`run.py report`: plots, continual-learning metrics, HTML) in report/ unless --no-report.
"""
from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

from common.errors import UsageError
from training.cluster import init_ray
from training.config import load_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML run config (see configs/); not with --resume")
    parser.add_argument("--resume", metavar="RUN_DIR|auto",
                        help="continue RUN_DIR from its last good checkpoint, with the config it was started with; "
                             "'auto' (with --config): continue LOGDIR/<run_name> if it holds checkpoints of this "
                             "same config, else start it there (what a retried job or a replaced node should run)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config entry, e.g. --set agent.ewc_lambda=100 (repeatable)")
    parser.add_argument("--address", default=None,
                        help="Ray cluster to join ('auto' or HOST:PORT); default: start a local Ray instance")
    parser.add_argument("--logdir", default="runs",
                        help="parent directory of the run directory (default: runs; in a Ray job: ~/runs)")
    parser.add_argument("--stop-after-s", type=float, default=None, metavar="SECONDS",
                        help="stop cleanly (checkpoint and summary written) after this much wall time")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.add_argument("--check", action="store_true",
                        help="validate the config, measure the replay memory, update and env-step times on this "
                             "machine and estimate the schedule's wall time; then exit without starting Ray")


def new_run_dir(logdir: Path, name: str) -> Path:
    """LOGDIR/name, or LOGDIR/name-2, -3, ... if that is taken: a new run never mixes with an old one."""
    candidate, n = logdir / name, 1
    while candidate.exists() and any(candidate.iterdir()):
        n += 1
        candidate = logdir / f"{name}-{n}"
    return candidate


AUTO = "auto"


def same_config_checkpoint(run_dir: Path, config) -> dict | None:
    """The latest checkpoint in `run_dir` when it holds a run of `config` (None: nothing to continue);
    a run of another config there is refused rather than mixed with this one."""
    from training import checkpoint, records
    from training.config import config_from_dict, config_to_dict

    directory = run_dir / records.CHECKPOINT_DIR
    if not (directory.is_dir() and checkpoint.list_checkpoints(directory)):
        return None
    _, state = checkpoint.load_latest(directory)
    saved, wanted = flatten(config_to_dict(config_from_dict(state["config"]))), flatten(config_to_dict(config))
    differ = sorted(key for key in saved.keys() | wanted.keys()
                    if saved.get(key) != wanted.get(key) and not key.startswith("logging."))
    if differ:
        shown = ", ".join(f"{key} ({saved.get(key)!r} there, {wanted.get(key)!r} here)" for key in differ[:4])
        raise UsageError(f"{run_dir} holds a run of another config: {shown}{' ...' if len(differ) > 4 else ''}; "
                         "pick another run_name or --logdir, or continue that run with --resume RUN_DIR")
    return state


def flatten(data: dict, prefix: str = "") -> dict:
    """{'agent': {'gamma': 0.99}} -> {'agent.gamma': 0.99}."""
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def resolve_logdir(logdir: str) -> Path:
    """LOGDIR; inside a Ray job a relative one is taken from the home directory, not from the job's
    temporary copy of the working directory (which Ray deletes with the session)."""
    path = Path(logdir).expanduser()
    if not path.is_absolute() and os.environ.get("RAY_JOB_SUBMISSION_ID"):
        return Path.home() / path
    return path


def main(args: argparse.Namespace) -> int:
    from training import checkpoint, records, replay_files
    from training.config import apply_overrides, config_from_dict

    if args.stop_after_s is not None and args.stop_after_s <= 0:
        raise UsageError("--stop-after-s must be positive")
    if args.resume == AUTO:
        if args.config is None:
            raise UsageError("--resume auto continues the run of --config CONFIG: give the config too")
    elif (args.config is None) == (args.resume is None):
        raise UsageError("give either --config CONFIG (a new run) or --resume RUN_DIR (continue a run)")
    resume_state = None
    if args.resume == AUTO:
        config = load_config(args.config, args.overrides)
        run_dir = resolve_logdir(args.logdir) / config.run_name
        resume_state = same_config_checkpoint(run_dir, config)
        if resume_state is None:  # an attempt killed before its first checkpoint left only logs: start over
            for name in (records.METRICS_FILE, records.EVAL_FILE):
                (run_dir / name).unlink(missing_ok=True)
            shutil.rmtree(run_dir / records.CHECKPOINT_DIR / replay_files.DIRECTORY, ignore_errors=True)
    elif args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / records.CHECKPOINT_DIR).is_dir():
            raise UsageError(f"{str(run_dir)!r} is not a run directory with {records.CHECKPOINT_DIR}/")
        _, resume_state = checkpoint.load_latest(run_dir / records.CHECKPOINT_DIR)
        # --set may change how the run continues (e.g. logging), but not what the checkpoint holds.
        config = config_from_dict(apply_overrides(resume_state["config"], args.overrides))
    else:
        config = load_config(args.config, args.overrides)
        run_dir = new_run_dir(resolve_logdir(args.logdir), config.run_name)
    if args.check:
        from training.check import check_run

        args.report = False  # nothing ran: nothing to report
        check_run(config)
        return 0
    args.run_dir = run_dir  # for whoever runs a command after this one (run.py: the report)

    import ray  # only now: --check starts nothing and imports no Ray

    from training.hooks import StopOnSignal, TimeLimit
    from training.loop import Trainer

    init_ray(args.address)
    try:
        signals = StopOnSignal()
        hooks = [signals] + ([] if args.stop_after_s is None else [TimeLimit(args.stop_after_s)])
        trainer = Trainer(config, run_dir, quiet=args.quiet, hooks=hooks)
        trainer.say(f"run directory {run_dir}")
        trainer.run(resume_state)
        if signals.received:  # stopped from outside: be quick (ray job stop waits only seconds); report later
            args.report = False
            trainer.say(f"continue with: python run.py train --resume {run_dir}")
    finally:
        ray.shutdown()
    return 0

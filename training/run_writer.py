"""What a run writes for its user: config.yaml, metrics.jsonl, eval.jsonl, TensorBoard, actors.json, summary.json.

`Interval` gathers what happened since the last log line; `RunWriter.metrics` turns it into one
`records.MetricsLine`, its TensorBoard scalars and one console line. `RunWriter.evaluation` does
the same for an evaluation round. File names and record fields live in `training.records`.
"""
from __future__ import annotations

import json
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from common.errors import DISK_FULL, disk_full_aborts
from envs import scores
from training import records
from training.config import RunConfig, config_to_dict
from training.services import TrainResult

LOGGED_TRAIN_METRICS = {"loss": "loss", "td_error": "td_error_abs_mean", "q_mean": "q_mean"}  # line field -> learner metric


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


@dataclass
class Interval:
    """What happened since the last log line."""

    start: float = field(default_factory=time.monotonic)
    steps: int = 0
    updates: int = 0
    returns: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    train: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    skipped_nonfinite: int = 0
    ewc_penalty: float = 0.0  # the latest value the learner computed
    ewc_grad_ratio: dict[str, float] | None = None  # the latest per-layer EWC / TD gradient norms
    replay_bytes: int = 0  # the learner's replay memory at its latest report

    def add_returns(self, game: str, steps: int, episode_returns: list[float]) -> None:
        self.steps += steps
        self.returns[game].extend(episode_returns)

    def add_train(self, result: TrainResult, new_updates: int) -> None:
        self.updates += new_updates
        for key, value in result.means.items():
            self.train[key].append(value)
        self.skipped_nonfinite += result.skipped_nonfinite
        if new_updates or result.skipped_nonfinite:
            self.ewc_penalty = result.ewc_penalty
        if result.ewc_grad_ratio is not None:
            self.ewc_grad_ratio = result.ewc_grad_ratio
        self.replay_bytes = result.replay_bytes or self.replay_bytes


class RunWriter:
    """The run directory's outputs and the console; every line the user reads comes through here."""

    def __init__(self, run_dir: Path, run_name: str, *, quiet: bool = False):
        self.run_dir = run_dir
        self.run_name = run_name
        self.quiet = quiet
        self.tensorboard = self.metrics_file = self.eval_file = None

    def say(self, message: str) -> None:
        if not self.quiet:
            print(f"[{self.run_name}] {message}", file=sys.stderr, flush=True)

    def open(self, config: RunConfig) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / records.CONFIG_FILE).write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
        self.tensorboard = SummaryWriter(str(self.run_dir / records.TENSORBOARD_DIR))
        self.metrics_file = open(self.run_dir / records.METRICS_FILE, "a")
        self.eval_file = open(self.run_dir / records.EVAL_FILE, "a")

    def close(self) -> None:
        for output in (self.tensorboard, self.metrics_file, self.eval_file):
            if output is not None:
                try:
                    output.close()
                except OSError as err:  # a full disk already stopped the run and said so: the lines are lost
                    if err.errno not in DISK_FULL:
                        raise

    def _append(self, output, name: str, record: dict[str, Any], what: str) -> None:
        """One JSON line; a full disk stops the run naming the file (readers skip a last partial line)."""
        with disk_full_aborts(self.run_dir / name, what, self._left_after_full_disk()):
            output.write(json.dumps(record) + "\n")
            output.flush()

    def _left_after_full_disk(self) -> str:
        return (f"; the newest complete checkpoint in {self.run_dir / records.CHECKPOINT_DIR} stays loadable: free "
                f"space, then continue with `python run.py train --resume {self.run_dir}`")

    def scalar(self, tag: str, value: float, frames: int) -> None:
        self.tensorboard.add_scalar(tag, value, frames)

    def text(self, tag: str, text: str, frames: int) -> None:
        self.tensorboard.add_text(tag, text, frames)

    def placement(self, where: dict[str, Any]) -> None:
        (self.run_dir / records.ACTORS_FILE).write_text(json.dumps(where, indent=2))

    def summary(self, summary: dict[str, Any]) -> None:
        path = self.run_dir / records.SUMMARY_FILE
        with disk_full_aborts(path, "the run's summary", self._left_after_full_disk()):
            path.write_text(json.dumps(summary, indent=2))

    def metrics(self, interval: Interval, *, elapsed_s: float, frames: int, total_frames: int, env_steps: int,
                updates: int, episodes: int, task: int, game: str, epsilon: float, replay_size: int,
                replay_capacity: int, extra_scalars: dict[str, float]) -> records.MetricsLine:
        """One log line: metrics.jsonl, TensorBoard and the console."""
        seconds = max(time.monotonic() - interval.start, 1e-9)
        train = {key: _mean(values) for key, values in interval.train.items()}
        returns = {g: _mean(v) for g, v in interval.returns.items() if v}
        line = records.MetricsLine(
            time_s=round(elapsed_s, 2), frames=frames, env_steps=env_steps,
            env_steps_per_s=interval.steps / seconds, updates=updates, updates_per_s=interval.updates / seconds,
            task=task, game=game, epsilon=epsilon, replay_size=replay_size, episodes=episodes,
            episode_return=returns.get(game),
            **{name: train.get(metric) for name, metric in LOGGED_TRAIN_METRICS.items()},
            ewc_penalty=interval.ewc_penalty, skipped_nonfinite=interval.skipped_nonfinite,
            ewc_grad_ratio=interval.ewc_grad_ratio,
        )
        self._append(self.metrics_file, records.METRICS_FILE, line.to_json(), "a metrics line")
        for g, value in returns.items():
            self.scalar(f"episode_return/{g}", value, frames)
            normalized = scores.normalized(g, value)
            if normalized is not None:
                self.scalar(f"normalized/{g}", normalized, frames)
        for key in (*LOGGED_TRAIN_METRICS, "ewc_penalty"):
            if getattr(line, key) is not None:
                self.scalar(f"train/{key}", getattr(line, key), frames)
        for layer, ratio in (line.ewc_grad_ratio or {}).items():
            self.scalar(f"ewc/grad_ratio/{layer}", ratio, frames)
        scalars = {"train/epsilon": epsilon, "train/task": task, "replay/fill": replay_size / replay_capacity,
                   "replay/memory_mb": interval.replay_bytes / 2**20,
                   "perf/env_steps_per_s": line.env_steps_per_s, "perf/updates_per_s": line.updates_per_s,
                   **extra_scalars}
        for tag, value in scalars.items():
            self.scalar(tag, value, frames)
        with disk_full_aborts(self.run_dir / records.TENSORBOARD_DIR / "events", "TensorBoard events",
                              self._left_after_full_disk()):
            self.tensorboard.flush()
        ret = f"{line.episode_return:.1f}" if line.episode_return is not None else "-"
        loss = f"{line.loss:.4f}" if line.loss is not None else "-"
        self.say(f"{game} (task {task}) frames {frames:,}/{total_frames:,} | {line.env_steps_per_s:.0f} steps/s | "
                 f"updates {updates:,} ({line.updates_per_s:.1f}/s) | return {ret} | loss {loss} | "
                 f"ewc {line.ewc_penalty:.3g} | eps {epsilon:.2f}")
        return line

    def evaluation(self, evaluation: records.EvalRound) -> None:
        """One evaluation round: eval.jsonl, TensorBoard and the console."""
        frames = evaluation.frames
        for game, score in evaluation.scores.items():
            self.scalar(f"eval/{game}/score", score, frames)
            if evaluation.stderr(game) is not None:
                self.scalar(f"eval/{game}/score_stderr", evaluation.stderr(game), frames)
            if evaluation.normalized[game] is not None:
                self.scalar(f"eval/{game}/normalized", evaluation.normalized[game], frames)
        self.scalar("eval/capped_normalized_sum", evaluation.capped_sum, frames)
        self._append(self.eval_file, records.EVAL_FILE, evaluation.to_json(), "an evaluation round")
        summary = ", ".join(f"{g} {v:.1f}{plus_minus(evaluation.stderr(g))}" for g, v in evaluation.scores.items())
        self.say(f"eval ({evaluation.kind}) at {frames:,} frames: {summary} "
                 f"(capped normalised sum {evaluation.capped_sum:.2f})")


def plus_minus(error: float | None) -> str:
    """' ± 1.9' for a standard error; nothing where there is none."""
    return "" if error is None else f" ± {error:.1f}"

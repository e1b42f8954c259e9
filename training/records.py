"""A run directory's files and the records of its line logs: the one place their names are written.

The trainer writes these records and `reporting/` reads them back, both through the classes
here, so a field renamed on one side cannot silently go missing on the other.

    config.yaml     the resolved config             metrics.jsonl   one `MetricsLine` per log interval
    eval.jsonl      one `EvalRound` per evaluation  summary.json    written at the end
    actors.json     which node each actor runs on   tensorboard/    event files
    checkpoints/    `training.checkpoint`
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from common.stats import mean_and_error

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
EVAL_FILE = "eval.jsonl"
SUMMARY_FILE = "summary.json"
FMN_CONFUSION_FILE = "fmn_confusion.json"  # task_inference: fmn: frames per (true game, inferred task)
ACTORS_FILE = "actors.json"
TENSORBOARD_DIR = "tensorboard"
CHECKPOINT_DIR = "checkpoints"


@dataclass(frozen=True)
class MetricsLine:
    """One line of metrics.jsonl: what happened since the previous line."""

    time_s: float  # since the run (or its resumed part) started
    frames: int
    env_steps: int
    env_steps_per_s: float
    updates: int
    updates_per_s: float
    task: int
    game: str
    epsilon: float
    replay_size: int
    episodes: int
    episode_return: float | None  # mean raw return of the episodes of `game` that ended in the interval
    loss: float | None
    td_error: float | None
    ewc_penalty: float
    q_mean: float | None
    skipped_nonfinite: float
    ewc_grad_ratio: dict[str, float] | None  # per layer: ||EWC gradient|| / ||TD gradient||, when measured

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# Columns of metrics.jsonl that are numbers on every line (None allowed): what a reader can tabulate.
METRICS_NUMBER_COLUMNS = tuple(
    f.name for f in fields(MetricsLine) if f.type in ("int", "float", "float | None")
)


@dataclass(frozen=True)
class EvalRound:
    """One line of eval.jsonl: every game scored with one snapshot of the weights."""

    kind: str  # "initial" (before training), "periodic", "visit_end" (a visit's final weights), "final"
    frames: int
    visit_index: int
    scores: dict[str, float]  # mean raw score per game
    normalized: dict[str, float | None]  # normalised score per game (None: no reference scores)
    capped_sum: float | None  # the paper's metric: sum of normalised scores capped at 1; None when a line lacks it
    episodes: dict[str, list[float]] | None = None  # raw score of every episode played

    def stderr(self, game: str) -> float | None:
        """The standard error of `game`'s mean score over its episodes (None with fewer than two)."""
        return mean_and_error((self.episodes or {}).get(game, []))[1]

    def to_json(self) -> dict[str, Any]:
        games = {
            game: {"score": score, "stderr": self.stderr(game), "normalized": self.normalized.get(game),
                   "episodes": (self.episodes or {}).get(game, [])}
            for game, score in self.scores.items()
        }
        return {"kind": self.kind, "frames": self.frames, "visit_index": self.visit_index, "games": games,
                "capped_sum": self.capped_sum}

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> EvalRound | None:
        """The round of an eval.jsonl line; None if the line lacks what a round must have (e.g. cut short)."""
        games = record.get("games")
        if not isinstance(games, dict) or "kind" not in record or not isinstance(record.get("frames"), int):
            return None
        scores, normalized, episodes = {}, {}, {}
        for game, entry in games.items():
            score = _finite(entry.get("score")) if isinstance(entry, dict) else None
            if score is not None:
                scores[game] = score
                normalized[game] = _finite(entry.get("normalized"))
                played = entry.get("episodes")
                episodes[game] = [v for v in map(_finite, played) if v is not None] if isinstance(played, list) else []
        return cls(
            kind=str(record["kind"]),
            frames=record["frames"],
            visit_index=record["visit_index"] if isinstance(record.get("visit_index"), int) else -1,
            scores=scores,
            normalized=normalized,
            capped_sum=_finite(record.get("capped_sum")),
            episodes=episodes,
        )


def number(value: Any) -> float:
    """A JSON value as a float; NaN for anything that is not a number (None, strings, booleans)."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def _finite(value: Any) -> float | None:
    """A finite number, else None (JSON null, a string, NaN: json.loads accepts NaN, JSON output does not)."""
    value = number(value)
    return value if math.isfinite(value) else None

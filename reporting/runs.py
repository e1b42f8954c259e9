"""Reading what `run.py train` left in a run directory (see training/loop.py for the writer).

- `config.yaml` -> the run's config and its schedule (which game each visit trained);
- `eval.jsonl`  -> one `EvalRound` per evaluation round;
- `metrics.jsonl` (optional) -> the training log as numpy columns, for the training-curve plot;
- `fmn_confusion.json` (task_inference: fmn) -> frames per (true game, inferred task), and their agreement.

The schedule plans visit i at frames [i, i + 1) x frames_per_visit, but the trainer plays each visit for
frames_per_visit frames from whenever it really began, so a run drifts later than its plan;
`played_visits` recovers when each visit was really played, which is what the plots shade.

Malformed lines (a run killed mid-write leaves a partial last line) are skipped and counted,
so a report can be made of a run that is still going or crashed.
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from common.errors import UsageError
from reporting.metrics import VISIT_END
from training.config import RunConfig, config_from_dict
from training.records import (
    CONFIG_FILE,
    EVAL_FILE,
    FMN_CONFUSION_FILE,
    METRICS_FILE,
    METRICS_NUMBER_COLUMNS,
    EvalRound,
    number,
)
from training.schedule import Schedule, Visit

TRAINING_COLUMNS = METRICS_NUMBER_COLUMNS


@dataclass
class TrainingLog:
    """metrics.jsonl as columns; None entries are NaN. `game` is the game trained at each line."""

    columns: dict[str, np.ndarray]
    game: np.ndarray  # of str

    def __len__(self) -> int:
        return len(self.game)


@dataclass
class RunLog:
    run_dir: Path
    name: str  # the config's run_name
    config: RunConfig
    visits: list[Visit]  # as planned: what each visit trained
    played_visits: list[Visit]  # the same visits at the frames they were really played (`played_visits`)
    games: list[str]  # in the order the schedule first plays them
    rounds: list[EvalRound]
    training: TrainingLog | None
    skipped_lines: dict[str, int] = field(default_factory=dict)  # file name -> malformed lines skipped
    fmn_confusion: dict[str, Any] | None = None  # fmn_confusion.json: {"tasks", "frames", "adjusted_rand_index"}


def _json_lines(path: Path, skipped: dict[str, int]) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            if isinstance(record, dict):
                yield record
            else:
                skipped[path.name] = skipped.get(path.name, 0) + 1


def read_eval_rounds(path: Path, skipped: dict[str, int]) -> list[EvalRound]:
    rounds = []
    for record in _json_lines(path, skipped):
        round_ = EvalRound.from_json(record)
        if round_ is None:
            skipped[path.name] = skipped.get(path.name, 0) + 1
        else:
            rounds.append(round_)
    return rounds


def read_training_log(path: Path, skipped: dict[str, int]) -> TrainingLog:
    columns: dict[str, list[float]] = {name: [] for name in TRAINING_COLUMNS}
    games: list[str] = []
    for record in _json_lines(path, skipped):
        for name in TRAINING_COLUMNS:
            columns[name].append(number(record.get(name)))
        games.append(str(record.get("game", "")))
    return TrainingLog({name: np.asarray(values, dtype=float) for name, values in columns.items()},
                       np.asarray(games, dtype=str))


def played_visits(planned: Sequence[Visit], rounds: Sequence[EvalRound], training: TrainingLog | None) -> list[Visit]:
    """The visits at the frames the run really played them; each starts where the previous one ended.

    A visit ended at its "visit_end" round, which the trainer takes at the switch, before the next
    visit plays a frame (the last such round, should a resumed run have logged two). A run evaluated
    without those rounds: at the first metrics.jsonl line logged after the visit's planned length
    that names another game (the switch came within that line's log interval). A visit with neither
    (being played, or not yet): its start plus the planned length.
    """
    ends = {round_.visit_index: round_.frames for round_ in rounds if round_.kind == VISIT_END}
    played: list[Visit] = []
    start = 0
    for visit in planned:
        length = visit.end_frame - visit.start_frame
        end = ends.get(visit.index)
        if end is None and training is not None:
            after = np.flatnonzero((training.columns["frames"] >= start + length) & (training.game != visit.game))
            end = int(training.columns["frames"][after[0]]) if after.size else None
        end = max(end, start) if end is not None else start + length
        played.append(dataclasses.replace(visit, start_frame=start, end_frame=end))
        start = end
    return played


def load_config(run_dir: Path) -> RunConfig:
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise UsageError(f"{str(run_dir)!r} has no config.yaml: not a run directory of `run.py train`")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise UsageError(f"cannot read {path}: {err}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path} is not a config mapping")
    return config_from_dict(data, check_memory=False)


def load_run(run_dir: str | Path) -> RunLog:
    """Everything the report needs from one run directory; UsageError if it is not one."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UsageError(f"run directory {str(run_dir)!r} does not exist")
    config = load_config(run_dir)
    eval_path = run_dir / EVAL_FILE
    if not eval_path.is_file():
        raise UsageError(f"{str(run_dir)!r} has no eval.jsonl: the run has not been evaluated "
                         "(eval.every_frames and eval.at_visit_end both off, or it stopped before its first round)")
    skipped: dict[str, int] = {}
    rounds = read_eval_rounds(eval_path, skipped)
    if not rounds:
        raise UsageError(f"{eval_path} holds no evaluation round yet")
    metrics_path = run_dir / METRICS_FILE
    training = read_training_log(metrics_path, skipped) if metrics_path.is_file() else None
    schedule = Schedule(list(config.games), config.schedule)
    return RunLog(
        run_dir=run_dir,
        name=config.run_name,
        config=config,
        visits=list(schedule.visits),
        played_visits=played_visits(schedule.visits, rounds, training),
        games=schedule.games(),
        rounds=rounds,  # file order = the order they were taken (plots sort by frames)
        training=training,
        skipped_lines=skipped,
        fmn_confusion=read_fmn_confusion(run_dir / FMN_CONFUSION_FILE),
    )


def read_fmn_confusion(path: Path) -> dict[str, Any] | None:
    """fmn_confusion.json, written at the end of a run with task_inference: fmn; None without one (or unreadable)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("frames"), dict) else None


def expand_run_dirs(paths: list[str | Path]) -> list[Path]:
    """Run directories, with a folder of runs (e.g. a sweep's) replaced by the runs found under it."""
    out: list[Path] = []
    for path in map(Path, paths):
        if not path.is_dir() or any((path / name).is_file() for name in (CONFIG_FILE, EVAL_FILE, METRICS_FILE)):
            out.append(path)  # a run directory (complete or not), or a missing one: load_run says what is wrong
            continue
        found = sorted(config.parent for config in path.glob(f"**/{CONFIG_FILE}") if (config.parent / EVAL_FILE).is_file())
        if not found:
            raise UsageError(f"{str(path)!r} is neither a run directory (no {CONFIG_FILE}) nor a folder of runs")
        out.extend(found)
    return out

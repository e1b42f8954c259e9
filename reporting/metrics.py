"""The evaluation matrix of a continual run and the continual-learning metrics computed from it.

Row i of the matrix holds every game's score with the weights at the end of visit i (the
"visit_end" evaluation rounds of eval.jsonl); column j is game j, in the order the schedule
first plays them. The "initial" round (the untrained network) is kept beside the matrix as
the baseline of forward transfer.

Each game is measured on one scale: its normalised score when the run logged one for
it (every ALE game with reference scores in envs.scores), else its raw score. The metrics
(defined in docs/reporting.md; K is the last row, f_j and l_j the first and the last visit of
game j up to K, V the matrix on each game's scale, b the initial scores):

  average_final        mean_j V[K][j]
  forgetting[j]        max_{f_j <= i < K} V[i][j] - V[K][j]   (games first trained before K)
  backward_transfer    mean_j V[K][j] - V[l_j][j]             (games whose last visit is before K)
  forward_transfer     mean_j V[f_j - 1][j] - b_j             (games first trained after visit 0)

  round_forgetting     mean over visits i followed by other games in their round of V[i][g_i] - V[r_i][g_i]
                       (r_i: the round's last visit); _relative divides by the mean of V[i][g_i]

These are the GEM definitions (Lopez-Paz & Ranzato 2017), Chaudhry et al.'s forgetting (2018)
and CORA's isolated forgetting, adapted to a schedule that revisits games. Pure functions on
plain numbers: no files.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from envs.scores import MINATAR_DQN_CURVES, MINATAR_RANDOM, capped_sum, published_dqn_score
from envs.scores import normalized as normalized_score
from training.records import EvalRound

NORMALIZED, RAW = "normalized", "raw"
VISIT_END, LATEST_ROUND = "visit_end", "latest_round_per_visit"

Cell = float | None  # a missing cell: the round did not score that game, or the visit has no round


@dataclass(frozen=True)
class EvaluationMatrix:
    """Scores after each visit (rows, visits 0..K in order) on every game (columns)."""

    games: tuple[str, ...]
    trained: tuple[str, ...]  # the game trained in each row's visit
    frames: tuple[int | None, ...]  # when each row's round was taken (None: no round for that visit)
    raw: tuple[tuple[Cell, ...], ...]
    normalized: tuple[tuple[Cell, ...], ...]
    initial_raw: tuple[Cell, ...] | None  # the untrained network's scores; None without an "initial" round
    initial_normalized: tuple[Cell, ...] | None
    source: str  # VISIT_END, or LATEST_ROUND for runs evaluated without eval.at_visit_end
    # each cell's standard error over its round's episodes, on each game's scale (None: fewer than two)
    stderr: tuple[tuple[Cell, ...], ...] = ()

    @property
    def num_rows(self) -> int:
        return len(self.trained)

    def scale(self, game: str) -> str:
        """NORMALIZED if every logged score of `game` has a normalised value, else RAW."""
        j = self.games.index(game)
        pairs = [(row_raw[j], row_norm[j]) for row_raw, row_norm in zip(self.raw, self.normalized)]
        if self.initial_raw is not None:
            pairs.append((self.initial_raw[j], self.initial_normalized[j]))
        scored = [norm for raw, norm in pairs if raw is not None]
        return NORMALIZED if scored and all(norm is not None for norm in scored) else RAW

    def scales(self) -> dict[str, str]:
        return {game: self.scale(game) for game in self.games}

    def values(self) -> list[list[Cell]]:
        """The matrix on each game's scale (what the metrics use)."""
        use_normalized = [self.scale(g) == NORMALIZED for g in self.games]
        return [[n if use else r for r, n, use in zip(raw_row, norm_row, use_normalized)]
                for raw_row, norm_row in zip(self.raw, self.normalized)]

    def initial_values(self) -> list[Cell] | None:
        if self.initial_raw is None:
            return None
        return [n if self.scale(g) == NORMALIZED else r
                for g, r, n in zip(self.games, self.initial_raw, self.initial_normalized)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "games": list(self.games),
            "rows": [{"visit_index": i, "trained": game, "frames": frames}
                     for i, (game, frames) in enumerate(zip(self.trained, self.frames))],
            "score": [list(row) for row in self.raw],
            "normalized": [list(row) for row in self.normalized],
            "value": self.values(),
            "scale": self.scales(),
            "stderr": [list(row) for row in self.stderr],
            "initial": None if self.initial_raw is None else {
                "score": list(self.initial_raw), "normalized": list(self.initial_normalized),
                "value": self.initial_values(),
            },
            "source": self.source,
        }


def build_matrix(rounds: Sequence[EvalRound], trained: Sequence[str], games: Sequence[str]) -> EvaluationMatrix | None:
    """The evaluation matrix from a run's rounds; `trained`: the schedule's game per visit.

    Rows are the "visit_end" rounds (the last one per visit, should a resumed run have logged
    one twice). A run evaluated without them falls back to the latest "periodic"/"final"
    round taken during each visit. Rows run up to the last visit that has a round; a visit
    in between without one gets a row of None. Returns None if no round qualifies.
    """
    by_visit: dict[int, EvalRound] = {}
    source = VISIT_END
    for round_ in rounds:
        if round_.kind == VISIT_END:
            by_visit[round_.visit_index] = round_
    if not by_visit:
        source = LATEST_ROUND
        for round_ in rounds:
            if round_.kind in ("periodic", "final"):
                by_visit[round_.visit_index] = round_
    by_visit = {i: r for i, r in by_visit.items() if 0 <= i < len(trained)}
    if not by_visit:
        return None
    last = max(by_visit)

    def cells(round_: EvalRound | None, table: str) -> tuple[Cell, ...]:
        values = {} if round_ is None else getattr(round_, table)
        return tuple(values.get(game) for game in games)

    rows = [by_visit.get(i) for i in range(last + 1)]
    initial = next((r for r in rounds if r.kind == "initial"), None)  # the first: a resumed run never logs another
    matrix = EvaluationMatrix(
        games=tuple(games),
        trained=tuple(trained[: last + 1]),
        frames=tuple(None if r is None else r.frames for r in rows),
        raw=tuple(cells(r, "scores") for r in rows),
        normalized=tuple(cells(r, "normalized") for r in rows),
        initial_raw=None if initial is None else cells(initial, "scores"),
        initial_normalized=None if initial is None else cells(initial, "normalized"),
        source=source,
    )
    scales = matrix.scales()
    errors = tuple(tuple(None if r is None else _scaled_error(r, game, scales[game]) for game in games) for r in rows)
    return dataclasses.replace(matrix, stderr=errors)


def _scaled_error(round_: EvalRound, game: str, scale: str) -> Cell:
    """A cell's standard error on the game's scale (the normalised score is affine in the raw one)."""
    error = round_.stderr(game)
    if error is None or scale == RAW:
        return error
    one, zero = normalized_score(game, 1.0), normalized_score(game, 0.0)
    return None if one is None or zero is None else error * abs(one - zero)


def _error_of_mean(errors: Sequence[Cell]) -> float | None:
    """The standard error of a mean of independent cells (or of their differences) from theirs; None if any lacks one."""
    if not errors or any(e is None for e in errors):
        return None
    return math.sqrt(sum(e * e for e in errors)) / len(errors)


def _mean(values: Sequence[Cell]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def _difference(a: Cell, b: Cell) -> Cell:
    return None if a is None or b is None else a - b


def continual_metrics(matrix: EvaluationMatrix) -> dict[str, Any]:
    """Average final performance, forgetting, backward and forward transfer (module docstring).

    Per-game entries are None where a metric is undefined for that game (e.g. forgetting of
    a game first trained in the last visit); averages are over the games where it is defined
    (None if there are none).
    """
    values = matrix.values()
    initial = matrix.initial_values()
    last = matrix.num_rows - 1
    final = values[last]
    forgetting: dict[str, Cell] = {}
    backward: dict[str, Cell] = {}
    forward: dict[str, Cell] = {}
    for j, game in enumerate(matrix.games):
        visits = [i for i, trained in enumerate(matrix.trained) if trained == game]
        first = visits[0] if visits else None
        forgetting[game] = backward[game] = forward[game] = None
        if first is not None and first < last:
            earlier = [values[i][j] for i in range(first, last) if values[i][j] is not None]
            if earlier:
                forgetting[game] = _difference(max(earlier), final[j])
        last_visit = visits[-1] if visits else None
        if last_visit is not None and last_visit < last:
            backward[game] = _difference(final[j], values[last_visit][j])
        # Before its first visit the game was never trained on: what the earlier games taught it.
        if initial is not None and first is not None and first > 0:
            forward[game] = _difference(values[first - 1][j], initial[j])
    final_normalized = dict(zip(matrix.games, matrix.normalized[last]))
    round_forgetting, visit_end_values, round_errors = _round_forgetting(matrix, values)
    final_errors = list(matrix.stderr[last]) if matrix.stderr else [None] * len(final)
    return {
        "final_visit": last,
        "final": dict(zip(matrix.games, final)),
        "final_stderr": dict(zip(matrix.games, final_errors)),
        "average_final": _mean(final),
        "average_final_stderr": _error_of_mean([e for v, e in zip(final, final_errors) if v is not None]),
        "final_capped_sum": capped_sum(final_normalized),
        "forgetting": forgetting,
        "average_forgetting": _mean(list(forgetting.values())),
        "backward_transfer": _mean(list(backward.values())),
        "backward_transfer_per_game": backward,
        "forward_transfer": _mean(list(forward.values())),
        "forward_transfer_per_game": forward,
        "round_forgetting": _mean(round_forgetting),
        "round_forgetting_stderr": _error_of_mean(round_errors),
        "round_forgetting_relative": _ratio(_mean(round_forgetting), _mean(visit_end_values)),
        # the numerator's error only: the end-of-visit scores it divides by are the same evaluations
        "round_forgetting_relative_stderr": _ratio(_error_of_mean(round_errors), _mean(visit_end_values)),
        "scale": matrix.scales(),
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def _round_forgetting(matrix: EvaluationMatrix, values: list[list[Cell]]) -> tuple[list[float], list[float], list[Cell]]:
    """Isolated forgetting within each round of the schedule (one visit per game): for every visit that
    other games follow in its round, (the game's score at the end of its visit) - (its score at the end
    of the round). Returns those differences, the end-of-visit scores they start from, and each
    difference's standard error (two independent evaluations)."""
    per_round = len(matrix.games)
    last = matrix.num_rows - 1
    differences, starts, errors = [], [], []
    for i, game in enumerate(matrix.trained):
        end = (i // per_round + 1) * per_round - 1
        j = matrix.games.index(game)
        if end > last or end == i or values[i][j] is None or values[end][j] is None:
            continue
        differences.append(values[i][j] - values[end][j])
        starts.append(values[i][j])
        a, b = (matrix.stderr[i][j], matrix.stderr[end][j]) if matrix.stderr else (None, None)
        errors.append(None if a is None or b is None else math.sqrt(a * a + b * b))
    return differences, starts, errors


def first_visit_learning(matrix: EvaluationMatrix, frame_skip: int) -> dict[str, Any]:
    """Did each game learn in its first visit? Its raw score at the visit's end against random play and
    against the published DQN at the same number of agent steps (MinAtar games; others are left out).
    A visit is taken to start where the previous visit's evaluation round was taken."""
    out = {}
    for j, game in enumerate(matrix.games):
        if game not in MINATAR_DQN_CURVES or game not in matrix.trained:
            continue
        first = matrix.trained.index(game)
        score, end = matrix.raw[first][j], matrix.frames[first]
        if score is None or end is None:
            continue
        start = matrix.frames[first - 1] if first > 0 else 0
        if start is None:
            continue
        steps = (end - start) // frame_skip
        published, random_score = published_dqn_score(game, steps), MINATAR_RANDOM[game]
        out[game] = {
            "steps": steps, "score": score, "random": random_score, "published_dqn": published,
            "of_published": _ratio(score, published), "of_random": _ratio(score, random_score),
        }
    return out

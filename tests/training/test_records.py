"""eval.jsonl's record: every cell's standard error over its episodes, written and read back."""
from __future__ import annotations

import json
import math

import pytest

from training.evaluation import eval_round
from training.records import EvalRound


def test_an_evaluation_cell_carries_its_standard_error_through_eval_jsonl():
    evaluation = eval_round("periodic", 1000, 0, {"MinAtar/Breakout": [2.0, 4.0, 6.0, 8.0], "MinAtar/Freeway": [5.0]})
    line = json.loads(json.dumps(evaluation.to_json()))
    breakout = line["games"]["MinAtar/Breakout"]
    assert breakout["score"] == 5.0 and breakout["stderr"] == pytest.approx(math.sqrt(20 / 3 / 4))
    assert line["games"]["MinAtar/Freeway"]["stderr"] is None  # one episode: no error to give
    back = EvalRound.from_json(line)
    assert back.stderr("MinAtar/Breakout") == pytest.approx(breakout["stderr"]) and back.episodes["MinAtar/Freeway"] == [5.0]
    del line["games"]["MinAtar/Breakout"]["episodes"]  # a line written before episodes were kept
    assert EvalRound.from_json(line).stderr("MinAtar/Breakout") is None

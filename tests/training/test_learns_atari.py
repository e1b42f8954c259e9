"""It learns on Atari: a real short run of configs/atari_laptop.yaml on Assault through the real trainer
(ALE with the paper's preprocessing, Ray env actors, compressed replay, the learner) must lift the greedy
score clearly above random play and above the untrained network's. docs/atari.md has the curves."""
from __future__ import annotations

import json

from envs.scores import ATARI_SCORES
from tests.conftest import ROOT


def test_atari_assault_is_learned_in_a_short_run(train, tmp_path):
    proc = train(tmp_path, [
        "run_name=learns_atari", "games=[Assault]", "schedule.repeats=1", "schedule.frames_per_visit=64000",
        "eval.every_frames=1000000", "eval.episodes=16", "eval.max_episode_frames=27000", "agent.ewc_enabled=false",
        "logging.log_every_s=30",
    ], extra_args=["--no-report"], config=ROOT / "configs" / "atari_laptop.yaml", timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rounds = [json.loads(line) for line in (tmp_path / "learns_atari" / "eval.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in rounds] == ["initial", "visit_end"]  # eval.every_frames beyond the run: no other
    initial, final = (r["games"]["Assault"] for r in rounds)
    random_play = ATARI_SCORES["Assault"][0]
    # measured: the untrained network ~80-90, random play 222, after 9,000-12,000 agent steps 336-458 (±40)
    assert final["score"] - 2 * final["stderr"] > random_play, (initial, final)
    assert final["score"] - 2 * final["stderr"] > initial["score"] + 2 * initial["stderr"], (initial, final)

"""It learns: a real short MinAtar run through the real trainer (Ray actors, replay, learner) must lift
SpaceInvaders' greedy score clearly above random play. A silent learning failure (no updates, a
broken target, a wrong sign, weights that never reach the actors) fails here, not months later."""
from __future__ import annotations

import json

from envs.scores import MINATAR_RANDOM
from tests.conftest import ROOT


def test_minatar_space_invaders_is_learned_in_a_short_run(train, tmp_path):
    proc = train(tmp_path, [
        "run_name=learns", "games=[MinAtar/SpaceInvaders]", "schedule.repeats=1", "schedule.frames_per_visit=20000",
        "epsilon.decay_steps=10000", "eval.every_frames=10000", "eval.episodes=10", "agent.ewc_enabled=false",
        "agent.ewc_min_frames=0", "logging.log_every_s=5",
    ], extra_args=["--no-report"], config=ROOT / "configs" / "minatar.yaml", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rounds = [json.loads(line) for line in (tmp_path / "learns" / "eval.jsonl").read_text().splitlines()]
    scores = [r["games"]["MinAtar/SpaceInvaders"]["score"] for r in rounds]
    random_play = MINATAR_RANDOM["MinAtar/SpaceInvaders"]
    assert rounds[0]["kind"] == "initial" and rounds[-1]["kind"] == "visit_end"
    assert scores[-1] >= 2.5 * random_play, scores  # measured: 17.7-22.5 after 20,000 steps (3 seeds); random play 2.8
    assert scores[-1] > scores[0] + 4, scores

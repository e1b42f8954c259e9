"""A short continual MinAtar run through everything the Atari runs go through: two games visited
twice, consolidation, evaluation, the report written at the end, `eval` and `perturb` on its
checkpoint, a Ctrl-C that stops it cleanly and `--resume` that continues it."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT, has_learned, run_train

QUICK = ROOT / "configs" / "minatar_quick.yaml"
SMALL = ["schedule.frames_per_visit=1500", "agent.learning_starts=300", "agent.replay_capacity=3000",
         "agent.ewc_min_frames=1500", "agent.fisher_minibatches=4", "eval.every_frames=1500", "eval.episodes=2",
         "logging.log_every_s=1"]


@pytest.fixture(scope="module")
def minatar_run(tmp_path_factory, ray_head):
    logdir = tmp_path_factory.mktemp("runs")
    proc = run_train(logdir, ["run_name=mini", *SMALL], config=QUICK)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return logdir / "mini", proc


def test_the_run_consolidates_evaluates_and_ends_with_its_report(minatar_run):
    run_dir, proc = minatar_run
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["completed"] and summary["consolidations"] == 4 and summary["updates"] > 0
    assert set(summary["final_eval"]["games"]) == {"MinAtar/SpaceInvaders", "MinAtar/Breakout"}
    report = json.loads((run_dir / "report" / "report.json").read_text())
    run = report["runs"][0]
    assert run["matrix"]["scale"] == {"MinAtar/SpaceInvaders": "normalized", "MinAtar/Breakout": "normalized"}
    assert set(run["learning"]) == {"MinAtar/SpaceInvaders", "MinAtar/Breakout"}
    assert run["learning"]["MinAtar/SpaceInvaders"]["steps"] >= 1500
    assert "round_forgetting_relative" in run["metrics"]
    assert (run_dir / "report" / "report.html").is_file() and (run_dir / "report" / "scores.png").is_file()
    assert f"report: {run_dir}/report/report.html" in proc.stderr  # says where it is


def test_eval_and_perturb_play_its_checkpoint(minatar_run, tmp_path):
    run_dir, _ = minatar_run
    out = tmp_path / "eval.json"
    done = subprocess.run([sys.executable, str(ROOT / "run.py"), "eval", "--checkpoint", str(run_dir), "--episodes", "2",
                           "--json", str(out), "--quiet"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert set(result["games"]) == {"MinAtar/SpaceInvaders", "MinAtar/Breakout"}
    assert all(game["normalized"] is not None for game in result["games"].values())
    perturbed = tmp_path / "perturb.json"
    done = subprocess.run([sys.executable, str(ROOT / "run.py"), "perturb", "--checkpoint", str(run_dir), "--game",
                           "minatar/space_invaders", "--sizes", "0.5", "--episodes", "1", "--json", str(perturbed),
                           "--quiet"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert json.loads(perturbed.read_text())["game"] == "MinAtar/SpaceInvaders"


def test_ctrl_c_stops_cleanly_and_resume_continues(train, ray_command, tmp_path):
    proc = train(tmp_path, ["run_name=stop", *SMALL, "schedule.frames_per_visit=100000"], config=QUICK, wait=False)
    run_dir = tmp_path / "stop"
    try:
        deadline = time.monotonic() + 240
        while not has_learned(run_dir):
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr[-3000:]
    assert "SIGINT received: stopping" in stderr and f"--resume {run_dir}" in stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert not summary["completed"] and summary["updates"] > 0
    resumed = ray_command("train", "--resume", str(run_dir), "--stop-after-s", "10", "--no-report", timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {summary['frames']:,} frames" in resumed.stderr

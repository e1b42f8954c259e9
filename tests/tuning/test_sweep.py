"""`run.py sweep`: a real two-trial Ray Tune sweep on a tiny MinAtar config: a trial retried after its learner
is killed, the sweep resumed after its driver is killed, the ranking and the report."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from common.errors import UsageError
from tests.conftest import ROOT
from training.config import config_from_dict, load_config, load_yaml
from training.records import ACTORS_FILE
from tuning.methods import METHODS, parse_methods
from tuning.sweep import (
    combinations,
    mean_and_error,
    parse_grid,
    rank,
    require_room_for_one_trial,
    trial_bundles,
    trial_config_data,
    trial_name,
)

TINY = ["schedule.frames_per_visit=1500", "schedule.repeats=1", "agent.learning_starts=200",
        "agent.replay_capacity=2000", "agent.ewc_min_frames=1000", "agent.fisher_minibatches=2", "eval.every_frames=0", "eval.episodes=2",
        "actors.cpus_per_actor=0.25", "logging.log_every_s=2"]


def test_grid_parsing_and_ranking():
    grid = parse_grid(["agent.ewc_lambda=0,100", "agent.fisher_kind=softmax_exact,td_empirical"])
    assert grid == {"agent.ewc_lambda": [0, 100], "agent.fisher_kind": ["softmax_exact", "td_empirical"]}
    assert len(combinations(grid)) == 4
    assert trial_name({"agent.ewc_lambda": 100}, 2) == "agent.ewc_lambda=100,seed=2"
    for bad, message in (("agent.ewc_lambda", "expects KEY=V1,V2"), ("seed=1,2", "--seeds")):
        with pytest.raises(UsageError, match=message):
            parse_grid([bad])
    with pytest.raises(UsageError, match="given twice"):
        parse_grid(["agent.ewc_lambda=1", "agent.ewc_lambda=2"])
    mean, error = mean_and_error([1.0, 2.0, 3.0])
    assert mean == pytest.approx(2.0) and error == pytest.approx(1 / 3 ** 0.5)
    trials = [
        {"combination": {"x": 1}, "status": "finished", "metrics": {"average_final": 0.2, "round_forgetting_relative": 0.5}},
        {"combination": {"x": 2}, "status": "finished", "metrics": {"average_final": 0.6, "round_forgetting_relative": 0.1}},
        {"combination": {"x": 2}, "status": "failed", "metrics": {}},
    ]
    ranking = rank(trials, {"x": [1, 2]})
    assert [row["x"] for row in ranking] == [2, 1] and ranking[0]["failed"] == 1 and ranking[0]["seeds"] == 1


def test_every_method_is_a_valid_config_of_the_same_system_that_does_what_its_name_says():
    assert parse_methods("all") == list(METHODS) and parse_methods("reset,ewc") == ["reset", "ewc"]
    for bad, message in (("ewc,nope", "unknown"), ("ewc,ewc", "twice"), ("", "empty")):
        with pytest.raises(UsageError, match=message):
            parse_methods(bad)
    base = load_yaml(ROOT / "configs" / "minatar.yaml")
    configs = {name: config_from_dict(trial_config_data(base, {"method": name}, 0, name)) for name in METHODS}
    from training.strategies import make_strategy

    strategy = {name: type(make_strategy(config)).__name__ for name, config in configs.items()}
    assert strategy["finetune"] == "FineTuning" and strategy["reset"] == "Reset"
    assert {strategy[name] for name in ("ewc", "online_ewc", "ewc_rehearsal")} == {"EWC"}
    assert configs["online_ewc"].agent.ewc_online and not configs["ewc"].agent.ewc_online
    for name, config in configs.items():
        rehearses = name.startswith("rehearsal") or name == "ewc_rehearsal"
        assert (config.agent.rehearsal_share > 0) == rehearses, name
        assert (config.agent.rehearsal_bc > 0) == (name == "rehearsal_bc"), name
    # --grid values refine a method's keys; the method's own name goes into the trial's folder
    refined = trial_config_data(base, {"method": "ewc", "agent.ewc_lambda": 100}, 1, "x")
    assert refined["agent"]["ewc_lambda"] == 100 and refined["agent"]["ewc_enabled"] and refined["seed"] == 1
    assert trial_name({"method": "rehearsal_bc", "agent.ewc_lambda": 100}, 0) == "method=rehearsal_bc,agent.ewc_lambda=100,seed=0"
    with pytest.raises(UsageError, match="--methods"):
        parse_grid(["method=ewc,reset"])


@pytest.mark.parametrize("grid, message", [
    (["agent.ewc_lamda=0,100"], "unknown config key 'agent.ewc_lamda'"),
    (["agent.ewc_lambda=0,much"], "'agent.ewc_lambda' must be a number"),
    (["agent.ewc_lambda="], "--grid agent.ewc_lambda: expects a comma-separated list"),
    (["agent.batch_size=32,0"], "agent.batch_size=0: config key 'agent.batch_size' must be positive"),
    (["epsilon.start=0.01,1.0", "epsilon.end=0.05"], "epsilon.start=0.01,epsilon.end=0.05: epsilon.end must not exceed"),
])
def test_a_bad_grid_is_refused_before_any_trial_starts(grid, message, tmp_path, cli):
    args = ["sweep", "--config", str(ROOT / "configs" / "minatar_quick.yaml"), "--logdir", str(tmp_path)]
    proc = cli(*args, *(f"--grid={g}" for g in grid))  # this tier forbids Ray: refused before it starts
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())  # no sweep folder either


def test_a_trial_that_could_never_start_is_refused():
    config = load_config(ROOT / "configs" / "minatar.yaml")  # learner 1 CPU + 2 env actors x 0.5 + the driver
    bundles = trial_bundles(config, cluster_has_gpu=False)
    assert sum(b["CPU"] for b in bundles) > 2 and not any("GPU" in b for b in bundles)
    with pytest.raises(UsageError, match="actors.cpus_per_actor"):
        require_room_for_one_trial(bundles, {"CPU": 2.0}, config.actors)
    require_room_for_one_trial(bundles, {"CPU": 4.0}, config.actors)
    assert trial_bundles(config, cluster_has_gpu=True)[1] == {"CPU": 1.0, "GPU": 1}  # device: auto takes the GPU


def second_visit_checkpointed(run_dir: Path) -> bool:
    return bool(list((run_dir / "checkpoints").glob("ckpt_00000000[1-9]*.pt"))) and (run_dir / ACTORS_FILE).is_file()


def wait_for(condition, sweep: subprocess.Popen, what: str):
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and sweep.poll() is None:
        found = condition()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"{what} never happened: {sweep.communicate()[1][-3000:]}")


def test_a_two_trial_sweep_retries_a_trial_survives_its_driver_and_ranks_and_reports(ray_command, tmp_path):
    args = ["--config", str(ROOT / "configs" / "minatar_quick.yaml"), "--grid", "agent.ewc_lambda=0,1000",
            "--seeds", "1", "--logdir", str(tmp_path), "--name", "tiny", "--max-concurrent", "1"]
    for override in TINY:
        args += ["--set", override]
    sweep_dir, trials = tmp_path / "tiny", tmp_path / "tiny" / "trials"
    sweep = ray_command("sweep", *args, wait=False)
    try:
        # a trial whose learner dies is retried from its own checkpoint (--trial-retries, default 3) ...
        first = wait_for(lambda: next((d for d in trials.glob("*") if second_visit_checkpointed(d)), None), sweep,
                         "a trial's second visit")
        os.kill(json.loads((first / ACTORS_FILE).read_text())["learner"]["pid"], signal.SIGKILL)
        # ... and once it has finished and the other one is under way, the sweep's driver is SIGKILLed
        second = wait_for(lambda: (first / "summary.json").is_file() and next(
            (d for d in trials.glob("*") if d != first and second_visit_checkpointed(d)), None), sweep,
            "the second trial's second visit")
    finally:
        sweep.kill()
        sweep.wait()
    assert json.loads((first / "summary.json").read_text())["resumes"] == 1
    finished_at = (first / "summary.json").stat().st_mtime_ns
    proc = ray_command("sweep", "--resume", str(sweep_dir), timeout=900)  # finishes what is left
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (first / "summary.json").stat().st_mtime_ns == finished_at  # the finished trial is not run again
    assert json.loads((second / "summary.json").read_text())["resumes"] == 1  # the other goes on from its checkpoint
    result = json.loads((sweep_dir / "sweep.json").read_text())
    assert [row["seeds"] for row in result["ranking"]] == [1, 1] and all(r["failed"] == 0 for r in result["ranking"])
    assert {row["agent.ewc_lambda"] for row in result["ranking"]} == {0, 1000}
    assert all(row["average_final"] is not None for row in result["ranking"])
    with open(sweep_dir / "sweep.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 2
    assert "average final" in proc.stdout and "agent.ewc_lambda" in proc.stdout  # the table on stdout
    for trial in result["trials"]:
        run_dir = trials / trial["name"]
        assert trial["status"] == "finished" and (run_dir / "eval.jsonl").is_file()
        assert list((run_dir / "tensorboard").glob("events.*"))  # tensorboard --logdir SWEEP_DIR shows each trial

    report = subprocess.run([sys.executable, str(ROOT / "run.py"), "report", str(sweep_dir), "--quiet"],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert report.returncode == 0, report.stderr[-3000:]
    assert len(json.loads((sweep_dir / "report" / "report.json").read_text())["runs"]) == 2  # every trial, one report

"""Faults in real runs: an env actor killed with SIGKILL, the driver killed and resumed (by hand and with
--resume auto), a diverging loss, a killed learner, a full disk."""
from __future__ import annotations

import ast
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

FAST = [
    "schedule.frames_per_visit=3000", "agent.learning_starts=200", "agent.replay_capacity=3000",
    "agent.fisher_minibatches=2", "eval.every_frames=0", "eval.at_visit_end=false", "logging.log_every_s=1",
    "actors.chunk_steps=50",
]


def wait_for(predicate, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"run ended early: {proc.communicate()[1][-3000:]}")
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.25)


def metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_killed_env_actor_is_restarted_and_the_run_goes_on(train, tmp_path):
    proc = train(tmp_path, ["run_name=kill_actor", *FAST, "schedule.repeats=1"], wait=False)
    run_dir = tmp_path / "kill_actor"
    try:
        wait_for(lambda: (run_dir / "actors.json").exists(), 120, proc)
        wait_for(lambda: any(m["env_steps"] > 300 for m in metrics(run_dir)), 120, proc)
        pid = json.loads((run_dir / "actors.json").read_text())["env_actor_0"]["pid"]
        os.kill(pid, signal.SIGKILL)
        _, stderr = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    if "env actor 0 died" in stderr:  # killed mid-chunk (the usual case): that chunk is lost and logged
        assert "in-flight chunk is lost" in stderr and summary["lost_chunks"] >= 1
    else:  # killed between two chunks: nothing was lost, the restarted actor got the weights again
        assert "env actor 0 was restarted by Ray" in stderr and summary["lost_chunks"] == 0
    assert summary["completed"]
    assert summary["frames"] >= 6_000  # the whole schedule was still played
    # killed after ~150 of its steps, the restarted actor went on playing its share: throughput recovered
    steps = {int(actor): n for actor, n in summary["steps_per_actor"].items()}
    assert steps[0] >= 0.3 * steps[1] and steps[0] > 300


def test_killed_driver_resumes_from_its_checkpoint(train, ray_command, tmp_path):
    proc = train(tmp_path, ["run_name=resume", *FAST, "schedule.frames_per_visit=4000",
                            "logging.checkpoint_every_s=2", "agent.replay_capacity=600", "logging.replay_chunk=250"],
                 wait=False)
    run_dir = tmp_path / "resume"
    checkpoints = run_dir / "checkpoints"
    try:
        # wait until the second visit has been checkpointed, then kill the driver outright
        wait_for(lambda: any(int(p.stem.split("_")[1]) >= 4000 for p in checkpoints.glob("ckpt_*.pt")), 240, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        proc.kill()
    from training import checkpoint

    _, state = checkpoint.load_latest(checkpoints)
    saved = state["counters"]
    before = metrics(run_dir)
    resumed = ray_command("train", "--resume", str(run_dir), timeout=400)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {saved['frames']:,} frames" in resumed.stderr
    # the replay buffers come back: the checkpoint's, and the chunks completed after it (a visit is 1,000
    # agent steps: the first buffer wrapped), so within one chunk (250) of what the killed run last logged
    restored = re.search(r"replay restored: (\{.*\}) transitions per task", resumed.stderr)
    assert restored, resumed.stderr[-3000:]
    restored = ast.literal_eval(restored[1])
    saved_sizes = {task: entry["header"]["transitions"] for task, entry in state["replay"].items()}
    assert all(restored[task] >= size for task, size in saved_sizes.items()) and 500 < saved_sizes[0] <= 600
    assert restored.get(before[-1]["task"], 0) >= before[-1]["replay_size"] - 250
    after = metrics(run_dir)[len(before):]
    # counters continue from the checkpoint instead of restarting at zero
    assert after[0]["env_steps"] >= saved["steps"] and after[0]["updates"] >= saved["updates_done"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["completed"] and summary["resumes"] == 1 and summary["frames"] >= 16_000
    _, final = checkpoint.load_latest(checkpoints)
    kept = set(final["replay"][0]["files"]) | set(final["replay"][1]["files"])
    assert len(kept) > 4 and kept <= {p.name for p in (checkpoints / "replay").iterdir()}
    assert final["counters"]["visit_index"] == 3 and final["epsilon"]["steps"][0] >= state["epsilon"]["steps"][0]


@pytest.fixture
def dying_env_actor(local_ray):
    import ray

    @ray.remote(max_restarts=1)
    class EnvActor:
        def collect_split(self):
            os._exit(1)

    @ray.remote
    class Learner:
        def add(self, chunks):
            return chunks

        def fail(self, chunks):
            raise ValueError("not an actor death")

    actors = EnvActor.remote(), Learner.remote()
    yield actors
    for actor in actors:
        ray.kill(actor)


def test_an_add_whose_chunk_died_with_its_env_actor_loses_only_that_chunk(dying_env_actor):
    """The learner's add can come back before the dead actor's collect does: it must not end the run."""
    import ray

    from training.feeding import Feeder
    from training.pacing import Pacing

    env, learner = dying_env_actor
    pacing = Pacing(update_period=4, max_lead=1000)
    feeder = Feeder(SimpleNamespace(env=[env], learner=learner), SimpleNamespace(pacing=pacing), writer=None,
                    on_collect=None, on_add=None, on_train=None)
    stats_ref = env.collect_split.remote()
    add_ref = learner.add.remote(stats_ref)
    feeder.collects[stats_ref], feeder.adds[add_ref] = (0, add_ref), 50
    pacing.collect_started(50)
    ray.wait([add_ref], timeout=60)
    assert feeder.handle(add_ref)
    assert pacing.steps_in_flight == 0 and add_ref not in feeder.adds

    failed_add = learner.fail.remote([])  # a learner that fails on its own still ends the run
    feeder.adds[failed_add] = 50
    with pytest.raises(ray.exceptions.RayTaskError):
        feeder.handle(failed_add)


def test_diverging_loss_stops_the_run_with_a_clear_message(train, tmp_path):
    # a learning rate this large blows the weights up at the first update: every later loss is NaN/inf
    proc = train(tmp_path, ["run_name=nan", *FAST, "agent.learning_rate=1e30", "agent.max_nonfinite_in_a_row=20"])
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "updates in a row had a NaN/inf loss or gradient" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "python run.py train --resume" in proc.stderr or "no checkpoint was written yet" in proc.stderr


def test_killed_learner_stops_the_run_with_a_message_not_a_hang(train, tmp_path):
    proc = train(tmp_path, ["run_name=kill_learner", *FAST, "schedule.frames_per_visit=40000"], wait=False)
    run_dir = tmp_path / "kill_learner"
    try:
        wait_for(lambda: (run_dir / "actors.json").exists(), 120, proc)
        wait_for(lambda: any(m["updates"] > 0 for m in metrics(run_dir)), 180, proc)
        os.kill(json.loads((run_dir / "actors.json").read_text())["learner"]["pid"], signal.SIGKILL)
        _, stderr = proc.communicate(timeout=120)  # a hang fails here
    finally:
        proc.kill()
    assert proc.returncode == 1
    assert "a Ray actor died" in stderr and "Traceback" not in stderr
    assert "last good checkpoint" in stderr or "no checkpoint was written yet" in stderr


def test_resume_with_an_incompatible_network_is_refused(tiny_run, ray_command, tmp_path):
    import shutil

    run_dir = tmp_path / "copy"
    shutil.copytree(tiny_run, run_dir)
    proc = ray_command("train", "--resume", str(run_dir), "--set", "agent.network.hidden=64", timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "not a compatible Learner state" in proc.stderr and "Traceback" not in proc.stderr


def test_resume_auto_continues_a_run_of_the_same_config_and_refuses_another(tiny_run, ray_command, tmp_path):
    """What a retried job runs: `--config C --resume auto` continues LOGDIR/<run_name> if it holds C's run."""
    import shutil

    from tests.conftest import ROOT, TINY_RUN_OVERRIDES

    shutil.copytree(tiny_run, tmp_path / "tiny")
    args = ["train", "--config", str(ROOT / "configs" / "smoke.yaml"), "--logdir", str(tmp_path), "--resume", "auto",
            "--no-report"]
    for override in TINY_RUN_OVERRIDES:
        args += ["--set", override]
    other = ray_command(*args, "--set", "agent.ewc_lambda=1", timeout=300)
    assert other.returncode == 2 and "Traceback" not in other.stderr, other.stderr[-2000:]
    assert "holds a run of another config: agent.ewc_lambda" in other.stderr
    same = ray_command(*args, "--set", "logging.log_every_s=2", timeout=300)  # how it logs may change
    assert same.returncode == 0, same.stderr[-3000:]
    assert "resumed from" in same.stderr and not (tmp_path / "tiny-2").exists()
    assert json.loads((tmp_path / "tiny" / "summary.json").read_text())["resumes"] == 1


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MiB file system (tmpfs) for a run to fill; skipped where this process may not mount one."""
    mount_point = tmp_path / "small_disk"
    mount_point.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount_point)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {made.stderr.decode().strip()[:200]}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


def test_a_full_disk_stops_the_run_with_one_message_and_keeps_its_last_checkpoint(train, small_disk, ray_command):
    from tests.conftest import ROOT

    proc = train(small_disk, ["run_name=full", "logging.log_every_s=0.5", "logging.checkpoint_every_s=2"],
                 config=ROOT / "configs" / "minatar_quick.yaml", extra_args=["--no-report"], timeout=400)
    run_dir = small_disk / "full"
    assert proc.returncode == 1, proc.stderr[-3000:]
    message = proc.stderr.strip().splitlines()[-1]
    assert "Traceback" not in proc.stderr and f"the disk holding {run_dir}" in message and "is full" in message
    assert "could not write" in message and "--resume" in message  # what it was writing, and what to do
    for name in ("metrics.jsonl", "eval.jsonl"):  # valid line by line, but for at most a last partial line
        lines = (run_dir / name).read_text().splitlines()
        for line in lines[:-1]:
            json.loads(line)
    assert not list((run_dir / "checkpoints").glob("*.tmp"))  # no partial checkpoint left taking the space
    played = ray_command("eval", "--checkpoint", str(run_dir), "--episodes", "1", timeout=300)
    assert played.returncode == 0, played.stderr[-2000:]

"""Real Ray clusters on this machine, with token authentication on (Ray's default):

- two nodes (`ray start --head` plus a worker node): actors land by role (the learner on the node type
  made for it, env actors on theirs), and a driver with a wrong token is refused with one clear line;
- a Ray job (`ray job submit` to a head with the dashboard on 127.0.0.1) trains, streams its progress
  to `ray job logs`, and `ray job stop` ends it with a checkpoint that `--resume` continues.

Only the processes a test started are torn down (never `ray stop`), and the token is given through
RAY_AUTH_TOKEN, so nothing is written to ~/.ray.
"""
from __future__ import annotations

import json
import re
import secrets
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT, has_learned, run_train
from tests.ray_nodes import RAY, free_port, kill_all, own_agent_port


@pytest.fixture(scope="module")
def token() -> str:
    """A fresh token for the module's clusters, this test process and its subprocesses (drivers, the job client)."""
    value = secrets.token_hex(32)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_AUTH_MODE", "token")
        patch.setenv("RAY_AUTH_TOKEN", value)
        patch.delenv("RAY_ADDRESS", raising=False)
        yield value


@pytest.fixture(scope="module")
def two_node_cluster(tmp_path_factory, token):
    """A head (CPU 1, custom resource learner_node) and a worker node (CPU 1, env_node), as deploy/ defines them."""
    temp_dir = str(tmp_path_factory.mktemp("ray"))  # every process of this cluster names it: our teardown key
    port = free_port()
    try:
        subprocess.run([*RAY, "start", "--head", f"--port={port}", "--num-cpus=1", f"--temp-dir={temp_dir}",
                        '--resources={"learner_node": 1}', "--include-dashboard=false", *own_agent_port(),
                        "--disable-usage-stats"],
                       check=True, capture_output=True, timeout=120)
        subprocess.run([*RAY, "start", f"--address=127.0.0.1:{port}", "--num-cpus=1",
                        '--resources={"env_node": 1}', *own_agent_port(), "--disable-usage-stats"],
                       check=True, capture_output=True, timeout=120)
        yield f"127.0.0.1:{port}"
    finally:
        kill_all(temp_dir)


def test_actors_land_on_the_node_types_made_for_them(two_node_cluster, tmp_path):
    proc = run_train(tmp_path, [
        "run_name=cluster", "schedule.frames_per_visit=2000", "schedule.repeats=1",
        "actors.learner_cpus=0.5", "agent.learning_starts=100", "eval.max_episode_frames=400",
        "agent.fisher_minibatches=2", "logging.log_every_s=2",
    ], extra_args=["--address", two_node_cluster, "--no-report"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    placement = json.loads((tmp_path / "cluster" / "actors.json").read_text())
    env_nodes = {placement[f"env_actor_{i}"]["node_id"] for i in range(2)}
    assert len(env_nodes) == 1 and placement["learner"]["node_id"] not in env_nodes, placement
    summary = json.loads((tmp_path / "cluster" / "summary.json").read_text())
    assert summary["frames"] >= 4000 and summary["updates"] > 0 and summary["consolidations"] == 2


@pytest.fixture
def wrong_token(monkeypatch):
    """A token the cluster does not know; a refused connection is retried for ~20 s by default, 3 s here."""
    monkeypatch.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))
    monkeypatch.setenv("RAY_gcs_server_port_wait_time_s", "3")


def test_a_driver_with_a_wrong_token_is_refused_with_one_clear_line(two_node_cluster, wrong_token, tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), "train", "--config", str(ROOT / "configs" / "minatar_quick.yaml"),
         "--address", two_node_cluster, "--logdir", str(tmp_path)],
        capture_output=True, text=True, timeout=180, cwd=ROOT,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert "token" in proc.stderr and "RAY_AUTH_TOKEN" in proc.stderr  # says what to fix


def test_a_worker_node_with_a_wrong_token_is_refused(two_node_cluster, wrong_token):
    proc = subprocess.run([*RAY, "start", f"--address={two_node_cluster}", "--num-cpus=1", "--disable-usage-stats"],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode != 0  # refused at once, not a hang (Ray's own message: ours does not run here)
    assert "InvalidAuthToken" in proc.stderr + proc.stdout


@pytest.fixture(scope="module")
def job_head(tmp_path_factory, token):
    """A one-node cluster with the dashboard (and so the job server) bound to 127.0.0.1."""
    temp_dir = str(tmp_path_factory.mktemp("ray"))
    port, dashboard = free_port(), free_port()
    try:
        subprocess.run([*RAY, "start", "--head", f"--port={port}", "--num-cpus=2", f"--temp-dir={temp_dir}",
                        "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
                        *own_agent_port(),
                        "--disable-usage-stats"],
                       check=True, capture_output=True, timeout=180)
        yield {"address": f"127.0.0.1:{port}", "url": f"http://127.0.0.1:{dashboard}"}
    finally:
        kill_all(temp_dir)


def job(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*RAY, "job", *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_a_submitted_job_trains_streams_its_logs_and_stops_with_a_checkpoint(job_head, tmp_path):
    url, logdir = job_head["url"], tmp_path / "runs"
    deadline = time.monotonic() + 120
    while True:  # the head's job agent starts a little after `ray start` returns
        submitted = job(
            "submit", "--address", url, "--no-wait", "--working-dir", ".",
            "--runtime-env-json", json.dumps({"env_vars": {"RAY_JOB_STOP_WAIT_TIME_S": "60"}}),
            "--", "python", "run.py", "train", "--config", "configs/minatar_quick.yaml", "--logdir", str(logdir),
            "--set", "run_name=job", "--set", "schedule.frames_per_visit=1000000", "--set", "logging.log_every_s=2",
        )
        if submitted.returncode == 0 or "No available agent" not in submitted.stderr or time.monotonic() > deadline:
            break
        time.sleep(3)
    assert submitted.returncode == 0, submitted.stderr[-3000:]
    job_id = re.search(r"raysubmit_[A-Za-z0-9]+", submitted.stdout).group(0)
    run_dir = logdir / "job"
    try:
        deadline = time.monotonic() + 240
        while not has_learned(run_dir):
            status = (lambda done: done.stdout + done.stderr)(job("status", "--address", url, job_id))
            assert "failed" not in status and "succeeded" not in status, job("logs", "--address", url, job_id).stdout[-3000:]
            assert time.monotonic() < deadline, "the job never started learning"
            time.sleep(2)
        while "steps/s" not in job("logs", "--address", url, job_id).stdout:  # progress reaches `ray job logs`
            assert time.monotonic() < deadline, "no progress line in `ray job logs`"
            time.sleep(2)
    finally:
        job("stop", "--address", url, job_id)
    deadline = time.monotonic() + 120
    while "was stopped" not in (lambda done: done.stdout + done.stderr)(job("status", "--address", url, job_id)):
        assert time.monotonic() < deadline, "ray job stop did not end the job"
        time.sleep(1)
    summary = json.loads((run_dir / "summary.json").read_text())  # written on the way out: a clean stop
    assert not summary["completed"] and summary["updates"] > 0
    assert list((run_dir / "checkpoints").glob("ckpt_*.pt"))
    logs = job("logs", "--address", url, job_id).stdout
    assert "SIGTERM received: stopping" in logs and f"--resume {run_dir}" in logs

    # --resume continues from that checkpoint (on the same cluster, for a few seconds)
    frames = summary["frames"]
    resumed = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), "train", "--resume", str(run_dir), "--stop-after-s", "15",
         "--no-report", "--address", job_head["address"]],
        capture_output=True, text=True, timeout=240, cwd=ROOT,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {frames:,} frames" in resumed.stderr

"""A two-node Ray cluster on this machine (`ray start --head` plus a worker node) runs a short training job
with actors on both nodes. Only the processes this test started are torn down (never `ray stop`)."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import run_train


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def processes_mentioning(marker: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def kill_all(marker: str) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in processes_mentioning(marker):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while processes_mentioning(marker) and time.monotonic() < deadline:
            time.sleep(0.2)


@pytest.fixture
def two_node_cluster(tmp_path_factory, monkeypatch):
    # Both sides of a hand-started cluster must agree on authentication; see README "Ray clusters".
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    temp_dir = str(tmp_path_factory.mktemp("ray"))  # every process of this cluster names it: our teardown key
    port = free_port()
    ray = [sys.executable, "-m", "ray.scripts.scripts"]
    try:
        subprocess.run([*ray, "start", "--head", f"--port={port}", "--num-cpus=1", f"--temp-dir={temp_dir}",
                        "--include-dashboard=false", "--disable-usage-stats"],
                       check=True, capture_output=True, timeout=120)
        subprocess.run([*ray, "start", f"--address=127.0.0.1:{port}", "--num-cpus=1",
                        '--resources={"node2": 1}', "--disable-usage-stats"],
                       check=True, capture_output=True, timeout=120)
        yield f"127.0.0.1:{port}"
    finally:
        kill_all(temp_dir)


def test_training_job_spreads_actors_over_two_nodes(two_node_cluster, tmp_path):
    proc = run_train(tmp_path, [
        "run_name=cluster", "schedule.frames_per_visit=2000", "schedule.repeats=1", "actors.placement=spread",
        "actors.learner_cpus=0.5", "agent.learning_starts=100", "eval.max_episode_frames=400",
        "agent.fisher_minibatches=2", "logging.log_every_s=2",
    ], extra_args=["--address", two_node_cluster])
    assert proc.returncode == 0, proc.stderr[-3000:]
    placement = json.loads((tmp_path / "cluster" / "actors.json").read_text())
    env_nodes = {placement[f"env_actor_{i}"]["node_id"] for i in range(2)}
    assert len(env_nodes) == 2, placement  # one env actor on each node
    summary = json.loads((tmp_path / "cluster" / "summary.json").read_text())
    assert summary["frames"] >= 4000 and summary["updates"] > 0 and summary["consolidations"] == 2

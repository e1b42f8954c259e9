"""Shared fixtures, and the two tiers of the suite.

The fast tier (`pytest -m "not slow"`) starts no Ray and trains nothing. A test is slow when it uses
one of `SLOW_FIXTURES` (each starts Ray or trains), and it is marked so here, from its fixtures, so
a new test cannot slip into the fast tier by forgetting a mark; a fast test that starts Ray anyway
fails at once (the fast tier sets `FORBID_RAY_ENV`, which `training.cluster.init_ray` honours).
A test that is slow for another reason says so itself with `@pytest.mark.slow`.

The slow tests share one Ray head (`ray_head`): every `run.py` subprocess and in-process trainer joins
it through RAY_ADDRESS, as a Ray job's driver does, instead of starting and stopping a Ray of its own.
Tests of clusters themselves (tests/training/test_cluster.py) start their own nodes.
"""
from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from tests.ray_nodes import RAY, free_port, kill_all, own_agent_port
from training.cluster import FORBID_RAY_ENV, set_ray_environment

ROOT = Path(__file__).resolve().parents[1]
# The shared head's token, set before any test module imports Ray (which reads the authentication mode once).
os.environ.setdefault("RAY_AUTH_MODE", "token")
os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
SLOW_FIXTURES = {"tiny_run", "minatar_run", "two_node_cluster", "job_head", "train", "ray_command", "local_ray",
                 "ray_head"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def fast_tests_start_no_ray(request, monkeypatch):
    if request.node.get_closest_marker("slow") is None:
        monkeypatch.setenv(FORBID_RAY_ENV, f"{request.node.nodeid} is in the fast tier")

# Two games, two visits each (three task switches), a small network; about a minute on 2 cores.
TINY_RUN_OVERRIDES = [
    "run_name=tiny",
    "schedule.frames_per_visit=4000",
    "agent.learning_starts=200",
    "agent.ewc_min_frames=4000",  # a game's anchor counts after its first full visit, as in the paper
    "agent.replay_capacity=3000",
    "agent.target_update_period=50",
    "agent.fisher_minibatches=4",
    "epsilon.decay_steps=2000",
    "actors.chunk_steps=50",
    "actors.weight_sync_updates=20",
    "eval.every_frames=1000000",
    "eval.max_episode_frames=800",
    "logging.log_every_s=1",
]


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """Tests use small models: a second torch thread gains nothing and oversubscribes a 2-core box."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def has_learned(run_dir: Path) -> bool:
    """Whether the run's latest complete metrics line reports a learner update."""
    path = run_dir / "metrics.jsonl"
    for line in reversed(path.read_text().splitlines() if path.is_file() else []):
        try:
            return json.loads(line).get("updates", 0) > 0
        except json.JSONDecodeError:  # a line still being written
            continue
    return False


def run_train(
    logdir: Path, overrides: list[str], extra_args: list[str] = (), timeout: float = 600,
    config: Path = ROOT / "configs" / "smoke.yaml", wait: bool = True,
) -> subprocess.CompletedProcess | subprocess.Popen:
    """`run.py train` on `config` (configs/smoke.yaml) with `--set` overrides, as a subprocess (finished,
    or started when not `wait`)."""
    args = ["train", "--config", str(config), "--logdir", str(logdir), *extra_args]
    for override in overrides:
        args += ["--set", override]
    return run_command(*args, timeout=timeout, wait=wait)


@pytest.fixture
def cli(capsys, monkeypatch) -> Callable[..., subprocess.CompletedProcess]:
    """`run.py ARGS` in this process, from the repository root: the same `run.main` as the command line
    without an interpreter start per call. For a command's many bad-input and help cases; each command
    keeps one test through its real command line (`run_command`)."""
    import run

    def call(*args: str) -> subprocess.CompletedProcess:
        monkeypatch.chdir(ROOT)
        capsys.readouterr()
        try:
            code = run.main(list(args))
        except SystemExit as exit_:  # argparse: --help, or an argument it refuses itself
            code = exit_.code if isinstance(exit_.code, int) else 2
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(["run.py", *args], code, out, err)

    return call


def run_command(*args: str, timeout: float = 600, wait: bool = True) -> subprocess.CompletedProcess | subprocess.Popen:
    """`run.py ARGS` as a subprocess (finished, or started when not `wait`), from the repository root."""
    command = [sys.executable, str(ROOT / "run.py"), *args]
    if not wait:
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="session")
def ray_head(tmp_path_factory):
    """One Ray head (2 CPUs, token authentication on) that the session's slow tests join: a test's run ends
    by stopping its actors, so the next one finds the head's CPUs free."""
    temp_dir = str(tmp_path_factory.mktemp("ray"))  # every process of this head names it: our teardown key
    port = free_port()
    with pytest.MonkeyPatch.context() as patch:
        set_ray_environment()
        try:
            subprocess.run([*RAY, "start", "--head", f"--port={port}", "--num-cpus=2", f"--temp-dir={temp_dir}",
                            "--include-dashboard=false", *own_agent_port(), "--disable-usage-stats"],
                           check=True, capture_output=True, timeout=120)
            patch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
            yield f"127.0.0.1:{port}"
        finally:
            kill_all(temp_dir)


@pytest.fixture(scope="module")
def local_ray(ray_head):
    """One local Ray instance in this process for a module's in-process trainers (each `run.py train` would
    start and stop its own)."""
    import ray

    from training.cluster import init_ray

    init_ray(logging_level="error", log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture
def train(ray_head):
    """`run_train` for a test: training starts Ray, so the test is in the slow tier."""
    return run_train


@pytest.fixture
def ray_command(ray_head):
    """`run_command` for a command that starts Ray (train, bench, sweep, a resume): the test is in the slow tier."""
    return run_command


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, ray_head) -> Path:
    """The run directory of a finished tiny smoke run (config.yaml, metrics.jsonl, eval.jsonl, checkpoints/, ...)."""
    logdir = tmp_path_factory.mktemp("runs")
    proc = run_train(logdir, TINY_RUN_OVERRIDES)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return logdir / "tiny"

"""Shared fixtures: one tiny real training run (real ALE games, real local Ray) reused by several test files."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

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
    config: Path = ROOT / "configs" / "smoke.yaml",
) -> subprocess.CompletedProcess:
    """`run.py train` on `config` (configs/smoke.yaml) with `--set` overrides, as a subprocess."""
    args = [sys.executable, str(ROOT / "run.py"), "train", "--config", str(config),
            "--logdir", str(logdir), *extra_args]
    for override in overrides:
        args += ["--set", override]
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """The run directory of a finished tiny smoke run (config.yaml, metrics.jsonl, eval.jsonl, checkpoints/, ...)."""
    logdir = tmp_path_factory.mktemp("runs")
    proc = run_train(logdir, TINY_RUN_OVERRIDES)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return logdir / "tiny"

"""Config loading: shipped configs are valid, overrides apply, and every malformed config gets one clear message."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from common.errors import UsageError
from training.config import config_from_dict, load_config

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs" / "smoke.yaml"


def smoke_data() -> dict:
    return yaml.safe_load(SMOKE.read_text())


@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "configs").glob("*.yaml")))
def test_shipped_configs_load_and_list_every_key(name):
    from dataclasses import asdict

    config = load_config(ROOT / "configs" / f"{name}.yaml")
    written = yaml.safe_load((ROOT / "configs" / f"{name}.yaml").read_text())

    def keys(tree: dict, prefix: str = "") -> set[str]:
        out = set()
        for key, value in tree.items():
            out |= keys(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key}
        return out

    # "a config says everything about a run": every schema key is written out
    assert keys(written) == keys(asdict(config))


def test_overrides_and_game_names_are_normalised():
    config = load_config(SMOKE, ["agent.ewc_lambda=50", "games=[space_invaders, pong]", "schedule.order=random",
                                 "agent.learning_rate=1e-4", "schedule.frames_per_visit=2e4"])
    assert config.agent.ewc_lambda == 50.0
    assert config.agent.learning_rate == 1e-4 and config.schedule.frames_per_visit == 20_000  # YAML 1.1 reads these as strings
    assert config.games == ("SpaceInvaders", "Pong")
    assert config.schedule.order == "random"
    assert config.total_frames == 2 * 2 * 20_000


def set_key(data: dict, path: str, value) -> dict:
    node = data
    *parents, last = path.split(".")
    for part in parents:
        node = node[part]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return data


DELETE = object()

MALFORMED = [
    ("agent.ewc_lamda", 3.0, r"unknown config key 'agent.ewc_lamda' \(did you mean 'ewc_lambda'\?\)"),
    ("shedule", {}, r"unknown config key 'shedule' \(did you mean 'schedule'\?\)"),
    ("agent.batch_size", "many", r"'agent.batch_size' must be an integer, got 'many'"),
    ("agent.batch_size", 32.5, r"'agent.batch_size' must be an integer"),
    ("agent.batch_size", True, r"'agent.batch_size' must be an integer"),
    ("agent.batch_size", 0, r"'agent.batch_size' must be positive"),
    ("agent.replay_capacity", -5, r"'agent.replay_capacity' must be positive"),
    ("agent.batch_size", 50000, r"batch_size \(50000\) is larger than agent.replay_capacity"),
    ("epsilon.start", 1.5, r"'epsilon.start' must lie in \[0, 1\]"),
    ("epsilon.evaluation", -0.1, r"'epsilon.evaluation' must lie in \[0, 1\]"),
    ("agent.gamma", 2, r"'agent.gamma' must lie in \[0, 1\]"),
    ("agent.learning_rate", "fast", r"'agent.learning_rate' must be a number"),
    ("games", ["Pong", "Breakot"], r"unknown Atari game 'Breakot'; close matches: Breakout"),
    ("games", [], r"'games' must list at least one game"),
    ("games", ["Pong", "pong"], r"lists a game twice"),
    ("games", "Pong", r"'games' must be a list of strings"),
    ("schedule.order", "shuffled", r"'schedule.order' must be one of 'fixed', 'random'"),
    ("agent.fisher_kind", "fisher", r"'agent.fisher_kind' must be one of"),
    ("agent.network.channels", [16, 32], r"channels, kernels and strides must list one entry per convolution"),
    ("agent.network.channels", [16, 0, 32], r"'agent.network.channels' must be positive"),
    ("agent.network.channels", "wide", r"'agent.network.channels' must be a list of integers"),
    ("agent.network.kernels", [8, 4, 12], r"frames of \[84, 84\] are too small for kernels"),
    ("agent.network.frame_shape", [64, 64], r"'agent.network.frame_shape' must be \[84, 84\] for atari games"),
    ("agent.network.num_actions", 6, r"'agent.network.num_actions' must be 18 for atari games"),
    ("env.full_action_space", False, r"'env.full_action_space' must be true"),
    ("games", ["Pong", "MinAtar/Breakout"], r"a schedule plays games of one family .* atari: Pong; minatar: MinAtar/Breakout"),
    ("agent.network.max_tasks", 1, r"2 games need agent.network.max_tasks >= 2"),
    ("agent", 5, r"agent must be a mapping"),
    ("agent.ewc_online_gamma", 0.5, r"ewc_online_gamma only applies with agent.ewc_online: true"),
    ("agent.replay_capacity", 10**9, r"replay buffers need .* GiB .* lower agent.replay_capacity"),
    ("epsilon.start", 0.001, r"epsilon.end must not exceed epsilon.start"),
    ("run_name", "a/b", r"run_name must be a non-empty name without '/'"),
    ("actors.placement", "random", r"'actors.placement' must be one of 'pack', 'spread'"),
    ("device", "tpu", r"'device' must be one of 'auto', 'cpu', 'cuda'"),
    ("agent.learning_starts", 20001, r"agent.learning_starts \(20001\) exceeds agent.replay_capacity \(20000\)"),
    ("agent.ewc_min_frames", 48001,
     r"agent.ewc_min_frames \(48001\) exceeds the frames each game is played .* = 48000\): EWC would never anchor"),
]


@pytest.mark.parametrize("path,value,message", MALFORMED, ids=[f"{p}={v!r}"[:40] for p, v, _ in MALFORMED])
def test_malformed_configs_get_clear_messages(path, value, message):
    data = smoke_data()
    if "." in path or path in data:
        set_key(data, path, value)
    else:
        data[path] = value
    with pytest.raises(UsageError, match=message):
        config_from_dict(data)


def test_yaml_syntax_error_names_the_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("run_name: x\nagent:\n  batch_size: [1, 2\n  gamma: 0.9\n")
    with pytest.raises(UsageError, match=r"bad.yaml: YAML syntax error at line \d+"):
        load_config(bad)
    with pytest.raises(UsageError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(UsageError, match="--set expects key=value"):
        load_config(SMOKE, ["agent.batch_size"])


@pytest.mark.parametrize("text", ["", "\n# nothing but a comment\n", "{}\n"])
def test_an_empty_config_is_refused_rather_than_run_on_defaults(tmp_path, text):
    empty = tmp_path / "empty.yaml"
    empty.write_text(text)
    with pytest.raises(UsageError, match="empty.yaml is empty: a config says what to run"):
        load_config(empty)


def test_train_command_rejects_bad_config_with_exit_code_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(SMOKE.read_text().replace("ewc_lambda:", "ewc_lamda:"))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), "train", "--config", str(bad), "--logdir", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "did you mean 'ewc_lambda'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not any(tmp_path.glob("smoke*")), "nothing is started or written for a bad config"


def test_learning_that_can_never_start_exits_2_naming_both_keys(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), "train", "--config", str(SMOKE), "--logdir", str(tmp_path),
         "--set", "agent.learning_starts=30000"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "agent.learning_starts (30000)" in proc.stderr and "agent.replay_capacity (20000)" in proc.stderr


@pytest.mark.parametrize("name", ["smoke", "paper", "no_ewc", "paper_fmn"])
def test_atari_configs_treat_a_lost_life_as_terminal_in_training(name):
    # Nature DQN and the EWC paper's set-up: a lost life ends bootstrapping (the game goes on).
    assert load_config(ROOT / "configs" / f"{name}.yaml").env.terminal_on_life_loss

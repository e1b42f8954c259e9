"""Config loading: shipped configs are valid, configs extend others, overrides apply, and every malformed
config gets one clear message."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import run
from common.errors import UsageError
from training.config import EXTENDS_KEY, config_from_dict, config_to_dict, load_config, load_yaml

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs" / "smoke.yaml"


def smoke_data() -> dict:
    return yaml.safe_load(SMOKE.read_text())


@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "configs").glob("*.yaml")))
def test_shipped_configs_load_and_list_every_key(name):
    from dataclasses import asdict

    config = load_config(ROOT / "configs" / f"{name}.yaml")
    written = load_yaml(ROOT / "configs" / f"{name}.yaml")  # with the keys of the config it extends, if any

    def keys(tree: dict, prefix: str = "") -> set[str]:
        out = set()
        for key, value in tree.items():
            out |= keys(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key}
        return out

    # "a config says everything about a run": every schema key is written out (here or in its parent)
    assert keys(written) == keys(asdict(config))


def flat_keys(tree: dict, prefix: str = "") -> dict:
    """{"agent.network.hidden": 128, ...}: every leaf of a nested mapping under its dotted key."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flat_keys(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


SHIPPED_CHILDREN = sorted(p.stem for p in (ROOT / "configs").glob("*.yaml")
                          if EXTENDS_KEY in yaml.safe_load(p.read_text()))


def test_the_variants_of_the_main_configs_extend_them():
    assert {"no_ewc", "paper_fmn", "minatar_no_ewc", "minatar_quick"} <= set(SHIPPED_CHILDREN)


@pytest.mark.parametrize("name", SHIPPED_CHILDREN)
def test_a_shipped_config_that_extends_another_is_its_parent_plus_exactly_its_own_keys(name):
    path = ROOT / "configs" / f"{name}.yaml"
    written = yaml.safe_load(path.read_text())
    parent = load_yaml(path.parent / written.pop(EXTENDS_KEY))
    resolved, own = flat_keys(load_yaml(path)), flat_keys(written)
    assert resolved == {**flat_keys(parent), **own}
    assert set(own) <= set(flat_keys(parent)), "a child only changes keys its parent has"
    assert all(flat_keys(parent)[key] != value for key, value in own.items()), "every key it names differs"


def write_config(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_a_child_overrides_a_nested_key_and_inherits_the_rest(tmp_path):
    write_config(tmp_path / "base.yaml", smoke_data())
    child = write_config(tmp_path / "child.yaml", {
        EXTENDS_KEY: "base.yaml", "run_name": "child",
        "agent": {"network": {"hidden": 64}, "ewc_lambda": 50.0},
        "games": ["Breakout"],  # a list replaces the parent's, it is not merged with it
    })
    config, base = load_config(child), load_config(SMOKE)
    assert config.run_name == "child" and config.games == ("Breakout",)
    assert config.agent.network.hidden == 64 and config.agent.ewc_lambda == 50.0
    assert config.agent.network.channels == base.agent.network.channels  # a sibling of the overridden key
    assert config.agent.batch_size == base.agent.batch_size and config.schedule == base.schedule
    assert EXTENDS_KEY not in config_to_dict(config)  # what a run directory's config.yaml is written from
    # --set applies last, over the child's own keys too
    assert load_config(child, ["agent.network.hidden=32"]).agent.network.hidden == 32


def test_a_chain_of_two_resolves_from_the_root_relative_to_each_file(tmp_path):
    write_config(tmp_path / "root.yaml", smoke_data())
    write_config(tmp_path / "middle" / "middle.yaml", {EXTENDS_KEY: "../root.yaml", "run_name": "middle",
                                                       "schedule": {"repeats": 3}, "eval": {"episodes": 2}})
    leaf = write_config(tmp_path / "middle" / "leaf.yaml", {EXTENDS_KEY: "middle.yaml", "run_name": "leaf",
                                                            "eval": {"episodes": 4}})
    config = load_config(leaf)
    assert config.run_name == "leaf" and config.eval.episodes == 4  # the leaf wins over both
    assert config.schedule.repeats == 3  # from the middle
    assert config.schedule.frames_per_visit == 24000 and config.eval.max_episode_frames == 8000  # from the root


def test_a_cycle_exits_2_naming_the_files(tmp_path, capsys):
    write_config(tmp_path / "a.yaml", {EXTENDS_KEY: "b.yaml", "run_name": "a"})
    write_config(tmp_path / "b.yaml", {EXTENDS_KEY: "a.yaml", "run_name": "b"})
    assert run.main(["train", "--config", str(tmp_path / "a.yaml"), "--logdir", str(tmp_path / "runs")]) == 2
    error = capsys.readouterr().err
    assert "extend each other in a cycle" in error and "a.yaml -> " in error and "b.yaml -> " in error
    assert error.count("\n") == 1 and "Traceback" not in error
    write_config(tmp_path / "self.yaml", {EXTENDS_KEY: "self.yaml", "run_name": "self"})
    with pytest.raises(UsageError, match=r"cycle: .*self.yaml -> .*self.yaml"):
        load_config(tmp_path / "self.yaml")


def test_a_missing_parent_exits_2_naming_both_files(tmp_path, capsys):
    child = write_config(tmp_path / "child.yaml", {EXTENDS_KEY: "nowhere.yaml", "run_name": "child"})
    assert run.main(["train", "--config", str(child), "--logdir", str(tmp_path / "runs")]) == 2
    error = capsys.readouterr().err
    assert "child.yaml: extends 'nowhere.yaml'" in error and "nowhere.yaml' does not exist" in error
    assert "Traceback" not in error and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("value", [None, 3, ["paper.yaml"], ""])
def test_extends_must_name_a_file(tmp_path, value):
    child = write_config(tmp_path / "child.yaml", {EXTENDS_KEY: value, "run_name": "child"})
    with pytest.raises(UsageError, match=r"child.yaml: 'extends' must name the config file it starts from"):
        load_config(child)


def test_extends_cannot_come_from_set():
    with pytest.raises(UsageError, match="'extends' is read only from a config file"):
        load_config(SMOKE, ["extends=paper.yaml"])


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
    ("env.screen_size", 64,
     r"'agent.network.frame_shape' must be \[64, 64\] for atari games with env.screen_size 64 .*got \[84, 84\]"),
    ("env.screen_size", 0, r"'env.screen_size' must be positive"),
    ("agent.n_step", 0, r"'agent.n_step' must lie in \[1, 20\], got 0"),
    ("agent.n_step", 21, r"'agent.n_step' must lie in \[1, 20\], got 21"),
    ("agent.n_step", 2.5, r"'agent.n_step' must be an integer"),
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


def test_minatar_refuses_a_screen_size_it_cannot_honour():
    data = load_yaml(ROOT / "configs" / "minatar.yaml")
    data["env"]["screen_size"] = 64
    with pytest.raises(UsageError, match=r"'env.screen_size' must be 84 for minatar games \(their frames are "
                                         r"\[10, 10, 10\], never resized\), got 64"):
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
    proc = subprocess.run(  # through the real command line: no traceback reaches the user
        [sys.executable, str(ROOT / "run.py"), "train", "--config", str(bad), "--logdir", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "did you mean 'ewc_lambda'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not any(tmp_path.glob("smoke*")), "nothing is started or written for a bad config"


def test_learning_that_can_never_start_exits_2_naming_both_keys(tmp_path, cli):
    proc = cli("train", "--config", str(SMOKE), "--logdir", str(tmp_path), "--set", "agent.learning_starts=30000")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "agent.learning_starts (30000)" in proc.stderr and "agent.replay_capacity (20000)" in proc.stderr


@pytest.mark.parametrize("name", ["smoke", "paper", "no_ewc", "paper_fmn", "atari_laptop", "atari_laptop_no_ewc"])
def test_atari_configs_treat_a_lost_life_as_terminal_in_training(name):
    # Nature DQN and the EWC paper's set-up: a lost life ends bootstrapping (the game goes on).
    assert load_config(ROOT / "configs" / f"{name}.yaml").env.terminal_on_life_loss

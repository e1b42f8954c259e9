"""`run.py train --check`: every shipped Atari config is measured and estimated without starting Ray."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

import run

ROOT = Path(__file__).resolve().parents[2]
ATARI_CONFIGS = ["paper", "no_ewc", "paper_fmn", "smoke", "atari_laptop", "atari_laptop_no_ewc"]


def check(capsys, *args: str) -> tuple[int, str, str]:
    """`run.py train ARGS --check` in this process (the fast tier forbids Ray: a start would fail the test)."""
    code = run.main(["train", *args, "--check"])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("name", ATARI_CONFIGS)
def test_check_measures_a_shipped_atari_config_and_exits_0(name, capsys):
    code, out, err = check(capsys, "--config", str(ROOT / "configs" / f"{name}.yaml"))
    assert code == 0, err
    assert re.search(r"replay memory: [\d,]+ B per stored transition x [\d,]+ per task x \d+ tasks = [\d.]+ GiB", out)
    assert re.search(r"learner update: [\d.]+ ms per update \(cpu", out)
    assert re.search(r"env step: [\d.]+ ms per agent step", out)
    assert re.search(r"estimated wall time: [\d.]+ (s|min|h|days) = max\(env", out)
    assert "report" not in err  # nothing ran, so nothing is reported


def test_check_reads_set_overrides(capsys):
    code, out, err = check(capsys, "--config", str(ROOT / "configs" / "smoke.yaml"), "--set", "agent.n_step=3",
                           "--set", "env.screen_size=64", "--set", "agent.network.frame_shape=[64, 64]",
                           "--set", "agent.replay_capacity=1000", "--set", "agent.replay_compression=none")
    assert code == 0, err
    # a 64x64 frame, the backward link, action, reward, terminal, and the forward link n-step returns walk
    assert f"{64 * 64 + 8 + 1 + 4 + 1 + 8:,} B per stored transition x 1,000 per task x 2 tasks" in out


def test_check_measures_compressed_frames_on_the_configs_games(capsys):
    code, out, err = check(capsys, "--config", str(ROOT / "configs" / "smoke.yaml"))
    assert code == 0, err
    line = next(line for line in out.splitlines() if line.startswith("replay memory"))
    per_transition = int(re.search(r"replay memory: ([\d,]+) B", line)[1].replace(",", ""))
    largest = re.search(r"up to ([\d,]+) B for (Pong|Breakout); 7,056 B raw", line)
    assert largest, line
    # Pong and Breakout frames compress far below a raw 84x84 frame; the slot's other fields stay raw
    assert 14 + 100 < per_transition <= 14 + int(largest[1].replace(",", "")) < 7056


def test_a_screen_size_the_network_does_not_take_exits_2_naming_both_keys(capsys):
    code, out, err = check(capsys, "--config", str(ROOT / "configs" / "smoke.yaml"), "--set", "env.screen_size=64")
    assert code == 2 and not out and "Traceback" not in err
    assert "'agent.network.frame_shape' must be [64, 64] for atari games with env.screen_size 64" in err

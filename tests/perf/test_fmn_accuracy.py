"""`python -m perf.fmn_accuracy`: forget-me-not's segmentation figures on real MinAtar play."""
from __future__ import annotations

import pytest

from perf import fmn_accuracy
from tests.conftest import ROOT

CONFIG = str(ROOT / "configs" / "minatar.yaml")


def test_prints_one_row_per_stream_and_the_mean(capsys):
    code = fmn_accuracy.main(["--config", CONFIG, "--games", "MinAtar/Breakout,MinAtar/Seaquest",
                              "--visit-frames", "400,600", "--seed", "3"])
    out = capsys.readouterr().out
    assert code == 0
    rows = [line.split() for line in out.splitlines() if line.split() and line.split()[0] in ("400", "600", "mean")]
    assert [row[0] for row in rows] == ["400", "600", "mean"]
    for row in rows:
        assert -1.0 <= float(row[1]) <= 1.0 and int(float(row[2])) >= 1  # ARI, tasks found
    assert "channel_backoff=300.0" in out  # the config's fmn options are the ones measured


@pytest.mark.parametrize("args, message", [
    (["--games", "MinAtar/Nope,MinAtar/Breakout"], "unknown MinAtar game"),
    (["--games", "MinAtar/Breakout,Pong"], "mixes frame shapes"),
    (["--visit-frames", "10,x"], "comma-separated integers"),
    (["--set", "fmn.window=0"], "window"),
    (["--checkpoint", "no/such/run"], "does not exist"),
    (["--epsilon", "2"], "--epsilon must be in [0, 1]"),
])
def test_bad_input_exits_2_with_one_line(args, message, capsys):
    assert fmn_accuracy.main(["--config", CONFIG, *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_a_trained_agent_plays_the_streams(tiny_run, capsys):
    """--checkpoint: the frames come from the run's agent (Atari here), each game with its own task."""
    code = fmn_accuracy.main(["--config", str(tiny_run / "config.yaml"), "--games", "Pong,Breakout",
                              "--visit-frames", "200", "--rounds", "1", "--checkpoint", str(tiny_run)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"play: {tiny_run}, epsilon 0.05" in out
    assert fmn_accuracy.main(["--config", str(tiny_run / "config.yaml"), "--games", "Pong,SpaceInvaders",
                              "--checkpoint", str(tiny_run)]) == 2  # a game the agent never played
    assert "was trained on ['Pong', 'Breakout'], not SpaceInvaders" in capsys.readouterr().err

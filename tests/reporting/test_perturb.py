"""`run.py perturb` (paper Fig. 3C): noise shapes, perturbed weights, and the command on the tiny run's checkpoint."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import run
from agents.dqn.networks import (
    NetworkConfig,
    QNetwork,
    shared_parameter_names,
    task_parameter_names,
)
from reporting.perturb import KINDS, flatten, noise_shapes, perturbed_state, unit_noise

REPO = Path(__file__).resolve().parents[2]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TINY_NET = NetworkConfig(channels=(4, 4, 4), hidden=8, max_tasks=2)


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "run.py", "perturb", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


# ----------------------------------------------------------------------------- noise


def test_noise_shapes_follow_the_fisher():
    fisher = torch.tensor([0.0, 0.0, 1.0, 4.0, 100.0])
    damping = 0.5
    stds = noise_shapes(fisher, damping, fisher <= 0.0)
    assert torch.equal(stds["uniform"], torch.ones(5))
    torch.testing.assert_close(stds["inverse_fisher"].square(), 1.0 / (fisher + damping))  # variance (F + lambda)^-1
    assert torch.equal(stds["nullspace"], torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0]))

    generator = torch.Generator().manual_seed(0)
    draws = torch.stack([unit_noise(torch.randn(5, generator=generator), stds["inverse_fisher"]) for _ in range(4000)])
    torch.testing.assert_close(draws.norm(dim=1), torch.ones(4000))  # every draw has unit norm
    spread = draws.square().mean(0)
    assert spread[0] > 50 * spread[4]  # zero-Fisher weights get most of the noise, high-Fisher ones almost none
    nullspace = unit_noise(torch.randn(5, generator=generator), stds["nullspace"])
    assert torch.all(nullspace[2:] == 0) and nullspace.norm() == pytest.approx(1.0)


def test_perturbed_state_moves_only_the_shared_weights_by_the_requested_norm():
    net = QNetwork(TINY_NET)
    base = {n: t.clone() for n, t in net.state_dict().items()}
    names = shared_parameter_names(net)
    theta = flatten(base, names)
    delta = unit_noise(torch.randn(theta.numel(), generator=torch.Generator().manual_seed(1)), torch.ones(theta.numel()))
    state = perturbed_state(base, names, 0.3 * theta.norm() * delta)
    moved = flatten(state, names) - theta
    assert moved.norm() == pytest.approx(0.3 * float(theta.norm()), rel=1e-4)
    torch.testing.assert_close(moved, 0.3 * theta.norm() * delta)  # each weight gets its own slice of delta
    for name in task_parameter_names(net):
        assert torch.equal(state[name], base[name]), f"task parameter {name} was perturbed"
    net.load_state_dict(state)  # still a valid state dict for the network


# ----------------------------------------------------------------------------- the command on the tiny run


def test_perturb_on_the_tiny_run_checkpoint(tiny_run, tmp_path):
    checkpoint = sorted((tiny_run / "checkpoints").glob("ckpt_*.pt"))[-1]
    out_json, out_png = tmp_path / "perturb.json", tmp_path / "perturb.png"
    done = run_cli("--checkpoint", str(checkpoint), "--game", "breakout", "--sizes", "1e-9,2", "--episodes", "1",
                   "--max-episode-frames", "400", "--json", str(out_json), "--plot", str(out_png), "--quiet")
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", "--quiet must silence progress"
    assert out_png.read_bytes().startswith(PNG_SIGNATURE)
    result = json.loads(out_json.read_text())
    assert result["game"] == "Breakout" and result["sizes"] == [1e-9, 2.0]
    assert set(result["curves"]) == set(KINDS) == {"uniform", "inverse_fisher", "nullspace"}
    for kind in KINDS:
        assert len(result["curves"][kind]) == 2 and all(isinstance(v, float) for v in result["curves"][kind])
        assert len(result["episodes"][kind]) == 2 and all(len(e) == 1 for e in result["episodes"][kind])
        # A vanishing perturbation replays the unperturbed episode exactly: same seeds, same exploration draws.
        assert result["curves"][kind][0] == result["unperturbed"]["score"], kind
        # Every draw is scaled to the same norm, but it is the inverse-Fisher one that moves least in the Fisher metric.
    energy = result["fisher_energy"]
    assert energy["inverse_fisher"][1] < energy["uniform"][1]
    assert result["fisher"]["source"] == "checkpoint"  # the tiny run uses EWC: the game's term is in the checkpoint
    assert 0.1 <= result["fisher"]["nullspace_fraction"] < 1.0
    config = result["config"]
    assert config["episodes"] == 1 and config["max_episode_frames"] == 400 and config["weight_norm"] > 0


def test_fisher_computed_from_play_when_asked(tiny_run, tmp_path, capsys):
    out_json = tmp_path / "perturb.json"
    args = ["perturb", "--checkpoint", str(tiny_run), "--game", "Pong", "--sizes", "0.5", "--episodes", "1",
            "--max-episode-frames", "200", "--fisher-from", "play", "--fisher-samples", "48", "--json", str(out_json)]
    assert run.main(args) == 0
    assert "computing the Fisher from 48 states of Pong" in capsys.readouterr().err
    result = json.loads(out_json.read_text())
    assert result["fisher"]["source"] == "play" and result["fisher"]["samples"] == 48
    assert result["fisher"]["kind"] == "softmax_exact" and result["fisher"]["mean"] > 0
    assert all(len(result["curves"][kind]) == 1 for kind in KINDS)


def test_unknown_game_exits_2_with_one_line_through_the_real_command_line(tiny_run, tmp_path):
    done = run_cli("--checkpoint", str(tiny_run), "--game", "Breakot", "--json", str(tmp_path / "x.json"))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("run.py perturb: error: unknown Atari game 'Breakot'")
    assert "Breakout" in lines[0]


@pytest.mark.parametrize("case, fragment", [
    ("game not trained", "the checkpoint has no task for Seaquest"),
    ("corrupt checkpoint", "is corrupt or truncated"),
    ("missing checkpoint", "does not exist"),
    ("bad sizes", "--sizes must be positive"),
    ("no fisher in checkpoint", "holds no EWC Fisher"),
])
def test_bad_input_returns_2_with_one_line(tiny_run, tmp_path, capsys, case, fragment):
    checkpoint = str(tiny_run)
    extra: list[str] = []
    game = "Breakout"
    if case == "game not trained":
        game = "Seaquest"
    elif case == "corrupt checkpoint":
        bad = tmp_path / "ckpt_000000000001.pt"
        bad.write_bytes(b"not a torch file")
        checkpoint = str(bad)
    elif case == "missing checkpoint":
        checkpoint = str(tmp_path / "nope.pt")
    elif case == "bad sizes":
        extra = ["--sizes", "0.1,-1"]
    else:  # strip the EWC terms from a copy of the checkpoint
        file = sorted((tiny_run / "checkpoints").glob("ckpt_*.pt"))[-1]
        state = torch.load(file, map_location="cpu", weights_only=False)
        state["consolidation"]["terms"] = {}
        checkpoint = str(tmp_path / "ckpt.pt")
        torch.save(state, checkpoint)
        extra = ["--fisher-from", "checkpoint"]
    code = run.main(["perturb", "--checkpoint", checkpoint, "--game", game, "--json", str(tmp_path / "x.json"),
                     "--quiet", *extra])
    assert code == 2, case
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], lines
    assert not (tmp_path / "x.json").exists()

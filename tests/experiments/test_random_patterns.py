"""`run.py patterns` (random-pattern memory capacity, GD vs EWC): SNR counting, batched replicas, the CLI."""
from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import run
from common.results import Progress
from ewc import EWCPenalty
from experiments.random_patterns import (
    DEFAULTS,
    ReplicaNet,
    learn_stream,
    make_streams,
    pattern_fisher,
    recalled_counts,
    snr_by_age,
)

REPO = Path(__file__).resolve().parents[2]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
QUIET = Progress(quiet=True)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """These tiny batched networks run slower with several threads, and far slower on a busy machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "run.py", "patterns", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


# ----------------------------------------------------------------------------- SNR counting


def test_counts_are_chance_corrected():
    g = torch.Generator().manual_seed(0)
    probe_z = torch.randn(1, 200_000, generator=g)
    n = 4000
    # Patterns the network knows nothing about: SNR = random sign x noise -> about 0 recalled.
    unseen = torch.randn(1, n, generator=g) * (torch.randint(0, 2, (1, n), generator=g) * 2 - 1)
    corrected, raw, chance = recalled_counts(unseen, probe_z, threshold=1.0)
    assert float(chance) == pytest.approx(0.1587, abs=0.005)  # P(Z >= 1) for Gaussian noise
    assert float(raw) == pytest.approx(n * 0.1587, rel=0.1)  # the raw count is mostly chance ...
    assert float(corrected) < 0.03 * n  # ... and the correction removes it
    # 1,000 patterns far above threshold, 3,000 unseen: about 1,000 recalled.
    known = torch.cat([torch.full((1, 1000), 5.0), unseen[:, :3000]], dim=1)
    corrected, _, _ = recalled_counts(known, probe_z, threshold=1.0)
    assert float(corrected) == pytest.approx(1000, abs=60)


def test_counts_stay_between_0_and_n_and_a_diverged_replica_counts_0():
    probe_z = torch.randn(3, 500, generator=torch.Generator().manual_seed(1))
    snr = torch.stack([torch.full((50,), -5.0), torch.full((50,), 5.0), torch.full((50,), float("nan"))])
    corrected, raw, _ = recalled_counts(snr, probe_z, threshold=1.0)
    assert corrected.tolist() == [0.0, 50.0, 0.0]
    assert raw.tolist() == [0.0, 50.0, 0.0]


def test_snr_by_age_bins_are_geometric_and_cover_every_pattern():
    snr = torch.arange(10.0).unsqueeze(0)  # pattern 9 is the newest (age 0)
    edges, means = snr_by_age(snr, bins=12)
    assert edges == [(0, 1), (1, 2), (2, 4), (4, 8), (8, 10)]
    assert means[0].tolist() == [9.0, 8.0, 6.5, 3.5, 0.5]


# ----------------------------------------------------------------------------- learning


def small_config(**changes):
    return replace(DEFAULTS, **{**dict(inputs=20, hidden=5, patterns=30, probes=200, eval_every=10, seeds=(3, 4)),
                                **changes})


def test_batched_replicas_train_exactly_like_separate_networks():
    cfg = small_config()
    streams = make_streams(cfg)
    together = learn_stream(streams, torch.tensor([0, 1]), torch.tensor([0.01, 0.05]), None, False, cfg, QUIET, "gd")
    alone = [learn_stream(streams, torch.tensor([s]), torch.tensor([lr]), None, False, cfg, QUIET, "gd")
             for s, lr in ((0, 0.01), (1, 0.05))]
    torch.testing.assert_close(together.final_snr, torch.cat([a.final_snr for a in alone]), rtol=1e-4, atol=1e-4)


def test_longer_streams_extend_shorter_ones():
    short, long = make_streams(small_config()), make_streams(small_config(patterns=60))
    assert torch.equal(long.patterns[:, :30], short.patterns) and torch.equal(long.targets[:, :30], short.targets)
    assert torch.equal(long.probes, short.probes) and torch.equal(long.initial["w_in"], short.initial["w_in"])


def test_ewc_fisher_is_the_squared_output_gradient_and_the_control_spreads_it_evenly():
    cfg = small_config()
    streams = make_streams(cfg)
    net = ReplicaNet({k: v for k, v in streams.initial.items()})
    x = streams.patterns[:, :1]
    exact = pattern_fisher(net, x, uniform=False)
    h0 = net(x)[0, 0]
    grads = torch.autograd.grad(h0, list(net.parameters()))
    for (name, _), g in zip(net.named_parameters(), grads):
        torch.testing.assert_close(exact[name][0], g[0].square())
    uniform = pattern_fisher(net, x, uniform=True)
    for replica in range(2):
        totals = [sum(float(f[replica].sum()) for f in fisher.values()) for fisher in (exact, uniform)]
        assert totals[0] == pytest.approx(totals[1], rel=1e-5)
        assert len({round(float(v), 9) for f in uniform.values() for v in f[replica].flatten()}) == 1


def test_ewc_learns_new_patterns_and_protects_old_ones_better_than_the_same_rate_without_it():
    cfg = replace(DEFAULTS, patterns=500, probes=500, eval_every=500, seeds=(20, 21, 22))
    streams = make_streams(cfg)
    replicas, rate = torch.arange(3), torch.full((3,), cfg.ewc_lr)
    gd = learn_stream(streams, replicas, rate, None, False, cfg, QUIET, "gd")
    penalty = EWCPenalty(cfg.ewc_lambda, online=True)
    ewc = learn_stream(streams, replicas, rate, penalty, False, cfg, QUIET, "ewc")
    newest, older = slice(-10, None), slice(190, 490)  # ages 0-9 and 10-309
    assert float(ewc.final_snr[:, newest].mean()) > 0.8, "EWC must still learn new patterns"
    # Measured: about 0.48 for EWC vs 0.26 for GD at EWC's step size on these seeds.
    assert float(ewc.final_snr[:, older].mean()) > float(gd.final_snr[:, older].mean()) + 0.1


# ----------------------------------------------------------------------------- command line


def test_short_run_writes_json_and_plot_with_counts_in_range(tmp_path):
    out_json, out_png = tmp_path / "patterns.json", tmp_path / "patterns.png"
    done = run_cli("--patterns", "120", "--eval-every", "40", "--seeds", "0,1", "--gd-lrs", "0.0005,0.005",
                   "--probes", "300", "--json", str(out_json), "--plot", str(out_png), "--quiet")
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", "--quiet must silence progress"
    result = json.loads(out_json.read_text())
    assert result["n_patterns"] == [40, 80, 120]
    assert set(result["recalled"]) == {"gd", "ewc", "l2"}
    for method, counts in result["recalled"].items():
        assert len(counts) == 3
        assert all(0.0 <= c <= n for c, n in zip(counts, result["n_patterns"])), (method, counts)
        assert all(0.0 <= c <= n for c, n in zip(result["recalled_raw"][method], result["n_patterns"]))
        assert len(result["snr_new"][method]) == 3 and all(isinstance(v, float) for v in result["snr_new"][method])
    assert result["gd_lr"] in (0.0005, 0.005)
    assert len(result["gd_sweep"]["recalled"]) == 2
    assert result["config"]["snr_threshold"] == 1.0 and result["config"]["seeds"] == [0, 1]
    assert out_png.read_bytes()[:8] == PNG_SIGNATURE
    assert "ewc" in done.stdout and "gd" in done.stdout


def test_help_describes_the_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run.main(["patterns", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--snr-threshold" in out and "SNR" in out and "--gd-lrs" in out


def test_bad_threshold_exits_2_with_one_line_through_the_real_command_line():
    done = run_cli("--snr-threshold", "0", timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "run.py patterns: error: --snr-threshold must be a positive number, got 0.0"
    ]


@pytest.mark.parametrize("args, fragment", [
    (["--methods", "gd"], "--methods"),
    (["--methods", "gd,ewc,sgd"], "sgd"),
    (["--gd-lrs", "0.01,-1"], "learning rates"),
    (["--gd-lrs", "fast"], "--gd-lrs"),
    (["--patterns", "0"], "--patterns"),
    (["--probes", "1"], "--probes"),
    (["--seeds", "1,1"], "repeats"),
])
def test_bad_arguments_return_2_with_one_line(args, fragment, capsys):
    assert run.main(["patterns", *args]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("run.py patterns: error:") and fragment in lines[0], lines

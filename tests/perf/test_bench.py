"""`run.py bench`: the JSON report's keys (tiny network, seconds-long windows), RLlib's config, helpers.

No speed is asserted anywhere: the figures depend on the machine and its load.
"""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest

from common.errors import UsageError
from tests.conftest import ROOT

SECTION_KEYS = {
    "train": {"ours_env_steps_per_s", "rllib_env_steps_per_s", "ratio", "ours_updates_per_s",
              "ours_env_steps_per_update", "limit_env_steps_per_s", "ours_fraction_of_limit"},
    "learner": {"ours_updates_per_s", "bare_updates_per_s", "ratio", "learner_busy_fraction",
                "learner_cpu_per_busy_s", "bare_ms", "learner_update_ms", "sample_and_update_ms",
                "compiled_optimizer_step", "bare_eager_over_bare"},
    "ewc_overhead": {"tasks_1", "tasks_10", "tasks_1_stderr", "isolated_tasks_1", "isolated_tasks_10", "update_ms_no_penalty",
            "penalty_gradient_ms_tasks_1", "penalty_gradient_ms_tasks_10"},
    "replay": {"bytes_per_transition", "naive_stacked_bytes_per_transition", "sample_transitions_per_s"},
    "fisher": {"atari_softmax_exact_samples_per_s", "atari_softmax_sample_samples_per_s",
               "atari_td_empirical_samples_per_s", "mnist_exact_samples_per_s", "mnist_sample_samples_per_s",
               "mnist_empirical_samples_per_s"},
    "actors": {"actors_1_env_steps_per_s", "actors_2_env_steps_per_s", "actors_4_env_steps_per_s",
               "raw_env_steps_per_s_one_process", "act_forward_ms"},
    "minatar": {"ours_env_steps_per_s", "loop_env_steps_per_s", "rllib_env_steps_per_s", "limit_env_steps_per_s",
                "bare_learner_updates_per_s", "actor_env_steps_per_s", "ours_over_loop", "ours_fraction_of_limit",
                "bytes_per_transition"},
    "time_to_score": {"ours_s", "loop_s", "rllib_s", "threshold", "game", "seeds", "cap_s", "runs"},
}


def run_bench(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "run.py"), "bench", *args],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_bench_writes_every_section_under_stable_keys(tmp_path):
    out = tmp_path / "bench.json"
    proc = run_bench("--tiny", "--seconds", "4", "--learning-starts", "200", "--skip-rllib", "--score-seeds", "1",
                     "--score-threshold", "-1", "--json", str(out), "--quiet", timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stderr == ""  # --quiet
    report = json.loads(out.read_text())
    assert {"device", "config", "targets", *SECTION_KEYS} <= set(report)
    for section, keys in SECTION_KEYS.items():
        assert keys <= set(report[section]), (section, keys - set(report[section]))
    assert report["train"]["rllib_env_steps_per_s"] is None and report["train"]["rllib_skipped"]
    assert report["config"]["network"]["tiny"] and report["device"]["device"] == "cpu"
    assert report["replay"]["naive_stacked_bytes_per_transition"] == 4 * 84 * 84 * 2
    assert report["learner"]["learner_torch_threads"] == 1
    # configs/paper.yaml compiles the optimizer step; this machine has the C++ compiler it needs
    assert report["config"]["learner_compiled_optimizer_step"] and report["learner"]["compiled_optimizer_step"]
    assert set(report["targets"]) == {"learner_ratio_ge_0.9", "ewc_overhead_le_5pct", "bytes_per_transition_le_7200",
                                      "minatar_ge_1.5x_loop", "minatar_ge_70pct_of_limit", "time_to_score_le_0.7x_loop"}
    minatar = report["minatar"]
    assert minatar["game"] == "MinAtar/SpaceInvaders" and minatar["rllib_env_steps_per_s"] is None
    assert minatar["bytes_per_transition"] < 1100  # uint8 cells (1,000 B per frame), not a float grid
    assert report["time_to_score"]["runs"]["ours"][0] is not None  # threshold -1: the first evaluation reaches it


def test_sections_subset_and_bad_input(tmp_path):
    out = tmp_path / "replay.json"
    proc = run_bench("--sections", "replay", "--seconds", "3", "--tiny", "--json", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert {"device", "config", "replay", "targets"} == set(json.loads(out.read_text())) - {"wall_s"}
    for bad in (["--sections", "replay,gpu"], ["--seconds", "0"], ["--learner-threads", "0"],
                ["--game", "NoSuchGame", "--sections", "replay"]):
        proc = run_bench(*bad, "--quiet")
        assert proc.returncode == 2 and "error" in proc.stderr, (bad, proc.stderr[-500:])


def test_rllib_config_matches_our_agent():
    pytest.importorskip("ray.rllib")
    from ray.rllib.algorithms.dqn.dqn import calculate_rr_weights

    from perf.ours import bench_run_config
    from perf.rllib_dqn import (
        build_rllib_config,
        config_notes,
        make_env,
        updates_per_round,
    )

    ours = bench_run_config(game="Pong", learning_starts=500, learner_threads=1)
    config = build_rllib_config(ours, fragment=50)
    assert config.num_env_runners == ours.actors.num_env_actors == 2
    assert config.train_batch_size_per_learner == ours.agent.batch_size == 32
    assert calculate_rr_weights(config) == [1, 25]  # 2 runners x 50 steps, then 100 / 4 updates: our replay ratio
    assert updates_per_round(ours, 50) * ours.agent.update_period == 50 * 2
    assert config.double_q and not config.dueling and config.n_step == 1
    assert config.num_steps_sampled_before_learning_starts == 500
    filters = config.model_config["conv_filters"]
    assert [f[:3] for f in filters] == [[32, 8, 4], [64, 4, 2], [128, 3, 1]] and {f[3] for f in filters} == {"valid"}
    assert config.model_config["head_fcnet_hiddens"] == [1024]
    assert any("Adam" in note for note in config_notes(ours))
    with pytest.raises(UsageError, match="multiple"):
        updates_per_round(ours, 1)  # 2 steps per round cannot hold one update per 4 steps

    env = make_env(config.env_config)
    obs, _ = env.reset()
    assert obs.shape == (84, 84, 4) and obs.dtype == np.float32 and env.action_space.n == 18
    obs, reward, *_ = env.step(0)
    assert obs.shape == (84, 84, 4) and reward in (-1.0, 0.0, 1.0)
    env.close()


def test_steady_rate_is_the_slope_of_arrivals():
    from perf.measure import steady_rate

    events = [(t, 100.0 * (t // 2)) for t in range(0, 40)]  # 100 steps every 2 s: 50 steps/s in chunks
    value, window = steady_rate(events, start=10.0)
    assert value == pytest.approx(50.0, rel=0.05) and window == 29
    with pytest.raises(UsageError):
        steady_rate(events[:2], start=0.0)


def test_bench_config_is_the_paper_network_on_one_game():
    from perf.ours import bench_run_config

    config = bench_run_config(game="Breakout", learning_starts=300, learner_threads=1)
    assert config.games == ("Breakout",) and config.agent.network.channels == (32, 64, 128)
    assert config.agent.network.hidden == 1024 and config.agent.learning_starts == 300
    assert config.eval.every_frames == 0 and config.actors.learner_threads == 1
    assert dataclasses.asdict(config.env)["frame_skip"] == 4

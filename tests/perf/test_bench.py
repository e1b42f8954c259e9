"""`run.py bench`: the JSON report's keys (tiny network, seconds-long windows), RLlib's config, helpers.

No speed is asserted anywhere: the figures depend on the machine and its load.
"""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from common.errors import UsageError
from perf.command import DEFAULT_SECTIONS, GPU_BATCH_SIZES, GPU_QUICK_SECTIONS
from tests.conftest import run_command

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
    "eval_round": {f"{family}_{key}" for family in ("minatar", "atari") for key in (
        "one_at_a_time_s", "batched_s", "one_at_a_time_episodes", "batched_episodes", "batched_over_one_at_a_time")},
    "actors": {"actors_1_env_steps_per_s", "actors_2_env_steps_per_s", "actors_4_env_steps_per_s",
               "raw_env_steps_per_s_one_process", "act_forward_ms"},
    "minatar": {"ours_env_steps_per_s", "loop_env_steps_per_s", "rllib_env_steps_per_s", "limit_env_steps_per_s",
                "bare_learner_updates_per_s", "actor_env_steps_per_s", "ours_over_loop", "ours_fraction_of_limit",
                "bytes_per_transition", "ours_learner_cpu_per_busy_s"},
    "time_to_score": {"ours_s", "loop_s", "rllib_s", "threshold", "game", "seeds", "cap_s", "runs", "ours_over_rllib_at_most"},
}


def check_section_keys(report: dict, sections) -> None:
    for section in sections:
        assert SECTION_KEYS[section] <= set(report[section]), (section, SECTION_KEYS[section] - set(report[section]))


# The default sections are split over the two runs below: --gpu-quick runs train and learner (and gpu)
# as part of its own set, so the first run leaves them out instead of measuring them twice.
def test_bench_writes_every_section_under_stable_keys(tmp_path, ray_command):
    out = tmp_path / "bench.json"
    sections = [name for name in DEFAULT_SECTIONS if name not in GPU_QUICK_SECTIONS]
    proc = ray_command("bench", "--sections", ",".join(sections), "--tiny", "--seconds", "3", "--learning-starts", "200",
                       "--skip-rllib", "--score-seeds", "1", "--score-threshold", "-1",
                       "--profile", str(tmp_path / "profile"), "--json", str(out), "--quiet", timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stderr == ""  # --quiet
    report = json.loads(out.read_text())
    in_report = {"ewc": "ewc_overhead", "eval": "eval_round"}  # section names on the command line -> JSON keys
    assert {"device", "config", "targets", *(in_report.get(name, name) for name in sections)} <= set(report)
    check_section_keys(report, [in_report.get(name, name) for name in sections])
    assert report["config"]["network"]["tiny"] and report["device"]["device"] == "cpu"
    assert report["replay"]["naive_stacked_bytes_per_transition"] == 4 * 84 * 84 * 2
    assert set(report["targets"]) == {"ewc_overhead_le_5pct", "bytes_per_transition_le_1500",
                                      "replay_sample_ge_30000_per_s",
                                      "minatar_ge_1.5x_loop", "minatar_ge_70pct_of_limit", "time_to_score_le_0.7x_loop"}
    minatar = report["minatar"]
    assert minatar["game"] == "MinAtar/SpaceInvaders" and minatar["rllib_env_steps_per_s"] is None
    assert minatar["bytes_per_transition"] < 1100  # uint8 cells (1,000 B per frame), not a float grid
    assert report["time_to_score"]["runs"]["ours"][0] is not None  # threshold -1: the first evaluation reaches it
    # --profile: every process of a second run of our trainer sampled by py-spy, sorted into phases
    phases = minatar["phases"]
    assert {"learner", "env_actor_0", "env_actor_1", "driver"} <= set(phases["processes"])
    assert {path.name for path in (tmp_path / "profile").iterdir()} >= {"learner.txt", "driver.txt"}
    assert sum(phases["shares"].values()) == pytest.approx(1.0)
    assert phases["shares"]["update: backward"] > 0 and phases["processes"]["learner"]["busy_fraction"] > 0


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device"))])
def test_gpu_quick_set_runs_on_the_chosen_device(tmp_path, ray_command, device):
    out = tmp_path / "gpu.json"
    proc = ray_command("bench", "--gpu-quick", "--device", device, "--tiny", "--seconds", "3", "--learning-starts", "200",
                       "--skip-rllib", "--json", str(out), "--quiet", timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(out.read_text())
    assert set(GPU_QUICK_SECTIONS) <= set(report) and report["device"]["device"] == device
    check_section_keys(report, ["train", "learner"])
    assert report["train"]["rllib_env_steps_per_s"] is None and report["train"]["rllib_skipped"]
    assert report["learner"]["learner_torch_threads"] == 1
    # configs/paper.yaml compiles the optimizer step (whether it compiled depends on the machine's C++ compiler)
    assert report["config"]["learner_compiled_optimizer_step"]
    assert isinstance(report["learner"]["compiled_optimizer_step"], bool)
    assert set(report["targets"]) == {"learner_ratio_ge_0.9"}
    gpu = report["gpu"]
    assert gpu["device"] == device and gpu["num_env_actors"] >= 2 and gpu["ours_env_steps_per_s"] > 0
    for batch in GPU_BATCH_SIZES:
        assert gpu[f"update_ms_batch_{batch}_eager"] > 0 and gpu[f"update_ms_batch_{batch}_compiled_step"] > 0
    assert isinstance(gpu["compiled_optimizer_step"], bool) and gpu["rllib_env_steps_per_s"] is None


def test_sections_subset_and_bad_input(tmp_path, cli):  # sections that start no Ray, and refusals before it
    out = tmp_path / "replay.json"
    proc = run_command("bench", "--sections", "replay", "--seconds", "3", "--tiny", "--json", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert {"device", "config", "replay", "targets"} == set(json.loads(out.read_text())) - {"wall_s"}
    bad_input = [["--sections", "replay,nosuch"], ["--seconds", "0"], ["--learner-threads", "0"],
                 ["--game", "NoSuchGame", "--sections", "replay"], ["--sections", "replay", "--profile", str(tmp_path)],
                 ["--gpu-quick", "--sections", "replay"], ["--device", "tpu", "--sections", "replay"]]
    if not torch.cuda.is_available():
        bad_input.append(["--device", "cuda", "--sections", "replay"])
    for bad in bad_input:
        proc = cli("bench", *bad, "--quiet")
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


def test_profile_samples_are_sorted_into_the_trainers_phases(tmp_path):
    from perf.phases import WAITING, classify, phase_shares

    ray_task = ("<module> (ray/_private/workers/default_worker.py:323);Worker.main_loop (ray/_private/worker.py:1069);"
                "FunctionActorManager._make_actor_method_executor.<locals>.actor_method_executor "
                "(ray/_private/function_manager.py:740)")
    update = f"{ray_task};LearnerService.train (training/services.py:106);Learner.update (agents/dqn/learning.py:95)"
    stacks = {  # py-spy --format raw lines as the learner produces them (and an env actor's below)
        f"{update};Tensor.backward (torch/_tensor.py:623);_engine_run_backward (torch/autograd/graph.py:979)": 30,
        f"{update};q_taken_and_targets (agents/dqn/losses.py:89);Linear.forward (torch/nn/modules/linear.py:134)": 50,
        f"{ray_task};LearnerService.train (training/services.py:102);TaskReplay.sample (agents/replay.py:300)": 5,
        f"{update};Learner._optimizer_step (agents/dqn/learning.py:150);rmsprop_update_ (agents/optimizer.py:57)": 10,
        "<module> (ray/_private/workers/default_worker.py:323);Worker.main_loop (ray/_private/worker.py:1069)": 400,
        "Thread._bootstrap (threading.py:1002);PythonGCThread.run (ray/_private/gc_collect_manager.py:29);"
        "Event.wait (threading.py:629);Condition.wait (threading.py:327)": 500,
    }
    actor = {
        f"{ray_task};_EnvActor.collect_split (training/actors.py:30);EnvRunner.collect (agents/dqn/actor.py:120);"
        "EnvRunner.act (agents/dqn/actor.py:103);Conv2d._conv_forward (torch/nn/modules/conv.py:560)": 8,
        f"{ray_task};_EnvActor.collect_split (training/actors.py:30);EnvRunner.collect (agents/dqn/actor.py:121);"
        "MinAtarEnv.step (envs/minatar.py:90)": 2,
    }
    assert classify(next(iter(stacks))) == "update: backward"
    assert classify("x (a.py:1);wait (ray/_private/worker.py:3237)") == WAITING
    files = {}
    for role, lines in (("learner", stacks), ("env_actor_0", actor)):
        files[role] = tmp_path / f"{role}.txt"
        files[role].write_text("".join(f"{stack} {count}\n" for stack, count in lines.items()))
    result = phase_shares(files, seconds=1.0, rate_hz=100)
    assert result["cpu_s"] == pytest.approx(1.05)  # 105 working samples at 100 Hz; waits are not CPU time
    assert result["shares"]["update: forward passes"] == pytest.approx(50 / 105)
    assert result["shares"]["acting forward pass"] == pytest.approx(8 / 105)
    assert result["shares"]["env step"] == pytest.approx(2 / 105)
    assert result["processes"]["learner"]["busy_fraction"] == pytest.approx(0.95)

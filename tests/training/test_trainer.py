"""A real short `run.py train` on configs/smoke.yaml (local Ray, real ALE games) and `run.py eval` on its checkpoint."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import yaml

from fmn.segmentation import adjusted_rand_index_of
from tests.conftest import ROOT
from training import checkpoint
from training.config import load_config, load_yaml

METRIC_KEYS = {"env_steps", "env_steps_per_s", "updates", "updates_per_s", "task", "game", "loss", "ewc_penalty"}
TENSORBOARD_TAGS = {
    "episode_return/Breakout", "normalized/Breakout", "train/loss", "train/td_error", "train/ewc_penalty",
    "train/epsilon", "replay/fill", "perf/env_steps_per_s", "perf/updates_per_s", "train/task",
    "eval/Pong/score", "eval/Breakout/score", "eval/Pong/normalized", "eval/capped_normalized_sum",
    "ewc/fisher_mean", "ewc/grad_ratio/conv1", "ewc/grad_ratio/fc", "ewc/grad_ratio/out",
}


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_metrics_jsonl_has_the_documented_keys(tiny_run):
    records = read_jsonl(tiny_run / "metrics.jsonl")
    assert len(records) >= 3
    for record in records:
        assert METRIC_KEYS <= set(record)
    last = records[-1]
    assert last["frames"] >= 16_000 and last["updates"] > 0  # the whole schedule was played
    assert {r["game"] for r in records} == {"Pong", "Breakout"}
    assert {r["task"] for r in records} == {0, 1}
    assert any(r["ewc_penalty"] > 0 for r in records)  # anchors arrived and the penalty counted
    ratios = [r["ewc_grad_ratio"] for r in records if r["ewc_grad_ratio"]]
    assert ratios and set(ratios[-1]) == {"conv1", "conv2", "conv3", "fc", "out"}
    assert all(value >= 0 for value in ratios[-1].values())


def test_tensorboard_event_files_have_the_tags(tiny_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tiny_run / "tensorboard"))
    events.Reload()
    assert TENSORBOARD_TAGS <= set(events.Tags()["scalars"])


def test_schedule_switches_consolidate_and_evaluate(tiny_run):
    summary = json.loads((tiny_run / "summary.json").read_text())
    assert summary["consolidations"] == 4  # three switches plus the end of the schedule
    rounds = read_jsonl(tiny_run / "eval.jsonl")
    assert rounds[0]["kind"] == "initial" and rounds[0]["frames"] == 0
    visit_ends = [r for r in rounds if r["kind"] == "visit_end"]
    assert [r["visit_index"] for r in visit_ends] == [0, 1, 2, 3]
    for record in rounds:
        assert set(record["games"]) == {"Pong", "Breakout"}
    config = yaml.safe_load((tiny_run / "config.yaml").read_text())
    assert config["games"] == ["Pong", "Breakout"] and config["schedule"]["frames_per_visit"] == 4000
    placement = json.loads((tiny_run / "actors.json").read_text())
    assert {"learner", "consolidation", "env_actor_0", "env_actor_1"} <= set(placement)


def test_checkpoint_holds_everything_to_resume(tiny_run):
    files = checkpoint.list_checkpoints(tiny_run / "checkpoints")
    assert 1 <= len(files) <= 3  # keep_checkpoints
    path, state = checkpoint.resolve(tiny_run)
    assert path == files[-1]
    assert state["counters"]["frames"] >= 16_000 and state["counters"]["visit_index"] == 3
    assert set(state["task_ids"]["ids"]) == {"Pong", "Breakout"}
    learner = state["learner"]["learner"]
    assert {"online", "target", "optimizer", "ewc", "anchored_tasks", "num_updates"} <= set(learner)
    # ewc_min_frames equals frames_per_visit: each game's first visit alone must anchor it
    assert learner["anchored_tasks"] == [0, 1]
    assert set(state["consolidation"]["terms"]) == {0, 1}
    assert state["epsilon"]["steps"][0] > 0


def test_eval_command_scores_every_game(tiny_run, tmp_path):
    out = tmp_path / "eval.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), "eval", "--checkpoint", str(tiny_run), "--episodes", "1",
         "--max-episode-frames", "400", "--json", str(out), "--quiet"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # --quiet: no progress
    result = json.loads(out.read_text())
    assert set(result["games"]) == {"Pong", "Breakout"}
    for game in result["games"].values():
        assert len(game["scores"]) == 1 and game["normalized"] is not None
    expected = sum(min(g["normalized"], 1.0) for g in result["games"].values())
    assert result["capped_sum"] == pytest.approx(expected)
    table = table_rows(proc.stdout)  # the table is printed with --json too
    for game, entry in result["games"].items():
        assert table[game] == [f"{entry['score']:.1f}", "1", f"{entry['normalized']:.3f}"]
    assert f"capped normalised sum: {result['capped_sum']:.3f}" in proc.stdout


def table_rows(stdout: str) -> dict[str, list[str]]:
    """`run.py eval`'s table: game -> [score (mean), episodes, normalised]."""
    lines = stdout.splitlines()
    assert lines[0].split() == ["game", "score", "(mean)", "episodes", "normalised"], stdout
    return {line.split()[0]: line.split()[1:] for line in lines[2:] if not line.startswith("capped")}


def test_eval_command_without_json_prints_a_table(tiny_run, tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), "eval", "--checkpoint", str(tiny_run), "--episodes", "2",
         "--max-episode-frames", "400", "--games", "Breakout"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    rows = table_rows(proc.stdout)
    assert list(rows) == ["Breakout"] and rows["Breakout"][1] == "2"
    assert float(rows["Breakout"][0]) >= 0 and float(rows["Breakout"][2]) > -1
    assert "Breakout: score" in proc.stderr  # progress, unless --quiet
    assert not any(tmp_path.iterdir())  # nothing written without --json


def test_eval_command_rejects_unknown_games_and_bad_checkpoints(tiny_run, tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, str(ROOT / "run.py"), "eval", *args, "--json", str(tmp_path / "o.json")],
                              capture_output=True, text=True, timeout=300)

    proc = run("--checkpoint", str(tiny_run), "--games", "Tennis")
    assert proc.returncode == 2 and "no task for ['Tennis']" in proc.stderr
    proc = run("--checkpoint", str(tiny_run), "--games", "Pongg")
    assert proc.returncode == 2 and "close matches: Pong" in proc.stderr
    broken = tmp_path / "ckpt_000000000001.pt"
    broken.write_bytes(checkpoint.list_checkpoints(tiny_run / "checkpoints")[-1].read_bytes()[:1000])
    proc = run("--checkpoint", str(broken))
    assert proc.returncode == 2 and "corrupt or truncated" in proc.stderr and "Traceback" not in proc.stderr


def test_forget_me_not_run_infers_the_games_and_reuses_their_ids(train, tmp_path):
    proc = train(tmp_path, [
        "run_name=fmn", "task_inference=fmn", "schedule.frames_per_visit=3000", "agent.learning_starts=200",
        "agent.fisher_minibatches=2", "eval.every_frames=0", "eval.at_visit_end=false", "logging.log_every_s=1",
    ])
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = tmp_path / "fmn"
    confusion = json.loads((run_dir / "fmn_confusion.json").read_text())["frames"]
    pong, breakout = confusion["Pong"], confusion["Breakout"]
    pong_id, breakout_id = max(pong, key=pong.get), max(breakout, key=breakout.get)
    assert pong_id != breakout_id  # two games, two tasks
    # nearly every frame of each game got its game's id, over both visits (a return reuses the id)
    assert pong[pong_id] >= 0.95 * sum(pong.values()) and breakout[breakout_id] >= 0.95 * sum(breakout.values())
    # every switch was detected, none told: the learner refuses a task label when it infers tasks, so a run
    # that gets here had none reach it (nor the consolidation actor, which only hears of inferred ids)
    assert proc.stderr.count("forget-me-not: task") >= 3
    agreement = json.loads((run_dir / "fmn_confusion.json").read_text())["adjusted_rand_index"]
    table = np.array([[row.get(t, 0) for t in sorted({*pong, *breakout})] for row in (pong, breakout)])
    assert agreement == pytest.approx(adjusted_rand_index_of(table)) and agreement > 0.8
    assert f"adjusted Rand index of the inferred ids against the games played: {agreement:.3f}" in proc.stderr
    records = read_jsonl(run_dir / "metrics.jsonl")
    assert {r["task"] for r in records if r["game"] == "Breakout" and r["frames"] > 4000} >= {int(breakout_id)}

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    assert {"fmn/inferred_task", "fmn/true_game"} <= set(events.Tags()["scalars"])
    assert "fmn/confusion/text_summary" in events.Tags()["tensors"]


def test_each_visit_plays_its_frames_and_each_task_gets_every_update_it_is_owed(tiny_run):
    summary = json.loads((tiny_run / "summary.json").read_text())
    _, state = checkpoint.resolve(tiny_run)
    progress = state["counters"]
    # visits are measured from their real start, so none ends short of frames_per_visit
    assert {int(t): n for t, n in summary["frames_per_task"].items()} == progress["frames_per_task"]
    assert all(frames >= 2 * 4000 for frames in progress["frames_per_task"].values())
    visit_ends = [r["frames"] for r in read_jsonl(tiny_run / "eval.jsonl") if r["kind"] == "visit_end"]
    assert all(later - earlier >= 4000 for earlier, later in zip([0, *visit_ends], visit_ends))
    # one update per update_period trainable steps, trained on the task the steps came from (the
    # remainder of a visit, under update_period steps, carries over to the next)
    updates = {int(t): n for t, n in summary["updates_per_task"].items()}
    assert set(updates) == {0, 1} and sum(updates.values()) == summary["updates"]
    for task, steps in progress["trainable_steps_per_task"].items():
        assert abs(updates[task] - steps / 4) <= 2


# Written out, not globbed: a config added to configs/ must be added here too, or the test below fails.
SHIPPED_CONFIGS = ["atari_laptop", "atari_laptop_no_ewc", "minatar", "minatar_fmn", "minatar_no_ewc", "minatar_quick",
                   "minatar_rehearsal", "minatar_reset", "no_ewc", "paper", "paper_fmn", "smoke"]


def shipped_config_at_small_sizes(name: str) -> list[str]:
    """--set overrides that keep a shipped config's ratios (learning_starts : replay_capacity,
    ewc_min_frames : frames_per_visit) but make it a short run over two of its games: each visit
    fills its buffer past learning_starts and then trains for 100 agent steps."""
    data = load_yaml(ROOT / "configs" / f"{name}.yaml")  # with what it extends
    agent = data["agent"]
    learning_starts = agent["learning_starts"] // 100
    visit = (learning_starts + 100) * data["env"]["frame_skip"]
    overrides = [
        f"run_name={name}", f"games=[{', '.join(data['games'][:2])}]", "schedule.repeats=1", "schedule.order=fixed",
        f"schedule.frames_per_visit={visit}",
        f"agent.replay_capacity={agent['replay_capacity'] // 100}",
        f"agent.learning_starts={learning_starts}",
        f"agent.ewc_min_frames={agent['ewc_min_frames'] * visit // data['schedule']['frames_per_visit']}",
        "agent.fisher_minibatches=2", "actors.learner_compile=false", "actors.learner_threads=1",
        "actors.chunk_steps=50", "eval.every_frames=0", "eval.at_visit_end=false", "logging.checkpoint_every_s=600",
    ]
    if not data["games"][0].startswith("MinAtar/"):  # an Atari network, made small
        channels = [8, 16, 16][:len(agent["network"]["channels"])]
        overrides += [f"agent.network.channels={channels}", "agent.network.hidden=32"]
    return overrides


def test_every_shipped_config_is_tested_here():
    on_disk = {path.stem for path in (ROOT / "configs").glob("*.yaml")}
    assert on_disk == set(SHIPPED_CONFIGS), (
        f"configs/ and SHIPPED_CONFIGS differ: not listed {sorted(on_disk - set(SHIPPED_CONFIGS))}, "
        f"listed but missing {sorted(set(SHIPPED_CONFIGS) - on_disk)}")


@pytest.mark.parametrize("name", SHIPPED_CONFIGS)
def test_every_shipped_config_starts_learning(name, local_ray, tmp_path):
    from training.loop import Trainer
    from training.strategies import make_strategy

    config = load_config(ROOT / "configs" / f"{name}.yaml", shipped_config_at_small_sizes(name))
    summary = Trainer(config, tmp_path / name, quiet=True).run()
    assert summary["updates"] > 0 and summary["completed"] and summary["strategy"] == make_strategy(config).name
    assert all(n > 0 for n in summary["updates_per_task"].values())

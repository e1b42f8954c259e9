"""The plain classes behind the learner and consolidation actors, without Ray."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from agents.dqn.actor import EnvRunner
from agents.dqn.consolidation import Consolidation
from agents.dqn.networks import shared_parameter_names
from common.errors import UsageError
from tests.conftest import ROOT
from training.config import load_config
from training.replay_files import ReplayFiles
from training.services import AddResult, LearnerService


@pytest.fixture(scope="module")
def config():
    return load_config(
        ROOT / "configs" / "smoke.yaml",
        ["agent.learning_starts=50", "agent.fisher_minibatches=2", "agent.replay_capacity=2000",
         "agent.network.channels=[4, 8, 8]", "agent.network.hidden=16"],
    )


def test_task_switch_fisher_anchors_reach_the_learner(config):
    learner = LearnerService(config)
    consolidation = Consolidation(config.agent, seed=config.seed)
    runner = EnvRunner(0, 1, config.agent.network, config.env, seed=1)
    runner.set_game("Pong", 0)
    for _ in range(2):
        added = learner.add(0, runner.collect(60, epsilon=1.0).chunks)
    assert added == AddResult(task=0, replay_size=120, transitions=60, ready=True)
    metrics = learner.train(0, 3)
    assert metrics.updates == 3 and metrics.ewc_penalty == 0.0

    # switch Pong -> Breakout: the finished task's Fisher, anchored at the learner's weights
    played = {0: 480}
    anchors = consolidation.consolidate(learner.consolidation_inputs(0), current_task=1, frames_per_task=played)
    assert anchors.tasks == [0] and anchors.fisher_task == 0 and anchors.fisher_mean > 0
    assert set(anchors.penalty["precision"]) == set(shared_parameter_names(learner.learner.online))
    weights = learner.weights()
    for name, mean in anchors.penalty["mean"].items():
        torch.testing.assert_close(mean, weights[name])
    learner.set_anchors(anchors)
    assert learner.learner.anchored_tasks == {0} and learner.learner.ewc_active()

    runner.set_game("Breakout", 1)
    learner.add(1, runner.collect(80, epsilon=1.0).chunks)
    with torch.no_grad():  # move the shared weights off their anchors: the penalty must now count
        learner.learner.online.fc.weight.add_(0.05)
    metrics = learner.train(1, 2)
    assert metrics.ewc_penalty > 0

    # back to Pong: its own anchor is left out while it trains, Breakout's is in
    played[1] = 320
    anchors = consolidation.consolidate(learner.consolidation_inputs(1), current_task=0, frames_per_task=played)
    assert anchors.tasks == [1]
    # the end of the schedule (no current task): both
    anchors = consolidation.consolidate(learner.consolidation_inputs(0), current_task=-1, frames_per_task=played)
    assert anchors.tasks == [0, 1]


def test_penalty_waits_for_the_frames_threshold(config):
    strict = dataclasses.replace(config, agent=dataclasses.replace(config.agent, ewc_min_frames=1000))
    learner, consolidation = LearnerService(strict), Consolidation(strict.agent, seed=strict.seed)
    runner = EnvRunner(0, 1, strict.agent.network, strict.env, seed=2)
    runner.set_game("Pong", 0)
    learner.add(0, runner.collect(70, epsilon=1.0).chunks)
    anchors = consolidation.consolidate(learner.consolidation_inputs(0), current_task=1, frames_per_task={0: 999})
    assert anchors.tasks == []  # played fewer frames than ewc_min_frames
    learner.set_anchors(anchors)
    assert not learner.learner.ewc_active()
    # The frames the driver counted decide, not the transitions stored (episode starts are not transitions).
    anchors = consolidation.consolidate(learner.consolidation_inputs(0), current_task=1, frames_per_task={0: 1000})
    assert anchors.tasks == [0]
    learner.set_anchors(anchors)
    assert learner.learner.ewc_active()


def test_learner_refuses_to_train_a_task_before_its_buffer_is_ready(config):
    learner = LearnerService(config)  # learning_starts 50
    runner = EnvRunner(0, 1, config.agent.network, config.env, seed=5)
    runner.set_game("Pong", 0)
    added = learner.add(0, runner.collect(40, epsilon=1.0).chunks)
    assert added.transitions == 40 and not added.ready
    with pytest.raises(UsageError, match="task 0, whose buffer holds 40 transitions"):
        learner.train(0, 1)
    with pytest.raises(UsageError, match="task 1, whose buffer holds 0"):
        learner.train(1, 1)
    assert learner.add(0, runner.collect(10, epsilon=1.0).chunks).ready
    assert learner.train(0, 2).updates == 2 and learner.updates_per_task() == {0: 2}


def test_learner_state_round_trip_with_replay_through_its_files(config, tmp_path):
    learner = LearnerService(config)
    runner = EnvRunner(0, 1, config.agent.network, config.env, seed=4)
    runner.set_game("Pong", 0)
    learner.add(0, runner.collect(60, epsilon=1.0).chunks)
    learner.train(0, 2)
    files = ReplayFiles(tmp_path, capacity=config.agent.replay_capacity, chunk_slots=25)
    state = {**learner.state_dict(), "replay": files.read(files.write(learner.replay_export({}, 25), frames=60))}
    restored = LearnerService(config)
    restored.load_state_dict(state)
    assert restored.replay_sizes() == learner.replay_sizes() == {0: 60}
    got, want = restored.replay.sample(0, 16), learner.replay.sample(0, 16)
    for field in dataclasses.fields(got):
        np.testing.assert_array_equal(getattr(got, field.name), getattr(want, field.name))  # the same slots and the same sampling stream
    assert restored.learner.num_updates == 2
    for name, value in learner.weights().items():
        torch.testing.assert_close(restored.weights()[name], value)


def test_mean_normalised_fishers_protect_every_task_alike(config):
    normalised = dataclasses.replace(config, agent=dataclasses.replace(config.agent, fisher_normalization="mean"))
    learner, consolidation = LearnerService(normalised), Consolidation(normalised.agent, seed=normalised.seed)
    runner = EnvRunner(0, 1, normalised.agent.network, normalised.env, seed=6)
    runner.set_game("Pong", 0)
    learner.add(0, runner.collect(80, epsilon=1.0).chunks)
    anchors = consolidation.consolidate(learner.consolidation_inputs(0), current_task=1, frames_per_task={0: 10**6})
    precision = anchors.penalty["precision"]
    total = sum(float(p.sum()) for p in precision.values())
    count = sum(p.numel() for p in precision.values())
    assert total / count == pytest.approx(1.0, rel=1e-5)  # the task's Fisher, scaled to mean 1
    assert anchors.fisher_mean != pytest.approx(1.0)  # the log keeps the Fisher's own scale


def test_reset_gives_fresh_weights_and_optimizer_but_keeps_counters_and_replay(config):
    learner = LearnerService(config)
    runner = EnvRunner(0, 1, config.agent.network, config.env, seed=1)
    runner.set_game("Pong", 0)
    learner.add(0, runner.collect(60, epsilon=1.0).chunks)
    learner.train(0, 3)
    trained = learner.weights()
    learner.reset_weights(seed=7)
    fresh = learner.weights()
    assert all(not torch.equal(trained[name], fresh[name]) for name in trained if name.endswith("weight"))
    assert not learner.learner.optimizer.state  # no RMSProp statistics carried over
    assert learner.learner.num_updates == 3 and learner.replay_sizes() == {0: 60}
    assert all(torch.equal(t, o) for t, o in zip(learner.learner.target.state_dict().values(), fresh.values()))
    learner.reset_weights(seed=8)  # another reset, another network
    first = next(name for name in fresh if name.endswith("weight"))
    assert not torch.equal(learner.weights()[first], fresh[first])


def test_an_explicit_strategy_must_agree_with_ewc_enabled():
    with pytest.raises(UsageError, match="strategy 'reset' with agent.ewc_enabled: true"):
        load_config(ROOT / "configs" / "minatar.yaml", ["strategy=reset"])
    assert load_config(ROOT / "configs" / "minatar.yaml", ["strategy=reset", "agent.ewc_enabled=false"]).strategy == "reset"


def test_rehearsal_mixes_the_earlier_tasks_into_each_minibatch_with_their_own_task_ids(config):
    rehearsing = dataclasses.replace(config, agent=dataclasses.replace(config.agent, rehearsal_share=0.25))
    learner = LearnerService(rehearsing)
    runner = EnvRunner(0, 1, config.agent.network, config.env, seed=1)
    runner.set_game("Pong", 0)
    learner.add(0, runner.collect(60, epsilon=1.0).chunks)
    batch, tasks = learner.minibatch(0)
    assert tasks == 0 and len(batch) == config.agent.batch_size  # no earlier task yet: the task's own batch
    runner.set_game("Breakout", 1)
    learner.add(1, runner.collect(60, epsilon=1.0).chunks)
    batch, tasks = learner.minibatch(1)
    assert len(batch) == config.agent.batch_size and tasks.tolist() == [1] * 24 + [0] * 8  # 0.25 of 32 from task 0
    result = learner.train(1, 2)  # trains with one task id per sample
    assert result.updates == 2 and learner.updates_per_task() == {1: 2}
    cloning = LearnerService(dataclasses.replace(rehearsing, agent=dataclasses.replace(rehearsing.agent, rehearsal_bc=1.0)))
    cloning.replay, cloned = learner.replay, []
    cloning.learner.update = lambda batch, tasks, **options: cloned.append(options["cloned"]) or {"updates": 1}
    cloning.train(1, 1)  # behaviour cloning on exactly the rehearsed samples
    assert cloned[0].tolist() == [False] * 24 + [True] * 8
    with pytest.raises(UsageError, match="rehearsal_share"):
        dataclasses.replace(config.agent, rehearsal_share=1.0)


def test_a_learner_that_infers_tasks_is_told_none_and_says_what_it_inferred(config):
    fmn_config = dataclasses.replace(config, task_inference="fmn")
    learner, runner = LearnerService(fmn_config), EnvRunner(0, 1, config.agent.network, config.env, seed=1)
    runner.set_game("Pong", 0)
    chunks = runner.collect(64, epsilon=1.0).chunks
    with pytest.raises(ValueError, match="forget-me-not infers every task"):
        learner.add(0, chunks)  # a schedule label must never reach it
    added = learner.add(None, chunks)
    assert added.task == 0 and added.transitions == 64
    assert added.inferred_frames == {0: sum(len(chunk.frames) for _, chunk in chunks)}  # every frame observed
    with pytest.raises(ValueError, match="a schedule-labelled run gives every one"):
        LearnerService(config).add(None, chunks)
    assert LearnerService(config).add(0, chunks).inferred_frames == {}


def test_forget_me_not_ids_keep_the_confusion_counts_on_the_driver(tmp_path):
    from training.task_ids import make_task_ids

    ids = make_task_ids("fmn", ["Pong", "Breakout"], max_tasks=4)
    ids.note_added("Pong", 0, 100, {0: 90, 1: 10})
    ids.note_added("Breakout", 1, 100, {1: 100})
    restored = make_task_ids("fmn", ["Pong", "Breakout"], max_tasks=4)
    restored.load_state_dict(ids.state_dict())
    texts, lines = [], []
    restored.finish(tmp_path, lambda tag, text: texts.append(text), lines.append)
    saved = json.loads((tmp_path / "fmn_confusion.json").read_text())
    assert saved["frames"] == {"Pong": {"0": 90, "1": 10}, "Breakout": {"1": 100}}
    assert 0 < saved["adjusted_rand_index"] < 1 and restored.eval_task("Pong") == 0
    assert "adjusted Rand index" in texts[0] and "| Pong | 90 | 10 |" in lines[0]
    old_state = {"votes": ids.state_dict()["votes"]}  # a checkpoint from before the driver kept the counts
    restored.load_state_dict(old_state)
    assert restored.confusion == {}

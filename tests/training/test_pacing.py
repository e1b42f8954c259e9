"""The replay ratio and the run's bookkeeping, without Ray: `training.pacing` and `training.progress`."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from agents.dqn.actor import CollectResult
from tests.conftest import ROOT
from training.config import load_config
from training.pacing import Pacing
from training.progress import RunProgress
from training.services import AddResult, TrainResult


def test_updates_are_owed_one_per_update_period_trainable_steps():
    pacing = Pacing.for_run(update_period=4, steps_per_collect=100, num_env_actors=2)
    assert pacing.max_lead == 400
    pacing.collect_started(100)
    pacing.collect_stored(100, task=0, transitions=100, ready=False)  # filling: nothing owed
    assert pacing.owed_updates() == 0 and pacing.steps_in_flight == 0
    pacing.collect_started(100)
    pacing.collect_stored(100, task=0, transitions=100, ready=True)
    assert pacing.owed_updates() == 25
    assert pacing.next_slice(16) == 16 and pacing.next_slice(16) == 9 and pacing.next_slice(16) == 0
    assert pacing.trained(10) == 10 and pacing.trained(25) == 15
    assert pacing.trainable_steps_per_task == {0: 100}


def test_actors_are_held_back_once_their_lead_reaches_the_bound_but_never_while_the_buffer_fills():
    pacing = Pacing.for_run(update_period=1, steps_per_collect=50, num_env_actors=1)  # max lead 100
    pacing.collect_stored(0, task=0, transitions=60, ready=True)  # 60 stored, none trained
    assert pacing.may_collect(replay_ready=True)
    pacing.collect_started(50)  # in flight counts too: 110 ahead
    assert not pacing.may_collect(replay_ready=True) and pacing.may_collect(replay_ready=False)
    pacing.trained(20)
    assert pacing.lead() == 90 and pacing.may_collect(replay_ready=True)
    pacing.collect_lost(50)  # an actor died with its chunk
    assert pacing.lead() == 40


def test_a_resumed_pacing_continues_from_the_learners_updates_and_keeps_its_per_task_counts():
    pacing = Pacing.for_run(update_period=4, steps_per_collect=10, num_env_actors=1)
    pacing.collect_stored(0, task=1, transitions=400, ready=True)
    pacing.next_slice(100)
    state = pacing.state_dict()
    assert "steps_in_flight" not in state and "max_lead" not in state
    resumed = Pacing.for_run(update_period=4, steps_per_collect=10, num_env_actors=1)
    resumed.load_state_dict(state)
    resumed.resume_at(60)  # the checkpoint's learner had taken 60
    assert resumed.updates_done == resumed.updates_submitted == 60 and resumed.owed_updates() == 0
    assert resumed.trainable_steps_per_task == {1: 400}


@pytest.fixture
def progress():
    config = load_config(ROOT / "configs" / "smoke.yaml",
                         ["schedule.frames_per_visit=800", "schedule.repeats=2", "agent.update_period=4"])
    return RunProgress(config)


def test_progress_counts_frames_per_task_and_moves_through_the_schedule(progress):
    frame_skip = progress.config.env.frame_skip
    assert progress.next_visit() is progress.visit
    progress.collected(CollectResult(game="Pong", task=0, steps=200, fresh_actor=False, chunks=[], episode_returns=[1.0]), actor_index=1)
    assert progress.counters.frames == 200 * frame_skip and progress.counters.steps_per_actor == {1: 200}
    progress.stored(AddResult(task=0, replay_size=200, transitions=200, ready=True), steps=200)
    assert progress.counters.frames_per_task == {0: 200 * frame_skip} and progress.replay_ready
    assert progress.pacing.owed_updates() == 50
    following = progress.next_visit()  # 800 frames played: the visit is over
    assert following is not None and following.index == 1
    progress.begin_visit(following)
    progress.train_task(1)
    assert progress.task == 1 and progress.replay_size == 0 and not progress.replay_ready
    progress.trained(TrainResult(updates=16, means={"loss": 0.5}))
    assert progress.interval.updates == 16 and progress.interval.train["loss"] == [0.5]


def test_progress_round_trips_through_a_checkpoint(progress):
    progress.collected(CollectResult(game="Pong", task=0, steps=300, fresh_actor=False, chunks=[]), actor_index=0)
    progress.stored(AddResult(task=0, replay_size=300, transitions=300, ready=True), steps=300)
    progress.begin_visit(progress.schedule.visits[1])
    progress.train_task(1)
    state = progress.state_dict()
    assert state["counters"]["trainable_steps_per_task"] == {0: 300}  # pacing's counts are in the counters
    resumed = RunProgress(progress.config)
    resumed.load_state_dict(state, learner_updates=70)
    assert resumed.counters.frames == progress.counters.frames and resumed.counters.resumes == 1
    assert resumed.visit.index == 1 and resumed.task == 1 and resumed.pacing.updates_done == 70


def test_owed_updates_go_to_the_finished_task_before_a_switch_forget_me_not_reports():
    from training.feeding import MAX_TRAIN_CALLS_IN_FLIGHT, UPDATES_PER_SLICE, Feeder

    calls = []
    learner = SimpleNamespace(train=SimpleNamespace(remote=lambda task, n: calls.append((task, n)) or object()))
    pacing = Pacing(update_period=1, max_lead=1000)
    progress = SimpleNamespace(pacing=pacing, task=0)
    feeder = Feeder(SimpleNamespace(env=[], learner=learner), progress, writer=None,
                    on_collect=None, on_add=None, on_train=None)
    pacing.collect_started(100)
    pacing.collect_stored(100, task=0, transitions=100, ready=True)
    feeder.launch(collect=False)  # a few slices in flight; the rest stays owed
    assert calls == [(0, UPDATES_PER_SLICE)] * MAX_TRAIN_CALLS_IN_FLIGHT and pacing.owed_updates() > 0
    feeder.send_owed_updates()  # the frames say the game changed: task 0 gets everything its steps earned
    assert sum(n for _, n in calls) == 100 and {task for task, _ in calls} == {0} and pacing.owed_updates() == 0
    progress.task = 1  # a fresh task: nothing is asked of its buffer until its own steps earn updates
    feeder.launch(collect=False)
    assert {task for task, _ in calls} == {0}

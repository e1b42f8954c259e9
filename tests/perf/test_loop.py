"""The single-process loop: the env runner's chunks into the replay, one update per `update_period` steps once ready."""
from __future__ import annotations

from perf.loop import SingleProcessLoop
from training.config import config_from_dict, config_to_dict


def test_the_loop_acts_with_its_learners_network_and_updates_once_the_replay_is_ready():
    from perf.minatar import minatar_run_config

    data = config_to_dict(minatar_run_config(learning_starts=40))
    data["agent"].update(update_period=2, batch_size=8, replay_capacity=1000)
    data["agent"]["network"].update(hidden=16)
    loop = SingleProcessLoop(config_from_dict(data), seed=0)
    assert loop.runner.net is loop.learner.online
    result = loop.run(steps=100)
    assert result.steps == loop.steps == 100 and loop.replay.num_writes >= 100
    assert result.updates == loop.learner.num_updates == 100 // 2 - 40 // 2 + 1  # from the step that filled 40
    assert loop.epsilon.steps(0) == 100
    result = loop.run(steps=10, eval_every=4, eval_episodes=1, threshold=float("-inf"))
    assert len(result.evaluations) == 1 and result.reached_s is not None and result.steps == 4

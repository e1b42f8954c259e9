"""The agent's actor (EnvRunner): single frames shipped in chunks, games switched, greedy actions, life-loss terminals."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from agents.dqn.actor import EnvRunner
from tests.conftest import ROOT
from training.config import load_config


@pytest.fixture(scope="module")
def config():
    return load_config(ROOT / "configs" / "smoke.yaml", ["agent.network.channels=[4, 8, 8]", "agent.network.hidden=16"])


def test_env_runner_ships_single_frames_and_switches_games(config):
    runner = EnvRunner(0, 2, config.agent.network, config.env, seed=3)
    runner.set_game("Pong", 0)
    result = runner.collect(30, epsilon=1.0)
    assert result.steps == 60 and result.game == "Pong" and result.task == 0
    assert len(result.chunks) == 2
    for (source, chunk) in result.chunks:
        assert source[0] == 0 and chunk.frames.dtype == np.uint8 and chunk.frames.shape[1:] == (84, 84)
        assert chunk.episode_starts[0]  # the first chunk opens the episode
        assert chunk.num_transitions == 30
    sources_before = {s for s, _ in result.chunks}
    runner.set_game("Breakout", 1)
    after = runner.collect(5, epsilon=1.0)
    assert after.game == "Breakout" and after.task == 1
    # a new visit gets new replay sources, so no episode is continued across games
    assert sources_before.isdisjoint({s for s, _ in after.chunks})
    assert all(chunk.episode_starts[0] for _, chunk in after.chunks)


def test_greedy_actions_follow_the_network(config):
    runner = EnvRunner(0, 1, config.agent.network, config.env, seed=0)
    with torch.no_grad():
        runner.net.out_task.bias[0].zero_()
        runner.net.out_task.bias[0, 7] = 100.0  # action 7 dominates for task 0
    states = np.zeros((5, 4, 84, 84), dtype=np.uint8)
    runner.net.set_task(0)
    assert (runner.act(states, epsilon=0.0) == 7).all()
    runner.net.set_task(1)
    assert not (runner.act(states, epsilon=0.0) == 7).all()


def test_a_runner_given_a_network_acts_with_that_network_itself(config):
    from agents.dqn.networks import QNetwork

    net = QNetwork(config.agent.network)
    runner = EnvRunner(0, 1, config.agent.network, config.env, seed=0, net=net)
    assert runner.net is net and runner.has_weights  # nothing to wait for: a learner updates it in place
    with torch.no_grad():
        net.out_task.bias[0, 3] = 100.0
    assert (runner.act(np.zeros((2, 4, 84, 84), dtype=np.uint8), epsilon=0.0) == 3).all()


@pytest.mark.parametrize("terminal_on_life_loss", [True, False])
def test_a_lost_life_is_a_training_terminal_only_when_configured(config, terminal_on_life_loss):
    settings = dataclasses.replace(config.env, terminal_on_life_loss=terminal_on_life_loss)
    runner = EnvRunner(0, 1, config.agent.network, settings, seed=0)
    runner.set_game("Breakout", 0)
    chunk = runner.collect(400, epsilon=1.0).chunks[0][1]  # a random policy loses several of its 5 lives
    transitions = ~chunk.episode_starts
    life_terminals = chunk.terminals & ~chunk.episode_ends & transitions
    assert life_terminals.any() == terminal_on_life_loss


@pytest.mark.parametrize("parallel", [None, 2, 1])
def test_evaluation_plays_exactly_its_episodes_to_the_end_in_one_batch(parallel, monkeypatch):
    config = load_config(ROOT / "configs" / "minatar.yaml")
    runner = EnvRunner(0, 1, config.agent.network, config.env, seed=1)
    runner.set_game("MinAtar/Breakout", 0)
    played = {"resets": 0, "ends": 0, "steps": 0, "forward_passes": 0}
    import agents.dqn.actor as actor_module

    make_env = actor_module.make_env

    def counted_env(*args, **kwargs):
        env = make_env(*args, **kwargs)
        reset, step = env.reset, env.step

        def counting_reset(*a, **k):
            played["resets"] += 1
            return reset(*a, **k)

        def counting_step(action):
            result = step(action)
            played["steps"] += 1
            played["ends"] += bool(result[2] or result[3])
            return result

        env.reset, env.step = counting_reset, counting_step
        return env

    monkeypatch.setattr(actor_module, "make_env", counted_env)
    forward = runner.net.forward

    def counting_forward(*args, **kwargs):
        played["forward_passes"] += 1
        return forward(*args, **kwargs)

    monkeypatch.setattr(runner.net, "forward", counting_forward)
    scores = runner.evaluate("MinAtar/SpaceInvaders", 1, episodes=5, epsilon=1.0, max_episode_frames=300,
                             parallel=parallel)
    assert len(scores) == 5 and played["resets"] == 5 and played["ends"] == 5  # every episode started once, ended once
    if parallel != 1:  # one forward pass per step for all the episodes in play
        assert played["forward_passes"] < played["steps"]
    else:
        assert played["forward_passes"] == played["steps"]
    assert runner.net.task == 0 and runner.game == "MinAtar/Breakout"  # the training game and task are untouched

"""Double DQN learner: targets by hand, learning, target sync, NaN guard, EWC gating, checkpoints; epsilon."""
from __future__ import annotations

import copy
import io
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from agents.dqn.config import DQNConfig
from agents.dqn.fisher import fisher_batch, q_network_fisher
from agents.dqn.learning import Learner
from agents.dqn.losses import (
    TensorBatch,
    behaviour_cloning_loss,
    double_dqn_loss,
    double_dqn_targets,
    to_tensors,
)
from agents.dqn.networks import (
    NetworkConfig,
    QNetwork,
    shared_parameter_names,
    task_parameter_names,
)
from agents.epsilon import EpsilonConfig, TaskEpsilon
from agents.optimizer import RMSProp
from agents.replay import Batch, FrameReplay
from common.errors import UsageError
from ewc import EWCPenalty

SMALL_NET = NetworkConfig(channels=(4, 8, 8), hidden=16, max_tasks=3, num_actions=5)
SMALL = DQNConfig(network=SMALL_NET, learning_rate=1e-3, target_update_period=1_000)


def random_batch(size: int = 16, seed: int = 0, num_actions: int = SMALL_NET.num_actions) -> Batch:
    rng = np.random.default_rng(seed)
    frames = (size, 4, 84, 84)
    return Batch(
        states=rng.integers(0, 256, frames, dtype=np.uint8),
        actions=rng.integers(0, num_actions, size),
        rewards=rng.choice([-1.0, 0.0, 1.0], size).astype(np.float32),
        terminals=(rng.random(size) < 0.25).astype(np.float32),
        discounts=np.full(size, SMALL.gamma, dtype=np.float32),
        next_states=rng.integers(0, 256, frames, dtype=np.uint8),
    )


def anchor(learner: Learner, task: int, fisher: dict[str, torch.Tensor]) -> None:
    """Anchor the learner's current shared weights with `fisher`, as a consolidation actor's state would."""
    penalty = EWCPenalty(learner.config.ewc_lambda, include=learner.shared_names)
    penalty.consolidate(learner.online, fisher)
    learner.set_anchors(penalty.state_dict(), [task])


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {n: t.detach().clone() for n, t in module.state_dict().items()}


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)


class TableQ(nn.Module):
    """Q-values looked up by the state's first pixel: a network whose outputs we choose by hand."""

    def __init__(self, table: list[list[float]]):
        super().__init__()
        self.table = torch.tensor(table)

    def forward(self, states: torch.Tensor, task: int | None = None) -> torch.Tensor:
        return self.table[states[:, 0, 0, 0].long()]


def test_double_dqn_target_by_hand():
    # Two next states (pixel ids 0 and 1), three actions.
    online = TableQ([[1.0, 5.0, 2.0], [3.0, 0.0, 1.0]])  # picks action 1 for s'0, action 0 for s'1
    target = TableQ([[10.0, 20.0, 30.0], [40.0, 50.0, 60.0]])  # values them: 20 and 40 (max would be 30, 60)
    next_states = torch.zeros(2, 4, 84, 84, dtype=torch.uint8)
    next_states[1, 0, 0, 0] = 1
    rewards, terminals, discounts = torch.tensor([1.0, 0.5]), torch.tensor([0.0, 1.0]), torch.tensor([0.9, 0.9])
    y = double_dqn_targets(online, target, rewards, terminals, discounts, next_states, task=0)
    torch.testing.assert_close(y, torch.tensor([1.0 + 0.9 * 20.0, 0.5]))  # the terminal cuts bootstrapping
    # Each sample's own discount (an n-step return's gamma^n') multiplies its bootstrapped value.
    y = double_dqn_targets(online, target, rewards, torch.zeros(2), torch.tensor([0.9**3, 0.9]), next_states, task=0)
    torch.testing.assert_close(y, torch.tensor([1.0 + 0.9**3 * 20.0, 0.5 + 0.9 * 40.0]))

    # Loss: Q(s, a) from the online table at states 1 and 0 with actions 2 and 1 -> 1.0 and 5.0.
    states = torch.zeros_like(next_states)
    states[0, 0, 0, 0] = 1
    batch = TensorBatch(states, torch.tensor([2, 1]), rewards, terminals, discounts, next_states)
    td = double_dqn_loss(online, target, batch, task=0)
    torch.testing.assert_close(td.q_taken, torch.tensor([1.0, 5.0]))
    torch.testing.assert_close(td.td_errors, torch.tensor([19.0 - 1.0, 0.5 - 5.0]))
    torch.testing.assert_close(td.loss, torch.tensor(((18.0 - 0.5) + (4.5 - 0.5)) / 2))  # Huber, delta 1


def test_one_step_targets_equal_the_scalar_gamma_formula_bit_for_bit():
    """With agent.n_step 1 every discount is gamma: the targets are those of y = r + gamma (1 - terminal) Q'."""
    torch.manual_seed(0)
    online, target = QNetwork(SMALL_NET), QNetwork(SMALL_NET)
    batch = to_tensors(random_batch(16), "cpu")
    with torch.no_grad():
        next_values = target(batch.next_states, 1).gather(1, online(batch.next_states, 1).argmax(1, keepdim=True))
        expected = batch.rewards + SMALL.gamma * (1.0 - batch.terminals) * next_values.squeeze(1)
    targets = double_dqn_targets(online, target, batch.rewards, batch.terminals, batch.discounts, batch.next_states, 1)
    assert torch.equal(targets, expected)


def test_the_learner_bootstraps_with_each_samples_discount():
    learner = Learner(SMALL, seed=0)
    batch = random_batch(8)
    no_bootstrap = replace(batch, discounts=np.zeros(8, np.float32))  # e.g. gamma 0: targets are the returns
    td = double_dqn_loss(learner.online, learner.target, to_tensors(no_bootstrap, "cpu"), 1)
    torch.testing.assert_close(td.targets, torch.from_numpy(batch.rewards))
    assert learner.update(no_bootstrap, task=1)["loss"] == pytest.approx(td.loss.item(), rel=1e-6)


def test_an_update_lowers_the_loss_on_a_fixed_batch():
    learner = Learner(SMALL, seed=0)
    batch = random_batch()
    tensors = to_tensors(batch, "cpu")

    def loss() -> float:
        with torch.no_grad():
            return double_dqn_loss(learner.online, learner.target, tensors, 1).loss.item()

    losses = [loss()]
    for _ in range(10):
        metrics = learner.update(batch, task=1)
        assert metrics["skipped_nonfinite"] == 0 and metrics["ewc_penalty"] == 0.0
        assert metrics["loss"] == pytest.approx(losses[-1], rel=1e-6)  # double_dqn_loss before the step
        losses.append(loss())
    assert all(b < a for a, b in zip(losses, losses[1:])), losses  # every update helps (target held fixed)
    assert losses[-1] < 0.97 * losses[0]
    assert learner.num_updates == 10 and metrics["updates"] == 10
    assert set(metrics) == {
        "loss", "td_error_abs_mean", "ewc_penalty", "q_mean", "grad_norm", "skipped_nonfinite", "weights_nonfinite",
        "updates",
    }


def test_behaviour_cloning_is_the_cross_entropy_of_softmax_q_to_the_stored_action_on_cloned_samples_only():
    q = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [5.0, 5.0, 5.0]])
    actions = torch.tensor([0, 2, 1])
    by_hand = [-(2.0 - np.log(np.exp(2.0) + 2.0)), -(0.0 - np.log(np.e + 2.0)), np.log(3.0)]
    cloned = torch.tensor([True, False, True])
    assert behaviour_cloning_loss(q, actions, cloned).item() == pytest.approx((by_hand[0] + by_hand[2]) / 2)
    assert behaviour_cloning_loss(q, actions, torch.zeros(3, dtype=torch.bool)).item() == 0.0

    batch, tasks = random_batch(), torch.tensor([1] * 8 + [0] * 8)
    rehearsed = tasks != 1
    steps = {}
    for name, config, cloned in (("td", SMALL, None), ("bc_off", SMALL, rehearsed),
                                 ("bc", replace(SMALL, rehearsal_bc=1.0), rehearsed),
                                 ("bc_nothing_cloned", replace(SMALL, rehearsal_bc=1.0), torch.zeros(16, dtype=torch.bool))):
        learner = Learner(config, seed=0)
        learner.update(batch, tasks, cloned=cloned)
        steps[name] = snapshot(learner.online)
    assert same_weights(steps["td"], steps["bc_off"])  # rehearsal_bc 0: cloning costs nothing, changes nothing
    assert same_weights(steps["td"], steps["bc_nothing_cloned"])
    assert not same_weights(steps["td"], steps["bc"])
    # the cloning gradient by hand: the TD loss plus the cross-entropy on the rehearsed half
    learner, manual = Learner(replace(SMALL, rehearsal_bc=1.0), seed=0), Learner(SMALL, seed=0)
    tensors = to_tensors(batch, "cpu")
    learner.td_gradient(tensors, tasks, rehearsed)
    td = double_dqn_loss(manual.online, manual.target, tensors, tasks)
    (td.loss + behaviour_cloning_loss(td.q_values, tensors.actions, rehearsed)).backward()
    for ours, expected in zip(learner.online.parameters(), manual.online.parameters()):
        if expected.grad is not None:
            torch.testing.assert_close(ours.grad, expected.grad)
    with pytest.raises(UsageError, match="rehearsal_bc"):
        replace(SMALL, rehearsal_bc=-0.1)


def test_target_network_syncs_every_period_updates():
    learner = Learner(replace(SMALL, target_update_period=3), seed=0)
    batch = random_batch(8)
    initial = snapshot(learner.target)
    assert same_weights(initial, snapshot(learner.online))
    for update in range(1, 7):
        learner.update(batch, task=0)
        synced = same_weights(snapshot(learner.target), snapshot(learner.online))
        assert synced == (update % 3 == 0), f"after update {update}"
        if update < 3:
            assert same_weights(snapshot(learner.target), initial)


def test_non_finite_loss_or_gradient_skips_the_update_and_keeps_the_weights():
    learner = Learner(SMALL, seed=0)
    learner.update(random_batch(8), task=0)  # populate the optimizer state
    weights, optimizer_state = snapshot(learner.online), learner.optimizer.state_dict()
    square_avg = [s["square_avg"].clone() for s in optimizer_state["state"].values()]

    poisoned = random_batch(8)
    poisoned.rewards[3] = np.nan
    metrics = learner.update(poisoned, task=0)
    assert metrics["skipped_nonfinite"] == 1
    assert same_weights(weights, snapshot(learner.online))

    # A finite loss whose gradient overflows is skipped too.
    handle = learner.online.fc.weight.register_hook(lambda grad: grad * float("inf"))
    metrics = learner.update(random_batch(8, seed=1), task=0)
    handle.remove()
    assert metrics["skipped_nonfinite"] == 1 and np.isfinite(metrics["loss"])
    assert same_weights(weights, snapshot(learner.online))
    after = [s["square_avg"] for s in learner.optimizer.state_dict()["state"].values()]
    assert all(torch.equal(a, b) for a, b in zip(square_avg, after))
    assert learner.num_updates == 1 and learner.num_skipped == 2

    assert learner.update(random_batch(8, seed=2), task=0)["skipped_nonfinite"] == 0  # recovers


def test_ewc_penalty_counts_once_a_task_is_anchored_and_only_on_shared_weights():
    learner = Learner(SMALL, seed=0)
    anchors = {n: p.detach().clone() for n, p in learner.online.named_parameters()}
    fisher = {n: torch.full_like(anchors[n], 0.5) for n in learner.shared_names}
    batch = random_batch(8)
    assert not learner.ewc_active()
    assert learner.update(batch, task=1)["ewc_penalty"] == 0.0
    learner = Learner(SMALL, seed=0)
    anchor(learner, 0, fisher)
    with torch.no_grad():  # move every parameter away from its anchor
        for p in learner.online.parameters():
            p.add_(0.01)
    assert learner.ewc_active()
    baseline = Learner(replace(SMALL, ewc_enabled=False), seed=0)  # the plain-DQN baseline never applies it
    anchor(baseline, 0, fisher)
    assert not baseline.ewc_active()
    expected = 0.5 * SMALL.ewc_lambda * sum(
        (fisher[n] * (p - anchors[n]).square()).sum().item()
        for n, p in learner.online.named_parameters()
        if n in learner.shared_names
    )
    assert learner.update(batch, task=1)["ewc_penalty"] == pytest.approx(expected, rel=1e-4)

    # Only the shared weights are anchored: the penalty has no gradient on gains and biases.
    params = dict(learner.online.named_parameters())
    grads = torch.autograd.grad(learner.ewc.penalty(learner.online), list(params.values()), allow_unused=True)
    for name, grad in zip(params, grads):
        if name in task_parameter_names(learner.online):
            assert grad is None or torch.all(grad == 0), name
        else:
            assert grad is not None and grad.abs().sum() > 0, name

    stray = learner.ewc.state_dict()
    stray["precision"]["out_task.gain"] = torch.ones(3, 5)
    stray["mean"]["out_task.gain"] = torch.ones(3, 5)
    with pytest.raises(UsageError, match="shared weights"):
        learner.set_anchors(stray, tasks=[0])


def test_set_anchors_replaces_the_penalty_with_a_consolidation_actors_state():
    config = replace(SMALL, batch_size=4, fisher_minibatches=3)
    learner = Learner(config, seed=0)
    consolidator = Learner(config, seed=1)  # stands in for the consolidation actor's copy
    buffer = FrameReplay(capacity=40, seed=0)
    rng = np.random.default_rng(0)
    buffer.start_episode(rng.integers(0, 256, (84, 84), dtype=np.uint8))
    for t in range(20):
        buffer.add(t % 5, 0.0, False, rng.integers(0, 256, (84, 84), dtype=np.uint8), episode_end=False)
    samples = fisher_batch(buffer, config)
    assert len(samples) == 12
    consolidator.online.set_task(0)
    fisher = q_network_fisher(consolidator.online, consolidator.target, samples, task=2, kind=config.fisher_kind)
    assert consolidator.online.task == 0  # the Fisher's task does not leak into the network's setting
    assert set(fisher) == set(shared_parameter_names(consolidator.online))
    assert all(torch.all(f >= 0) and f.sum() > 0 for f in fisher.values())
    anchor(consolidator, 2, fisher)

    learner.set_anchors(consolidator.ewc.state_dict(), tasks=[2])
    assert learner.anchored_tasks == {2} and learner.ewc.num_tasks == 1
    # Anchored at another network's weights: the penalty is positive here.
    assert learner.update(random_batch(8), task=0)["ewc_penalty"] > 0


def td_fisher_by_loop(net: QNetwork, target: QNetwork, batch: TensorBatch, task: int):
    """Reference: one backward per sample, squared, averaged."""
    names = shared_parameter_names(net)
    params = dict(net.named_parameters())
    totals = {n: torch.zeros_like(params[n]) for n in names}
    for i in range(len(batch.actions)):
        one = TensorBatch(*(t[i : i + 1] for t in batch))
        y = double_dqn_targets(net, target, one.rewards, one.terminals, one.discounts, one.next_states, task)
        q = net(one.states, task)[0, one.actions[0]]
        log_likelihood = -0.5 * (y[0] - q).square()  # Gaussian, unit variance
        grads = torch.autograd.grad(log_likelihood, [params[n] for n in names])
        for n, g in zip(names, grads):
            totals[n] += g.square()
    return {n: t / len(batch.actions) for n, t in totals.items()}


def test_td_empirical_fisher_is_the_mean_of_per_sample_squared_gradients():
    torch.manual_seed(0)
    net, target = QNetwork(SMALL_NET), QNetwork(SMALL_NET)
    batch = to_tensors(random_batch(12), "cpu")
    fisher = q_network_fisher(net, target, batch, task=1, kind="td_empirical", chunk_size=5)
    reference = td_fisher_by_loop(net, target, batch, 1)
    assert set(fisher) == set(shared_parameter_names(net))
    for name in reference:
        torch.testing.assert_close(fisher[name], reference[name], rtol=1e-4, atol=1e-10)
    # Not the square of the minibatch-mean gradient (a known bug), which is far smaller.
    mean_grad_sq = {n: g.square() for n, g in zip(reference, torch.autograd.grad(
        -0.5 * (double_dqn_targets(net, target, batch.rewards, batch.terminals, batch.discounts, batch.next_states, 1)
                - net(batch.states, 1).gather(1, batch.actions[:, None]).squeeze(1)).square().mean(),
        [dict(net.named_parameters())[n] for n in reference]))}
    assert fisher["fc.weight"].sum() > 3 * mean_grad_sq["fc.weight"].sum()
    with pytest.raises(UsageError, match="target network"):
        q_network_fisher(net, None, batch, task=1, kind="td_empirical")
    with pytest.raises(UsageError, match="unknown"):
        q_network_fisher(net, target, batch, task=1, kind="mse")


def test_state_dict_round_trip_restores_everything():
    config = replace(SMALL, target_update_period=4)
    original = Learner(config, seed=0)
    anchor(original, 0, {n: torch.ones_like(p) for n, p in original.online.named_parameters()
                             if n in original.shared_names})
    for i in range(5):
        original.update(random_batch(8, seed=i), task=1)
    buffer = io.BytesIO()
    torch.save(original.state_dict(), buffer)
    buffer.seek(0)
    restored = Learner(config, seed=123)
    restored.load_state_dict(torch.load(buffer, weights_only=False))

    assert same_weights(snapshot(original.online), snapshot(restored.online))
    assert same_weights(snapshot(original.target), snapshot(restored.target))
    assert restored.num_updates == 5
    assert restored.anchored_tasks == {0} and restored.ewc_active()
    # Same optimizer state, target cadence and penalty: the next updates agree exactly.
    for i in range(5, 8):
        a = original.update(random_batch(8, seed=i), task=1)
        b = restored.update(random_batch(8, seed=i), task=1)
        assert a == b
    assert same_weights(snapshot(original.online), snapshot(restored.online))
    assert same_weights(snapshot(original.target), snapshot(restored.target))


def test_gradient_clipping_is_torchs_clip_grad_norm():
    config = replace(SMALL, max_grad_norm=1e-3)  # every gradient of this batch is far above it
    learner = Learner(config, seed=0)
    reference = copy.deepcopy(learner)
    batch = random_batch(8)
    metrics = learner.update(batch, task=0)
    loss = double_dqn_loss(reference.online, reference.target, to_tensors(batch, "cpu"), 0).loss
    reference.optimizer.zero_grad()
    loss.backward()
    norm = float(nn.utils.clip_grad_norm_(reference.online.parameters(), config.max_grad_norm))
    reference.optimizer.step()
    assert norm > 10 * config.max_grad_norm and metrics["grad_norm"] == pytest.approx(norm, rel=1e-6)
    for name, value in snapshot(reference.online).items():
        torch.testing.assert_close(snapshot(learner.online)[name], value, rtol=1e-6, atol=1e-9)
    # Below the limit nothing is scaled: the step is the plain RMSProp step on the raw gradient.
    loose = Learner(replace(config, max_grad_norm=1e6), seed=0)
    unclipped = copy.deepcopy(loose)
    loose.update(batch, task=0)
    loss = double_dqn_loss(unclipped.online, unclipped.target, to_tensors(batch, "cpu"), 0).loss
    unclipped.optimizer.zero_grad()
    loss.backward()
    unclipped.optimizer.step()
    assert same_weights(snapshot(loose.online), snapshot(unclipped.online))


def test_compiled_optimizer_step_takes_the_eager_steps_also_after_a_restore():
    config = SMALL
    eager, compiled = Learner(config, seed=0), Learner(config, seed=0, compile_step=True)
    for learner in (eager, compiled):  # with an active EWC penalty, as after a task switch
        anchor(learner, 0, {n: torch.ones_like(p) for n, p in learner.online.named_parameters()
                                if n in learner.shared_names})
    for i in range(4):
        assert eager.update(random_batch(8, seed=i), task=1 + i % 2) == pytest.approx(
            compiled.update(random_batch(8, seed=i), task=1 + i % 2), rel=1e-4, abs=1e-6)
    # compiled, or (a machine without a C++ compiler) fell back to the eager step and said why: the same steps
    assert compiled.step_compiled != (compiled.compile_failure is not None)
    # A restore replaces the optimizer state the compiled step was traced with.
    restored = Learner(config, seed=5, compile_step=True)
    restored.update(random_batch(8), task=0)  # compiled against its own state first
    restored.load_state_dict(eager.state_dict())
    for i in range(4, 7):
        eager.update(random_batch(8, seed=i), task=1)
        restored.update(random_batch(8, seed=i), task=1)
    for name, value in snapshot(eager.online).items():
        torch.testing.assert_close(snapshot(restored.online)[name], value, rtol=1e-5, atol=1e-7)


def test_a_failed_compile_falls_back_to_the_eager_step_once(monkeypatch, capsys):
    def cannot_compile(optimizer):
        def step(pull=None):
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found")
        return step

    monkeypatch.setattr("agents.dqn.learning.compiled_optimizer_step", cannot_compile)
    eager, learner = Learner(SMALL, seed=0), Learner(SMALL, seed=0, compile_step=True)
    for i in range(2):
        assert learner.update(random_batch(8, seed=i), task=0) == eager.update(random_batch(8, seed=i), task=0)
    assert same_weights(snapshot(eager.online), snapshot(learner.online))
    assert not learner.step_compiled and "No working C++ compiler" in learner.compile_failure
    assert capsys.readouterr().err.count("using the eager step") == 1

    def breaks_later(optimizer):  # compiled fine, then failed: a real error, not a compile problem
        calls = []

        def step(pull=None):
            calls.append(1)
            if len(calls) > 1:
                raise RuntimeError("out of memory")
            optimizer.step(pull=pull)
        return step

    monkeypatch.setattr("agents.dqn.learning.compiled_optimizer_step", breaks_later)
    learner = Learner(SMALL, seed=0, compile_step=True)
    learner.update(random_batch(8), task=0)
    with pytest.raises(RuntimeError, match="out of memory"):
        learner.update(random_batch(8), task=0)


def test_weights_for_actors_are_cpu_copies_and_load_back():
    learner = Learner(SMALL, seed=0)
    weights = learner.weights()
    assert all(t.device.type == "cpu" for t in weights.values())
    learner.update(random_batch(8), task=0)
    assert not same_weights(weights, snapshot(learner.online))  # a copy, not a view
    learner.load_weights(weights)
    assert same_weights(weights, snapshot(learner.online)) and same_weights(weights, snapshot(learner.target))
    with pytest.raises(UsageError, match="do not fit"):
        Learner(replace(SMALL, network=replace(SMALL_NET, hidden=8))).load_weights(weights)


def test_bad_batches_raise_usage_errors():
    learner = Learner(SMALL, seed=0)
    with pytest.raises(UsageError, match="actions"):
        learner.update(random_batch(4, num_actions=SMALL_NET.num_actions + 3, seed=3), task=0)
    with pytest.raises(UsageError, match="task id"):
        learner.update(random_batch(4), task=SMALL_NET.max_tasks)
    bad = random_batch(4)
    bad.rewards = bad.rewards[:3]
    with pytest.raises(UsageError, match="rewards"):
        learner.update(bad, task=0)
    with pytest.raises(UsageError, match="fisher_kind"):
        DQNConfig(fisher_kind="squared_mean_gradient")


def test_epsilon_decays_linearly_with_a_separate_timer_per_task():
    eps = TaskEpsilon(EpsilonConfig(start=1.0, end=0.01, decay_steps=100, evaluation=0.001))
    assert eps.value(0) == 1.0
    assert eps.advance(0, 50) == pytest.approx(0.505)
    assert eps.value(1) == 1.0  # task 1 has its own timer
    assert eps.advance(0, 1_000) == pytest.approx(0.01)
    assert eps.value(1, evaluation=True) == 0.001
    restored = TaskEpsilon(eps.config)
    restored.load_state_dict(eps.state_dict())
    assert restored.steps(0) == 1_050 and restored.value(1) == 1.0
    assert EpsilonConfig().decay_steps == 1_000_000 and EpsilonConfig().end == 0.01
    with pytest.raises(UsageError):
        TaskEpsilon(EpsilonConfig(end=1.5))


@pytest.mark.parametrize("centered", [False, True])
def test_rmsprop_survives_the_near_constant_gradient_of_the_ewc_penalty(centered):
    # Centered RMSProp divides by sqrt(E[g^2] - E[g]^2 + eps): with a near-constant gradient the difference
    # rounds to a tiny negative number; with eps outside the root (torch's RMSprop) that is NaN.
    param = torch.nn.Parameter(torch.randn(50_000))
    cfg = DQNConfig()
    optimizer = RMSProp([param], lr=cfg.learning_rate, alpha=cfg.rmsprop_alpha, eps=cfg.rmsprop_eps, centered=centered)
    noise = torch.Generator().manual_seed(0)
    for _ in range(1000):
        param.grad = torch.full_like(param, 3e-3) * (1 + 1e-7 * torch.randn(param.shape, generator=noise))
        optimizer.step()
    assert torch.isfinite(param).all()


def test_rmsprop_takes_dopamines_dqn_step_about_3x_torchs():
    """The paper's network at initialisation on real Pong frames: per-weight gradients ~1e-5.

    Dopamine's DQN (TF RMSProp: decay 0.95, eps 1e-5 inside the root, batch-mean loss) steps by
    lr g / sqrt(v + eps); torch's RMSprop with DQN's eps 0.01 outside the root by lr g / (sqrt(v) + 0.01).
    """
    from envs.games import random_policy_frames

    config = DQNConfig(network=NetworkConfig(max_tasks=2), max_grad_norm=1e9)
    frames = random_policy_frames("Pong", 40, seed=0)
    rng = np.random.default_rng(0)
    ends = rng.integers(4, 40, size=32)
    batch = Batch(states=np.stack([frames[i - 4:i] for i in ends]), actions=rng.integers(0, 18, 32),
                  rewards=rng.choice([-1.0, 0.0, 1.0], 32).astype(np.float32), terminals=np.zeros(32, np.float32),
                  discounts=np.full(32, config.gamma, np.float32),
                  next_states=np.stack([frames[i - 3:i + 1] for i in ends]))
    learner = Learner(config, seed=0)
    reference = copy.deepcopy(learner)
    torch_rmsprop = copy.deepcopy(learner)
    square_avg = {n: torch.zeros_like(p) for n, p in reference.online.named_parameters()}
    dopamine_steps, torch_steps, our_steps = [], [], []
    shared = dict(torch_rmsprop.online.named_parameters())
    optimizer = torch.optim.RMSprop(shared.values(), lr=2.5e-4, alpha=0.95, eps=0.01)
    for _ in range(2):  # the second step also checks the running average of squares
        loss = double_dqn_loss(reference.online, reference.target, to_tensors(batch, "cpu"), 0).loss
        grads = dict(zip(square_avg, torch.autograd.grad(loss, list(reference.online.parameters()), allow_unused=True)))
        expected = {}
        with torch.no_grad():
            for name, p in reference.online.named_parameters():
                g = grads[name] if grads[name] is not None else torch.zeros_like(p)
                square_avg[name] = 0.95 * square_avg[name] + 0.05 * g * g
                expected[name] = -2.5e-4 * g / torch.sqrt(square_avg[name] + 1e-5)
                p.add_(expected[name])
        before = snapshot(learner.online)
        learner.update(batch, task=0)
        for name, value in snapshot(reference.online).items():  # the weights after the same steps
            torch.testing.assert_close(snapshot(learner.online)[name], value, rtol=1e-6, atol=1e-9)
        dopamine_steps.append(torch.cat([s.flatten() for s in expected.values()]).abs().mean().item())
        our_steps.append(torch.cat([(learner.online.state_dict()[n] - before[n]).flatten() for n in expected]).abs().mean())
        previous = {n: p.detach().clone() for n, p in shared.items()}
        optimizer.zero_grad()
        double_dqn_loss(torch_rmsprop.online, torch_rmsprop.target, to_tensors(batch, "cpu"), 0).loss.backward()
        optimizer.step()
        torch_steps.append(torch.cat([(p - previous[n]).flatten() for n, p in shared.items()]).abs().mean().item())
    mean_gradient = torch.cat([g.flatten() for g in grads.values() if g is not None]).abs().mean().item()
    assert 1e-6 < mean_gradient < 1e-4  # the regime where eps decides the step
    for ours, dopamine, plain in zip(our_steps, dopamine_steps, torch_steps):
        assert ours == pytest.approx(dopamine, rel=1e-3)
        assert 2.5 < ours / plain < 4.0


def test_ewc_gradient_ratio_per_layer_is_penalty_over_td_gradient_norm():
    learner = Learner(SMALL, seed=0)
    fisher = {n: torch.full_like(p, 0.5) for n, p in learner.online.named_parameters() if n in learner.shared_names}
    anchor(learner, 0, fisher)
    anchors = {n: p.detach().clone() for n, p in learner.online.named_parameters()}
    with torch.no_grad():
        learner.online.fc.weight.add_(0.01)
    reference = copy.deepcopy(learner)
    batch = random_batch(8)
    learner.update(batch, task=1, report_penalty=False)
    assert learner.last_ewc_grad_ratios == {}  # measured only when the penalty is reported
    learner = copy.deepcopy(reference)
    learner.update(batch, task=1)
    ratios = learner.last_ewc_grad_ratios
    assert set(ratios) == {"conv1", "conv2", "conv3", "fc", "out"}
    loss = double_dqn_loss(reference.online, reference.target, to_tensors(batch, "cpu"), 1).loss
    td_grad = torch.autograd.grad(loss, reference.online.fc.weight)[0]
    penalty_grad = SMALL.ewc_lambda * 0.5 * (reference.online.fc.weight - anchors["fc.weight"])
    assert ratios["fc"] == pytest.approx((penalty_grad.norm() / td_grad.norm()).item(), rel=1e-4)
    assert ratios["conv1"] == pytest.approx(0.0, abs=1e-6)  # still at its anchor


@pytest.mark.parametrize("compile_step", [False, True], ids=["eager", "compiled"])
def test_an_update_clips_the_td_gradient_then_steps_with_the_penalty_gradient_of_the_latest_anchors(compile_step):
    """The penalty's gradient rides inside the optimizer step (not clipped with the TD gradient), from
    cached terms that anchors set later must replace."""
    config = replace(SMALL, max_grad_norm=1e-3, ewc_lambda=50.0)  # the TD gradient is always clipped
    learner = Learner(config, seed=0, compile_step=compile_step)
    reference = copy.deepcopy(learner)
    generator = torch.Generator().manual_seed(0)
    for task in (1, 2):
        fisher = {n: torch.rand(p.shape, generator=generator) for n, p in learner.online.named_parameters()
                  if n in learner.shared_names}
        for model in (learner, reference):
            anchor(model, task, fisher)
        for i in range(2):  # the weights leave the anchors, then the penalty pulls
            batch = random_batch(8, seed=10 * task + i)
            learner.update(batch, 1, report_penalty=False)
            loss = double_dqn_loss(reference.online, reference.target, to_tensors(batch, "cpu"), 1).loss
            reference.optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(reference.online.parameters(), config.max_grad_norm)
            reference.ewc.penalty(reference.online).backward()  # autograd's gradient, added unclipped
            reference.optimizer.step()
            for name, value in snapshot(reference.online).items():
                torch.testing.assert_close(snapshot(learner.online)[name], value, rtol=1e-4, atol=1e-6)
    assert learner.step_compiled == (compile_step and learner.compile_failure is None)

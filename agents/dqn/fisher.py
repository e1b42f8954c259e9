"""The diagonal Fisher of a Q-network on one task, over its shared weights (what EWC anchors)."""
from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor

from agents.dqn.config import FISHER_KINDS, DQNConfig, FisherKind
from agents.dqn.losses import TensorBatch, double_dqn_targets, to_tensors
from agents.dqn.networks import QNetwork, shared_parameter_names
from agents.replay import Batch, FrameReplay
from common.errors import UsageError
from ewc import diagonal_fisher, per_sample_squared_gradients


def q_network_fisher(
    net: QNetwork,
    target_net: QNetwork | None,
    batch: Batch | TensorBatch,
    task: int,
    *,
    kind: FisherKind = "softmax_exact",
    chunk_size: int = 256,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """Diagonal Fisher of `net` on `task` over the shared weights, from per-sample gradients.

    A Q-network defines no likelihood by itself; the kinds are:
    - "softmax_exact" (default): softmax(Q(s, .)) as a categorical over actions, its true
      Fisher summed exactly over the actions (`ewc.diagonal_fisher`, mode "exact");
    - "softmax_sample": the same with one action sampled per state (cheaper, unbiased);
    - "td_empirical": empirical Fisher of a unit-variance Gaussian likelihood of the
      Double-DQN target y around Q(s, a): per-sample gradient (y - Q(s, a)) dQ(s, a)/dtheta,
      squared, with the batch's own returns and discounts (`agents.replay`). Needs
      `target_net`. It vanishes where the TD error does, so it is much
      smaller than the softmax Fisher and lambda does not carry over between kinds.
    Pass `Batch.concatenate(...)` of the paper's 100 minibatches; it is processed in chunks.
    """
    if kind not in FISHER_KINDS:
        raise UsageError(f"unknown Q-network Fisher kind {kind!r}; choose one of {', '.join(FISHER_KINDS)}")
    device = next(net.parameters()).device
    tensors = to_tensors(batch, device, net.config.num_actions)
    names = shared_parameter_names(net)
    if kind in ("softmax_exact", "softmax_sample"):
        mode = "exact" if kind == "softmax_exact" else "sample"
        with _using_task(net, task):
            return diagonal_fisher(
                net, tensors.states, mode=mode, batch_size=chunk_size, params=names, generator=generator
            )

    if target_net is None:
        raise UsageError("the td_empirical Fisher needs the target network for its Double-DQN targets")
    targets = torch.cat([
        double_dqn_targets(net, target_net, tensors.rewards[rows], tensors.terminals[rows], tensors.discounts[rows],
                           tensors.next_states[rows], task)
        for rows in (slice(start, start + chunk_size) for start in range(0, len(tensors.actions), chunk_size))
    ])

    def td_vectors(q_values: Tensor, rows: slice) -> list[Tensor]:
        # d/dQ of log N(y; Q(s, a), 1) is (y - Q(s, a)) on the taken action, 0 on the others
        actions = tensors.actions[rows]
        td_errors = targets[rows] - q_values.detach().gather(1, actions.unsqueeze(1)).squeeze(1)
        return [F.one_hot(actions, q_values.shape[1]).to(q_values.dtype) * td_errors.unsqueeze(1)]

    with _using_task(net, task):
        return per_sample_squared_gradients(net, tensors.states, td_vectors, batch_size=chunk_size, params=names)


def normalized(fisher: dict[str, Tensor], how: str) -> dict[str, Tensor]:
    """`fisher` as computed ("none") or divided by its mean over all its elements ("mean"; zero stays zero)."""
    if how == "none":
        return fisher
    total = sum(f.sum() for f in fisher.values())
    count = sum(f.numel() for f in fisher.values())
    mean = float(total) / count
    return {name: f / mean for name, f in fisher.items()} if mean > 0 else fisher


def fisher_batch(buffer: FrameReplay, config: DQNConfig) -> Batch:
    """The transitions a task's Fisher is computed from: `fisher_minibatches` minibatches of its buffer."""
    return Batch.concatenate(buffer.sample(config.batch_size) for _ in range(config.fisher_minibatches))


@contextmanager
def _using_task(net: QNetwork, task: int):
    previous = net.task
    net.set_task(task)
    try:
        yield
    finally:
        net.task = previous

"""The Double-DQN loss, and the tensors it is computed on.

Double DQN (van Hasselt et al. 2016): the online network picks the next action, the
target network values it,
    y = r + discount * (1 - terminal) * Q_target(s', argmax_a Q_online(s', a)),
and the loss is the Huber loss of y - Q_online(s, a) (the DQN papers' "error clipping").
Each sample brings its own r, discount and s' (`agents.replay`): one step, r = r_t and
discount = gamma; n-step returns, r = sum_{k<n'} gamma^k r_{t+k}, discount = gamma^n' and s'
the state n' steps later. Batches arrive as numpy uint8 (`agents.replay.Batch`) and are moved
to the learner's device.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from agents.replay import Batch
from common.errors import UsageError


class TensorBatch(NamedTuple):
    states: Tensor  # (B, stack, H, W) uint8
    actions: Tensor  # (B,) int64
    rewards: Tensor  # (B,) float32
    terminals: Tensor  # (B,) float32
    discounts: Tensor  # (B,) float32
    next_states: Tensor  # (B, stack, H, W) uint8


def to_tensors(batch: Batch | TensorBatch, device: torch.device | str, num_actions: int | None = None) -> TensorBatch:
    """Move a numpy batch to `device` (uint8 frames travel as uint8: 4x less than float).

    With `num_actions`, actions are checked on the host (an out-of-range index would be a
    device-side assert on CUDA).
    """
    if isinstance(batch, TensorBatch):
        return TensorBatch(*(t.to(device, non_blocking=True) for t in batch))
    if not isinstance(batch, Batch):
        raise UsageError(f"expected an agents.replay.Batch, got {type(batch).__name__}")
    size = len(batch.actions)
    if batch.actions.shape != (size,) or (
        num_actions is not None and size and (batch.actions.min() < 0 or batch.actions.max() >= num_actions)
    ):
        raise UsageError(
            f"batch actions must be a 1-D array of ints in [0, {num_actions}), got shape {batch.actions.shape} "
            f"values {batch.actions.min(initial=0)}..{batch.actions.max(initial=0)}"
        )
    for name in ("rewards", "terminals", "discounts"):
        if getattr(batch, name).shape != (size,):
            raise UsageError(f"batch.{name} must have shape ({size},), got {getattr(batch, name).shape}")
    if batch.states.shape != batch.next_states.shape or len(batch.states) != size:
        raise UsageError(f"batch states {batch.states.shape} / next_states {batch.next_states.shape} "
                         f"do not match {size} actions")

    def move(array: np.ndarray, dtype: np.dtype) -> Tensor:
        array = np.ascontiguousarray(array, dtype=dtype)
        if not array.flags.writeable:  # e.g. zero-copy from Ray's object store; torch wants writable memory
            array = array.copy()
        return torch.from_numpy(array).to(device, non_blocking=True)

    return TensorBatch(
        states=move(batch.states, np.uint8),
        actions=move(batch.actions, np.int64),
        rewards=move(batch.rewards, np.float32),
        terminals=move(batch.terminals, np.float32),
        discounts=move(batch.discounts, np.float32),
        next_states=move(batch.next_states, np.uint8),
    )


@torch.no_grad()
def double_dqn_targets(
    online: nn.Module,
    target: nn.Module,
    rewards: Tensor,
    terminals: Tensor,
    discounts: Tensor,
    next_states: Tensor,
    task: int | Tensor,
) -> Tensor:
    """y = r + discount (1 - terminal) Q_target(s', argmax_a Q_online(s', a))."""
    next_actions = online(next_states, task).argmax(dim=1, keepdim=True)
    next_values = target(next_states, task).gather(1, next_actions).squeeze(1)
    return rewards + discounts * (1.0 - terminals) * next_values


def q_taken_and_targets(
    online: nn.Module, target: nn.Module, batch: TensorBatch, task: int | Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Q_online(s, ·), Q_online(s, a) and the Double-DQN targets y: the update's forward passes."""
    q_values = online(batch.states, task)
    q_taken = q_values.gather(1, batch.actions.unsqueeze(1)).squeeze(1)
    targets = double_dqn_targets(
        online, target, batch.rewards, batch.terminals, batch.discounts, batch.next_states, task
    )
    return q_values, q_taken, targets


def behaviour_cloning_loss(q_values: Tensor, actions: Tensor, cloned: Tensor) -> Tensor:
    """Mean cross-entropy of softmax(Q(s, ·)) to the stored action, over the samples where `cloned` (B,) is True.

    CLEAR's behaviour cloning (Rolnick et al. 2019) pulls the policy on replayed old-task states towards the
    policy that acted then; a DQN's replay keeps only the action taken, so that action stands for it and
    softmax(Q) for the current policy. 0 when no sample is cloned.
    """
    if not bool(cloned.any()):
        return q_values.new_zeros(())
    return F.cross_entropy(q_values[cloned], actions[cloned])


class TDLoss(NamedTuple):
    """The Double-DQN loss of a batch and the terms it was computed from."""

    loss: Tensor  # mean Huber loss of y - Q(s, a)
    q_taken: Tensor  # (B,) Q_online(s, a), in the autograd graph
    targets: Tensor  # (B,) y, no gradient
    q_values: Tensor  # (B, actions) Q_online(s, ·), in the autograd graph

    @property
    def td_errors(self) -> Tensor:
        """(B,) y - Q(s, a), detached: computed only by a caller that asks for it."""
        return (self.targets - self.q_taken).detach()


def double_dqn_loss(
    online: nn.Module, target: nn.Module, batch: TensorBatch, task: int | Tensor, huber_delta: float = 1.0
) -> TDLoss:
    """The mean Huber loss of a batch on `task`, with Q(s, a) and y (what the learner's metrics read)."""
    q_values, q_taken, targets = q_taken_and_targets(online, target, batch, task)
    return TDLoss(F.huber_loss(q_taken, targets, delta=huber_delta), q_taken, targets, q_values)

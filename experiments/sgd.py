"""Minibatch SGD with an EWC/L2 penalty applied as an exact proximal step: the supervised experiments' training."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common.errors import UsageError
from ewc import EWCPenalty


def sgd_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: Tensor,
    labels: Tensor,
    *,
    batch_size: int,
    lr: float,
    penalty: EWCPenalty | None,
    generator: torch.Generator,
) -> float:
    """One shuffled pass of cross-entropy SGD; returns the mean training loss.

    The penalty (if any) is an exact proximal step after every SGD step (ewc.EWCPenalty.proximal_step):
    stable for any lambda, where an explicit gradient step on it diverges once lr * lambda * F > 2.
    """
    order = torch.randperm(len(labels), generator=generator)
    total = 0.0
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        loss = F.cross_entropy(model(images[batch]), labels[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if penalty is not None:
            penalty.proximal_step(model, lr)
        total += loss.item() * len(batch)
    mean_loss = total / len(labels)
    if not math.isfinite(mean_loss):
        raise UsageError(f"training diverged (loss {mean_loss}); lower --lr")
    return mean_loss

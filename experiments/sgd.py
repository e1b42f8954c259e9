"""The supervised experiments' training and testing: minibatch SGD with an EWC/L2 penalty applied as an
exact proximal step, and test accuracy."""
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


EVAL_BATCH_SIZE = 2000  # evaluation only; large batches are faster and change nothing


@torch.no_grad()
def accuracy(model: nn.Module, images: Tensor, labels: Tensor, permutation: Tensor | None = None) -> float:
    """Fraction of `images` (pixels reordered by `permutation`, if given) classified correctly, in eval mode."""
    was_training = model.training
    model.eval()
    correct = 0
    for start in range(0, len(labels), EVAL_BATCH_SIZE):
        chunk = images[start : start + EVAL_BATCH_SIZE]
        logits = model(chunk if permutation is None else chunk[:, permutation])
        correct += int((logits.argmax(dim=1) == labels[start : start + EVAL_BATCH_SIZE]).sum())
    model.train(was_training)
    return correct / len(labels)

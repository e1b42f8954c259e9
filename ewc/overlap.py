"""Fisher overlap between two tasks (paper Fig. 2C).

Each diagonal Fisher is normalised to unit trace, F^ = F / tr F, and compared with the
Frechet distance d^2 = 1/2 tr(F^1 + F^2 - 2 (F^1 F^2)^(1/2)); overlap = 1 - d^2. For diagonal
matrices this is sum_i sqrt(F^1_i F^2_i) (the Bhattacharyya coefficient of the two
normalised Fishers): 1 for proportional Fishers, 0 for disjoint supports.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from common.errors import UsageError


def _flat(fisher: Tensor | Mapping[str, Tensor]) -> Tensor:
    if isinstance(fisher, Mapping):
        return torch.cat([fisher[name].detach().double().flatten() for name in sorted(fisher)])
    return fisher.detach().double().flatten()


def fisher_overlap(first: Tensor | Mapping[str, Tensor], second: Tensor | Mapping[str, Tensor]) -> float:
    """Overlap in [0, 1] of two diagonal Fishers (tensors, or name -> tensor maps with equal keys)."""
    if isinstance(first, Mapping) != isinstance(second, Mapping) or (
        isinstance(first, Mapping) and set(first) != set(second)
    ):
        raise UsageError("both Fishers must cover the same parameters")
    a, b = _flat(first), _flat(second)
    if a.shape != b.shape:
        raise UsageError(f"Fisher sizes differ: {a.numel()} vs {b.numel()}")
    if (a < 0).any() or (b < 0).any() or not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise UsageError("a Fisher must be finite and non-negative")
    if a.sum() == 0 or b.sum() == 0:
        raise UsageError("a Fisher with zero trace has no normalised form")
    a, b = a / a.sum(), b / b.sum()
    distance_sq = 0.5 * (a + b - 2 * (a * b).sqrt()).sum()
    return float((1.0 - distance_sq).clamp(0.0, 1.0))

"""Elastic Weight Consolidation core: per-sample diagonal Fisher, merged penalty, Fisher overlap."""
from ewc.fisher import MODES, diagonal_fisher, per_sample_squared_gradients
from ewc.overlap import fisher_overlap
from ewc.penalty import EWCPenalty

__all__ = ["MODES", "EWCPenalty", "diagonal_fisher", "fisher_overlap", "per_sample_squared_gradients"]

"""Thin Ray actor wrappers around the plain classes (EnvRunner, LearnerService, Consolidation).

All logic lives in the wrapped classes; these only pin torch threads, report the node
they run on, and split large return values so they travel actor-to-actor through the
object store instead of through the driver.
"""
from __future__ import annotations

import os

import ray
import torch

from agents.dqn.actor import EnvRunner
from agents.dqn.consolidation import Consolidation
from training.services import LearnerService


def _node_id() -> str:
    return ray.get_runtime_context().get_node_id()


class _EnvActor(EnvRunner):
    def __init__(self, *args, **kwargs):
        torch.set_num_threads(1)  # many actors share few cores: one thread each
        super().__init__(*args, **kwargs)

    @ray.method(num_returns=2)
    def collect_split(self, steps_per_env: int, epsilon: float, game: str, task: int):
        """(small episode statistics for the driver, the chunks for the learner)."""
        result = self.collect(steps_per_env, epsilon, game, task)
        chunks, result.chunks = result.chunks, []
        return result, chunks

    def where(self) -> dict:
        return {"node_id": _node_id(), "pid": os.getpid()}


class _LearnerActor(LearnerService):
    def __init__(self, config, device: str, threads: int):
        if threads > 0:
            torch.set_num_threads(threads)
        super().__init__(config, device)

    def where(self) -> dict:
        return {"node_id": _node_id(), "pid": os.getpid(), "device": str(self.learner.device),
                "torch_threads": torch.get_num_threads()}


class _ConsolidationActor(Consolidation):
    def __init__(self, config, device: str):
        torch.set_num_threads(1)
        super().__init__(config.agent, device, seed=config.seed)

    def where(self) -> dict:
        return {"node_id": _node_id(), "pid": os.getpid()}


EnvActor = ray.remote(max_restarts=-1)(_EnvActor)
LearnerActor = ray.remote(_LearnerActor)
ConsolidationActor = ray.remote(_ConsolidationActor)

"""Where a run's Ray actors go: the learner, the env actors, the evaluator, and what a strategy adds.

The learner gets the GPU when there is one (`device: auto`), node types made for a role
(custom resources `learner_node`, `env_node`, as in deploy/) get that role, and a run that
cannot fit the cluster is refused before it starts instead of waiting forever.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import ray

from common.errors import RunAborted, UsageError
from training.actors import EnvActor, LearnerActor
from training.config import RunConfig, learner_device

LEARNER_NODE, ENV_NODE = "learner_node", "env_node"  # custom resources of the node types in deploy/
NODE_SHARE = 0.001  # what an actor asks of such a resource: any number of actors fit on one node
ACTOR_START_TIMEOUT_S = 300  # actors not placed by then will not be: say so rather than wait forever


@dataclass
class Actors:
    learner: Any
    evaluator: Any  # None when the run never evaluates (no periodic and no end-of-visit rounds)
    env: list[Any]
    device: str  # the learner's
    others: dict[str, Any] = field(default_factory=dict)  # e.g. a strategy's consolidation actor
    where: dict[str, dict] = field(default_factory=dict)  # actor name -> node id, pid, ...

    def stop(self) -> None:
        """End every actor now, so their resources are free for whatever the process runs next."""
        for actor in [self.learner, self.evaluator, *self.env, *self.others.values()]:
            if actor is not None:
                ray.kill(actor)


def in_placement_group() -> bool:
    from ray.util import get_current_placement_group

    return get_current_placement_group() is not None


def check_fits(config: RunConfig, resources: dict[str, float]) -> str:
    """The learner's device on a cluster with `resources`; UsageError if the run cannot fit it."""
    has_gpu = resources.get("GPU", 0) >= 1
    device = learner_device(config.device, has_gpu)
    if device == "cuda" and not has_gpu:
        raise UsageError("device: cuda, but the Ray cluster has no GPU")
    actors = config.actors
    needed = actors.learner_cpus + actors.num_env_actors * actors.cpus_per_actor
    if needed > resources.get("CPU", 0) + 1e-9:
        raise UsageError(
            f"the run needs {needed:g} CPUs (learner {actors.learner_cpus:g} + {actors.num_env_actors} env actors x "
            f"{actors.cpus_per_actor:g}) but the Ray cluster has {resources.get('CPU', 0):g}: lower "
            "actors.num_env_actors or actors.cpus_per_actor, or add nodes"
        )
    return device


def start_actors(config: RunConfig, others: dict[str, Any] | None = None) -> Actors:
    """Start the run's actors (and wait until every one is placed); `others` are extra actor handles to wait for."""
    cfg = config
    resources = ray.cluster_resources()
    device = check_fits(cfg, resources)
    learner_node = {LEARNER_NODE: NODE_SHARE} if resources.get(LEARNER_NODE) else {}
    env_node = {ENV_NODE: NODE_SHARE} if resources.get(ENV_NODE) else {}
    learner = LearnerActor.options(
        num_cpus=cfg.actors.learner_cpus, num_gpus=1 if device == "cuda" else 0, resources=learner_node
    ).remote(cfg, device, cfg.actors.learner_threads)
    # Spread over nodes when asked; otherwise Ray's default, which inside a placement group (a sweep's
    # trial) keeps the actors in it: naming "DEFAULT" explicitly would take them out.
    spread = {"scheduling_strategy": "SPREAD"} if cfg.actors.placement == "spread" and not in_placement_group() else {}
    env = [
        EnvActor.options(num_cpus=cfg.actors.cpus_per_actor, resources=env_node, **spread).remote(
            i, cfg.actors.envs_per_actor, cfg.agent.network, cfg.env, seed=cfg.seed
        )
        for i in range(cfg.actors.num_env_actors)
    ]
    # Evaluation runs rarely and must not take a core from the actors: no CPU reserved.
    evaluates = cfg.eval.every_frames > 0 or cfg.eval.at_visit_end
    evaluator = EnvActor.options(num_cpus=0).remote(len(env), 1, cfg.agent.network, cfg.env, seed=cfg.seed) \
        if evaluates else None
    actors = Actors(learner, evaluator, env, device, dict(others or {}))
    named = {"learner": learner, **({"evaluator": evaluator} if evaluates else {}), **actors.others,
             **{f"env_actor_{i}": a for i, a in enumerate(env)}}
    try:
        actors.where = dict(zip(named, ray.get([a.where.remote() for a in named.values()],
                                               timeout=ACTOR_START_TIMEOUT_S)))
    except ray.exceptions.GetTimeoutError:
        raise RunAborted(
            f"the actors were not all placed within {ACTOR_START_TIMEOUT_S} s: the cluster lacks the CPUs, GPU or "
            f"custom resources they ask for (available now: {ray.available_resources()})"
        ) from None
    return actors


@contextmanager
def actor_failures_abort_the_run(resume_hint: Callable[[], str]) -> Iterator[None]:
    """An actor's crash or death ends the run with one message and how to continue it, not a Ray traceback."""
    try:
        yield
    except ray.exceptions.RayTaskError as err:
        if isinstance(err.cause, UsageError):  # e.g. a checkpoint that does not fit the network
            raise err.cause from None
        raise RunAborted(f"an actor failed: {err}\n{resume_hint()}") from None
    except ray.exceptions.RayActorError as err:
        raise RunAborted(f"a Ray actor died ({type(err).__name__}): {str(err).splitlines()[0]}\n"
                         f"{resume_hint()}") from None

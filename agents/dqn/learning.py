"""The learner: Double DQN with RMSProp and the merged EWC penalty over the shared weights.

No Ray here: `Learner` is the object the learner actor wraps (`training/services.py`).

Gradient clipping: the paper only says "gradient clipping". Huber already clips the
per-sample error to [-1, 1]; on top of that we clip the global norm of the TD loss's gradient
to 10, a common guard against rare huge steps. The EWC penalty's gradient is added after it,
inside RMSProp's own pass over the weights (one pass fewer per update): clipped together, a
strong pull right after a task switch would shrink the new task's gradient with it, and
RMSProp's normalisation already bounds the step the pull can cause.

RMSProp: `agents.optimizer.RMSProp`, with eps inside the square root as in Dopamine's DQN
(torch's own RMSprop adds it outside, which makes DQN's steps about 3x smaller). Not centered
by default (Dopamine's is): the centered form divides by an estimate of the gradient's
variance, which is nearly zero for a weight whose gradient is nearly constant, and the EWC
penalty's gradient on a weight the task loss barely touches is exactly that.
"""
from __future__ import annotations

import copy
import sys
from collections.abc import Iterable, Mapping
from dataclasses import asdict
from typing import Any

import numpy as np
import torch
from torch import Tensor

from agents.dqn.config import DQNConfig
from agents.dqn.losses import (
    TDLoss,
    TensorBatch,
    behaviour_cloning_loss,
    double_dqn_loss,
    to_tensors,
)
from agents.dqn.networks import QNetwork, layer_of, shared_parameter_names
from agents.optimizer import (
    Pull,
    RMSProp,
    compiled_optimizer_step,
    global_norm,
    scale_to_max_norm_,
)
from agents.replay import Batch
from common.errors import UsageError
from ewc import EWCPenalty


class Learner:
    """Online and target Q-networks, RMSProp, and the merged EWC penalty over the shared weights.

    `compile_step`: run RMSProp's step through `torch.compile`, which fuses its passes over the
    weights into one loop (what it gains: docs/performance.md). Compiling takes seconds once per
    process and needs a C++ compiler (Triton on a GPU); where it fails, the learner says so once
    and keeps the eager step.
    """

    def __init__(
        self, config: DQNConfig = DQNConfig(), device: torch.device | str = "cpu", seed: int = 0,
        *, compile_step: bool = False,
    ):
        self.config = config
        self.device = torch.device(device)
        with torch.random.fork_rng(devices=[]):  # seed the initial weights without touching the global RNG
            torch.manual_seed(seed)
            self.online = QNetwork(config.network).to(self.device)
        self.target = copy.deepcopy(self.online).requires_grad_(False)
        self.optimizer = RMSProp(
            self.online.parameters(),
            lr=config.learning_rate,
            alpha=config.rmsprop_alpha,
            eps=config.rmsprop_eps,
            centered=config.rmsprop_centered,
        )
        self.compile_failure: str | None = None  # why the compiled optimizer step was given up, if it was
        self._compiled_step = compiled_optimizer_step(self.optimizer) if compile_step else None
        self._compiled_step_ran = False
        self.shared_names = shared_parameter_names(self.online)
        self.ewc = EWCPenalty(
            config.ewc_lambda, online=config.ewc_online, gamma=config.ewc_online_gamma, include=self.shared_names
        )
        self.anchored_tasks: set[int] = set()  # tasks whose Fisher is merged into self.ewc
        self.num_updates = 0  # optimizer steps taken
        self.num_skipped = 0  # updates skipped for a non-finite loss or gradient
        self.nonfinite_in_a_row = 0
        self.last_penalty = torch.zeros((), device=self.device)  # the EWC penalty's latest computed value
        self.last_ewc_grad_ratios: dict[str, float] = {}  # layer -> EWC / TD gradient norm, when last reported

    # ---- training ------------------------------------------------------------------------

    def update(self, batch: Batch | TensorBatch, task: int | Tensor, *, report_penalty: bool = True,
               cloned: Tensor | None = None) -> dict[str, float]:
        """One RMSProp step on the TD loss (+ EWC penalty when active, + `agent.rehearsal_bc` x behaviour cloning on
        the samples where `cloned` is True); `task`: the batch's task, or one per sample. Returns metrics."""
        tensors = to_tensors(batch, self.device, self.config.network.num_actions)
        td, grads, grad_norm = self.td_gradient(tensors, task, cloned)
        # The penalty's gradient in closed form (no autograd graph over 6.5M weights), added inside the
        # optimizer step (`_ewc_pull`). Its value is only for logging and costs two more passes over the
        # weights: callers that log once per many updates ask for it once (`report_penalty`); otherwise
        # the last value is reported.
        pull = None
        if self.ewc_active():
            if report_penalty:
                self.last_ewc_grad_ratios = self._ewc_grad_ratios()
                self.last_penalty = self.ewc.value(self.online)
            pull = self._ewc_pull()
            penalty = self.last_penalty
        else:
            penalty = td.loss.new_zeros(())

        # One device sync for all metrics (and for the finiteness check).
        loss_value, td_abs, penalty_value, q_mean, norm_value = torch.stack(
            [td.loss.detach(), td.td_errors.abs().mean(), penalty.detach(), td.q_taken.detach().mean(), grad_norm]
        ).tolist()
        skipped = not all(np.isfinite([loss_value, penalty_value, norm_value]))
        weights_nonfinite = False
        if skipped:
            self.optimizer.zero_grad(set_to_none=True)  # never step on NaN/inf: the weights stay as they were
            self.num_skipped += 1
            self.nonfinite_in_a_row += 1
            # a NaN loss from finite weights is a bad batch; from NaN weights, nothing can recover
            weights_nonfinite = not all(torch.isfinite(p).all() for p in self.online.parameters())
        else:
            self.nonfinite_in_a_row = 0
            self.clipped_step(grads, norm_value, pull)
            self.num_updates += 1
            if self.num_updates % self.config.target_update_period == 0:
                self.sync_target()
        return {
            "loss": loss_value,
            "td_error_abs_mean": td_abs,
            "ewc_penalty": penalty_value,
            "q_mean": q_mean,
            "grad_norm": norm_value,
            "skipped_nonfinite": int(skipped),
            "weights_nonfinite": int(weights_nonfinite),
            "updates": self.num_updates,
        }

    def td_gradient(self, tensors: TensorBatch, task: int | Tensor,
                    cloned: Tensor | None = None) -> tuple[TDLoss, list[Tensor], Tensor]:
        """The Double-DQN loss on `tensors` and its gradient, left in the online weights' `.grad`; with `cloned`
        (rehearsed samples) and `agent.rehearsal_bc`, the gradient of their behaviour cloning loss too.

        Returns the loss terms, the gradients and their global norm (a device tensor: reading it
        syncs, which `update` does once for all its metrics).
        """
        cfg = self.config
        td = double_dqn_loss(self.online, self.target, tensors, task, cfg.huber_delta)
        loss = td.loss
        if cloned is not None and cfg.rehearsal_bc:
            loss = loss + cfg.rehearsal_bc * behaviour_cloning_loss(td.q_values, tensors.actions, cloned)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grads = [p.grad for p in self.online.parameters() if p.grad is not None]
        return td, grads, global_norm(grads)  # scaled once its value is read: most updates need no scaling pass

    def clipped_step(self, grads: list[Tensor], grad_norm: float, pull: Pull | None = None) -> None:
        """Scale the TD gradient to `max_grad_norm` if `grad_norm` (its global norm) is above it, then
        take RMSProp's step with the EWC penalty's gradient `pull` added unclipped."""
        scale_to_max_norm_(grads, grad_norm, self.config.max_grad_norm)
        self._optimizer_step(pull)

    def _ewc_grad_ratios(self) -> dict[str, float]:
        """Per layer: ||lambda F (theta - theta*)|| / ||gradient of the TD loss||, before they are added.

        Above 1 the penalty outweighs the new task on that layer; far below 1 it barely protects it.
        """
        penalty = self.ewc.gradient_norms(self.online)
        named = dict(self.online.named_parameters())
        names = [n for n in penalty if named[n].grad is not None]
        td = torch._foreach_norm([named[n].grad for n in names])
        ratios = torch.stack([penalty[n] / td_norm.clamp_min(1e-30) for n, td_norm in zip(names, td)]).tolist()
        return {layer_of(name): ratio for name, ratio in zip(names, ratios)}

    def _ewc_pull(self) -> Pull:
        """The penalty's gradient lambda A (theta - mu), for the optimizer to add in its own pass."""
        names, scales, anchors = self.ewc.gradient_terms()
        named = dict(self.online.named_parameters())
        return Pull([named[n] for n in names], scales, anchors)

    def _optimizer_step(self, pull: Pull | None = None) -> None:
        if self._compiled_step is None:
            self.optimizer.step(pull=pull)
            return
        try:
            self._compiled_step(pull=pull)
        except Exception as err:
            if self._compiled_step_ran:
                raise
            # The first call compiles, and a failure there (no C++ compiler, unsupported device)
            # comes before the step ran: the eager step takes over with nothing half-applied.
            first_line = next(iter(str(err).strip().splitlines()), "")
            self.compile_failure = f"{type(err).__name__}: {first_line}"
            print(f"[learner] torch.compile of the optimizer step failed ({self.compile_failure}); "
                  "using the eager step", file=sys.stderr, flush=True)
            self._compiled_step = None
            self.optimizer.step(pull=pull)
            return
        self._compiled_step_ran = True

    @property
    def step_compiled(self) -> bool:
        """Whether optimizer steps go through the compiled function."""
        return self._compiled_step is not None

    def sync_target(self) -> None:
        self.target.load_state_dict(self.online.state_dict())

    # ---- EWC -----------------------------------------------------------------------------

    def ewc_active(self) -> bool:
        """Whether the penalty counts: EWC is enabled and some task is anchored.

        Which tasks are anchored (e.g. only games trained `ewc_min_frames` frames) is decided by
        whoever merges the anchors (`training.services.ConsolidationService`), not here.
        """
        return self.config.ewc_enabled and self.ewc.num_tasks > 0 and bool(self.anchored_tasks)

    def set_anchors(self, ewc_state: Mapping[str, Any], tasks: Iterable[int]) -> None:
        """Replace the penalty with `ewc_state` (from `EWCPenalty.state_dict()`) anchoring `tasks`."""
        names = set(dict(ewc_state.get("precision", {})))
        stray = sorted(names - set(self.shared_names))
        if stray:
            raise UsageError(f"EWC anchors may only cover the shared weights; got task-specific or unknown {stray}")
        self.ewc.load_state_dict(ewc_state)
        self.ewc.to(self.device)
        self.anchored_tasks = {int(t) for t in tasks}

    # ---- weights and checkpoints ---------------------------------------------------------

    def weights(self) -> dict[str, Tensor]:
        """CPU copy of the online network's state_dict, for actors."""
        return {name: t.detach().to("cpu", copy=True) for name, t in self.online.state_dict().items()}

    def load_weights(self, weights: Mapping[str, Tensor]) -> None:
        """Replace the online network's weights (and the target's, so it is not left stale)."""
        try:
            self.online.load_state_dict(weights)
        except RuntimeError as err:
            raise UsageError(f"weights do not fit this network: {err}") from None
        self.sync_target()

    def state_dict(self) -> dict[str, Any]:
        return {
            "config": asdict(self.config),
            "online": self.online.state_dict(),
            "target": self.target.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "ewc": self.ewc.state_dict(),
            "anchored_tasks": sorted(self.anchored_tasks),
            "num_updates": self.num_updates,
            "num_skipped": self.num_skipped,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        try:
            self.online.load_state_dict(state["online"])
            self.target.load_state_dict(state["target"])
            # torch keeps the given state tensors (no copy): a copy keeps this learner independent of `state`
            self.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
            self.set_anchors(state["ewc"], state["anchored_tasks"])
            self.num_updates, self.num_skipped = int(state["num_updates"]), int(state["num_skipped"])
        except (KeyError, RuntimeError, TypeError, ValueError) as err:
            if isinstance(err, UsageError):
                raise
            raise UsageError(f"not a compatible Learner state: {err}") from None


def synthetic_anchors(net: torch.nn.Module, tasks: int, lam: float, seed: int = 0) -> EWCPenalty:
    """An EWC penalty over `net`'s shared weights merged from `tasks` random Fishers and anchors: what timing an
    update needs (its cost does not depend on the values), as after `tasks` consolidations."""
    names = shared_parameter_names(net)
    penalty = EWCPenalty(lam, include=names)
    generator = torch.Generator().manual_seed(seed)
    params = {n: p.detach() for n, p in net.named_parameters() if n in names}
    for _ in range(tasks):
        fisher = {n: torch.rand(p.shape, generator=generator) * 1e-3 for n, p in params.items()}
        anchors = {n: p + 0.01 * torch.randn(p.shape, generator=generator) for n, p in params.items()}
        penalty.consolidate(anchors, fisher)
    return penalty


def anchored_learner(config: DQNConfig, *, ewc_tasks: int = 1, seed: int = 0, compile_step: bool = False,
                     device: str = "cpu") -> Learner:
    """A `Learner` whose EWC penalty is merged from `ewc_tasks` synthetic tasks (0: no penalty)."""
    learner = Learner(config, device=device, seed=seed, compile_step=compile_step)
    if ewc_tasks:
        penalty = synthetic_anchors(learner.online, ewc_tasks, config.ewc_lambda, seed)
        learner.set_anchors(penalty.state_dict(), range(1, ewc_tasks + 1))
    return learner

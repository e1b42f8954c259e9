"""Double DQN with an EWC penalty over the shared weights: config, loss, Fisher, and a plain learner.

No Ray here: `Learner` is the object a Ray actor wraps. Batches arrive as numpy uint8
(`agents.replay.Batch`) and are moved to the learner's device.

Double DQN (van Hasselt et al. 2016): the online network picks the next action, the
target network values it,
    y = r + gamma * (1 - terminal) * Q_target(s', argmax_a Q_online(s', a)),
and the loss is the Huber loss of y - Q_online(s, a) (the DQN papers' "error clipping").

Gradient clipping: the paper only says "gradient clipping". Huber already clips the
per-sample error to [-1, 1]; on top of that we clip the global norm of the whole gradient
(TD loss + EWC penalty) to 10, a common guard against rare huge steps, e.g. right after a
task switch when the penalty's gradient can be large.

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
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from agents.network import NetworkConfig, QNetwork, layer_of, shared_parameter_names
from agents.optimizer import RMSProp, compiled_optimizer_step
from agents.replay import Batch, FrameReplay
from common.errors import UsageError
from ewc import EWCPenalty, diagonal_fisher

FisherKind = Literal["softmax_exact", "softmax_sample", "td_empirical"]
FISHER_KINDS: tuple[str, ...] = ("softmax_exact", "softmax_sample", "td_empirical")


@dataclass(frozen=True)
class DQNConfig:
    """Hyper-parameters of the paper's Atari agent (Kirkpatrick et al. 2017, appendix)."""

    network: NetworkConfig = field(default_factory=NetworkConfig)
    batch_size: int = 32
    gamma: float = 0.99
    learning_rate: float = 2.5e-4
    rmsprop_alpha: float = 0.95  # decay of the squared-gradient average
    rmsprop_eps: float = 1e-5  # inside the square root, as Dopamine's DQN (agents/optimizer.py)
    rmsprop_centered: bool = False  # see the module doc
    max_grad_norm: float = 10.0  # global-norm clipping of the full gradient (our choice, see module doc)
    huber_delta: float = 1.0
    target_update_period: int = 7_500  # learner updates between target-network syncs
    max_nonfinite_in_a_row: int = 100  # skipped NaN/inf updates in a row before the run is stopped
    # Used by the driver, named here so that every DQN hyper-parameter lives in one place:
    update_period: int = 4  # agent steps per learner update
    learning_starts: int = 50_000  # transitions in a task's buffer before it is trained on
    replay_capacity: int = 500_000  # transitions per task (the paper also mentions 50k)
    # EWC
    ewc_enabled: bool = True  # False: plain DQN baseline (the penalty never counts)
    ewc_lambda: float = 400.0
    ewc_online: bool = False  # online EWC (one anchor, decayed Fisher) instead of one term per task
    ewc_online_gamma: float = 1.0  # Fisher decay for online EWC
    ewc_min_frames: int = 20_000_000  # frames played on a game before its anchor counts (the consolidation actor applies it)
    fisher_kind: FisherKind = "softmax_exact"  # the true Fisher of softmax(Q); see q_network_fisher
    fisher_minibatches: int = 100  # minibatches of the finished task's buffer per Fisher

    def __post_init__(self) -> None:
        # Fail at start-up, not at the first task switch hours into a run.
        if self.fisher_kind not in FISHER_KINDS:
            raise UsageError(f"unknown fisher_kind {self.fisher_kind!r}; choose one of {', '.join(FISHER_KINDS)}")
        if not 0.0 <= self.gamma <= 1.0:
            raise UsageError(f"gamma must lie in [0, 1], got {self.gamma}")
        counts = ("batch_size", "target_update_period", "update_period", "replay_capacity", "fisher_minibatches")
        for name in counts:
            if getattr(self, name) < 1:
                raise UsageError(f"{name} must be positive, got {getattr(self, name)}")


class TensorBatch(NamedTuple):
    states: Tensor  # (B, stack, H, W) uint8
    actions: Tensor  # (B,) int64
    rewards: Tensor  # (B,) float32
    terminals: Tensor  # (B,) float32
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
    for name in ("rewards", "terminals"):
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
        next_states=move(batch.next_states, np.uint8),
    )


# ---- Double DQN ----------------------------------------------------------------------------


@torch.no_grad()
def double_dqn_targets(
    online: nn.Module,
    target: nn.Module,
    rewards: Tensor,
    terminals: Tensor,
    next_states: Tensor,
    task: int,
    gamma: float,
) -> Tensor:
    """y = r + gamma (1 - terminal) Q_target(s', argmax_a Q_online(s', a))."""
    next_actions = online(next_states, task).argmax(dim=1, keepdim=True)
    next_values = target(next_states, task).gather(1, next_actions).squeeze(1)
    return rewards + gamma * (1.0 - terminals) * next_values


def global_norm(tensors: list[Tensor]) -> Tensor:
    """The 2-norm of all `tensors` together (as `nn.utils.clip_grad_norm_` computes it)."""
    if not tensors:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(tensors)))


def scale_to_max_norm_(grads: list[Tensor], norm: float, max_norm: float) -> None:
    """`nn.utils.clip_grad_norm_`'s scaling, given the norm: its factor is 1 below the limit, so only
    gradients over it get the pass over memory."""
    if norm > max_norm:
        torch._foreach_mul_(grads, max_norm / (norm + 1e-6))


def _q_taken_and_targets(
    online: nn.Module, target: nn.Module, batch: TensorBatch, task: int, gamma: float
) -> tuple[Tensor, Tensor]:
    q_taken = online(batch.states, task).gather(1, batch.actions.unsqueeze(1)).squeeze(1)
    targets = double_dqn_targets(online, target, batch.rewards, batch.terminals, batch.next_states, task, gamma)
    return q_taken, targets


def double_dqn_loss(
    online: nn.Module, target: nn.Module, batch: TensorBatch, task: int, gamma: float, huber_delta: float = 1.0
) -> tuple[Tensor, Tensor]:
    """(mean Huber loss, detached TD errors y - Q(s, a)) for a batch on `task`."""
    q_taken, targets = _q_taken_and_targets(online, target, batch, task, gamma)
    loss = F.huber_loss(q_taken, targets, delta=huber_delta)
    return loss, (targets - q_taken).detach()


# ---- Fisher of a Q-network ----------------------------------------------------------------


def q_network_fisher(
    net: QNetwork,
    target_net: QNetwork | None,
    batch: Batch | TensorBatch,
    task: int,
    *,
    kind: FisherKind = "softmax_exact",
    gamma: float = 0.99,
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
      squared. Needs `target_net`. It vanishes where the TD error does, so it is much
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
    totals = {name: torch.zeros_like(p) for name, p in net.named_parameters() if name in names}
    was_training = net.training
    net.eval()
    try:
        for start in range(0, len(tensors.actions), chunk_size):
            chunk = TensorBatch(*(t[start : start + chunk_size] for t in tensors))
            for name, value in _td_squared_grads(net, target_net, chunk, task, gamma).items():
                totals[name] += value
    finally:
        net.train(was_training)
    return {name: total / len(tensors.actions) for name, total in totals.items()}


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


def _td_squared_grads(
    net: QNetwork, target_net: QNetwork, batch: TensorBatch, task: int, gamma: float
) -> dict[str, Tensor]:
    """Sum over the batch of per-sample squared gradients of the Gaussian TD log-likelihood.

    One batched forward and backward: for the shared Conv2d/Linear weights the gradient of
    sample n is a product of the layer's input and the gradient at its output (both
    captured with hooks); rows of a batched backward are per-sample since samples do not
    interact. Linear: sum_n (g_n^2)^T (a_n^2) without forming per-sample gradients;
    Conv2d: per-sample g_n @ unfold(a_n)^T, squared and summed.
    """
    shared = set(shared_parameter_names(net))
    layers = {name: module for name, module in net.named_modules() if f"{name}.weight" in shared}
    for name, module in layers.items():
        plain_conv = isinstance(module, nn.Conv2d) and module.groups == 1 and module.padding == (0, 0)
        if not (plain_conv or isinstance(module, nn.Linear)) or module.bias is not None:
            raise UsageError(f"td_empirical Fisher supports bias-free Linear/unpadded Conv2d shared layers, not {name}")
    inputs: dict[str, Tensor] = {}
    outputs: dict[str, Tensor] = {}

    def capture(name: str):
        def hook(module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
            inputs[name], outputs[name] = args[0].detach(), output
        return hook

    # Targets first: their forward passes through `net` must not overwrite the captured activations.
    targets = double_dqn_targets(net, target_net, batch.rewards, batch.terminals, batch.next_states, task, gamma)
    handles = [module.register_forward_hook(capture(name)) for name, module in layers.items()]
    try:
        with torch.enable_grad():
            q_taken = net(batch.states, task).gather(1, batch.actions.unsqueeze(1)).squeeze(1)
            td_errors = (targets - q_taken).detach()
            # d/dtheta of log N(y; Q, 1) = (y - Q) dQ/dtheta: backpropagate the TD errors.
            grads = torch.autograd.grad(q_taken, [outputs[n] for n in layers], grad_outputs=td_errors)
    finally:
        for handle in handles:
            handle.remove()

    squares: dict[str, Tensor] = {}
    for (name, module), grad_out in zip(layers.items(), grads):
        activation = inputs[name]
        if isinstance(module, nn.Linear):
            squares[f"{name}.weight"] = grad_out.square().T @ activation.square()
        else:
            patches = F.unfold(activation, module.kernel_size, dilation=module.dilation, stride=module.stride)
            per_sample = torch.bmm(grad_out.flatten(2), patches.transpose(1, 2))  # (N, out, in * k * k)
            squares[f"{name}.weight"] = per_sample.square().sum(0).reshape(module.weight.shape)
    return squares


# ---- the learner --------------------------------------------------------------------------


class Learner:
    """Online and target Q-networks, RMSProp, and the merged EWC penalty over the shared weights.

    `compile_step`: run RMSProp's step through `torch.compile`, which fuses its five passes over
    the weights into one loop (one CPU thread, the paper's network: ~20 ms -> ~6 ms of a ~90 ms
    update; docs/performance.md). Compiling takes seconds once per process and needs a C++
    compiler (Triton on a GPU); where it fails, the learner says so once and keeps the eager step.
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

    def update(self, batch: Batch | TensorBatch, task: int, *, report_penalty: bool = True) -> dict[str, float]:
        """One RMSProp step on the TD loss (+ EWC penalty when active). Returns metrics."""
        tensors = to_tensors(batch, self.device, self.config.network.num_actions)
        cfg = self.config
        q_taken, targets = _q_taken_and_targets(self.online, self.target, tensors, task, cfg.gamma)
        td_loss = F.huber_loss(q_taken, targets, delta=cfg.huber_delta)
        self.optimizer.zero_grad(set_to_none=True)
        td_loss.backward()
        # The penalty's gradient in closed form (no autograd graph over 6.5M weights): same result, less time.
        # Its value is only for logging and costs two more passes over the weights: callers that log
        # once per many updates ask for it once (`report_penalty`); otherwise the last value is reported.
        if self.ewc_active():
            if report_penalty:
                self.last_ewc_grad_ratios = self._ewc_grad_ratios()
            value = self.ewc.add_gradient_(self.online, with_value=report_penalty)
            if value is not None:
                self.last_penalty = value
            penalty = self.last_penalty
        else:
            penalty = td_loss.new_zeros(())
        grads = [p.grad for p in self.online.parameters() if p.grad is not None]
        grad_norm = global_norm(grads)  # clipped below, once known: most updates need no scaling pass

        td_errors = (targets - q_taken).detach()
        # One device sync for all metrics (and for the finiteness check).
        loss_value, td_abs, penalty_value, q_mean, norm_value = torch.stack(
            [td_loss.detach(), td_errors.abs().mean(), penalty.detach(), q_taken.detach().mean(), grad_norm]
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
            scale_to_max_norm_(grads, norm_value, cfg.max_grad_norm)
            self._optimizer_step()
            self.num_updates += 1
            if self.num_updates % cfg.target_update_period == 0:
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

    def _optimizer_step(self) -> None:
        if self._compiled_step is None:
            self.optimizer.step()
            return
        try:
            self._compiled_step()
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
            self.optimizer.step()
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

    def compute_fisher(
        self, batch: Batch | TensorBatch, task: int, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """Fisher of the online network on `task` over the shared weights (kind from the config).

        `batch`: e.g. `fisher_batch(buffer, config)`, the paper's 100 minibatches of the task.
        """
        cfg = self.config
        return q_network_fisher(
            self.online, self.target, batch, task, kind=cfg.fisher_kind, gamma=cfg.gamma, generator=generator
        )

    def consolidate(self, task: int, fisher: Mapping[str, Tensor]) -> None:
        """Anchor the current shared weights with `fisher` (single-process use; see set_anchors)."""
        self.ewc.consolidate(self.online, fisher)
        self.anchored_tasks.add(task)

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

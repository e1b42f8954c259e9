"""RMSProp as the DQN references use it: epsilon inside the square root.

    v     <- alpha v + (1 - alpha) g^2                (centered: also m <- alpha m + (1 - alpha) g)
    theta <- theta - lr g / sqrt(v + eps)             (centered: sqrt(v - m^2 + eps))

This is TensorFlow's RMSProp, which Dopamine's DQN uses (lr 2.5e-4, decay 0.95, eps 1e-5, loss
averaged over the batch), and DeepMind's 2015 DQN (eps 0.01 inside the root, loss summed over
the batch). torch's `RMSprop` adds eps *outside* the root, g / (sqrt(v) + eps): with DQN's
per-weight gradients of ~1e-5 and eps = 0.01 the eps term dominates the denominator and steps
come out about 3x smaller than either reference's. Inside the root, eps only matters for weights
whose gradient is far below sqrt(eps).

Inside the root also keeps the centered variant finite: v - m^2 can round to a tiny negative
number when a weight's gradient is nearly constant (the EWC penalty's gradient on a weight
the task loss barely touches), which outside-eps RMSProp turns into NaN; here eps absorbs it.

The mean square starts at 0 (torch and Keras) rather than TensorFlow 1's 1.0, which only
slows the first few hundred steps down.

A quadratic pull toward anchors (EWC's penalty, gradient s (theta - theta*) with s = lambda F)
can ride along: `RMSProp.step(pull=...)` adds its gradient to the parameters' gradients inside
the step's own pass over the weights instead of in passes of its own; compiled, the whole step
is one loop that also reads s and theta*.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable

import torch
from torch import Tensor


def rmsprop_update_(
    params: list[Tensor], grads: list[Tensor], square_avgs: list[Tensor], grad_avgs: list[Tensor] | None,
    *, lr: float, alpha: float, eps: float,
    pull_scales: list[Tensor] | None = None, pull_anchors: list[Tensor] | None = None,
    pull_scratch: list[Tensor] | None = None,
) -> None:
    """One RMSProp step on lists of tensors, in place (`grad_avgs` only for the centered form).

    With `pull_scales` s and `pull_anchors` a (one each per parameter), the step follows
    grads + s * (params - a); `grads` themselves are left as they are. `pull_scratch`: buffers
    shaped like `params` for that sum (the eager step: no fresh temporaries over every weight);
    without them the sum is a temporary, which the compiled step fuses away.
    """
    if pull_scales is not None:
        if pull_scratch is None:
            pulls = torch._foreach_sub(params, pull_anchors)
            torch._foreach_mul_(pulls, pull_scales)
            torch._foreach_add_(pulls, grads)
        else:  # two passes, each writing into the scratch buffer
            for p, g, s, a, d in zip(params, grads, pull_scales, pull_anchors, pull_scratch):
                torch.sub(p, a, out=d)
                torch.addcmul(g, s, d, out=d)
            pulls = pull_scratch
        grads = pulls
    torch._foreach_mul_(square_avgs, alpha)
    torch._foreach_addcmul_(square_avgs, grads, grads, value=1 - alpha)
    if grad_avgs is not None:
        torch._foreach_lerp_(grad_avgs, grads, 1 - alpha)
        denominators = torch._foreach_addcmul(square_avgs, grad_avgs, grad_avgs, value=-1)
        torch._foreach_add_(denominators, eps)
    else:
        denominators = torch._foreach_add(square_avgs, eps)
    torch._foreach_sqrt_(denominators)
    torch._foreach_addcdiv_(params, grads, denominators, value=-lr)


@functools.cache
def compiled_rmsprop_update() -> Callable[..., None]:
    """`rmsprop_update_` through torch.compile: its passes over the weights fused into one loop.

    One compiled function for the whole process: it takes the tensors as arguments, so every
    optimizer over the same shapes reuses the compiled code (compiling happens at the first call).
    """
    return torch.compile(rmsprop_update_)


@dataclasses.dataclass(frozen=True)
class Pull:
    """A quadratic pull of some parameters toward anchors: its gradient is scales * (params - anchors)."""

    params: list[Tensor]
    scales: list[Tensor]
    anchors: list[Tensor]


class RMSProp(torch.optim.Optimizer):
    """RMSProp with `eps` added inside the square root (TensorFlow / Dopamine / DeepMind DQN)."""

    def __init__(
        self,
        params: Iterable[Tensor],
        lr: float = 2.5e-4,
        alpha: float = 0.95,
        eps: float = 1e-5,
        centered: bool = False,
    ):
        if not lr > 0 or not 0.0 <= alpha < 1.0 or not eps > 0:
            raise ValueError(f"RMSProp needs lr > 0, 0 <= alpha < 1 and eps > 0; got {lr}, {alpha}, {eps}")
        super().__init__(params, {"lr": lr, "alpha": alpha, "eps": eps, "centered": centered})

    @torch.no_grad()
    def step(self, closure=None, *, update: Callable[..., None] = rmsprop_update_, pull: Pull | None = None):
        """One step; `update`: `rmsprop_update_` or `compiled_rmsprop_update()`; `pull`: a quadratic
        pull whose gradient is added inside the step (a pulled parameter steps even without `.grad`)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        pulled = {id(p): (s, a) for p, s, a in zip(pull.params, pull.scales, pull.anchors)} if pull else {}
        eager = update is rmsprop_update_  # the compiled update fuses its temporaries away; the eager one gets scratch
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None and id(p) in pulled:
                    p.grad = torch.zeros_like(p)
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            for p in params:
                state = self.state[p]
                if not state:
                    state["square_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    if group["centered"]:
                        state["grad_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            hyper = {"lr": group["lr"], "alpha": group["alpha"], "eps": group["eps"]}
            # One call for the pulled parameters, one for the rest (the compiled form specialises on each).
            for part, with_pull in (([p for p in params if id(p) in pulled], True),
                                    ([p for p in params if id(p) not in pulled], False)):
                if not part:
                    continue
                update(
                    part, [p.grad for p in part], [self.state[p]["square_avg"] for p in part],
                    [self.state[p]["grad_avg"] for p in part] if group["centered"] else None,
                    pull_scales=[pulled[id(p)][0] for p in part] if with_pull else None,
                    pull_anchors=[pulled[id(p)][1] for p in part] if with_pull else None,
                    pull_scratch=[self._scratch(p) for p in part] if with_pull and eager else None,
                    **hyper,
                )
        return loss

    def _scratch(self, p: Tensor) -> Tensor:
        """A buffer shaped like `p` for the eager step's pulled gradient (not saved with the state)."""
        buffers = self.__dict__.setdefault("_pull_scratch", {})  # torch's pickling and copying keep only the state
        scratch = buffers.get(id(p))
        if scratch is None or scratch.shape != p.shape or scratch.device != p.device:
            scratch = buffers[id(p)] = torch.empty_like(p)
        return scratch


def compiled_optimizer_step(optimizer: RMSProp) -> Callable[[], None]:
    """`optimizer.step` with its arithmetic compiled (`compiled_rmsprop_update`)."""
    return functools.partial(optimizer.step, update=compiled_rmsprop_update())


# ---- gradient clipping by global norm ----------------------------------------------------


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

"""The EWC penalty, kept as one merged quadratic.

For tasks t with Fisher F_t and anchors theta*_t,

    sum_t F_t (theta - theta*_t)^2  =  A (theta - mu)^2 + R,
    A = sum_t F_t,   mu = sum_t F_t theta*_t / A,   R = sum_t F_t (mu - theta*_t)^2 (a constant),

elementwise. Storing (A, mu, R) makes the penalty cost one pass over the parameters however
many tasks were consolidated, and the centred form avoids the cancellation that the expanded
form A theta^2 - 2 B theta + C suffers in float32 when theta is near its anchors.
Adding a task combines two quadratics exactly:
    a (x - m)^2 + b (x - n)^2 = (a + b)(x - (a m + b n)/(a + b))^2 + ab/(a + b) (m - n)^2.

Online EWC (Schwarz et al. 2018, "Progress & Compress") keeps one anchor, the latest
parameters, with a decayed Fisher: A <- gamma A + F_new, mu <- theta_new.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from common.errors import UsageError

Selector = Callable[[str], bool] | Iterable[str] | None


class EWCPenalty:
    """lambda/2 * sum over consolidated tasks of F (theta - theta*)^2, over the selected parameters.

    Args:
        lam: the penalty strength lambda.
        online: online EWC (one anchor at the latest parameters, Fisher decayed by ``gamma``).
        gamma: Fisher decay for online EWC; must be 1.0 unless ``online``.
        include: which parameters are anchored: a predicate on the name, a collection of
            names, or None for every parameter given to ``consolidate``. For the Atari
            agent this selects the shared weights, leaving task-specific gains and biases free.
    """

    def __init__(self, lam: float, *, online: bool = False, gamma: float = 1.0, include: Selector = None):
        if not lam >= 0:
            raise UsageError(f"EWC lambda must be >= 0, got {lam}")
        if not 0.0 < gamma <= 1.0:
            raise UsageError(f"online EWC gamma must lie in (0, 1], got {gamma}")
        if gamma != 1.0 and not online:
            raise UsageError("gamma only applies to online EWC: pass online=True")
        self.lam = float(lam)
        self.online = online
        self.gamma = float(gamma)
        if include is None or callable(include):
            self._include = include
        else:
            names = frozenset(include)
            self._include = names.__contains__
        self.precision: dict[str, Tensor] = {}  # A = sum of Fishers
        self.mean: dict[str, Tensor] = {}  # mu = Fisher-weighted mean of the anchors
        self.residual = 0.0  # R summed over all elements, float64: only the penalty's value needs it
        self.num_tasks = 0
        self._diffs: list[Tensor] | None = None  # scratch for value, allocated once
        self._scaled: list[Tensor] | None = None  # lambda A: gradient_terms

    def _selected(self, tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {n: t for n, t in tensors.items() if self._include is None or self._include(n)}

    def consolidate(self, params: Mapping[str, Tensor] | nn.Module, fisher: Mapping[str, Tensor]) -> None:
        """Add a task: its Fisher and the parameters to anchor (a model or a name -> tensor map)."""
        named = dict(params.named_parameters()) if isinstance(params, nn.Module) else dict(params)
        anchors = self._selected(named)
        if not anchors:
            raise UsageError("no parameters selected to anchor: check `include`")
        missing = [n for n in anchors if n not in fisher]
        if missing:
            raise UsageError(f"the Fisher has no entry for anchored parameters {missing}")
        if self.precision and set(anchors) != set(self.precision):
            raise UsageError("the anchored parameter names differ from the previous tasks'")
        for name, theta in anchors.items():
            f = fisher[name]
            if f.shape != theta.shape:
                raise UsageError(f"Fisher {name!r} has shape {tuple(f.shape)}, parameter has {tuple(theta.shape)}")
            if not torch.isfinite(f).all() or (f < 0).any():
                raise UsageError(f"Fisher {name!r} must be finite and non-negative")
            f = f.detach().to(theta.device, torch.float32)
            theta = theta.detach().float()
            if name not in self.precision:
                self.precision[name], self.mean[name] = f.clone(), theta.clone()
            elif self.online:
                self.precision[name] = self.gamma * self.precision[name] + f
                self.mean[name] = theta.clone()
            else:
                a, m = self.precision[name].double(), self.mean[name].double()
                b, n = f.double(), theta.double()
                total = a + b
                safe = torch.where(total > 0, total, torch.ones_like(total))
                self.residual += float((a * b / safe * (m - n).square()).sum())
                self.mean[name] = torch.where(total > 0, (a * m + b * n) / safe, n).float()
                self.precision[name] = total.float()
        self.num_tasks += 1
        self._diffs = self._scaled = None

    def penalty(self, model: nn.Module | Mapping[str, Tensor]) -> Tensor:
        """lambda/2 * sum_t F_t (theta - theta*_t)^2 as a differentiable scalar (0 before any task)."""
        named = dict(model.named_parameters()) if isinstance(model, nn.Module) else model
        if not self.precision:
            first = next(iter(named.values()))
            return first.new_zeros(())
        try:
            quadratic = sum((a * (named[n] - self.mean[n]).square()).sum() for n, a in self.precision.items())
        except KeyError as err:
            raise UsageError(f"the model has no parameter {err} anchored by this EWC penalty") from None
        return 0.5 * self.lam * (quadratic + self.residual)

    @torch.no_grad()
    def add_gradient_(self, model: nn.Module, *, with_value: bool = True) -> Tensor | None:
        """Add the penalty's gradient lambda * A * (theta - mu) to the parameters' `.grad`; return its value.

        The same gradient and value as `penalty(model).backward()`, in closed form instead of an
        autograd graph, for a training loop with any torch optimizer to call after the task loss's
        backward. The value (`value`) costs two more passes over the parameters; `with_value=False`
        skips it (returns None). `agents.optimizer.RMSProp` takes the gradient inside its own step
        instead (`gradient_terms`).
        """
        if not self.precision:
            return torch.zeros(()) if with_value else None
        named = dict(model.named_parameters())
        params = [named[n] for n in self.precision]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        _, scales, anchors = self.gradient_terms()
        pulls = torch._foreach_sub(params, anchors)
        torch._foreach_mul_(pulls, scales)
        torch._foreach_add_([p.grad for p in params], pulls)
        return self.value(model) if with_value else None

    @torch.no_grad()
    def value(self, model: nn.Module) -> Tensor:
        """`penalty(model)`'s value without autograd, through one preallocated scratch buffer (what a
        training loop logs; fresh temporaries over millions of weights cost page faults every call)."""
        if not self.precision:
            return torch.zeros(())
        named = dict(model.named_parameters())
        params = [named[n] for n in self.precision]
        if self._diffs is None or self._diffs[0].device != params[0].device:
            self._diffs = [torch.empty_like(m) for m in self.mean.values()]
        quadratic = params[0].new_zeros((), dtype=torch.float64)
        for p, m, a, d in zip(params, self.mean.values(), self.precision.values(), self._diffs):
            torch.sub(p, m, out=d)
            d.square_()
            quadratic += torch.dot(a.flatten(), d.flatten()).double()
        return (0.5 * self.lam * (quadratic + self.residual)).float()

    def gradient_terms(self) -> tuple[list[str], list[Tensor], list[Tensor]]:
        """The penalty's gradient lambda A (theta - mu) as its terms: (names, lambda A, mu).

        lambda A is cached until the anchors change, so a training step can add the gradient in its
        own pass over the weights (`agents.optimizer.RMSProp.step(pull=...)`), reading two tensors
        per weight: the fewest memory passes for this memory-bound term. The centred form keeps
        it exact near the anchors, where lambda A theta and lambda A mu would nearly cancel.
        """
        if self._scaled is None:
            self._scaled = [self.lam * a for a in self.precision.values()]
        return list(self.precision), self._scaled, list(self.mean.values())

    @torch.no_grad()
    def gradient_norms(self, model: nn.Module) -> dict[str, Tensor]:
        """The 2-norm of the penalty's gradient lambda * A * (theta - mu), per anchored parameter.

        Compared with the task loss's gradient on the same parameter, it says how strongly EWC
        pulls each layer back (a diagnostic: one pass over the anchored parameters).
        """
        named = dict(model.named_parameters())
        diffs = torch._foreach_sub([named[n].detach() for n in self.precision], list(self.mean.values()))
        torch._foreach_mul_(diffs, list(self.precision.values()))
        norms = torch._foreach_norm(diffs)
        return {name: self.lam * norm for name, norm in zip(self.precision, norms)}

    @torch.no_grad()
    def proximal_step(self, model: nn.Module, lr: float) -> None:
        """Exact implicit gradient step on the penalty: theta <- argmin ||theta - theta0||^2/(2 lr) + penalty.

        theta <- (theta + c mu) / (1 + c), c = lr * lambda * A. Unlike an explicit step, it is
        stable for any lambda (an explicit step diverges once lr * lambda * A > 2).
        """
        if not self.precision:
            return
        named = dict(model.named_parameters())
        for name, a in self.precision.items():
            c = lr * self.lam * a
            named[name].copy_((named[name] + c * self.mean[name]) / (1 + c))

    def to(self, device: torch.device | str) -> EWCPenalty:
        self.precision = {n: t.to(device) for n, t in self.precision.items()}
        self.mean = {n: t.to(device) for n, t in self.mean.items()}
        self._diffs = self._scaled = None
        return self

    def state_dict(self) -> dict[str, Any]:
        return {
            "lam": self.lam,
            "online": self.online,
            "gamma": self.gamma,
            "num_tasks": self.num_tasks,
            "residual": self.residual,
            "precision": {n: t.detach().cpu().clone() for n, t in self.precision.items()},
            "mean": {n: t.detach().cpu().clone() for n, t in self.mean.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore anchors; tensors stay on the device of the current anchors (or CPU: call `.to`)."""
        try:
            precision, mean = dict(state["precision"]), dict(state["mean"])
            lam, online, gamma = float(state["lam"]), bool(state["online"]), float(state["gamma"])
            num_tasks, residual = int(state["num_tasks"]), float(state["residual"])
        except (KeyError, TypeError) as err:
            raise UsageError(f"not an EWC penalty state: missing or bad entry {err}") from None
        if set(precision) != set(mean):
            raise UsageError("EWC state has different names in precision and mean")
        device = next(iter(self.precision.values())).device if self.precision else torch.device("cpu")
        self.lam, self.online, self.gamma = lam, online, gamma
        self.num_tasks, self.residual = num_tasks, residual
        self.precision = {n: t.to(device) for n, t in precision.items()}
        self.mean = {n: t.to(device) for n, t in mean.items()}
        self._diffs = self._scaled = None

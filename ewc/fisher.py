"""Diagonal Fisher information from per-sample gradients.

F_i = E_x E_{y ~ q(y|x)} [ (d log p(y|x) / d theta_i)^2 ]

The square is taken per sample, then averaged. (Squaring the gradient of a minibatch mean
is a common bug: it underestimates F by about the batch size.) Three choices of q:

- ``"exact"``: the model's own softmax, summed exactly over all classes (the true Fisher);
- ``"sample"``: one label per input drawn from the model's softmax (an unbiased estimate);
- ``"empirical"``: the data labels (the "empirical Fisher"; it is not the Fisher, and it
  is about 10x smaller on a well-fitted training set, so lambda does not carry over).

How it is computed. With logits z and p = softmax(z), d log p(y|x)/dz = e_y - p, so every
mode is a set of vectors v in logit space per sample, and the per-sample gradient is the
vector-Jacobian product J^T v. For ``exact`` we use v_y = sqrt(p_y) (e_y - p), one per class,
so that sum_y (J^T v_y)^2 = sum_y p_y (J^T (e_y - p))^2.

For ``nn.Linear`` and ``nn.Conv2d`` layers the per-sample squared gradient has a closed
form from the layer's input and the gradient at its output, both captured with hooks in
one batched forward and one batched backward per vector: no per-sample backward pass.
For linear layers it is not even materialised per sample: sum_n (g_n^2)^T (a_n^2).
Any other parameter (custom layers, grouped convolutions, weights used twice) falls back
to ``torch.func`` per-sample gradients, which is exact but slower. ``python -m perf.fisher_speed``
compares this against a plain per-sample loop and plain ``torch.func``.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common.errors import UsageError

FisherMode = Literal["exact", "sample", "empirical"]
MODES: tuple[str, ...] = ("exact", "sample", "empirical")


def diagonal_fisher(
    model: nn.Module,
    inputs: Tensor,
    *,
    mode: FisherMode = "exact",
    targets: Tensor | None = None,
    batch_size: int = 256,
    params: Iterable[str] | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """Mean over ``inputs`` of the per-sample squared gradient of log p(y|x).

    Args:
        model: ``model(inputs)`` returns logits of shape (N, C).
        inputs: a batch of N inputs, on any device (moved to the model's device chunk by chunk).
        mode: ``"exact"``, ``"sample"`` or ``"empirical"`` (see the module docstring).
        targets: integer labels (N,), required for ``"empirical"`` only.
        batch_size: chunk size; memory grows with it, the result does not depend on it.
        params: names (from ``model.named_parameters()``) to compute; default: every
            parameter that requires grad.
        generator: random source for ``"sample"``.

    Returns:
        ``{name: tensor shaped like the parameter}``, float32, on the parameter's device.
        The model is evaluated in eval mode (no dropout); its mode is restored afterwards.
    """
    if mode not in MODES:
        raise UsageError(f"unknown Fisher mode {mode!r}; choose one of {', '.join(MODES)}")
    if mode == "empirical":
        if targets is None:
            raise UsageError("mode='empirical' needs targets (the data labels)")
        if targets.shape[:1] != inputs.shape[:1]:
            raise UsageError(f"targets {tuple(targets.shape)} do not match inputs {tuple(inputs.shape)}")

    def vectors(logits: Tensor, rows: slice) -> list[Tensor]:
        labels = None if targets is None else targets[rows].to(logits.device)
        return _logit_vectors(logits, mode, labels, generator)

    return per_sample_squared_gradients(model, inputs, vectors, batch_size=batch_size, params=params)


def per_sample_squared_gradients(
    model: nn.Module,
    inputs: Tensor,
    output_vectors: Callable[..., list[Tensor]],
    *,
    batch_size: int = 256,
    params: Iterable[str] | None = None,
) -> dict[str, Tensor]:
    """Mean over ``inputs`` of sum_v (J_n^T v_n)^2: per-sample squared vector-Jacobian products.

    The primitive behind every diagonal Fisher here. ``output_vectors(outputs, rows)`` gets the
    model's outputs (N, C) for the chunk ``inputs[rows]`` and returns the vectors v (each (N, C))
    whose products with the per-sample Jacobians J_n = d outputs_n / d theta are squared and summed:
    for a log-likelihood they are its gradient with respect to the outputs (e.g. e_y - softmax(z)).
    Closed form for Linear / Conv2d layers, ``torch.func`` for any other parameter (module doc).
    """
    named = _selected_parameters(model, params)
    if inputs.ndim == 0 or inputs.shape[0] == 0:
        raise UsageError(f"inputs must be a non-empty batch, got shape {tuple(inputs.shape)}")
    if batch_size < 1:
        raise UsageError(f"batch_size must be positive, got {batch_size}")
    device = next(iter(named.values())).device
    totals = {name: torch.zeros_like(p, dtype=torch.float32) for name, p in named.items()}
    with _eval_mode(model):
        for start in range(0, inputs.shape[0], batch_size):
            rows = slice(start, start + batch_size)
            _accumulate_chunk(model, named, inputs[rows].to(device), functools.partial(output_vectors, rows=rows), totals)
    count = inputs.shape[0]
    fisher = {name: total / count for name, total in totals.items()}
    for name, value in fisher.items():
        if not torch.isfinite(value).all():
            raise UsageError(
                f"the Fisher of parameter {name!r} is not finite (NaN or inf): "
                "the model's outputs or weights have diverged"
            )
    return fisher


def _selected_parameters(model: nn.Module, params: Iterable[str] | None) -> dict[str, nn.Parameter]:
    all_named = dict(model.named_parameters())
    if params is None:
        named = {n: p for n, p in all_named.items() if p.requires_grad}
    else:
        wanted = list(params)
        unknown = [n for n in wanted if n not in all_named]
        if unknown:
            raise UsageError(f"unknown parameter names {unknown}; the model has {list(all_named)[:8]}...")
        named = {n: all_named[n] for n in wanted}
    if not named:
        raise UsageError("the model has no trainable parameters to compute a Fisher for")
    return named


@contextmanager
def _eval_mode(model: nn.Module):
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _logit_vectors(
    logits: Tensor, mode: str, targets: Tensor | None, generator: torch.Generator | None
) -> list[Tensor]:
    """Vectors v (each (N, C)) in logit space whose J^T v are the per-sample gradients to square."""
    probs = logits.detach().float().softmax(dim=1)
    if mode == "exact":
        root, eye = probs.sqrt(), torch.eye(probs.shape[1], device=probs.device)
        return [root[:, c : c + 1] * (eye[c] - probs) for c in range(probs.shape[1])]
    if mode == "sample":
        labels = torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(1).to(probs.device)
    else:
        labels = targets.long()
        if labels.min() < 0 or labels.max() >= probs.shape[1]:
            raise UsageError(f"targets must lie in [0, {probs.shape[1] - 1}]")
    return [F.one_hot(labels, probs.shape[1]).to(probs.dtype) - probs]


def _forward_logits(model: nn.Module, x: Tensor) -> Tensor:
    try:
        logits = model(x)
    except RuntimeError as err:  # shape mismatches surface as RuntimeError deep inside torch
        raise UsageError(f"the model cannot process inputs of shape {tuple(x.shape)}: {err}") from None
    if logits.ndim != 2 or logits.shape[0] != x.shape[0]:
        raise UsageError(
            f"the model must return logits of shape (N, C) for N={x.shape[0]} inputs, got {tuple(logits.shape)}"
        )
    return logits


# ---- closed-form per-sample squared gradients for standard layers ------------------------


def _closed_form_layers(model: nn.Module, named: dict[str, nn.Parameter]) -> dict[nn.Module, dict[str, str]]:
    """Layers whose selected parameters get the hook path: {module: {"weight"|"bias": full name}}."""
    layers: dict[nn.Module, dict[str, str]] = {}
    for module_name, module in model.named_modules():
        if type(module) is nn.Linear or (
            type(module) is nn.Conv2d
            and module.groups == 1
            and module.padding_mode == "zeros"
            and not isinstance(module.padding, str)
        ):
            prefix = f"{module_name}." if module_name else ""
            chosen = {kind: prefix + kind for kind in ("weight", "bias") if prefix + kind in named}
            if chosen:
                layers[module] = chosen
    return layers


def _layer_sq_grads(module: nn.Module, inputs: Tensor, grad_outs: list[Tensor]) -> dict[str, Tensor]:
    """Sum over the batch and over the logit vectors of per-sample squared gradients of `module`'s parameters."""
    if isinstance(module, nn.Linear) and inputs.ndim == 2:
        # sum_v (g_v ⊗ a)^2 = (sum_v g_v^2) ⊗ a^2: one matmul for all vectors of the exact mode
        g_sq = sum(g.square() for g in grad_outs)
        return {"weight": g_sq.T @ inputs.square(), "bias": g_sq.sum(0)}
    out = {"weight": 0.0, "bias": 0.0}
    if isinstance(module, nn.Linear):  # extra dims (e.g. sequence): a sample's gradient sums over them first
        a = inputs.reshape(inputs.shape[0], -1, inputs.shape[-1])
        for grad_out in grad_outs:
            g = grad_out.reshape(grad_out.shape[0], -1, grad_out.shape[-1])
            out["weight"] = out["weight"] + torch.einsum("nto,nti->noi", g, a).square().sum(0)
            out["bias"] = out["bias"] + g.sum(1).square().sum(0)
        return out
    # Conv2d: per-sample weight gradient = g_n (O x L) @ unfold(a_n)^T (L x I*k*k)
    cols = F.unfold(inputs, module.kernel_size, dilation=module.dilation, padding=module.padding, stride=module.stride)
    cols_t = cols.transpose(1, 2)
    for grad_out in grad_outs:
        g = grad_out.flatten(2)  # (N, O, L)
        out["weight"] = out["weight"] + torch.bmm(g, cols_t).square().sum(0).reshape(module.weight.shape)
        out["bias"] = out["bias"] + g.sum(2).square().sum(0)
    return out


def _accumulate_chunk(
    model: nn.Module,
    named: dict[str, nn.Parameter],
    x: Tensor,
    output_vectors: Callable[[Tensor], list[Tensor]],
    totals: dict[str, Tensor],
) -> None:
    layers = _closed_form_layers(model, named)
    calls: dict[nn.Module, list[tuple[Tensor, Tensor]]] = {m: [] for m in layers}  # (input, output) per call

    def capture(module, args, output):
        calls[module].append((args[0].detach(), output))
        # Hand a copy downstream so that an in-place op there (ReLU(inplace=True)) leaves the
        # tensor we differentiate against untouched.
        return output.clone()

    handles = [m.register_forward_hook(capture) for m in layers]
    try:
        with torch.enable_grad():
            logits = _forward_logits(model, x)
    finally:
        for handle in handles:
            handle.remove()
    vectors = output_vectors(logits)
    # A layer called more than once per forward (shared weights) has no per-call closed form,
    # and one whose output does not depend on its parameters has nothing to capture.
    hooked = {m: kinds for m, kinds in layers.items() if len(calls[m]) == 1 and calls[m][0][1].requires_grad}
    hooked_names = {full for kinds in hooked.values() for full in kinds.values()}
    if hooked:
        outputs = [calls[m][0][1] for m in hooked]
        grads_per_vector = [
            torch.autograd.grad(logits, outputs, grad_outputs=v.to(logits.dtype), retain_graph=True, allow_unused=True)
            for v in vectors
        ]
        for i, (module, kinds) in enumerate(hooked.items()):
            layer_input, output = calls[module][0]
            grads = [g[i].float() if g[i] is not None else torch.zeros_like(output, dtype=torch.float32)
                     for g in grads_per_vector]
            sq = _layer_sq_grads(module, layer_input.float(), grads)
            for kind, full in kinds.items():
                totals[full] += sq[kind]
    del logits  # free the graph before the fallback path runs its own forward passes
    fallback = [n for n in named if n not in hooked_names]
    if fallback:
        _accumulate_generic(model, {n: named[n] for n in fallback}, x, vectors, totals)


def _accumulate_generic(
    model: nn.Module, subset: dict[str, nn.Parameter], x: Tensor, vectors: list[Tensor], totals: dict[str, Tensor]
) -> None:
    """Exact per-sample squared gradients for any parameters, with torch.func (vmap over grad)."""
    from torch.func import functional_call, grad, vmap

    frozen = {n: p.detach() for n, p in model.named_parameters() if n not in subset}
    frozen.update(dict(model.named_buffers()))

    def directional(sub: dict[str, Tensor], sample: Tensor, v: Tensor) -> Tensor:
        logits = functional_call(model, {**frozen, **sub}, (sample.unsqueeze(0),))
        return (logits.squeeze(0) * v).sum()

    per_sample_grad = vmap(grad(directional), in_dims=(None, 0, 0))
    detached = {n: p.detach() for n, p in subset.items()}
    for v in vectors:
        grads = per_sample_grad(detached, x, v.to(x.device))
        for name, g in grads.items():
            totals[name] += g.float().square().sum(0)

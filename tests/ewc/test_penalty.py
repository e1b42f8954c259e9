"""EWCPenalty: the merged quadratic equals the naive per-task sum, at a cost independent of the task count."""
from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from common.errors import UsageError
from ewc import EWCPenalty, fisher_overlap


def random_task(model: nn.Module, seed: int) -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(seed)
    anchors = {n: p.detach() + torch.randn(p.shape, generator=g) for n, p in model.named_parameters()}
    fisher = {n: torch.rand(p.shape, generator=g) ** 3 for n, p in model.named_parameters()}
    first = next(iter(fisher))
    fisher[first].view(-1)[0] = 0.0  # an element no task cares about
    return anchors, fisher


def naive(lam: float, tasks: list[tuple[dict, dict]], model: nn.Module, names=None) -> torch.Tensor:
    total = 0.0
    for anchors, fisher in tasks:
        for n, p in model.named_parameters():
            if names is None or n in names:
                total = total + (fisher[n] * (p - anchors[n]).square()).sum()
    return 0.5 * lam * total


def test_merged_penalty_equals_naive_sum_with_same_gradient():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))
    ewc = EWCPenalty(lam=3.0)
    tasks = [random_task(model, s) for s in range(5)]
    for anchors, fisher in tasks:
        ewc.consolidate(anchors, fisher)
    merged = ewc.penalty(model)
    reference = naive(3.0, tasks, model)
    torch.testing.assert_close(merged, reference, rtol=1e-5, atol=1e-5)
    grad_merged = torch.autograd.grad(merged, list(model.parameters()))
    grad_naive = torch.autograd.grad(reference, list(model.parameters()))
    for a, b in zip(grad_merged, grad_naive):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert ewc.num_tasks == 5


def test_penalty_is_zero_at_a_single_anchor_and_before_any_task():
    model = nn.Linear(3, 2)
    ewc = EWCPenalty(lam=10.0)
    assert ewc.penalty(model).item() == 0.0
    ewc.consolidate(model, {n: torch.ones_like(p) for n, p in model.named_parameters()})
    assert ewc.penalty(model).item() == 0.0


def test_only_selected_parameters_are_anchored():
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))
    shared = ["0.weight", "2.weight"]
    ewc = EWCPenalty(lam=2.0, include=lambda name: name.endswith("weight"))
    tasks = [random_task(model, s) for s in range(2)]
    for anchors, fisher in tasks:
        ewc.consolidate(anchors, fisher)
    assert set(ewc.precision) == set(shared)
    torch.testing.assert_close(ewc.penalty(model), naive(2.0, tasks, model, names=shared))
    ewc_list = EWCPenalty(lam=2.0, include=shared)
    for anchors, fisher in tasks:
        ewc_list.consolidate(anchors, fisher)
    torch.testing.assert_close(ewc_list.penalty(model), ewc.penalty(model))


def test_cost_does_not_grow_with_tasks():
    model = nn.Sequential(nn.Linear(256, 256), nn.Linear(256, 256))
    one, ten = EWCPenalty(lam=1.0), EWCPenalty(lam=1.0)
    one.consolidate(*random_task(model, 0))
    for s in range(10):
        ten.consolidate(*random_task(model, s))
    # same storage, whatever the number of tasks
    size = lambda e: sum(t.numel() for t in [*e.precision.values(), *e.mean.values()])  # noqa: E731
    assert size(one) == size(ten) == 2 * sum(p.numel() for p in model.parameters())

    def best_time(ewc: EWCPenalty) -> float:
        times = []
        for _ in range(30):
            start = time.perf_counter()
            ewc.penalty(model).backward()
            times.append(time.perf_counter() - start)
        return min(times)

    best_time(one)  # warm-up
    # a per-task implementation would take ~10x as long; the merged one takes the same time
    assert best_time(ten) < 2.0 * best_time(one)


def test_online_ewc_decays_fisher_and_keeps_latest_anchor():
    model = nn.Linear(3, 2)
    ewc = EWCPenalty(lam=1.0, online=True, gamma=0.5)
    (a1, f1), (a2, f2) = random_task(model, 1), random_task(model, 2)
    ewc.consolidate(a1, f1)
    ewc.consolidate(a2, f2)
    for n in f1:
        torch.testing.assert_close(ewc.precision[n], 0.5 * f1[n] + f2[n])
        torch.testing.assert_close(ewc.mean[n], a2[n])
    expected = 0.5 * sum(((0.5 * f1[n] + f2[n]) * (p - a2[n]).square()).sum() for n, p in model.named_parameters())
    torch.testing.assert_close(ewc.penalty(model), expected)


def test_proximal_step_minimises_the_penalty_exactly():
    model = nn.Linear(3, 2)
    ewc = EWCPenalty(lam=1e6)  # far beyond what an explicit step survives at lr 0.1
    anchors, fisher = random_task(model, 3)
    ewc.consolidate(anchors, fisher)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    ewc.proximal_step(model, lr=0.1)
    for n, p in model.named_parameters():
        c = 0.1 * 1e6 * fisher[n]
        torch.testing.assert_close(p.detach(), (start[n] + c * anchors[n]) / (1 + c))
        assert torch.isfinite(p).all()


def test_state_dict_round_trip():
    model = nn.Linear(3, 2)
    ewc = EWCPenalty(lam=4.0)
    for s in range(3):
        ewc.consolidate(*random_task(model, s))
    restored = EWCPenalty(lam=1.0)
    restored.load_state_dict(ewc.state_dict())
    assert restored.num_tasks == 3 and restored.lam == 4.0
    torch.testing.assert_close(restored.penalty(model), ewc.penalty(model))
    with pytest.raises(UsageError, match="not an EWC penalty state"):
        restored.load_state_dict({"precision": {}})


def test_clear_errors():
    model = nn.Linear(3, 2)
    ewc = EWCPenalty(lam=1.0)
    anchors, fisher = random_task(model, 0)
    with pytest.raises(UsageError, match="no entry"):
        ewc.consolidate(anchors, {"weight": fisher["weight"]})
    bad = dict(fisher, weight=torch.full_like(fisher["weight"], float("nan")))
    with pytest.raises(UsageError, match="finite"):
        ewc.consolidate(anchors, bad)
    with pytest.raises(UsageError, match="shape"):
        ewc.consolidate(anchors, dict(fisher, weight=torch.ones(5)))
    with pytest.raises(UsageError, match="lambda"):
        EWCPenalty(lam=-1.0)
    with pytest.raises(UsageError, match="online"):
        EWCPenalty(lam=1.0, gamma=0.9)


def test_fisher_overlap_properties():
    a = torch.tensor([1.0, 2.0, 0.0, 0.0])
    b = torch.tensor([0.0, 0.0, 3.0, 1.0])
    assert fisher_overlap(a, a * 7) == pytest.approx(1.0)
    assert fisher_overlap(a, b) == pytest.approx(0.0)
    c = torch.tensor([1.0, 1.0, 1.0, 1.0])
    assert fisher_overlap(a, c) == pytest.approx(fisher_overlap(c, a))
    assert 0.0 < fisher_overlap(a, c) < 1.0
    # diagonal Frechet formula written out: 1 - 1/2 tr(F1 + F2 - 2 sqrt(F1 F2)) on unit-trace Fishers
    fa, fc = a / a.sum(), c / c.sum()
    assert fisher_overlap(a, c) == pytest.approx(float(1 - 0.5 * (fa + fc - 2 * (fa * fc).sqrt()).sum()))
    assert fisher_overlap({"w": a, "b": c}, {"w": a, "b": c}) == pytest.approx(1.0)
    with pytest.raises(UsageError):
        fisher_overlap(a, torch.zeros(4))


def test_closed_form_gradient_matches_autograd():
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))
    ewc = EWCPenalty(lam=7.0, include=lambda name: name.endswith("weight"))
    for s in range(3):
        ewc.consolidate(*random_task(model, s))
    loss = model(torch.randn(8, 5)).square().mean()
    loss.backward(retain_graph=True)
    reference = {n: p.grad.clone() for n, p in model.named_parameters()}
    value = ewc.penalty(model)
    value.backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    loss.backward()
    closed = ewc.add_gradient_(model)
    torch.testing.assert_close(closed, value.detach())
    torch.testing.assert_close(ewc.value(model), value.detach())  # the logged value, from a scratch buffer
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[n])
        if n.endswith("bias"):  # not anchored: only the task loss's gradient
            torch.testing.assert_close(p.grad, reference[n])


def test_gradient_without_value_matches_and_follows_new_anchors():
    torch.manual_seed(6)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))
    ewc = EWCPenalty(lam=3.0)
    ewc.consolidate(*random_task(model, 0))
    for round_ in range(2):  # the cached products must be rebuilt after another consolidation
        model.zero_grad()
        ewc.penalty(model).backward()
        expected = {n: p.grad.clone() for n, p in model.named_parameters()}
        model.zero_grad()
        assert ewc.add_gradient_(model, with_value=False) is None
        for n, p in model.named_parameters():
            torch.testing.assert_close(p.grad, expected[n], rtol=1e-4, atol=1e-5)
        ewc.consolidate(*random_task(model, round_ + 1))

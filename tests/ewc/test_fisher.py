"""diagonal_fisher against a brute-force per-example, per-class reference."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from common.errors import UsageError
from ewc import diagonal_fisher


class ScaleShift(nn.Module):
    """A custom layer with no closed-form rule: forces the torch.func fallback."""

    def __init__(self, width: int):
        super().__init__()
        self.gain = nn.Parameter(torch.linspace(0.5, 1.5, width))
        self.shift = nn.Parameter(torch.linspace(-0.1, 0.1, width))

    def forward(self, x):
        return x * self.gain + self.shift


class Reused(nn.Module):
    """One Linear applied twice: its per-sample gradient is a sum, so the hook rule must not be used."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(6, 5)
        self.shared = nn.Linear(5, 5)
        self.out = nn.Linear(5, 4)

    def forward(self, x):
        h = torch.tanh(self.shared(torch.tanh(self.inp(x))))
        return self.out(torch.tanh(self.shared(h)))


def mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(6, 8), nn.ReLU(inplace=True), nn.Dropout(0.5), nn.Linear(8, 7), ScaleShift(7), nn.Tanh(), nn.Linear(7, 4)
    )


def convnet() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(3, 4, 2, dilation=2, bias=False), nn.ReLU(),
        nn.Flatten(), nn.Linear(4 * 3 * 3, 5),
    )


def brute_force(model: nn.Module, inputs: torch.Tensor, mode: str, targets=None, labels=None) -> dict[str, torch.Tensor]:
    """One backward per example and per class, squared, weighted by p(y|x) for the exact mode."""
    model.eval()
    named = dict(model.named_parameters())
    total = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in named.items()}
    for i in range(inputs.shape[0]):
        logp = model(inputs[i : i + 1]).log_softmax(1)[0]
        if mode == "exact":
            weighted = [(c, logp[c].exp().item()) for c in range(logp.shape[0])]
        else:
            weighted = [(int((targets if mode == "empirical" else labels)[i]), 1.0)]
        for c, weight in weighted:
            grads = torch.autograd.grad(logp[c], list(named.values()), retain_graph=True, allow_unused=True)
            for (n, _), g in zip(named.items(), grads):
                if g is not None:
                    total[n] += weight * g.double().square()
    return {n: (t / inputs.shape[0]).float() for n, t in total.items()}


def assert_close(actual: dict, expected: dict) -> None:
    assert set(actual) == set(expected)
    for name in expected:
        assert actual[name].shape == expected[name].shape, name
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-4, atol=1e-7, msg=name)


@pytest.mark.parametrize("make_model,shape", [(mlp, (6,)), (convnet, (2, 9, 9)), (Reused, (6,))])
@pytest.mark.parametrize("mode", ["exact", "empirical", "sample"])
def test_matches_brute_force(make_model, shape, mode):
    torch.manual_seed(0)
    model = make_model()
    x = torch.randn(23, *shape)
    with torch.no_grad():
        num_classes = model.eval()(x).shape[1]
    targets = torch.randint(0, num_classes, (23,))
    generator = torch.Generator().manual_seed(7)
    # the labels "sample" will draw, reproduced from the same generator and the same chunks (batch_size=10)
    labels = None
    if mode == "sample":
        replay = torch.Generator().manual_seed(7)
        with torch.no_grad():
            probs = model(x).softmax(1)
        labels = torch.cat([torch.multinomial(probs[s : s + 10], 1, generator=replay).squeeze(1) for s in range(0, 23, 10)])
    fisher = diagonal_fisher(model, x, mode=mode, targets=targets, batch_size=10, generator=generator)
    assert_close(fisher, brute_force(model, x, mode, targets=targets, labels=labels))


def test_batch_size_does_not_change_result_and_model_mode_is_restored():
    torch.manual_seed(1)
    model = mlp().train()
    x = torch.randn(50, 6)
    a = diagonal_fisher(model, x, batch_size=7)
    b = diagonal_fisher(model, x, batch_size=50)
    assert_close(a, b)
    assert model.training


def test_sampled_fisher_converges_to_exact():
    torch.manual_seed(2)
    model = mlp()
    x = torch.randn(40, 6).repeat(200, 1)  # many label draws per input
    exact = diagonal_fisher(model, x[:40])
    sampled = diagonal_fisher(model, x, mode="sample", generator=torch.Generator().manual_seed(0), batch_size=4000)
    for name in exact:
        rel = (sampled[name] - exact[name]).norm() / exact[name].norm()
        assert rel < 0.1, (name, rel)


def test_parameter_selection():
    model = mlp()
    fisher = diagonal_fisher(model, torch.randn(5, 6), params=["0.weight", "6.bias"])
    assert set(fisher) == {"0.weight", "6.bias"}


def test_clear_errors():
    model = mlp()
    with pytest.raises(UsageError, match="cannot process inputs of shape"):
        diagonal_fisher(model, torch.randn(5, 7))
    with pytest.raises(UsageError, match="no trainable parameters"):
        frozen = mlp().requires_grad_(False)
        diagonal_fisher(frozen, torch.randn(5, 6))
    with pytest.raises(UsageError, match="needs targets"):
        diagonal_fisher(model, torch.randn(5, 6), mode="empirical")
    with pytest.raises(UsageError, match="unknown Fisher mode"):
        diagonal_fisher(model, torch.randn(5, 6), mode="true")
    with pytest.raises(UsageError, match=r"logits of shape \(N, C\)"):
        diagonal_fisher(nn.Sequential(nn.Linear(6, 3), nn.Flatten(0)), torch.randn(5, 6))
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
    with pytest.raises(UsageError, match="not finite"):
        diagonal_fisher(model, torch.randn(5, 6))

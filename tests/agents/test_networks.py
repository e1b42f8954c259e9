"""QNetwork: the paper's shape, task-specific biases/gains isolated per task, shared-weight names."""
from __future__ import annotations

import pytest
import torch

from agents.dqn.networks import (
    NetworkConfig,
    QNetwork,
    TaskAffine,
    shared_parameter_names,
    task_parameter_names,
)
from common.errors import UsageError

SMALL = NetworkConfig(channels=(4, 8, 8), hidden=16, max_tasks=3, num_actions=5)


def frames(n: int, config: NetworkConfig = SMALL, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (n, config.frame_stack, *config.frame_shape)
    return torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)


def test_paper_network_has_6_56m_parameters_and_one_forward_works():
    net = QNetwork(NetworkConfig(max_tasks=1))
    params = dict(net.named_parameters())
    shared = sum(params[n].numel() for n in shared_parameter_names(net))
    # conv 4->32 8x8, 32->64 4x4, 64->128 3x3, FC 128*7*7 -> 1024, 1024 -> 18, all bias-free
    assert shared == 4 * 32 * 64 + 32 * 64 * 16 + 64 * 128 * 9 + 128 * 7 * 7 * 1024 + 1024 * 18 == 6_555_648
    per_task = 2 * (32 + 64 + 128 + 1024 + 18)
    total = sum(p.numel() for p in net.parameters())
    assert total == shared + per_task
    assert round(total / 1e6, 2) == 6.56
    q = net(frames(2, NetworkConfig()))
    assert q.shape == (2, 18) and q.dtype == torch.float32


def test_task_tables_are_preallocated_and_start_as_identity():
    net = QNetwork(SMALL)
    for module in net.modules():
        if isinstance(module, TaskAffine):
            assert module.bias.shape[0] == module.gain.shape[0] == SMALL.max_tasks
            assert torch.all(module.bias == 0) and torch.all(module.gain == 1)
    x = frames(3)
    assert torch.equal(net(x, 0), net(x, 2))  # identical until the task parameters are trained


def test_forward_shapes_set_task_and_per_sample_tasks():
    torch.manual_seed(0)
    net = QNetwork(SMALL)
    with torch.no_grad():
        net.out_task.bias[1] += 1.0  # make task 1 differ
    x = frames(4)
    assert net(x).shape == (4, SMALL.num_actions)
    assert net.task == 0
    net.set_task(1)
    assert net.task == 1
    torch.testing.assert_close(net(x), net(x, 1))
    assert not torch.allclose(net(x), net(x, 0))
    mixed = net(x, torch.tensor([0, 1, 1, 0]))
    torch.testing.assert_close(mixed[[0, 3]], net(x[[0, 3]], 0))
    torch.testing.assert_close(mixed[[1, 2]], net(x[[1, 2]], 1))


@pytest.mark.parametrize("bad_task", [-1, 3, 1.0, True])
def test_unknown_task_ids_raise(bad_task):
    net = QNetwork(SMALL)
    with pytest.raises(UsageError, match="task id"):
        net.set_task(bad_task)
    with pytest.raises(UsageError, match="task id"):
        net(frames(1), bad_task)
    with pytest.raises(UsageError, match="task ids"):
        net(frames(2), torch.tensor([0, SMALL.max_tasks]))


@pytest.mark.parametrize(
    "bad_input",
    [
        torch.zeros(2, 4, 84, 84),  # float: would silently be scaled twice or not at all
        torch.zeros(2, 3, 84, 84, dtype=torch.uint8),
        torch.zeros(4, 84, 84, dtype=torch.uint8),
    ],
)
def test_bad_frames_raise(bad_input):
    with pytest.raises(UsageError, match="uint8 frames"):
        QNetwork(SMALL)(bad_input)


def test_training_one_tasks_parameters_leaves_other_tasks_outputs_unchanged():
    torch.manual_seed(0)
    net = QNetwork(SMALL)
    x = frames(8)
    before = {task: net(x, task).detach().clone() for task in range(SMALL.max_tasks)}

    # A full backward on task 1 never reaches other tasks' rows...
    net(x, 1).square().mean().backward()
    for module in net.modules():
        if isinstance(module, TaskAffine):
            for table in (module.bias, module.gain):
                assert table.grad[1].abs().sum() > 0
                assert torch.all(table.grad[[0, 2]] == 0)
    net.zero_grad()

    # ...so training task 1's biases and gains changes task 1 only.
    params = dict(net.named_parameters())
    optimizer = torch.optim.RMSprop([params[n] for n in task_parameter_names(net)], lr=1e-2)
    for _ in range(5):
        optimizer.zero_grad()
        (net(x, 1) - 1.0).square().mean().backward()
        optimizer.step()
    after = {task: net(x, task).detach() for task in range(SMALL.max_tasks)}
    assert torch.equal(after[0], before[0]) and torch.equal(after[2], before[2])
    assert (after[1] - before[1]).abs().max() > 1e-3


def test_shared_parameter_names_are_the_weights_only():
    net = QNetwork(SMALL)
    shared = shared_parameter_names(net)
    assert shared == ["conv1.weight", "conv2.weight", "conv3.weight", "fc.weight", "out.weight"]
    task_specific = task_parameter_names(net)
    assert all(name.endswith((".bias", ".gain")) for name in task_specific)
    assert len(task_specific) == 10
    assert set(shared) | set(task_specific) == {n for n, _ in net.named_parameters()}
    assert not set(shared) & set(task_specific)

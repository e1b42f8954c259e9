"""The Q-network of the EWC paper's Atari agent, with task-specific biases and gains.

Every layer computes y = (W x + b_c) * g_c for the current task c: the weights W are
shared by all tasks (and are what EWC protects), while each task owns one row of biases
b (initialised 0) and gains g (initialised 1) per layer. The shared layers are plain
`nn.Conv2d` / `nn.Linear` modules with `bias=False`, so Fisher code that recognises those
layer types (the closed-form path of `ewc.diagonal_fisher`) applies to them unchanged.

Shape: convolutions (`channels`, `kernels`, `strides`, unpadded, ReLU), one hidden fully
connected layer, one output per action. The paper's Atari network: conv 32 8x8 stride 4,
conv 64 4x4 stride 2, conv 128 3x3 stride 1, FC 1024, 18 actions; 6,555,648 shared weights
plus 2 x 1,266 task-specific parameters per task. MinAtar's reference network: one conv 16
3x3 stride 1, FC 128, 6 actions. Inputs are stacks of uint8 frames: `frame_stack` frames of
`frame_shape`, (H, W) for grey screens or (C, H, W) for channel grids, fed as
`frame_stack * C` input channels.

The task used by `forward` is an attribute (`set_task`), so `model(inputs)` works for
code that only knows the generic `model(x) -> logits` interface (e.g. `diagonal_fisher`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common.errors import UsageError


@dataclass(frozen=True)
class NetworkConfig:
    """Shape of the Q-network; defaults are the paper's Atari network."""

    num_actions: int = 18  # the full ALE action set
    channels: tuple[int, ...] = (32, 64, 128)  # one entry per convolution
    kernels: tuple[int, ...] = (8, 4, 3)
    strides: tuple[int, ...] = (4, 2, 1)
    hidden: int = 1024
    max_tasks: int = 32  # rows preallocated for per-task biases/gains
    frame_stack: int = 4
    frame_shape: tuple[int, ...] = (84, 84)  # one frame: (H, W) or (C, H, W)

    @property
    def input_channels(self) -> int:
        return self.frame_stack * (self.frame_shape[0] if len(self.frame_shape) == 3 else 1)

    def feature_side(self) -> tuple[int, int]:
        """Height and width after the convolutions; UsageError if the frame is too small for them."""
        if not len(self.channels) == len(self.kernels) == len(self.strides) or not self.channels:
            raise UsageError(f"channels, kernels and strides must list one entry per convolution, got "
                             f"{list(self.channels)}, {list(self.kernels)}, {list(self.strides)}")
        if len(self.frame_shape) not in (2, 3):
            raise UsageError(f"frame_shape must be (H, W) or (C, H, W), got {list(self.frame_shape)}")
        height, width = self.frame_shape[-2:]
        for kernel, stride in zip(self.kernels, self.strides):
            height, width = (height - kernel) // stride + 1, (width - kernel) // stride + 1
        if height < 1 or width < 1:
            raise UsageError(f"frames of {list(self.frame_shape)} are too small for kernels {list(self.kernels)} "
                             f"and strides {list(self.strides)}")
        return height, width


class TaskAffine(nn.Module):
    """y = (x + b_c) * g_c per channel, with one row of biases and gains per task c."""

    def __init__(self, num_features: int, max_tasks: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(max_tasks, num_features))
        self.gain = nn.Parameter(torch.ones(max_tasks, num_features))

    def forward(self, x: Tensor, task: int | Tensor) -> Tensor:
        bias, gain = self.bias[task], self.gain[task]  # (C,) for one task, (N, C) for one task per sample
        shape = (-1 if bias.ndim == 2 else 1, bias.shape[-1]) + (1,) * (x.ndim - 2)  # broadcast over H, W
        return (x + bias.reshape(shape)) * gain.reshape(shape)


class QNetwork(nn.Module):
    """Q(s, .) for stacked uint8 frames (N, frame_stack, *frame_shape); scaled to [0, 1] inside."""

    def __init__(self, config: NetworkConfig = NetworkConfig()):
        super().__init__()
        if config.max_tasks < 1 or config.num_actions < 1 or config.hidden < 1 or config.frame_stack < 1:
            raise UsageError(f"max_tasks, num_actions, hidden and frame_stack must be positive: {config}")
        self.config = config
        height, width = config.feature_side()
        tasks, width_in = config.max_tasks, config.input_channels
        self.num_convs = len(config.channels)
        for i, (out, kernel, stride) in enumerate(zip(config.channels, config.kernels, config.strides), start=1):
            self.add_module(f"conv{i}", nn.Conv2d(width_in, out, kernel, stride=stride, bias=False))
            self.add_module(f"conv{i}_task", TaskAffine(out, tasks))
            width_in = out
        self.fc = nn.Linear(width_in * height * width, config.hidden, bias=False)
        self.fc_task = TaskAffine(config.hidden, tasks)
        self.out = nn.Linear(config.hidden, config.num_actions, bias=False)
        self.out_task = TaskAffine(config.num_actions, tasks)
        self.task = 0

    def set_task(self, task: int) -> None:
        """Select the task whose biases and gains `forward` uses when called without `task`."""
        self.task = self._checked_task(task)

    def forward(self, frames: Tensor, task: int | Tensor | None = None) -> Tensor:
        """Q-values (N, num_actions). `task`: an int, a (N,) integer tensor, or None for `self.task`."""
        self._check_frames(frames)
        task = self.task if task is None else self._checked_task(task)
        cfg = self.config
        x = (frames.float() / 255.0).reshape(len(frames), cfg.input_channels, *cfg.frame_shape[-2:])
        for i in range(1, self.num_convs + 1):
            x = F.relu(getattr(self, f"conv{i}_task")(getattr(self, f"conv{i}")(x), task))
        x = F.relu(self.fc_task(self.fc(x.flatten(1)), task))
        return self.out_task(self.out(x), task)

    def _check_frames(self, frames: Tensor) -> None:
        cfg = self.config
        expected = (cfg.frame_stack, *cfg.frame_shape)
        if frames.dtype != torch.uint8 or frames.ndim != 2 + len(cfg.frame_shape) or tuple(frames.shape[1:]) != expected:
            raise UsageError(
                f"QNetwork expects uint8 frames shaped (N, {', '.join(map(str, expected))}), "
                f"got {frames.dtype} {tuple(frames.shape)}"
            )

    def _checked_task(self, task: int | Tensor) -> int | Tensor:
        limit = self.config.max_tasks
        if isinstance(task, Tensor):
            if task.ndim != 1 or task.dtype not in (torch.int64, torch.int32):
                raise UsageError(f"a per-sample task tensor must be 1-D integer, got {task.dtype} {tuple(task.shape)}")
            if task.numel() and (int(task.min()) < 0 or int(task.max()) >= limit):
                raise UsageError(f"task ids must lie in [0, {limit - 1}] (max_tasks={limit})")
            return task.long()
        if isinstance(task, bool) or not isinstance(task, int) or not 0 <= task < limit:
            raise UsageError(f"task id must be an int in [0, {limit - 1}] (max_tasks={limit}), got {task!r}")
        return task


def layer_of(parameter_name: str) -> str:
    """The layer a parameter belongs to: 'conv1.weight' -> 'conv1'."""
    return parameter_name.rsplit(".", 1)[0] if "." in parameter_name else parameter_name


def shared_parameter_names(net: nn.Module) -> list[str]:
    """Names of the parameters shared by all tasks (the W's): everything outside a TaskAffine."""
    return [
        f"{module_name}.{param_name}" if module_name else param_name
        for module_name, module in net.named_modules()
        if not isinstance(module, TaskAffine)
        for param_name, _ in module.named_parameters(recurse=False)
    ]


def task_parameter_names(net: nn.Module) -> list[str]:
    """Names of the per-task bias and gain tables (shaped (max_tasks, C))."""
    shared = set(shared_parameter_names(net))
    return [name for name, _ in net.named_parameters() if name not in shared]

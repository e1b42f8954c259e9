"""Measurements behind `python run.py bench`: each function returns plain numbers for the JSON report.

Timing on a shared machine: other processes come and go, so figures that are compared with
each other (e.g. an update with and without the EWC penalty) are measured *interleaved*, in
short blocks taken in turn, and summarised by the median block; absolute rates are wall-clock
rates over a stated window.
"""
from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from agents.dqn.actor import EnvRunner
from agents.dqn.config import DQNConfig
from agents.dqn.fisher import q_network_fisher
from agents.dqn.learning import Learner, anchored_learner, synthetic_anchors
from agents.dqn.losses import to_tensors
from agents.dqn.networks import NetworkConfig, QNetwork
from agents.replay import Batch, FrameReplay, TransitionChunk
from common.errors import UsageError
from common.threads import torch_threads
from envs.settings import EnvSettings
from ewc import EWCPenalty, diagonal_fisher
from experiments.permuted_mnist import MLP

# ---- timing helpers ---------------------------------------------------------------------------


def interleaved_samples(
    fns: Mapping[str, Callable[[], Any]], *, seconds: float, block: int = 3, warmup: int = 2, min_rounds: int = 3
) -> dict[str, list[float]]:
    """Seconds per call of each function, one sample per turn of `block` calls, for about `seconds` in all.

    Turns (A, B, C, A, B, C, ...) expose every function to the same background load, so
    their ratios stay meaningful on a busy machine even when absolute times drift.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    start = time.perf_counter()
    rounds = 0
    while rounds < min_rounds or time.perf_counter() - start < seconds:
        for name, fn in fns.items():
            t = time.perf_counter()
            for _ in range(block):
                fn()
            samples[name].append((time.perf_counter() - t) / block)
        rounds += 1
    return samples


def interleaved_medians(fns: Mapping[str, Callable[[], Any]], **kwargs: Any) -> dict[str, float]:
    """Median seconds per call of each function, timed in turns (see `interleaved_samples`)."""
    return {name: statistics.median(values) for name, values in interleaved_samples(fns, **kwargs).items()}


def paired_ratio(samples: Mapping[str, list[float]], name: str, base: str) -> tuple[float, float]:
    """Median over turns of time(name) / time(base) within the same turn (slow drifts in load cancel),
    and its standard error (1.25 sigma / sqrt(n), the large-sample error of a median)."""
    ratios = [a / b for a, b in zip(samples[name], samples[base])]
    spread = statistics.stdev(ratios) if len(ratios) > 1 else float("nan")
    return statistics.median(ratios), 1.2533 * spread / len(ratios) ** 0.5


def rate(count: float, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("nan")


# ---- synthetic data ---------------------------------------------------------------------------


def empty_penalty_state(lam: float) -> dict[str, Any]:
    return EWCPenalty(lam).state_dict()


def fill_replay(buffer: FrameReplay, transitions: int, episode_length: int, seed: int = 0,
                pool: np.ndarray | None = None) -> None:
    """Write `transitions` transitions in episodes of `episode_length`, in 100-slot chunks as env actors do.

    Frames are drawn from `pool` (N, *frame_shape); without one, from random pixels, which cost the same
    to store and sample raw but do not compress: measure compressed replay on a game's frames."""
    rng = np.random.default_rng(seed)
    if pool is None:
        pool = rng.integers(0, 256, (64, *buffer.frame_shape), dtype=np.uint8)
    written = 0
    while written < transitions:
        n = min(episode_length, transitions - written)  # transitions in this episode: n + 1 slots
        starts = np.zeros(n + 1, bool)
        starts[0] = True
        ends = np.zeros(n + 1, bool)
        ends[-1] = True
        frames = pool[rng.integers(0, len(pool), n + 1)]
        actions = rng.integers(0, 6, n + 1)
        rewards = np.zeros(n + 1, np.float32)
        for lo in range(0, n + 1, 100):
            part = slice(lo, lo + 100)
            chunk = TransitionChunk(frames[part], starts[part], actions[part], rewards[part], ends[part], ends[part])
            buffer.add_chunk(chunk, source=0)
        written += n


# ---- the bare update: the compute limit of one Double-DQN + EWC step ---------------------------


class BareUpdate:
    """One Double-DQN update through `agents.dqn.Learner`'s own loss, gradient, clipping and RMSProp
    step (`td_gradient`, `clipped_step`) on a ready batch with a fixed EWC pull, without what
    `Learner.update` adds around them (batch checks, metrics, finiteness checks, target syncs) and
    without replay or actors: the compute limit. `compile_step` as in `Learner`."""

    def __init__(self, config: DQNConfig, *, ewc_tasks: int = 1, seed: int = 0, compile_step: bool = False,
                 device: str = "cpu"):
        self.learner = anchored_learner(config, ewc_tasks=ewc_tasks, seed=seed, compile_step=compile_step, device=device)
        self.pull = self.learner._ewc_pull() if ewc_tasks else None
        self.tensors = to_tensors(Batch.random(config.batch_size, config.network, seed=seed), self.learner.device)

    def __call__(self) -> None:
        _, grads, norm = self.learner.td_gradient(self.tensors, 0)
        self.learner.clipped_step(grads, float(norm), self.pull)  # the learner syncs on the norm too (metrics)
        if self.learner.device.type == "cuda":
            torch.cuda.synchronize()  # the step's queued GPU work belongs to this update's time


def update_ms_by_batch(config: DQNConfig, *, batch_sizes: tuple[int, ...], threads: int, seconds: float,
                       device: str) -> dict[str, Any]:
    """Milliseconds of a `BareUpdate` (EWC-anchored) at each batch size, with the eager and the compiled
    optimizer step, interleaved; and whether the compiled step did compile on this machine."""
    fns: dict[str, Callable[[], Any]] = {}
    compiled = []
    for batch_size in batch_sizes:
        sized = dataclasses.replace(config, batch_size=batch_size)
        fns[f"batch_{batch_size}_eager"] = BareUpdate(sized, device=device)
        fns[f"batch_{batch_size}_compiled_step"] = update = BareUpdate(sized, device=device, compile_step=True)
        compiled.append(update)
    medians = with_threads(threads, lambda: interleaved_medians(fns, seconds=seconds, block=2))
    out: dict[str, Any] = {f"update_ms_{name}": 1e3 * value for name, value in medians.items()}
    out["compiled_optimizer_step"] = all(update.learner.step_compiled for update in compiled)
    return out


def synced(fn: Callable[[], Any], device: str) -> Callable[[], Any]:
    """`fn`, then wait for the GPU's queued work, so that a timer around it counts that work too."""
    if device != "cuda":
        return fn

    def run() -> Any:
        result = fn()
        torch.cuda.synchronize()
        return result

    return run


def with_threads(threads: int, fn: Callable[[], Any]) -> Any:
    """Run `fn` with `threads` torch intra-op threads (restored afterwards)."""
    with torch_threads(threads):
        return fn()


def bare_updates_per_s(
    config: DQNConfig, *, threads: int, seconds: float, ewc_tasks: int = 1, compile_step: bool = False,
    device: str = "cpu",
) -> float:
    """Updates/s of `BareUpdate` with `threads` torch threads: 1 / median time of blocks of 3 updates
    over about `seconds` (a median shrugs off bursts of load from other processes)."""
    update = BareUpdate(config, ewc_tasks=ewc_tasks, compile_step=compile_step, device=device)
    median = with_threads(threads, lambda: interleaved_medians({"bare": update}, seconds=seconds, block=3))["bare"]
    return 1.0 / median


def learner_breakdown(
    config: DQNConfig, *, threads: int, seconds: float, replay_capacity: int = 20_000, compile_step: bool = False,
    device: str = "cpu",
) -> dict[str, float]:
    """Seconds per update, interleaved: `BareUpdate`, `Learner.update` on a ready batch, and replay
    sampling + `Learner.update` (what the learner actor's `train` does): where the overhead is.
    With `compile_step`, also the bare update with the eager optimizer step ("bare_eager"): what compiling gains."""
    bare = BareUpdate(config, ewc_tasks=1, compile_step=compile_step, device=device)
    learner = anchored_learner(config, compile_step=compile_step, device=device)
    batch = Batch.random(config.batch_size, config.network)
    replay = FrameReplay(replay_capacity, seed=0, n_step=config.n_step, gamma=config.gamma,
                         compression=config.replay_compression)
    fill_replay(replay, replay_capacity - replay_capacity // 100, episode_length=1000)

    def sampled() -> None:
        learner.update(replay.sample(config.batch_size), 0, report_penalty=False)

    fns: dict[str, Callable[[], Any]] = {
        "bare": bare,
        "learner_update": lambda: learner.update(batch, 0, report_penalty=False),
        "sample_and_update": sampled,
    }
    if compile_step:
        fns["bare_eager"] = BareUpdate(config, ewc_tasks=1, device=device)
    samples = with_threads(threads, lambda: interleaved_samples(fns, seconds=seconds, block=2))
    out: dict[str, Any] = {f"{name}_ms": 1e3 * statistics.median(values) for name, values in samples.items()}
    for name in fns:
        if name != "bare":
            out[f"{name}_over_bare"] = paired_ratio(samples, name, "bare")[0]
    out["compiled_optimizer_step"] = compile_step and learner.step_compiled
    return out


# ---- EWC overhead -----------------------------------------------------------------------------


def ewc_overhead(
    config: DQNConfig, *, threads: int, seconds: float, report_every_s: float | None = None, compile_step: bool = False,
    device: str = "cpu",
) -> dict[str, float]:
    """The EWC penalty's cost per `Learner.update`, merged from 1 and from 10 tasks, against no penalty.

    "tasks_1" / "tasks_10": whole `Learner.update` time with the penalty over the time without,
    minus 1: the median of paired ratios (one pair per turn of the interleaved timing), with its
    standard error ("*_stderr"). As in the learner actor, the penalty's value (for logging) is
    computed every `report_every_s` (training.services.PENALTY_REPORT_S), its gradient every update.
    "isolated_*": the penalty's own cost timed alone (what its gradient adds to the optimizer step,
    which takes it in its own pass over the weights, per update; the value step amortised) over
    the update time.
    """
    from training.services import PENALTY_REPORT_S

    report_every_s = PENALTY_REPORT_S if report_every_s is None else report_every_s
    net = QNetwork(config.network)
    batch = Batch.random(config.batch_size, config.network)
    penalties = {name: synthetic_anchors(net, n, config.ewc_lambda) for name, n in (("tasks_1", 1), ("tasks_10", 10))}
    states = {
        "none": (empty_penalty_state(config.ewc_lambda), []),
        "tasks_1": (penalties["tasks_1"].state_dict(), [1]),
        "tasks_10": (penalties["tasks_10"].state_dict(), list(range(1, 11))),
    }
    learners = {}  # one per case, so that no timed call pays for switching anchors
    for name, (state, tasks) in states.items():
        learners[name] = Learner(config, compile_step=compile_step, device=device)
        learners[name].set_anchors(state, tasks)
    last_report = {name: -float("inf") for name in states}

    def update_with(name: str) -> Callable[[], None]:
        def run() -> None:
            now = time.perf_counter()
            report = now - last_report[name] >= report_every_s
            if report:
                last_report[name] = now
            learners[name].update(batch, 0, report_penalty=report)

        return run

    def penalty_steps(name: str) -> tuple[Callable[[], None], Callable[[], None], Callable[[], None]]:
        """The optimizer step with and without the penalty's pull, and the penalty's value."""
        learner = learners[name]
        for p in learner.online.parameters():
            p.grad = torch.zeros_like(p)
        return (synced(lambda: learner._optimizer_step(learner._ewc_pull()), device),
                synced(learner._optimizer_step, device), synced(lambda: learner.ewc.value(learner.online), device))

    def measure() -> tuple[dict[str, list[float]], dict[str, float]]:
        updates = interleaved_samples({name: update_with(name) for name in states}, seconds=seconds, block=2)
        steps = {}
        for name in penalties:
            steps[f"pulled_step_{name}"], steps[f"step_{name}"], steps[f"value_{name}"] = penalty_steps(name)
        with torch.no_grad():
            parts = interleaved_medians(steps, seconds=min(4.0, seconds / 4), block=4)
        for name in penalties:
            parts[f"gradient_{name}"] = max(0.0, parts[f"pulled_step_{name}"] - parts[f"step_{name}"])
        return updates, parts

    updates, parts = with_threads(threads, measure)
    base = statistics.median(updates["none"])
    out: dict[str, float] = {}
    for name in penalties:
        ratio, error = paired_ratio(updates, name, "none")
        out[name] = ratio - 1.0
        out[f"{name}_stderr"] = error
    for name in penalties:
        per_update = parts[f"gradient_{name}"] + parts[f"value_{name}"] * base / report_every_s
        out[f"isolated_{name}"] = per_update / base
    out.update({
        "update_ms_no_penalty": 1e3 * base,
        "update_ms_tasks_1": 1e3 * statistics.median(updates["tasks_1"]),
        "update_ms_tasks_10": 1e3 * statistics.median(updates["tasks_10"]),
        "penalty_gradient_ms_tasks_1": 1e3 * parts["gradient_tasks_1"],
        "penalty_gradient_ms_tasks_10": 1e3 * parts["gradient_tasks_10"],
        "penalty_value_step_ms_tasks_1": 1e3 * parts["value_tasks_1"],
        "penalty_value_step_ms_tasks_10": 1e3 * parts["value_tasks_10"],
        "penalty_value_every_s": report_every_s,
        "turns": len(updates["none"]),
    })
    return out


# ---- replay -------------------------------------------------------------------------------------


def replay_figures(*, capacity: int, batch_size: int, seconds: float, game: str, compression: str,
                   episode_length: int = 1000, network: NetworkConfig = NetworkConfig(),
                   pool_frames: int = 500) -> dict[str, float]:
    """Bytes per stored transition of a full `FrameReplay` for `network`'s frames and its sampling rate
    (with frame stacking), against naive storage of both stacked states per transition as uint8.

    The buffer holds frames of `game` played by a random policy (`pool_frames` of them, drawn again and
    again): what compression saves depends on the pictures."""
    from envs.games import random_policy_frames

    pool = random_policy_frames(game, pool_frames, seed=0)
    buffer = FrameReplay(capacity, network.frame_shape, network.frame_stack, seed=0, compression=compression)
    fill_replay(buffer, capacity + capacity // 10, episode_length, pool=pool)  # past capacity: the steady state
    raw = FrameReplay(network.frame_stack + 1, network.frame_shape, network.frame_stack)
    naive = 2 * network.frame_stack * int(np.prod(network.frame_shape))  # state and next state, uint8
    per_transition = buffer.nbytes / len(buffer)
    count, start = 0, time.perf_counter()
    while count < 10 or time.perf_counter() - start < seconds:
        buffer.sample(batch_size)
        count += 1
    batches_per_s = rate(count, time.perf_counter() - start)
    return {
        "bytes_per_transition": per_transition,
        "bytes_per_slot": buffer.nbytes / capacity,
        "raw_bytes_per_slot": raw.bytes_per_transition,  # the same slots without compression
        "naive_stacked_bytes_per_transition": float(naive),
        "float32_grid_bytes_per_transition": 4.0 * naive,  # the same, as float32 (what a naive port stores)
        "saving_vs_naive": naive / per_transition,
        "compression": compression,
        "game": game,
        "capacity": capacity,
        "episode_length": episode_length,
        "sample_batches_per_s": batches_per_s,
        "sample_transitions_per_s": batches_per_s * batch_size,
    }


# ---- evaluation rounds ----------------------------------------------------------------------------


def eval_round_seconds(network: NetworkConfig, settings: EnvSettings, game: str, *, max_episode_frames: int,
                       one_at_a_time: int = 8, batched: int = 32, epsilon: float = 0.05) -> dict[str, float]:
    """Wall seconds of one evaluation round of `game` by an untrained network on one torch thread (as an
    evaluator actor has): `one_at_a_time` episodes played one after another (the earlier default, 8) and
    `batched` episodes played at once, one forward pass per step for all of them (today's default, 32)."""
    runner = EnvRunner(0, 1, network, settings, seed=0)
    out: dict[str, float] = {}
    with torch_threads(1):
        for name, episodes, parallel in (("one_at_a_time", one_at_a_time, 1), ("batched", batched, None)):
            started = time.perf_counter()
            runner.evaluate(game, 0, episodes, epsilon, max_episode_frames, parallel=parallel)
            out[f"{name}_s"] = time.perf_counter() - started
            out[f"{name}_episodes"] = episodes
    runner.close()
    out["batched_over_one_at_a_time"] = out["batched_s"] / out["one_at_a_time_s"]
    out["max_episode_frames"] = max_episode_frames
    return out


# ---- Fisher ---------------------------------------------------------------------------------------


def _timed(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # warm-up (allocations, first-call overheads)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def fisher_throughput(network: NetworkConfig, *, atari_samples: int, mnist_samples: int, repeats: int = 2) -> dict[str, float]:
    """Per-sample Fisher samples/s: the Atari Q-network (each kind) and the 784-400-400-10 MLP (each mode).

    Best of `repeats` runs (the least disturbed by other processes).
    """
    torch.manual_seed(0)
    net, target = QNetwork(network), QNetwork(network)
    batch = Batch.random(atari_samples, network)
    out: dict[str, float] = {"atari_samples": atari_samples, "mnist_samples": mnist_samples}
    for kind in ("softmax_exact", "softmax_sample", "td_empirical"):
        seconds = _timed(lambda: q_network_fisher(net, target, batch, 0, kind=kind), repeats)
        out[f"atari_{kind}_samples_per_s"] = atari_samples / seconds
    mlp = MLP((400, 400))
    x = torch.rand(mnist_samples, 784)
    labels = torch.randint(0, 10, (mnist_samples,))
    for mode in ("exact", "sample", "empirical"):
        targets = labels if mode == "empirical" else None
        seconds = _timed(lambda: diagonal_fisher(mlp, x, mode=mode, targets=targets), repeats)
        out[f"mnist_{mode}_samples_per_s"] = mnist_samples / seconds
    return out


# ---- env actors ------------------------------------------------------------------------------------


def raw_env_steps_per_s(game: str, seconds: float) -> float:
    """ALE with our preprocessing and random actions, in this process: the emulator's own limit."""
    from envs.atari import make_atari_env

    env = make_atari_env(game, seed=0)
    env.reset()
    rng = np.random.default_rng(0)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        _, _, terminated, truncated, _ = env.step(int(rng.integers(18)))
        if terminated or truncated:
            env.reset()
        count += 1
    env.close()
    return rate(count, time.perf_counter() - start)


def act_ms(network: NetworkConfig, seconds: float) -> float:
    """Milliseconds of one acting forward pass (batch 1, one thread), as an env actor does per step."""
    net = QNetwork(network).eval()
    state = torch.zeros(1, network.frame_stack, *network.frame_shape, dtype=torch.uint8)

    def forward() -> None:
        with torch.no_grad():
            net(state)

    return 1e3 * with_threads(1, lambda: interleaved_medians({"act": forward}, seconds=seconds, block=10))["act"]


def actor_scaling(
    game: str, network: NetworkConfig, *, counts: tuple[int, ...], seconds: float, chunk_steps: int, total_cpus: float
) -> dict[str, float]:
    """Env steps/s of 1, 2, 4... Ray env actors collecting with their network (no learner), all at once.

    Needs `ray.init`. Each actor is kept busy with two collect calls in flight; the rate is
    counted over `seconds` after a warm-up chunk.
    """
    import ray

    from training.actors import EnvActor

    out: dict[str, float] = {}
    for n in counts:
        cpus = min(1.0, total_cpus / n)
        actors = [EnvActor.options(num_cpus=cpus).remote(i, 1, network, EnvSettings(), seed=0) for i in range(n)]
        try:
            def collect(actor) -> Any:  # epsilon 1: random actions, but the network's forward pass still runs
                return actor.collect_split.remote(chunk_steps, 1.0, game, 0)[0]

            ray.get([collect(a) for a in actors])  # warm-up: game start-up, first chunk
            pending = {}
            for a in actors:
                for _ in range(2):
                    pending[collect(a)] = a
            steps, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                ready, _ = ray.wait(list(pending), num_returns=1)
                actor = pending.pop(ready[0])
                steps += ray.get(ready[0]).steps
                pending[collect(actor)] = actor
            elapsed = time.perf_counter() - start
            out[f"actors_{n}_env_steps_per_s"] = rate(steps, elapsed)
        finally:
            for a in actors:
                ray.kill(a)
    return out


def steady_rate(events: list[tuple[float, float]], start: float) -> tuple[float, float]:
    """(rate, window seconds) of a cumulative counter: least-squares slope of its events at or after `start`.

    Events are (time, cumulative count) taken when the counter changes. A slope over every
    arrival is steadier than (last - first) / time when arrivals come in chunks.
    """
    window = np.array([(t, c) for t, c in events if t >= start], dtype=np.float64)
    if len(window) < 3:
        raise UsageError("too few arrivals in the measurement window: raise --seconds")
    t, c = window[:, 0] - window[0, 0], window[:, 1]
    slope = float(np.polyfit(t, c, 1)[0])
    return slope, float(t[-1])

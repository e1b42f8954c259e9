"""Per-task replay buffers that store single uint8 frames and stack them at sampling time.

Storage. A `FrameReplay` is a circular array of *slots*. Slot n (the n-th write, kept at
index n % capacity) holds one frame plus the transition that produced it: the action,
the clipped reward and the terminal flag, and `previous[n]`, the write number of the
frame before it in the same episode (-1 when the frame opens an episode). An episode of
T transitions takes T + 1 slots: its first frame, then one slot per transition.

Why a link instead of "the slot before": many actors ship chunks into the same buffer,
so consecutive slots may belong to different actors. Following `previous` rebuilds each
actor's frame sequence wherever its chunks landed, without storing any frame twice.
A link to a write number older than `num_writes - capacity` points at a frame that has
been overwritten: transitions whose stacks would need it are never sampled.

Sampling the transition stored at write n gives
    state      = frames of writes (n-stack, ..., n-1) along the links,
    next_state = frames of writes (n-stack+1, ..., n),
with zeros in place of frames from before the episode's first frame (the same padding
`FrameStack` uses when acting). Terminal = no bootstrapping from next_state.

N-step returns (`n_step` N > 1). Sampling transition t (stored at write n) also walks its
episode forward for up to N - 1 more transitions, along `following` links (the write of the
next frame in the same episode), and returns
    rewards    = sum_{k < n'} gamma^k r_{t+k}   (the stored, clipped rewards)
    discounts  = gamma^n'                       (what multiplies the bootstrapped value)
    terminals  = 1 if one of those n' transitions was terminal (game over, or a lost life
                 that the actor marked terminal): the walk stops there, no bootstrapping
    next_state = the stack ending at the frame n' steps after t,
with n' <= N. With N = 1 this is the one-step transition above (discounts = gamma).
Where fewer than N transitions follow t without a terminal, n' is truncated to those stored
and the target bootstraps from the last of them, never treated as terminal: an episode cut by
a time limit or a new visit, and the newest transitions of an episode still being played
(their successors are not stored yet). Truncating keeps every stored transition sampleable
(no redraws, no bias against the newest data); a newest transition's return grows to N steps
as its episode goes on.

Memory: frame (84*84 = 7,056 B) + link 8 B + action 1 B + reward 4 B + terminal 1 B
= 7,070 B per slot, plus one slot per episode for its first frame; with N > 1 the forward
link adds 8 B per slot (it is rebuilt from the backward links when a buffer is loaded).

Compression (`compression="lz4"`, `LZ4Frames`): each frame is stored LZ4-compressed on its own,
as RLlib's `compress_observations` does, and decompressed when a sample needs it. Atari frames
are mostly flat areas: on random play of 14 ALE games a frame takes 210-1,370 B (high-compression
mode, level 4), i.e. 5-30x less, for ~20-40 us per frame written and ~1-2 us per frame read.
Compressing each frame apart keeps a slot independently readable and overwritable, which the
circular buffer and the per-source episode links need.
"""
from __future__ import annotations

import sys
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any

import lz4.block
import numpy as np

from agents.dqn.config import REPLAY_COMPRESSIONS, DQNConfig
from agents.dqn.networks import NetworkConfig
from common.errors import UsageError

EPISODE_START = -1  # `previous` of an episode's first frame
NEVER_WRITTEN = -2  # `previous` of a slot that holds nothing yet
NOT_FOLLOWED = -1  # `following` of a frame whose episode has no later frame stored (yet)
MAX_ACTIONS = 256  # actions are stored as uint8
MAX_REJECTION_ROUNDS = 1000  # redraws of unsampleable indices before giving up
SLOT_ARRAYS = ("previous", "actions", "rewards", "terminals")  # per-slot storage besides the frames
# A buffer's slots as saved (`FrameReplay.slots`): SLOT_ARRAYS plus its frames as the buffer keeps them, either
# "frames" (N, *frame_shape) raw, or LZ4-compressed as "frame_blobs" (the blobs back to back, uint8) and
# "frame_ends" (N,) where each blob ends in it. Either kind loads into either kind of buffer.
LZ4_LEVEL = 4  # high-compression level: 10-20% smaller than LZ4's fast mode, still ~30 us per Atari frame
# Memory is planned (before any frame is seen) at this fraction of a raw frame per compressed frame: the least
# compressible ALE games measured (Krull, SpaceInvaders) take about a fifth, most games far less
LZ4_PLANNED_SHARE = 0.2


@dataclass
class Batch:
    """A minibatch of transitions as numpy arrays (what the learner moves to its device)."""

    states: np.ndarray  # (B, stack, H, W) uint8
    actions: np.ndarray  # (B,) int64
    rewards: np.ndarray  # (B,) float32, the (n-step) discounted sum of clipped rewards
    terminals: np.ndarray  # (B,) float32, 1.0 = do not bootstrap from next_states
    discounts: np.ndarray  # (B,) float32, gamma^n': what multiplies the value bootstrapped from next_states
    next_states: np.ndarray  # (B, stack, H, W) uint8, n' steps after states

    def __len__(self) -> int:
        return len(self.actions)

    @classmethod
    def random(cls, batch_size: int, network: NetworkConfig, *, gamma: float = DQNConfig.gamma, seed: int = 0) -> Batch:
        """A replay-shaped batch of random frames for `network` (one-step discounts): what an update
        costs does not depend on the pixel values, so benchmarks and `run.py train --check` time these."""
        rng = np.random.default_rng(seed)
        frames = rng.integers(0, 256, (batch_size, network.frame_stack + 1, *network.frame_shape), dtype=np.uint8)
        return cls(
            states=np.ascontiguousarray(frames[:, :-1]),
            actions=rng.integers(0, network.num_actions, batch_size),
            rewards=rng.choice(np.array([-1.0, 0.0, 1.0], dtype=np.float32), batch_size),
            terminals=(rng.random(batch_size) < 0.01).astype(np.float32),
            discounts=np.full(batch_size, gamma, dtype=np.float32),
            next_states=np.ascontiguousarray(frames[:, 1:]),
        )

    @classmethod
    def concatenate(cls, batches: Iterable[Batch]) -> Batch:
        """One batch from several (e.g. the 100 minibatches a Fisher is computed from)."""
        batches = list(batches)
        if not batches:
            raise UsageError("cannot concatenate an empty list of batches")
        return cls(**{f.name: np.concatenate([getattr(b, f.name) for b in batches]) for f in fields(cls)})


@dataclass
class TransitionChunk:
    """Consecutive slots from one actor, in the replay's own layout (see the module docstring).

    `episode_starts[i]` marks frames[i] as an episode's first frame; every other frame is
    the next frame of a transition (actions[i], rewards[i], terminals[i]) from the frame
    before it. `episode_ends[i]` says the episode stops after transition i (game over or
    time limit), so the next slot must open a new episode. A chunk may begin mid-episode:
    its first frame then continues the same actor's previous chunk.
    """

    frames: np.ndarray  # (M, H, W) uint8
    episode_starts: np.ndarray  # (M,) bool
    actions: np.ndarray  # (M,) integer, ignored at episode starts
    rewards: np.ndarray  # (M,) float32, ignored at episode starts
    terminals: np.ndarray  # (M,) bool, ignored at episode starts
    episode_ends: np.ndarray  # (M,) bool, never set at episode starts

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def num_transitions(self) -> int:
        return int(len(self.frames) - np.count_nonzero(self.episode_starts))


class ChunkBuilder:
    """Collects an actor's transitions into `TransitionChunk`s (the actor-side half of `add_chunk`)."""

    def __init__(self, frame_shape: tuple[int, int] = (84, 84)):
        self.frame_shape = tuple(frame_shape)
        self._rows: list[tuple[np.ndarray, bool, int, float, bool, bool]] = []
        self._episode_open = False

    def start_episode(self, first_frame: np.ndarray) -> None:
        _check_frame(first_frame, self.frame_shape)
        self._rows.append((first_frame, True, 0, 0.0, False, False))
        self._episode_open = True

    def add(self, action: int, reward: float, terminal: bool, next_frame: np.ndarray, episode_end: bool) -> None:
        if not self._episode_open:
            raise UsageError("ChunkBuilder.add before start_episode (or after episode_end)")
        _check_frame(next_frame, self.frame_shape)
        self._rows.append((next_frame, False, int(action), float(reward), bool(terminal), bool(episode_end)))
        self._episode_open = not episode_end

    def __len__(self) -> int:
        """Slots collected so far (transitions plus episode-start frames)."""
        return len(self._rows)

    def take(self) -> TransitionChunk:
        """The collected slots as a chunk; the builder starts empty, the episode stays open."""
        if not self._rows:
            raise UsageError("ChunkBuilder.take on an empty builder")
        frames, starts, actions, rewards, terminals, ends = zip(*self._rows)
        self._rows = []
        return TransitionChunk(
            frames=np.stack(frames),
            episode_starts=np.array(starts, dtype=bool),
            actions=np.array(actions, dtype=np.int64),
            rewards=np.array(rewards, dtype=np.float32),
            terminals=np.array(terminals, dtype=bool),
            episode_ends=np.array(ends, dtype=bool),
        )


class FrameStack:
    """The acting-time state: the last `stack` frames, zero-padded at an episode's start like replay samples."""

    def __init__(self, stack: int = 4, frame_shape: tuple[int, int] = (84, 84)):
        self.frame_shape = tuple(frame_shape)
        self._frames = np.zeros((stack, *self.frame_shape), dtype=np.uint8)

    def reset(self, first_frame: np.ndarray) -> np.ndarray:
        _check_frame(first_frame, self.frame_shape)
        self._frames[:] = 0
        self._frames[-1] = first_frame
        return self._frames.copy()

    def push(self, frame: np.ndarray) -> np.ndarray:
        _check_frame(frame, self.frame_shape)
        self._frames[:-1] = self._frames[1:]
        self._frames[-1] = frame
        return self._frames.copy()


class RawFrames:
    """Frames as one preallocated uint8 array, indexed by slot (no compression)."""

    def __init__(self, capacity: int, frame_shape: tuple[int, ...]):
        self._array = np.zeros((capacity, *frame_shape), dtype=np.uint8)

    def __setitem__(self, slots: np.ndarray, frames: np.ndarray) -> None:
        self._array[slots] = frames

    def __getitem__(self, slots: np.ndarray) -> np.ndarray:
        return self._array[slots]

    @property
    def nbytes(self) -> int:
        return self._array.nbytes

    def export(self, slots: np.ndarray) -> dict[str, np.ndarray]:
        return {"frames": self._array[slots]}

    def load(self, slots: np.ndarray, saved: Mapping[str, np.ndarray]) -> None:
        self[slots] = saved["frames"] if "frames" in saved else _decompressed(saved, self._array.shape[1:])


class LZ4Frames:
    """Frames LZ4-compressed one by one (the module docstring), indexed by slot like `RawFrames`.

    Reading many slots decompresses each distinct slot once (a batch's stacks share most frames).
    `nbytes` counts what the compressed frames hold in memory now, Python object headers and the
    slot table included, so it grows as the buffer fills (an unwritten slot costs its table entry).
    """

    def __init__(self, capacity: int, frame_shape: tuple[int, ...]):
        self.frame_shape = tuple(frame_shape)
        self._frame_bytes = int(np.prod(self.frame_shape))
        self._empty = self._compress(np.zeros(self.frame_shape, dtype=np.uint8))  # one object for every unwritten slot
        self._blobs = np.empty(capacity, dtype=object)
        self._blobs.fill(self._empty)  # not np.full: it passes bytes through numpy's "S" type, dropping trailing zeros
        self._blob_bytes = 0  # of the written blobs

    def _compress(self, frame: np.ndarray) -> bytes:
        return lz4.block.compress(np.ascontiguousarray(frame).data, mode="high_compression",
                                  compression=LZ4_LEVEL, store_size=False)

    def __setitem__(self, slots: np.ndarray, frames: np.ndarray) -> None:
        self._replace(slots, [self._compress(frame) for frame in frames])

    def _replace(self, slots: np.ndarray, blobs: list[bytes]) -> None:
        replaced = self._blobs[slots]
        self._blob_bytes += sum(map(_object_bytes, blobs)) - sum(
            _object_bytes(blob) for blob in replaced if blob is not self._empty)
        self._blobs[slots] = blobs

    def __getitem__(self, slots: np.ndarray) -> np.ndarray:
        slots = np.asarray(slots)
        distinct, inverse = np.unique(slots, return_inverse=True)
        size = self._frame_bytes
        data = b"".join([lz4.block.decompress(blob, uncompressed_size=size) for blob in self._blobs[distinct]])
        frames = np.frombuffer(data, dtype=np.uint8).reshape(len(distinct), *self.frame_shape)
        return frames[inverse.reshape(slots.shape)]  # a fresh, writable array

    @property
    def nbytes(self) -> int:
        return self._blobs.nbytes + self._blob_bytes

    def export(self, slots: np.ndarray) -> dict[str, np.ndarray]:
        blobs = self._blobs[slots]
        return {"frame_blobs": np.frombuffer(b"".join(blobs), dtype=np.uint8),
                "frame_ends": np.cumsum([len(blob) for blob in blobs], dtype=np.int64)}

    def load(self, slots: np.ndarray, saved: Mapping[str, np.ndarray]) -> None:
        if "frames" in saved:
            self[slots] = saved["frames"]
            return
        self._replace(slots, _saved_blobs(saved))

    @classmethod
    def mean_compressed_bytes(cls, frames: np.ndarray) -> float:
        """What `frames` (N, *frame_shape) take here on average per frame, slot table and object header included."""
        store = cls(1, frames.shape[1:])
        blobs = [store._compress(frame) for frame in frames]
        return float(np.mean([_object_bytes(blob) for blob in blobs])) + store._blobs.itemsize


def _object_bytes(blob: bytes) -> int:
    return sys.getsizeof(blob)


def _saved_blobs(saved: Mapping[str, np.ndarray]) -> list[bytes]:
    """Saved LZ4 frames ("frame_blobs", "frame_ends") as one blob per slot."""
    data, ends = saved["frame_blobs"].tobytes(), saved["frame_ends"].tolist()
    return [data[start:end] for start, end in zip([0, *ends[:-1]], ends)]


def _decompressed(saved: Mapping[str, np.ndarray], frame_shape: tuple[int, ...]) -> np.ndarray:
    """Saved LZ4 frames ("frame_blobs", "frame_ends") as raw frames (N, *frame_shape)."""
    size = int(np.prod(frame_shape))
    raw = b"".join(lz4.block.decompress(blob, uncompressed_size=size) for blob in _saved_blobs(saved))
    return np.frombuffer(raw, dtype=np.uint8).reshape(saved_slot_count(saved), *frame_shape).copy()


def saved_slot_count(saved: Mapping[str, np.ndarray]) -> int:
    """How many slots a saved piece (`FrameReplay.slots`) holds."""
    return len(saved["frames"]) if "frames" in saved else len(saved["frame_ends"])


def _check_chunk(chunk: TransitionChunk, frame_shape: tuple[int, ...], source: Hashable,
                 open_sources: Mapping[Hashable, Any]) -> None:
    """A chunk's arrays agree in length and shape and its episode marks are consistent (`open_sources`: the
    sources whose episode the buffer holds open)."""
    size = len(chunk)
    if size == 0:
        raise UsageError("empty TransitionChunk")
    if chunk.frames.dtype != np.uint8 or chunk.frames.shape != (size, *frame_shape):
        raise UsageError(
            f"chunk frames must be uint8 shaped ({size}, {', '.join(map(str, frame_shape))}), "
            f"got {chunk.frames.dtype} {chunk.frames.shape}"
        )
    for name in ("episode_starts", "actions", "rewards", "terminals", "episode_ends"):
        if getattr(chunk, name).shape != (size,):
            raise UsageError(f"chunk.{name} must have shape ({size},), got {getattr(chunk, name).shape}")
    starts, ends = chunk.episode_starts.astype(bool), chunk.episode_ends.astype(bool)
    if not starts[0] and source not in open_sources:
        raise UsageError(f"chunk from source {source!r} continues an episode the buffer has not seen open")
    if np.any(starts & ends):
        raise UsageError("a chunk slot cannot both start and end an episode (an episode needs a transition)")
    if np.any(ends[:-1] & ~starts[1:]):
        raise UsageError("after an episode_end the next chunk slot must be an episode start")
    _check_actions(chunk.actions[~starts])
    _check_rewards(chunk.rewards[~starts])


def _read_state(state: Mapping[str, Any], layout: tuple, rng_state: dict) -> tuple[int, dict, dict, list]:
    """A FrameReplay state's (num_writes, open episodes, sampling stream, checked pieces), for a buffer of
    `layout` (capacity, frame_shape, stack) whose sampling stream is `rng_state`. A header without layout or
    sampling stream (a run's replay files alone) keeps the buffer's."""
    try:
        header, pieces = state["header"], list(state["pieces"])
        saved = (int(header.get("capacity", layout[0])), tuple(header.get("frame_shape", layout[1])),
                 int(header.get("stack", layout[2])))
        num_writes = int(header["num_writes"])
        open_episodes = dict(header.get("open_episodes", {}))
        rng_state = header.get("rng", rng_state)
        pieces = [(int(first), _saved_piece(arrays)) for first, arrays in pieces]
    except (KeyError, TypeError, ValueError) as err:
        raise UsageError(f"not a FrameReplay state: missing or bad entry {err}") from None
    for _, arrays in pieces:
        _check_saved_piece(arrays, layout[1])
    if saved != layout:
        raise UsageError(f"replay state has (capacity, frame_shape, stack) {saved}, this buffer has {layout}")
    return num_writes, open_episodes, rng_state, pieces


def _saved_piece(saved: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """A saved piece's arrays (KeyError if one is missing): SLOT_ARRAYS and its frames in either kind."""
    frames = ("frames",) if "frames" in saved else ("frame_blobs", "frame_ends")
    return {name: np.asarray(saved[name]) for name in (*frames, *SLOT_ARRAYS)}


def _check_saved_piece(saved: Mapping[str, np.ndarray], frame_shape: tuple[int, ...]) -> None:
    size = saved_slot_count(saved)
    if "frames" in saved:
        fits = saved["frames"].shape[1:] == frame_shape
    else:
        ends = saved["frame_ends"]
        fits = saved["frame_blobs"].ndim == 1 and (size == 0 or int(ends[-1]) == len(saved["frame_blobs"])) \
            and bool(np.all(np.diff(ends, prepend=0) > 0))
    if not fits or any(len(saved[name]) != size for name in SLOT_ARRAYS):
        shape = saved["frames"].shape[1:] if "frames" in saved else "compressed"
        raise UsageError(f"a saved replay piece holds frames shaped {shape} (this buffer: {frame_shape}), "
                         "damaged compressed frames or arrays of unequal lengths")


def _saved_subset(saved: Mapping[str, np.ndarray], keep: np.ndarray) -> dict[str, np.ndarray]:
    """The slots of a saved piece where `keep` (a bool mask) is True, in the same kind."""
    subset = {name: saved[name][keep] for name in SLOT_ARRAYS}
    if "frames" in saved:
        return {**subset, "frames": saved["frames"][keep]}
    kept = [blob for blob, keeps in zip(_saved_blobs(saved), keep.tolist()) if keeps]
    return {**subset, "frame_blobs": np.frombuffer(b"".join(kept), dtype=np.uint8),
            "frame_ends": np.cumsum([len(blob) for blob in kept], dtype=np.int64)}


def planned_bytes_per_slot(frame_shape: tuple[int, ...], stack: int, n_step: int, compression: str,
                           frame_bytes: float | None = None) -> float:
    """Bytes a slot of a FrameReplay will take: its exact layout raw; compressed, with `frame_bytes` per frame
    (`LZ4Frames.mean_compressed_bytes` of the frames to come) or, without it, `LZ4_PLANNED_SHARE` of a raw frame."""
    raw = FrameReplay(stack + 1, frame_shape, stack, n_step=n_step).bytes_per_transition
    if compression == "none":
        return raw
    raw_frame = float(np.prod(frame_shape))
    if frame_bytes is None:
        frame_bytes = LZ4_PLANNED_SHARE * raw_frame + _object_bytes(b"") + np.dtype(object).itemsize
    return raw - raw_frame + frame_bytes


def frame_store(compression: str, capacity: int, frame_shape: tuple[int, ...]) -> RawFrames | LZ4Frames:
    """Where a FrameReplay keeps its frames: `compression` is one of REPLAY_COMPRESSIONS."""
    if compression == "lz4":
        return LZ4Frames(capacity, frame_shape)
    if compression == "none":
        return RawFrames(capacity, frame_shape)
    raise UsageError(f"replay compression must be one of {', '.join(REPLAY_COMPRESSIONS)}, got {compression!r}")


class FrameReplay:
    """Circular replay of `capacity` slots (frames), sampled uniformly with stacking.

    Single-stream use: `start_episode(frame)`, then `add(...)` per agent step. Many actors:
    each ships `TransitionChunk`s with `add_chunk(chunk, source=actor_id)`; the buffer keeps,
    per source, where that source's open episode left off. Samples carry `n_step` returns
    discounted by `gamma`; `compression` "lz4" stores each frame compressed (the module docstring).
    """

    def __init__(
        self,
        capacity: int,
        frame_shape: tuple[int, int] = (84, 84),
        stack: int = 4,
        seed: int | np.random.SeedSequence | None = None,
        *,
        n_step: int = DQNConfig.n_step,
        gamma: float = DQNConfig.gamma,
        compression: str = "none",
    ):
        if stack < 1:
            raise UsageError(f"stack must be positive, got {stack}")
        if capacity < stack + 1:
            raise UsageError(
                f"capacity {capacity} cannot hold one stacked transition (needs >= stack + 1 = {stack + 1})"
            )
        if isinstance(n_step, bool) or not isinstance(n_step, (int, np.integer)) or n_step < 1:
            raise UsageError(f"n_step must be a positive integer, got {n_step!r}")
        if not 0.0 <= gamma <= 1.0:
            raise UsageError(f"gamma must lie in [0, 1], got {gamma}")
        self.capacity = int(capacity)
        self.frame_shape = tuple(int(s) for s in frame_shape)
        self.stack = int(stack)
        self.n_step = int(n_step)
        self.gamma = float(gamma)
        self._rng = np.random.default_rng(seed)
        self.compression = compression
        self._frames = frame_store(compression, self.capacity, self.frame_shape)
        self._previous = np.full(self.capacity, NEVER_WRITTEN, dtype=np.int64)
        self._actions = np.zeros(self.capacity, dtype=np.uint8)
        self._rewards = np.zeros(self.capacity, dtype=np.float32)
        self._terminals = np.zeros(self.capacity, dtype=bool)
        # write number of the next frame in the same episode; only n-step returns walk forward
        self._following = np.full(self.capacity, NOT_FOLLOWED, dtype=np.int64) if self.n_step > 1 else None
        self._num_writes = 0  # write n lives in slot n % capacity
        self._num_transitions = 0  # slots currently holding a transition (not an episode start)
        self._open_episodes: dict[Hashable, int] = {}  # source -> write number of its latest frame

    # ---- sizes ---------------------------------------------------------------------------

    def __len__(self) -> int:
        """Transitions currently stored (episode-start frames are not transitions)."""
        return self._num_transitions

    @property
    def num_writes(self) -> int:
        return self._num_writes

    @property
    def nbytes(self) -> int:
        """Bytes of the preallocated arrays."""
        arrays = (self._frames, self._previous, self._actions, self._rewards, self._terminals, self._following)
        return sum(a.nbytes for a in arrays if a is not None)

    @property
    def bytes_per_transition(self) -> float:
        return self.nbytes / self.capacity

    def ready(self, learning_starts: int, batch_size: int) -> bool:
        """Whether to train on this buffer: it holds `learning_starts` transitions or has filled up.

        Every episode's first frame takes a slot without being a transition, so a full buffer
        holds fewer than `capacity` transitions (the fewer, the shorter the episodes): a
        `learning_starts` near `capacity` would otherwise never be reached.
        """
        if len(self) < batch_size:
            return False
        return len(self) >= learning_starts or self._num_writes >= self.capacity

    def has_open_episode(self, source: Hashable) -> bool:
        """Whether a chunk from `source` may continue an episode here (else it must start one)."""
        return source in self._open_episodes

    # ---- writing -------------------------------------------------------------------------

    def start_episode(self, first_frame: np.ndarray, source: Hashable = 0) -> None:
        """Open an episode for `source`; an episode it still had open is cut there (like a time limit)."""
        _check_frame(first_frame, self.frame_shape)
        self._write(first_frame[None], np.array([EPISODE_START]), np.zeros(1), np.zeros(1), np.zeros(1, bool))
        self._open_episodes[source] = self._num_writes - 1

    def add(
        self,
        action: int,
        reward: float,
        terminal: bool,
        next_frame: np.ndarray,
        episode_end: bool,
        source: Hashable = 0,
    ) -> None:
        """Store one transition of `source`'s open episode; `episode_end` closes the episode."""
        if source not in self._open_episodes:
            raise UsageError(f"add() for source {source!r} without an open episode: call start_episode first")
        _check_frame(next_frame, self.frame_shape)
        _check_actions(np.array([action]))
        _check_rewards(np.array([reward], dtype=np.float32))
        previous = np.array([self._open_episodes[source]])
        self._write(next_frame[None], previous, np.array([action]), np.array([reward]), np.array([bool(terminal)]))
        self._close_or_continue(source, bool(episode_end))

    def add_chunk(self, chunk: TransitionChunk, source: Hashable = 0) -> None:
        """Store a chunk from `source` with one vectorised write."""
        _check_chunk(chunk, self.frame_shape, source, self._open_episodes)
        size = len(chunk)
        first_write = self._num_writes
        previous = np.arange(first_write - 1, first_write + size - 1, dtype=np.int64)  # the slot before, same chunk
        starts = chunk.episode_starts.astype(bool)
        if not starts[0]:
            previous[0] = self._open_episodes[source]  # continue this source's open episode
        previous[starts] = EPISODE_START
        self._write(chunk.frames, previous, chunk.actions, chunk.rewards, chunk.terminals)
        self._close_or_continue(source, bool(chunk.episode_ends[-1]))

    def _close_or_continue(self, source: Hashable, episode_end: bool) -> None:
        if episode_end:
            self._open_episodes.pop(source, None)
        else:
            self._open_episodes[source] = self._num_writes - 1

    def _write(
        self, frames: np.ndarray, previous: np.ndarray, actions: np.ndarray, rewards: np.ndarray, terminals: np.ndarray
    ) -> None:
        """Write slots for the next len(frames) write numbers, overwriting the oldest ones."""
        size = len(frames)
        keep = slice(max(0, size - self.capacity), size)  # a chunk larger than the buffer keeps its tail
        writes = np.arange(self._num_writes, self._num_writes + size)[keep]
        slots = writes % self.capacity
        self._num_transitions -= int(np.count_nonzero(self._previous[slots] >= 0))
        self._frames[slots] = frames[keep]
        self._previous[slots] = previous[keep]
        self._actions[slots] = actions[keep]
        self._rewards[slots] = rewards[keep]
        self._terminals[slots] = terminals[keep]
        self._num_transitions += int(np.count_nonzero(previous[keep] >= 0))
        self._num_writes += size
        if self._following is not None:
            self._following[slots] = NOT_FOLLOWED  # the overwritten frames' successors went with them
            self._link_forward(writes, previous[keep])

    def _link_forward(self, writes: np.ndarray, previous: np.ndarray) -> None:
        """Make each held predecessor in `previous` point forward to its write in `writes`."""
        held = previous >= max(0, self._num_writes - self.capacity)  # not an episode start, not overwritten
        self._following[previous[held] % self.capacity] = writes[held]

    # ---- sampling ------------------------------------------------------------------------

    def sample(self, batch_size: int) -> Batch:
        """Uniform sample (with replacement) of stored transitions whose stacks are intact."""
        if batch_size < 1:
            raise UsageError(f"batch_size must be positive, got {batch_size}")
        if batch_size > len(self):
            raise UsageError(f"batch_size {batch_size} exceeds the {len(self)} transitions stored in this buffer")
        oldest = max(0, self._num_writes - self.capacity)
        writes = self._rng.integers(oldest, self._num_writes, size=batch_size)
        window, ok = self._stack_window(writes)
        for _ in range(MAX_REJECTION_ROUNDS):  # episode starts and broken stacks are rare: redraw them
            if ok.all():
                break
            bad = np.flatnonzero(~ok)
            writes[bad] = self._rng.integers(oldest, self._num_writes, size=len(bad))
            window[bad], ok[bad] = self._stack_window(writes[bad])
        else:
            raise UsageError("could not draw transitions with intact frame stacks: is capacity far too small?")

        returns, terminals, steps, later = self._n_step_returns(writes)
        # Write numbers of the state's frames, t's next frame, then the frames up to n' steps on: one
        # gather serves both states. Frames after t are newer than t's, so none has been overwritten.
        sequence = np.concatenate([window, later], axis=1)  # (B, stack + n_step)
        frames = self._frames[sequence % self.capacity]
        frames[sequence < 0] = 0  # before the episode's first frame
        next_columns = steps[:, None] + np.arange(self.stack)  # the stack ending n' frames after the state's last
        return Batch(
            states=np.ascontiguousarray(frames[:, :self.stack]),
            actions=self._actions[writes % self.capacity].astype(np.int64),
            rewards=returns,
            terminals=terminals,
            discounts=(self.gamma ** steps).astype(np.float32),
            next_states=frames[np.arange(len(writes))[:, None], next_columns],
        )

    def _n_step_returns(self, writes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """For the transitions at `writes`: the discounted sum of rewards over n' <= n_step steps, whether one
        of them was terminal, n', and the write numbers of the n_step - 1 frames after each (the last one
        repeated past n').

        The walk stops after a terminal transition and where the episode has no later frame stored (a cut
        episode, or one still being played): the module docstring's truncation.
        """
        slots = writes % self.capacity
        returns = self._rewards[slots].astype(np.float64)
        terminal = self._terminals[slots].copy()
        steps = np.ones(len(writes), dtype=np.int64)
        later = np.empty((len(writes), self.n_step - 1), dtype=np.int64)
        last = writes
        for k in range(1, self.n_step):
            following = self._following[last % self.capacity]
            goes_on = ~terminal & (following >= 0)
            last = np.where(goes_on, following, last)
            slots = last % self.capacity
            returns += np.where(goes_on, self._rewards[slots].astype(np.float64) * self.gamma**k, 0.0)
            terminal |= goes_on & self._terminals[slots]
            steps += goes_on
            later[:, k - 1] = last
        return returns.astype(np.float32), terminal.astype(np.float32), steps, later

    def _stack_window(self, writes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Write numbers of frames n-stack..n along the links (-1 before an episode start), and validity.

        Valid: n is a transition (its previous frame exists) and no frame the stacks need has
        been overwritten.
        """
        oldest = self._num_writes - self.capacity
        window = np.empty((len(writes), self.stack + 1), dtype=np.int64)
        window[:, -1] = writes
        current = writes
        for column in range(self.stack - 1, -1, -1):
            linked = self._previous[np.maximum(current, 0) % self.capacity]
            current = np.where(current >= 0, linked, EPISODE_START)
            window[:, column] = current
        ok = window[:, -2] >= 0  # an episode's first frame is not a transition
        ok &= ~np.any((window >= 0) & (window < oldest), axis=1)  # the overwrite point cuts no stack
        return window, ok

    # ---- checkpoints ---------------------------------------------------------------------

    def header(self) -> dict[str, Any]:
        """What a saved buffer needs besides its slots: its layout, counters, open episodes, sampling stream
        (and, for the reader, the transitions it holds)."""
        return {"capacity": self.capacity, "frame_shape": self.frame_shape, "stack": self.stack,
                "num_writes": self._num_writes, "transitions": len(self), "open_episodes": dict(self._open_episodes),
                "rng": self._rng.bit_generator.state}

    def live_writes(self) -> tuple[int, int]:
        """The write numbers the buffer still holds: [first, stop)."""
        return max(0, self._num_writes - self.capacity), self._num_writes

    def slots(self, first: int, stop: int) -> dict[str, np.ndarray]:
        """Copies of the slots of writes [first, stop), in write order (all must still be held)."""
        held = self.live_writes()
        if not held[0] <= first <= stop <= held[1]:
            raise UsageError(f"writes [{first}, {stop}) are not all held (the buffer holds [{held[0]}, {held[1]}))")
        index = np.arange(first, stop) % self.capacity
        return {**self._frames.export(index), **{name: getattr(self, f"_{name}")[index] for name in SLOT_ARRAYS}}

    def state_dict(self) -> dict[str, Any]:
        """The whole buffer: its header and one piece holding every write it still holds."""
        first, stop = self.live_writes()
        return {"header": self.header(), "pieces": [(first, self.slots(first, stop))]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Refill from a header and pieces ((first write, slots) pairs) that cover every write it held."""
        num_writes, open_episodes, rng_state, pieces = _read_state(
            state, (self.capacity, self.frame_shape, self.stack), self._rng.bit_generator.state)
        first, stop = max(0, num_writes - self.capacity), num_writes
        covered = np.zeros(stop - first, dtype=bool)
        self._previous[:] = NEVER_WRITTEN
        for start, arrays in pieces:
            writes = np.arange(start, start + saved_slot_count(arrays))
            held = (writes >= first) & (writes < stop)
            slots, arrays = writes[held] % self.capacity, _saved_subset(arrays, held)
            self._frames.load(slots, arrays)
            for name in SLOT_ARRAYS:
                getattr(self, f"_{name}")[slots] = arrays[name]
            covered[writes[held] - first] = True
        if not covered.all():
            raise UsageError(f"the saved replay misses {int(np.count_nonzero(~covered))} of the writes "
                             f"[{first}, {stop}) it held")
        self._num_writes = num_writes
        self._num_transitions = int(np.count_nonzero(self._previous >= 0))
        if self._following is not None:  # not saved: the backward links say it all
            self._following[:] = NOT_FOLLOWED
            writes = np.arange(first, stop)
            self._link_forward(writes, self._previous[writes % self.capacity])
        self._open_episodes = open_episodes
        self._rng.bit_generator.state = rng_state


class TaskReplay:
    """One `FrameReplay` per task id (as FMN or the schedule reports it), created on first use."""

    def __init__(
        self,
        capacity_per_task: int,
        *,
        max_tasks: int,
        frame_shape: tuple[int, int] = (84, 84),
        stack: int = 4,
        seed: int = 0,
        n_step: int = DQNConfig.n_step,
        gamma: float = DQNConfig.gamma,
        compression: str = "none",
    ):
        if max_tasks < 1:
            raise UsageError(f"max_tasks must be positive, got {max_tasks}")
        self.capacity_per_task = capacity_per_task
        self.max_tasks = max_tasks
        self.frame_shape = tuple(frame_shape)
        self.stack = stack
        self.seed = seed
        self.n_step = n_step
        self.gamma = gamma
        self.compression = compression
        self._buffers: dict[int, FrameReplay] = {}

    def buffer(self, task: int) -> FrameReplay:
        """The task's buffer, allocated the first time the task is seen."""
        task = self._checked_task(task)
        if task not in self._buffers:
            # A seed per task that does not depend on the order in which tasks appear.
            seed = np.random.SeedSequence(self.seed, spawn_key=(task,))
            self._buffers[task] = FrameReplay(self.capacity_per_task, self.frame_shape, self.stack, seed,
                                              n_step=self.n_step, gamma=self.gamma, compression=self.compression)
        return self._buffers[task]

    def __contains__(self, task: int) -> bool:
        return task in self._buffers

    @property
    def tasks(self) -> list[int]:
        return sorted(self._buffers)

    def add_chunk(self, task: int, chunk: TransitionChunk, source: Hashable = 0) -> None:
        self.buffer(task).add_chunk(chunk, source)

    def sample(self, task: int, batch_size: int) -> Batch:
        task = self._checked_task(task)
        if task not in self._buffers:
            raise UsageError(f"no transitions stored for task {task}; tasks with data: {self.tasks}")
        return self._buffers[task].sample(batch_size)

    def ready(self, task: int, learning_starts: int, batch_size: int) -> bool:
        """`FrameReplay.ready` of the task's buffer (False before the task has any)."""
        return task in self._buffers and self._buffers[task].ready(learning_starts, batch_size)

    def num_transitions(self, task: int) -> int:
        return len(self._buffers[task]) if task in self._buffers else 0

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for b in self._buffers.values())

    def _checked_task(self, task: int) -> int:
        if isinstance(task, bool) or not isinstance(task, (int, np.integer)) or not 0 <= task < self.max_tasks:
            limit = self.max_tasks
            raise UsageError(f"task id must be an int in [0, {limit - 1}] (max_tasks={limit}), got {task!r}")
        return int(task)

    def state_dict(self) -> dict[str, Any]:
        return {"buffers": {task: buf.state_dict() for task, buf in self._buffers.items()}}

    @property
    def buffers(self) -> dict[int, FrameReplay]:
        """Task id -> its buffer, for the tasks seen so far."""
        return dict(self._buffers)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        try:
            buffers = dict(state["buffers"])
        except (KeyError, TypeError) as err:
            raise UsageError(f"not a TaskReplay state: missing or bad entry {err}") from None
        self._buffers = {}
        for task, buffer_state in buffers.items():
            self.buffer(int(task)).load_state_dict(buffer_state)


def _check_frame(frame: np.ndarray, frame_shape: tuple[int, ...]) -> None:
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.shape != frame_shape:
        got = f"{frame.dtype} {frame.shape}" if isinstance(frame, np.ndarray) else type(frame).__name__
        raise UsageError(f"frames must be uint8 arrays shaped {frame_shape}, got {got}")


def _check_actions(actions: np.ndarray) -> None:
    if not actions.size:
        return
    if not np.issubdtype(actions.dtype, np.integer) or actions.min() < 0 or actions.max() >= MAX_ACTIONS:
        raise UsageError(f"actions must be integers in [0, {MAX_ACTIONS - 1}], got {actions.dtype} values")


def _check_rewards(rewards: np.ndarray) -> None:
    if not np.all(np.isfinite(rewards)):
        raise UsageError("rewards must be finite")

"""Replay buffers in checkpoints, written incrementally and atomically.

A buffer's slots are numbered by write (`agents.replay.FrameReplay`), and a written slot never
changes afterwards: so the writes are saved in chunks of `logging.replay_chunk` slots, each
chunk once, as soon as it is complete (the trainer asks at every log line), and a checkpoint
adds only its tail:

    task<T>_<first>_<stop>.npz        a complete chunk
    task<T>_tail_<frames>_<writes>.npz the writes after the last complete chunk, at a checkpoint

under `checkpoints/replay/`, each written to a temporary name and renamed. The checkpoint file
(written after its tail, also atomically) holds the manifest: per task, the buffer's header (its
counters, open episodes and sampling stream) and the files that hold its live writes. A crash
while writing leaves every file an older checkpoint names as it was. A run resumed from a
checkpoint also takes the complete chunks written after it, so it starts with the replay the
lost run had, short of at most one chunk per task. After a checkpoint, a file no kept checkpoint
needs is removed: a tail by the frames in its name, a chunk once it lies wholly before the oldest
kept checkpoint's live writes.
"""
from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agents.replay import FrameReplay, TaskReplay, saved_slot_count
from common.errors import UsageError, free_bytes
from training.config import RunConfig, replay_bytes_per_transition

DIRECTORY = "replay"
FITS_SHARE = 0.5  # the replay files may take at most this share of the free disk: logs and checkpoints need room too
_CHUNK = re.compile(r"task(\d+)_(\d+)_(\d+)\.npz")
_TAIL = re.compile(r"task(\d+)_tail_(\d+)_(\d+)\.npz")


@dataclass
class ReplayExport:
    """What one checkpoint adds for one buffer (`export`)."""

    header: dict[str, Any]  # `FrameReplay.header()`
    chunks: list[tuple[int, dict[str, np.ndarray]]]  # (first write, slots) of each complete chunk not saved before
    tail: tuple[int, dict[str, np.ndarray]] | None  # the writes after the last complete chunk (at checkpoints)


def export(buffer: FrameReplay, saved_upto: int, chunk_slots: int, with_tail: bool = True) -> ReplayExport:
    """What `buffer` adds to its files: the complete chunks of `chunk_slots` writes from `saved_upto` on
    (the first one cut at the oldest write still held) and, `with_tail`, the writes after them."""
    first, stop = buffer.live_writes()
    boundary = stop // chunk_slots * chunk_slots
    start, chunks = max(saved_upto, first), []
    while start < boundary:
        end = (start // chunk_slots + 1) * chunk_slots
        chunks.append((start, buffer.slots(start, end)))
        start = end
    tail = max(boundary, first)
    return ReplayExport(buffer.header(), chunks, (tail, buffer.slots(tail, stop)) if with_tail else None)


def export_all(replay: TaskReplay, saved_upto: Mapping[int, int], chunk_slots: int,
               with_tail: bool = True) -> dict[int, ReplayExport]:
    """`export` of every task's buffer; `saved_upto` says where each one's saved chunks end."""
    return {task: export(buffer, saved_upto.get(task, 0), chunk_slots, with_tail)
            for task, buffer in replay.buffers.items()}


class ReplayFiles:
    """The replay files of one run's checkpoints (`directory` is the run's `checkpoints/`)."""

    def __init__(self, directory: Path, *, capacity: int, chunk_slots: int, enabled: bool = True):
        self.directory = directory / DIRECTORY
        self.capacity, self.chunk_slots = capacity, chunk_slots
        self.enabled = enabled  # whether checkpoints write them (a checkpoint that has them is read either way)
        self.bytes_written = 0  # by the last `write`
        self.saved_upto: dict[int, int] = {}  # task -> writes before this are in complete chunk files
        self._chunks: dict[int, list[str]] = {}  # task -> its chunk files, oldest first

    def write_chunks(self, exports: Mapping[int, ReplayExport]) -> None:
        """Save the complete chunks each buffer added since the last call."""
        self.bytes_written = 0
        if not any(export.chunks or export.tail for export in exports.values()):
            return  # the usual case at a log line: no chunk has filled since, and no directory scan is owed
        self.directory.mkdir(parents=True, exist_ok=True)
        for stale in self.directory.glob("*.tmp"):  # left by a write that was cut
            stale.unlink(missing_ok=True)
        for task, export in sorted(exports.items()):
            chunks = self._chunks.setdefault(task, [])
            for first, arrays in export.chunks:
                stop = first + saved_slot_count(arrays)
                chunks.append(self._save(f"task{task:02d}_{first:012d}_{stop:012d}.npz", first, arrays))
                self.saved_upto[task] = stop

    def write(self, exports: Mapping[int, ReplayExport], frames: int) -> dict[int, dict[str, Any]]:
        """Save what each buffer added since the last call, tails included; the manifest the checkpoint keeps."""
        self.write_chunks(exports)
        manifest = {}
        for task, export in sorted(exports.items()):
            first, arrays = export.tail
            writes = export.header["num_writes"]
            tail = self._save(f"task{task:02d}_tail_{frames:012d}_{writes:012d}.npz", first, arrays)
            live = max(0, writes - self.capacity)
            chunks = self._chunks[task] = [name for name in self._chunks[task] if _span(name)[1] > live]
            manifest[task] = {"header": export.header, "files": [*chunks, tail]}
        return manifest

    def read(self, manifest: Mapping[int, Mapping[str, Any]], fixed_tasks: Iterable[int] = ()) -> dict[str, Any]:
        """The `agents.replay.TaskReplay` state a manifest describes, with the complete chunks written after it
        (a lost run's last ones), also of `fixed_tasks` (ids that mean the same game in any run) it does not
        list; saving continues from there. Later files of a lost run that do not continue these are removed."""
        buffers = {}
        for task in sorted({int(t) for t in manifest} | set(fixed_tasks)):
            entry = manifest.get(task, {"header": {"num_writes": 0}, "files": []})
            header, names = dict(entry["header"]), list(entry["files"])
            pieces = [self._load(name) for name in names]
            chunks = [name for name in names if _CHUNK.fullmatch(name)]
            end = max((_span(n)[1] for n in chunks), default=pieces[-1][0] if pieces else 0)  # where the tail starts
            while (later := self._chunk_from(task, end)) is not None:
                chunks.append(later.name)
                pieces.append(self._load(later.name))
                end = _span(later.name)[1]
            if end > header["num_writes"]:  # the lost run's episodes were cut where its files end
                header.update(num_writes=end, open_episodes={})
            for path in self.directory.glob(f"task{task:02d}_*.npz"):
                match = _CHUNK.fullmatch(path.name)
                if match and int(match[2]) >= end:  # written by a lost run after a gap: not this buffer's
                    path.unlink(missing_ok=True)
            if pieces:
                buffers[task] = {"header": header, "pieces": pieces}
            self._chunks[task], self.saved_upto[task] = chunks, max((_span(n)[1] for n in chunks), default=0)
        for path in self.directory.glob("task*_*.npz"):  # a task the lost run found after the checkpoint
            if int(re.match(r"task(\d+)_", path.name)[1]) not in buffers:
                path.unlink(missing_ok=True)
        return {"buffers": buffers}

    def _chunk_from(self, task: int, first: int) -> Path | None:
        found = sorted(self.directory.glob(f"task{task:02d}_{first:012d}_*.npz"))
        return found[0] if found else None

    def prune(self, kept_frames: Iterable[int]) -> None:
        """Remove the files no kept checkpoint (given by its frames) needs."""
        kept = set(kept_frames)
        oldest_live: dict[int, int] = {}
        for path in self.directory.glob("task*_tail_*.npz"):
            task, frames, writes = map(int, _TAIL.fullmatch(path.name).groups())
            if frames in kept:
                oldest_live[task] = min(oldest_live.get(task, writes), max(0, writes - self.capacity))
            else:
                path.unlink(missing_ok=True)
        for path in self.directory.glob("task*_*.npz"):
            match = _CHUNK.fullmatch(path.name)
            if match and int(match[3]) <= oldest_live.get(int(match[1]), 0):
                path.unlink(missing_ok=True)

    def _save(self, name: str, first: int, arrays: Mapping[str, np.ndarray]) -> str:
        path = self.directory / name
        temporary = path.with_name(name + ".tmp")
        try:
            with open(temporary, "wb") as handle:
                np.savez(handle, first=np.int64(first), **arrays)
                handle.flush()
                os.fsync(handle.fileno())
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        os.replace(temporary, path)
        self.bytes_written += path.stat().st_size
        return name

    def _load(self, name: str) -> tuple[int, dict[str, np.ndarray]]:
        path = self.directory / name
        try:
            with np.load(path) as data:
                return int(data["first"]), {key: data[key] for key in data.files if key != "first"}
        except (OSError, KeyError, ValueError) as err:
            raise UsageError(f"replay file {str(path)!r} is missing or damaged ({type(err).__name__}: {err})") from None


def _span(name: str) -> tuple[int, int]:
    match = _CHUNK.fullmatch(name)
    return int(match[2]), int(match[3])


def for_run(config: RunConfig, directory: Path) -> tuple[ReplayFiles, str]:
    """The run's replay files (`directory`: its `checkpoints/`), written only where the disk has room for
    them, and the line that says so."""
    agent, logging, tasks = config.agent, config.logging, len(set(config.games))
    slots = agent.replay_capacity + (logging.keep_checkpoints + 1) * logging.replay_chunk  # + the older ones' files
    needed = tasks * slots * replay_bytes_per_transition(agent)  # the files keep frames as the buffers do
    free = free_bytes(next(p for p in (directory, *directory.parents) if p.exists()))
    fits = needed <= FITS_SHARE * free
    files = ReplayFiles(directory, capacity=agent.replay_capacity, chunk_slots=logging.replay_chunk,
                        enabled=logging.checkpoint_replay and fits)
    sizes = f"up to {needed / 2**30:.2f} GiB for {tasks} task(s), {free / 2**30:.1f} GiB free"
    if not logging.checkpoint_replay:
        return files, "checkpoints do not keep the replay buffers (logging.checkpoint_replay: false)"
    if fits:
        return files, f"checkpoints keep the replay buffers ({sizes})"
    return files, (f"checkpoints will not keep the replay buffers: the disk is too small ({sizes}); a resumed run "
                   "refills them (logging.checkpoint_replay: false silences this)")

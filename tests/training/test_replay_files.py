"""Replay files of checkpoints: each chunk written once, a checkpoint's files readable as long as it is kept,
nothing kept that no checkpoint needs, and a write cut short leaving the previous checkpoint whole."""
from __future__ import annotations

import numpy as np
import pytest

from agents.replay import FrameReplay
from common.errors import UsageError
from tests.agents.test_replay import draw
from tests.agents.test_replay import fill as fill_episodes
from training.replay_files import ReplayFiles, export


def fill(buffer: FrameReplay, steps: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    buffer.start_episode(rng.integers(0, 255, (84, 84), dtype=np.uint8))
    for t in range(steps):
        buffer.add(t % 4, 1.0, False, rng.integers(0, 255, (84, 84), dtype=np.uint8), episode_end=t == steps - 1)


def same_samples(a: FrameReplay, b: FrameReplay) -> bool:
    x, y = a.sample(16), b.sample(16)
    return all(np.array_equal(getattr(x, k), getattr(y, k)) for k in ("states", "actions", "rewards", "next_states"))


def checkpoint(files: ReplayFiles, buffer: FrameReplay, frames: int, kept: list[int], keep: int = 2) -> dict:
    manifest = files.write({0: export(buffer, files.saved_upto.get(0, 0), files.chunk_slots)}, frames)
    kept[:] = [*kept, frames][-keep:]
    files.prune(kept)
    return manifest


@pytest.mark.parametrize("compression", ["none", "lz4"])  # files keep frames as the buffer does
def test_chunks_are_written_once_and_pruned_when_no_kept_checkpoint_needs_them(tmp_path, compression):
    files = ReplayFiles(tmp_path, capacity=100, chunk_slots=30)
    buffer, kept, manifests = FrameReplay(100, seed=0, compression=compression), [], {}
    for frames, steps in ((1, 70), (2, 50), (3, 90)):  # the buffer wraps between the second and third
        written_before = {p.name: p.stat().st_mtime_ns for p in files.directory.glob("*.npz")}
        fill(buffer, steps, seed=frames)
        manifests[frames] = checkpoint(files, buffer, frames, kept)
        for name, mtime in written_before.items():  # a chunk file, once written, is never written again
            path = files.directory / name
            assert not path.exists() or path.stat().st_mtime_ns == mtime or "tail" in name
    names = {p.name for p in files.directory.iterdir()}
    needed = set(manifests[2][0]["files"]) | set(manifests[3][0]["files"])
    assert names == needed  # checkpoint 1's tail and the chunks wholly overwritten before checkpoint 2 are gone
    for frames in (2, 3):  # each kept checkpoint still reads back, the newest exactly as the buffer is
        restored = FrameReplay(100, seed=5, compression=compression)
        restored.load_state_dict(ReplayFiles(tmp_path, capacity=100, chunk_slots=30).read(manifests[frames])["buffers"][0])
        assert len(restored) == manifests[frames][0]["header"]["transitions"]
    assert same_samples(buffer, restored)


def test_a_resumed_run_saves_on_from_its_checkpoints_files_and_a_damaged_file_is_named(tmp_path):
    files = ReplayFiles(tmp_path, capacity=100, chunk_slots=30)
    buffer, kept = FrameReplay(100, seed=0), []
    fill(buffer, 70, seed=1)
    manifest = checkpoint(files, buffer, 1, kept)
    resumed = ReplayFiles(tmp_path, capacity=100, chunk_slots=30)
    restored = FrameReplay(100, seed=7)
    restored.load_state_dict(resumed.read(manifest)["buffers"][0])
    assert resumed.saved_upto == {0: 60}  # 71 writes: two complete chunks, and the tail's 11 after them
    fill(restored, 40, seed=2)
    later = checkpoint(resumed, restored, 2, kept)  # 112 writes: the buffer holds writes 12..111
    assert later[0]["files"] == ["task00_000000000000_000000000030.npz", "task00_000000000030_000000000060.npz",
                                 "task00_000000000060_000000000090.npz", "task00_tail_000000000002_000000000112.npz"]
    (files.directory / later[0]["files"][1]).write_bytes(b"not a zip")
    with pytest.raises(UsageError, match="task00_000000000030_000000000060.npz"):
        resumed.read(later)


def test_a_cut_write_leaves_no_partial_file_and_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    files = ReplayFiles(tmp_path, capacity=100, chunk_slots=30)
    buffer, kept = FrameReplay(100, seed=0), []
    fill(buffer, 40, seed=1)
    manifest = checkpoint(files, buffer, 1, kept)
    fill(buffer, 50, seed=2)
    calls = []

    def failing_savez(handle, **arrays):
        calls.append(1)
        if len(calls) == 2:
            handle.write(b"partial")
            raise OSError(28, "No space left on device")
        return real_savez(handle, **arrays)

    real_savez = np.savez
    monkeypatch.setattr(np, "savez", failing_savez)
    with pytest.raises(OSError):
        files.write({0: export(buffer, files.saved_upto[0], 30)}, 2)
    assert not list(files.directory.glob("*.tmp"))
    restored = FrameReplay(100, seed=3)
    restored.load_state_dict(ReplayFiles(tmp_path, capacity=100, chunk_slots=30).read(manifest)["buffers"][0])
    assert len(restored) == 58  # the checkpoint's 40, and the chunk [30, 60) completed before the cut


def test_a_run_keeps_its_replay_only_where_the_disk_has_room_and_says_so(tmp_path, monkeypatch):
    from tests.conftest import ROOT
    from training import replay_files
    from training.config import load_config

    config = load_config(ROOT / "configs" / "minatar.yaml")  # 3 games x (100,000 + 3 x 10,000) writes of ~1 KB
    files, line = replay_files.for_run(config, tmp_path / "run" / "checkpoints")
    assert files.enabled and line.startswith("checkpoints keep the replay buffers (up to 0.37 GiB for 3 task(s)")
    monkeypatch.setattr(replay_files, "free_bytes", lambda directory: 2**29)  # 0.5 GiB free: half is too little
    files, line = replay_files.for_run(config, tmp_path / "run" / "checkpoints")
    assert not files.enabled and "the disk is too small" in line and "0.5 GiB free" in line


def test_chunked_exports_rebuild_the_buffer_across_its_overwrite_point():
    """Three checkpoints' exports, the buffer wrapping between them: the chunks saved once each, plus the last
    tail, refill a buffer that samples exactly as the original (the way a resumed run gets its replay)."""
    original, chunk = FrameReplay(capacity=20, seed=3), 8
    saved, pieces = 0, []
    for lengths in ([7, 9], [4, 6], [8, 3]):
        fill_episodes(original, lengths)
        added = export(original, saved, chunk)
        for first, slots in added.chunks:  # each complete chunk ends on a boundary and is saved only once
            stop = first + len(slots["frames"])
            assert first >= saved and stop % chunk == 0 and stop - first <= chunk
            saved = stop
        pieces += added.chunks
    first, tail = added.tail
    assert first == saved and first + len(tail["frames"]) == original.num_writes == 43
    restored = FrameReplay(capacity=20, seed=99)
    restored.load_state_dict({"header": added.header, "pieces": [*pieces, added.tail]})
    assert len(restored) == len(original)
    a, b = draw(original, 64), draw(restored, 64)
    for name in ("states", "actions", "rewards", "terminals", "next_states"):
        assert np.array_equal(getattr(a, name), getattr(b, name))
    with pytest.raises(UsageError, match="misses 3 of the writes"):
        FrameReplay(capacity=20).load_state_dict({"header": added.header, "pieces": pieces})


def test_a_resume_takes_the_chunks_written_after_its_checkpoint_and_drops_a_lost_runs_stray_files(tmp_path):
    files = ReplayFiles(tmp_path, capacity=100, chunk_slots=30)
    buffer, kept = FrameReplay(100, seed=0), []
    fill(buffer, 40, seed=1)  # writes 0..40
    manifest = checkpoint(files, buffer, 1, kept)  # chunk [0, 30) and a tail [30, 41)
    fill(buffer, 60, seed=2)  # writes 41..101: chunks [30, 60) and [60, 90) complete
    files.write_chunks({0: export(buffer, files.saved_upto[0], 30, with_tail=False)})
    stray = files.directory / "task00_000000000120_000000000150.npz"  # a lost run's, after a gap
    stray.write_bytes(b"not this buffer's")
    resumed = ReplayFiles(tmp_path, capacity=100, chunk_slots=30)
    restored = FrameReplay(100, seed=3)
    restored.load_state_dict(resumed.read(manifest)["buffers"][0])
    assert restored.num_writes == 90 and resumed.saved_upto == {0: 90} and not stray.exists()
    assert len(restored) == 88  # writes 0..89 less the two episodes' first frames
    for name, array in buffer.slots(2, 90).items():  # the original has overwritten writes 0 and 1 since
        np.testing.assert_array_equal(restored.slots(2, 90)[name], array)
    assert not restored.has_open_episode(0)  # the lost run's episode was cut where its files end
    other_task = files.directory / "task03_000000000000_000000000030.npz"  # a task the lost run found later
    other_task.write_bytes(b"a lost run's")
    ReplayFiles(tmp_path, capacity=100, chunk_slots=30).read(manifest)
    assert not other_task.exists()


def test_a_fixed_task_that_began_after_the_checkpoint_keeps_its_complete_chunks(tmp_path):
    files = ReplayFiles(tmp_path, capacity=100, chunk_slots=30)
    first_game, kept = FrameReplay(100, seed=0), []
    fill(first_game, 40, seed=1)
    manifest = checkpoint(files, first_game, 1, kept)  # a visit's begin: the next game has no buffer yet
    second_game = FrameReplay(100, seed=1)
    fill(second_game, 70, seed=2)  # writes 0..70: chunks [0, 30) and [30, 60) complete
    files.write_chunks({1: export(second_game, 0, 30, with_tail=False)})
    state = ReplayFiles(tmp_path, capacity=100, chunk_slots=30).read(manifest, fixed_tasks={0, 1})
    restored = FrameReplay(100, seed=3)
    restored.load_state_dict(state["buffers"][1])
    assert restored.num_writes == 60 and len(restored) == 59
    # an id that is not fixed (forget-me-not's) may mean another game in the new run: its files go
    assert 1 not in ReplayFiles(tmp_path, capacity=100, chunk_slots=30).read(manifest)["buffers"]
    assert not list(files.directory.glob("task01_*"))

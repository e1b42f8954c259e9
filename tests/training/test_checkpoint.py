"""Checkpoint files: atomic writes, the last K kept, a damaged file reported by name with a fallback."""
from __future__ import annotations

import pytest
import torch

from common.errors import UsageError
from training import checkpoint


def state(frames: int) -> dict:
    return checkpoint.make_state(config={"run_name": "x"}, counters={"frames": frames}, epsilon={}, task_ids={},
                                 current_task=0, learner={"w": torch.full((3,), float(frames))}, consolidation={})


def test_keeps_the_last_k_and_leaves_no_temporary_files(tmp_path):
    for frames in (100, 200, 300, 400):
        checkpoint.save(tmp_path, state(frames), frames, keep=2)
    files = checkpoint.list_checkpoints(tmp_path)
    assert [p.name for p in files] == ["ckpt_000000000300.pt", "ckpt_000000000400.pt"]
    assert not list(tmp_path.glob("*.tmp"))
    path, loaded = checkpoint.load_latest(tmp_path)
    assert path == files[-1] and loaded["counters"]["frames"] == 400


def test_corrupt_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys):
    for frames in (100, 200):
        checkpoint.save(tmp_path, state(frames), frames, keep=3)
    latest = checkpoint.list_checkpoints(tmp_path)[-1]
    latest.write_bytes(latest.read_bytes()[:50])  # truncated, as by a crash mid-copy
    path, loaded = checkpoint.load_latest(tmp_path)
    assert loaded["counters"]["frames"] == 100
    assert "ckpt_000000000200.pt" in capsys.readouterr().err  # the damaged file is named
    with pytest.raises(UsageError, match="corrupt or truncated"):
        checkpoint.load(latest)


def test_every_checkpoint_unreadable_or_none_is_a_clear_error(tmp_path):
    with pytest.raises(UsageError, match="no checkpoint"):
        checkpoint.load_latest(tmp_path)
    (tmp_path / "ckpt_000000000001.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UsageError, match="every checkpoint .* is unreadable"):
        checkpoint.load_latest(tmp_path)
    torch.save({"something": "else"}, tmp_path / "other.pt")
    with pytest.raises(UsageError, match="not a checkpoint of this trainer"):
        checkpoint.load(tmp_path / "other.pt")

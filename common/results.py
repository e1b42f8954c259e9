"""Result files and progress output shared by the `run.py` commands.

- `write_json_atomic` writes through a temporary file in the target directory and renames
  it into place, so an interrupted run never leaves a half-written result behind.
- `Progress` prints timestamped progress lines to stderr (stdout stays free for results);
  `quiet=True` silences it, which is what a command's `--quiet` flag should pass.
"""
from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, TextIO

from common.errors import UsageError


def _json_default(value: Any) -> Any:
    """Let numpy / torch scalars and arrays through `json.dump` without importing either."""
    if hasattr(value, "tolist"):  # numpy arrays and scalars, torch tensors
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"object of type {type(value).__name__} is not JSON serialisable")


def write_json_atomic(path: str | os.PathLike[str], data: Any, *, indent: int | None = 2) -> Path:
    """Write `data` as JSON to `path` atomically; create missing parent directories.

    NaN and infinity are rejected (they are not valid JSON and break other readers).
    Raises UsageError if the location cannot be written.
    """
    target = Path(path)
    if target.is_dir():
        raise UsageError(f"cannot write JSON to {target}: it is a directory")
    text = json.dumps(data, indent=indent, default=_json_default, allow_nan=False)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as err:
        raise UsageError(f"cannot write JSON to {target}: {err.strerror or err}") from err
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_name, 0o666 & ~umask)  # mkstemp makes it owner-only; result files are ordinary files
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return target


def format_duration(seconds: float) -> str:
    """Compact elapsed-time text: '42.1s', '3m05s', '1h02m'."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class Progress:
    """Progress lines `[  12.3s] message` on stderr, silenced by `quiet`.

    The clock starts when the object is created; `elapsed()` is available even when quiet,
    so callers can record run times in their results.
    """

    def __init__(self, *, quiet: bool = False, stream: TextIO | None = None, prefix: str = "") -> None:
        self.quiet = quiet
        self.stream = stream  # None: look up sys.stderr at print time (pytest's capsys swaps it)
        self.prefix = prefix
        self._start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self._start

    def __call__(self, message: str) -> None:
        if self.quiet:
            return
        stream = self.stream if self.stream is not None else sys.stderr
        stamp = format_duration(self.elapsed()).rjust(7)
        print(f"[{stamp}] {self.prefix}{message}", file=stream, flush=True)

"""Errors caused by the user's input, and the ones that stop a long run.

`run.py` prints a `UsageError` as one line and exits with code 2, without a traceback.
It subclasses ValueError so library callers can catch it the usual way.
"""

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

DISK_FULL = {errno.ENOSPC, errno.EDQUOT}


class UsageError(ValueError):
    """Bad input (unknown game, malformed config or data, wrong shapes): say what and how to fix it."""


class RunAborted(RuntimeError):
    """A long run had to stop (an actor died, training diverged): the message says why and how to resume.

    `run.py` prints it without a traceback and exits with code 1.
    """


def require(condition: bool, message: str) -> None:
    """Raise a UsageError with `message` unless `condition` holds (for validating user input)."""
    if not condition:
        raise UsageError(message)


def free_bytes(directory: Path) -> int:
    """Bytes an unprivileged process may still write on the file system holding `directory`."""
    stats = os.statvfs(directory)
    return stats.f_bavail * stats.f_frsize


@contextmanager
def disk_full_aborts(path: Path, what: str, after: str = "") -> Iterator[None]:
    """A full disk (or quota) while writing `what` to `path` stops the run with one message naming both
    (`RunAborted`) instead of a traceback from deep inside the writer; `after` says what is left."""
    try:
        yield
    except OSError as err:
        if err.errno not in DISK_FULL:
            raise
        raise RunAborted(f"the disk holding {path.parent} is full ({err.strerror}): could not write {what} "
                         f"({path.name}){after}") from None

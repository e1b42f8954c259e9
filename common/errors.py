"""Errors caused by the user's input.

`run.py` prints a `UsageError` as one line and exits with code 2, without a traceback.
It subclasses ValueError so library callers can catch it the usual way.
"""


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

"""Ray for a command: start a local instance or join a cluster (`run.py train`, `sweep` and `bench`)."""
from __future__ import annotations

import os
import tempfile

from common.errors import UsageError

# Set, to the reason, where starting Ray would be a mistake (the test suite's fast tier): `init_ray` refuses.
FORBID_RAY_ENV = "CONTINUAL_EWC_FORBID_RAY"


def set_ray_environment() -> None:
    """The settings Ray reads from the environment; some at `import ray`, so a command may set them first."""
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    # Ray starts workers at nice 15, so on a shared machine other jobs take the learner's core (the run's
    # bottleneck); normal priority for the workers of a local instance (a cluster's nodes set their own).
    os.environ.setdefault("RAY_worker_niceness", "0")


def init_ray(address: str | None = None, *, logging_level: str = "warning", log_to_driver: bool = True) -> None:
    """Join the Ray cluster at `address` (or RAY_ADDRESS, as in a Ray job), else start a local instance.

    `logging_level` is Ray's own; `log_to_driver` False keeps the workers' output off this terminal.
    """
    forbidden = os.environ.get(FORBID_RAY_ENV)
    if forbidden:
        raise RuntimeError(f"Ray may not start here ({FORBID_RAY_ENV}): {forbidden}")
    import ray

    set_ray_environment()
    if not (address or os.environ.get("RAY_ADDRESS")):  # neither given nor set for us (as in a Ray job)
        ray.init(include_dashboard=False, logging_level=logging_level, log_to_driver=log_to_driver)
        return
    # Ray's core logs every refused retry to stderr for its whole connection timeout; keep them, and
    # show them only if the connection succeeds (a refusal is then said in our one line).
    with tempfile.TemporaryFile() as held, os.fdopen(os.dup(2), "wb") as real_stderr:
        os.dup2(held.fileno(), 2)
        try:
            ray.init(address=address, logging_level=logging_level, log_to_driver=log_to_driver)
        except (ConnectionError, RuntimeError, ValueError) as err:
            target = address or os.environ.get("RAY_ADDRESS")
            raise UsageError(f"cannot join the Ray cluster at {target!r}: {cluster_error(err, target)}") from None
        else:
            held.seek(0)
            real_stderr.write(held.read())
        finally:
            real_stderr.flush()
            os.dup2(real_stderr.fileno(), 2)


def cluster_error(err: Exception, address: str | None) -> str:
    """Why joining a cluster failed, in one line: refused (token authentication) or nothing there."""
    text = " ".join(str(err).split())[:300]
    host, _, port = (address or "").replace("ray://", "").rpartition(":")
    if port.isdigit() and reachable(host, int(port)):
        return (f"{text} -- the head answers but refused this process: the cluster runs with token authentication "
                "(Ray's default) and this process's token is missing or wrong; set RAY_AUTH_MODE=token and "
                "RAY_AUTH_TOKEN (or the token file ~/.ray/auth_token) to the head's token")
    return f"{text} -- is the head running (ray start --head) and the address right?"


def reachable(host: str, port: int) -> bool:
    import socket

    try:
        with socket.create_connection((host or "127.0.0.1", port), timeout=3):
            return True
    except OSError:
        return False

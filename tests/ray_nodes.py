"""Throwaway Ray nodes for tests: free ports, and a teardown that kills only the processes a test started
(never `ray stop`, which would end every Ray on the machine)."""
from __future__ import annotations

import os
import signal
import socket
import sys
import time
from pathlib import Path

RAY = [sys.executable, "-m", "ray.scripts.scripts"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def own_agent_port() -> list[str]:
    """A node's dashboard agent on a free port: the default one may be taken by another Ray on this machine
    (a test run in parallel, a user's own)."""
    return [f"--dashboard-agent-listen-port={free_port()}"]


def processes_mentioning(marker: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def kill_all(marker: str) -> None:
    """End a throwaway cluster at once: nothing of it is kept, so no graceful shutdown to wait for."""
    for pid in processes_mentioning(marker):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 10
    while processes_mentioning(marker) and time.monotonic() < deadline:
        time.sleep(0.2)

"""Where our trainer's time goes: per-phase shares from py-spy samples of all its processes.

`ProfileWindow` is a trainer hook: once learning has run for `delay_s`, it starts one
`py-spy record --idle --format raw` per process (driver, learner, env actors) for `seconds`.
`phase_shares` then sorts every sample into a phase by the first rule (in `PHASES` order) whose
marker appears in its stack, and reports per phase the CPU seconds (samples not waiting) and
their share of the trainer's CPU time, plus each process's busy fraction.

py-spy is a development tool (the `test` extra installs it), not a dependency: `require_py_spy`
refuses without it. Sampling a process needs ptrace rights over it (the same user, and
`kernel.yama.ptrace_scope` 0 or root).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from common.errors import UsageError
from training.hooks import TrainerHook

RATE_HZ = 100  # py-spy samples per second per process

WAITING = "waiting"
# (phase, markers): a sample belongs to the first phase one of whose markers is in its stack; the last
# rule catches Ray's own work outside our calls (results pickled, arguments unpickled). A stack that
# ends in a wait (WAIT_FRAMES) is idle whatever called it.
PHASES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("replay sampling", ("TaskReplay.sample", "FrameReplay.sample")),
    ("update: forward passes", ("q_taken_and_targets",)),
    ("update: backward", ("Tensor.backward",)),
    ("update: optimizer and EWC", ("Learner._optimizer_step", "rmsprop_update_")),
    ("update: other (gradient norm, clipping, metrics)", ("Learner.update",)),
    ("replay add", ("LearnerService.add",)),
    ("weight sync", ("LearnerService.weights", "Learner.weights", "EnvRunner.set_weights")),
    ("acting forward pass", ("EnvRunner.act",)),
    ("env step", ("envs/minatar.py", "envs/atari.py", "minatar/", "ale_py")),
    ("actor bookkeeping (chunks, frame stacks)", ("EnvRunner.collect", "_EnvActor.")),
    ("learner bookkeeping (metrics, readiness)", ("LearnerService.",)),
    ("driver bookkeeping", ("Trainer.",)),
    ("Ray calls and transfers (serialisation)", ("ray/", "cloudpickle")),
)
# The innermost frame of a thread that is waiting, not working.
WAIT_FRAMES = ("Condition.wait", "Event.wait", "Queue.get", "Worker.main_loop", "wait (ray/_private/worker.py",
               "get (ray/_private/worker.py", "listen_error_messages", "Worker.print_logs", "select (selectors.py",
               "sleep", "_wait_once")


def require_py_spy() -> str:
    """The py-spy executable on PATH, or a usage error saying how to get it."""
    path = shutil.which("py-spy")
    if path is None:
        raise UsageError("--profile needs py-spy on PATH: pip install py-spy")
    return path


def classify(stack: str) -> str:
    """The phase of one py-spy raw stack ("frame;frame;...;innermost")."""
    innermost = stack.rsplit(";", 1)[-1]
    if any(marker in innermost for marker in WAIT_FRAMES):
        return WAITING
    for phase, markers in PHASES:
        if any(marker in stack for marker in markers):
            return phase
    return "other"


def read_raw(path: Path) -> dict[str, int]:
    """Samples per phase in one py-spy `--format raw` file (lines "stack count")."""
    counts: dict[str, int] = {}
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            phase = classify(stack)
            counts[phase] = counts.get(phase, 0) + int(count)
    return counts


def phase_shares(files: dict[str, Path], seconds: float, rate_hz: int = RATE_HZ) -> dict[str, Any]:
    """Per phase: CPU seconds over all processes and share of the total; per process: busy fraction
    of the window and its own phases. `files`: process role -> py-spy raw file."""
    total: dict[str, float] = {}
    processes: dict[str, Any] = {}
    for role, path in files.items():
        counts = read_raw(path)
        busy = {phase: n / rate_hz for phase, n in counts.items() if phase != WAITING}
        for phase, cpu_s in busy.items():
            total[phase] = total.get(phase, 0.0) + cpu_s
        processes[role] = {
            "busy_fraction": sum(busy.values()) / seconds,  # of one core (several threads can exceed 1)
            "phases_cpu_s": dict(sorted(busy.items(), key=lambda kv: -kv[1])),
        }
    cpu_total = sum(total.values())
    shares = {phase: cpu_s / cpu_total for phase, cpu_s in sorted(total.items(), key=lambda kv: -kv[1])}
    return {"seconds": seconds, "rate_hz": rate_hz, "cpu_s": cpu_total, "shares": shares, "processes": processes}


class ProfileWindow(TrainerHook):
    """Samples every process of the trainer with py-spy for `seconds`, `delay_s` after learning started."""

    def __init__(self, out_dir: Path, *, seconds: float, delay_s: float, say=print):
        self.out_dir, self.seconds, self.delay_s, self.say = Path(out_dir), seconds, delay_s, say
        self.py_spy = require_py_spy()
        self.files: dict[str, Path] = {}
        self._learning_since: float | None = None
        self._procs: list[subprocess.Popen] = []
        self._run_dir: Path | None = None

    def after_start(self, trainer) -> None:
        self._run_dir = trainer.run_dir

    def after_train(self, trainer, metrics) -> None:
        now = time.monotonic()
        if self._learning_since is None:
            self._learning_since = now
        if not self._procs and now - self._learning_since >= self.delay_s:
            self._start(self._pids())

    def _pids(self) -> dict[str, int]:
        placement = json.loads((self._run_dir / "actors.json").read_text())
        roles = {role: int(where["pid"]) for role, where in placement.items() if role.startswith(("learner", "env_actor"))}
        roles["driver"] = os.getpid()
        return roles

    def _start(self, pids: dict[str, int]) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.say(f"profile: sampling {', '.join(pids)} for {self.seconds:g} s into {self.out_dir}")
        for role, pid in pids.items():
            path = self.out_dir / f"{role}.txt"
            command = [self.py_spy, "record", "--idle", "--format", "raw", "-r", str(RATE_HZ),
                       "-d", str(int(self.seconds)), "-p", str(pid), "-o", str(path)]
            self._procs.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
            self.files[role] = path

    def finish(self, timeout_s: float = 60.0) -> dict[str, Any] | None:
        """Wait for the samplers; the phase shares, or None when nothing was sampled."""
        if not self._procs:
            return None
        errors = []
        for proc in self._procs:
            try:
                _, err = proc.communicate(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
            if proc.returncode:
                errors.append((err or b"").decode(errors="replace").strip().splitlines()[-1:])
        files = {role: path for role, path in self.files.items() if path.exists()}
        if not files:
            self.say(f"profile: py-spy wrote nothing ({errors})")
            return None
        return phase_shares(files, self.seconds)


def format_shares(result: dict[str, Any]) -> str:
    """A few lines for the terminal: shares of the trainer's CPU time, then each process's busy fraction."""
    lines = [f"  {share:6.1%}  {phase}" for phase, share in result["shares"].items()]
    lines += [f"  {role}: busy {process['busy_fraction']:.0%} of the window" for role, process in result["processes"].items()]
    return "\n".join(lines)

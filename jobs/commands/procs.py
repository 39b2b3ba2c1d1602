"""Child processes that can always be stopped: each in its own process group, tied to its parent's life."""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> Callable[[], None] | None:
    """On Linux, a child gets SIGTERM if its parent dies, even by SIGKILL (nothing is left orphaned).

    Runs between fork and exec, so it only makes two system calls (no locks, no allocation to speak of).
    """
    if not sys.platform.startswith("linux"):
        return None

    def preexec() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


@dataclass
class Child:
    name: str
    proc: subprocess.Popen

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)  # the leader's pid is the group id (start_new_session)
        except (ProcessLookupError, PermissionError):
            pass

    def wait(self, timeout: float, interrupted: threading.Event | None = None) -> bool:
        """Wait for the leader to exit; False if it is still running after ``timeout`` (or when interrupted)."""
        deadline = time.monotonic() + timeout
        while self.alive():
            if time.monotonic() >= deadline or (interrupted is not None and interrupted.is_set()):
                return False
            time.sleep(0.05)
        return True


def spawn(name: str, argv: list[str], env: dict[str, str], *, log: Path | None = None) -> Child:
    """Start ``argv`` in a new session (so a terminal's Ctrl-C reaches only us), output to ours or ``log``."""
    out = log.open("ab") if log is not None else None
    try:
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                start_new_session=True, preexec_fn=_die_with_parent(os.getpid()))
    finally:
        if out is not None:
            out.close()
    return Child(name, proc)


def stop_all(children: list[Child], timeout: float, forced: threading.Event | None = None) -> list[str]:
    """SIGTERM every child's group, give them ``timeout`` seconds together, then SIGKILL what is left.

    Returns the names of the children that had to be killed. Every group gets a final SIGKILL even
    when its leader exited cleanly, so no grandchild outlives it.
    """
    for child in children:
        if child.alive():
            child.signal_group(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    killed = []
    for child in children:
        if not child.wait(max(0.0, deadline - time.monotonic()), forced):
            killed.append(child.name)
        child.signal_group(signal.SIGKILL)
        child.proc.wait()
    return killed

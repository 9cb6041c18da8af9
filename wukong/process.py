"""Child processes that never outlive us: started one way, stopped one way.

Every child wukong starts (embedded Redis, local executor workers, the proxy,
the Lambda-compatible endpoint's workers) is started by ``spawn`` and stopped
by ``stop`` (terminate, wait, kill).  On Linux the kernel sends a child
SIGTERM when the *thread* that spawned it exits (``PR_SET_PDEATHSIG``), even
on SIGKILL of the whole process; so children are spawned from a thread that
lives as long as they should (the main thread, a worker's watcher thread, the
endpoint's loop thread).  Python children arm the signal themselves, first
thing (``die_with_parent``), which is safe from any thread; other programs
get it from a ``preexec_fn`` when spawned from the main thread.  Each child
gets its own process group, so a Ctrl-C in the terminal reaches us, and we
stop the children.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

_PR_SET_PDEATHSIG = 1


def _arm(sig: int) -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, sig)
    except Exception:
        pass


def _preexec() -> None:  # runs in the child between fork and exec
    _arm(signal.SIGTERM)
    os.setpgrp()


def spawn(argv: Sequence[str], **kwargs: Any) -> subprocess.Popen:
    """Start a child tied to this process's life (see the module docstring)."""
    on_main = threading.current_thread() is threading.main_thread()
    linux = sys.platform.startswith("linux")
    preexec = _preexec if linux and on_main else None
    return subprocess.Popen(list(argv), preexec_fn=preexec, start_new_session=not preexec, close_fds=True, **kwargs)


def die_with_parent(parent: int, sig: int = signal.SIGTERM) -> None:
    """In a Python child, first thing: end with ``sig`` when ``parent`` (its spawning thread) ends."""
    if sys.platform.startswith("linux"):
        _arm(sig)
    if os.getppid() != parent:  # the parent was already gone before the signal was armed
        os._exit(1)


def stop(procs: Sequence[subprocess.Popen], timeout: float = 3.0) -> None:
    """Terminate, wait (``timeout`` for all together), kill: nothing is left running."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL ``proc`` and its process group (what it started), when it leads one."""
    try:
        if os.getpgid(proc.pid) == proc.pid:
            os.killpg(proc.pid, signal.SIGKILL)
            return
    except (ProcessLookupError, PermissionError, AttributeError):
        pass
    proc.kill()


def frozen(pid: int) -> bool:
    """The process is stopped (SIGSTOP, a debugger): state ``T`` or ``t`` in ``/proc/<pid>/stat``."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rpartition(b")")[2].split()[0]
    except (OSError, IndexError):
        return False  # gone (its death is handled) or not Linux
    return state in (b"T", b"t")

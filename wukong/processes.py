"""Child processes that never outlive us.

Every child wukong starts (embedded Redis, local executor workers, the proxy,
the Lambda-compatible endpoint) is started through ``spawn``: on Linux the
kernel sends it SIGTERM when we die (``PR_SET_PDEATHSIG``), even on SIGKILL;
``stop`` terminates, waits, then kills.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from typing import Any

_PR_SET_PDEATHSIG = 1
_parent_pid = os.getpid()


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except Exception:
        pass
    os.setpgrp()  # Ctrl-C in a terminal goes to us, not to the children; we stop them


def spawn(argv: Sequence[str], **kwargs: Any) -> subprocess.Popen:
    """Start a child tied to this process's life (see module docstring).

    Called from a thread other than the main one, PR_SET_PDEATHSIG would fire
    when that thread exits, so children are started from the main thread or
    with ``preexec_fn`` only when on it.
    """
    on_main = threading.current_thread() is threading.main_thread()
    preexec = _die_with_parent if sys.platform.startswith("linux") and on_main else None
    return subprocess.Popen(list(argv), preexec_fn=preexec, close_fds=True, **kwargs)


def stop(procs: Sequence[subprocess.Popen], timeout: float = 3.0) -> None:
    """Terminate, wait, kill: nothing is left running."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()

"""A task's time limit (``client.get(..., task_timeout=)``)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class TaskTimeout(TimeoutError):
    """A task ran longer than the job's ``task_timeout``."""


@contextmanager
def task_timeout(seconds: float | None, key: Any) -> Iterator[None]:
    """Interrupt the task after ``seconds`` (SIGALRM: on the main thread only,
    as in local workers and Lambda handlers; elsewhere the limit is not enforced)."""
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise TaskTimeout(f"task {key!r} ran longer than {seconds}s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)

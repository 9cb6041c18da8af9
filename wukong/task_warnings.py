"""A task's warnings, caught on the executor to be re-issued on the client.

Dask's local schedulers run tasks in the user's process, so a task's
``warnings.warn`` reaches the user; wukong catches them on the executor,
sends them with the job's events, and the client re-issues each with
``warnings.warn_explicit`` (same message, category, file and line).

``warnings.catch_warnings`` swaps process-wide state and is not safe with
several executors running as threads of one process.  Instead
``warnings.showwarning`` -- called once a warning has passed the filters, so
the usual once-per-location rule holds -- is replaced once per process by a
function that appends the warning to the list of the invocation running on
the calling thread (``collect``), or shows it as before on any other thread.
"""

from __future__ import annotations

import threading
import warnings
from typing import Any

_local = threading.local()
_lock = threading.Lock()
_previous: Any = None


def collect(into: list | None) -> None:
    """From now on, warnings of this thread go to ``into`` (``None``: shown as usual)."""
    if _previous is None:
        _install()
    _local.into = into


def _install() -> None:
    global _previous
    with _lock:
        if _previous is None:
            _previous = warnings.showwarning
            warnings.showwarning = _show


def _show(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
    into = getattr(_local, "into", None)
    if into is None:
        _previous(message, category, filename, lineno, file, line)
    else:
        into.append(warnings.WarningMessage(message, category, filename, lineno, file, line))

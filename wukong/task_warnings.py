"""A task's warnings, caught on the executor to be re-issued on the client.

Dask's local schedulers run tasks in the user's process, so a task's
``warnings.warn`` reaches the user; wukong catches them on the executor,
sends them with the job's events, and the client re-issues each with
``warnings.warn_explicit`` (same message, category, file and line).

``warnings.catch_warnings`` swaps process-wide state and is not safe with
several executors running as threads of one process.  Instead
``warnings.showwarning`` -- called once a warning has passed the filters -- is
replaced once per process by a function that appends the warning to the list
of the invocation running on the calling thread (``collect``), or shows it as
before on any other thread.  One invocation sends each distinct warning once.

The user's filters are the client's, so the client decides what is shown:
a process that only runs executors (a local worker, a Lambda sandbox) lets
every warning through its own filters (``executor_process``), and the client
re-issues each with a registry per file (``reissue``), so the
once-per-location rule applies on the client as Dask's local schedulers apply
it, across jobs -- and a ``pytest.warns`` or ``catch_warnings`` block, which
resets those registries, sees every warning of its jobs, also one an executor
process has issued before.
"""

from __future__ import annotations

import threading
import warnings
from typing import Any

_local = threading.local()
_lock = threading.Lock()
_previous: Any = None


def executor_process() -> None:
    """This process runs executors only: every warning passes its filters (the client's decide)."""
    warnings.simplefilter("always")


def collect(into: list | None) -> None:
    """From now on, warnings of this thread go to ``into`` (``None``: shown as usual)."""
    if _previous is None:
        _install()
    _local.into = into
    _local.seen = set()


def reissue(message: str, category: type[Warning], filename: str, lineno: int) -> None:
    """On the client: issue a task's warning here, through this process's filters."""
    registry = _registries.setdefault(filename, {})  # as a module's ``__warningregistry__``
    warnings.warn_explicit(message, category, filename, lineno, registry=registry)


_registries: dict[str, dict] = {}


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
        return
    seen = (str(message), category, filename, lineno)
    if seen not in _local.seen:
        _local.seen.add(seen)
        into.append(warnings.WarningMessage(message, category, filename, lineno, file, line))

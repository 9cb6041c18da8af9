"""Errors that reach the user, and how a task's exception crosses processes.

A task's exception is caught on the executor, pickled with its formatted
traceback and the task's key, and re-raised on the client as a subclass of
both ``TaskError`` and the original type, so ``except ValueError`` still
works and the message carries the remote traceback (as ``dask.multiprocessing``
does).
"""

from __future__ import annotations

from typing import Any


class WukongError(Exception):
    """Base of wukong's own errors."""


class TaskError(WukongError):
    """A task failed on an executor; ``key`` names it, ``remote_traceback`` shows where."""

    key: Any = None
    what: str = "failed"
    remote_traceback: str = ""
    exception: BaseException | None = None

    def __str__(self) -> str:
        return f"task {self.key!r} {self.what}\n\nRemote traceback\n----------------\n{self.remote_traceback}"


class JobFailed(WukongError):
    """The job could not finish for a reason other than a task's exception."""


class JobCancelled(JobFailed):
    """The job was cancelled (``Client.cancel``)."""


class ValuesLost(JobFailed):
    """A value the job needs was held only in the memory of a worker process that is gone
    (a one-process local cluster keeps intermediates there, ``wukong.store.objects``);
    the client runs the job again once, its values stored as in any other cluster."""


_types: dict[type, type] = {}


def task_error(key: Any, what: str, exc: BaseException | None, tb: str) -> BaseException:
    """The exception to raise on the client for a failed task."""
    typ: type = TaskError
    if exc is not None and what == "raised":
        what = f"raised {type(exc).__name__}: {exc}"
        typ = _types.get(type(exc)) or _subclass(type(exc))
    elif exc is not None:
        what = f"{what}: {type(exc).__name__}: {exc}"
    err: Any = typ.__new__(typ)  # type: ignore[call-overload]
    err.args = exc.args if typ is not TaskError and exc is not None else (what,)
    if typ is not TaskError:
        err.__dict__.update(getattr(exc, "__dict__", {}))
    err.key, err.what, err.remote_traceback, err.exception = key, what, tb, exc
    return err


def _subclass(base: type) -> type:
    try:
        typ = type(base.__name__, (TaskError, base), {"__module__": base.__module__})
    except TypeError:  # final classes, layout conflicts: fall back to TaskError
        typ = TaskError
    _types[base] = typ
    return typ

"""A task's time limit (``client.get(..., task_timeout=)``), and ending a task that must stop."""

from __future__ import annotations

import ctypes
import mmap
import signal
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from wukong import protocol

if TYPE_CHECKING:
    from wukong.protocol import Keys
    from wukong.store import Batch


class TaskTimeout(TimeoutError):
    """A task ran longer than the job's ``task_timeout``."""


@contextmanager
def task_timeout(seconds: float | None, key: Any) -> Iterator[None]:
    """Interrupt the task after ``seconds``.

    On the main thread with SIGALRM, which also interrupts a blocking system
    call; on other threads (executors run as threads of a worker process) by
    raising ``TaskTimeout`` in the thread (``PyThreadState_SetAsyncExc``), which
    takes effect when the task next runs Python code: a task blocked in C is
    ended by its ``Guard`` instead, with its process.
    """
    if not seconds:
        yield
        return
    if threading.current_thread() is not threading.main_thread():
        with _interrupt_thread(seconds, key):
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


@contextmanager
def _interrupt_thread(seconds: float, key: Any) -> Iterator[None]:
    """Raise ``TaskTimeout`` in this thread after ``seconds``, unless the block has ended."""
    ident = threading.get_ident()
    lock = threading.Lock()
    running = [True]

    def expire() -> None:
        with lock:  # never once the block has ended: the exception would hit the executor
            if running[0]:
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(TaskTimeout))

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()
    try:
        try:
            yield
        finally:
            with lock:
                running[0] = False
            timer.cancel()
    except TaskTimeout as exc:  # raised as a bare class: give it the message
        if exc.args:
            raise
        raise TaskTimeout(f"task {key!r} ran longer than {seconds}s") from None


class TaskCancelled(BaseException):
    """Raised in a running task whose job was cancelled (``Interrupt``): a
    ``BaseException``, so that a task's own ``except Exception`` does not keep it."""


class Interrupt:
    """The task running in one executor's thread, to stop it when its job is cancelled.

    It is entered around the task's call; ``interrupt()`` (from the heartbeat
    thread) raises ``TaskCancelled`` in it, and only while it runs: in the
    thread (``PyThreadState_SetAsyncExc``, taking effect when the task next
    runs Python code) and, on the main thread, by ``SIGUSR2`` as well, whose
    handler raises it there, so that a blocking call (``time.sleep``, a read)
    ends too.  A task that neither returns to Python nor waits in an
    interruptible call is ended with its process by the ``Guard``, as before.
    The executor takes ``TaskCancelled`` for its job's cancel, wherever in the
    task's call it lands (or just after, as the task returned).
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ident: int | None = None  # the thread running a task, while it runs one
        self.main = threading.current_thread() is threading.main_thread()
        if self.main:
            signal.signal(signal.SIGUSR2, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.ident is not None:
            raise TaskCancelled()

    def __enter__(self) -> None:  # around a task's call: a method pair, cheaper than a generator
        with self.lock:
            self.ident = threading.get_ident()

    def __exit__(self, *exc: object) -> None:
        with self.lock:
            self.ident = None

    def interrupt(self) -> None:
        with self.lock:
            if self.ident is None:
                return
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self.ident), ctypes.py_object(TaskCancelled))
            if self.main:
                signal.pthread_kill(self.ident, signal.SIGUSR2)


GRACE_S = 2.0  # a task that must stop gets this long before its executor is ended
STUCK_EXIT = 78  # exit code of an executor ended because its task would not stop


class Guard:
    """Ends an executor whose running task must stop and will not.

    ``Client.cancel``, a job's ``timeout=``, Ctrl-C and a failed task set the
    job's cancel flag; executors stop before their next task, but a task
    that is running (in Python or in C: a deadlock, a long native call) is not
    interrupted by that, and ``task_timeout`` reaches only a task that returns
    to Python (or, on the main thread, waits in an interruptible system call).
    The heartbeat thread calls ``beat`` about every third of a lease; the first
    beat that sees the job cancelled interrupts the running task (``Interrupt``),
    which ends a task running Python code or waiting in a blocking call at once,
    its worker kept; when the job has been cancelled for ``GRACE_S``, or the same task has run
    ``GRACE_S`` past its ``task_timeout``, ``abandon`` reports the invocation's
    end (naming the task, for a timeout) and ends the process: the local
    backend starts a fresh worker at once.  A task that holds the GIL (a C
    call, a deadlock in C) starves the heartbeat thread and so the guard: the
    local cluster then ends the worker from its own process
    (``wukong.backends.stuck``, reading the worker's ``TaskBoard``).  Python
    cannot stop one thread, so where executors are threads of one worker
    process the others' invocations end with it; the cluster sends them again
    at once (they are in the process's processing list), so they are re-run,
    not lost.

    ``running()`` returns something that changes whenever a new task starts.
    """

    def __init__(
        self,
        cancel_key: str,
        timeout: float | None,
        running: Callable[[], Any],
        abandon: Callable[[str | None], None],
        interrupt: Callable[[], None] | None = None,
    ):
        self.cancel_key = cancel_key
        self.interrupt = interrupt
        self.timeout = timeout
        self.running = running
        self.abandon = abandon
        self.task: Any = None
        self.since = 0.0  # when ``task`` was first seen running
        self.cancelled_at: float | None = None

    def beat(self, cancelled: bool, now: float) -> None:
        task = self.running()
        if task != self.task:
            self.task, self.since = task, now
        if cancelled and self.cancelled_at is None:
            self.cancelled_at = now
            if self.interrupt is not None:  # a task in Python or a blocking call stops now
                self.interrupt()
        if self.cancelled_at is not None and now - self.cancelled_at >= GRACE_S:
            self.abandon(None)
        elif self.timeout and now - self.since > self.timeout + GRACE_S:
            self.abandon(would_not_stop(self.timeout))


def would_not_stop(timeout: float) -> str:
    """What the client is told of a task that outlived its ``task_timeout`` and was ended."""
    return f"exceeded its timeout of {timeout}s and did not stop; its executor was ended"


def report_ended(batch: Batch, keys: Keys, inv_id: str, key: Any, why: str | None) -> None:
    """An invocation ended because its task would not stop: ``why`` its task
    ``key`` failed (``None``: the job had been cancelled), its exit, its lease
    done.  Written by the executor itself (``Guard``) or, when the task starved
    it, by the local cluster that ended its process."""
    if why is not None:
        protocol.emit_error(batch, keys, key, why, None, "")
    protocol.emit_event(batch, keys, protocol.counts_fields(0, exited=inv_id))
    batch.lease(keys, inv_id, "done", 0)


class TaskBoard:
    """Where a local worker shows the task it is running, for its cluster to read.

    A small file shared by the worker (which writes it) and the cluster's
    process (which reads it: ``wukong.backends.stuck``), open in both, named
    nowhere.  Before each attempt of a task the executor writes the task's
    place (schedule, position) and its start on the monotonic clock, which is
    the same in every process of the machine; after, it clears it.  Two plain
    stores per task, no system call.
    """

    FORMAT = struct.Struct("<qqd")  # schedule, position, start (0.0: no task running)
    SIZE = FORMAT.size

    def __init__(self, fd: int):
        self.map = mmap.mmap(fd, self.SIZE)

    def start(self, sid: int, pos: int) -> None:
        self.FORMAT.pack_into(self.map, 0, sid, pos, time.monotonic())

    def stop(self) -> None:
        self.FORMAT.pack_into(self.map, 0, 0, 0, 0.0)

    def read(self) -> tuple[int, int, float] | None:
        """``(schedule, position, start)`` of the running task, or ``None``.  Read
        twice: two reads that differ caught a write (a task just started)."""
        first = self.FORMAT.unpack_from(self.map, 0)
        if first != self.FORMAT.unpack_from(self.map, 0) or first[2] == 0.0:
            return None
        return first

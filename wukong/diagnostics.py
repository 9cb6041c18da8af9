"""Dask's callback protocol on the client, and the record of each job.

wukong runs no task on the client, so Dask's callbacks (``dask.callbacks.
Callback``: ``ProgressBar``, ``Profiler``, ``ResourceProfiler``, a user's own)
fire from what the executors report: each count event on a job's stream
carries, batched, the (task id, start, end) of the tasks an executor ran and
its worker id (``wukong.protocol.counts_fields``).  ``DaskCallbacks`` turns them
into the calls ``dask.local.get_async`` makes, in its order:

* ``start(dsk)`` and ``start_state(dsk, state)`` before the job is submitted
  (``state`` as ``dask.local.start_state_from_dask`` builds it);
* for each task, when its report arrives, ``pretask(key, dsk, state)`` then
  ``posttask(key, None, dsk, state, worker_id)`` -- the result stays on the
  executor, so it is ``None``; ``state`` moves the key from ready/waiting to
  running to finished, and makes its dependents ready;
* ``finish(dsk, state, failed)`` at the end.

A ``dask.diagnostics.Profiler`` takes its times from the client's clock in
``pretask``/``posttask``; its entry is rewritten with the executor's real
start and end (moved onto the client's ``timeit.default_timer`` scale, the one
``ResourceProfiler`` uses, so ``visualize`` lines them up).  Data nodes are
not tasks to Dask (they sit in ``state["cache"]``), so they get no calls.

A futures job (``client.compute``, ``submit``, ``persist``) drives them the
same way, from the thread that runs it, with the callbacks active when it was
started (``wukong.futures``).

``JobRecord`` is what the client keeps of each job (``client.jobs``): tasks
with their executor, times and bytes fetched; invocations with their
executor, when each was sent, picked up and ended, and its waits; bytes stored
and fetched (the sum of the tasks'), fan-in round trips, invocations, cost;
``wukong.report`` draws it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Hashable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from timeit import default_timer
from typing import Any

from dask.callbacks import Callback, unpack_callbacks


def active_callbacks(extra: Any = None) -> list[tuple]:
    """The callbacks a ``get`` must honour: ``Callback.active`` and ``callbacks=``."""
    cbs = list(Callback.active)
    if extra is not None:
        for cb in extra if isinstance(extra, list | tuple | set) else [extra]:
            cbs.append(cb._callback if isinstance(cb, Callback) else cb)
    return cbs


class DaskCallbacks:
    """Drives Dask callbacks for one job from executor-reported timings."""

    def __init__(
        self, callbacks: list[tuple], dsk: Mapping[Hashable, Any], keys: list[Hashable], order: list[Hashable]
    ):
        from dask.local import start_state_from_dask

        self.dsk = dsk
        self.start_cbs, self.state_cbs, self.pre_cbs, self.post_cbs, self.finish_cbs = unpack_callbacks(callbacks)
        owners = [getattr(cb, "__self__", None) for cb in (*self.start_cbs, *self.post_cbs)]
        self.profilers: list[Any] = list({id(p): p for p in owners if _is_a(p, "Profiler")}.values())
        self.shows_progress = any(_is_a(p, "ProgressBar") for p in owners)  # Dask's bar replaces ours
        for f in self.start_cbs:
            f(dsk)
        position = {k: i for i, k in enumerate(order)}
        self.state = start_state_from_dask(dict(dsk), cache={}, sortkey=position.get, keys=keys)
        self.ready_at = {k: i for i, k in enumerate(self.state["ready"])}
        for f in self.state_cbs:
            f(dsk, self.state)
        self.clock_offset = default_timer() - time.time()  # wall clock -> default_timer

    def ran(self, key: Hashable, start: float, end: float, worker: str) -> None:
        state = self.state
        if key in state["cache"] or key in state["finished"]:
            return
        self._take(key)
        state["running"].add(key)
        for f in self.pre_cbs:
            f(key, self.dsk, state)
        state["running"].discard(key)
        state["finished"].add(key)
        for d in state["dependents"].get(key, ()):
            waiting = state["waiting"].get(d)
            if waiting is not None:
                waiting.discard(key)
                if not waiting:
                    del state["waiting"][d]
                    self.ready_at[d] = len(state["ready"])
                    state["ready"].append(d)
        for f in self.post_cbs:
            f(key, None, self.dsk, state, worker)
        for p in self.profilers:
            p._results[key] = (key, self.dsk[key], start + self.clock_offset, end + self.clock_offset, worker)

    def _take(self, key: Hashable) -> None:
        """Remove ``key`` from ready (O(1): swap with the last) or from waiting."""
        state = self.state
        i = self.ready_at.pop(key, None)
        if i is None:
            state["waiting"].pop(key, None)
            return
        ready = state["ready"]
        last = ready.pop()
        if last != key:
            ready[i] = last
            self.ready_at[last] = i

    def finish(self, failed: bool) -> None:
        for f in self.finish_cbs:
            f(self.dsk, self.state, failed)


def _is_a(obj: Any, name: str) -> bool:
    """``obj`` is a ``dask.diagnostics.<name>`` (without importing it when nobody uses it)."""
    import sys

    module = sys.modules.get("dask.diagnostics")
    return module is not None and isinstance(obj, getattr(module, name))


@dataclass
class TaskRun:
    key: Hashable
    start: float  # seconds since the epoch, the executor's clock
    end: float
    worker: str
    fetched: int = 0  # bytes of its inputs read from the KV store (0: all were in the executor's memory)
    cpu: float = 0.0  # CPU seconds of the thread that ran it (not its BLAS threads'), all attempts


@dataclass
class InvocationRun:
    """One invocation on its executor (seconds since the epoch, one machine's clock locally).

    ``worker`` was busy with it from ``picked`` to ``ended`` but for ``waits``,
    where it slept until a held output's next ask (delayed I/O) with nothing
    else to do; ``sent`` (0.0: unknown) to ``picked`` it waited to be picked up.
    """

    id: str
    worker: str
    sent: float
    picked: float
    ended: float
    waits: list[tuple[float, float]] = field(default_factory=list)


@dataclass
class JobRecord:
    """What the client keeps of one job (``client.jobs``)."""

    job: str
    started: float  # seconds since the epoch
    ntasks: int = 0
    nschedules: int = 0
    noutputs: int = 0
    status: str = "running"  # running, finished, error, cancelled
    error: str = ""
    plan_s: float = 0.0  # graph conversion + plan
    first_s: float = 0.0  # from the job's start to its first invocation sent (plan + first writes)
    launch_s: float = 0.0  # from the job's start to its last leaf invoked (plan + writes + launch)
    run_s: float = 0.0
    invocations: int = 0
    solo: bool = False  # run as one invocation (``wukong.durations``)
    bytes_stored: int = 0
    bytes_fetched: int = 0
    fanin_round_trips: int = 0
    held_fanins: int = 0  # fan-ins run by a parent that kept its value in memory (delayed I/O)
    cost: dict | None = None
    tasks: list[TaskRun] = field(default_factory=list)
    runs: list[InvocationRun] = field(default_factory=list)  # the invocations that ran to their exit

    @property
    def executors(self) -> list[str]:
        """The workers that ran this job's tasks, in order of their first task."""
        return list(dict.fromkeys(t.worker for t in sorted(self.tasks, key=lambda t: t.start)))

    def summary(self) -> str:
        line = (
            f"job {self.job}: {self.status}, {self.ntasks} tasks on {len(self.executors)} executor(s), "
            f"{self.invocations} invocations, {self.fanin_round_trips} fan-in round trips, "
            f"{format_bytes(self.bytes_stored)} stored, {format_bytes(self.bytes_fetched)} fetched, "
            f"plan {self.plan_s:.3f}s, run {self.run_s:.3f}s"
        )
        return line

    def __repr__(self) -> str:
        return f"<JobRecord {self.summary()}>"


def format_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


_recordings: list[list[JobRecord]] = []  # open ``recording()`` blocks
_recordings_lock = threading.Lock()


@contextmanager
def recording() -> Iterator[list[JobRecord]]:
    """Collect the records of every job any client starts inside the block."""
    records: list[JobRecord] = []
    with _recordings_lock:
        _recordings.append(records)
    try:
        yield records
    finally:
        with _recordings_lock:
            _recordings.remove(records)


def note(record: JobRecord) -> None:
    """A job started: add its record to the open ``recording()`` blocks."""
    with _recordings_lock:
        for records in _recordings:
            records.append(record)

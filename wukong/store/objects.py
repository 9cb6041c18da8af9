"""A process's object table: outputs its executors stored, handed to its other executors by reference.

A local worker process runs several executors as threads
(``LocalCluster(threads_per_worker=)``).  When one of them stores a task's
output in the KVS (a fan-in's parent, a fan-out's shipped input) it also puts
the very object here, under ``(job, task id)``; an executor of the same
process that needs that input takes it from here and skips the KVS read and
the unpickling: numpy arrays pass between threads as Dask's threaded
scheduler passes them, with no copy.

In a cluster of several worker processes the table is a cache, never the
only copy: every value in it was written to the KVS (Redis or shared memory)
as before, so an executor in another process, or a re-run after this process
died, still reads it there.  Hence dropping an entry is always safe, and the
table is kept small:

* its entries hold at most ``max_bytes`` (serialized sizes, a close measure
  of an array's memory; ``bound``: 512 MiB per process, and the processes
  of a cluster together at most an eighth of the machine's memory); the
  least recently used go first, and a value larger than the whole table is
  not kept;
* a job's entries are dropped when the job ends: the worker drops those of
  jobs whose event stream is gone (``drop_ended``, when a thread is idle) and
  an executor drops those of a job it found ended (``JobGone``) or forgot.

In a cluster of one worker process (``LocalCluster(processes=False)``, or
``n_workers=1``) every executor that will ever read a value is in this
process, so an intermediate value is put here only, never written to the KVS
(``Executor(table_only=True)``): no copy, as in Dask's threaded scheduler.
The table is then unbounded (``max_bytes=None``: it holds what the jobs
still need, as the KVS would); an idle executor thread that finds entries in
it looks for ended jobs every 20 ms rather than every second (their values
are freed before the next job starts), and the first invocation of a new job
drops what ended jobs left, for jobs that follow each other without a pause.  If the process dies,
values it held are gone: an executor that needs one raises ``ValuesLost`` and
the client runs the job again (``Client.get``), its values stored this time.

There the table also counts fan-in arrivals (``arrive``), as ``fanin.lua``
does in the MDS, with the same rules (arrivals are a set of parents; the
arrival that completes a fan-in is its owner, and only the owner's repeat
completes it again): every parent of a fan-in runs in this process, so an
arrival costs no round trip.  The counts live as long as the values: with
the process, and until the job ends.

Values in the table are shared, as in Dask's threaded scheduler: a task must
not modify its inputs in place.  One lock guards the table; the work done
under it is a few dict operations.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from wukong.protocol import Keys

MAX_BYTES = 512 * 1024 * 1024  # per worker process, at most ...
MEMORY_SHARE = 8  # ... and at most this share (1/8) of the machine's memory over all worker processes


def bound(processes: int) -> int:
    """The table's bound in each of ``processes`` worker processes on this machine."""
    try:
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return MAX_BYTES
    return min(MAX_BYTES, memory // (MEMORY_SHARE * max(processes, 1)))


class ObjectTable:
    """Values by ``(job, tid)``, least recently used first; ``hits`` counts values handed out."""

    def __init__(self, max_bytes: int | None = MAX_BYTES):
        self.max_bytes = max_bytes
        self.nbytes = 0
        self.hits = 0
        self._entries: OrderedDict[tuple[str, int], tuple[Any, int]] = OrderedDict()
        self._per_job: dict[str, int] = {}  # job -> its entries
        # job -> fan-in -> (parents arrived, the completing arrival or ""): ``arrive``
        self._fanins: dict[str, dict[int, tuple[set[int], str]]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, job: str, tid: int, value: Any, size: int) -> None:
        limit = self.max_bytes
        if limit is not None and size > limit:
            return
        with self._lock:
            self._pop((job, tid))
            while limit is not None and self._entries and self.nbytes + size > limit:
                self._pop(next(iter(self._entries)))
            self._entries[(job, tid)] = (value, size)
            self._per_job[job] = self._per_job.get(job, 0) + 1
            self.nbytes += size

    def _pop(self, entry: tuple[str, int]) -> None:
        old = self._entries.pop(entry, None)
        if old is None:
            return
        self.nbytes -= old[1]
        job = entry[0]
        self._per_job[job] -= 1
        if not self._per_job[job]:
            del self._per_job[job]

    def get(self, job: str, tids: Iterable[int]) -> dict[int, Any]:
        """The values of ``tids`` held here (those not held are left out)."""
        found = {}
        with self._lock:
            for tid in tids:
                entry = self._entries.get((job, tid))
                if entry is not None:
                    self._entries.move_to_end((job, tid))
                    found[tid] = entry[0]
            self.hits += len(found)
        return found

    def holds(self, job: str, tids: Iterable[int]) -> set[int]:
        """Which of ``tids`` are held here (not counted as hits)."""
        with self._lock:
            return {tid for tid in tids if (job, tid) in self._entries}

    def arrive(self, job: str, fanin: int, parent: int, ndeps: int, owner: str) -> bool:
        """Record ``parent``'s arrival at ``fanin`` (of ``ndeps`` parents) by ``owner`` (the
        invocation and parent, as in ``fanin.lua``); whether it completes the fan-in: the
        last parent's first arrival, or a repeat of that arrival by the same owner."""
        with self._lock:
            fanins = self._fanins.setdefault(job, {})
            state = fanins.get(fanin)
            if state is None:
                state = fanins[fanin] = (set(), "")
            arrived, completer = state
            if parent in arrived:
                return completer == owner
            arrived.add(parent)
            if len(arrived) < ndeps:
                return False
            fanins[fanin] = (arrived, owner)
            return True

    def has_job(self, job: str) -> bool:
        with self._lock:
            return job in self._per_job or job in self._fanins

    def jobs(self) -> set[str]:
        with self._lock:
            return set(self._per_job) | set(self._fanins)

    def drop_job(self, job: str) -> None:
        with self._lock:
            self._fanins.pop(job, None)
            if job in self._per_job:
                for entry in [e for e in self._entries if e[0] == job]:
                    self._pop(entry)


def drop_ended(table: ObjectTable, mds: Any) -> None:
    """Drop the entries of jobs that have ended (their event stream is deleted with their keys)."""
    jobs = sorted(table.jobs())
    if not jobs:
        return
    pipe = mds.pipeline(transaction=False)
    for job in jobs:
        pipe.exists(Keys(job).events)
    for job, alive in zip(jobs, pipe.execute(), strict=True):
        if not alive:
            table.drop_job(job)

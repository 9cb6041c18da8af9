"""The executor: one invocation's share of a job, the same code on every backend.

An invocation names a job, a static schedule and a position on it, and brings
the inputs of its first task (inline bytes, or ids to fetch from the KVS).  The
executor then schedules itself:

* It runs tasks from a local stack.  Outputs stay in this process's memory
  (``data``), counted by ``refs`` (how many tasks on the stack still read
  them) and dropped when no local task needs them.
* When a task finishes, its dependents are of two kinds.  One with a single
  dependency is ready at once.  A fan-in (several dependencies) is ready when
  its last parent arrives: the parent stores its output in the KVS, then the
  ``fanin.lua`` script records the arrival atomically (a set of parent ids, so
  a repeated notification never counts twice) and answers "complete" to
  exactly one caller -- in the same pipelined round trip.
* Of the ready dependents the executor "becomes" one (the next task on its
  own schedule when it is ready) and invokes the others.  Small outputs travel
  inline with the invocation, large ones are stored once in the KVS.  When the
  output is larger than ``cluster_threshold`` the executor runs all the ready
  dependents itself rather than ship the data (task clustering).  So it does
  too, for a fan-out of at most ``BUSY_FANOUT_MAX``, while invocations wait in
  a local cluster's queue (its length comes with every round trip): no
  executor is idle then, and an invocation would only wait behind them.
* While it still has local work (on its stack, or a ready dependent of the
  task itself), a task holds its fan-in notifications back (``DEFER_MAX`` of
  them, ``DEFER_S`` at most) and sends them together: fan-ins that complete
  then run here, so a group of leaves reduces its own subtree without a round
  trip per task.  A fan-in
  whose parents are all among the held outputs is complete without asking
  the MDS: nothing is written for it (no output, no arrival).
* Delayed I/O: an output of at least ``delayed_io_bytes`` whose one
  dependent is a fan-in is not stored at once.  Its arrival is recorded as
  a hold (``fanin.lua``: the fan-in cannot complete elsewhere while a value
  is held), and the executor asks again -- between its local tasks, or
  sleeping when it has none, with a growing pause -- for up to
  ``delayed_io_wait`` seconds, while the other parents that have not
  arrived are tasks on its own stack (``HOLD_MAX_MISSING`` at most).  With
  none missing it asks once: the last parent to arrive runs the fan-in with
  its value from memory; with a parent missing that runs elsewhere it stores
  its value at once (waiting would cost polls, and the fan-in would wait for
  the holder's next ask).  When the other parents have all arrived, the
  holder completes the fan-in and runs it here with its value from memory
  (and the other values this invocation holds for it): those values are
  never written.  When its wait is over, or when another invocation's
  holder of the same fan-in keeps its own value, or when it has nothing
  else to do and invocations wait for a local worker, it stores the value
  and arrives as any parent does.  A holder that dies leaves its hold: its
  invocation, run again, arrives again and completes the fan-in.
* A fan-out to more new schedules than ``fanout_groups`` starts them as
  grouped leaves are started: that many invocations, each carrying the
  parent's output once (``Invocation.more``).  On a local cluster of
  ``executors`` a narrower one needs no more invocations than there are other
  executors: this one runs its share (1/``executors``) of the ready
  dependents and starts the others in ``executors - 1`` invocations at most.
* With nothing ready and nothing held it exits: it never waits for another
  executor, but for a held output's fan-in, ``delayed_io_wait`` at most.
* A solo invocation (option ``solo``, ``wukong.durations``) runs the whole job:
  it reads every schedule from the job's plan blob (``protocol.WHOLE_JOB``),
  starts the leaf ones, and counts each fan-in's arrivals in memory
  (``finish_solo``); it writes nothing but the results.
* Executors that are threads of one local worker process share an object
  table (``wukong.store.objects``): an output stored in the KVS is also put
  there, and an input found there is taken by reference, not read and
  unpickled.  The KVS copy stays: executors elsewhere, and re-runs, read it.
  In a cluster of one worker process (``table_only``) every reader is one of
  its executors: an intermediate goes to the table only, never to the KVS
  (results do), delayed I/O is off (holding a value saves no write), and
  fan-in arrivals are counted in the table (``ObjectTable.arrive``, the rules
  of ``fanin.lua``): no round trip, so notifications are not held back either.
  An input missing from the table then went with a process that died, as did
  the arrivals counted there: ``ValuesLost`` (an invocation sent again raises
  it at its start), and the client runs the job again, storing its values and
  counting its arrivals in the MDS as elsewhere (option ``store_values``): a
  crash in that run is survived as in any cluster.

Delivery may repeat and executors may die.  Each invocation has a
deterministic id and takes a lease in the MDS first (``lease.lua``; renewed
by a heartbeat thread, ``renew.lua``, marked done at exit), so a second delivery of a
running or finished invocation exits at once (one that carries a solo job's
plan, ``_Run.start_inline``, at its first write, having written nothing).  ``fanin.lua`` records which
arrival (invocation and parent) completed a fan-in: if that invocation is run
again after its executor died, that repeated arrival completes the fan-in
again, and the lost task is not lost; for anyone else a repeat is a no-op.

Events for the client (results, errors, tasks done, the ids of invocations
made and of this one when it exits) go on the job's stream in the same
pipelines as the executor's other writes; from the ids the client knows when
every invocation of the job has ended, and which to send again if lost.  The
counts carry, batched, each task's (id, start, end, CPU seconds, bytes fetched), this
worker's id, and the bytes stored and fan-in round trips since the last
report; the exit's adds when the invocation was sent, picked up and ended,
and its sleeps until a held output's next ask (``pause_holding``): the
client's Dask callbacks, profiler and job record are built from them.  A
task's bytes fetched are those of its inputs read from the KVS for it (a
value read once counts for the first task here that uses it; 0 when its
inputs were in this executor's memory or came inline), plus the held values
it loaded itself (a future's, ``held.load``).

A job run for the client's futures (option ``hold``) keeps its requested
results in the KVS (``Keys.held``) instead of sending them; a task standing for
a result held earlier loads it here (``wukong.store.held.load``).
"""

from __future__ import annotations

import json
import os
import pickle
import socket
import sys
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable
from itertools import islice
from typing import Any, NamedTuple

from wukong import protocol, serialization, task_warnings
from wukong._core import ScheduleView
from wukong.backends.base import Invoke, launch
from wukong.errors import ValuesLost
from wukong.faults import CRASH_EXIT, Faults
from wukong.protocol import OUTPUT, Dependent, Invocation, Keys, TaskRecord
from wukong.recovery import LEASE_MS, Heartbeat
from wukong.store import Batch, Store, held, shm
from wukong.store.objects import ObjectTable
from wukong.timeout import (
    STUCK_EXIT,
    Guard,
    Interrupt,
    TaskBoard,
    TaskCancelled,
    TaskTimeout,
    report_ended,
    task_timeout,
)

PROGRESS_EVERY = 0.5  # seconds between progress events on long chains
DEFER_MAX = 1024  # fan-in notifications an executor with local work may batch ...
DEFER_S = 0.05  # ... and for how long at most
EARLY_READS_MAX_DEPS = 4  # fan-ins this narrow read their other inputs with each arrival (``notify``)
CACHE_IDLE_S = 1.0  # a job's cached schedules are dropped once it has not run here for this long
CANCEL_CHECK_S = 0.05  # a cancelled job's executors stop before their next task, this late at most
HOLD_PAUSE_S = 0.002  # a held output's fan-in is asked again after this pause, doubled each time ...
HOLD_PAUSE_MAX_S = 0.05  # ... up to this
HOLD, STORE_NOW = 3, 2  # fanin.lua's replies to a holder: keep holding; store your value now
# a value is held only while at most this many other parents of its fan-in have not arrived:
# waiting for more could keep executor slots (a worker, a Lambda's concurrency) from them
HOLD_MAX_MISSING = 1
# ... and only for parents among the next this many tasks on its stack (deeper ones run later
# than a hold should last; and a hold's search stays short on a long stack)
HOLD_LOOKAHEAD = 64
# while invocations wait in a local cluster's queue, a fan-out this narrow runs here, all of it
BUSY_FANOUT_MAX = 8


class Schedule:
    """A decoded schedule; task bodies are unpickled on first use."""

    __slots__ = ("records", "_pickled", "_bodies")
    _pickled: memoryview | tuple[_PlanBodies, int]  # its bodies' pickle, or its place in a plan blob's

    def __init__(self, blob: bytes):
        meta, self._pickled = protocol.unpack_schedule(blob)
        self.records = ScheduleView(meta)  # records decoded on first access
        self._bodies: list | None = None

    @classmethod
    def whole(cls, blob: bytes) -> dict[int, Schedule]:
        """Every schedule of a plan blob (``protocol.pack_plan``), by id; the bodies of
        all are unpickled together, when the first is used."""
        metas, pickled = protocol.unpack_plan(blob)
        plan = _PlanBodies(pickled)
        out = {}
        for sid, meta in enumerate(metas):
            sched = out[sid] = cls.__new__(cls)
            sched.records, sched._pickled, sched._bodies = ScheduleView(meta), (plan, sid), None
        return out

    def body(self, pos: int) -> tuple[Any, tuple]:
        if self._bodies is None:
            pickled = self._pickled
            if isinstance(pickled, tuple):  # a plan blob's schedule: (its _PlanBodies, its id)
                self._bodies = pickled[0].of(pickled[1])
            else:
                self._bodies = serialization.loads_function(pickled)
            self._pickled = memoryview(b"")
        return self._bodies[pos]


class _PlanBodies:
    """The bodies of every schedule of a plan blob, unpickled once."""

    __slots__ = ("pickled", "bodies")

    def __init__(self, pickled: memoryview):
        self.pickled = pickled
        self.bodies: list | None = None

    def of(self, sid: int) -> list:
        if self.bodies is None:
            self.bodies = serialization.loads_function(self.pickled)
            self.pickled = memoryview(b"")
        return self.bodies[sid]


class _Arrived(NamedTuple):
    """An arrival counted in this process's object table (``table_only``, ``ObjectTable.arrive``):
    whether it completed its fan-in, and the read of the fan-in's schedule when it did and
    the schedule is not here."""

    complete: bool
    schedule: tuple[int, int] | None


# fan-in, its script's reply (or its arrival counted here), reads of its other parents' outputs
_Call = tuple[Dependent, tuple[int, int] | _Arrived, tuple[tuple[int, tuple[int, int]], ...]]


class JobGone(Exception):
    """The job's keys are gone (it ended): a late duplicate invocation; say nothing."""


class Duplicate(Exception):
    """Another delivery of this invocation holds its lease or has finished it."""


class Cancelled(Exception):
    """The job was cancelled (a task failed, or the user stopped it): exit now."""


class TaskFailed(Exception):
    """A task raised; the error event is already queued."""


class Executor:
    """Runs invocations, one at a time, reused across invocations (warm); one per
    process, or one per thread of a local worker process (sharing ``table``).

    ``invoke(batch, job, invocations)`` starts other executors: it may add
    commands to ``batch`` (local backend: push to the queue) and must not
    return before they are durably queued once the batch executes.
    """

    def __init__(
        self,
        store: Store,
        invoke: Invoke,
        *,
        inline_limit: int = 64 * 1024,
        cluster_threshold: int = 64 * 1024 * 1024,
        delayed_io_bytes: int | None = None,
        delayed_io_wait: float = 0.5,
        cache_jobs: int = 4,
        lease_ms: int = LEASE_MS,
        faults: dict | None = None,
        proxy: Callable[[str, int, list[Invocation]], bool] | None = None,
        max_task_fanout: int = 0,
        max_result_bytes: int | None = None,
        result_shm_min: int | None = None,
        fanout_groups: int | None = None,
        executors: int = 0,
        board: TaskBoard | None = None,
        table: ObjectTable | None = None,
        table_only: bool = False,
        queue: str | None = None,
    ):
        self.store = store
        self.board = board  # where a local worker shows its running task to its cluster
        # a local cluster's invocation queue: an idle holder (delayed I/O) does not keep
        # its worker from invocations waiting there
        self.queue = queue
        # wide fan-outs go through the proxy (wukong.proxy): proxy(job, tid, invs) -> handed over?
        self.proxy = proxy if max_task_fanout > 0 else None
        self.max_task_fanout = max_task_fanout
        self.inline_limit = inline_limit
        self.cluster_threshold = cluster_threshold
        # shared by the executors (threads) of this process: stored outputs, by reference;
        # ``table_only``: every executor of the cluster is one of them, values stay there
        self.table = table
        self.table_only = table_only and table is not None
        self.delayed_io_bytes = delayed_io_bytes  # None: delayed I/O is off
        self.delayed_io_wait = delayed_io_wait
        self.cache_jobs = cache_jobs
        self.lease_ms = lease_ms
        self.max_result_bytes = max_result_bytes
        # bytes: a result this long goes to the client in a file (local; ``None``: ``shm.SHM_MIN``,
        # as any value); ``bench.dataplane --threshold`` varies it
        self.result_shm_min = result_shm_min
        # a fan-out to more new schedules than this starts them in this many invocations
        # (each carries the parent's output once); ``None``: one invocation each (Lambda)
        self.fanout_groups = fanout_groups
        self.executors = executors  # a local cluster's executors (0: as many as are invoked, Lambda)
        self.faults = Faults(faults) if faults else None
        self.invoke = self.faults.wrap(invoke) if self.faults else invoke
        self.jobs: OrderedDict[str, dict[int, Schedule]] = OrderedDict()
        self.dropped: list = []  # schedules of jobs forgotten, freed off the invocation's path (``run``)
        self.options: dict[str, dict] = {}
        self.used: dict[str, float] = {}  # job -> when an invocation of it last started here
        self.heartbeat = Heartbeat(store, lease_ms)
        self.interrupt = Interrupt()  # this thread's running task, stopped when its job is cancelled
        # who ran a task, for the client's profiler: the Lambda sandbox, or host and process
        self.worker = os.environ.get("AWS_LAMBDA_LOG_STREAM_NAME") or f"{socket.gethostname()}:{os.getpid()}"

    # -- job state cached in a warm process ---------------------------------
    def schedules(self, job: str) -> dict[int, Schedule]:
        """The schedules of ``job`` cached here.  A job first seen here drops those of
        jobs idle here for ``CACHE_IDLE_S`` (most have ended: a following job should
        not pay for their memory) and of all but the last ``cache_jobs``."""
        now = time.monotonic()
        cache = self.jobs.get(job)
        if cache is None:
            cache = self.jobs[job] = {}
            for old in [j for j, t in self.used.items() if now - t > CACHE_IDLE_S]:
                self.forget(old)
            while len(self.jobs) > self.cache_jobs:
                self.forget(next(iter(self.jobs)))
        self.jobs.move_to_end(job)
        self.used[job] = now
        return cache

    def forget(self, job: str) -> None:
        self.dropped.append(self.jobs.pop(job, None))  # freed once the running invocation has exited
        self.options.pop(job, None)
        self.used.pop(job, None)

    # -- one invocation -------------------------------------------------------
    def new_run(self, inv: Invocation) -> _Run:
        """The state of one invocation (``wukong.simulate`` substitutes a simulated one)."""
        return _Run(self, inv)

    def run(
        self,
        inv: Invocation,
        on_exit: Callable[[Batch], None] | None = None,
        exit_events: Callable[[], list[dict]] | None = None,
    ) -> int:
        """Run an invocation to its end; returns the number of tasks run.

        ``on_exit(batch)`` may add commands to the pipeline that reports the
        exit (the local worker acknowledges its queue entry there);
        ``exit_events()`` gives the fields of events sent just before the exit
        (the Lambda handler's duration).  Without ``on_exit``, an exit may
        travel with the invocation's last fan-in arrivals (``_Run.send_arrivals``).
        """
        run = self.new_run(inv)
        run.on_exit, run.exit_events = on_exit, exit_events
        task_warnings.collect(run.warned)
        held.use(self.store)  # a task standing for a held result (a future's) reads it with our store
        try:
            run.start()
            run.lease_hold = (run.keys, inv.id, run.token, run.guard())
            self.heartbeat.hold(*run.lease_hold)
            try:
                run.loop()
            finally:
                run.settle()  # before the exit writes anything (``_Run.start_inline``)
        except (JobGone, Duplicate) as exc:
            if isinstance(exc, JobGone):
                self.forget(inv.job)
                if self.table is not None:
                    self.table.drop_job(inv.job)
            if on_exit is not None:
                batch = self.store.batch()
                on_exit(batch)
                batch.execute()
            return run.ndone
        except (TaskFailed, Cancelled, TaskCancelled):  # (an interrupt landing just past its task)
            pass
        except Exception as exc:  # storage trouble or a bug: the client must hear of it
            run.fail(run.current, exc, "could not be run by its executor")
        finally:
            self.heartbeat.release()
            run.lease_hold = ()  # its guard refers to the run: no cycle left behind
            task_warnings.collect(None)
        if not run.exited:
            run.exit()
        self.dropped.clear()
        return run.ndone


class _Run:
    """The state of one invocation (see the module docstring)."""

    def __init__(self, ex: Executor, inv: Invocation):
        self.ex = ex
        self.store = ex.store
        self.inv = inv
        self.keys = Keys(inv.job)
        self.scheds = ex.schedules(inv.job)
        self.data: dict[int, Any] = {}
        self.refs: dict[int, int] = {}
        self.stack: list[tuple[int, int]] = []
        self.pending = self.store.batch()  # events that may wait for the next round trip
        self.ndone = 0
        self.nreported = 0
        self.current: Any = None  # key of the task being handled, for error messages
        self.at = (0, 0)  # its schedule and position
        self.opts: dict = {}
        self.last_report = self.last_check = time.monotonic()
        # fan-in notifications held back while local work remains: (tid, blob, fan-ins)
        self.deferred: list[tuple[int, _Output, list[Dependent]]] = []
        self.deferred_since = 0.0
        self.early: dict[int, Any] = {}  # serialized outputs of fan-in parents read with the arrival
        self.holds: list[_Hold] = []  # outputs kept in memory while their fan-in may complete here
        self.picked = time.time()  # when this invocation was picked up; reported on exit (``pack_span``)
        self.waits: list[float] = []  # start, end of each sleep until a held output's next ask, flat
        self.token = f"{os.getpid()}-{threading.get_ident()}-{time.monotonic_ns()}"  # this attempt's lease
        self.warned: list = []  # warnings of the task just run (``task_warnings``)
        # A re-run of an invocation whose executor died records each task before
        # running it (one round trip each), so a task that kills its process is named.
        self.careful = False
        self.crash_after = ex.faults.crash_point() if ex.faults else None
        self.timings: list[protocol.Timing] = []  # (tid, start, end, CPU s, fetched) since the last report
        # since the last report: bytes stored, fan-in round trips, fan-ins run with a held value
        self.stats = [0, 0, 0]
        self.backlog = 0  # invocations waiting in the local cluster's queue, at the last round trip
        self.fetched: dict[int, int] = {}  # tid -> bytes read from the KVS, until a task here uses it
        # values that stay on this machine (shared memory) are not worth compressing
        self.compress = self.store.shm_dir is None
        self.solo = False  # this invocation runs the whole job (``protocol.WHOLE_JOB``: ``finish_solo``)
        self.arrived: dict[int, int] = {}  # solo: fan-in -> parents run so far
        self.on_exit: Callable[[Batch], None] | None = None  # see ``Executor.run``
        self.exit_events: Callable[[], list[dict]] | None = None
        self.exited = False  # the exit went with the last fan-in arrivals (``send_arrivals``)
        self.lease_hold: tuple = ()  # what the heartbeat holds for this invocation
        self.unsettled: Callable[[], None] | None = None  # reads a start not waited for (``settle``)

    # -- round trips ---------------------------------------------------------
    def send(self, batch: Batch, atomic: bool = False) -> Batch:
        """Send ``batch`` with the pending events and a cancel check (``atomic``: as one
        unit on the MDS, ``Batch.execute``: an exit and the events before it)."""
        self.settle()
        if self.pending:
            pending, self.pending = self.pending, self.store.batch()
            batch.extend(pending)  # after the batch's own commands: its handles stay valid
        h = batch.mds("exists", self.keys.cancel)
        h_alive = batch.mds("exists", self.keys.events)
        h_backlog = batch.mds("llen", self.ex.queue) if self.ex.queue else None
        batch.execute(atomic)
        self.last_check = time.monotonic()
        if h_backlog is not None:
            self.backlog = batch[h_backlog]
        if not batch[h_alive]:  # the job ended before this round trip: take back what it wrote
            batch.undo()
            raise JobGone()
        if batch[h]:
            raise Cancelled()
        return batch

    def counts(self, batch: Batch, invoked: list[str] | tuple[()] = (), exited: bool = False) -> None:
        """Tasks done since the last report; invocations made (their ids); this one's exit,
        with when it was sent, picked up and ended, and its waits on holds."""
        protocol.emit_event(batch, self.keys, self.report(invoked, exited))

    def exit_fields(self) -> list[dict]:
        """The fields of the events the backend sends just before an exit (``Executor.run``'s
        ``exit_events``: the Lambda handler's duration)."""
        return self.exit_events() if self.exit_events is not None else []

    def report(self, invoked: list[str] | tuple[()] = (), exited: bool = False) -> dict[str, Any]:
        """The fields of ``counts``'s event; what they report is reported from now on."""
        n = self.ndone - self.nreported
        self.nreported = self.ndone
        self.last_report = time.monotonic()
        attempt = f"{self.inv.id}@{self.token}"
        timings, self.timings = protocol.pack_timings(self.timings), []
        (stored, trips, held_fanins), self.stats = self.stats, [0, 0, 0]
        exit_id = self.inv.id if exited else ""
        span = protocol.pack_span(self.inv.sent, self.picked, time.time(), self.waits) if exited else b""
        stats = (stored, trips, held_fanins)
        return protocol.counts_fields(n, invoked, exit_id, attempt, timings, self.ex.worker, stats, span)

    # -- start, loop, exit ---------------------------------------------------
    def start(self) -> None:
        """One round trip: the schedules this invocation starts on, and its remote inputs."""
        inv = self.inv
        if inv.plan is not None and not inv.attempt:
            self.start_inline()
            return
        whole = inv.more == protocol.WHOLE_JOB  # a solo job's invocation: every schedule, in one blob
        starts = [] if whole else [inv.sched, *inv.more]
        batch = self.store.batch()
        h_lease = batch.lease(self.keys, inv.id, self.token, self.ex.lease_ms)
        h_attempts = batch.mds("hget", self.keys.attempts, inv.id)  # sent again after a loss?
        h_opts = batch.mds("get", self.keys.options) if inv.job not in self.ex.options else None
        read_plan = whole and not self.scheds and not inv.plan  # not in the invocation (``start_inline``)
        h_plan = batch.get_value(self.store.mds_index, self.keys.plan) if read_plan else None
        h_scheds = [
            (s, batch.get_value(self.store.mds_index, self.keys.schedule(s))) for s in starts if s not in self.scheds
        ]
        shared = self.shared(inv.remote)
        remote = [t for t in inv.remote if t not in shared]
        h_remote = batch.kvs_get_many([self.keys.data(t) for t in remote])
        batch = self.send(batch)
        if batch[h_lease] == -1:  # a delivery after the job ended: nothing was written
            raise JobGone()
        if batch[h_lease] == 0:
            raise Duplicate()
        self.careful = bool(batch[h_attempts])
        if h_opts is not None:
            self.ex.options[inv.job] = json.loads(batch[h_opts]) if batch[h_opts] else {}
        self.opts = self.ex.options[inv.job]
        if self.careful and self.table_only:  # its first attempt's process may have died, and with it
            # the values and fan-in arrivals it alone held: this run could leave a fan-in short
            raise ValuesLost(
                f"job {inv.job}: invocation {inv.id} runs again; the values and fan-in arrivals "
                "of its first attempt were held only by a worker process that is gone"
            )
        self.solo = whole
        if h_plan is not None:
            if batch[h_plan] is None:
                raise JobGone()
            self.scheds.update(Schedule.whole(batch[h_plan]))
        elif whole and not self.scheds and inv.plan:  # a re-delivery of an invocation carrying its plan
            self.scheds.update(Schedule.whole(inv.plan))
        for s, h in h_scheds:
            if batch[h] is None:
                raise JobGone()
            self.scheds[s] = Schedule(batch[h])
        for t, value in inv.inline.items():
            self.data[t] = serialization.loads(value)
        self.data.update(shared)
        for t, h in zip(remote, h_remote, strict=False):
            self.data[t] = self.load_remote(t, batch[h])
        self.push_starts(whole)

    def start_inline(self) -> None:
        """A solo job whose plan and options came in the invocation (``Backend.inline_plan``):
        its lease is asked for, and its tasks run while the answer is on its way.

        Until the answer is read (``settle``) nothing is written: it is read before
        this invocation's first round trip or shared-memory write, and at its end,
        so a duplicate delivery or a job that ended drops its work unwritten.  A
        re-delivery (``Invocation.attempt``) starts as any other invocation: it
        records each task before running it."""
        inv = self.inv
        batch = self.store.batch()
        h_lease = batch.lease(self.keys, inv.id, self.token, self.ex.lease_ms)
        h_cancel = batch.mds("exists", self.keys.cancel)
        receive = batch.send()

        def settle() -> None:
            receive()
            if batch[h_lease] == -1:  # a delivery after the job ended: nothing was written
                raise JobGone()
            if batch[h_lease] == 0:
                raise Duplicate()
            if batch[h_cancel]:
                raise Cancelled()

        self.unsettled = settle
        self.opts = self.ex.options[inv.job] = json.loads(inv.options or "{}")
        self.solo = True
        if not self.scheds:
            self.scheds.update(Schedule.whole(inv.plan))  # type: ignore[arg-type]  # not None here
        self.push_starts(True)

    def push_starts(self, whole: bool) -> None:
        inv = self.inv
        more = inv.more
        if whole:  # every leaf schedule starts here (in order), the others are reached
            more = tuple(s for s in range(len(self.scheds)) if s != inv.sched and not self.scheds[s].records[0].deps)
        for s in reversed(more):  # the stack runs them in order, after the first
            self.push(s, 0)
        self.push(inv.sched, inv.pos)

    def settle(self) -> None:
        """Read the answer to a start not waited for (``start_inline``); raise ``JobGone``,
        ``Duplicate`` or ``Cancelled`` if this delivery must not write its work.  Once:
        later calls return at once."""
        settle, self.unsettled = self.unsettled, None
        if settle is not None:
            settle()

    def guard(self) -> Guard:
        """Ends this process when the running task must stop and will not (``wukong.timeout``)."""
        return Guard(
            self.keys.cancel,
            self.opts.get("task_timeout"),
            lambda: (self.ndone, self.current),
            self.abandon,
            self.ex.interrupt.interrupt,
        )

    def abandon(self, why: str | None) -> None:
        """From the heartbeat thread: report this invocation's end (and ``why`` its task
        failed), then end the process; a local worker is replaced at once."""
        try:
            batch = self.store.batch()
            if self.on_exit is not None:
                self.on_exit(batch)
            if self.unsettled is not None and self.store.mds.get(self.keys.lease(self.inv.id)) != self.token.encode():
                batch.execute()  # a copy whose lease was not granted (``start_inline``): it reports nothing
                return
            for fields in self.exit_fields():
                protocol.emit_event(batch, self.keys, fields)
            self.counts(batch)
            report_ended(batch, self.keys, self.inv.id, self.current, why)
            batch.execute()
        finally:
            os._exit(STUCK_EXIT)

    def shared(self, tids: Any) -> dict[int, Any]:
        """The values of ``tids`` that an executor of this process stored: taken by reference."""
        return self.ex.table.get(self.inv.job, tids) if self.ex.table is not None and tids else {}

    def store_output(self, batch: Batch, out: _Output, shm_min: int | None = None) -> None:
        """Put ``out`` in the KVS (with ``batch``; in shared memory from ``shm_min`` bytes,
        ``Batch.kvs_set``) and in this process's object table."""
        self.settle()  # a file is written now
        batch.kvs_set(self.keys.data(out.tid), out.parts(), shm_min)
        self.stats[0] += out.size()
        if self.ex.table is not None:
            self.ex.table.put(self.inv.job, out.tid, out.value, out.size())

    def share_output(self, batch: Batch, out: _Output) -> None:
        """Make ``out`` readable by the executors of its dependents: stored, or in the
        object table only when they are all of this process (``table_only``)."""
        if self.table_only:
            self.settle()  # as a write would: a duplicate delivery shares nothing
            # never serialized for this: the unbounded table counts its bytes only to show them
            self.ex.table.put(self.inv.job, out.tid, out.value, out.size_hint())  # type: ignore[union-attr]
        else:
            self.store_output(batch, out)

    def load_remote(self, tid: int, value: bytes | None) -> Any:
        if value is None:
            key = self.keys.data(tid)
            if self.cancelled():
                raise Cancelled()
            if self.table_only:  # only ever in the table of this process: it went with an earlier one
                raise ValuesLost(f"job {self.inv.job}: input {key!r} was held only by a worker process that is gone")
            raise LookupError(
                f"input {key!r} is missing from KV store {self.store.name_of(self.store.kvs_server(key))}"
            )
        self.fetched[tid] = len(value)
        return serialization.loads(value)

    def cancelled(self) -> bool:
        return bool(self.store.mds.exists(self.keys.cancel))

    @property
    def table_only(self) -> bool:
        """Whether intermediates stay in the object table, never stored: every executor is
        of this process, unless the job runs again after it lost values (``store_values``)."""
        return self.ex.table_only and not self.opts.get("store_values")

    def push(self, sid: int, pos: int) -> None:
        for d in self.scheds[sid].records[pos].deps:
            self.refs[d] = self.refs.get(d, 0) + 1
        self.stack.append((sid, pos))

    def loop(self) -> None:
        while True:
            if self.deferred and (
                not self.stack or len(self.deferred) >= DEFER_MAX or time.monotonic() - self.deferred_since > DEFER_S
            ):
                self.flush_deferred()
            if self.holds and (not self.stack or min(h.ask_at for h in self.holds) <= time.monotonic()):
                self.ask_holds(idle=not self.stack)
            if not self.stack:
                if self.holds:
                    continue
                return
            if self.crash_after is not None and self.ndone >= self.crash_after:
                os._exit(CRASH_EXIT)  # fault injection: die mid-job, as a killed executor would
            if time.monotonic() - self.last_check > CANCEL_CHECK_S:
                self.send(self.store.batch())  # stop before the next task once the job is cancelled
            self.at = self.stack.pop()
            sid, pos = self.at
            sched = self.scheds[sid]
            rec = sched.records[pos]
            body = sched.body(pos)
            self.current = body[0].key
            if self.careful:
                # XX: the key exists from the re-send while the job lives; never recreated after it
                self.store.mds.set(self.keys.current(self.inv.id), pickle.dumps(self.current), xx=True, keepttl=True)
            start, cpu = time.time(), time.thread_time()
            result = self.execute(rec, body)
            cpu = time.thread_time() - cpu  # this thread's: not a BLAS pool's, not other executors'
            fetched = sum(self.fetched.pop(d, 0) for d in rec.deps) + held.take_fetched()
            self.timings.append((rec.tid, start, time.time(), cpu, fetched))
            self.ndone += 1
            if self.warned:
                protocol.emit_warnings(self.pending, self.keys, rec.tid, self.warned)
                self.warned.clear()
            for d in rec.deps:
                self.refs[d] -= 1
                if self.refs[d] == 0:
                    del self.refs[d], self.data[d]
            self.finish(sid, pos, rec, result)
            if time.monotonic() - self.last_report > PROGRESS_EVERY:
                self.counts(self.pending)
                self.send(self.store.batch())

    def execute(self, rec: TaskRecord, body: tuple[Any, tuple]) -> Any:
        """Run one task, up to ``retries`` more times if it raises."""
        node, dep_keys = body
        data = self.data
        retries = self.opts.get("retries", 0)
        timeout = self.opts.get("task_timeout")
        board = self.ex.board
        for attempt in range(retries + 1):
            if board is not None:
                board.start(*self.at)
            try:
                args = {k: data[d] for k, d in zip(dep_keys, rec.deps, strict=False)}
                if not timeout:
                    with self.ex.interrupt:
                        return node(args)
                with self.ex.interrupt, task_timeout(timeout, node.key):
                    return node(args)
            except TaskCancelled:  # interrupted: its job was cancelled (``Interrupt``)
                self.ex.interrupt.ident = None  # (a signal may have come before ``__exit__`` cleared it)
                raise Cancelled() from None
            except (Exception, SystemExit, KeyboardInterrupt) as exc:  # a task's exit is its failure
                if attempt < retries:
                    continue
                what = f"exceeded its timeout of {timeout}s" if isinstance(exc, TaskTimeout) else "raised"
                self.fail(node.key, exc, what)
                raise TaskFailed() from None
            finally:
                if board is not None:
                    board.stop()
        raise AssertionError("unreachable")

    def fail(self, key: Any, exc: BaseException, what: str) -> None:
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        protocol.emit_error(self.pending, self.keys, key, what, exc, tb)

    def dumps(self, key: Any, result: Any) -> list[bytes | memoryview]:
        try:
            return serialization.dumps_parts(result, compress=self.compress)
        except Exception as exc:
            self.fail(key, exc, "returned a result that cannot be pickled")
            raise TaskFailed() from None

    def finish(self, sid: int, pos: int, rec: TaskRecord, result: Any) -> None:
        """A task is done: publish its output, notify its fan-ins, become a ready dependent."""
        if self.solo:
            self.finish_solo(sid, pos, rec, result)
            return
        out = _Output(self, rec.tid, self.scheds[sid].body(pos)[0].key, result)
        stored_result = self.publish(out) if rec.flags & OUTPUT else False
        ready = [c for c in rec.dependents if c.ndeps == 1]
        fanins = [c for c in rec.dependents if c.ndeps > 1]
        wide = bool(fanins) or len(ready) > 1
        big = wide and not out.at_most(self.ex.cluster_threshold)
        # While invocations wait in a local cluster's queue no executor is idle: an
        # invocation made now would wait too, so a narrow fan-out runs here instead.  A
        # re-run does so whatever the queue: what its first attempt ran here, it runs here
        # again (``fanin.lua`` knows an arrival by its invocation).
        here = big or (len(ready) <= BUSY_FANOUT_MAX and (self.backlog > 0 or self.careful))
        if (
            fanins
            and not self.table_only  # (there an arrival costs no round trip: nothing to batch)
            and (self.stack or self.deferred or ready)  # local work follows (else the loop flushes at once)
            and not stored_result
            and out.at_most(self.ex.inline_limit)
        ):
            self.defer(out, fanins)  # batch this notification with the next ones
            if ready:
                self.become(self.store.batch(), sid, pos, out, ready, here)
            return
        limit = None if self.table_only else self.ex.delayed_io_bytes  # holding saves no write
        if limit is not None and len(fanins) == 1 and not ready and not stored_result and out.size() >= limit:
            self.hold(out, fanins[0])  # delayed I/O: keep it while the fan-in may complete here
            return
        # Where the output goes: to the KVS once when dependents elsewhere read it
        # (a fan-in's parents always store), inline in invocations when small, nowhere
        # when it is too big to ship (then every ready dependent runs here).
        shipped = bool(fanins) or (len(ready) > 1 and not here and out.size() > self.ex.inline_limit)
        batch = self.store.batch()
        if stored_result:  # before the fan-in calls of the same round trip
            self.store_output(batch if shipped else self.pending, out, self.ex.result_shm_min)
        elif shipped:
            self.share_output(batch, out)
        if stored_result:
            protocol.emit_stored_result(self.pending, self.keys, out.tid)  # sent with or after the write
        if fanins:
            calls = [self.notify(batch, out.tid, c) for c in fanins]
            if batch or not self.table_only:  # (arrivals counted here, and nothing to write: no round trip)
                self.stats[1] += 1
                last = not ready and not self.stack and not self.deferred and not self.holds
                batch = self.send_arrivals(batch, [(c.tid, out.tid) for c in fanins], last)
            ready += self.completed(batch, calls)
            batch = self.store.batch()
        if ready:
            self.become(batch, sid, pos, out, ready, here)

    def finish_solo(self, sid: int, pos: int, rec: TaskRecord, result: Any) -> None:
        """A task of a solo invocation is done (every task of the job runs here,
        ``wukong.durations``): publish its output if requested; a fan-in is ready
        when its last parent has run here (counted in ``arrived``, not by the MDS);
        nothing else is written.  Each parent that arrived before the last keeps
        its value held (a reference) until the fan-in is on the stack."""
        tid = rec.tid
        if rec.flags & OUTPUT:
            out = _Output(self, tid, self.scheds[sid].body(pos)[0].key, result)
            if self.publish(out):  # too large for the stream: the client reads it from the KVS
                self.store_output(self.pending, out, self.ex.result_shm_min)
                protocol.emit_stored_result(self.pending, self.keys, tid)
        ready = []
        waiting = 0  # fan-ins still short of parents, holding this value
        arrived = self.arrived
        for c in rec.dependents:
            if c.ndeps == 1:
                ready.append(c)
                continue
            n = arrived.get(c.tid, 0) + 1
            if n < c.ndeps:
                arrived[c.tid] = n
                waiting += 1
            else:
                arrived.pop(c.tid, None)
                ready.append(c)
        if not ready and not waiting:
            return
        self.data[tid] = result
        refs = self.refs
        refs[tid] = refs.get(tid, 0) + waiting
        for c in reversed(ready):  # in their order: the first runs next
            self.push(c.sched, c.pos)
        for c in ready:
            if c.ndeps > 1:
                for d in self.scheds[c.sched].records[c.pos].deps:
                    if d != tid:
                        refs[d] -= 1  # the hold its arrival took: ``push`` took its own
        if refs[tid] == 0:
            del refs[tid], self.data[tid]

    def publish(self, out: _Output) -> bool:
        """Send a requested result to the client on the job's stream; ``True`` when it is
        too long for a stream entry and must be read from the KVS instead.

        On the local backend a result of ``result_shm_min`` bytes or more goes to
        shared memory: the client maps its file, with no round trip (``Job.read_stored_result``)."""
        size = out.size()
        limit = self.ex.max_result_bytes
        if limit is not None and size > limit:
            size_error = ValueError(f"result is {size:,} bytes serialized; the limit is {limit:,}")
            self.fail(out.key, size_error, "returned a result larger than the cluster's max_result_bytes")
            raise TaskFailed()
        if self.opts.get("hold"):  # kept for the client's futures, not sent
            self.pending.kvs_set(self.keys.held(out.tid), out.parts())
            self.stats[0] += size
            protocol.emit_held(self.pending, self.keys, out.tid)
            return False
        shm_min = shm.SHM_MIN if self.ex.result_shm_min is None else self.ex.result_shm_min
        if size > self.store.part_size or (self.store.shm_dir and size >= shm_min):
            return True
        protocol.emit_result(self.pending, self.keys, out.tid, out.blob())
        return False

    def become(self, batch: Batch, sid: int, pos: int, out: _Output, ready: list[Dependent], here: bool) -> None:
        """Run one ready dependent here (all of them when ``here``); invoke the rest."""
        become = next(
            (c for c in ready if c.sched == sid and c.pos == pos + 1),
            next((c for c in ready if c.sched in self.scheds), ready[0]),
        )
        local = ready if here else [become, *self.share(ready, become)]
        away = [c for c in ready if c not in local]
        tid = out.tid
        self.data[tid] = out.value
        self.refs.setdefault(tid, 0)
        if away:  # what the local ones lack is read in the round trip that invokes the others
            take = self.request_inputs(batch, local)
            self.send_away(batch, out, away)
            missing = take(batch)
        else:
            missing = self.fetch_fanin_inputs(local)
        for t, value in missing.items():
            self.data[t] = value
        for c in reversed(local):
            self.push(c.sched, c.pos)
        if self.refs[tid] == 0:
            del self.refs[tid], self.data[tid]

    def notify(self, batch: Batch, parent: int, c: Dependent, hold: bool = False) -> _Call:
        """Add the fan-in script call for ``parent``'s arrival at ``c`` to ``batch``.

        When ``c``'s other parents are known here, reads of their outputs follow
        in the same round trip: if this arrival completes ``c``, every other
        parent stored its output before its own arrival, so on a single server
        (the commands run in order) the reads find them all and ``c`` starts
        without another round trip.  A read that finds nothing (the values
        live on another server, read before the script ran) is read again
        later.  Only where few reads can be wasted: two parents (the other
        one's output exists only if we complete), or a few with shared memory
        (large values are read as markers); a wide fan-in's last arrival
        reads its inputs in one more round trip rather than every arrival
        reading all the others.
        """
        want = c.sched not in self.scheds  # the reply carries c's schedule if we lack it
        if self.table_only:  # every parent runs in this process: counted here (``ObjectTable.arrive``)
            complete = self.ex.table.arrive(self.inv.job, c.tid, parent, c.ndeps, f"{self.inv.id}/{parent}")  # type: ignore[union-attr]
            read = batch.get_value(self.store.mds_index, self.keys.schedule(c.sched)) if complete and want else None
            return c, _Arrived(complete, read), ()
        missing = self.coming(c, parent) if hold else 0
        h = batch.fanin(self.keys, c.tid, parent, c.ndeps, c.sched, want, self.inv.id, hold, missing)
        if want or self.table_only or not (c.ndeps == 2 or (self.store.shm_dir and c.ndeps <= EARLY_READS_MAX_DEPS)):
            return c, h, ()
        others = [d for d in self.scheds[c.sched].records[c.pos].deps if d != parent and d not in self.data]
        if self.ex.table is not None:  # read from the object table once the fan-in completes here
            held = self.ex.table.holds(self.inv.job, others)
            others = [d for d in others if d not in held]
        return c, h, tuple(zip(others, batch.kvs_get_many([self.keys.data(d) for d in others]), strict=True))

    def send_arrivals(self, batch: Batch, arrivals: list[tuple[int, int]], last: bool) -> Batch:
        """Send ``batch`` with fan-in ``arrivals`` (fan-in, parent) in it.  When they are the
        ``last`` thing this invocation does (nothing to run, hold or send after them), its
        exit goes with them: ``exit.lua`` runs after them and exits unless one completed
        its fan-in (which then runs here; the exit comes later, as usual).  A one-task
        invocation that only arrives at a fan-in costs two round trips, not three."""
        # the local worker's ack: a plain exit; arrivals counted here are not the MDS's to see
        if not last or self.on_exit is not None or not arrivals or self.table_only:
            return self.send(batch)
        if self.pending:  # the events waiting go before the exit: the client reads it last
            pending, self.pending = self.pending, self.store.batch()
            batch.extend(pending)
        kept = (self.nreported, self.timings, self.stats, self.last_report)
        events = self.exit_fields()
        owners = [(fanin, f"{self.inv.id}/{parent}") for fanin, parent in arrivals]  # ``fanin.lua``'s owner values
        h = batch.exit(self.keys, self.inv.id, owners, [*events, self.report(exited=True)])
        self.ex.heartbeat.release()  # no beats after the exit (they would find the lease done)
        try:
            self.send(batch, atomic=True)  # the client reads the results and the exit at once
        finally:
            try:
                self.exited = batch[h] == 1
            except LookupError:  # the round trip failed: no reply
                self.exited = False
            if not self.exited:  # still running: what the exit would have reported is reported later
                self.nreported, self.timings, self.stats, self.last_report = kept
                self.ex.heartbeat.hold(*self.lease_hold)
        return batch

    def coming(self, c: Dependent, parent: int) -> int:
        """How many of fan-in ``c``'s parents besides ``parent`` wait on this executor's
        stack (its next ``HOLD_LOOKAHEAD`` tasks), ``HOLD_MAX_MISSING`` at most: a holder
        waits for those only.  They have not run, so they have not arrived; waiting for a
        parent another executor runs would cost polls and leave the fan-in to wait for the
        holder's next ask."""
        if c.sched not in self.scheds:
            return 0
        deps = set(self.scheds[c.sched].records[c.pos].deps)
        deps.discard(parent)
        n = 0
        for sid, pos in islice(reversed(self.stack), HOLD_LOOKAHEAD):  # the next tasks here
            if n == HOLD_MAX_MISSING:
                break
            if self.scheds[sid].records[pos].tid in deps:
                n += 1
        return n

    def completed(self, batch: Batch, calls: list[_Call]) -> list[Dependent]:
        """The fan-ins this executor completed (their schedules cached from the replies,
        the outputs of their other parents kept when read in the same round trip)."""
        done = []
        for c, h, reads in calls:
            if isinstance(h, _Arrived):
                if h.complete:
                    if h.schedule is not None:
                        if batch[h.schedule] is None:
                            raise JobGone()
                        self.scheds[c.sched] = Schedule(batch[h.schedule])
                    done.append(c)
                continue
            reply = batch[h]
            if not isinstance(reply, list):  # not complete (0), or a holder's wait (HOLD, STORE_NOW)
                continue
            if c.sched not in self.scheds:
                if not reply[1]:
                    raise JobGone()
                self.scheds[c.sched] = Schedule(self.store.whole(self.keys.schedule(c.sched), reply[1]))
            for d, hd in reads:
                if batch[hd] is not None:
                    self.early[d] = batch[hd]
            done.append(c)
        return done

    def defer(self, out: _Output, fanins: list[Dependent]) -> None:
        if not self.deferred:
            self.deferred_since = time.monotonic()
        self.deferred.append((out.tid, out, fanins))
        self.data[out.tid] = out.value  # held until the notification is sent: a fan-in may complete here
        self.refs[out.tid] = self.refs.get(out.tid, 0) + 1

    def flush_deferred(self) -> None:
        """Store the held outputs and notify their fan-ins, and read the schedules of the
        fan-ins completed here: one round trip at most, and one more for the inputs of
        fan-ins completed by the MDS that their replies did not bring.

        Fan-ins that complete run here (their inputs are mostly in this
        executor's memory already); with grouped leaves, whole subtrees of a
        reduction run without another round trip per task.  A fan-in whose
        parents were all computed here and are all held is complete without
        asking the MDS: no other invocation will ever notify it (each task is
        run by one invocation; a re-run of this one recomputes the same
        parents and completes it again, as ``fanin.lua``'s owner rule would
        allow), so neither its parents' outputs nor its arrivals are written.
        (A re-run also runs here the narrow fan-outs its first attempt may
        have invoked, see ``finish``: such a task may then run twice, which
        is harmless, but never not at all.)
        """
        deferred, self.deferred = self.deferred, []
        lacking: dict[int, int] = {}  # fan-in -> parents not among the held outputs
        for _, _, fanins in deferred:
            for c in fanins:
                lacking[c.tid] = lacking.get(c.tid, c.ndeps) - 1
        whole = {t for t, n in lacking.items() if n == 0}
        batch = self.store.batch()
        calls = []
        arrivals = []  # (fan-in, parent) of each call
        self.stats[1] += 1
        local: list[Dependent] = []
        for tid, out, fanins in deferred:
            if any(c.tid not in whole for c in fanins):  # read elsewhere: store it
                self.share_output(batch, out)
            for c in fanins:
                if c.tid not in whole:
                    calls.append(self.notify(batch, tid, c))
                    arrivals.append((c.tid, tid))
                elif c.tid in lacking:  # once per fan-in, at its first parent's place
                    del lacking[c.tid]
                    local.append(c)
        take = self.request_inputs(batch, local)  # their schedules, when not here
        last = not self.stack and not local and not self.holds
        done = self.completed(self.send_arrivals(batch, arrivals, last) if batch else batch, calls)
        for t, value in (take(batch) | self.fetch_fanin_inputs(done)).items():
            self.data[t] = value
        for c in reversed(done + local):
            self.push(c.sched, c.pos)
        for tid, _, _ in deferred:  # release the holds taken in ``defer``
            self.refs[tid] -= 1
            if self.refs[tid] == 0:
                del self.refs[tid], self.data[tid]

    def hold(self, out: _Output, c: Dependent) -> None:
        """Keep ``out`` in memory for fan-in ``c`` and record its arrival as a hold."""
        now = time.monotonic()
        self.holds.append(_Hold(out, c, now + self.ex.delayed_io_wait, now))
        self.data[out.tid] = out.value
        self.refs[out.tid] = self.refs.get(out.tid, 0) + 1
        self.ask_holds()

    def ask_holds(self, idle: bool = False) -> None:
        """One round trip for the held outputs whose turn it is: ask their fan-ins again,
        or store the values whose wait is over (or that ``fanin.lua`` said to store) and
        arrive as any parent does.  Fan-ins completed run here.  ``idle``: nothing else
        to do, sleep until the first turn."""
        if idle:
            self.pause_holding()
        now = time.monotonic()
        # newest first: a value held for a fan-in whose other values this invocation
        # holds arrives before their asks, which would count it as missing
        due = [h for h in reversed(self.holds) if h.ask_at <= now]
        batch = self.store.batch()
        calls = []
        for h in due:
            keep = not h.store and now < h.deadline
            if not keep:
                self.share_output(batch, h.out)
            calls.append((h, keep, self.notify(batch, h.out.tid, h.c, hold=keep)))
        self.stats[1] += 1
        batch = self.send(batch)
        crowded = self.backlog > 0
        done = self.completed(batch, [call for _, _, call in calls])
        released = []
        for h, keep, (_, handle, _) in calls:
            reply = batch[handle]  # type: ignore[index]  # holds are never counted here (``table_only``)
            if reply == HOLD and not (idle and crowded):
                h.pause = min(2 * h.pause, HOLD_PAUSE_MAX_S)
                h.ask_at = min(now + h.pause, h.deadline)
            elif reply in (HOLD, STORE_NOW):
                h.store, h.ask_at = True, now
            else:
                if keep and isinstance(reply, list):
                    self.stats[2] += 1  # this fan-in runs here and the held value is never stored
                self.holds.remove(h)
                released.append(h.out.tid)
        finished = {c.tid for c in done}
        for h in [h for h in self.holds if h.c.tid in finished]:  # its other values held here ran it too
            self.holds.remove(h)
            released.append(h.out.tid)
        for t, value in self.fetch_fanin_inputs(done).items():
            self.data[t] = value
        for c in reversed(done):
            self.push(c.sched, c.pos)
        for tid in released:  # release the holds taken in ``hold``
            self.refs[tid] -= 1
            if self.refs[tid] == 0:
                del self.refs[tid], self.data[tid]

    def pause_holding(self) -> None:
        """Sleep until a held output's next turn (an injected crash happens here)."""
        faults = self.ex.faults
        if faults is not None and (
            (self.crash_after is not None and self.ndone >= self.crash_after)
            or (not self.careful and faults.dies_holding())
        ):
            os._exit(CRASH_EXIT)  # fault injection: die holding a value nobody else has
        pause = min(h.ask_at for h in self.holds) - time.monotonic()
        if pause > 0:  # nothing to do but wait for a fan-in: the client counts this idle
            waiting = time.time()
            time.sleep(pause)
            self.waits += (waiting, time.time())

    def fetch_fanin_inputs(self, local: list[Dependent]) -> dict[int, Any]:
        """One round trip (at most) for what the tasks about to run here lack."""
        batch = self.store.batch()
        take = self.request_inputs(batch, local)
        return take(self.send(batch) if batch else batch)

    def request_inputs(self, batch: Batch, local: list[Dependent]) -> Callable[[Batch], dict[int, Any]]:
        """Add to ``batch`` the reads of what the tasks about to run here lack; returns
        what takes their values from its replies (all of them: those found here too).

        A dependent on another schedule needs that schedule (a completed
        fan-in's came with the fan-in reply); a fan-in needs the outputs of
        its other parents from the KVS.
        """
        scheds = sorted({c.sched for c in local if c.sched not in self.scheds})
        # a fan-in whose schedule is not here yet was completed locally: its inputs are all held
        want = sorted(
            {
                d
                for c in local
                if c.ndeps > 1 and c.sched in self.scheds
                for d in self.scheds[c.sched].records[c.pos].deps
                if d not in self.data
            }
        )
        early, self.early = self.early, {}
        values = self.shared(want)
        values |= {t: self.load_remote(t, early[t]) for t in want if t in early and t not in values}
        want = [t for t in want if t not in values]
        h_scheds = [batch.get_value(self.store.mds_index, self.keys.schedule(s)) for s in scheds]
        handles = batch.kvs_get_many([self.keys.data(t) for t in want])

        def take(batch: Batch) -> dict[int, Any]:
            for s, h in zip(scheds, h_scheds, strict=True):
                if batch[h] is None:
                    raise JobGone()
                self.scheds[s] = Schedule(batch[h])
            return values | {t: self.load_remote(t, batch[h]) for t, h in zip(want, handles, strict=True)}

        return take

    def narrow(self, heads: int) -> bool:
        """Whether a fan-out to ``heads`` new schedules is started in fewer invocations
        than the local cluster's other executors (a proxy spreads them itself)."""
        groups = self.ex.fanout_groups
        return self.ex.proxy is None and self.ex.executors > 0 and groups is not None and heads <= groups

    def share(self, ready: list[Dependent], become: Dependent) -> list[Dependent]:
        """The new schedules this executor starts itself, besides ``become``: on a local
        cluster, its share of a narrow fan-out (see the module docstring)."""
        heads = [c for c in ready if c is not become and c.ndeps == 1 and c.pos == 0]
        if not heads or not self.narrow(len(heads)):
            return []
        return heads[: -(-len(ready) // self.ex.executors) - 1]  # ceil(len(ready) / executors) here in all

    def send_away(self, batch: Batch, out: _Output, away: list[Dependent]) -> None:
        """Invoke executors for dependents that will not run here."""
        job, tid = self.inv.job, out.tid
        invs = []
        heads = [c for c in away if c.ndeps == 1 and c.pos == 0]
        groups = self.ex.fanout_groups if self.ex.proxy is None else None  # a proxy spreads them itself
        if heads and self.narrow(len(heads)):
            groups = max(1, self.ex.executors - 1)
        if groups and len(heads) > groups:  # siblings share invocations
            heads_set = set(heads)
            away = [c for c in away if c not in heads_set]
            for chunk in _cut(heads, groups):
                invs.append(self.head_invocation(out, chunk[0], tuple(c.sched for c in chunk[1:])))
        for c in away:
            if c.ndeps == 1:
                invs.append(self.head_invocation(out, c))
            else:
                deps = self.scheds[c.sched].records[c.pos].deps
                invs.append(Invocation(job, c.sched, c.pos, {}, deps))
        for inv in invs:  # kept so that a lost invocation can be sent again
            batch.mds("set", self.keys.invocation(inv.id), protocol.encode_invocation(inv), self.store.ttl)
            batch.record(self.store.mds_index, self.keys.invocation(inv.id))
        self.counts(batch, invoked=[inv.id for inv in invs])
        if self.ex.proxy is not None and len(invs) >= self.ex.max_task_fanout:
            self.send(batch)  # the parent's output and the count of invocations go first
            if self.ex.proxy(job, tid, invs):
                return
            batch = self.store.batch()  # the proxy failed and the fan-out is ours: invoke directly
        launch(self.ex.invoke, batch, job, invs, send=self.send)

    def head_invocation(self, out: _Output, c: Dependent, more: tuple[int, ...] = ()) -> Invocation:
        """Start ``c`` (and the schedules ``more``, siblings that read only ``out``) elsewhere."""
        if out.size() <= self.ex.inline_limit:
            return Invocation(self.inv.job, c.sched, c.pos, {out.tid: out.blob()}, (), more)
        return Invocation(self.inv.job, c.sched, c.pos, {}, (out.tid,), more)

    def exit(self) -> None:
        batch, self.pending = self.pending, self.store.batch()
        if self.on_exit is not None:  # before the exit event: after it the client may stop reading
            self.on_exit(batch)
        for fields in self.exit_fields():
            protocol.emit_event(batch, self.keys, fields)
        self.counts(batch, exited=True)
        h = batch.lease(self.keys, self.inv.id, "done", 0)  # never recreated once the job has ended
        batch.execute(atomic=True)  # the client reads the results and the exit at once
        if batch[h] == -1:  # the job ended first: what this last round trip wrote is ours to delete
            batch.undo()


def _cut(items: list, n: int) -> list[list]:
    """``items`` in order, cut into ``n`` runs of nearly equal length."""
    size, extra = divmod(len(items), n)
    out, i = [], 0
    for g in range(n):
        j = i + size + (g < extra)
        out.append(items[i:j])
        i = j
    return out


class _Hold:
    """An output kept in memory for its fan-in (delayed I/O): until ``deadline``;
    asked again at ``ask_at``, after ``pause``; ``store``: told to store it now."""

    __slots__ = ("out", "c", "deadline", "ask_at", "pause", "store")

    def __init__(self, out: _Output, c: Dependent, deadline: float, ask_at: float):
        self.out, self.c, self.deadline, self.ask_at = out, c, deadline, ask_at
        self.pause = HOLD_PAUSE_S / 2  # doubled before its first use
        self.store = False


class _Output:
    """A finished task's output, serialized once, on first need.

    ``parts`` are the serialized value in pieces (large buffers are the
    value's own memory, not copies: they are written out before any task
    that may modify the value runs); ``blob`` joins them when one ``bytes``
    is needed (inline in an invocation, on the event stream).
    """

    __slots__ = ("run", "tid", "key", "value", "_parts", "_size", "_blob")

    def __init__(self, run: _Run, tid: int, key: Any, value: Any):
        self.run, self.tid, self.key, self.value = run, tid, key, value
        self._parts: list[bytes | memoryview] | None = None
        self._size = 0
        self._blob: bytes | None = None

    def parts(self) -> list[bytes | memoryview]:
        if self._parts is None:
            self._parts = self.run.dumps(self.key, self.value)
            self._size = sum(len(p) for p in self._parts)
        return self._parts

    def size(self) -> int:
        self.parts()
        return self._size

    def size_hint(self) -> int:
        """The serialized size if known or cheap to tell (a number, a numeric array), else
        the object's own size (``sys.getsizeof``: not what it refers to)."""
        if self._parts is not None:
            return self._size
        bound = _size_bound(self.value)
        return bound if bound is not None else sys.getsizeof(self.value)

    def at_most(self, limit: int) -> bool:
        """Whether the serialized value is at most ``limit`` bytes: for a number or a
        numeric array told without serializing it (an output only used here never is)."""
        if self._parts is None:
            bound = _size_bound(self.value)
            if bound is not None and bound <= limit:
                return True
        return self.size() <= limit

    def blob(self) -> bytes:
        if self._blob is None:
            parts = self.parts()
            first = parts[0]
            one = len(parts) == 1 and not isinstance(first, memoryview)  # a buffer's view is joined (copied)
            self._blob = first if one and not isinstance(first, memoryview) else b"".join(parts)
        return self._blob


_NUMBERS = (bool, int, float, complex, type(None))
PICKLE_OVERHEAD = 1024  # bytes; more than pickle adds to a number or a numeric array's data


def _size_bound(value: Any) -> int | None:
    """An upper bound of ``value``'s serialized size when cheap to tell, else ``None``."""
    if type(value) in _NUMBERS:
        return PICKLE_OVERHEAD + (value.bit_length() // 8 if type(value) is int else 0)
    np = sys.modules.get("numpy")
    if np is not None and (type(value) is np.ndarray or isinstance(value, np.generic)) and not value.dtype.hasobject:
        return PICKLE_OVERHEAD + value.nbytes
    return None

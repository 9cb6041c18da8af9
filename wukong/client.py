"""``Client.get``: a Dask ``get`` that runs the graph on a wukong cluster.

One call is one job:

1. ``graph.prepare`` converts, culls and validates the graph;
2. ``scheduler.plan`` interns keys, builds the static schedules and encodes
   them with their pickled task bodies;
3. the schedules go to the metadata store and the leaf schedules are invoked
   (grouped a few per local worker; one invocation each on Lambda), all in
   one pipeline;
4. the client reads the job's event stream with blocking reads: results,
   errors, tasks done, and which invocations were made and which exited --
   by id, so a duplicated or re-run invocation never confuses the count;
   a watchdog sends again an invocation whose lease stays missing (its
   executor died, or it was never delivered: ``wukong.recovery``);
5. when every executor has exited, every key of the job is deleted and the
   results are returned in the nesting of ``keys`` (or the first task error
   is raised as its original type, carrying the remote traceback).

Around that loop (issue 14): Dask's callbacks fire from the timings in the
count events and each job leaves a ``JobRecord`` in ``client.jobs``
(``wukong.diagnostics``); futures, ``compute``/``submit``/``map``/``persist``
run jobs that hold their results in the KVS (``wukong.futures``), through the
same ``run_job``, callbacks included, and can be awaited in asyncio code
(``gather(asynchronous=True)``, ``Client(asynchronous=True)``); the client
can be Dask's default scheduler (``set_as_default``).
"""

from __future__ import annotations

import contextlib
import gc
import json
import secrets
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Generator, Hashable, Iterator
from typing import Any

import dask
import redis

from wukong import config as wukong_config
from wukong import protocol, serialization, task_warnings, versions
from wukong.backends.base import Backend, launch
from wukong.cost import cost_summary
from wukong.diagnostics import DaskCallbacks, InvocationRun, JobRecord, TaskRun, active_callbacks, note
from wukong.durations import TaskDurations
from wukong.errors import JobCancelled, JobFailed, ValuesLost, task_error
from wukong.futures import Future, Futures, as_completed, submit_graph, task_key, until_done, wait
from wukong.graph import acquire_dask_defaults, dask_defaults, flatten_keys, prepare, release_dask_defaults
from wukong.progress import ProgressBar
from wukong.protocol import Invocation, Keys, decode_invocation
from wukong.recovery import resend
from wukong.scheduler import Plan, plan
from wukong.store import Batch, JobWrites, StorageError, Store, shm

BLOCK_MS = 250  # a blocking read returns at least this often, to redraw progress
WRITE_BYTES = 32 << 20  # schedule blobs sent per pipeline (Job.submit)
FIRST_GROUP = 16  # leaves in the first invocation of a grouped launch (group_leaves)
DRAIN_S = 30.0  # after a failure, how long executors get to notice the cancel flag


class Client:
    """Runs Dask graphs on a wukong cluster.

    Parameters
    ----------
    cluster : LocalCluster, optional
        Without one, the client starts a ``LocalCluster`` (configured by
        ``dask.config``'s ``wukong`` namespace) and closes it on ``close()``.
    progress : bool, optional
        Show a progress bar on jobs that take longer than about a second
        (default: ``wukong.progress``).
    set_as_default : bool
        Make this client Dask's scheduler (``dask.config.set(scheduler=client)``):
        a bare ``.compute()``, ``dask.compute``, ``dask.persist`` and the
        computes Dask runs while building graphs run on wukong until
        ``close()``; shuffles are task-based meanwhile (``dataframe.shuffle.method``,
        as with distributed).  ``scheduler=client`` and ``scheduler=client.get``
        work either way.
    asynchronous : bool
        For asyncio code, as distributed's: ``gather`` (and so
        ``compute(sync=True)``) returns a coroutine to ``await``; ``await client``
        and ``async with`` work.  Whatever this says, ``await future`` works
        in a running loop, and ``submit``/``compute``/``persist`` return at once.

    While a client is open, Dask builds shuffles (``bag.groupby``,
    ``df.shuffle``, ``merge``) task-based, as with a distributed client:
    ``dataframe.shuffle.method`` is ``"tasks"`` unless set by the user
    (``wukong.graph.DASK_DEFAULTS``).  Dask's disk shuffle keeps its data in
    one process's temporary directory, which executors do not share; a graph
    built with it fails with ``GraphError``.

    Examples
    --------
    >>> with Client(set_as_default=True) as client:   # doctest: +SKIP
    ...     x.sum().compute()                          # on wukong
    ...     f = client.submit(inc, 1)
    ...     y = client.persist(x)                      # chunks stay in the KV store
    """

    def __init__(
        self,
        cluster: Any = None,
        *,
        progress: bool | None = None,
        set_as_default: bool = False,
        asynchronous: bool = False,
    ):
        self.owns_cluster = cluster is None
        self.asynchronous = asynchronous
        if cluster is None:
            from wukong.cluster import LocalCluster

            cluster = LocalCluster()
        self.cluster = cluster
        self.progress = wukong_config.get("progress", True) if progress is None else progress
        self.last_job: dict[str, Any] = {}
        self.active: set[Job | _Starting] = set()  # jobs running, and being planned
        acquire_dask_defaults()
        self._release = weakref.finalize(self, release_dask_defaults)
        self.jobs: deque[JobRecord] = deque(maxlen=wukong_config.get("jobs-kept", 20))
        self.futures = Futures(self)
        self.durations = TaskDurations()  # what tasks took here, for the solo decision (``wukong.durations``)
        self._as_default: Any = None
        if set_as_default:
            import dask

            # tasks-based shuffles, as with distributed: a disk shuffle needs one shared process
            self._as_default = dask.config.set({"scheduler": self, "dataframe.shuffle.method": "tasks"})

    @property
    def store(self) -> Store:
        return self.cluster.store

    @property
    def backend(self) -> Backend:
        return self.cluster.backend

    def get(self, dsk: Any, keys: Any, **kwargs: Any) -> Any:
        """Compute ``keys`` of ``dsk``; the ``scheduler=`` entry point for Dask.

        Accepts what Dask hands a scheduler (an expression, a HighLevelGraph
        or a dict, legacy tuple tasks included, futures of this client too).

        Options: ``progress``; ``retries`` (re-run a failing task up to this
        many times; default: the cluster's); ``timeout`` (seconds for the
        whole job); ``task_timeout`` (seconds for any one task);
        ``callbacks`` (Dask callbacks for this job, besides the active ones);
        ``store_values`` (a local cluster of one worker process keeps
        intermediate values in that process's memory only, and runs the job
        again if the process dies; ``True`` stores them as a cluster of
        several processes does, so that a crash costs only the lost work).
        """
        callbacks = active_callbacks(kwargs.pop("callbacks", None))
        results = self.run_job(dsk, flatten_keys(keys), callbacks=callbacks, **kwargs)
        return _nested(keys, results)

    __call__ = get  # ``scheduler=client``: Dask calls a callable scheduler as its ``get``

    def run_job(
        self,
        dsk: Any,
        outputs: list[Hashable],
        *,
        hold: bool = False,
        callbacks: list[tuple] | None = None,
        on_start: Callable[[Job], None] | None = None,
        on_held: Callable[[Hashable, str], None] | None = None,
        **kwargs: Any,
    ) -> dict:
        """Run one job; its results by key (``hold``: results stay in the KVS,
        ``on_held(key, name)`` says where, as each is stored)."""
        progress = kwargs.pop("progress", self.progress)
        options = {
            "retries": int(kwargs.pop("retries", self.cluster.retries)),
            "task_timeout": kwargs.pop("task_timeout", None),
        }
        if hold:
            options["hold"] = True
        if kwargs.pop("store_values", False):
            options["store_values"] = True
        timeout = kwargs.pop("timeout", None)
        kwargs.pop("num_workers", None)
        starting = _Starting()  # a cancel while the job is planned is not lost
        self.active.add(starting)
        try:
            return self._run_job(dsk, outputs, starting, progress, options, timeout, callbacks, on_start, on_held)
        finally:
            self.active.discard(starting)

    def _run_job(
        self,
        dsk: Any,
        outputs: list[Hashable],
        starting: _Starting,
        progress: bool,
        options: dict,
        timeout: float | None,
        callbacks: list[tuple] | None,
        on_start: Callable[[Job], None] | None,
        on_held: Callable[[Hashable, str], None] | None,
    ) -> dict:
        versions.check_backend(self.backend)  # before any task runs: a mismatch fails here
        with gc_thawed():  # after gc_paused's freezes
            t0 = time.perf_counter()
            record = JobRecord("", time.time())
            dsk = self.futures.substitute(dsk)
            with gc_paused(), dask.config.set(dask_defaults()):  # an expression is lowered here
                order, graph = prepare(dsk, outputs)
                job_plan = plan(order, graph, outputs) if order else None
            if job_plan is None:  # nothing to run (``get({}, [])``): what Dask's own schedulers return
                return {}
            if self.durations.solo(order, job_plan.nschedules, wukong_config.get("solo-work", None)):
                options = {**options, "solo": True}
            t1 = time.perf_counter()
            dask_cbs = DaskCallbacks(callbacks, graph, outputs, order) if callbacks else None
            if dask_cbs is not None and dask_cbs.shows_progress:
                progress = False  # Dask's own bar is drawing
            # A one-process local cluster keeps intermediates in its memory only; if they go
            # with the process (``ValuesLost``), the job runs again, its values stored.
            for again in range(2):
                if again:  # its own record: its own plan and run time
                    record = JobRecord("", time.time())
                    options = {**options, "store_values": True}
                    t0 = time.perf_counter()
                    with gc_paused(), dask.config.set(dask_defaults()):
                        job_plan = plan(order, graph, outputs)
                    t1 = time.perf_counter()
                job = Job(self, job_plan, progress, options, timeout, order, record, dask_cbs, on_held)
                record.job, record.ntasks, record.nschedules = job.keys.job, len(order), job_plan.nschedules
                record.noutputs, record.plan_s, record.solo = len(outputs), t1 - t0, "solo" in options
                self.jobs.append(record)
                note(record)  # open performance_report blocks
                if on_start is not None:
                    on_start(job)
                self.active.add(job)
                self.active.discard(starting)
                if starting.cancelled:
                    job.cancel(by_user=True)
                rerun = False
                try:
                    results = job.run()
                except BaseException as exc:
                    record.status = "cancelled" if isinstance(exc, JobCancelled) else "error"
                    record.error = f"{type(exc).__name__}: {exc}"
                    rerun = isinstance(exc, ValuesLost) and not again
                    if not rerun:
                        raise
                finally:
                    self.active.discard(job)
                    record.run_s = time.perf_counter() - t1
                    record.invocations = len(set(job.starts) | job.exited | set(job.live))
                    if dask_cbs is not None and not rerun:
                        dask_cbs.finish(record.status != "running")
                if not rerun:
                    break
            record.status = "finished"
            self.durations.learn((t.key, t.end - t.start) for t in record.tasks)
            self.last_job = {"tasks": len(order), "schedules": job_plan.nschedules, "solo": "solo" in options}
            self.last_job.update(plan_s=t1 - t0, run_s=record.run_s)
            cost = self.backend.job_cost(job.durations)
            if cost is not None:
                self.last_job["cost"] = record.cost = cost
                if progress:
                    print(cost_summary(cost), file=sys.stderr)
            return results

    # -- futures (wukong.futures), with distributed's names -----------------------
    def compute(self, collections: Any, *, sync: bool = False, optimize_graph: bool = True, **kwargs: Any) -> Any:
        """Start computing; a ``Future`` per collection (a list for a list), at once
        (``sync=True``: their values, once done)."""
        import dask

        many = isinstance(collections, list | tuple)
        colls = list(collections) if many else [collections]
        futures = dask.compute(*colls, scheduler=self.futures.get, optimize_graph=optimize_graph, **kwargs)
        out = list(futures) if many else futures[0]
        return self.gather(out) if sync else out

    def scatter(self, data: Any) -> Any:
        """Put local data in the KV store: a ``Future`` for a value, a list or dict of them for a list or dict."""
        if isinstance(data, dict):
            return dict(zip(data, self.futures.scatter(list(data.values())), strict=True))
        if isinstance(data, list | tuple):
            return type(data)(self.futures.scatter(list(data)))
        return self.futures.scatter([data])[0]

    def persist(self, collections: Any, *, optimize_graph: bool = True, **kwargs: Any) -> Any:
        """The same collection(s), with chunks held in the KV store (futures) instead of a graph to run."""
        import dask

        many = isinstance(collections, list | tuple)
        colls = list(collections) if many else [collections]
        out = dask.persist(*colls, scheduler=self.futures.get, optimize_graph=optimize_graph, **kwargs)
        return list(out) if many else out[0]

    def submit(self, fn: Callable, *args: Any, key: Hashable | None = None, pure: bool = True, **kwargs: Any) -> Future:
        """Run ``fn(*args, **kwargs)`` on the cluster; futures among the arguments are read where stored."""
        key = key or task_key(fn, args, kwargs, pure)
        return self.futures.launch(submit_graph(fn, args, kwargs, key), [key])[0]

    def map(self, fn: Callable, *iterables: Any, key: Any = None, pure: bool = True, **kwargs: Any) -> list[Future]:
        """``submit`` for each element of ``iterables`` (zipped); one job for all."""
        argsets = list(zip(*iterables, strict=False))
        keys = list(key) if isinstance(key, list | tuple) else [task_key(fn, a, kwargs, pure) for a in argsets]
        if isinstance(key, str):
            keys = [f"{key}-{i}" for i in range(len(argsets))]
        graph: dict = {}
        for k, a in zip(keys, argsets, strict=True):
            graph.update(submit_graph(fn, a, kwargs, k))
        return self.futures.launch(graph, keys)

    def gather(self, futures: Any, errors: str = "raise", asynchronous: bool | None = None) -> Any:
        """The values of (nested lists/dicts of) futures; the held values are read in one round trip per server.

        ``errors="skip"`` leaves out failed futures (from lists) instead of raising.
        ``asynchronous`` (default: the client's): a coroutine to ``await`` in
        asyncio code instead; the loop is not blocked while it waits or reads.
        """
        if self.asynchronous if asynchronous is None else asynchronous:
            return self._gather_async(futures, errors)
        flat = _futures_in(futures)
        wait(flat)
        ok = [f for f in flat if f.status == "finished"]
        if errors == "raise" and len(ok) < len(flat):
            bad = next(f for f in flat if f.status != "finished")
            bad.result()
        values = dict(zip([id(f) for f in ok], self.futures.fetch(ok), strict=True))
        return _pack(futures, values)

    async def _gather_async(self, futures: Any, errors: str) -> Any:
        import asyncio

        await until_done(_futures_in(futures))
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, lambda: self.gather(futures, errors, asynchronous=False))

    def cancel(self, futures: Any = None) -> None:
        """Cancel ``futures`` (their jobs stop when no future waits on them).

        Without arguments: stop the running ``get`` jobs (from another thread):
        their executors stop before their next task, their keys are deleted,
        and ``get`` raises ``JobCancelled``."""
        if futures is not None:
            self.futures.cancel([f.key for f in _futures_in(futures)])
            return
        for job in list(self.active):
            job.cancel(by_user=True)

    wait = staticmethod(wait)
    as_completed = staticmethod(as_completed)

    def close(self) -> None:
        """Cancel running futures, delete every held result, stop being the
        default scheduler, give back Dask's defaults (``DASK_DEFAULTS``), and close
        the cluster if this client started it."""
        self.futures.close()
        if self._as_default is not None:
            self._as_default.__exit__(None, None, None)
            self._as_default = None
        self._release()  # Dask's defaults (DASK_DEFAULTS) back
        if self.owns_cluster:
            self.cluster.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ``client = await Client(asynchronous=True)`` and ``async with``, as with distributed
    def __await__(self) -> Generator[Any, None, Client]:
        import asyncio

        yield from asyncio.sleep(0).__await__()
        return self

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        import asyncio

        await asyncio.get_running_loop().run_in_executor(None, self.close)  # close joins threads: not on the loop


_gc_lock = threading.Lock()
_gc_jobs = 0  # jobs inside ``gc_thawed``
_gc_ours = False  # nothing was frozen when the first of them began: what is frozen is theirs


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while a job is planned and submitted; what
    planning made is frozen (``gc.freeze``) until the job ends (``gc_thawed``),
    unless the caller had frozen objects of its own: those are not ours to
    thaw, and ours could not be told apart from them.

    Planning makes a few objects per task and frees little; at a million tasks
    the collector's full passes over them cost about a third of the client's
    CPU (``python -m bench.plan``).  Unfrozen, the first collection after the
    pause, and each full one while the job runs, would scan them all again:
    on a 100k-task job that was a third of the client's CPU.  Left as it was
    if it was already off.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if _gc_ours:
            gc.freeze()
        if enabled:
            gc.enable()


@contextlib.contextmanager
def gc_thawed() -> Iterator[None]:
    """Around a job: what ``gc_paused`` froze is collectable again once the last
    of the jobs running together ends.  When the first of them began with
    objects already frozen (the caller's own ``gc.freeze``), nothing is frozen
    or thawed: thawing would undo the caller's freeze, and never thawing made
    each job's planning garbage permanent (and every later job slower: the
    frozen list grew by a job's objects each time)."""
    global _gc_jobs, _gc_ours
    with _gc_lock:
        if _gc_jobs == 0:
            _gc_ours = gc.get_freeze_count() == 0  # walks the caller's frozen objects: once per batch of jobs
        _gc_jobs += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_jobs -= 1
            if _gc_jobs == 0 and _gc_ours:
                gc.unfreeze()


class _Starting:
    """A job being planned: ``Client.cancel`` marks it, and the job is cancelled as it starts."""

    cancelled = False

    def cancel(self, by_user: bool = False) -> None:
        self.cancelled = True


def group_leaves(leaves: list[int], ngroups: int | None) -> list[list[int]]:
    """Cut the leaf schedules, in order, into about ``ngroups`` invocations.

    One invocation per leaf costs a queue round trip and a start-up each; a
    backend with bounded concurrency gains nothing from more invocations than
    it can run at once.  Contiguous runs of leaves (ids follow the graph's
    order) tend to share fan-ins, which then complete inside one executor
    from its batched notifications.  ``None``: one invocation per leaf (Lambda).

    The first groups are smaller (``FIRST_GROUP`` leaves, then doubling: they
    end at ``FIRST_GROUP * 2**k``, aligned with a tree reduction over the
    leaves): the client invokes a group once its schedules are written
    (``Job.submit``), so the executors start on the first leaves while the
    client still writes the rest.
    """
    if not ngroups or len(leaves) <= ngroups:
        return [[s] for s in leaves]
    size = -(-len(leaves) // ngroups)
    groups = []
    i, step = 0, min(FIRST_GROUP, size)
    while i < len(leaves):
        groups.append(leaves[i : i + step])
        i += step
        step = min(size, i)
    return groups


def _nested(keys: Any, results: dict) -> Any:
    if isinstance(keys, list):
        return tuple(_nested(k, results) for k in keys)
    return results[keys]


def _futures_in(x: Any) -> list[Future]:
    if isinstance(x, Future):
        return [x]
    if isinstance(x, dict):
        x = list(x.values())
    if isinstance(x, list | tuple | set):
        return [f for item in x for f in _futures_in(item)]
    return []


def _pack(x: Any, values: dict[int, Any]) -> Any:
    """``x`` with each future replaced by its value (failed ones left out)."""
    if isinstance(x, Future):
        return values[id(x)]
    if isinstance(x, dict):
        return {k: _pack(v, values) for k, v in x.items() if not isinstance(v, Future) or id(v) in values}
    if isinstance(x, list | tuple | set):
        return type(x)(_pack(v, values) for v in x if not isinstance(v, Future) or id(v) in values)
    return x


class Job:
    """One run of a plan on the cluster (see the module docstring)."""

    def __init__(
        self,
        client: Client,
        job_plan: Plan,
        progress: bool,
        options: dict,
        timeout: float | None,
        order: list[Hashable] | None = None,
        record: JobRecord | None = None,
        callbacks: DaskCallbacks | None = None,
        on_held: Callable[[Hashable, str], None] | None = None,
    ):
        self.client = client
        self.cluster = client.cluster
        self.backend = client.backend
        self.store = client.store
        self.plan = job_plan
        self.options = options
        self.deadline = time.monotonic() + timeout if timeout else None
        self.timeout = timeout
        self.keys = Keys(secrets.token_hex(8))
        self.bar = ProgressBar(job_plan.ntasks) if progress else None
        self.results: dict[Any, Any] = {}
        self.error: BaseException | None = None
        self.user_cancel = False
        self.live: dict[str, float | None] = {}  # invocation id -> since when its lease is missing
        self.primaries: set[str] = set()  # Redis Cluster: the masters serving slots when it started
        self.exited: set[str] = set()
        self.seen_running: set[str] = set()  # invocations the watchdog saw running (``watch``)
        self.starts: dict[str, Invocation] = {}
        self.done = 0
        self.done_by: dict[str, dict[str, int]] = {}  # invocation id -> attempt -> tasks done
        self.last_id = b"0-0"
        self.durations: list[tuple[float, int]] = []
        lease_s = self.cluster.lease_ms / 1000
        self.watch_every, self.lost_after = lease_s / 2, 2 * lease_s
        if self.backend.sees_in_flight:
            # the backend shows every invocation in flight: one missing from all
            # of them, with no lease, for two checks is lost
            self.lost_after = 2 * self.watch_every
        self.next_watch = time.monotonic() + self.watch_every
        self.order = order  # task id -> key
        self.record = record if record is not None else JobRecord(self.keys.job, time.time())
        self.callbacks = callbacks
        self.on_held = on_held
        self.cleanup_lock = threading.Lock()
        self.cleaned = False

    @property
    def outstanding(self) -> int:
        return len(self.live)

    def run(self) -> dict:
        try:
            with gc_paused():
                self.submit()
            self.wait()
        except BaseException:  # KeyboardInterrupt included: stop the job, then re-raise
            self.cancel()
            self.drain(DRAIN_S)
            self.cleanup()
            raise
        self.cleanup(soon=self.error is None)
        if self.error is not None:
            raise self.error
        return self.results

    def submit(self) -> None:
        """Write the schedules and invoke the leaves, streamed: the schedules go in the
        plan's write order, pickled as they go, in pipelines of about ``WRITE_BYTES``
        (one pipeline's blobs in memory at a time), and each group of leaves is
        invoked as soon as every schedule it may read is written (``Plan.ready``).
        While a group waits, a pipeline is sent once it holds as many bytes as were
        written before it: the first leaves start early, in few round trips.  (Where
        every leaf is its own invocation, on Lambda, they are launched together at the
        end: one invoker tree.)"""
        p, keys, store = self.plan, self.keys, self.store
        self.primaries = store.primary_ids() if store.cluster is not None else set()
        self.check_backend()
        batch = store.batch()
        options = json.dumps(self.options)
        batch.mds("set", keys.options, options, store.ttl)
        protocol.emit_start(batch, keys, store.ttl)
        if self.options.get("solo"):  # one invocation runs it all (``wukong.durations``)
            self.submit_solo(batch, options)
            return
        leaves = list(range(len(p.leaf_schedules)))  # leaf indexes
        groups = group_leaves(leaves, self.backend.leaf_groups)
        # One invocation per leaf (Lambda): all of them go in one launch once every schedule
        # is written, so a wide one is one invoker tree (O(branching) requests of the client)
        # rather than a tree per streamed step.
        streamed = self.backend.leaf_groups is not None
        g = done = size = sent = 0  # groups invoked, schedules written, bytes pending, bytes written
        names: list[str] = []
        blobs: list[bytes] = []
        for sid in p.write_order:
            blobs.append(p.schedules[sid])
            names.append(keys.schedule(sid))
            size += len(blobs[-1])
            due = streamed and g < len(groups) and p.ready[groups[g][-1]] <= done + len(names)
            if size < WRITE_BYTES and not (due and size >= sent) and len(names) + done < p.nschedules:
                continue
            batch.set_many(store.mds_index, names, blobs)  # a huge blob is split
            done, sent, size, names, blobs = done + len(names), sent + size, 0, [], []
            starts = []
            while g < len(groups) and p.ready[groups[g][-1]] <= done and (streamed or done == p.nschedules):
                group = [p.leaf_schedules[i] for i in groups[g]]
                starts.append(Invocation(keys.job, group[0], 0, {}, (), tuple(group[1:])))
                g += 1
            if starts and store.cluster is None:  # one MDS server runs the pipeline in order:
                self.launch(starts, batch)  # the schedules are written before the invocations
            else:  # on a Redis Cluster the invocations may go to another node: after the writes
                batch.execute()
                if starts:
                    self.launch(starts)
            batch = store.batch()
        p.schedules = []  # the graph behind them is not kept for the run

    def submit_solo(self, batch: Batch, options: str) -> None:
        """A solo job: every schedule in one blob (``Schedules.whole``), and one invocation
        that reads it (``protocol.WHOLE_JOB``), sent in the same round trip.  Where the
        backend takes it, the blob travels in the invocation with the job's ``options``
        (``Backend.inline_plan``)."""
        p, keys, store = self.plan, self.keys, self.store
        blob = p.schedules.whole()  # type: ignore[attr-defined]
        p.schedules = []
        start = Invocation(keys.job, p.leaf_schedules[0], 0, {}, (), protocol.WHOLE_JOB)
        if len(blob) <= self.backend.inline_plan:
            start = start._replace(plan=blob, options=options)
        else:
            batch.set_many(store.mds_index, [keys.plan], [blob])
        if store.cluster is None:  # one MDS server runs the pipeline in order
            self.launch([start], batch)
        else:
            batch.execute()
            self.launch([start])

    def launch(self, starts: list[Invocation], batch: Batch | None = None) -> None:
        """Invoke ``starts`` (with ``batch``'s commands first, in its round trip)."""
        self.starts.update((inv.id, inv) for inv in starts)
        self.live.update(dict.fromkeys(inv.id for inv in starts))
        launch(self.backend.invoke, batch if batch is not None else self.store.batch(), self.keys.job, starts)
        if not self.record.first_s:
            self.record.first_s = time.time() - self.record.started
        self.record.launch_s = time.time() - self.record.started

    def wait(self) -> None:
        while self.live:
            if self.error is not None:  # executors stop at their next round trip
                self.drain(DRAIN_S)
                break
            if self.deadline is not None and time.monotonic() > self.deadline:
                self.fail(
                    JobFailed(
                        f"job {self.keys.job} timed out after {self.timeout}s "
                        f"({self.done}/{self.plan.ntasks} tasks done)"
                    )
                )
                continue
            self.read_events(BLOCK_MS)
            if time.monotonic() > self.next_watch:
                self.watch()
            if self.bar is not None:
                self.bar.update(self.done)
        if self.bar is not None:
            self.bar.finish(self.done)
        if self.error is None and len(self.results) < len(self.plan.outputs):
            missing = [k for k in self.plan.outputs.values() if k not in self.results]
            raise JobFailed(f"job {self.keys.job} ended without results for {missing[:5]!r}")

    def read_events(self, block_ms: int) -> None:
        try:
            reply: Any = self.store.mds.xread({self.keys.events: self.last_id}, count=10_000, block=block_ms)
        except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
            name = self.store.name_of(self.store.mds_index)
            raise StorageError(
                f"lost the metadata store (Redis at {name}) while waiting for job {self.keys.job}: {e}"
            ) from None
        for _, entries in reply or ():
            for entry_id, fields in entries:
                self.last_id = entry_id
                self.handle(fields)

    def handle(self, f: dict) -> None:
        ev = protocol.parse_event(f)
        if ev.kind == "c":
            self.count_done(ev.attempt, ev.done)
            for inv_id in ev.invoked:
                if inv_id not in self.exited:
                    self.live.setdefault(inv_id, None)
            if ev.exited:
                self.exited.add(ev.exited)
                self.live.pop(ev.exited, None)
            if ev.worker:
                self.ran(ev)
        elif ev.kind == "d":  # an executor's duration and memory (lambda backend), for cost
            self.durations.append((ev.ms, ev.memory_mb))
        elif ev.kind == "r":
            self.results[self.plan.outputs[ev.tid]] = serialization.loads(ev.value)
        elif ev.kind == "w":  # a task's warnings, issued again here as Dask's local schedulers would
            for message, category, filename, lineno in protocol.decode_warnings(ev.value):
                task_warnings.reissue(message, category, filename, lineno)
        elif ev.kind == "R":  # a result too long for the stream, stored in the KVS
            self.read_stored_result(ev.tid)
        elif ev.kind == "h":  # a result held in the KVS for a future
            key = self.plan.outputs[ev.tid]
            self.results[key] = None
            if self.on_held is not None:
                self.on_held(key, self.keys.held(ev.tid))
        elif ev.kind == "e" and self.error is None:
            key, what, exc, tb = protocol.decode_error(ev.value)
            if isinstance(exc, ValuesLost):  # ``_run_job`` runs the job again
                self.fail(exc)
            elif key is None:
                detail = f": {type(exc).__name__}: {exc}" if exc is not None else ""
                trace = f"\n\nRemote traceback\n----------------\n{tb}" if tb else ""
                self.fail(JobFailed(f"job {self.keys.job}: {what}{detail}{trace}"))
            else:
                self.fail(task_error(key, what, exc, tb))

    def count_done(self, attempt: str, n: int) -> None:
        """Progress: a re-run invocation's tasks count once (its busiest attempt counts)."""
        inv_id, _, token = attempt.partition("@")
        if not n:
            return
        if not token:
            self.done += n
            return
        attempts = self.done_by.setdefault(inv_id, {})
        before = max(attempts.values(), default=0)
        attempts[token] = attempts.get(token, 0) + n
        self.done += max(attempts.values()) - before

    def ran(self, ev: protocol.Event) -> None:
        """An executor's report of the tasks it ran: into the job record and Dask's callbacks."""
        r = self.record
        r.bytes_stored += ev.stats[0]
        r.fanin_round_trips += ev.stats[1]
        r.held_fanins += ev.stats[2]
        r.bytes_fetched += sum(t[4] for t in ev.timings)
        if ev.span is not None:
            sent, picked, ended, waits = ev.span
            r.runs.append(InvocationRun(ev.exited, ev.worker, sent, picked, ended, waits))
        if self.order is None:
            return
        for tid, start, end, cpu, fetched in ev.timings:
            key = self.order[tid]
            r.tasks.append(TaskRun(key, start, end, ev.worker, fetched, cpu))
            if self.callbacks is not None:
                self.callbacks.ran(key, start, end, ev.worker)

    def fail(self, error: BaseException) -> None:
        if self.error is None:
            self.error = error
        self.cancel()

    def watch(self) -> None:
        """Send again invocations whose lease has been missing for ``lost_after``.

        A lease exists while an executor runs an invocation and says "done"
        after; one missing means not started yet, or lost.  Invocations still
        queued on a local cluster are not lost, so nothing is sent while the
        queue holds any.  A backend that does not show its queue (Lambda: an
        Event invoke waits in the function's queue while its concurrency is
        used up, for as long as it takes) has an invocation never seen running
        counted as lost only while none of the job's invocations runs: queued
        behind them, it is not lost, and a dropped one is sent again once they
        are done.  Nor before ``lost_after`` plus the backend's ``start_grace``:
        a cold start (Lambda's Init, up to 10 s) takes no lease until it ends,
        and the first invocations of a job, or one started while nothing else
        of its job runs, would otherwise all be sent again and count towards
        ``max_attempts``.
        """
        now = time.monotonic()
        self.next_watch = now + self.watch_every
        self.check_backend()
        self.check_failover()
        ids = list(self.live)
        batch = self.store.batch()
        handles = [batch.mds("get", self.keys.lease(i)) for i in ids]
        batch.execute()
        leases = [batch[h] for h in handles]
        running = {i for i, lease in zip(ids, leases, strict=True) if lease is not None and lease != b"done"}
        self.seen_running |= running
        may_queue = not self.backend.sees_in_flight and bool(running)
        lost = []
        for inv_id, lease in zip(ids, leases, strict=True):
            if lease is not None or (may_queue and inv_id not in self.seen_running):
                self.live[inv_id] = None
            elif self.live[inv_id] is None:
                self.live[inv_id] = now
            elif now - (self.live[inv_id] or now) > self.lost_after + (
                0.0 if inv_id in self.seen_running else self.backend.start_grace
            ):
                lost.append(inv_id)
        if not lost or self.backend.backlog() > 0:
            return
        taken = self.backend.running(self.keys.job)
        lost = [i for i in lost if i not in taken]
        if not lost:
            return
        try:
            self.backend.probe_again()  # lost to a configuration broken since the first job's probe?
        except Exception:
            for inv_id in lost:  # never started: the job's end waits for the others only
                self.live.pop(inv_id, None)
            raise
        invs = self.invocations(lost)
        for inv_id in lost:
            self.live[inv_id] = None  # give the new delivery time to start
            self.seen_running.discard(inv_id)  # ... a cold start's, too: it has not been seen
        resend(
            self.store,
            self.backend.invoke,
            self.keys.job,
            invs,
            "an executor was lost",
            self.cluster.max_attempts,
            clear_leases=False,  # they had none when checked: one there now is a live delivery's
        )

    def check_failover(self) -> None:
        """On a Redis Cluster: a master that served the job's slots when it started and
        has failed since.  Its replica took over, but replication is asynchronous: writes
        the master acknowledged (a queued invocation, a fan-in arrival) may be lost, and
        the job could wait for them for ever.  It fails, naming the node."""
        if not self.primaries:
            return
        try:
            failed = self.store.failed_primaries(self.primaries)
        except (redis.RedisError, OSError):
            return  # the next read names what is unreachable
        if failed:
            self.fail(
                StorageError(
                    f"job {self.keys.job}: Redis Cluster master {', '.join(failed)} failed while it ran; its "
                    "replica took over, but writes the master had acknowledged may be lost (replication is "
                    "asynchronous), so the job was stopped: run it again"
                )
            )

    def check_backend(self) -> None:
        why = self.backend.unavailable()
        if why is not None:
            raise JobFailed(f"job {self.keys.job} cannot run: {why}")

    def invocations(self, ids: list[str]) -> list[Invocation]:
        """What was sent as ``ids``: the client's own, or as stored by the executor that sent it."""
        stored = [i for i in ids if i not in self.starts]
        values = self.store.mds.mget([self.keys.invocation(i) for i in stored]) if stored else []
        found = {i: decode_invocation(v) for i, v in zip(stored, values, strict=True) if v is not None}  # type: ignore[arg-type]
        return [self.starts[i] if i in self.starts else found[i] for i in ids if i in self.starts or i in found]

    def read_stored_result(self, tid: int) -> None:
        """A result the stream could not carry: its shared-memory file, mapped (the local
        backend's, named by its key: no round trip), else read from the KVS."""
        name = self.keys.data(tid)
        value: Any = None
        if self.store.shm_dir:
            with contextlib.suppress(FileNotFoundError):  # in Redis: too short, or no room in RAM
                value = shm.read(shm.marker(self.store.shm_dir, name))
        if value is None:
            batch = self.store.batch()
            (h,) = batch.kvs_get_many([name])
            value = batch.execute()[h]
        key = self.plan.outputs[tid]
        if value is None:
            raise JobFailed(f"job {self.keys.job}: the result of task {key!r} is missing from the KV store")
        self.results[key] = serialization.loads(value)

    def cancel(self, by_user: bool = False) -> None:
        with self.cleanup_lock:  # from another thread (a future cancelled) as the job ends: no key after cleanup
            if self.cleaned:
                return
            if by_user and self.error is None:
                self.error = JobCancelled(f"job {self.keys.job} was cancelled")
            try:
                self.store.mds.set(self.keys.cancel, 1, ex=self.store.ttl)
            except Exception:
                pass

    def drain(self, timeout: float) -> None:
        """After a failure: wait, bounded, until every executor of the job has exited."""
        deadline = time.monotonic() + timeout
        try:
            # with no executor to run them, invocations still queued never exit
            while self.outstanding > 0 and time.monotonic() < deadline and self.backend.unavailable() is None:
                self.read_events(BLOCK_MS)
        except Exception:
            pass

    def cleanup(self, soon: bool = False) -> None:
        """Delete the job's keys and files; ``soon``: on the store's own thread, after
        this returns (``Store.delete_job_soon``: a job that ended well)."""
        p = self.plan
        with self.cleanup_lock:
            self.cleaned = True
        ids = set(self.starts) | self.exited | set(self.live)
        if self.options.get("solo"):  # it wrote the plan blob, no schedule or fan-in key, only outputs' values
            written = JobWrites(p.ntasks, invocations=ids, stored=p.outputs)
        else:
            written = JobWrites(p.ntasks, p.nschedules, p.fanins, ids)
        if soon:
            self.store.delete_job_soon(self.keys, written)
            return
        try:
            self.store.delete_job(self.keys, written)
        except Exception:
            pass  # the TTL removes what we could not

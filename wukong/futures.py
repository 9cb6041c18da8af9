"""Futures: results that stay in the KV store until asked for, as distributed has them.

``client.compute``, ``submit``, ``map`` and ``persist`` start a job in a
thread of the client and return at once.  The job runs with the option
``hold``: each executor keeps a requested result in the KVS (``Keys.held``)
and says so on the job's stream (an ``h`` event), so a future becomes done as
soon as its own result is stored, not when the whole job ends.  Several jobs
run at once on one cluster, one client thread each.  Dask's callbacks
(``ProgressBar``, ``Profiler``, ...) active when a job is started fire from its
thread through ``Client.run_job``, as for ``get``; such a job's futures settle
after the callbacks' ``finish``, as ``get`` returns after it.

State, all on the client (``Futures``, one per client, under one lock):

* ``states[key]``: a ``FutureState`` per key -- pending, finished (with the
  held value's name), error (with the exception) or cancelled; the
  ``threading.Event`` that waiters block on; done callbacks.
* ``refs[key]``: how many ``Future`` objects name the key.  ``Future.__del__``
  only queues the key (it may run inside any code, even inside a Redis call
  holding a lock); a releaser thread drops the count and, at zero, deletes the
  held value (``wukong.store.held.release``).  A result that arrives for a key
  nobody refers to any more is deleted at once.  ``client.close()`` deletes
  everything; every held value also carries the store's TTL.

In asyncio code, ``await future`` and ``client.gather(..., asynchronous=True)``
(or any ``gather`` of a ``Client(asynchronous=True)``) never block the loop:
the futures' done callbacks wake it (``until_done``), and the one read of the
held values runs in the loop's default executor.

A future used by a later graph (an argument of ``submit``, a chunk of a
persisted collection) is never pulled through the client: ``substitute``
replaces it by a task that loads the held value on the executor that needs it
(``wukong.store.held.load``), after waiting for it to finish.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import queue
import threading
import uuid
from collections.abc import Callable, Generator, Hashable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from dask._task_spec import Task, TaskRef, convert_legacy_graph, parse_input

from wukong import serialization
from wukong.diagnostics import active_callbacks
from wukong.errors import JobCancelled, JobFailed
from wukong.store import held

if TYPE_CHECKING:
    from wukong.client import Client, Job


class FutureCancelledError(concurrent.futures.CancelledError):
    """The future was cancelled (``Future.cancel``, or its client closed)."""

    def __init__(self, key: Hashable, reason: str = "cancelled"):
        super().__init__(f"{key!r}: {reason}")
        self.key = key


class FutureState:
    """What the client knows of one key's result (see the module docstring)."""

    def __init__(self, key: Hashable):
        self.key = key
        self.status = "pending"
        self.name: str | None = None  # where the value is held, once finished
        self.exception: BaseException | None = None
        self.event = threading.Event()
        self.callbacks: list[Callable[[], None]] = []
        self.run: JobRun | None = None

    def done(self) -> bool:
        return self.event.is_set()

    def _settle(self, status: str) -> list[Callable[[], None]]:
        self.status = status
        self.event.set()
        callbacks, self.callbacks = self.callbacks, []
        return callbacks


class JobRun:
    """A futures job in flight: its thread, its ``Job`` once started, its keys."""

    def __init__(self, keys: list[Any]):
        self.keys = keys
        self.job: Job | None = None
        self.thread: threading.Thread | None = None
        self.cancelled = False


class Futures:
    """The client's table of futures (see the module docstring)."""

    def __init__(self, client: Client):
        self.client = client
        self.lock = threading.RLock()
        self.states: dict[Hashable, FutureState] = {}
        self.refs: dict[Hashable, int] = {}
        self.runs: set[JobRun] = set()
        self.drops: queue.SimpleQueue = queue.SimpleQueue()
        self.releaser: threading.Thread | None = None
        self.closed = False

    # -- reference counting --------------------------------------------------
    def ref(self, key: Hashable) -> FutureState:
        with self.lock:
            state = self.states.get(key)
            if state is None:
                state = self.states[key] = FutureState(key)
            self.refs[key] = self.refs.get(key, 0) + 1
            return state

    def drop(self, key: Hashable) -> None:
        """From ``Future.__del__``: only queue it (no lock, no I/O here)."""
        if self.releaser is None:
            return  # closed, or nothing was ever started
        self.drops.put(key)

    def _release_loop(self) -> None:
        while True:
            key = self.drops.get()
            if key is _STOP:
                return
            if isinstance(key, threading.Event):  # flush(): everything queued before is done
                key.set()
                continue
            try:
                self.unref(key)
            except Exception:
                pass  # the TTL removes what we could not

    def unref(self, key: Hashable) -> None:
        names = []
        with self.lock:
            n = self.refs.get(key, 0) - 1
            if n > 0:
                self.refs[key] = n
                return
            self.refs.pop(key, None)
            state = self.states.pop(key, None)
            if state is None:
                return
            if state.name is not None:
                names.append(state.name)
            run = state.run
            if run is not None and state.status == "pending" and not any(k in self.states for k in run.keys):
                self._cancel_run(run)  # nobody wants any result of this job any more
        held.release(self.client.store, names)

    def flush(self, timeout: float | None = 60.0) -> None:
        """Wait until the references dropped so far are released."""
        if self.releaser is not None:
            done = threading.Event()
            self.drops.put(done)
            done.wait(timeout)

    def start(self) -> None:
        if self.releaser is None:
            self.releaser = threading.Thread(target=self._release_loop, name="wukong-release", daemon=True)
            self.releaser.start()

    # -- jobs -----------------------------------------------------------------
    def get(self, dsk: Any, keys: Any, **kwargs: Any) -> Any:
        """A Dask ``get`` that returns futures at once (``dask.compute``/``persist`` call it)."""
        from wukong.graph import flatten_keys

        flat = flatten_keys(keys)
        futures = self.launch(dsk, flat, **kwargs)
        return _nested(keys, dict(zip(flat, futures, strict=True)))

    def launch(self, dsk: Any, keys: list[Hashable], **kwargs: Any) -> list[Future]:
        """Futures for ``keys`` of ``dsk``; keys already held or in flight are not run again.

        Dask's callbacks active here (``with ProgressBar():``) and ``callbacks=``
        are taken now, in the caller's thread: the job runs in its own thread,
        perhaps after the ``with`` block has ended.
        """
        if self.closed:
            raise RuntimeError("the client is closed")
        kwargs["callbacks"] = active_callbacks(kwargs.pop("callbacks", None))
        self.start()
        with self.lock:
            futures = [Future(k, self.client) for k in keys]
            new: list[Any] = [f.key for f in futures if f._state.run is None and f._state.status == "pending"]
            run = JobRun(new)
            for k in new:
                self.states[k].run = run
            if new:
                self.runs.add(run)
        if new:
            run.thread = threading.Thread(target=self._run, args=(run, dsk, kwargs), name="wukong-job", daemon=True)
            run.thread.start()
        return futures

    def scatter(self, values: list[Any]) -> list[Future]:
        """Store ``values`` in the KV store from here (one round trip) and return their futures."""
        from dask.base import tokenize

        from wukong.protocol import Keys

        if self.closed:
            raise RuntimeError("the client is closed")
        self.start()
        keys = Keys(f"scatter{uuid.uuid4().hex[:12]}")
        batch = self.client.store.batch()
        names = []
        for i, v in enumerate(values):
            names.append(keys.held(i))
            batch.kvs_set(names[-1], serialization.dumps(v))
        batch.execute()
        futures = []
        with self.lock:
            for name, v in zip(names, values, strict=True):
                f = Future(f"{type(v).__name__}-{tokenize(v)}", self.client)
                if f._state.status == "pending" and f._state.run is None:
                    f._state.name = name
                    f._state._settle("finished")
                else:  # the same value is held already
                    held.release(self.client.store, [name])
                futures.append(f)
        return futures

    def _run(self, run: JobRun, dsk: Any, kwargs: dict) -> None:
        def started(job: Job) -> None:
            run.job = job
            if run.cancelled:
                job.cancel(by_user=True)

        # With Dask callbacks, the futures settle after ``finish``, as ``get`` returns after it:
        # a ``with Profiler():`` block around ``.result()`` then sees the whole job.
        deferred: list[tuple[Hashable, str]] | None = [] if kwargs.get("callbacks") else None

        def on_held(key: Hashable, name: str) -> None:
            if deferred is not None:
                deferred.append((key, name))
            else:
                self.finish(run, key, name)

        kwargs.setdefault("progress", False)
        error: BaseException | None = None
        try:
            self.client.run_job(dsk, run.keys, hold=True, on_start=started, on_held=on_held, **kwargs)
        except BaseException as exc:  # every pending future of the job gets it
            error = exc
        finally:
            with self.lock:
                self.runs.discard(run)
        for key, name in deferred or ():
            self.finish(run, key, name)
        for key in run.keys:
            self.fail(run, key, error or JobFailed(f"the job ended without a result for {key!r}"))
        job = run.job
        if error is not None and job is not None:  # results written but never announced to us
            with self.lock:
                lost = [
                    job.keys.held(tid)
                    for tid, key in job.plan.outputs.items()
                    if key not in self.states or self.states[key].run is not run or self.states[key].name is None
                ]
            try:
                held.release(self.client.store, lost)
            except Exception:
                pass  # the TTL removes them

    def finish(self, run: JobRun, key: Hashable, name: str) -> None:
        with self.lock:
            state = self.states.get(key)
            mine = state is not None and state.run is run and state.status == "pending"
            callbacks = []
            if state is not None and mine:
                state.name = name
                callbacks = state._settle("finished")
        if not mine:  # released or cancelled meanwhile: nobody will read it
            held.release(self.client.store, [name])
        _call(callbacks)

    def fail(self, run: JobRun, key: Hashable, error: BaseException) -> None:
        with self.lock:
            state = self.states.get(key)
            if state is None or state.run is not run or state.status != "pending":
                return
            state.exception = error
            callbacks = state._settle("cancelled" if isinstance(error, JobCancelled) else "error")
        _call(callbacks)

    def cancel(self, keys: Iterable[Hashable], reason: str = "cancelled") -> None:
        """Cancel futures: settle them, release their values, stop jobs nobody waits for."""
        names, callbacks, runs = [], [], set()
        with self.lock:
            for key in keys:
                state = self.states.get(key)
                if state is None or state.status == "cancelled":
                    continue
                if state.name is not None:
                    names.append(state.name)
                    state.name = None
                state.exception = FutureCancelledError(key, reason)
                callbacks += state._settle("cancelled")
                if state.run is not None:
                    runs.add(state.run)
            for run in runs & self.runs:  # still in flight
                if all(self.states.get(k) is None or self.states[k].status != "pending" for k in run.keys):
                    self._cancel_run(run)
        held.release(self.client.store, names)
        _call(callbacks)

    def _cancel_run(self, run: JobRun) -> None:
        run.cancelled = True
        if run.job is not None:
            run.job.cancel(by_user=True)

    def close(self, timeout: float = 60.0) -> None:
        """Cancel what runs, wait for its threads (bounded), delete every held value."""
        self.closed = True
        self.cancel(list(self.states), reason="the client was closed")
        for run in list(self.runs):
            if run.thread is not None:
                run.thread.join(timeout)
        with self.lock:
            names = [s.name for s in self.states.values() if s.name is not None]
            self.states.clear()
            self.refs.clear()
        held.release(self.client.store, names)
        if self.releaser is not None:
            self.drops.put(_STOP)
            self.releaser.join(timeout)
            self.releaser = None

    # -- futures inside graphs -------------------------------------------------
    def substitute(self, dsk: Any) -> Any:
        """``dsk`` with every future in it replaced by a task that loads its held value.

        Waits for the futures it finds to finish; raises the error of one that failed.
        """
        if not self.states:
            return dsk
        raw = dict(dsk if isinstance(dsk, Mapping) else dsk.__dask_graph__())
        for k, v in raw.items():
            if isinstance(v, Future):
                raw[k] = self._loader(k, v.key)
        graph = convert_legacy_graph(raw)
        missing = {d for node in graph.values() for d in node.dependencies if d not in graph}
        for d in missing:
            if d in self.states:
                graph[d] = self._loader(d, d)
        return graph

    def _loader(self, key: Hashable, future_key: Hashable) -> Task:
        state = self.states.get(future_key)
        if state is None:
            raise LookupError(f"the future {future_key!r} was released")
        state.event.wait()
        if state.status != "finished":
            raise state.exception or FutureCancelledError(future_key)
        return Task(key, held.load, state.name)

    def fetch(self, futures: list[Future]) -> list[Any]:
        """The values of finished futures: one round trip per KVS server."""
        names = []
        for f in futures:
            if f._state.status != "finished" or f._state.name is None:
                raise f._state.exception or FutureCancelledError(f.key)
            names.append(f._state.name)
        values = held.fetch(self.client.store, names)
        out = []
        for f, v in zip(futures, values, strict=True):
            if v is None:
                raise LookupError(f"the held result of {f.key!r} is gone (its TTL expired?)")
            out.append(serialization.loads(v))
        return out


_STOP = object()


def _call(callbacks: list[Callable[[], None]]) -> None:
    for cb in callbacks:
        try:
            cb()
        except Exception:
            pass  # as concurrent.futures: a failing callback does not break the others


def _nested(keys: Any, values: dict) -> Any:
    if isinstance(keys, list):
        return [_nested(k, values) for k in keys]
    return values[keys]


class Future(TaskRef):
    """A result on the cluster: held in the KV store until the last reference is dropped.

    Pass it to ``client.submit`` or put it in a graph: the executor that needs
    the value reads it where it is stored.

    Examples
    --------
    >>> f = client.submit(inc, 1)        # doctest: +SKIP
    >>> g = client.submit(inc, f)        # doctest: +SKIP
    >>> g.result()                       # doctest: +SKIP
    3
    """

    __slots__ = ("client", "_state", "__weakref__")

    def __init__(self, key: Any, client: Client):
        super().__init__(key)
        self.client = client
        self._state = client.futures.ref(key)

    @property
    def status(self) -> str:
        return self._state.status

    def done(self) -> bool:
        return self._state.done()

    def cancelled(self) -> bool:
        return self._state.status == "cancelled"

    def result(self, timeout: float | None = None) -> Any:
        """The value; re-raises the task's error; ``TimeoutError`` after ``timeout`` seconds."""
        self._wait(timeout)
        if self._state.status != "finished":
            raise self._state.exception or FutureCancelledError(self.key)
        return self.client.futures.fetch([self])[0]

    def exception(self, timeout: float | None = None) -> BaseException | None:
        self._wait(timeout)
        if self._state.status == "cancelled":
            raise self._state.exception or FutureCancelledError(self.key)
        return self._state.exception

    def traceback(self, timeout: float | None = None) -> Any:
        exc = self.exception(timeout)
        return exc.__traceback__ if exc is not None else None

    def cancel(self) -> None:
        self.client.futures.cancel([self.key])

    def release(self) -> None:
        """Drop this reference now (as ``del future`` does, once collected)."""
        if self._state is not None:
            self.client.futures.drop(self.key)
            self._state = None  # type: ignore[assignment]

    def add_done_callback(self, fn: Callable[[Future], Any]) -> None:
        """Call ``fn(self)`` when the future is done (now, if it is)."""
        state = self._state
        with self.client.futures.lock:
            if not state.done():
                state.callbacks.append(lambda: fn(self))
                return
        _call([lambda: fn(self)])

    def _wait(self, timeout: float | None) -> None:
        if not self._state.event.wait(timeout):
            raise TimeoutError(f"future {self.key!r} not done after {timeout}s")

    def __await__(self) -> Generator[Any, None, Any]:
        """``await future`` in asyncio code: the value (or the task's error), without blocking the loop."""
        return self._result_async().__await__()

    async def _result_async(self) -> Any:
        import asyncio  # imported by its users only (a loop runs here): not a cost of every client

        await until_done([self])
        return await asyncio.get_running_loop().run_in_executor(None, self.result)

    def __del__(self) -> None:
        try:
            if self._state is not None:
                self.client.futures.drop(self.key)
        except Exception:
            pass

    def __reduce__(self) -> Any:
        return TaskRef, (self.key,)  # inside a pickled task it is a plain reference

    def __dask_tokenize__(self) -> Any:
        return ("wukong.Future", self.key)

    def __repr__(self) -> str:
        return f"<Future: {self.status}, key: {self.key!r}>"

    __str__ = __repr__

    def __hash__(self) -> int:
        return hash(self.key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TaskRef) and self.key == other.key


def submit_graph(fn: Callable, args: tuple, kwargs: dict, key: Hashable) -> dict:
    """A one-task graph calling ``fn(*args, **kwargs)``; futures among the arguments become references."""
    parsed_kwargs: dict[str, Any] = {k: parse_input(v) for k, v in kwargs.items()}
    parsed_args = [parse_input(a) for a in args]
    return {key: Task(key, fn, *parsed_args, **parsed_kwargs)}


def task_key(fn: Callable, args: tuple, kwargs: dict, pure: bool) -> str:
    from dask.base import tokenize
    from dask.utils import funcname

    token = tokenize(fn, args, kwargs) if pure else uuid.uuid4().hex
    return f"{funcname(fn)}-{token}"


# -- waiting on several futures ---------------------------------------------------------


async def until_done(futures: Iterable[Future]) -> None:
    """Wait in asyncio code until every one of ``futures`` is done.

    The loop is never blocked: each future's done callback (called in the
    client thread that settles it) wakes the loop with ``call_soon_threadsafe``.
    """
    import asyncio

    loop = asyncio.get_running_loop()
    waiters = []
    for f in futures:
        if not f.done():
            waiters.append(loop.create_future())
            f.add_done_callback(_waker(loop, waiters[-1]))
    if waiters:
        await asyncio.gather(*waiters)


def _waker(loop: Any, waiter: Any) -> Callable[[Future], None]:
    """A done callback (called in any thread) that completes ``waiter`` on ``loop``."""

    def wake() -> None:
        if not waiter.done():  # not cancelled meanwhile
            waiter.set_result(None)

    return lambda _: loop.call_soon_threadsafe(wake)


class DoneAndNotDoneFutures(NamedTuple):
    done: set[Future]
    not_done: set[Future]


def wait(
    fs: Future | Iterable[Future], timeout: float | None = None, return_when: str = "ALL_COMPLETED"
) -> DoneAndNotDoneFutures:
    """Wait until all (``"ALL_COMPLETED"``) or one (``"FIRST_COMPLETED"``) of ``fs`` is done.

    As ``distributed.wait``: raises ``TimeoutError`` if that does not happen within ``timeout``.
    """
    futures = [fs] if isinstance(fs, Future) else list(fs)
    if return_when not in ("ALL_COMPLETED", "FIRST_COMPLETED"):
        raise ValueError(f"return_when must be ALL_COMPLETED or FIRST_COMPLETED, got {return_when!r}")
    if return_when == "ALL_COMPLETED":
        for f in futures:
            f._wait(timeout)  # a shared deadline would be kinder; distributed's is per call too
    elif futures and not any(f.done() for f in futures):
        ready = threading.Event()
        for f in futures:
            f.add_done_callback(lambda _: ready.set())
        if not ready.wait(timeout):
            raise TimeoutError(f"none of {len(futures)} futures done after {timeout}s")
    done = {f for f in futures if f.done()}
    return DoneAndNotDoneFutures(done, {f for f in futures if f not in done})


class as_completed:
    """Iterate over futures in the order they finish, as ``distributed.as_completed``
    (``async for`` too).

    ``with_results=True`` yields ``(future, result)``; ``add`` more while
    iterating; ``raise_errors`` (with results) re-raises a failed future's error.
    """

    def __init__(self, futures: Iterable[Future] = (), with_results: bool = False, raise_errors: bool = True):
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.pending = 0
        self.lock = threading.Lock()
        self.with_results = with_results
        self.raise_errors = raise_errors
        self._ids = itertools.count()
        for f in futures:
            self.add(f)

    def add(self, future: Future) -> None:
        with self.lock:
            self.pending += 1
        future.add_done_callback(self.queue.put)

    def update(self, futures: Iterable[Future]) -> None:
        for f in futures:
            self.add(f)

    def count(self) -> int:
        return self.pending

    def is_empty(self) -> bool:
        return self.pending == 0

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        with self.lock:
            if self.pending == 0:
                raise StopIteration
            self.pending -= 1
        future = self.queue.get()
        if not self.with_results:
            return future
        if future.status == "finished":
            return future, future.result()
        if self.raise_errors:
            raise future._state.exception or FutureCancelledError(future.key)
        return future, future._state.exception

    def __aiter__(self) -> as_completed:
        return self

    async def __anext__(self) -> Any:
        """``async for`` in asyncio code: the wait runs in the loop's default executor, not on the loop."""
        import asyncio

        if self.pending == 0:
            raise StopAsyncIteration
        return await asyncio.get_running_loop().run_in_executor(None, self.__next__)

    def next_batch(self, block: bool = True) -> list[Any]:
        out = [next(self)] if block and self.pending else []
        while not self.queue.empty() and self.pending:
            out.append(next(self))
        return out

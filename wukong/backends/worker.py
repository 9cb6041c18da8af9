"""A warm local executor process: ``python -m wukong.backends.worker`` (config on stdin).

It runs ``threads`` executors, each on its own thread (the first on the main
thread, where a task's timeout can use SIGALRM), each with its own Redis
connections.  Each blocks on the cluster's invocation queue (a Redis list on
the MDS) with BLMOVE, which atomically moves the invocation to this process's
"processing" list: if the process dies, the cluster finds there what its
executors were running.  An entry is removed in the same pipeline that
reports the invocation's exit, and that pipeline moves the next invocation
waiting, if any, to the list (LMOVE): a busy executor takes its next
invocation without a round trip of its own.

The executors share the process's object table (``wukong.store.objects``):
an output one of them stores is handed to the others by reference.  A
thread that finds the queue empty for ``IDLE_S``, or that finishes an
invocation while the table holds values of several jobs, drops the values of
jobs that have ended; one that finds the queue empty also removes the
shared-memory files kept for reuse that nobody took (``shm.trim_pool``).

A task that must stop and will not (``wukong.timeout.Guard``) ends the whole
process, as with one executor per process: Python cannot stop one thread.
The invocations its other executors were running are in the processing list:
the cluster sends them again at once, and they run elsewhere.  The process's
executors share its ``TaskBoard`` (where the cluster reads the task that runs,
``wukong.backends.stuck``): the newest task started is shown -- a task that
holds the GIL is the last to have started one.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from typing import Any

from wukong import task_warnings
from wukong.backends.local import STOP, queue_invoker
from wukong.backends.supervise import READY
from wukong.executor import Executor
from wukong.process import die_with_parent
from wukong.protocol import decode_invocation
from wukong.proxy.client import executor_kwargs as proxy_kwargs
from wukong.store import Batch, Store, shm
from wukong.store.objects import MAX_BYTES, ObjectTable, drop_ended
from wukong.timeout import TaskBoard

GC_GEN0 = 20_000  # allocations between collections of the youngest generation (Python's default: 700)
IDLE_S = 1  # seconds; an idle executor thread drops the object table's values of ended jobs this often
# seconds; this often while the table holds values nothing else holds (one process, ``table_only``):
# freed when their job ends, before the next one starts (GEMM small: ~10 ms of frees)
HOLDING_IDLE_S = 0.02


table: ObjectTable | None = None  # this process's object table, for inspection (``tests/test_threads.py``)


def serve(config: dict) -> None:
    global table
    table = ObjectTable(config.get("table_bytes", MAX_BYTES))
    threads = config.get("threads", 1)
    board = TaskBoard(config["board"]) if config.get("board") is not None else None
    loops = [_Loop(config, table, board, i if threads > 1 else None) for i in range(threads)]
    task_warnings.executor_process()
    _warm_imports()
    # What start-up made lives as long as the process: never scan it again.  Tasks make
    # many small objects; collecting the youngest every 700 allocations costs more
    # than it frees (noop jobs: up to 0.45 s of collections per worker per job).
    gc.freeze()
    gc.set_threshold(GC_GEN0, *gc.get_threshold()[1:])
    others = [
        threading.Thread(target=_or_exit, args=(loop.run,), name=f"wukong-executor-{i}", daemon=True)
        for i, loop in enumerate(loops[1:], 1)
    ]
    for thread in others:
        thread.start()
    sys.stdout.buffer.write(READY)
    sys.stdout.flush()
    loops[0].run()  # each thread leaves when it takes a STOP; the cluster pushes one per thread
    for thread in others:
        thread.join()


def _or_exit(run: Callable[[], None]) -> None:
    """A thread's loop; if it fails (Redis is gone) the process ends, as with one executor,
    and the cluster starts a fresh one rather than run with fewer executors."""
    try:
        run()
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)


class _Loop:
    """One executor thread: its connections, its executor, the loop that feeds it."""

    def __init__(self, config: dict, table: ObjectTable, board: TaskBoard | None, thread: int | None):
        store = Store.from_config(config["store"])
        self.queue, self.processing = config["queue"], config["processing"]
        route = {"backend": "local", "store": config["store"], "queue": self.queue}  # where the proxy pushes
        proxy = proxy_kwargs(config.get("proxy"), store, route)
        self.table = table
        self.shm_dir = store.shm_dir
        self.executor = Executor(
            store, queue_invoker(self.queue), **config["executor"], **proxy, table=table, board=board, queue=self.queue
        )
        if thread is not None:  # the profiler tells the executors of one process apart
            self.executor.worker += f"/{thread}"
        self.blocking = store.connect_mds(socket_timeout=None)
        self.blocking.ping()

    def run(self) -> None:
        queue, processing = self.queue, self.processing
        payload: bytes | None = None  # the next invocation, when the last exit took it
        me = threading.get_ident()
        while True:
            holding = self.table.max_bytes is None and len(self.table) > 0
            if payload is None:
                wait = HOLDING_IDLE_S if holding else IDLE_S
                payload = self.blocking.blmove(queue, processing, wait, "LEFT", "RIGHT")  # type: ignore[assignment,arg-type]
            if payload is None:
                drop_ended(self.table, self.blocking)
                if not holding:
                    shm.trim_pool(self.shm_dir)
                continue
            if payload == STOP:
                self.blocking.lrem(processing, 1, payload)  # type: ignore[arg-type]
                return
            taken: list[tuple[Batch, Any]] = []

            def ack(batch: Batch, payload: bytes = payload, taken: list = taken) -> None:
                batch.mds("lrem", processing, 1, payload)
                # not when the heartbeat thread ends the process (``Executor.abandon``): what
                # it took would be sent again as lost
                if threading.get_ident() == me:
                    taken.append((batch, batch.mds("lmove", queue, processing, "LEFT", "RIGHT")))

            inv = decode_invocation(payload)
            if self.table.max_bytes is None and not self.table.has_job(inv.job):
                drop_ended(self.table, self.blocking)  # unbounded: a new job frees what ended ones left
            self.executor.run(inv, on_exit=ack)
            payload = None
            if taken:  # the exit's round trip took the next invocation waiting, if any
                batch, handle = taken[-1]
                payload = batch[handle]
            if len(self.table.jobs()) > 1:
                drop_ended(self.table, self.blocking)


def _warm_imports() -> None:
    """Import what most task bodies need before taking work, not during a job."""
    import dask.array  # noqa: F401
    import numpy  # noqa: F401


def main() -> None:
    config = json.loads(sys.stdin.readline())
    # SIGKILL: it cannot be caught or deferred by a running task (or a blocking BLMOVE)
    die_with_parent(config["parent"], signal.SIGKILL)
    try:
        serve(config)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()

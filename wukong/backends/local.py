"""The local backend: warm executor processes on this machine.

``n_workers`` worker processes (``wukong.backends.worker``), each running
``threads`` executors as threads that share an object table, block on the
cluster's invocation queue, a Redis list on the metadata store
(``protocol.cluster_queue``).  Invoking is one RPUSH in the caller's batch.
A worker takes an invocation with BLMOVE into its own processing list
(``protocol.worker_processing``), so the invocations in flight are always
visible: queued (``backlog``) or taken by a live worker (``running``).

Each worker is started and watched by its own thread
(``wukong.backends.supervise``): when a worker dies, what it was running is
sent again at once (``wukong.recovery.resend``) and a fresh worker takes its
place.  A worker whose task must stop and will not, even one that holds the
GIL, is ended by the cluster (``wukong.backends.stuck``); what it ran is then
reported as ended, not sent again.  Workers start in parallel; one that fails to start is retried with a
back-off and finally given up; a job fails at once, quoting the workers'
stderr, when no worker is up or starting (``unavailable``).
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from wukong import protocol
from wukong.backends.stuck import Ended, Watch
from wukong.backends.supervise import Slot
from wukong.errors import WukongError
from wukong.process import frozen, stop
from wukong.protocol import Invocation, decode_invocation, encode_invocation
from wukong.recovery import MAX_ATTEMPTS, resend, superseded
from wukong.store import Batch, Store, objects

STOP = b"stop"  # a worker that takes this from the queue exits
START_TIMEOUT = 60.0  # seconds a worker may take to import and connect before it is replaced

# One BLAS thread per worker process, as Dask's nanny does: N workers each
# running a multi-threaded BLAS oversubscribe the cores, and idle BLAS threads
# spin.
WORKER_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
# A task's print reaches the client as it happens, and is not lost when the task kills its process.
WORKER_ENV["PYTHONUNBUFFERED"] = "1"

# Leaf schedules are grouped into this many invocations per worker: enough
# to balance load between workers, few enough that start-up costs vanish.
LEAF_GROUPS_PER_WORKER = 4
# bytes: a solo job's plan up to this size goes in its queue entry (``Backend.inline_plan``):
# its worker need not read it before the first task.  In the entry it crosses Redis three
# times (pushed, moved to the worker, and back in the exit's LREM that acknowledges the
# entry) against twice (SET, GET): a solo job took 0.84-0.89x as long with a plan of
# 64-256 KiB in the entry as through Redis, 1.23-1.26x with 512 KiB or 1 MiB
# (``python -m bench.inline_plan``, 1 December, load 0.4)
INLINE_PLAN = 256 << 10


def queue_invoker(queue: str):
    """Invoke executors by pushing to the queue, in the caller's batch."""

    def invoke(batch: Batch, job: str, invocations: list[Invocation]) -> None:
        batch.mds("rpush", queue, *[encode_invocation(i) for i in invocations])

    return invoke


class LocalBackend:
    """Warm worker processes fed by a Redis queue (see the module docstring)."""

    name = "local"
    sees_in_flight = True
    start_grace = 0.0  # a worker is warm, and an invocation waits in the queue it shows
    inline_plan = INLINE_PLAN

    def __init__(
        self,
        store: Store,
        cluster_id: str,
        n_workers: int,
        executor_config: dict,
        proxy: dict | None = None,
        max_attempts: int = MAX_ATTEMPTS,
        *,
        shared_redis: bool = False,
        start_timeout: float = START_TIMEOUT,
        threads: int = 1,
    ):
        self.store = store
        self.shared_redis = shared_redis  # on close, delete the queue keys
        self.n_workers = n_workers
        self.threads = threads  # executors per worker process
        self.leaf_groups = LEAF_GROUPS_PER_WORKER * n_workers * threads
        self.queue = protocol.cluster_queue(cluster_id)
        self.cluster_id = cluster_id
        self.executor_config = executor_config
        self.proxy = proxy
        self.max_attempts = max_attempts
        self.invoke = queue_invoker(self.queue)
        self.start_timeout = start_timeout
        self.workers: list[subprocess.Popen | None] = [None] * n_workers
        self.children = self.workers  # what must not outlive the cluster
        self.closed = False
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self.slots: list[Slot] = []
        self.watch = Watch(store, cluster_id, self.workers, executor_config["lease_ms"], self._closing, self.queue)
        self._start_workers()
        self.watch.start()

    # -- workers ---------------------------------------------------------------
    def _worker_config(self, wid: int) -> bytes:
        config = {
            "store": self.store.to_config(),
            "queue": self.queue,
            "processing": protocol.worker_processing(self.cluster_id, wid),
            "executor": self.executor_config,
            "threads": self.threads,
            # one process keeps the values it alone reads (``table_only``): as many as its jobs need
            "table_bytes": None if self.executor_config.get("table_only") else objects.bound(self.n_workers),
            "proxy": self.proxy,
            "parent": os.getpid(),  # the worker dies with us (``process.die_with_parent``)
            "board": self.watch.board_fd(wid),  # where it shows its running task (``TaskBoard``)
        }
        return json.dumps(config).encode() + b"\n"

    def _start_workers(self) -> None:
        """Start every worker at once; wait (bounded) for each first start; fail if none came up."""
        argv = [sys.executable, "-m", "wukong.backends.worker"]
        env = worker_env()
        self.slots = [
            Slot(
                wid,
                argv,
                functools.partial(self._worker_config, wid),
                env,
                self.workers,
                self._lock,
                self._closing,
                self._worker_died,
                self.start_timeout,
                (self.watch.board_fd(wid),),
            ).start()
            for wid in range(self.n_workers)
        ]
        for slot in self.slots:
            slot.first_start.wait()
        if not any(slot.failures == 0 for slot in self.slots):
            raise WukongError(self._failures())

    def unavailable(self) -> str | None:
        """Why no invocation can run now (no worker is up, each one's last start failed), or ``None``."""
        if any(slot.state == "ready" or slot.failures == 0 for slot in self.slots):
            return None
        return self._failures()

    def _failures(self) -> str:
        reports = [f"{slot.name} {slot.why or 'stopped'}; its last stderr lines:\n{slot.tail()}" for slot in self.slots]
        return "no worker of the local cluster is running:\n" + "\n".join(reports)

    def _worker_died(self, wid: int, pid: int, code: int) -> None:
        """Send again what the dead worker was running (``wukong.recovery``), or,
        when the watch ended it, report that as ended (``wukong.backends.stuck``).

        One the client's watchdog has sent again already (its lease lapsed while the
        worker was frozen) is not sent once more (``recovery.superseded``).

        On a Redis Cluster whose master just failed (the worker may have died of
        it) this is tried again until the replica answers (``failover_timeout``):
        an entry left in the processing list would keep its invocation from ever
        being sent again.  A repeat sends an invocation twice, which is harmless.
        """
        processing = protocol.worker_processing(self.cluster_id, wid)
        ended_here = self.watch.ended.pop(pid, {})
        deadline = time.monotonic() + (self.store.failover_timeout if self.store.cluster is not None else 0.0)
        while True:
            try:
                entries: Any = self.store.mds.lrange(processing, 0, -1)
                taken = [decode_invocation(payload) for payload in entries]
                by_job: dict[str, list[Invocation]] = {}
                ended: list[tuple[Invocation, Ended]] = []
                for inv, later in zip(taken, superseded(self.store, taken), strict=True):
                    if inv.id in ended_here:
                        ended.append((inv, ended_here[inv.id]))
                    elif not later:
                        by_job.setdefault(inv.job, []).append(inv)
                if ended:
                    self.watch.report(ended)
                why = f"executor process {pid} died (exit code {code})"
                for job, invs in by_job.items():
                    resend(self.store, self.invoke, job, invs, why, self.max_attempts)
                self.store.mds.delete(processing)
                return
            except Exception as exc:  # Redis itself is gone: clients see that on their own
                if time.monotonic() < deadline and not self._closing.is_set():
                    time.sleep(0.5)
                    continue
                print(f"wukong: worker {pid} died and its jobs could not be told: {exc}", file=sys.stderr)
                return

    # -- the Backend surface ---------------------------------------------------
    def backlog(self) -> int:
        return int(self.store.mds.llen(self.queue))  # type: ignore[arg-type]

    def running(self, job: str) -> set[str]:
        """Not lost even before their lease exists; if the worker dies, ``_worker_died``
        sends them again.  A frozen worker's (SIGSTOP) do not count: their lease
        lapses and the client's watchdog sends them again."""
        awake = [wid for wid, proc in enumerate(self.workers) if proc is not None and not frozen(proc.pid)]
        pipe = self.store.mds.pipeline(transaction=False)
        for wid in awake:
            pipe.lrange(protocol.worker_processing(self.cluster_id, wid), 0, -1)
        taken = [decode_invocation(p) for entries in pipe.execute() for p in entries]
        return {inv.id for inv in taken if inv.job == job}

    def job_cost(self, durations: Sequence[tuple[float, int]]) -> dict | None:
        return None

    def executor_versions(self) -> None:
        return None  # the workers run sys.executable with this sys.path

    def probe_again(self) -> None:
        return None  # a worker's death is seen (``unavailable``, the processing lists)

    def describe(self) -> str:
        if self.threads == 1:
            return f"{self.n_workers} workers"
        return f"{self.n_workers} workers × {self.threads} threads"

    def close(self) -> None:
        """Stop the workers: idle ones leave at once, busy ones are terminated."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            self._closing.set()  # slots in a back-off wake up and leave; none starts another worker
        try:
            self.store.mds.rpush(self.queue, *[STOP] * (self.n_workers * self.threads))
        except Exception:
            pass
        stop_workers(self.workers, graceful=True)
        self.watch.close()
        if self.shared_redis:  # leave none of the cluster's keys behind
            try:
                lists = [protocol.worker_processing(self.cluster_id, w) for w in range(self.n_workers)]
                self.store.mds.delete(self.queue, *lists)
            except Exception:
                pass


def stop_workers(workers: list, graceful: bool = False) -> None:
    procs = [p for p in workers if p is not None]
    if graceful:
        for p in procs:
            try:
                p.wait(2.0)
            except subprocess.TimeoutExpired:
                pass
    stop(procs)


def worker_env() -> dict[str, str]:
    """Our environment, one BLAS thread, and our ``sys.path``: task bodies pickled
    by reference (functions of the user's own modules) import on the workers as
    they do here."""
    path = [os.path.abspath(p or os.curdir) for p in sys.path]
    return {**os.environ, **WORKER_ENV, "PYTHONPATH": os.pathsep.join(dict.fromkeys(path))}

"""``LocalCluster``: where executors run and where their state lives.

The local backend (the default) runs ``n_workers`` warm executor processes
(``wukong.worker``) that block on an invocation queue, a Redis list on the
metadata store.  Storage is an embedded private Redis (``kvs_shards`` of them)
unless endpoints are given.  Each worker is started and watched by its own
thread: when a worker dies, the jobs it was running are told at once (an
error event on their stream, so no client waits forever) and a fresh worker
takes its place.
"""

from __future__ import annotations

import json
import os
import pickle
import secrets
import subprocess
import sys
import threading
import weakref
from collections.abc import Sequence
from typing import Any

from wukong.executor import Invocation, decode_invocation
from wukong.processes import spawn, stop
from wukong.redis_server import RedisServer
from wukong.storage import DEFAULT_TTL, Batch, Endpoint, Store
from wukong.worker import STOP, local_invoker


# One BLAS thread per worker process, as Dask's nanny does: N workers each
# running a multi-threaded BLAS oversubscribe the cores, and idle BLAS threads
# spin.
WORKER_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


class LocalCluster:
    """A wukong cluster on this machine.

    Parameters
    ----------
    n_workers : int, optional
        Warm executor processes (default: one per core).
    redis_endpoints : list of (host, port), URLs or ``"host:port"``, optional
        Existing Redis servers to use instead of the embedded one: the first is
        the metadata store, all of them hold intermediate data.
    redis_password : str, optional
        Password for ``redis_endpoints`` given without one.
    mds_endpoint, kvs_endpoints : optional
        The metadata store and the KV-store shards, given separately.
    kvs_shards : int
        How many embedded Redis servers to start for intermediate data.
    inline_limit : int
        Outputs up to this many bytes travel inside invocations.
    cluster_threshold : int
        Outputs above this many bytes are not shipped: their executor runs
        all their ready dependents itself.
    ttl : int
        Seconds every job key lives at most (a safety net; keys are deleted
        when their job ends).
    connect_timeout : float
        Seconds to wait for a Redis server before naming it in an error.

    Examples
    --------
    >>> from wukong import LocalCluster, Client        # doctest: +SKIP
    >>> with LocalCluster() as cluster, Client(cluster) as client:  # doctest: +SKIP
    ...     x.compute(scheduler=client.get)
    """

    def __init__(
        self,
        n_workers: int | None = None,
        *,
        redis_endpoints: Sequence[Any] | None = None,
        redis_password: str | None = None,
        mds_endpoint: Any = None,
        kvs_endpoints: Sequence[Any] | None = None,
        kvs_shards: int = 1,
        inline_limit: int = 64 * 1024,
        cluster_threshold: int = 64 * 1024 * 1024,
        ttl: int = DEFAULT_TTL,
        connect_timeout: float = 5.0,
    ):
        self.n_workers = n_workers or os.cpu_count() or 1
        self.inline_limit = inline_limit
        self.cluster_threshold = cluster_threshold
        self.redis_servers: list[RedisServer] = []
        self.workers: list[subprocess.Popen | None] = []
        self.closed = False
        self._lock = threading.Lock()
        try:
            mds, kvs = self._endpoints(redis_endpoints, redis_password, mds_endpoint, kvs_endpoints, kvs_shards)
            self.store = Store(mds, kvs, connect_timeout=connect_timeout, ttl=ttl)
            self.store.check()
            self.id = secrets.token_hex(6)
            self.queue = f"wk:cluster:{self.id}:q"
            self._invoke = local_invoker(self.queue)
            self._start_workers()
        except BaseException:
            self.close()
            raise
        self._finalizer = weakref.finalize(self, LocalCluster._cleanup, self.redis_servers, self.workers)

    def _endpoints(self, redis_endpoints, password, mds, kvs, shards) -> tuple[Endpoint, list[Endpoint]]:
        if redis_endpoints:
            eps = [Endpoint.parse(e, password) for e in redis_endpoints]
            return (Endpoint.parse(mds, password) if mds else eps[0]), eps
        if mds or kvs:
            kvs_eps = [Endpoint.parse(e, password) for e in (kvs or [mds])]
            return (Endpoint.parse(mds, password) if mds else kvs_eps[0]), kvs_eps
        if shards < 1:
            raise ValueError(f"kvs_shards must be at least 1, got {shards}")
        for _ in range(shards):
            self.redis_servers.append(RedisServer().start())
        eps = [Endpoint(*s.endpoint, password=s.password) for s in self.redis_servers]
        return eps[0], eps

    # -- workers ---------------------------------------------------------------
    def _worker_config(self, wid: int) -> bytes:
        config = {
            "store": self.store.to_config(),
            "queue": self.queue,
            "processing": f"{self.queue}:w:{wid}",
            "inline_limit": self.inline_limit,
            "cluster_threshold": self.cluster_threshold,
        }
        return json.dumps(config).encode() + b"\n"

    def _start_workers(self) -> None:
        started = []
        for wid in range(self.n_workers):
            self.workers.append(None)
            ready = threading.Event()
            t = threading.Thread(target=self._watch, args=(wid, ready), name=f"wukong-worker-{wid}", daemon=True)
            t.start()
            started.append(ready)
        for ready in started:
            ready.wait()

    def _spawn(self, wid: int) -> subprocess.Popen:
        """Start a worker and wait until it is warm (imports done, Redis connected)."""
        proc = spawn(
            [sys.executable, "-c", "from wukong.worker import main; main()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=self._worker_env(),
        )
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(self._worker_config(wid))
        proc.stdin.close()
        proc.stdout.readline()  # "ready", or EOF if it died starting: _watch sees the exit
        proc.stdout.close()
        return proc

    @staticmethod
    def _worker_env() -> dict[str, str]:
        """Our environment, one BLAS thread, and our ``sys.path``: task bodies
        pickled by reference (functions of the user's own modules) import on
        the workers as they do here."""
        path = [os.path.abspath(p or os.curdir) for p in sys.path]
        return {**os.environ, **WORKER_ENV, "PYTHONPATH": os.pathsep.join(dict.fromkeys(path))}

    def _watch(self, wid: int, ready: threading.Event) -> None:
        """Start worker ``wid``; whenever it dies, fail what it ran and restart it.

        The worker is spawned from this thread, which lives as long as the
        cluster, so the child's parent-death signal stays armed.
        """
        while True:
            with self._lock:
                if self.closed:
                    ready.set()
                    return
                proc = self.workers[wid] = self._spawn(wid)
            ready.set()
            code = proc.wait()
            if self.closed:
                return
            self._worker_died(wid, proc.pid, code)

    def _worker_died(self, wid: int, pid: int, code: int) -> None:
        processing = f"{self.queue}:w:{wid}"
        try:
            entries = self.store.mds.lrange(processing, 0, -1)
            batch = self.store.batch()
            for payload in entries:
                inv = decode_invocation(payload)
                what = (
                    f"executor process {pid} died (exit code {code}) while running "
                    f"schedule {inv.sched} of job {inv.job}"
                )
                events = f"wk:{inv.job}:ev"
                batch.mds("xadd", events, {"k": "e", "v": pickle.dumps((None, what, None, ""))})
                batch.mds("xadd", events, {"k": "c", "n": 0, "i": 0, "x": 1})
            batch.mds("delete", processing)
            batch.execute()
        except Exception as exc:  # Redis itself is gone: clients see that on their own
            print(f"wukong: worker {pid} died and its jobs could not be told: {exc}", file=sys.stderr)

    # -- what clients use ------------------------------------------------------
    def invoke(self, batch: Batch, job: str, invocations: list[Invocation]) -> None:
        """Queue ``invocations``; they are sent when ``batch`` executes."""
        self._invoke(batch, job, invocations)

    def close(self) -> None:
        """Stop the workers and embedded Redis servers; idempotent."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
        store = getattr(self, "store", None)
        if store is not None and self.workers:
            try:  # workers idle on the queue leave at once; busy ones are terminated
                store.mds.rpush(self.queue, *[STOP] * len(self.workers))
            except Exception:
                pass
        LocalCluster._cleanup(self.redis_servers, self.workers, graceful=True)
        if store is not None and not self.redis_servers:
            try:  # on a shared Redis, leave none of the cluster's keys behind
                store.mds.delete(self.queue, *[f"{self.queue}:w:{i}" for i in range(len(self.workers))])
            except Exception:
                pass
        if store is not None:
            store.close()

    @staticmethod
    def _cleanup(redis_servers: list[RedisServer], workers: list, graceful: bool = False) -> None:
        procs = [p for p in workers if p is not None]
        if graceful:
            for p in procs:
                try:
                    p.wait(2.0)
                except subprocess.TimeoutExpired:
                    pass
        stop(procs)
        for s in redis_servers:
            s.stop()

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        where = "embedded" if self.redis_servers else "external"
        return f"<LocalCluster {self.n_workers} workers, {len(self.store.kvs_index)} KV shard(s), {where} Redis>"

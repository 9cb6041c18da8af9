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
import secrets
import subprocess
import sys
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import Any

from wukong import shm
from wukong.executor import LEASE_MS, Invocation, decode_invocation, parse_faults
from wukong.processes import spawn, stop
from wukong.recovery import MAX_ATTEMPTS, resend
from wukong.redis_server import RedisServer
from wukong.storage import DEFAULT_TTL, Batch, Endpoint, Store
from wukong.worker import STOP, local_invoker

# One BLAS thread per worker process, as Dask's nanny does: N workers each
# running a multi-threaded BLAS oversubscribe the cores, and idle BLAS threads
# spin.
WORKER_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


# Leaf schedules are grouped into this many invocations per worker: enough
# to balance load between workers, few enough that start-up costs vanish.
LEAF_GROUPS_PER_WORKER = 4


class LocalCluster:
    """A wukong cluster on this machine.

    Parameters
    ----------
    n_workers : int, optional
        Warm executor processes (default: one per core).
    redis_endpoints : list of (host, port), URLs or ``"host:port"``, optional
        Existing Redis servers to use instead of the embedded one: the first is
        the metadata store, all of them hold intermediate data.  A URL may
        carry an ACL user, a password and a database
        (``redis://user:pw@host:6379/0``); ``rediss://`` connects with TLS,
        verifying the server against the system's CA bundle, or
        ``?ssl_ca_certs=/path/ca.pem``, or not at all with
        ``?ssl_cert_reqs=none``.  Workers connect with the same settings.
    redis_password : str, optional
        Password for endpoints given without one.
    mds_endpoint, kvs_endpoints : optional
        The metadata store and the KV-store shards, given separately (same
        forms as ``redis_endpoints``).  Intermediate data is spread over the
        shards by a consistent-hash ring: adding one of N shards moves about
        1/N of the keys.  Values above Redis's 512 MB limit are split into
        parts (``wukong.storage.PART_SIZE``).
    kvs_shards : int
        How many embedded Redis servers to start for intermediate data (the
        first is also the metadata store).
    inline_limit : int
        Outputs up to this many bytes travel inside invocations.
    cluster_threshold : int
        Outputs above this many bytes are not shipped: their executor runs
        all their ready dependents itself.
    ttl : int
        Seconds every job key lives at most (a safety net; keys are deleted
        when their job ends).
    connect_timeout : float
        Seconds to wait for a Redis server to accept a connection (and, when
        the cluster starts, to answer) before naming it in an error.
    socket_timeout : float, optional
        Seconds to wait for any answer from a Redis server during a job before
        naming it in an error; ``None`` (the default) waits as long as the
        connection lives.  A server that dies is noticed at once either way.
    backend : {"local", "lambda"}
        ``"lambda"``: no local workers; executors are invocations of the Lambda
        function ``function_name`` (see ``wukong.lambda_backend``), in ``region``
        or at ``endpoint_url`` (e.g. a ``wukong lambda-local`` endpoint).  The
        Redis endpoints must be reachable from the function.
    num_lambda_invokers : int
        Threads (one boto3 client each) invoking the leaf executors of a job.
    max_event_payload : int
        Events larger than this are stored in the MDS and passed by reference.
    invoke_attempts : int
        Attempts per invocation on throttling and transient errors.
    memory_mb, architecture : int, str
        What the function is deployed with; used for cost estimates.
    proxy_address, proxy_port, use_local_proxy, max_task_fanout
        The fan-out proxy (``wukong.proxy``): a task with at least
        ``max_task_fanout`` dependents to start hands them to the proxy, which
        invokes them in parallel; ``use_local_proxy`` starts one here.
    retries : int
        Default for ``client.get(..., retries=)``: re-runs of a failing task.
    lease_ms : int
        An invocation's lease in the metadata store; an executor that stops
        renewing it (it died) has its invocation sent again after about twice this.
    max_attempts : int
        Deliveries of one invocation before its job fails.
    shared_memory : bool
        Local backend: values of 1 MiB or more pass between processes through
        files on ``/dev/shm`` (mapped copy-on-write) instead of through Redis.
    max_result_bytes : int, optional
        A requested result larger than this (serialized) fails its job, naming the task.
    faults : dict or str, optional
        Fault injection for tests and benchmarks (``{"crash": 0.1, "duplicate": 1,
        "drop": 0.05}``; default from ``$WUKONG_FAULTS``; off when unset).

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
        socket_timeout: float | None = None,
        backend: str = "local",
        function_name: str = "wukong-executor",
        region: str | None = None,
        endpoint_url: str | None = None,
        num_lambda_invokers: int = 16,
        max_event_payload: int = 1_048_576,
        invoke_attempts: int = 8,
        memory_mb: int = 3008,
        architecture: str = "x86_64",
        retries: int = 0,
        lease_ms: int = LEASE_MS,
        max_attempts: int = MAX_ATTEMPTS,
        faults: dict | str | None = None,
        max_result_bytes: int | None = None,
        shared_memory: bool = True,
        proxy_address: str | None = None,
        proxy_port: int | None = None,
        use_local_proxy: bool = False,
        max_task_fanout: int = 64,
    ):
        if backend not in ("local", "lambda"):
            raise ValueError(f"backend must be 'local' or 'lambda', got {backend!r}")
        self.backend = backend
        self.memory_mb, self.architecture = memory_mb, architecture
        self.n_workers = (n_workers or os.cpu_count() or 1) if backend == "local" else 0
        # see client.group_leaves; Lambda: one invocation per leaf, concurrency is not ours to bound
        self.leaf_groups = LEAF_GROUPS_PER_WORKER * self.n_workers if backend == "local" else None
        self.inline_limit = inline_limit
        self.cluster_threshold = cluster_threshold
        self.retries, self.lease_ms, self.max_attempts = retries, lease_ms, max_attempts
        self.max_result_bytes = max_result_bytes
        self.faults = parse_faults(faults) if isinstance(faults, str) else faults
        if faults is None:
            self.faults = parse_faults(os.environ.get("WUKONG_FAULTS"))
        self.redis_servers: list[RedisServer] = []
        self.shm_dir: str | None = None
        self.workers: list[subprocess.Popen | None] = []
        self.closed = False
        self._lock = threading.Lock()
        try:
            mds, kvs = self._endpoints(redis_endpoints, redis_password, mds_endpoint, kvs_endpoints, kvs_shards)
            self.store = Store(mds, kvs, connect_timeout=connect_timeout, socket_timeout=socket_timeout, ttl=ttl)
            self.store.check()
            self.id = secrets.token_hex(6)
            if backend == "local" and shared_memory:  # every process is on this machine
                self.store.shm_dir = self.shm_dir = shm.make_dir(self.id)
            self.queue = f"wk:cluster:{self.id}:q"
            from wukong.proxy import cluster_options  # the fan-out proxy: options for every executor

            self.local_proxy, self.proxy = cluster_options(proxy_address, proxy_port, use_local_proxy, max_task_fanout)
            if backend == "lambda":
                from wukong.lambda_backend import LambdaInvoker, lambda_config

                lam = lambda_config(
                    function_name,
                    region=region,
                    endpoint_url=endpoint_url,
                    num_invokers=num_lambda_invokers,
                    max_event_payload=max_event_payload,
                    attempts=invoke_attempts,
                )
                executor = self.executor_options()
                config = {"store": self.store.to_config(), "executor": executor, "lambda": lam, "proxy": self.proxy}
                self._invoke = self.lambda_invoker = LambdaInvoker(self.store, config)
            else:
                self._invoke = local_invoker(self.queue)
                self._start_workers()
        except BaseException:
            self.close()
            raise
        self._finalizer = weakref.finalize(
            self, LocalCluster._cleanup, self.redis_servers, self.workers, False, self.shm_dir
        )

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
    def executor_options(self) -> dict:
        """Keyword arguments of every executor of this cluster (``Executor(...)``)."""
        return {
            "inline_limit": self.inline_limit,
            "cluster_threshold": self.cluster_threshold,
            "lease_ms": self.lease_ms,
            "faults": self.faults,
            "max_result_bytes": self.max_result_bytes,
        }

    def _worker_config(self, wid: int) -> bytes:
        config = {
            "store": self.store.to_config(),
            "queue": self.queue,
            "processing": f"{self.queue}:w:{wid}",
            "executor": self.executor_options(),
            "proxy": self.proxy,
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
        """Send again what the dead worker was running (``wukong.recovery``)."""
        processing = f"{self.queue}:w:{wid}"
        try:
            entries: Any = self.store.mds.lrange(processing, 0, -1)
            self.store.mds.delete(processing)
            by_job: dict[str, list[Invocation]] = {}
            for payload in entries:
                inv = decode_invocation(payload)
                by_job.setdefault(inv.job, []).append(inv)
            why = f"executor process {pid} died (exit code {code})"
            for job, invs in by_job.items():
                resend(self.store, self.invoke, job, invs, why, self.max_attempts)
        except Exception as exc:  # Redis itself is gone: clients see that on their own
            print(f"wukong: worker {pid} died and its jobs could not be told: {exc}", file=sys.stderr)

    def backlog(self) -> int:
        """Invocations queued and not yet taken by a worker (local backend)."""
        return int(self.store.mds.llen(self.queue)) if self.backend == "local" else 0

    def running(self, job: str) -> set[str]:
        """Ids of ``job``'s invocations that a live worker has taken (local backend):
        not lost even before their lease exists; if the worker dies, ``_worker_died``
        sends them again."""
        if self.backend != "local":
            return set()
        pipe = self.store.mds.pipeline(transaction=False)
        for wid in range(len(self.workers)):
            pipe.lrange(f"{self.queue}:w:{wid}", 0, -1)
        taken = [decode_invocation(p) for entries in pipe.execute() for p in entries]
        return {inv.id for inv in taken if inv.job == job}

    # -- what clients use ------------------------------------------------------
    def invoke(self, batch: Batch, job: str, invocations: list[Invocation]) -> Callable[[], None] | None:
        """Queue ``invocations``: they are sent when ``batch`` executes, or (lambda
        backend) by the returned callable, to be called after ``batch`` executes."""
        return self._invoke(batch, job, invocations)

    def cleanup_job(self, job: str) -> None:
        """Delete the job's keys that only the backend knows of (spilled Lambda events)."""
        if self.backend == "lambda":
            from wukong.lambda_backend import cleanup_job

            cleanup_job(self.store, job)

    def close(self) -> None:
        """Stop the workers and embedded Redis servers; idempotent."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
        invoker = getattr(self, "lambda_invoker", None)
        if invoker is not None:
            invoker.close()
        local_proxy = getattr(self, "local_proxy", None)
        if local_proxy is not None:
            local_proxy.stop()
        store = getattr(self, "store", None)
        if store is not None and self.workers:
            try:  # workers idle on the queue leave at once; busy ones are terminated
                store.mds.rpush(self.queue, *[STOP] * len(self.workers))
            except Exception:
                pass
        LocalCluster._cleanup(self.redis_servers, self.workers, True, self.shm_dir)
        if store is not None and not self.redis_servers:
            try:  # on a shared Redis, leave none of the cluster's keys behind
                store.mds.delete(self.queue, *[f"{self.queue}:w:{i}" for i in range(len(self.workers))])
            except Exception:
                pass
        if store is not None:
            store.close()

    @staticmethod
    def _cleanup(
        redis_servers: list[RedisServer], workers: list, graceful: bool = False, shm_dir: str | None = None
    ) -> None:
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
        shm.remove_dir(shm_dir)

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        where = "embedded" if self.redis_servers else "external"
        if self.backend == "lambda":
            lam = self.lambda_invoker
            shards = len(self.store.kvs_index)
            return f"<LocalCluster lambda {lam.function_name!r} at {lam.endpoint}, {shards} KV shard(s), {where} Redis>"
        return f"<LocalCluster {self.n_workers} workers, {len(self.store.kvs_index)} KV shard(s), {where} Redis>"

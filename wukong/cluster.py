"""``LocalCluster``: the facade that picks where executors run and where state lives.

Storage is an embedded private Redis (``kvs_shards`` of them) unless endpoints
are given.  The backend is chosen once, here: ``LocalBackend`` (warm worker
processes, the default) or ``LambdaBackend`` (invocations of a Lambda
function); the client talks to it through the ``wukong.backends.base.Backend``
surface only.
"""

from __future__ import annotations

import functools
import os
import secrets
import weakref
from collections.abc import Callable, Sequence
from typing import Any

from wukong import config as wukong_config
from wukong.backends.base import Backend
from wukong.faults import parse_faults
from wukong.process import stop
from wukong.recovery import LEASE_MS, MAX_ATTEMPTS
from wukong.store import CLOSE_DELETES_S, Endpoint, Store, shm
from wukong.store.credentials import SecretCredentials, read_secret
from wukong.store.server import RedisServer

# bytes: delayed I/O's threshold unless one is configured, by where a stored value goes.  Into
# shared memory a write is a copy (0.1-0.2 ms per MB, ``python -m bench.dataplane``) while a
# hold costs its asks (a round trip each, ~0.5 ms while the cores run tasks): held, GEMM's
# 4.5 MB blocks cost its small size 4-24% and its 32 MB blocks saved its full size 4-14%
# (two clusters alternating job by job with Dask's threads, both orders; issue 13's note).
# Into Redis, across a network from a Lambda, a write costs far more: 1 MiB.
DELAYED_IO_BYTES = {"shared memory": 8 << 20, "redis": 1 << 20}


class LocalCluster:
    """A wukong cluster on this machine.

    Arguments left out take their values from ``dask.config``'s ``wukong``
    namespace (``wukong/wukong.yaml``, ``DASK_WUKONG__...``; see ``wukong.config``).

    Parameters
    ----------
    n_workers : int, optional
        Warm executor processes (default: one per core, divided by
        ``threads_per_worker``).
    threads_per_worker : int, optional
        Executors each worker process runs as threads (default ``1``; see
        ``wukong.backends.worker``).  Executors of one process hand values to
        each other by reference, as Dask's threaded scheduler does: work that
        releases the GIL (numpy, BLAS) may run as threads, pure-Python work
        wants processes.
    processes : bool
        ``False``: one worker process runs all ``n_workers × threads_per_worker``
        executors as threads (distributed's ``processes=False``).  Not the
        client's own process: a task that must be ended (a stuck task, a
        crash) ends its worker process, which must not be the user's program.
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
    redis_cluster : str, optional
        A Redis Cluster (``redis[s]://[user:pw@]host:port``, any node; e.g.
        ElastiCache Serverless, a cluster-mode replication group, Valkey) to
        hold both the metadata store and the intermediate data, instead of
        ``redis_endpoints``.  Keys are placed by slot: a job's metadata keys
        share a hash tag, values spread over every shard.
    redis_secret_arn : str, optional
        A Secrets Manager secret (``{"username", "password"}``) with the
        credentials for Redis, read here with ``GetSecretValue``.  On the
        lambda backend no password travels in an event either way: the
        function reads its own (``wukong.store.credentials``).
    proxy_secret_arn : str, optional
        A Secrets Manager secret holding the proxy's shared secret.
    mds_endpoint, kvs_endpoints : optional
        The metadata store and the KV-store shards, given separately (same
        forms as ``redis_endpoints``).  Intermediate data is spread over the
        shards by a consistent-hash ring: adding one of N shards moves about
        1/N of the keys.  Values above Redis's 512 MB limit are split into
        parts (``wukong.store.PART_SIZE``).
    kvs_shards : int
        How many embedded Redis servers to start for intermediate data (the
        first is also the metadata store).
    inline_limit : int
        Outputs up to this many bytes travel inside invocations.
    cluster_threshold : int
        Outputs above this many bytes are not shipped: their executor runs
        all their ready dependents itself.
    delayed_io : bool or dict, optional
        Delayed I/O: an output of at least ``threshold`` bytes whose one
        dependent is a fan-in is kept in its executor's memory for up to
        ``max-wait`` seconds while that fan-in may complete there; it then
        runs there and the output is never stored.  ``False`` turns it off; a
        dict (``{"threshold": 1 << 20, "max-wait": 0.5}``) overrides the
        configured ``wukong.delayed-io`` settings.  The threshold is 8 MiB by
        default where values pass through shared memory (a local cluster), 1 MiB
        elsewhere (``DELAYED_IO_BYTES``).
    ttl : int
        Seconds every job key lives at most (a safety net; keys are deleted
        when their job ends).
    startup_timeout : float
        Seconds an embedded ``redis-server`` gets to become ready before
        ``LocalCluster()`` fails, naming it and quoting its last output.
    connect_timeout : float
        Seconds to wait for a Redis server to accept a connection (and, when
        the cluster starts, to answer) before naming it in an error.
    socket_timeout : float, optional
        Seconds to wait for any answer from a Redis server during a job before
        naming it in an error; ``None`` (the default) waits as long as the
        connection lives.  A server that dies is noticed at once either way.
    backend : {"local", "lambda"}
        ``"lambda"``: no local workers; executors are invocations of the Lambda
        function ``function_name`` (see ``wukong.backends.aws_lambda``), in ``region``
        or at ``endpoint_url`` (e.g. a ``wukong lambda-local`` endpoint).  The
        Redis endpoints must be reachable from the function.
    num_lambda_invokers : int
        Threads (one boto3 client each) invoking the leaf executors of a job,
        when ``lambda_invoker="boto3"``.
    lambda_invoker : str, optional
        ``"lean"`` (many invokes in flight from one asyncio loop, signed by
        botocore; the default) or ``"boto3"`` (``$WUKONG_INVOKER`` when unset).
    invoker_tree_branching : int, optional
        Wide launches go through a tree of invocations of the function, its
        branching chosen from the width and the measured invoke latency;
        this forces the branching (``0``: never a tree).
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
    start_grace : float
        Lambda backend: seconds an invocation may take, beyond twice ``lease_ms``,
        to start (a cold start: the runtime, the imports, the Redis log-in; AWS
        allows 10 s for a function's Init) before the client takes it for lost
        and sends it again (default 10, ``wukong.lambda.start-grace``).  Once seen
        running, a lapsed lease is enough.
    shared_memory : bool
        Local backend: values of 1 MiB or more pass between processes through
        files on ``/dev/shm`` (mapped copy-on-write) instead of through Redis.
    worker_start_timeout : float
        Local backend: seconds a worker may take to start (imports, Redis) before it
        is replaced; a worker that keeps failing to start is given up after a few
        tries with a back-off, and ``LocalCluster()`` fails, quoting the workers'
        stderr, when none of them starts.
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
        threads_per_worker: int | None = None,
        processes: bool | None = None,
        redis_endpoints: Sequence[Any] | None = None,
        redis_password: str | None = None,
        redis_cluster: str | None = None,
        redis_secret_arn: str | None = None,
        proxy_secret_arn: str | None = None,
        mds_endpoint: Any = None,
        kvs_endpoints: Sequence[Any] | None = None,
        kvs_shards: int | None = None,
        inline_limit: int | None = None,
        cluster_threshold: int | None = None,
        delayed_io: bool | dict | None = None,
        ttl: int | None = None,
        startup_timeout: float = 10.0,
        connect_timeout: float = 5.0,
        socket_timeout: float | None = None,
        backend: str | None = None,
        function_name: str | None = None,
        region: str | None = None,
        endpoint_url: str | None = None,
        num_lambda_invokers: int = 16,
        lambda_invoker: str | None = None,
        invoker_tree_branching: int | None = None,
        max_event_payload: int = 1_048_576,
        invoke_attempts: int = 8,
        memory_mb: int = 3008,
        architecture: str = "x86_64",
        retries: int | None = None,
        lease_ms: int = LEASE_MS,
        max_attempts: int = MAX_ATTEMPTS,
        start_grace: float | None = None,
        faults: dict | str | None = None,
        max_result_bytes: int | None = None,
        shared_memory: bool = True,
        proxy_address: str | None = None,
        proxy_port: int | None = None,
        use_local_proxy: bool = False,
        max_task_fanout: int | None = None,
        worker_start_timeout: float = 60.0,
    ):
        # arguments not given come from dask.config's ``wukong`` namespace (wukong.config)
        given = dict(
            backend=backend, n_workers=n_workers, threads_per_worker=threads_per_worker, processes=processes,
            redis_endpoints=redis_endpoints, kvs_shards=kvs_shards,
            inline_limit=inline_limit, cluster_threshold=cluster_threshold, ttl=ttl, retries=retries,
            function_name=function_name, region=region, max_task_fanout=max_task_fanout, start_grace=start_grace,
        )  # fmt: skip
        (
            backend, n_workers, threads_per_worker, processes, redis_endpoints, kvs_shards, inline_limit,
            cluster_threshold, ttl, retries,
            function_name, region, max_task_fanout, start_grace,
        ) = wukong_config.cluster_defaults(**given).values()  # fmt: skip
        if backend not in ("local", "lambda"):
            raise ValueError(f"backend must be 'local' or 'lambda', got {backend!r}")
        self.n_workers, self.threads_per_worker = _workers(backend, n_workers, threads_per_worker, processes)
        self.inline_limit = inline_limit
        self.cluster_threshold = cluster_threshold
        self.delayed_io = _delayed_io(delayed_io)
        self.retries, self.lease_ms, self.max_attempts = retries, lease_ms, max_attempts
        self.max_result_bytes = max_result_bytes
        self.faults = parse_faults(faults) if isinstance(faults, str) else faults
        if faults is None:
            self.faults = parse_faults(os.environ.get("WUKONG_FAULTS"))
        self.redis_servers: list[RedisServer] = []
        self.shm_dir: str | None = None
        self.local_proxy: Any = None
        self.proxy: dict | None = None
        self.backend: Backend | None = None
        self.store: Store | None = None
        self.closed = False
        self.startup_timeout = startup_timeout
        try:
            timeouts: dict[str, Any] = {
                "connect_timeout": connect_timeout,
                "socket_timeout": socket_timeout,
                "ttl": ttl,
            }
            credentials = None
            if redis_secret_arn:  # kept as a provider: a login refused after a rotation reads it again
                credentials = SecretCredentials(functools.partial(read_secret, redis_secret_arn, region))
            if redis_cluster:
                if redis_endpoints or mds_endpoint or kvs_endpoints:
                    raise ValueError("give either redis_cluster or Redis endpoints, not both")
                seed = Endpoint.parse(redis_cluster, redis_password).with_credentials(credentials)
                self.store = Store(None, cluster=seed, **timeouts)
            else:
                mds, kvs = self._endpoints(redis_endpoints, redis_password, mds_endpoint, kvs_endpoints, kvs_shards)
                mds, kvs = mds.with_credentials(credentials), [e.with_credentials(credentials) for e in kvs]
                self.store = Store(mds, kvs, **timeouts)
            self.store.check()
            self.id = secrets.token_hex(6)
            if backend == "local" and shared_memory:  # every process is on this machine
                self.store.shm_dir = self.shm_dir = shm.make_dir(self.id)
            if use_local_proxy or proxy_address:
                from wukong.proxy.local import proxy_config

                proxy_secret = read_secret(proxy_secret_arn, region)["password"] if proxy_secret_arn else None
                self.local_proxy, self.proxy = proxy_config(
                    proxy_address, proxy_port, use_local_proxy, max_task_fanout, proxy_secret
                )
            if backend == "lambda":
                from wukong.backends.aws_lambda import LambdaBackend, lambda_config

                lam = lambda_config(
                    function_name,
                    region=region,
                    endpoint_url=endpoint_url,
                    num_invokers=num_lambda_invokers,
                    invoker=lambda_invoker,
                    tree_branching=invoker_tree_branching,
                    max_event_payload=max_event_payload,
                    attempts=invoke_attempts,
                )
                config = {  # sent in every event: no secret (the function reads its own)
                    "store": self.store.to_config(secrets=False),
                    "executor": self.executor_config(),
                    "lambda": lam,
                    "proxy": {**self.proxy, "secret": None} if self.proxy else None,
                }
                self.backend = LambdaBackend(
                    self.store, config, memory_mb=memory_mb, architecture=architecture, start_grace=start_grace
                )
            else:
                from wukong.backends.local import LocalBackend

                self.backend = LocalBackend(
                    self.store,
                    self.id,
                    self.n_workers,
                    self.executor_config(),
                    self.proxy,
                    max_attempts,
                    shared_redis=not self.redis_servers,
                    start_timeout=worker_start_timeout,
                    threads=self.threads_per_worker,
                )
        except BaseException:
            self.close()
            raise
        children = self.backend.children if self.backend is not None else []
        # a cluster never closed: at exit too, the last jobs' deletes end before their Redis
        # does (on an external Redis nothing else would delete those keys before their TTL)
        self._finalizer = weakref.finalize(
            self, _cleanup, self.redis_servers, children, self.shm_dir, self.store.deleted if self.store else None
        )

    @classmethod
    def from_stack(cls, name: str, *, region: str | None = None, **kwargs: Any) -> LocalCluster:
        """A cluster on the AWS stack ``name`` (``wukong deploy --stack``); ``kwargs`` override.

        The stack's outputs name the function, the Redis Cluster and the secrets
        (``wukong.deploy.cluster_options_from_stack``); the credentials are read
        from Secrets Manager, never written anywhere.
        """
        from wukong.deploy import cluster_options_from_stack

        return cls(**{**cluster_options_from_stack(name, region=region), **kwargs})

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
            self.redis_servers.append(RedisServer(startup_timeout=self.startup_timeout).start())
        eps = [Endpoint(*s.endpoint, password=s.password, unix_socket=s.unix_socket) for s in self.redis_servers]
        return eps[0], eps

    def delayed_io_bytes(self) -> int | None:
        """The size from which an output is held (delayed I/O), ``None`` when it is off."""
        if not self.delayed_io["enabled"]:
            return None
        threshold = self.delayed_io["threshold"]
        if threshold is None:
            return DELAYED_IO_BYTES["shared memory" if self.shm_dir else "redis"]
        return int(threshold)

    def executor_config(self) -> dict:
        """The configuration of every executor of this cluster: ``Executor(...)``'s keyword
        arguments, sent to each worker (local) or with each invocation (Lambda)."""
        from wukong.backends.local import LEAF_GROUPS_PER_WORKER

        config = {
            "inline_limit": self.inline_limit,
            "cluster_threshold": self.cluster_threshold,
            "delayed_io_bytes": self.delayed_io_bytes(),
            "delayed_io_wait": self.delayed_io["max-wait"],
            "lease_ms": self.lease_ms,
            "faults": self.faults,
            "max_result_bytes": self.max_result_bytes,
        }
        if self.n_workers:  # local workers: siblings of a wide fan-out are started as grouped leaves are
            config["fanout_groups"] = LEAF_GROUPS_PER_WORKER * self.n_workers * self.threads_per_worker
            config["executors"] = self.n_workers * self.threads_per_worker
            # one worker process: its executors are every reader, intermediates stay in its memory
            config["table_only"] = self.n_workers == 1
        return config

    def close(self) -> None:
        """Stop the workers, the proxy and the embedded Redis servers; idempotent."""
        if self.closed:
            return
        self.closed = True
        if self.store is not None:  # the last jobs' keys and files, while their Redis is up
            self.store.deleted(CLOSE_DELETES_S)
        if self.backend is not None:
            self.backend.close()
        if self.local_proxy is not None:
            self.local_proxy.stop()
        _cleanup(self.redis_servers, self.backend.children if self.backend else [], self.shm_dir)
        if self.store is not None:
            self.store.close()

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        what = self.backend.describe() if self.backend is not None else "closed"
        if self.store is not None and self.store.cluster is not None:
            return f"<LocalCluster {what}, {self.store.name_of(0)}>"
        where = "embedded" if self.redis_servers else "external"
        shards = len(self.store.kvs_index) if self.store is not None else 0
        return f"<LocalCluster {what}, {shards} KV shard(s), {where} Redis>"


def _workers(backend: str, n_workers: int | None, threads: int, processes: bool) -> tuple[int, int]:
    """Worker processes and executor threads in each: ``n_workers × threads`` executors in all
    (one per core by default), in one process when not ``processes``."""
    if backend != "local":
        return 0, 0
    if threads < 1 or (n_workers is not None and n_workers < 1):
        raise ValueError(f"n_workers and threads_per_worker must be at least 1, got {n_workers} and {threads}")
    n = n_workers or max(1, (os.cpu_count() or 1) // threads)
    return (n, threads) if processes else (1, n * threads)


def _delayed_io(given: bool | dict | None) -> dict:
    """The ``wukong.delayed-io`` settings with ``given`` (a switch, or settings) over them."""
    settings = dict(wukong_config.get("delayed-io"))
    if isinstance(given, bool):
        settings["enabled"] = given
    elif given:
        unknown = set(given) - set(settings)
        if unknown:
            raise ValueError(f"unknown delayed_io setting(s) {sorted(unknown)}; known: {sorted(settings)}")
        settings.update(given)
    for name in ("threshold", "max-wait"):
        value = settings[name]
        if value is None and name == "threshold":  # by where values go (``DELAYED_IO_BYTES``)
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"delayed-io {name} must be a number >= 0, got {value!r}")
    return settings


def _cleanup(
    redis_servers: list[RedisServer],
    children: list,
    shm_dir: str | None,
    deleted: Callable[[float], bool] | None = None,
) -> None:
    """What must never outlive the cluster: its child processes, embedded Redis, shared
    memory; first, ``deleted`` waits for the deletes of its last jobs (``Store.deleted``)."""
    if deleted is not None:
        deleted(CLOSE_DELETES_S)
    stop([p for p in children if p is not None])
    for s in redis_servers:
        s.stop()
    shm.remove_dir(shm_dir)

"""Where a job's state lives: the metadata store (MDS) and the KV store (KVS).

* MDS -- one Redis: schedules, fan-in arrivals, leases, the event stream, the
  cancel flag (and, on the local backend, the invocation queue).
* KVS -- one or more Redis servers for intermediate data; a key's server is
  chosen by the consistent-hash ring (``wukong_native.HashRing``).

Or both in one Redis Cluster (``cluster=``; ElastiCache Serverless, a
cluster-mode replication group, Valkey): then redis-py's cluster client
places every key by its slot.  A job's metadata keys share the hash tag
``{job}`` (``wukong.protocol.Keys``), so every Lua call and multi-key command
of a job touches one slot, while intermediate values spread over all of them.
The placement is the only difference the rest of wukong sees: ``servers``
holds the one cluster client twice, as "server" ``MDS`` and "server" ``KVS``,
so a ``Batch`` still sends data first (one ``ClusterPipeline``, which routes
each command to its node) and the metadata that announces it after.

Connections are opened once per process and reused by every task.  Traffic is
batched (``wukong.store.batch.Batch``): commands are gathered per server and
each server gets one pipeline; KVS pipelines go first and the MDS pipeline
last, so data is stored before the fan-in script that announces it runs.
When the MDS is also a KVS shard (the embedded default) a fan-in is one
round trip.

Every key is named by ``wukong.protocol.Keys``, carries a TTL as a safety net,
and is deleted by the client when the job ends (``delete_job``).  Values
longer than a Redis string may hold are split (``wukong.store.parts``); on the
local backend values of 1 MiB or more go through shared memory instead
(``wukong.store.shm``).

Failures.  Connections never retry on their own (a pipeline re-sent after a
lost reply would repeat its XADDs); a lost server surfaces as
``StorageError`` naming it (``host:port``), and the next command on that
connection reconnects.  On a Redis Cluster a lost master's replica takes
over: redis-py follows the new layout, and a job's clean-up sends its
deletions again until the replica answers (``failover_timeout``), so a
master lost mid-job leaves no key behind.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from redis.cluster import key_slot
from wukong_native import HashRing

from wukong.protocol import Keys
from wukong.store import parts, scripts, shm
from wukong.store.batch import Batch, whole
from wukong.store.endpoint import Endpoint, Pipeline, StorageError, run, settle

DEFAULT_TTL = 24 * 3600  # seconds; keys normally die with their job, long before
FAILOVER_TIMEOUT = 30.0  # seconds a job's clean-up waits for a lost cluster node's replica to take over
RING_VNODES = 1024  # points per KVS server on the ring: shares stay within ~10% of even (160 gives ~20%)
UNLINK_CHUNK = 10_000  # keys one UNLINK takes


class Store:
    """Connections to one cluster's MDS and KVS shards."""

    def __init__(
        self,
        mds: Endpoint | None,
        kvs: Sequence[Endpoint] = (),
        *,
        cluster: Endpoint | None = None,
        connect_timeout: float = 5.0,
        socket_timeout: float | None = None,
        ttl: int = DEFAULT_TTL,
        part_size: int | None = None,
        shm_dir: str | None = None,
        failover_timeout: float = FAILOVER_TIMEOUT,
    ):
        self.connect_timeout = connect_timeout
        self.socket_timeout = socket_timeout
        self._local = threading.local()  # each thread's own connections (``connection``)
        self._kept: weakref.WeakSet = weakref.WeakSet()  # all of them, closed with the store
        self._threads = _Threads()  # every thread's, those of threads that ended for the next
        self._deleter = _Deleter()  # ``delete_job_soon``
        self.part_size = part_size or parts.PART_SIZE
        self.shm_dir = shm_dir  # local backend: large values go through shared memory (wukong.shm)
        self.ttl = ttl
        self.failover_timeout = failover_timeout
        self.cluster = cluster
        if cluster is not None:
            self._connect_cluster(cluster)
            return
        if mds is None:
            raise ValueError("a Store needs an MDS endpoint or a Redis Cluster")
        self.endpoints: list[Endpoint] = []
        index: dict[tuple[str, int, int], int] = {}
        for ep in [mds, *kvs]:
            ident = (ep.host, ep.port, ep.db)
            if ident not in index:
                index[ident] = len(self.endpoints)
                self.endpoints.append(ep)
        self.servers = [ep.connect(connect_timeout, socket_timeout) for ep in self.endpoints]
        self.mds_index = 0
        self.mds = self.servers[0]
        self.kvs_index = [index[(ep.host, ep.port, ep.db)] for ep in kvs]
        self.ring: HashRing | None = HashRing([ep.name for ep in kvs], RING_VNODES)

    def _connect_cluster(self, seed: Endpoint) -> None:
        try:
            client = seed.connect_cluster(self.connect_timeout, self.socket_timeout)
        except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
            how = " over TLS" if seed.tls else ""
            raise StorageError(f"cannot reach Redis Cluster at {seed.name}{how}: {e}") from None
        except redis.exceptions.RedisClusterException as e:
            raise StorageError(f"Redis Cluster at {seed.name}: {e}") from None
        except redis.ResponseError as e:  # a standalone server, or it refused our credentials
            raise StorageError(f"Redis at {seed.name} is not a usable Redis Cluster: {e}") from None
        self.endpoints = [seed, seed]
        self.servers = [client, client]
        self.mds_index, self.mds = 0, client
        self.kvs_index = [1]
        self.ring = None

    @classmethod
    def from_config(cls, config: dict, credentials: Any = None) -> Store:
        """Open the store ``to_config`` described; ``credentials`` (``{"username",
        "password"}`` or a credential provider: ``wukong.store.credentials``) fill
        in what a config without secrets left out."""

        def endpoint(e: dict) -> Endpoint:
            return Endpoint(**e).with_credentials(credentials)

        cluster = config.get("cluster")
        return cls(
            endpoint(config["mds"]) if config.get("mds") else None,
            [endpoint(e) for e in config.get("kvs", ())],
            cluster=endpoint(cluster) if cluster else None,
            connect_timeout=config.get("connect_timeout", 5.0),
            socket_timeout=config.get("socket_timeout"),
            ttl=config.get("ttl", DEFAULT_TTL),
            part_size=config.get("part_size"),
            shm_dir=config.get("shm_dir"),
        )

    def to_config(self, *, secrets: bool = True) -> dict:
        """Everything another process needs to open the same store (JSON-able).

        ``secrets=False`` leaves the passwords out: the other process reads them
        from where it is configured to (``wukong.store.credentials``).
        """
        if self.cluster is not None:
            where: dict = {"cluster": self.cluster.to_config(secrets=secrets)}
        else:
            where = {
                "mds": self.endpoints[0].to_config(secrets=secrets),
                "kvs": [self.endpoints[i].to_config(secrets=secrets) for i in self.kvs_index],
            }
        return {
            **where,
            "connect_timeout": self.connect_timeout,
            "socket_timeout": self.socket_timeout,
            "ttl": self.ttl,
            "part_size": self.part_size,
            "shm_dir": self.shm_dir,
        }

    def check(self) -> None:
        """Ping every server and load the scripts; raise ``StorageError`` naming a bad one.

        The probe waits at most ``connect_timeout`` for each answer, even when
        the store's own connections have no read timeout: a server that
        accepts and then says nothing fails here, it does not hang us.
        """
        if self.cluster is not None:
            return self._check_cluster()
        for ep in self.endpoints:
            probe = ep.connect(self.connect_timeout, self.connect_timeout)
            try:
                probe.ping()
            except redis.AuthenticationError as e:
                raise StorageError(f"Redis at {ep.name} refused our credentials: {e}") from None
            except redis.ResponseError as e:
                raise StorageError(f"Redis at {ep.name} answered with an error: {e}") from None
            except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
                how = " over TLS" if ep.tls else ""
                raise StorageError(f"cannot reach Redis at {ep.name}{how}: {e}") from None
            finally:
                probe.close()
        try:
            scripts.load_all(self.mds)
        except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
            raise StorageError(f"lost the connection to Redis at {self.name_of(self.mds_index)}: {e}") from None

    def _check_cluster(self) -> None:
        """Ping every node of the cluster and load the scripts on every primary."""
        from redis.cluster import RedisCluster

        name = self.name_of(self.mds_index)
        try:
            self.mds.ping(target_nodes=RedisCluster.ALL_NODES)
            scripts.load_all(self.mds)
        except redis.AuthenticationError as e:
            raise StorageError(f"{name} refused our credentials: {e}") from None
        except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
            raise StorageError(f"cannot reach a node of {name}: {e}") from None
        except (redis.ResponseError, redis.exceptions.RedisClusterException) as e:
            raise StorageError(f"{name} answered with an error: {e}") from None

    def name_of(self, server: int) -> str:
        if self.cluster is not None:
            return f"Redis Cluster at {self.cluster.name}"
        return self.endpoints[server].name

    def kvs_server(self, key: str) -> int:
        if self.ring is None:  # a Redis Cluster places keys itself
            return self.kvs_index[0]
        return self.kvs_index[self.ring.node_for(key.encode())]

    def kvs_servers(self, keys: Sequence[str | bytes]) -> list[int]:
        kvs_index = self.kvs_index
        if self.ring is None:
            return [kvs_index[0]] * len(keys)
        names = [k if isinstance(k, bytes) else k.encode() for k in keys]
        return [kvs_index[i] for i in self.ring.nodes_for(names)] if names else []

    def connect_mds(self, socket_timeout: float | None = None) -> redis.Redis:
        """A connection of its own to the MDS (a blocking read, a watchdog), with its own timeout."""
        if self.cluster is not None:
            return self.cluster.connect_cluster(self.connect_timeout, socket_timeout)
        return self.endpoints[self.mds_index].connect(self.connect_timeout, socket_timeout)

    def batch(self) -> Batch:
        return Batch(self)

    def whole(self, key: str, value: bytes) -> bytes:
        """A value of ``key`` read by a script: joined again if it was split (``Batch.set_value``)."""
        return whole(self, key, value)

    def delete(self, keys_by_server: dict[int, list[str]], chunk: int = UNLINK_CHUNK) -> None:
        """UNLINK many keys, one pipeline per server.

        A server that cannot be reached does not stop the others; the first
        such error is raised at the end (the TTL removes what is left there).
        """
        errors = []
        for server, keys in keys_by_server.items():
            commands = [("UNLINK", *group) for group in self._unlink_groups(keys, chunk)]
            try:
                self.run_through_failover(server, commands)
            except StorageError as e:
                errors.append(e)
        if errors:
            raise errors[0]

    def run_through_failover(self, server: int, commands: list[tuple]) -> list:
        """Send ``commands`` (idempotent ones) to ``server`` in one pipeline and return the replies.

        On a Redis Cluster a command whose node was lost comes back as an error
        in its reply, not raised: such commands are sent again, with backoff,
        while a replica takes over (up to ``failover_timeout`` seconds); then
        the error names the cluster.  A standalone server is asked once.
        """
        replies: list = [None] * len(commands)
        todo = list(range(len(commands)))
        deadline = time.monotonic() + (self.failover_timeout if self.cluster is not None else 0.0)
        delay = 0.1
        while True:
            pipe = self.pipeline(server)
            for i in todo:
                pipe.execute_command(*commands[i])
            try:
                reply = run(pipe, self.name_of(server))
                error: StorageError | None = None
            except StorageError as e:
                reply, error = [e] * len(todo), e
            for i, r in zip(todo, reply, strict=True):
                replies[i] = r
            todo = [i for i in todo if isinstance(replies[i], Exception)]
            if not todo:
                return replies
            if time.monotonic() >= deadline:
                first = replies[todo[0]]
                raise error or StorageError(f"Redis at {self.name_of(server)}: {type(first).__name__}: {first}")
            time.sleep(delay)
            delay = min(1.0, delay * 2)

    def _unlink_groups(self, keys: list[str], chunk: int) -> list[list[str]]:
        """Keys in groups one UNLINK may take: by ``chunk``, and on a cluster by slot too."""
        if self.cluster is None:
            return [keys[i : i + chunk] for i in range(0, len(keys), chunk)]
        by_slot: dict[int, list[str]] = {}
        for k in keys:
            by_slot.setdefault(key_slot(k.encode()), []).append(k)
        return [g[i : i + chunk] for g in by_slot.values() for i in range(0, len(g), chunk)]

    def delete_job(self, keys: Keys, written: JobWrites, files: bool = True) -> None:
        """Delete every key a job may have ``written``, the parts of its split values and its
        spilled invocations included, and its shared-memory files (unless not ``files``).

        The MDS goes first: the same pipeline reads the registries, so the
        parts are deleted with the other servers' keys, no extra round trip
        (unless some part or spill lives on the MDS itself).  A job of one
        slice of keys (``all_job_keys``) has all its keys on the MDS server
        deleted in that first round trip: on one server, the only one.
        """
        if files:
            shm.remove_job(self.shm_dir, keys.job)
        slices = all_job_keys(self, keys, written)
        by_server = next(slices)
        if max(written.ntasks, written.nschedules) <= JOB_KEYS_SLICE:
            for server, names in next(slices, {}).items():
                by_server.setdefault(server, []).extend(names)
        mds_keys = by_server.pop(self.mds_index)
        unlink = [("UNLINK", *group) for group in self._unlink_groups(mds_keys, UNLINK_CHUNK)]
        commands = [("SMEMBERS", keys.parts), ("SMEMBERS", keys.spills), *unlink]
        error = None
        try:
            reply = self.run_through_failover(self.mds_index, commands)
            split, spills = sorted(reply[0] or ()), sorted(reply[1] or ())
        except StorageError as e:
            error, split, spills = e, [], []
        for server, name in zip(self.kvs_servers(split), split, strict=True):
            by_server.setdefault(server, []).append(name)
        if spills:  # invocations too large for a Lambda event, kept on the MDS
            by_server.setdefault(self.mds_index, []).extend(s.decode() for s in spills)
        for group in (by_server, *slices):
            try:
                self.delete(group)
            except StorageError as e:
                error = error or e
        if error is not None:
            raise error

    def delete_job_soon(self, keys: Keys, written: JobWrites) -> None:
        """``delete_job``, its Redis keys on the store's own thread: a job that ended well
        returns its results without waiting for them (nobody reads them any more); what
        cannot be deleted is left to the keys' TTL, as ``Job.cleanup`` leaves it.  Its
        files go to the pool now, for the next job's writes.  ``deleted`` waits for these."""
        shm.remove_job(self.shm_dir, keys.job)
        self._deleter.put(lambda: self.delete_job(keys, written, files=False))

    def deleted(self, timeout: float | None = None) -> bool:
        """Wait until every ``delete_job_soon`` made so far is done (``False``: some were
        not, after ``timeout`` seconds)."""
        return self._deleter.wait(timeout)

    def primary_ids(self) -> set[str]:
        """A Redis Cluster's masters that serve slots now (their node ids)."""
        nodes: Any = self.mds.cluster_nodes()  # type: ignore[attr-defined]  # a RedisCluster here
        return {n["node_id"] for n in nodes.values() if "master" in n["flags"].split(",") and n["slots"]}

    def failed_primaries(self, ids: set[str]) -> list[str]:
        """Of the masters ``ids``, those the cluster now counts as failed or as replicas
        (a failover happened): their addresses.  A resharding moves slots, not roles."""
        nodes: Any = self.mds.cluster_nodes()  # type: ignore[attr-defined]  # a RedisCluster here
        return sorted(
            addr for addr, n in nodes.items() if n["node_id"] in ids and {"fail", "slave"} & set(n["flags"].split(","))
        )

    def pipeline(self, server: int) -> Any:
        """A pipeline to ``server`` for a ``Batch``: ``endpoint.Pipeline`` on this thread's
        connection (``connection``); redis-py's on a Redis Cluster, which routes each command."""
        r = self.servers[server]
        if self.cluster is not None:
            return r.pipeline(transaction=False)
        return Pipeline(r, lambda: self.connection(server))

    def connection(self, server: int) -> Any:
        """The calling thread's own connection to ``server`` (standalone), taken on first
        use and kept: a round trip needs no checkout from a pool (its lock, metrics,
        wrappers).  A thread that ended leaves its connections to the next thread that
        needs one (``_Threads``); a forked child makes its own.  Closed with the store."""
        local = self._local
        if getattr(local, "pid", None) != os.getpid():
            local.pid, local.conns = os.getpid(), {}
            self._threads.register(local.conns)
        conn = local.conns.get(server)
        if conn is None:
            conn = self._threads.take(server)
            if conn is None:  # made as the pool makes one, but not counted against its limit
                pool = self.servers[server].connection_pool
                conn = pool.connection_class(**pool.connection_kwargs)
                self._kept.add(conn)
            local.conns[server] = conn
        if getattr(conn, "wukong_owed", None):  # replies of a round trip sent earlier (``Pipeline.send``)
            settle(conn)
        # As a pool checkout does (a poll, ~1 µs): a connection the server closed since its
        # last use (a restarted server, a thawed Lambda container) is opened again, not
        # sent on and failed.
        try:
            if conn.can_read():
                conn.disconnect()
        except (redis.ConnectionError, OSError):
            conn.disconnect()
        return conn

    def close(self) -> None:
        self.deleted(CLOSE_DELETES_S)
        for r in self.servers:
            r.close()
        for conn in list(self._kept):
            conn.disconnect()


_forkable: weakref.WeakSet = weakref.WeakSet()  # what a forked child starts afresh (``_Threads``, ``_Deleter``)


def _start_afresh_in_child() -> None:
    """In a forked child: its parent's threads are not its own, and a lock one of them
    held at the fork would stay held for ever (the child's first delete, or its first
    connection, waited on it)."""
    for obj in list(_forkable):
        obj.start_afresh()


os.register_at_fork(after_in_child=_start_afresh_in_child)


class _Threads:
    """Each thread's own connections (``Store.connection``), by server; a thread that
    ended leaves its connections to the next thread that needs one.

    Without it every new thread made a connection of its own: its connect and
    handshake on its first round trip, and one more of the pool's 100 (redis-py's
    default limit), never given back: the 100th thread's job failed with "Too many
    connections" (a client driven from short-lived threads: a web server's
    handlers, the benchmark harness, which runs each job on a new thread).

    Nothing runs when a thread ends (no finalizer, no code in the garbage collector):
    a thread looks among ended threads' connections when it first needs one.
    """

    def __init__(self) -> None:
        self.start_afresh()
        _forkable.add(self)

    def start_afresh(self) -> None:
        self.lock = threading.Lock()
        self.threads: list[tuple[weakref.ref, dict[int, Any]]] = []  # (thread, its connections)

    def register(self, conns: dict[int, Any]) -> None:
        """``conns``: the calling thread's connections, as it makes or takes them."""
        with self.lock:
            self.threads.append((weakref.ref(threading.current_thread()), conns))

    def take(self, server: int) -> Any:
        """A connection to ``server`` of a thread that ended, or ``None``."""
        with self.lock:
            found = None
            for entry in list(self.threads):
                thread, conns = entry[0](), entry[1]
                if thread is not None and thread.is_alive():
                    continue
                if found is None and server in conns:
                    found = conns.pop(server)
                if not conns:
                    self.threads.remove(entry)
            return found


class _Deleter:
    """Runs deletes in order on a thread of its own (``Store.delete_job_soon``), which
    waits ``IDLE_S`` for more before it ends.  A forked child starts afresh: its
    parent's thread is not its own, nor are its parent's jobs."""

    IDLE_S = 1.0

    def __init__(self) -> None:
        self.start_afresh()
        _forkable.add(self)

    def start_afresh(self) -> None:
        self.cond = threading.Condition()
        self.todo: deque[Callable[[], None]] = deque()  # the one running first, until it is done
        self.alive = False  # a thread is running them, or waiting for more

    def put(self, delete: Callable[[], None]) -> None:
        with self.cond:
            self.todo.append(delete)
            if self.alive:
                self.cond.notify_all()
            else:
                self.alive = True
                threading.Thread(target=self._run, name="wukong-delete", daemon=True).start()

    def _run(self) -> None:
        while True:
            with self.cond:
                if not self.cond.wait_for(lambda: self.todo, self.IDLE_S):
                    self.alive = False
                    return
                delete = self.todo[0]
            try:
                delete()
            except Exception:
                pass  # the TTL removes what could not be deleted
            with self.cond:
                self.todo.popleft()
                self.cond.notify_all()

    def wait(self, timeout: float | None = None) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: not self.todo, timeout)


CLOSE_DELETES_S = 10.0  # seconds a closing store waits for the deletes still running (``Store.close``)
JOB_KEYS_SLICE = 100_000  # tasks whose keys are deleted together (all_job_keys)


@dataclass(frozen=True)
class JobWrites:
    """What a job may have written: a value per task of ``ntasks`` (``stored``: only these
    tasks', a solo job's outputs), ``nschedules`` schedules, the ``fanins``' state and
    the ``invocations``' leases and payloads."""

    ntasks: int
    nschedules: int = 0
    fanins: Iterable[int] = ()
    invocations: Iterable[str] = ()
    stored: Iterable[int] | None = None


def all_job_keys(store: Store, keys: Keys, written: JobWrites) -> Iterator[dict[int, list[str]]]:
    """Every key a job may have written, grouped by server, in slices of about
    ``JOB_KEYS_SLICE`` tasks' keys (a million-task job's key names alone are a
    few hundred MB: they are never all listed at once).  The first slice holds
    the job's own keys and those of its invocations.

    The parts of split values are not listed: their names are in the
    ``keys.parts`` registry (listed here), which ``Store.delete_job`` reads.
    """
    ntasks, nschedules = written.ntasks, written.nschedules
    mds = [keys.events, keys.cancel, keys.parts, keys.spills, keys.options, keys.attempts, keys.plan]
    for inv in written.invocations:
        mds += [keys.lease(inv), keys.invocation(inv), keys.current(inv)]
    first: dict[int, list[str]] = {store.mds_index: mds}
    if written.stored is not None:  # these values only, in the first slice
        data = [keys.data(t) for t in written.stored]
        for server, key in zip(store.kvs_servers(data), data, strict=True):
            first.setdefault(server, []).append(key)
        ntasks = 0
    yield first
    fanins = sorted(written.fanins)
    f = 0
    for start in range(0, max(ntasks, nschedules), JOB_KEYS_SLICE):
        end = start + JOB_KEYS_SLICE
        mds = [keys.schedule(s) for s in range(start, min(end, nschedules))]
        while f < len(fanins) and fanins[f] < end:
            mds += [keys.fanin(fanins[f]), keys.owner(fanins[f]), keys.holds(fanins[f])]
            f += 1
        out: dict[int, list[str]] = {store.mds_index: mds}
        data = [keys.data(t) for t in range(start, min(end, ntasks))]
        for server, key in zip(store.kvs_servers(data), data, strict=True):
            out.setdefault(server, []).append(key)
        yield out

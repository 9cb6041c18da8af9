"""Where a job's state lives: the metadata store (MDS) and the KV store (KVS).

* MDS -- one Redis: schedules, fan-in arrivals, the event stream, the cancel
  flag (and, on the local backend, the invocation queue).
* KVS -- one or more Redis servers for intermediate data; a key's server is
  chosen by the consistent-hash ring (``wukong.native.HashRing``).

Connections are opened once per process and reused by every task.  Traffic is
batched: a ``Batch`` gathers commands per server and sends each server one
pipeline; KVS pipelines go first and the MDS pipeline last, so data is stored
before the fan-in script that announces it runs.  When the MDS is also a KVS
shard (the embedded default) a fan-in is one round trip.

Every key is namespaced by job (``wk:<job>:...``), carries a TTL as a safety
net, and is deleted by the client when the job ends.

Large values.  A Redis string holds at most 512 MB, so ``Batch.kvs_set``
splits a value longer than ``Store.part_size`` (``PART_SIZE``, 256 MB): the
parts go to ``<key>:p0 .. <key>:p<n-1>``, each on its own ring server, and
``<key>`` holds a small header (``_PARTS_MAGIC``, part count, total length).
The part names are added to the job's registry set on the MDS
(``wk:<job>:parts``) in the same batch, so ``Store.delete_job`` finds and
deletes them.  ``Batch.execute`` rejoins: a read that answers with a header
costs one more round trip, one pipeline per server holding parts, and
``batch[handle]`` then is the whole value.

Failures.  Connections never retry on their own (a pipeline re-sent after a
lost reply would repeat its XADDs); a lost server surfaces as
``StorageError`` naming it (``host:port``), and the next command on that
connection reconnects.
"""

from __future__ import annotations

import importlib.resources
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

import redis
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError
from redis.retry import Retry

from wukong import shm
from wukong.native import HashRing

DEFAULT_TTL = 24 * 3600  # seconds; keys normally die with their job, long before
PART_SIZE = 256 * 1024 * 1024  # values longer than this are split (Redis strings stop at 512 MB)
RING_VNODES = 1024  # points per KVS server on the ring: shares stay within ~10% of even (160 gives ~20%)

# The header a split value's key holds: magic, u32 part count, u64 total length.
_PARTS_MAGIC = b"\x00wukong-parts\x00"
_PARTS_HEADER = struct.Struct(f"<{len(_PARTS_MAGIC)}sIQ")


class StorageError(ConnectionError):
    """A Redis server could not be reached or refused us; names the server."""


@dataclass(frozen=True)
class Endpoint:
    """One Redis server: ``Endpoint.parse("rediss://user:pw@host:6380/0")``."""

    host: str
    port: int = 6379
    password: str | None = field(default=None, repr=False)
    username: str | None = None
    tls: bool = False
    db: int = 0
    tls_ca_certs: str | None = None  # CA bundle to verify the server with (default: the system's)
    tls_verify: bool = True  # False: accept any certificate (``?ssl_cert_reqs=none``)

    @classmethod
    def parse(cls, spec: Any, password: str | None = None) -> Endpoint:
        if isinstance(spec, Endpoint):
            return spec
        if isinstance(spec, (tuple, list)):
            return cls(str(spec[0]), int(spec[1]), password=password)
        if isinstance(spec, str) and "://" in spec:
            u = urlparse(spec)
            if u.scheme not in ("redis", "rediss"):
                raise ValueError(f"Redis URL must start with redis:// or rediss://: {spec!r}")
            query = {k: v[-1] for k, v in parse_qs(u.query).items()}
            return cls(
                u.hostname or "127.0.0.1",
                u.port or 6379,
                password=unquote(u.password) if u.password else password,
                username=unquote(u.username) if u.username else None,
                tls=u.scheme == "rediss",
                db=int(u.path.lstrip("/") or 0),
                tls_ca_certs=query.get("ssl_ca_certs"),
                tls_verify=query.get("ssl_cert_reqs", "required").lower() not in ("none", "optional"),
            )
        if isinstance(spec, str):
            host, _, port = spec.rpartition(":")
            return cls(host or spec, int(port) if host else 6379, password=password)
        raise TypeError(f"cannot read a Redis endpoint from {spec!r}")

    @property
    def name(self) -> str:
        return f"{self.host}:{self.port}"

    def connect(self, connect_timeout: float = 5.0, socket_timeout: float | None = None) -> redis.Redis:
        """A client with its own connection pool; it never retries a command by itself."""
        return redis.Redis(
            host=self.host,
            port=self.port,
            db=self.db,
            username=self.username,
            password=self.password,
            ssl=self.tls,
            ssl_ca_certs=self.tls_ca_certs,
            ssl_cert_reqs="required" if self.tls_verify else "none",
            socket_connect_timeout=connect_timeout,
            socket_timeout=socket_timeout,
            socket_keepalive=True,
            retry=Retry(NoBackoff(), 0),
        )

    def to_config(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def _load_script(name: str) -> bytes:
    return importlib.resources.files("wukong").joinpath("lua", name).read_bytes()


FANIN_LUA = _load_script("fanin.lua")
LEASE_LUA = _load_script("lease.lua")
SCRIPTS = (FANIN_LUA, LEASE_LUA)


class Keys:
    """The names of one job's keys."""

    def __init__(self, job: str):
        self.job = job
        p = f"wk:{job}:"
        self.prefix = p
        self.events = p + "ev"
        self.cancel = p + "cancel"
        self.parts = p + "parts"  # names of the parts of split values (see the module docstring)

    def schedule(self, sid: int) -> str:
        return f"{self.prefix}s:{sid}"

    def fanin(self, tid: int) -> str:
        return f"{self.prefix}f:{tid}"

    def data(self, tid: int) -> str:
        return f"{self.prefix}d:{tid}"

    def owner(self, tid: int) -> str:
        return f"{self.prefix}o:{tid}"

    def lease(self, inv: str) -> str:
        return f"{self.prefix}l:{inv}"

    def invocation(self, inv: str) -> str:
        return f"{self.prefix}i:{inv}"

    @property
    def options(self) -> str:
        return self.prefix + "opts"

    @property
    def attempts(self) -> str:
        return self.prefix + "attempts"


class Store:
    """Connections to one cluster's MDS and KVS shards."""

    def __init__(
        self,
        mds: Endpoint,
        kvs: Sequence[Endpoint],
        *,
        connect_timeout: float = 5.0,
        socket_timeout: float | None = None,
        ttl: int = DEFAULT_TTL,
        part_size: int | None = None,
        shm_dir: str | None = None,
    ):
        self.connect_timeout = connect_timeout
        self.socket_timeout = socket_timeout
        self.part_size = part_size or PART_SIZE
        self.shm_dir = shm_dir  # local backend: large values go through shared memory (wukong.shm)
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
        self.ring = HashRing([ep.name for ep in kvs], RING_VNODES)
        self.ttl = ttl
        self.fanin_sha = redis.client.Script(None, FANIN_LUA).sha  # type: ignore[arg-type]
        self.lease_sha = redis.client.Script(None, LEASE_LUA).sha  # type: ignore[arg-type]

    @classmethod
    def from_config(cls, config: dict) -> Store:
        return cls(
            Endpoint(**config["mds"]),
            [Endpoint(**e) for e in config["kvs"]],
            connect_timeout=config.get("connect_timeout", 5.0),
            socket_timeout=config.get("socket_timeout"),
            ttl=config.get("ttl", DEFAULT_TTL),
            part_size=config.get("part_size"),
            shm_dir=config.get("shm_dir"),
        )

    def to_config(self) -> dict:
        """Everything another process needs to open the same store (JSON-able)."""
        return {
            "mds": self.endpoints[0].to_config(),
            "kvs": [self.endpoints[i].to_config() for i in self.kvs_index],
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
            for script in SCRIPTS:
                self.mds.script_load(script)
        except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
            raise StorageError(f"lost the connection to Redis at {self.name_of(self.mds_index)}: {e}") from None

    def name_of(self, server: int) -> str:
        return self.endpoints[server].name

    def kvs_server(self, key: str) -> int:
        return self.kvs_index[self.ring.node_for(key.encode())]

    def kvs_servers(self, keys: Sequence[str | bytes]) -> list[int]:
        kvs_index = self.kvs_index
        names = [k if isinstance(k, bytes) else k.encode() for k in keys]
        return [kvs_index[i] for i in self.ring.nodes_for(names)] if names else []

    def batch(self) -> Batch:
        return Batch(self)

    def delete(self, keys_by_server: dict[int, list[str]], chunk: int = 10_000) -> None:
        """UNLINK many keys, one pipeline per server.

        A server that cannot be reached does not stop the others; the first
        such error is raised at the end (the TTL removes what is left there).
        """
        errors = []
        for server, keys in keys_by_server.items():
            pipe = self.servers[server].pipeline(transaction=False)
            for i in range(0, len(keys), chunk):
                pipe.unlink(*keys[i : i + chunk])
            try:
                run(pipe, self.name_of(server))
            except StorageError as e:
                errors.append(e)
        if errors:
            raise errors[0]

    def delete_job(
        self, keys: Keys, ntasks: int, nschedules: int, fanins: Iterable[int], invocations: Iterable[str] = ()
    ) -> None:
        """Delete every key of a job, the parts of its split values included.

        The MDS goes first: the same pipeline reads the parts registry, so the
        parts are deleted with the other servers' keys, no extra round trip
        (unless some part lives on the MDS itself).
        """
        shm.remove_job(self.shm_dir, keys.job)
        by_server = all_job_keys(self, keys, ntasks, nschedules, fanins, invocations)
        mds_keys = by_server.pop(self.mds_index)
        pipe = self.mds.pipeline(transaction=False)
        pipe.smembers(keys.parts)
        pipe.unlink(*mds_keys)
        error = None
        try:
            parts = sorted(run(pipe, self.name_of(self.mds_index))[0] or ())
        except StorageError as e:
            error, parts = e, []
        for server, name in zip(self.kvs_servers(parts), parts, strict=True):
            by_server.setdefault(server, []).append(name)
        try:
            self.delete(by_server)
        except StorageError as e:
            error = error or e
        if error is not None:
            raise error

    def close(self) -> None:
        for r in self.servers:
            r.close()


def run(pipe: Any, name: str) -> list:
    """Execute a pipeline; connection failures become ``StorageError`` naming the server."""
    try:
        return pipe.execute(raise_on_error=False)
    except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
        raise StorageError(f"lost the connection to Redis at {name}: {e}") from None


class Batch:
    """Commands for several servers, sent as one pipeline per server.

    Each ``add`` returns a handle; after ``execute`` the reply is ``batch[handle]``.
    """

    def __init__(self, store: Store):
        self.store = store
        self.pipes: dict[int, Any] = {}
        self.counts: dict[int, int] = {}
        self.replies: dict[int, list] = {}
        self.kvs_reads: list[tuple[tuple[int, int], str]] = []  # (handle, key): may be split values

    def _pipe(self, server: int) -> Any:
        pipe = self.pipes.get(server)
        if pipe is None:
            pipe = self.pipes[server] = self.store.servers[server].pipeline(transaction=False)
            self.counts[server] = 0
        return pipe

    def add(self, server: int, command: str, *args: Any) -> tuple[int, int]:
        getattr(self._pipe(server), command)(*args)
        n = self.counts[server]
        self.counts[server] = n + 1
        return server, n

    def mds(self, command: str, *args: Any) -> tuple[int, int]:
        return self.add(self.store.mds_index, command, *args)

    def fanin(
        self, keys: Keys, tid: int, parent: int, ndeps: int, sid: int, want_schedule: bool, invocation: str
    ) -> tuple[int, int]:
        return self.mds(
            "evalsha",
            self.store.fanin_sha,
            4,
            keys.fanin(tid),
            keys.schedule(sid),
            keys.owner(tid),
            keys.events,
            parent,
            ndeps,
            self.store.ttl,
            int(want_schedule),
            invocation,
        )

    def lease(self, keys: Keys, inv: str, value: str, px: int) -> tuple[int, int]:
        """Take an invocation's lease (``px`` ms) or, with ``px=0``, mark it done (lease.lua)."""
        return self.mds("evalsha", self.store.lease_sha, 2, keys.events, keys.lease(inv), value, px, self.store.ttl)

    def kvs_set(self, key: str, value: bytes | memoryview) -> tuple[int, int]:
        """Store ``value`` at ``key`` (a ``wk:<job>:...`` name), split if it is too long."""
        store = self.store
        if store.shm_dir and len(value) >= shm.SHM_MIN:
            try:
                marker = shm.write(store.shm_dir, key, value)
                return self.add(store.kvs_server(key), "set", key, marker, store.ttl)
            except OSError:
                pass  # no room on the RAM file system: Redis takes it
        if len(value) <= store.part_size and not _is_parts_header(value):
            return self.add(store.kvs_server(key), "set", key, value, store.ttl)
        # A value that merely looks like a header is stored as one part, so a
        # read never mistakes it for one.
        view = memoryview(value).cast("B")
        size = store.part_size
        names = [f"{key}:p{i}" for i in range(max(1, -(-len(view) // size)))]
        for i, (server, name) in enumerate(zip(store.kvs_servers(names), names, strict=True)):
            self.add(server, "set", name, view[i * size : (i + 1) * size], store.ttl)
        registry = key[: key.index(":", 3)] + ":parts"  # Keys(job).parts
        self.mds("sadd", registry, *names)
        self.mds("expire", registry, store.ttl)
        header = _PARTS_HEADER.pack(_PARTS_MAGIC, len(names), len(view))
        return self.add(store.kvs_server(key), "set", key, header, store.ttl)

    def kvs_get_many(self, keys: Sequence[str]) -> list[tuple[int, int]]:
        """GET each key; after ``execute`` a split value is whole again."""
        servers = self.store.kvs_servers(keys)
        handles = [self.add(s, "get", k) for s, k in zip(servers, keys, strict=True)]
        self.kvs_reads.extend(zip(handles, keys, strict=True))
        return handles

    def __bool__(self) -> bool:
        return bool(self.pipes)

    def execute(self) -> Batch:
        mds = self.store.mds_index
        order = sorted(self.pipes, key=lambda s: s == mds)  # KVS first, MDS last
        for server in order:
            commands = list(self.pipes[server].command_stack)  # execute() empties the stack
            replies = run(self.pipes[server], self.store.name_of(server))
            for i, reply in enumerate(replies):
                if isinstance(reply, NoScriptError):  # server restarted or flushed its scripts
                    replies[i] = self._rerun_script(server, commands[i])
                elif isinstance(reply, Exception):
                    raise StorageError(f"Redis at {self.store.name_of(server)}: {reply}")
            self.replies[server] = replies
        if self.kvs_reads:
            self._join_parts()
            self._map_shared()
        return self

    def _map_shared(self) -> None:
        """Replace the markers of values kept in shared memory with their mappings."""
        for (server, i), _ in self.kvs_reads:
            reply = self.replies[server][i]
            if shm.is_marker(reply):
                self.replies[server][i] = shm.read(reply)

    def _join_parts(self) -> None:
        """Replace the headers of split values read by this batch with the values."""
        split = []
        for (server, i), key in self.kvs_reads:
            reply = self.replies[server][i]
            if reply is not None and _is_parts_header(reply):
                _, n, total = _PARTS_HEADER.unpack(reply)
                split.append(((server, i), key, [f"{key}:p{j}" for j in range(n)], total))
        if not split:
            return
        parts = Batch(self.store)
        where = [self.store.kvs_servers(names) for _, _, names, _ in split]
        handles = [
            [parts.add(s, "get", name) for s, name in zip(servers, names, strict=True)]
            for servers, (_, _, names, _) in zip(where, split, strict=True)
        ]
        parts.execute()
        for ((server, i), key, names, total), servers, hs in zip(split, where, handles, strict=True):
            chunks = [parts[h] for h in hs]
            for s, name, chunk in zip(servers, names, chunks, strict=True):
                if chunk is None:
                    raise StorageError(f"part {name!r} of {key!r} is missing from Redis at {self.store.name_of(s)}")
            value = b"".join(chunks)
            if len(value) != total:
                raise StorageError(f"the parts of {key!r} add up to {len(value)} bytes, not {total}")
            self.replies[server][i] = value

    def _rerun_script(self, server: int, command: Any) -> Any:
        r = self.store.servers[server]
        for script in SCRIPTS:
            r.script_load(script)
        args = command.args if hasattr(command, "args") else command[0]
        return r.execute_command(*args)

    def __getitem__(self, handle: tuple[int, int]) -> Any:
        server, i = handle
        return self.replies[server][i]


def _is_parts_header(value: Any) -> bool:
    return len(value) == _PARTS_HEADER.size and bytes(value[: len(_PARTS_MAGIC)]) == _PARTS_MAGIC


def all_job_keys(
    store: Store, keys: Keys, ntasks: int, nschedules: int, fanins: Iterable[int], invocations: Iterable[str] = ()
) -> dict[int, list[str]]:
    """Every key a job may have written, grouped by server.

    The parts of split values are not listed: their names are in the
    ``keys.parts`` registry (listed here), which ``Store.delete_job`` reads.
    """
    mds = [keys.events, keys.cancel, keys.parts, keys.options, keys.attempts]
    mds += [keys.schedule(s) for s in range(nschedules)]
    for t in fanins:
        mds += [keys.fanin(t), keys.owner(t)]
    for inv in invocations:
        mds += [keys.lease(inv), keys.invocation(inv)]
    out: dict[int, list[str]] = {store.mds_index: mds}
    data = [keys.data(t) for t in range(ntasks)]
    for server, key in zip(store.kvs_servers(data), data, strict=True):
        out.setdefault(server, []).append(key)
    return out

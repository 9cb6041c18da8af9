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
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlparse

import redis
from redis.exceptions import NoScriptError

from wukong.native import HashRing

DEFAULT_TTL = 24 * 3600  # seconds; keys normally die with their job, long before


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
            return cls(
                u.hostname or "127.0.0.1",
                u.port or 6379,
                password=unquote(u.password) if u.password else password,
                username=unquote(u.username) if u.username else None,
                tls=u.scheme == "rediss",
                db=int(u.path.lstrip("/") or 0),
            )
        if isinstance(spec, str):
            host, _, port = spec.rpartition(":")
            return cls(host or spec, int(port) if host else 6379, password=password)
        raise TypeError(f"cannot read a Redis endpoint from {spec!r}")

    @property
    def name(self) -> str:
        return f"{self.host}:{self.port}"

    def connect(self, connect_timeout: float = 5.0, socket_timeout: float | None = None) -> redis.Redis:
        return redis.Redis(
            host=self.host,
            port=self.port,
            db=self.db,
            username=self.username,
            password=self.password,
            ssl=self.tls,
            socket_connect_timeout=connect_timeout,
            socket_timeout=socket_timeout,
            socket_keepalive=True,
        )

    def to_config(self) -> dict:
        return {k: getattr(self, k) for k in ("host", "port", "password", "username", "tls", "db")}


def _load_script(name: str) -> bytes:
    return importlib.resources.files("wukong").joinpath("lua", name).read_bytes()


FANIN_LUA = _load_script("fanin.lua")


class Keys:
    """The names of one job's keys."""

    def __init__(self, job: str):
        self.job = job
        p = f"wk:{job}:"
        self.prefix = p
        self.events = p + "ev"
        self.cancel = p + "cancel"

    def schedule(self, sid: int) -> str:
        return f"{self.prefix}s:{sid}"

    def fanin(self, tid: int) -> str:
        return f"{self.prefix}f:{tid}"

    def data(self, tid: int) -> str:
        return f"{self.prefix}d:{tid}"


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
    ):
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
        self.ring = HashRing([ep.name for ep in kvs])
        self.ttl = ttl
        self.fanin_sha = redis.client.Script(None, FANIN_LUA).sha  # type: ignore[arg-type]

    @classmethod
    def from_config(cls, config: dict) -> Store:
        return cls(
            Endpoint(**config["mds"]),
            [Endpoint(**e) for e in config["kvs"]],
            connect_timeout=config.get("connect_timeout", 5.0),
            socket_timeout=config.get("socket_timeout"),
            ttl=config.get("ttl", DEFAULT_TTL),
        )

    def to_config(self) -> dict:
        return {
            "mds": self.endpoints[0].to_config(),
            "kvs": [self.endpoints[i].to_config() for i in self.kvs_index],
            "ttl": self.ttl,
        }

    def check(self) -> None:
        """Ping every server and load the scripts; raise ``StorageError`` naming a bad one."""
        for ep, r in zip(self.endpoints, self.servers):
            try:
                r.ping()
            except redis.AuthenticationError as e:
                raise StorageError(f"Redis at {ep.name} refused our credentials: {e}") from None
            except redis.ResponseError as e:
                raise StorageError(f"Redis at {ep.name} answered with an error: {e}") from None
            except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
                raise StorageError(f"cannot reach Redis at {ep.name}: {e}") from None
        self.mds.script_load(FANIN_LUA)

    def name_of(self, server: int) -> str:
        return self.endpoints[server].name

    def kvs_server(self, key: str) -> int:
        return self.kvs_index[self.ring.node_for(key.encode())]

    def kvs_servers(self, keys: Sequence[str]) -> list[int]:
        kvs_index = self.kvs_index
        return [kvs_index[i] for i in self.ring.nodes_for([k.encode() for k in keys])]

    def batch(self) -> Batch:
        return Batch(self)

    def delete(self, keys_by_server: dict[int, list[str]], chunk: int = 10_000) -> None:
        """UNLINK many keys, one pipeline per server."""
        for server, keys in keys_by_server.items():
            pipe = self.servers[server].pipeline(transaction=False)
            for i in range(0, len(keys), chunk):
                pipe.unlink(*keys[i : i + chunk])
            run(pipe, self.name_of(server))

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

    def fanin(self, keys: Keys, tid: int, parent: int, ndeps: int, sid: int, want_schedule: bool) -> tuple[int, int]:
        return self.mds(
            "evalsha",
            self.store.fanin_sha,
            2,
            keys.fanin(tid),
            keys.schedule(sid),
            parent,
            ndeps,
            self.store.ttl,
            int(want_schedule),
        )

    def kvs_set(self, key: str, value: bytes) -> tuple[int, int]:
        return self.add(self.store.kvs_server(key), "set", key, value, self.store.ttl)

    def kvs_get_many(self, keys: Sequence[str]) -> list[tuple[int, int]]:
        servers = self.store.kvs_servers(keys)
        return [self.add(s, "get", k) for s, k in zip(servers, keys)]

    def __bool__(self) -> bool:
        return bool(self.pipes)

    def execute(self) -> Batch:
        mds = self.store.mds_index
        order = sorted(self.pipes, key=lambda s: s == mds)  # KVS first, MDS last
        for server in order:
            replies = run(self.pipes[server], self.store.name_of(server))
            for i, reply in enumerate(replies):
                if isinstance(reply, NoScriptError):  # server restarted or flushed its scripts
                    replies[i] = self._rerun_script(server, self.pipes[server].command_stack[i])
                elif isinstance(reply, Exception):
                    raise StorageError(f"Redis at {self.store.name_of(server)}: {reply}")
            self.replies[server] = replies
        return self

    def _rerun_script(self, server: int, command: Any) -> Any:
        r = self.store.servers[server]
        r.script_load(FANIN_LUA)
        args = command.args if hasattr(command, "args") else command[0]
        return r.execute_command(*args)

    def __getitem__(self, handle: tuple[int, int]) -> Any:
        server, i = handle
        return self.replies[server][i]


def all_job_keys(store: Store, keys: Keys, ntasks: int, nschedules: int, fanins: Iterable[int]) -> dict[int, list[str]]:
    """Every key a job may have written, grouped by server."""
    mds = [keys.events, keys.cancel]
    mds += [keys.schedule(s) for s in range(nschedules)]
    mds += [keys.fanin(t) for t in fanins]
    out: dict[int, list[str]] = {store.mds_index: mds}
    data = [keys.data(t) for t in range(ntasks)]
    for server, key in zip(store.kvs_servers(data), data):
        out.setdefault(server, []).append(key)
    return out

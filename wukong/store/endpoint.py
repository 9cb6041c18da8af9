"""One Redis server's address and credentials, and the error that names it.

``Endpoint.parse`` reads ``("host", port)``, ``"host:port"`` and URLs
(``redis://user:password@host:6379/0``; ``rediss://`` for TLS).  The password
is never part of ``repr``, ``name`` or an error message.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

import redis
from redis.backoff import NoBackoff
from redis.client import EMPTY_RESPONSE, NEVER_DECODE
from redis.retry import Retry

_CREDENTIALS = re.compile(r"(\w+://[^:/@\s]*:)[^\s/?#]*@")  # scheme://user:PASSWORD@
CLUSTER_RETRIES = 8  # about 5 s of backoff: long enough for a replica's promotion


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
    # the same server's Unix socket, for clients on its machine (an embedded server's, which
    # the local backend's workers share): a round trip on it costs less than on loopback TCP
    unix_socket: str | None = None
    # redis-py asks it for (username, password) on each new connection
    # (``wukong.store.credentials.IAMCredentialProvider``); never part of a config
    credential_provider: Any = field(default=None, repr=False, compare=False)

    @classmethod
    def parse(cls, spec: Any, password: str | None = None) -> Endpoint:
        if isinstance(spec, Endpoint):
            return spec
        if isinstance(spec, (tuple, list)):
            return cls(str(spec[0]), int(spec[1]), password=password)
        if isinstance(spec, str) and "://" in spec:
            try:
                return cls._parse_url(spec, password)
            except ValueError as exc:  # urllib's messages may quote the URL, password and all
                raise ValueError(f"cannot read a Redis URL from {redact(spec)!r}: {redact(str(exc))}") from None
        if isinstance(spec, str):
            host, _, port = spec.rpartition(":")
            return cls(host or spec, int(port) if host else 6379, password=password)
        raise TypeError(f"cannot read a Redis endpoint from {spec!r}")

    @classmethod
    def _parse_url(cls, spec: str, password: str | None) -> Endpoint:
        u = urlparse(spec)
        if u.scheme not in ("redis", "rediss"):
            raise ValueError("it must start with redis:// or rediss://")
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

    @property
    def name(self) -> str:
        return f"{self.host}:{self.port}"

    def with_credentials(self, credentials: Any) -> Endpoint:
        """This endpoint logging in with ``credentials`` (a ``{"username", "password"}``
        dict or a credential provider) unless it has a password of its own."""
        if not credentials or self.password:
            return self
        if isinstance(credentials, dict):
            username = credentials.get("username") or self.username
            return replace(self, username=username, password=credentials.get("password"))
        if self.username:  # a secret without a user logs in as the endpoint's
            credentials = _AsUser(credentials, self.username)
        return replace(self, credential_provider=credentials)

    def _options(self, connect_timeout: float, socket_timeout: float | None, tcp: bool = False) -> dict[str, Any]:
        """What every redis-py client of this server is made with (a cluster's seed included,
        on TCP: ``tcp``)."""
        login: dict[str, Any] = (  # a cluster refuses both, even None
            {"credential_provider": self.credential_provider}
            if self.credential_provider is not None
            else {"username": self.username, "password": self.password}
        )
        if self.unix_socket and not tcp:
            return dict(
                unix_socket_path=self.unix_socket,
                **login,
                socket_connect_timeout=connect_timeout,
                socket_timeout=socket_timeout,
            )
        return dict(
            host=self.host,
            port=self.port,
            **login,
            ssl=self.tls,
            ssl_ca_certs=self.tls_ca_certs,
            ssl_cert_reqs="required" if self.tls_verify else "none",
            socket_connect_timeout=connect_timeout,
            socket_timeout=socket_timeout,
            socket_keepalive=True,
        )

    def connect(self, connect_timeout: float = 5.0, socket_timeout: float | None = None) -> redis.Redis:
        """A client with its own connection pool; it never retries a command by itself."""
        return redis.Redis(
            db=self.db,
            retry=Retry(NoBackoff(), 0),
            redis_connect_func=log_in,  # type: ignore[arg-type]  # called with the connection
            **self._options(connect_timeout, socket_timeout),
        )

    def connect_cluster(self, connect_timeout: float = 5.0, socket_timeout: float | None = None) -> Any:
        """A Redis Cluster client seeded by this node (``redis.cluster.RedisCluster``).

        MOVED and ASK redirections (a resharding) are followed by redis-py.  A
        lost node is retried a few times with backoff while the cluster
        promotes its replica: a command re-sent after a lost reply may run
        twice, which wukong's writes allow (fan-in arrivals are a set, values
        and leases are plain SETs, a repeated event or invocation is harmless).
        """
        from redis.backoff import ExponentialBackoff

        return _cluster_class()(
            retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), CLUSTER_RETRIES),
            require_full_coverage=True,
            **self._options(connect_timeout, socket_timeout, tcp=True),
        )

    def to_config(self, *, secrets: bool = True) -> dict:
        """Its fields (JSON-able); without the password when ``secrets`` is false, and
        with its credential provider's present ones when true (a local worker gets the
        password itself: a provider does not travel)."""
        config = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "credential_provider"}
        if not secrets:
            config["password"] = None
        elif self.credential_provider is not None:
            *user, config["password"] = self.credential_provider.get_credentials()
            config["username"] = user[0] if user else self.username
        return config


class _AsUser:
    """A credential provider whose credentials name no user, logging in as ``username``."""

    def __init__(self, provider: Any, username: str):
        self.provider, self.username = provider, username

    def get_credentials(self) -> tuple[str, ...]:
        got = self.provider.get_credentials()
        return got if len(got) == 2 else (self.username, *got)

    def renew(self) -> bool:
        renew = getattr(self.provider, "renew", None)
        return bool(renew and renew())


def log_in(conn: Any, on_connect: Callable[[], None] | None = None) -> None:
    """A new connection's login (redis-py's ``on_connect``).  Refused, and its credential
    provider read them again (``credentials.SecretCredentials.renew``), it connects once
    more (redis-py closed the refused socket) and logs in with those."""
    on_connect = on_connect or conn.on_connect
    try:
        on_connect()
    except redis.AuthenticationError:
        renew = getattr(conn.credential_provider, "renew", None)
        if renew is None or getattr(conn, "wukong_renewed", False) or not renew():
            raise
        conn.wukong_renewed = True  # a second refusal is raised
        try:
            conn.disconnect()
            conn.connect()  # this login again, with what was read
        finally:
            conn.wukong_renewed = False


def redact(text: str) -> str:
    """``text`` with the password of every URL in it replaced by ``***``."""
    return _CREDENTIALS.sub(r"\1***@", text)


class Pipeline(redis.client.Pipeline):
    """A non-transactional pipeline to one standalone server, sent on a connection
    the calling thread keeps (``conn()``: ``Store.connection``).

    ``execute`` packs the commands, writes them at once and reads each reply
    through the client's response callback, as redis-py's pipeline does, without
    what that adds to every round trip: a pool checkout (a lock, metrics), a retry
    wrapper and more metrics (``Store.connection`` still polls the socket first, as a
    checkout does).  An error reply stays in its place with
    ``raise_on_error=False``; a connection error disconnects (the next round trip
    connects again) and is raised.  On this machine a round trip of six commands
    costs ~95 µs of CPU against ~150 µs through redis-py's pipeline.
    """

    def __init__(self, client: redis.Redis, conn: Callable[[], Any]):
        super().__init__(client.connection_pool, client.response_callbacks, False, None)
        self.conn = conn

    def execute(self, raise_on_error: bool = True, atomic: bool = False) -> list:
        """Send the queued commands, read their replies.  ``atomic``: inside MULTI/EXEC,
        so they run as one unit: a client blocked on a stream they add to wakes once,
        after all of them (an executor's last events and its exit: one read, not two)."""
        stack, self.command_stack = self.command_stack, []
        if not stack:
            return []
        conn = self.conn()
        try:
            self._send(conn, stack, atomic)
            replies = self._read(conn, stack, atomic)
        except BaseException:
            conn.disconnect()  # replies may be left unread on it
            raise
        if raise_on_error:
            self.raise_first_error(stack, replies)
        return replies

    def send(self, atomic: bool = False) -> Callable[[], list]:
        """``execute`` in two halves: send the queued commands now; the call returned reads
        their replies (each call returns them, or raises what reading them raised).

        Until they are read the connection owes them (``owed``): whoever uses it next
        for a round trip (``Store.connection``) reads them first, keeping them for
        their caller, so replies never go to the wrong round trip."""
        stack, self.command_stack = self.command_stack, []
        if not stack:
            return list
        conn = self.conn()
        try:
            self._send(conn, stack, atomic)
        except BaseException:
            conn.disconnect()  # part of it may have gone
            raise
        box: list = []
        waiting = owed(conn)

        def read() -> list:
            if not box:
                waiting.remove(read)
                try:
                    box.append(self._read(conn, stack, atomic))
                except BaseException as e:
                    conn.disconnect()  # replies may be left unread on it
                    box.append(e)
            if isinstance(box[0], BaseException):
                raise box[0]
            return box[0]

        waiting.append(read)
        return read

    @staticmethod
    def _send(conn: Any, stack: list, atomic: bool) -> None:
        commands = [args for args, _ in stack]
        conn.send_packed_command(conn.pack_commands([("MULTI",), *commands, ("EXEC",)] if atomic else commands))

    def _read(self, conn: Any, stack: list, atomic: bool) -> list:
        callbacks = self.response_callbacks
        replies: list = []
        raw = self._read_atomic(conn, len(stack)) if atomic else None
        for i, (args, options) in enumerate(stack):
            if raw is None:
                try:
                    reply = conn.read_response(disable_decoding=NEVER_DECODE in options)
                except redis.ResponseError as e:
                    reply = e
            else:
                reply = raw[i]
            if isinstance(reply, redis.ResponseError):
                replies.append(options.get(EMPTY_RESPONSE, reply))
                continue
            callback = callbacks.get(args[0])
            if callback is not None:
                reply = callback(reply, **{k: v for k, v in options.items() if k not in _NOT_FOR_CALLBACKS})
            replies.append(reply)
        return replies

    @staticmethod
    def _read_atomic(conn: Any, n: int) -> list:
        """The replies of ``n`` commands sent inside MULTI/EXEC: EXEC's (an error in
        place of each reply when a command was refused as queued: EXECABORT)."""
        conn.read_response()  # MULTI: OK
        queued: list = []
        for _ in range(n):
            try:
                queued.append(conn.read_response())  # QUEUED
            except redis.ResponseError as e:
                queued.append(e)
        try:
            replies = conn.read_response()
        except redis.ResponseError as e:  # EXECABORT: nothing ran
            return [q if isinstance(q, redis.ResponseError) else e for q in queued]
        return list(replies)


_NOT_FOR_CALLBACKS = (NEVER_DECODE, EMPTY_RESPONSE, "keys")  # options redis-py's parse_response drops


def owed(conn: Any) -> list[Callable[[], list]]:
    """The readers of replies ``conn`` owes, oldest first (``Pipeline.send``)."""
    waiting = getattr(conn, "wukong_owed", None)
    if waiting is None:
        waiting = conn.wukong_owed = []
    return waiting


def settle(conn: Any) -> None:
    """Read every reply ``conn`` owes (each kept for its own reader's caller, errors too)."""
    for read in list(getattr(conn, "wukong_owed", ())):
        try:
            read()
        except Exception:
            pass  # kept for the caller of that reader, who sees it raised


def run(pipe: Any, name: str, atomic: bool = False) -> list:
    """Execute a pipeline (``atomic``: ``Pipeline.execute``'s, where it is one); connection
    failures become ``StorageError`` naming the server."""
    try:
        if atomic and isinstance(pipe, Pipeline):
            return pipe.execute(raise_on_error=False, atomic=True)
        return pipe.execute(raise_on_error=False)
    except LOST as e:
        raise lost(name, e) from None


LOST = (
    redis.ConnectionError,
    redis.TimeoutError,
    OSError,
    redis.exceptions.RedisClusterException,
    redis.exceptions.ClusterDownError,
    redis.exceptions.TryAgainError,
)


def lost(name: str, e: BaseException) -> StorageError:
    """The ``StorageError`` for ``e`` (one of ``LOST``), naming the server ``name``."""
    if isinstance(e, (redis.ConnectionError, redis.TimeoutError, OSError)):
        return StorageError(f"lost the connection to Redis at {name}: {e}")
    return StorageError(f"Redis Cluster at {name}: {type(e).__name__}: {e}")


_CLUSTER_CLASS: Any = None


def _cluster_class() -> Any:
    """``RedisCluster`` with two fixes for a lost node, and a refused login tried once more
    with credentials read again (``log_in``); built on first use: importing
    ``redis.cluster`` is not free.

    redis-py finds the keys of a command with movable keys (``XREAD``) by asking the
    cluster's default node ``COMMAND GETKEYS``: one more round trip per read, and when
    the default node is the master that died, every retry asks it again and the command
    fails although its replica took over.  Here ``XREAD``'s keys are read from its
    arguments, and a lost default node makes the client re-read the cluster's layout
    (which picks a live default node) and asks again.
    """
    global _CLUSTER_CLASS
    if _CLUSTER_CLASS is not None:
        return _CLUSTER_CLASS
    from redis.cluster import RedisCluster, key_slot
    from redis.exceptions import RedisClusterException

    class Cluster(RedisCluster):
        def on_connect(self, connection: Any) -> None:  # a refused login is tried once more
            log_in(connection, lambda: super(Cluster, self).on_connect(connection))

        def determine_slot(self, *args: Any) -> Any:
            if args and str(args[0]).upper() == "XREAD":
                words = [a.decode() if isinstance(a, bytes) else str(a) for a in args]
                upper = [w.upper() for w in words]
                if "STREAMS" in upper:
                    rest = args[upper.index("STREAMS") + 1 :]
                    slots = {key_slot(self.encoder.encode(k)) for k in rest[: len(rest) // 2]}
                    if len(slots) != 1:
                        raise RedisClusterException(f"XREAD of streams in {len(slots)} slots")
                    return slots.pop()
            return super().determine_slot(*args)

        def _get_command_keys(self, *args: Any) -> Any:
            try:
                return super()._get_command_keys(*args)
            except (redis.ConnectionError, redis.TimeoutError):
                self.nodes_manager.initialize()  # picks a live default node
                return super()._get_command_keys(*args)

    _CLUSTER_CLASS = Cluster
    return Cluster

"""The KV-store proxy: starts a wide fan-out's executors with many invocations in flight.

Invoking a Lambda function costs about 50 ms, so an executor that starts
hundreds of dependents one after another is the slow part of a wide fan-out.
When a finished task has at least ``max_task_fanout`` dependents to start
elsewhere, its executor sends them all to the proxy in one request and the
proxy starts them with up to ``max_in_flight`` invocations at once.

Protocol.  One TCP connection carries any number of request/reply frames::

    frame  = !I length of what follows | HMAC-SHA256(secret, body) (32 bytes) | body
    body   = !I header length | header (JSON) | blob | child invocations

A request's header is ``{"job", "claim", "route", "tid", "children": [[size,
inline], ...]}``.  The parent's output ``blob`` travels once: each child
invocation is encoded without it, and the proxy puts ``{tid: blob}`` back into
those flagged ``inline``.  ``route`` says where the invocations go:
``{"backend": "local", "store", "queue"}`` (an RPUSH to a local cluster's
queue) or ``{"backend": "lambda", "config"}`` (asynchronous invocations of the
function, through ``wukong.lambda_backend``'s invoker: same events, spills,
retries and failure reports as an executor invoking directly).  The reply is
``{"ok": true, "n": N}`` once every invocation is durably handed over, or
``{"ok": false, "error": "..."}``.  A frame whose HMAC does not match, or that
cannot be parsed, gets an error reply; the service keeps serving.

Exactly once.  Before calling the proxy the executor has already stored the
parent's output and emitted its count of invocations (``i=len(invs)``), so
either the proxy or the executor -- never both, never neither -- must start
them.  Each request carries a fresh ``claim`` name; whoever adds it first to
the job's claims set owns the fan-out.  The local route claims and pushes in
one Lua call (``proxy_push.lua``), so it is exact.  The lambda route invokes
first and claims last (a proxy dying half-way must not leave a claim behind),
so an executor that gives up on a slow proxy may duplicate invocations, which
wukong tolerates as it tolerates Lambda's own repeated deliveries.  The claims
set is the job's ``parts`` registry, which the client already deletes with the
job; a claim names no key, so deleting it as a part does nothing.

Deployment: ``LocalCluster(use_local_proxy=True)`` runs one as a child
process; ``wukong proxy --port P`` runs one on a VM (``proxy/README.md``); the
shared secret comes from ``WUKONG_PROXY_SECRET``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import os
import secrets
import socket
import struct
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson

from wukong.executor import Invocation, decode_invocation, encode_invocation
from wukong.lambda_backend import LambdaInvoker
from wukong.storage import Endpoint, Keys, Store, _load_script

SECRET_ENV = "WUKONG_PROXY_SECRET"
MAX_IN_FLIGHT = 256
MAX_FRAME = 256 * 1024 * 1024
MAC_SIZE = 32
RETRY_AFTER_S = 5.0  # after a failure, executors invoke directly this long before trying the proxy again
_LEN = struct.Struct("!I")
PUSH_LUA = _load_script("proxy_push.lua").decode()


class ProxyError(Exception):
    """The proxy could not be reached, or refused or failed a request."""


# -- framing -----------------------------------------------------------------------


def pack(secret: bytes, header: dict, *parts: bytes) -> bytes:
    """One authenticated frame: ``header`` (JSON) followed by raw ``parts``."""
    head = orjson.dumps(header)
    body = b"".join([_LEN.pack(len(head)), head, *parts])
    mac = hmac.new(secret, body, hashlib.sha256).digest()
    return _LEN.pack(MAC_SIZE + len(body)) + mac + body


def unpack(secret: bytes, frame: bytes) -> tuple[dict, memoryview]:
    """``frame`` without its length prefix -> (header, rest); ``ProxyError`` when bad."""
    if len(frame) < MAC_SIZE + _LEN.size:
        raise ProxyError("frame too short")
    mac, body = frame[:MAC_SIZE], memoryview(frame)[MAC_SIZE:]
    if not hmac.compare_digest(mac, hmac.new(secret, body, hashlib.sha256).digest()):
        raise ProxyError("authentication failed")
    (n,) = _LEN.unpack_from(body)
    try:
        header = orjson.loads(body[_LEN.size : _LEN.size + n])
    except orjson.JSONDecodeError as exc:
        raise ProxyError(f"bad header: {exc}") from None
    if not isinstance(header, dict):
        raise ProxyError("bad header: not an object")
    return header, body[_LEN.size + n :]


async def _read_frame(reader: asyncio.StreamReader) -> bytes | None:
    """The next frame's bytes after its length prefix; ``None`` at a clean end."""
    try:
        head = await reader.readexactly(_LEN.size)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise ProxyError("truncated frame") from None
        return None
    (n,) = _LEN.unpack(head)
    if n > MAX_FRAME:
        raise ProxyError(f"frame of {n} bytes exceeds the limit of {MAX_FRAME}")
    try:
        return await reader.readexactly(n)
    except asyncio.IncompleteReadError:
        raise ProxyError("truncated frame") from None


# -- the service ---------------------------------------------------------------------


class ProxyServer:
    """The asyncio service; blocking work (Redis, boto3) runs on thread pools.

    Requests run on ``requests`` threads; a lambda route's invocations on its
    invoker's pool of ``max_in_flight`` threads (one invoker per cluster
    config), so at most that many invocations per cluster are in flight.
    """

    def __init__(
        self,
        secret: str | bytes,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        max_in_flight: int = MAX_IN_FLIGHT,
        redis: str | None = None,
    ):
        self.secret = secret.encode() if isinstance(secret, str) else secret
        if not self.secret:
            raise ValueError("the proxy needs a non-empty shared secret")
        self.host, self.port = host, port
        self.max_in_flight = max_in_flight
        self.default_store = _store_config(redis) if redis else None
        self.requests = ThreadPoolExecutor(32, thread_name_prefix="wukong-proxy-request")
        self._stores: dict[str, Store] = {}
        self._lambda: dict[str, Any] = {}
        self._lock = threading.Lock()
        self.served = 0
        self.refused = 0
        self.handover: list[float] = []  # seconds to hand over each of the last 100 requests

    async def start(self) -> asyncio.AbstractServer:
        server = await asyncio.start_server(self._connection, self.host, self.port, limit=1 << 20)
        self.host, self.port = server.sockets[0].getsockname()[:2]
        return server

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                try:
                    frame = await _read_frame(reader)
                    if frame is None:
                        return
                    header, rest = unpack(self.secret, frame)
                except ProxyError as exc:  # cannot trust the stream any further: answer, then hang up
                    self.refused += 1
                    writer.write(pack(self.secret, {"ok": False, "error": str(exc)}))
                    await writer.drain()
                    return
                try:
                    if header.get("op") == "stats":  # health check, and what tests look at
                        reply = {
                            "ok": True,
                            "served": self.served,
                            "refused": self.refused,
                            "handover_s": self.handover,
                        }
                    else:
                        t0 = time.perf_counter()
                        n = await loop.run_in_executor(self.requests, self.handle, header, rest)
                        reply = {"ok": True, "n": n}
                        self.served += 1
                        self.handover = [*self.handover[-99:], time.perf_counter() - t0]
                except Exception as exc:  # one job's failure is that job's: keep serving
                    reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
                writer.write(pack(self.secret, reply))
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    # -- one request (a request thread) ------------------------------------------------
    def handle(self, header: dict, rest: memoryview) -> int:
        job, claim, route = header["job"], header["claim"], header["route"]
        invocations = _children(header, rest)
        backend = route.get("backend")
        if backend == "local":
            return self.push_local(job, claim, route, invocations)
        if backend == "lambda":
            return self.invoke_lambda(job, claim, route["config"], invocations)
        raise ProxyError(f"unknown route backend {backend!r}")

    def push_local(self, job: str, claim: str, route: dict, invocations: list[bytes]) -> int:
        store = self.store(route.get("store") or self.default_store)
        claims = Keys(job).parts
        store.mds.eval(PUSH_LUA, 2, claims, route["queue"], claim, store.ttl, *invocations)
        return len(invocations)

    def invoke_lambda(self, job: str, claim: str, config: dict, invocations: list[bytes]) -> int:
        invoker = self.lambda_invoker(config)
        store = invoker.store
        claims = Keys(job).parts
        if store.mds.sismember(claims, claim):  # the executor gave up on us and invoked them itself
            return len(invocations)
        # the Executor.invoke contract: spills go in the batch, then every event is sent
        # (from the invoker's pool of max_in_flight threads) and failures are reported
        batch = store.batch()
        after = invoker(batch, job, [decode_invocation(b) for b in invocations])
        if batch:
            batch.execute()
        if after is not None:
            after()
        pipe = store.mds.pipeline(transaction=False)
        pipe.sadd(claims, claim)
        pipe.expire(claims, store.ttl)
        pipe.execute()
        return len(invocations)

    def store(self, config: dict | None) -> Store:
        if config is None:
            raise ProxyError("the request names no store and the proxy was started without --redis")
        ident = json.dumps(config, sort_keys=True)
        with self._lock:
            store = self._stores.get(ident)
            if store is None:
                store = self._stores[ident] = Store.from_config(config)
            return store

    def lambda_invoker(self, config: dict) -> Any:
        ident = json.dumps(config, sort_keys=True)
        with self._lock:
            invoker = self._lambda.get(ident)
        if invoker is None:
            invoker = _SharedClientInvoker(self.store(config["store"]), config, self.max_in_flight)
            with self._lock:
                invoker = self._lambda.setdefault(ident, invoker)
        return invoker

    def close(self) -> None:
        for invoker in self._lambda.values():
            invoker.close()
        self.requests.shutdown(wait=False, cancel_futures=True)
        for store in self._stores.values():
            store.close()


def _children(header: dict, rest: memoryview) -> list[bytes]:
    """The encoded child invocations of a request, the parent's output put back inline."""
    nblob = header.get("blob", 0)
    blob = bytes(rest[:nblob])
    tid = int(header["tid"])
    out, at = [], nblob
    for size, inline in header["children"]:
        encoded = bytes(rest[at : at + size])
        at += size
        if inline:
            inv = decode_invocation(encoded)
            encoded = encode_invocation(inv._replace(inline={tid: blob}))
        out.append(encoded)
    if at != len(rest):
        raise ProxyError(f"the request's sizes add up to {at} bytes, not {len(rest)}")
    return out


def _store_config(url: str) -> dict:
    ep = Endpoint.parse(url)
    return {"mds": ep.to_config(), "kvs": [ep.to_config()]}


class _SharedClientInvoker(LambdaInvoker):
    """The lambda backend's invoker with one boto3 client (thread-safe) holding a
    connection per call in flight: a client per thread would cost seconds of CPU
    for hundreds of threads."""

    def __init__(self, store: Store, config: dict, max_in_flight: int):
        super().__init__(store, config, num_invokers=max_in_flight)
        self._client: Any = None
        self._client_lock = threading.Lock()
        self._max_in_flight = max_in_flight

    def client(self) -> Any:
        with self._client_lock:
            if self._client is None:
                import boto3
                from botocore.config import Config

                config = Config(
                    retries={"max_attempts": 0, "mode": "standard"},  # LambdaInvoker's backoff acts
                    connect_timeout=10,
                    read_timeout=30,
                    max_pool_connections=self._max_in_flight,
                    tcp_keepalive=True,
                )
                session = boto3.session.Session()
                self._client = session.client(
                    "lambda", region_name=self.region, endpoint_url=self.endpoint_url, config=config
                )
            return self._client


# -- the executor's side ---------------------------------------------------------------


class ProxyClient:
    """``proxy(job, tid, invocations) -> bool``: what an ``Executor`` calls.

    True when the invocations are handed over (by the proxy, or, after a
    failure, found claimed by it); False when the caller must invoke them
    itself (the claim is then the caller's).  Failures are logged once.
    """

    def __init__(self, address: str, secret: str | bytes, route: dict, store: Store, *, timeout: float = 60.0):
        host, _, port = address.rpartition(":")
        self.address = (host or "127.0.0.1", int(port))
        self.secret = secret.encode() if isinstance(secret, str) else secret
        self.route = route
        self.store = store
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self.warned = False
        self.down_until = 0.0

    def __call__(self, job: str, tid: int, invocations: Sequence[Invocation]) -> bool:
        if time.monotonic() < self.down_until:  # it just failed: do not wait on it again yet
            return False
        claim = f"{Keys(job).prefix}px:{tid}:{secrets.token_hex(8)}"
        try:
            self.request(job, tid, claim, invocations)
            return True
        except (OSError, ProxyError, ValueError) as exc:
            self.disconnect()
            self.warn(exc)
            self.down_until = time.monotonic() + RETRY_AFTER_S
        return not self.claim(job, claim)

    def stats(self) -> dict:
        """The proxy's counts of requests served and refused."""
        return self.roundtrip(pack(self.secret, {"op": "stats"}))

    def roundtrip(self, frame: bytes) -> dict:
        sock = self.connect()
        sock.sendall(frame)
        (n,) = _LEN.unpack(_recv(sock, _LEN.size))
        if n > MAX_FRAME:
            raise ProxyError(f"reply of {n} bytes")
        reply, _ = unpack(self.secret, _recv(sock, n))
        if not reply.get("ok"):
            raise ProxyError(reply.get("error", "error"))
        return reply

    def request(self, job: str, tid: int, claim: str, invocations: Sequence[Invocation]) -> int:
        return self.roundtrip(self.frame(job, tid, claim, invocations))["n"]

    def frame(self, job: str, tid: int, claim: str, invocations: Sequence[Invocation]) -> bytes:
        """The parent's output once, each child encoded without it."""
        blob: bytes | None = None
        children, encoded = [], []
        for inv in invocations:
            inline = bool(inv.inline)
            if inline:
                if len(inv.inline) != 1 or tid not in inv.inline:
                    raise ProxyError("an invocation carries inputs other than its parent's output")
                value = inv.inline[tid]
                if blob is None:
                    blob = value
                elif value is not blob and value != blob:
                    raise ProxyError("invocations carry different parent outputs")
                inv = inv._replace(inline={})
            e = encode_invocation(inv)
            children.append((len(e), inline))
            encoded.append(e)
        blob = blob or b""
        header = {"job": job, "claim": claim, "route": self.route, "tid": tid, "blob": len(blob), "children": children}
        return pack(self.secret, header, blob, *encoded)

    def connect(self) -> socket.socket:
        if self.sock is None:
            sock = socket.create_connection(self.address, timeout=min(self.timeout, 2.0))
            sock.settimeout(self.timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock = sock
        return self.sock

    def disconnect(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            finally:
                self.sock = None

    def claim(self, job: str, claim: str) -> bool:
        """Take the fan-out over; False when the proxy already has it."""
        pipe = self.store.mds.pipeline(transaction=False)
        pipe.sadd(Keys(job).parts, claim)
        pipe.expire(Keys(job).parts, self.store.ttl)
        added, _ = pipe.execute()
        return bool(added)

    def warn(self, exc: BaseException) -> None:
        if not self.warned:
            self.warned = True
            where = f"{self.address[0]}:{self.address[1]}"
            print(f"wukong: proxy at {where} failed ({exc}); invoking directly", file=sys.stderr, flush=True)


def _recv(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise ProxyError("the proxy closed the connection")
        buf += chunk
    return bytes(buf)


def executor_options(options: dict | None, store: Store, route: dict) -> dict:
    """``Executor`` keyword arguments for a cluster's proxy options (``{}``: no proxy)."""
    if not options:
        return {}
    client = ProxyClient(options["address"], options["secret"], route, store)
    return {"proxy": client, "max_task_fanout": options["max_task_fanout"]}


# -- running one ---------------------------------------------------------------------


class LocalProxy:
    """A proxy in a child process on 127.0.0.1 (``LocalCluster(use_local_proxy=True)``)."""

    def __init__(self, port: int = 0, *, max_in_flight: int = MAX_IN_FLIGHT):
        from wukong.processes import spawn, stop

        self.secret = secrets.token_hex(32)
        argv = [sys.executable, "-c", "import sys; from wukong.proxy import main; sys.exit(main())"]
        argv += ["--port", str(port), "--max-in-flight", str(max_in_flight)]
        self.proc = spawn(argv, stdout=subprocess.PIPE, env={**os.environ, SECRET_ENV: self.secret})
        self._finalizer = weakref.finalize(self, stop, [self.proc])
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode().split()
        self.proc.stdout.close()
        if len(line) != 2 or line[0] != "listening":
            self.stop()
            raise ProxyError(f"the proxy did not start (exit code {self.proc.returncode})")
        self.address = line[1]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        self._finalizer()


def cluster_options(
    proxy_address: str | None,
    proxy_port: int | None,
    use_local_proxy: bool,
    max_task_fanout: int,
    proxy_secret: str | None = None,
) -> tuple[LocalProxy | None, dict | None]:
    """What ``LocalCluster`` needs: the proxy it started (if any) and the executors' options."""
    if max_task_fanout < 1:
        raise ValueError(f"max_task_fanout must be at least 1, got {max_task_fanout}")
    if use_local_proxy:
        if proxy_address:
            raise ValueError("give either proxy_address or use_local_proxy=True, not both")
        local = LocalProxy(proxy_port or 0)
        return local, {"address": local.address, "secret": local.secret, "max_task_fanout": max_task_fanout}
    if not proxy_address:
        return None, None
    if ":" not in proxy_address:
        if not proxy_port:
            raise ValueError(f"proxy_address {proxy_address!r} has no port and proxy_port is not given")
        proxy_address = f"{proxy_address}:{proxy_port}"
    secret = proxy_secret or os.environ.get(SECRET_ENV)
    if not secret:
        raise ValueError(f"a proxy_address needs its shared secret: proxy_secret= or ${SECRET_ENV}")
    return None, {"address": proxy_address, "secret": secret, "max_task_fanout": max_task_fanout}


def serve(secret: str, host: str, port: int, max_in_flight: int, redis: str | None) -> None:
    """Run the service until interrupted; print ``listening host:port`` once ready."""
    server = ProxyServer(secret, host=host, port=port, max_in_flight=max_in_flight, redis=redis)
    if server.default_store is not None:
        server.store(server.default_store).check()

    async def run() -> None:
        s = await server.start()
        print(f"listening {server.host}:{server.port}", flush=True)
        async with s:
            await s.serve_forever()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass
    finally:
        server.close()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="wukong proxy",
        description=f"Run the fan-out proxy. The shared secret is read from ${SECRET_ENV}.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8888, help="0 picks a free port")
    p.add_argument("--redis", help="Redis URL for requests that name no store (checked at start-up)")
    p.add_argument("--max-in-flight", type=int, default=MAX_IN_FLIGHT, help="invocations in flight at most")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    secret = os.environ.get(SECRET_ENV)
    if not secret:
        print(f"wukong proxy: set ${SECRET_ENV} to the shared secret", file=sys.stderr)
        return 2
    serve(secret, args.host, args.port, args.max_in_flight, args.redis)
    return 0


if __name__ == "__main__":
    sys.exit(main())

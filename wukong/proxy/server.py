"""The proxy service: starts a wide fan-out's executors with many invocations in flight.

One asyncio loop reads frames (``wukong.proxy.frames``); each request is
handled on a thread pool, pushing to a local cluster's queue (one Lua call
that claims and pushes) or invoking the Lambda function through the lambda
backend's invoker.  ``wukong proxy`` runs it (``main``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from wukong import aws
from wukong.backends.aws_lambda import LambdaInvoker
from wukong.backends.base import launch
from wukong.protocol import Keys, decode_invocation, encode_invocation
from wukong.proxy.frames import PREFIX, SECRET_ENV, ProxyError, pack, read_body, read_prefix
from wukong.proxy.local import MAX_IN_FLIGHT
from wukong.store import Endpoint, Store, credentials, scripts
from wukong.store.endpoint import redact, run

REDIS_ENV = "WUKONG_PROXY_REDIS"  # the default store's URL, password included


async def _read_frame(
    reader: asyncio.StreamReader, secret: bytes, idle_timeout: float, frame_timeout: float
) -> tuple[dict, memoryview] | None:
    """The next frame (header, rest); ``None`` at a clean end or after ``idle_timeout`` without a byte.

    The prefix (length and its MAC) is checked before the body is read, so an
    unauthenticated peer never makes us buffer more than the prefix; a frame
    begun must be complete within ``frame_timeout`` (``TimeoutError``).
    """
    try:
        first = await asyncio.wait_for(reader.readexactly(1), idle_timeout)
    except (asyncio.IncompleteReadError, TimeoutError):
        return None
    try:
        async with asyncio.timeout(frame_timeout):
            n, body_mac = read_prefix(secret, first + await reader.readexactly(PREFIX.size - 1))
            body = await reader.readexactly(n)
    except asyncio.IncompleteReadError:
        raise ProxyError("truncated frame") from None
    return read_body(secret, body_mac, body)


# -- the service ---------------------------------------------------------------------


MAX_CONNECTIONS = 1024
IDLE_TIMEOUT_S = 300.0  # a connection with no frame begun for this long is closed
FRAME_TIMEOUT_S = 60.0  # a frame begun must be received whole within this
STREAM_LIMIT = 256 * 1024  # bytes asyncio buffers ahead of what we read, per connection


class ProxyServer:
    """The asyncio service; blocking work (Redis, boto3) runs on thread pools.

    Requests run on ``requests`` threads; a lambda route's invocations on its
    invoker's pool of ``max_in_flight`` threads (one invoker per cluster
    config), so at most that many invocations per cluster are in flight.

    Listener limits: at most ``max_connections`` at once (one more gets an
    error reply and is closed); a connection idle for ``idle_timeout`` is
    closed, and one whose frame is not whole ``frame_timeout`` after its first
    byte gets an error reply and is closed.  Unauthenticated peers cost at
    most the frame prefix plus ``STREAM_LIMIT`` of read-ahead each.
    """

    def __init__(
        self,
        secret: str | bytes,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        max_in_flight: int = MAX_IN_FLIGHT,
        redis: str | None = None,
        max_connections: int = MAX_CONNECTIONS,
        idle_timeout: float = IDLE_TIMEOUT_S,
        frame_timeout: float = FRAME_TIMEOUT_S,
    ):
        self.max_connections = max_connections
        self.idle_timeout, self.frame_timeout = idle_timeout, frame_timeout
        self.connections = 0
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
        server = await asyncio.start_server(self._connection, self.host, self.port, limit=STREAM_LIMIT)
        self.host, self.port = server.sockets[0].getsockname()[:2]
        return server

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        self.connections += 1
        try:
            if self.connections > self.max_connections:
                self.refused += 1
                await self._reply(writer, {"ok": False, "error": f"too many connections ({self.max_connections})"})
                return
            while True:
                try:
                    frame = await _read_frame(reader, self.secret, self.idle_timeout, self.frame_timeout)
                    if frame is None:
                        return
                    header, rest = frame
                except (ProxyError, TimeoutError) as exc:  # cannot trust the stream any further: answer, hang up
                    self.refused += 1
                    error = (
                        str(exc)
                        if isinstance(exc, ProxyError)
                        else f"frame not received within {self.frame_timeout:g}s"
                    )
                    await self._reply(writer, {"ok": False, "error": error})
                    return
                try:
                    if header.get("op") == "stats":  # health check, and what tests look at
                        reply = {
                            "ok": True,
                            "served": self.served,
                            "refused": self.refused,
                            "connections": self.connections,
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
                await self._reply(writer, reply)
        except (ConnectionError, OSError):
            pass
        finally:
            self.connections -= 1
            writer.close()

    async def _reply(self, writer: asyncio.StreamWriter, reply: dict) -> None:
        writer.write(pack(self.secret, reply))
        async with asyncio.timeout(self.frame_timeout):  # a peer that does not read is not waited on forever
            await writer.drain()

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
        keys = (Keys(job).parts, route["queue"])
        if store.cluster is not None:
            return self._push_local_cluster(store, keys, claim, invocations)
        batch = store.batch()
        batch.script(store.mds_index, scripts.PROXY_PUSH, keys, claim, store.ttl, *invocations)
        batch.execute()
        return len(invocations)

    def _push_local_cluster(self, store: Store, keys: tuple[str, str], claim: str, invocations: list[bytes]) -> int:
        """``proxy_push`` in two steps: on a Redis Cluster the job's claims and the
        cluster's queue are in different slots, which no script may touch at once.

        The claim still decides (only whoever adds it pushes), so a fan-out is
        queued at most once.  Unlike the script, this has a window: a proxy that
        dies between the two steps loses the fan-out (the executor sees the
        claim taken and does not push it itself).
        """
        claims, queue = keys
        pipe = store.mds.pipeline(transaction=False)
        pipe.sadd(claims, claim)
        pipe.expire(claims, store.ttl)
        added, _ = run(pipe, store.name_of(store.mds_index))
        if added:
            pipe = store.mds.pipeline(transaction=False)
            pipe.rpush(queue, *invocations)
            run(pipe, store.name_of(store.mds_index))
        return len(invocations)

    def invoke_lambda(self, job: str, claim: str, config: dict, invocations: list[bytes]) -> int:
        invoker = self.lambda_invoker(config)
        store = invoker.store
        claims = Keys(job).parts
        if store.mds.sismember(claims, claim):  # the executor gave up on us and invoked them itself
            return len(invocations)
        # spills go in the batch, then every event is sent (from the invoker's pool
        # of max_in_flight threads) and failures are reported
        launch(invoker, store.batch(), job, [decode_invocation(b) for b in invocations])
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
                # a route names the store without its password: ours is in our environment
                store = self._stores[ident] = Store.from_config(config, credentials.from_environment())
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
            if self._client is None:  # LambdaInvoker's backoff acts: botocore's retries are off
                self._client = aws.client(
                    "lambda", region=self.region, endpoint_url=self.endpoint_url, pool=self._max_in_flight
                )
            return self._client


def serve(secret: str, host: str, port: int, max_in_flight: int, redis: str | None, **limits: Any) -> None:
    """Run the service until interrupted; print ``listening host:port`` once ready.

    ``limits``: ``max_connections``, ``idle_timeout``, ``frame_timeout`` (``ProxyServer``).
    """
    server = ProxyServer(secret, host=host, port=port, max_in_flight=max_in_flight, redis=redis, **limits)
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
    p.add_argument(
        "--redis",
        help=f"Redis URL, without a password, for requests that name no store (checked at start-up); "
        f"a URL with a password goes in ${REDIS_ENV} or --redis-file, never on the command line",
    )
    p.add_argument("--redis-file", help="a file (mode 0600) holding that Redis URL")
    p.add_argument("--max-in-flight", type=int, default=MAX_IN_FLIGHT, help="invocations in flight at most")
    p.add_argument("--max-connections", type=int, default=MAX_CONNECTIONS, help="connections at once at most")
    p.add_argument(
        "--idle-timeout", type=float, default=IDLE_TIMEOUT_S, help="seconds before an idle connection is closed"
    )
    p.add_argument("--frame-timeout", type=float, default=FRAME_TIMEOUT_S, help="seconds to receive a frame once begun")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    secret = os.environ.get(SECRET_ENV)
    if not secret:
        print(f"wukong proxy: set ${SECRET_ENV} to the shared secret", file=sys.stderr)
        return 2
    try:
        redis_url = redis_url_of(args.redis, args.redis_file)
    except ValueError as exc:
        print(f"wukong proxy: {exc}", file=sys.stderr)
        return 2
    limits = {
        "max_connections": args.max_connections,
        "idle_timeout": args.idle_timeout,
        "frame_timeout": args.frame_timeout,
    }
    serve(secret, args.host, args.port, args.max_in_flight, redis_url, **limits)
    return 0


def redis_url_of(arg: str | None, path: str | None) -> str | None:
    """The default store's URL: ``--redis`` (no password), ``--redis-file`` or ``$WUKONG_PROXY_REDIS``.

    A password in argv is readable by every user of the machine
    (``/proc/<pid>/cmdline``), so ``--redis`` refuses one.
    """
    if arg:
        if Endpoint.parse(arg).password:
            raise ValueError(f"--redis {redact(arg)} carries a password: put the URL in ${REDIS_ENV} or --redis-file")
        return arg
    if path:
        with open(path) as f:
            return f.read().strip() or None
    return os.environ.get(REDIS_ENV) or None


if __name__ == "__main__":
    sys.exit(main())

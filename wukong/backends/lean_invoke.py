"""A lean asynchronous Lambda invoker: many ``Invoke`` requests in flight, little CPU each.

boto3 spends about a millisecond of CPU per ``invoke`` (request building,
validation, event hooks, response parsing) and needs a thread per request in
flight.  Starting a 1→1000 fan-out is then CPU-bound on the invoker.  Here the
one operation wukong uses -- ``POST /2015-03-31/functions/{name}/invocations``
with ``X-Amz-Invocation-Type: Event`` -- is written by hand over HTTP/1.1:

* One asyncio loop on a daemon thread (``LeanInvoker``, one per
  ``LambdaInvoker``) owns up to ``connections`` kept-alive connections
  (TLS for ``https``), each carrying one request at a time; every payload
  waits for a free connection, so ``connections`` requests are in flight.
* Each request is signed with botocore's own SigV4 signer
  (``botocore.auth.SigV4Auth``) and the session's credentials, frozen once per
  batch (refreshable credentials stay fresh); no signing code of our own.
* Retries follow ``LambdaInvoker``'s policy: throttling (429), 5xx and the
  retryable error codes, and lost connections, with exponential backoff and
  full jitter, up to ``attempts`` tries.  Each payload's outcome is ``None``
  (accepted, HTTP 202) or the error text ``LambdaInvoker`` reports.

Endpoint, region and credentials come from ``wukong.aws.lambda_target`` (boto3's
own resolution: ``endpoint_url``, ``AWS_ENDPOINT_URL_LAMBDA``, the region's
default endpoint).  When no credentials are found ``LambdaInvoker`` falls back
to boto3, which reports the problem as it always did.
"""

from __future__ import annotations

import asyncio
import json
import random
import ssl
import threading
import time
import urllib.parse
from collections.abc import Sequence
from typing import Any

RETRY_STATUS = (429, 500, 502, 503, 504)
IDLE_CLOSE_S = 50.0  # drop a connection idle this long (servers close theirs at ~60 s)


class _Conn:
    __slots__ = ("reader", "writer", "used")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer, self.used = reader, writer, time.monotonic()


class LeanInvoker:
    """Send ``Event`` invokes of one function from an asyncio loop on its own thread.

    Parameters
    ----------
    url : str
        The Lambda endpoint (``https://lambda.REGION.amazonaws.com`` or a local one).
    region : str
        Signing region.
    function_name : str
    credentials : Any
        botocore credentials (``get_frozen_credentials()`` is called per batch).
    connections : int
        Kept-alive connections, hence requests in flight.
    retry_codes : set of str
        Error codes (``x-amzn-ErrorType``) worth another try besides ``RETRY_STATUS``.
    """

    def __init__(
        self,
        url: str,
        region: str,
        function_name: str,
        credentials: Any,
        *,
        connections: int = 64,
        attempts: int = 8,
        base_delay: float = 0.05,
        max_delay: float = 2.0,
        retry_codes: set[str] | frozenset[str] = frozenset(),
        timeout: float = 30.0,
    ):
        from botocore.auth import SigV4Auth

        self._sigv4 = SigV4Auth
        parts = urllib.parse.urlsplit(url)
        self.scheme = parts.scheme
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.netloc = parts.netloc
        self.region, self.function_name, self.credentials = region, function_name, credentials
        self.path = (
            f"{parts.path.rstrip('/')}/2015-03-31/functions/{urllib.parse.quote(function_name, safe='')}/invocations"
        )
        self.url = f"{parts.scheme}://{parts.netloc}{self.path}"
        self.connections = max(1, connections)
        self.attempts, self.base_delay, self.max_delay = attempts, base_delay, max_delay
        self.retry_codes = set(retry_codes)
        self.timeout = timeout
        self.latency: float | None = None  # smoothed seconds per accepted request
        self.invoked = 0
        self.throttled = 0
        self._ssl = ssl.create_default_context() if parts.scheme == "https" else None
        self._idle: list[_Conn] = []
        self._slots: asyncio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # -- caller's thread ---------------------------------------------------------
    def send(self, payloads: Sequence[bytes]) -> list[str | None]:
        """Invoke once per payload; per payload ``None`` (accepted) or what went wrong."""
        if not payloads:
            return []
        loop = self._ensure_loop()
        return asyncio.run_coroutine_threadsafe(self._send_all(payloads), loop).result()

    def close(self) -> None:
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._close_all(), loop).result(5)
        except Exception:
            pass
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name="wukong-lean-invoker", daemon=True)
                thread.start()
                self._loop, self._thread = loop, thread
            return self._loop

    # -- loop thread -------------------------------------------------------------
    async def _send_all(self, payloads: Sequence[bytes]) -> list[str | None]:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.connections)
        frozen = self.credentials.get_frozen_credentials()
        signer = self._sigv4(frozen, "lambda", self.region)
        return list(await asyncio.gather(*(self._invoke(signer, p) for p in payloads)))

    async def _invoke(self, signer: Any, payload: bytes) -> str | None:
        what = ""
        for attempt in range(self.attempts):
            assert self._slots is not None
            async with self._slots:
                t0 = time.monotonic()
                try:
                    status, code, message = await asyncio.wait_for(self._request(signer, payload), self.timeout)
                except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as exc:
                    status, code, message = 0, type(exc).__name__, str(exc) or "connection lost"
            if status == 202 or status == 200:
                self.invoked += 1
                dt = time.monotonic() - t0
                self.latency = dt if self.latency is None else 0.9 * self.latency + 0.1 * dt
                return None
            if status == 0:
                what = f"{code}: {message}"
            else:
                what = f"{code or 'error'} (HTTP {status}): {message}"
                if status == 429:
                    self.throttled += 1
                if status not in RETRY_STATUS and code not in self.retry_codes:
                    return what
            if attempt + 1 < self.attempts:
                await asyncio.sleep(random.uniform(0, min(self.max_delay, self.base_delay * 2**attempt)))
        return f"{what} (gave up after {self.attempts} attempts)"

    async def _request(self, signer: Any, payload: bytes) -> tuple[int, str, str]:
        """One signed request on a kept-alive connection: (status, error code, message)."""
        from botocore.awsrequest import AWSRequest

        req = AWSRequest(method="POST", url=self.url, data=payload, headers={"X-Amz-Invocation-Type": "Event"})
        signer.add_auth(req)
        head = [f"POST {self.path} HTTP/1.1", f"Host: {self.netloc}", f"Content-Length: {len(payload)}"]
        head += [f"{k}: {v}" for k, v in req.headers.items() if k.lower() not in ("host", "content-length")]
        data = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + payload
        conn = await self._connection()
        try:
            conn.writer.write(data)
            status, headers, body = await _read_response(conn.reader)
        except BaseException:
            conn.writer.close()
            raise
        if headers.get("connection", "").lower() == "close":
            conn.writer.close()
        else:
            conn.used = time.monotonic()
            self._idle.append(conn)
        if status in (200, 202):
            return status, "", ""
        code = headers.get("x-amzn-errortype", "").split(":")[0]
        try:
            doc = json.loads(body)
            message = doc.get("message") or doc.get("Message") or body.decode(errors="replace")
        except ValueError:
            message = body.decode(errors="replace")
        return status, code, message

    async def _connection(self) -> _Conn:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if now - conn.used < IDLE_CLOSE_S and not conn.reader.at_eof():
                return conn
            conn.writer.close()
        reader, writer = await asyncio.open_connection(
            self.host, self.port, ssl=self._ssl, server_hostname=self.host if self._ssl else None
        )
        return _Conn(reader, writer)

    async def _close_all(self) -> None:
        while self._idle:
            self._idle.pop().writer.close()


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise ValueError(f"bad HTTP status line {lines[0]!r}")
    headers = {}
    for line in lines[1:]:
        k, sep, v = line.partition(":")
        if sep:
            headers[k.strip().lower()] = v.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = b""
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                break
            body += chunk[:-2]
    else:
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(parts[1]), headers, body

"""A local endpoint that speaks the AWS Lambda Invoke API.

wukong's lambda backend talks to Lambda only through boto3's ``invoke``.  This
module serves that one REST operation on 127.0.0.1 so the backend can run end
to end, through the real boto3 client, on a machine without AWS::

    with LambdaLocal({"executor": "wukong.executor:handler"}) as lam:
        client = boto3.client("lambda", endpoint_url=lam.url, ...)

Design
------
One asyncio event loop, on a daemon thread owned by :class:`LambdaLocal`, does
all the bookkeeping; handlers run in ``workers`` warm worker processes.

HTTP.  A minimal HTTP/1.1 server (keep-alive, ``Content-Length`` bodies) is
enough for botocore/urllib3.  It serves
``POST /2015-03-31/functions/{FunctionName}/invocations[?Qualifier=$LATEST]``
where ``FunctionName`` is a name, ``ACCOUNT:function:NAME`` or a full ARN.
Responses copy real Lambda's status codes, ``x-amzn-ErrorType`` headers and
JSON error bodies, so botocore raises the same exceptions it would on AWS:

======================================  ====  =================================
case                                    code  botocore sees
======================================  ====  =================================
``RequestResponse`` (default)           200   ``Payload`` = handler's JSON
handler raised / worker died / timeout  200   ``FunctionError: Unhandled``
``Event``                               202   empty payload
``DryRun``                              204
unknown function or qualifier           404   ``ResourceNotFoundException``
payload too large                       413   ``RequestEntityTooLargeException``
payload is not JSON                     400   ``InvalidRequestContentException``
malformed request line, Content-Length  400   (the connection is closed)
request not whole within read_timeout   408   (the connection is closed)
over the concurrency limit              429   ``TooManyRequestsException``
======================================  ====  =================================

AWS answers an oversized payload with the code ``RequestEntityTooLargeException``,
which botocore's model does not list, so boto3 raises a plain ``ClientError``
for it (not ``client.exceptions.RequestTooLargeException``); we do the same, so
code written against this endpoint also works against AWS.

Workers (``wukong.lambda_local.worker``).  Each worker is
``python -m wukong.lambda_local --worker SPEC`` connected to the loop by a
socketpair.  It imports every registered handler once, says "ready", then
answers one invocation at a time.  Frames:

* loop -> worker: ``!II`` (meta length, payload length), meta JSON, payload
* worker -> loop: ``!BdI`` (kind, handler seconds, body length), body; kind is
  ``READY``, ``OK`` (body is the JSON result) or ``ERROR`` (body is Lambda's
  ``{"errorMessage", "errorType", "stackTrace"}``)

A worker that dies (``os._exit``, a signal, ``sys.exit``) closes its socket;
the invocation it was running gets ``Runtime.ExitError`` and a replacement is
started.  A handler that overruns ``timeout`` is killed and gets
``Sandbox.Timedout``.  Workers set ``PR_SET_PDEATHSIG`` so they die with the
loop thread that spawned them, as a backstop to :meth:`LambdaLocal.stop`.

State (loop thread only):

* ``_idle``: deque of ready workers with nothing to do
* ``_sync_queue`` / ``_event_queue``: admitted invocations waiting for a worker;
  a free worker takes a waiting ``RequestResponse`` call before any event, as
  AWS never makes a synchronous call wait behind the async queue
* ``_admitted``: invocations admitted and not yet finished (waiting or running)
* ``_stats``: counters returned by :meth:`LambdaLocal.stats`

Concurrency rule.  With ``concurrency=C`` at most ``min(workers, C)`` worker
processes exist, so at most C invocations run at once.  An invocation arriving
while ``_admitted >= C`` is answered 429 -- a ``RequestResponse`` call always,
an ``Event`` call when ``throttle_events`` (the default when C is set).  AWS
would instead queue the event and retry it internally; the 429 makes the limit
observable to tests.  With ``throttle_events=False`` events are always accepted
and queued, and count towards ``_admitted`` only once they run.

Latency.  ``latency`` seconds are slept (asynchronously) before each Invoke
response, so many calls in flight each take about ``latency``, not the sum.
The concurrency slot is released before that sleep.

Events that fail are re-run up to ``event_retries`` times (AWS retries twice);
the default 0 keeps tests deterministic.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import base64
import collections
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
import weakref
from typing import Any

from wukong.lambda_local.runtime_api import EnvironmentExit, Runtime, RuntimeEnvironment, environment_variables
from wukong.lambda_local.worker import ERROR, FROM_WORKER, READY, TO_WORKER, error_body
from wukong.lambda_local.worker import main as worker_main
from wukong.process import spawn, stop

__all__ = ["LambdaLocal", "main"]

API_PREFIX = "/2015-03-31/functions/"
API_SUFFIX = "/invocations"
INVOCATION_TYPES = ("RequestResponse", "Event", "DryRun")


_REASONS = {
    200: "OK",
    202: "Accepted",
    204: "No Content",
    400: "Bad Request",
    404: "Not Found",
    408: "Request Timeout",
    411: "Length Required",
    413: "Request Entity Too Large",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
}
_MAX_HEAD = 64 * 1024
_MAX_DISCARD = 256 * 1024 * 1024  # read and drop bigger bodies up to this, then hang up
IDLE_TIMEOUT_S = 120.0  # a keep-alive connection with no request begun for this long is closed
READ_TIMEOUT_S = 60.0  # a request begun must be received whole within this, else 408


class _BadRequest(ValueError):
    """A request line or header we cannot read: answered with 400."""


# --------------------------------------------------------------------------- server


class _Job:
    """One admitted invocation."""

    __slots__ = ("function", "request_id", "payload", "client_context", "future", "attempt")

    def __init__(self, function, request_id, payload, client_context, future):
        self.function = function
        self.request_id = request_id
        self.payload = payload
        self.client_context = client_context
        self.future = future  # None for Event
        self.attempt = 0


_WorkerExit = EnvironmentExit  # the worker process running an invocation went away


class _Worker:
    """Loop-side end of one worker process."""

    def __init__(self, proc: subprocess.Popen, reader, writer):
        self.proc = proc
        self.reader = reader
        self.writer = writer
        self.ready = asyncio.get_running_loop().create_future()
        self.current: asyncio.Future | None = None
        self.alive = True
        self.served = False  # became ready at least once

    async def call(self, job: _Job, meta: dict, timeout: float):
        self.current = fut = asyncio.get_running_loop().create_future()
        head = json.dumps(meta).encode()
        self.writer.write(TO_WORKER.pack(len(head), len(job.payload)) + head + job.payload)
        try:
            async with asyncio.timeout(timeout):
                return await fut
        finally:
            self.current = None

    async def read_frames(self):
        """Resolve the current call with each frame; on EOF fail it."""
        try:
            while True:
                kind, seconds, size = FROM_WORKER.unpack(await self.reader.readexactly(FROM_WORKER.size))
                body = await self.reader.readexactly(size)
                if kind == READY:
                    self.served = True
                    self.ready.set_result(None)
                elif self.current is not None and not self.current.done():
                    self.current.set_result((kind, seconds, body))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.alive = False
            self.writer.close()
            for fut in (self.ready, self.current):
                if fut is not None and not fut.done():
                    fut.set_exception(_WorkerExit())

    def kill(self):
        self.alive = False  # never handed another job, even before its socket reports EOF
        if self.proc.poll() is None:
            self.proc.kill()


def _finish_tasks(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel the tasks a stopped loop still holds and let them end, before it is closed.

    A task left pending (a Runtime API connection waiting for its next invocation,
    a worker's watcher) would otherwise be destroyed later, by the garbage collector,
    with its loop closed: its clean-up then raises "Event loop is closed" wherever the
    collection happens (in the fresh-clone CI, twice, inside ``test_layout``'s
    ``ast.parse``, which CPython 3.11 then failed: "AST constructor recursion depth
    mismatch"; with this clean-up the next CI passed)."""
    pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for task in pending:
        task.cancel()
    if pending:
        loop.run_until_complete(asyncio.wait(pending, timeout=5))


class LambdaLocal:
    """Serve the Lambda Invoke API on 127.0.0.1, running handlers in local processes.

    Parameters
    ----------
    functions : dict
        Function name -> ``"package.module:handler"``.
    workers : int, optional
        Warm worker processes (default: one per core), shared by all functions.
    concurrency : int, optional
        At most this many invocations admitted at once; more get 429.
    latency : float
        Seconds added to every Invoke response, without serializing requests.
    max_event_payload, max_sync_payload : int
        Payload limits in bytes for ``Event`` and ``RequestResponse`` calls.
    env : dict, optional
        Extra environment variables for the worker processes.
    timeout : float
        Handler timeout in seconds (Lambda's maximum, 900, by default).
    memory : int
        ``context.memory_limit_in_mb``.
    throttle_events : bool, optional
        Answer 429 to ``Event`` calls over the limit (default: when ``concurrency`` is set).
    event_retries : int
        Times a failed ``Event`` invocation is run again.
    port : int
        0 picks a free port.
    idle_timeout, read_timeout : float
        Seconds a connection may wait for its next request, and seconds a
        request may take to arrive once begun (then 408 and the connection
        is closed).  A malformed request line or ``Content-Length`` gets 400.
    runtime : Runtime, optional
        Run a deployment package the way AWS does: each execution environment
        is AWS's runtime interface client under the runtime's Python, fed over
        the Lambda Runtime API (``wukong.lambda_local.runtime_api``).  One
        function, whose handler is given as Lambda names it (``handler.handler``).
        Without it (the default, fast for tests) handlers run in our worker
        processes under this Python, from this source tree.

    Examples
    --------
    >>> with LambdaLocal({"echo": "mypkg.handlers:echo"}) as lam:  # doctest: +SKIP
    ...     client = boto3.client("lambda", endpoint_url=lam.url, region_name="us-east-1")
    ...     client.invoke(FunctionName="echo", Payload=b"{}")["Payload"].read()
    """

    def __init__(
        self,
        functions: dict[str, str],
        workers: int | None = None,
        concurrency: int | None = None,
        latency: float = 0.0,
        max_event_payload: int = 1_048_576,
        max_sync_payload: int = 6_291_456,
        env: dict[str, str] | None = None,
        *,
        timeout: float = 900.0,
        memory: int = 3008,
        throttle_events: bool | None = None,
        event_retries: int = 0,
        host: str = "127.0.0.1",
        port: int = 0,
        region: str = "us-east-1",
        account: str = "123456789012",
        idle_timeout: float = IDLE_TIMEOUT_S,
        read_timeout: float = READ_TIMEOUT_S,
        runtime: Runtime | None = None,
    ):
        if runtime is not None and len(functions) != 1:
            raise ValueError(f"a runtime serves one function (its deployment package), got {sorted(functions)}")
        for name, ref in functions.items():
            if runtime is None and ":" not in ref:
                raise ValueError(f"handler for {name!r} must be 'module:function', got {ref!r}")
        if concurrency is not None and concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        self.functions = dict(functions)
        workers = workers or os.cpu_count() or 1
        self.workers = min(workers, concurrency) if concurrency else workers
        self.concurrency = concurrency
        self.latency = latency
        self.max_event_payload = max_event_payload
        self.max_sync_payload = max_sync_payload
        self.env = dict(env or {})
        self.secrets: dict[str, str] = {}  # the Secrets Manager stand-in: ARN or name -> SecretString
        self.timeout = timeout
        self.idle_timeout, self.read_timeout = idle_timeout, read_timeout
        self.memory = memory
        self.throttle_events = concurrency is not None if throttle_events is None else throttle_events
        self.event_retries = event_retries
        self.host, self.port = host, port
        self.region, self.account = region, account
        self.runtime = runtime
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[asyncio.Task] = set()
        self._pool: list[_Worker] = []
        self._idle: collections.deque[_Worker] = collections.deque()
        self._sync_queue: collections.deque[_Job] = collections.deque()
        self._event_queue: collections.deque[_Job] = collections.deque()
        self._admitted = 0
        self._stopping = False
        self._stats: dict[str, Any] = {
            "invocations": 0,
            "throttles": 0,
            "errors": 0,
            "durations": [],
            "secret_reads": 0,
        }

    # -- lifecycle (caller's thread) --------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> tuple[str, int]:
        """Start the server and the warm workers; return ``(host, port)``."""
        if self._thread is not None:
            raise RuntimeError("LambdaLocal already started")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="lambda-local", daemon=True)
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._startup(), self._loop).result(120)
        except BaseException:
            self.stop()
            raise
        atexit.register(_stop_at_exit, weakref.ref(self))
        return self.host, self.port

    def stop(self) -> None:
        """Stop serving and end every worker process."""
        if self._loop is None or self._thread is None:
            return
        if self._loop.is_running():
            try:
                asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
            except Exception:
                pass
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        stop([w.proc for w in self._pool], timeout=2.0)
        if not self._thread.is_alive():  # what is left runs to its end here, as asyncio.run's clean-up does
            _finish_tasks(self._loop)
        self._loop.close()
        self._loop = self._thread = None

    def __enter__(self) -> LambdaLocal:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stats(self) -> dict[str, Any]:
        """Counters: invocations, throttles, errors, durations (handler seconds each)."""
        s = dict(self._stats)
        s["durations"] = list(s["durations"])
        s["in_flight"] = self._admitted
        return s

    def worker_pids(self) -> list[int]:
        """Process ids of the live worker processes."""
        return [w.proc.pid for w in list(self._pool) if w.alive]

    # -- loop thread ----------------------------------------------------------

    async def _startup(self):
        self._server = await asyncio.start_server(
            self._serve_connection, self.host, self.port, limit=_MAX_HEAD, backlog=1024
        )
        self.port = self._server.sockets[0].getsockname()[1]
        await asyncio.gather(*(self._add_worker() for _ in range(self.workers)))

    async def _shutdown(self):
        self._stopping = True
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        for w in self._pool:
            if w.proc.poll() is None:
                w.proc.terminate()
        # Let watchers and running calls see their workers exit, then drop what is left.
        others = asyncio.all_tasks() - {asyncio.current_task()}
        if others:
            _, pending = await asyncio.wait(others, timeout=3)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1)

    async def _add_worker(self):
        if self.runtime is not None:
            [(name, handler)] = self.functions.items()
            env = environment_variables(name, self.memory, self.region, self._function_env())
            worker: Any = await RuntimeEnvironment.start(
                self.runtime, name, handler, env, self.memory, self.region, self.account
            )
        else:
            worker = await self._start_worker()
        self._pool.append(worker)
        asyncio.get_running_loop().create_task(self._watch(worker))
        try:
            await worker.ready
        except _WorkerExit:
            status = worker.proc.wait()
            raise RuntimeError(f"lambda-local worker exited with status {status} during start-up") from None
        self._idle.append(worker)
        self._pump()

    async def _start_worker(self) -> _Worker:
        parent, child = socket.socketpair()
        spec = {
            "functions": self.functions,
            "path": sys.path,
            "fd": child.fileno(),
            "parent": os.getpid(),
            "memory": self.memory,
            "region": self.region,
            "account": self.account,
        }
        proc = spawn(
            [sys.executable, "-m", "wukong.lambda_local", "--worker", json.dumps(spec)],
            pass_fds=[child.fileno()],
            env=self._worker_env(),
            stdin=subprocess.DEVNULL,
        )
        child.close()
        reader, writer = await asyncio.open_connection(sock=parent, limit=2**20)
        return _Worker(proc, reader, writer)

    def _function_env(self) -> dict[str, str]:
        """A runtime-mode function's configured variables: how its boto3 reaches this
        endpoint (as on AWS it reaches AWS), and ``env``; none of the caller's."""
        env = {"AWS_ENDPOINT_URL_LAMBDA": self.url, "AWS_ENDPOINT_URL_SECRETS_MANAGER": self.url}
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):  # the execution role's
            if key in os.environ:
                env[key] = os.environ[key]
        env.setdefault("AWS_ACCESS_KEY_ID", "lambda-local")
        env.setdefault("AWS_SECRET_ACCESS_KEY", "lambda-local")
        return {**env, **self.env}

    def _worker_env(self) -> dict[str, str]:
        package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
        # Handlers that call boto3's Lambda client reach this endpoint, as on AWS they reach AWS.
        env["AWS_ENDPOINT_URL_LAMBDA"] = self.url
        env["AWS_ENDPOINT_URL_SECRETS_MANAGER"] = self.url  # put_secret's secrets
        env.setdefault("AWS_REGION", self.region)
        env.setdefault("AWS_DEFAULT_REGION", self.region)
        env.setdefault("AWS_ACCESS_KEY_ID", "lambda-local")
        env.setdefault("AWS_SECRET_ACCESS_KEY", "lambda-local")
        env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] = str(self.memory)
        env.update(self.env)
        return env

    async def _watch(self, worker: _Worker):
        """Read the worker's frames until it dies, then replace it."""
        await worker.read_frames()
        if worker in self._idle:
            self._idle.remove(worker)
        worker.kill()
        await asyncio.get_running_loop().run_in_executor(None, worker.proc.wait)
        self._pool.remove(worker)
        if self._stopping or not worker.served:
            return  # a worker that never got ready would fail again: start-up reports it
        try:
            await self._add_worker()
        except RuntimeError as e:
            if self._stopping:  # stopped while the replacement was starting
                return
            print(f"lambda-local: cannot replace a dead worker: {e}", file=sys.stderr)

    def _pump(self):
        """Give waiting invocations to idle workers; sync calls first."""
        while self._idle and (self._sync_queue or self._event_queue):
            job = self._sync_queue.popleft() if self._sync_queue else self._event_queue.popleft()
            if job.future is None and not self.throttle_events:
                self._admitted += 1
            asyncio.get_running_loop().create_task(self._run(self._idle.popleft(), job))

    async def _run(self, worker: _Worker, job: _Job):
        meta = {
            "fn": job.function,
            "rid": job.request_id,
            "deadline": time.time() + self.timeout,
            "cc": job.client_context,
        }
        try:
            kind, seconds, body = await worker.call(job, meta, self.timeout)
        except TimeoutError:
            worker.kill()
            kind, seconds = ERROR, self.timeout
            body = error_body(
                f"RequestId: {job.request_id} Error: Task timed out after {self.timeout:.2f} seconds",
                "Sandbox.Timedout",
            )
        except _WorkerExit:
            status = await asyncio.get_running_loop().run_in_executor(None, worker.proc.wait)
            kind, seconds = ERROR, 0.0
            why = f"signal: {signal.Signals(-status).name}" if status < 0 else f"exit status {status}"
            body = error_body(
                f"RequestId: {job.request_id} Error: Runtime exited with error: {why}",
                "Runtime.ExitError",
            )
        self._admitted -= 1
        self._stats["durations"].append(seconds)
        if kind == ERROR:
            self._stats["errors"] += 1
        if worker.alive:
            self._idle.append(worker)
        if job.future is not None:
            job.future.set_result((kind, seconds, body))
        elif kind == ERROR and job.attempt < self.event_retries and not self._stopping:
            job.attempt += 1
            self._admitted += int(self.throttle_events)  # else _pump counts it
            self._event_queue.append(job)
        self._pump()

    # -- HTTP -------------------------------------------------------------------

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            while await self._serve_request(reader, writer):
                pass
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._connections.discard(task)
            writer.close()

    async def _serve_request(self, reader, writer) -> bool:
        """Answer one request; return whether the connection stays open."""
        try:
            async with asyncio.timeout(self.idle_timeout):  # (``wait_for`` would make a task per request)
                first = await reader.readexactly(1)
        except (asyncio.IncompleteReadError, TimeoutError):
            return False  # closed, or idle too long: hang up without a word
        try:
            async with asyncio.timeout(self.read_timeout):
                request = await self._read_request(first, reader, writer)
        except TimeoutError:
            writer.write(_http(408, [], b"", keep=False))
            return False
        except _BadRequest as exc:
            writer.write(_http(400, [], json.dumps({"message": str(exc)}).encode(), keep=False))
            return False
        if isinstance(request, int):
            writer.write(_http(request, [], b"", keep=False))
            return False
        method, target, version, headers, body, length = request
        keep = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
        status, extra, payload = await self._route(method, target, headers, body, length)
        writer.write(_http(status, extra, payload, keep))
        if writer.transport.get_write_buffer_size() > 2**16:
            await writer.drain()
        return keep

    async def _read_request(self, first: bytes, reader, writer) -> tuple | int:
        """(method, target, version, headers, body, length), or the status that refuses it."""
        try:
            head = first + await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            return 431
        method, target, version, headers = _parse_head(head)
        if "chunked" in headers.get("transfer-encoding", ""):
            return 411
        length = _content_length(headers)
        if headers.get("expect", "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = await _read_body(reader, length, max(self.max_sync_payload, self.max_event_payload))
        if body is None and length > _MAX_DISCARD:
            return 413
        return method, target, version, headers, body, length

    async def _route(self, method, target, headers, body, length):
        path, _, query = target.partition("?")
        if method == "POST" and headers.get("x-amz-target", "").startswith("secretsmanager."):
            return self._secrets_manager(headers["x-amz-target"], body)
        if method != "POST" or not (path.startswith(API_PREFIX) and path.endswith(API_SUFFIX)):
            return _aws_error(404, "UnknownOperationException", "Unknown operation", [])
        name = urllib.parse.unquote(path[len(API_PREFIX) : -len(API_SUFFIX)])
        qualifier = urllib.parse.parse_qs(query).get("Qualifier", [None])[0]
        response = await self._invoke(name, qualifier, headers, body, length)
        if self.latency:
            await asyncio.sleep(self.latency)
        return response

    # -- a stand-in for Secrets Manager (GetSecretValue only) ----------------------------
    def put_secret(self, name: str, value: str) -> str:
        """Store a secret for handlers (and anyone) to read with boto3's ``get_secret_value``;
        returns its ARN.  Workers reach this endpoint as ``AWS_ENDPOINT_URL_SECRETS_MANAGER``."""
        arn = f"arn:aws:secretsmanager:{self.region}:{self.account}:secret:{name}"
        self.secrets[arn] = self.secrets[name] = value
        return arn

    def _secrets_manager(self, target: str, body: bytes):
        common = [("x-amzn-RequestId", str(uuid.uuid4())), ("Content-Type", "application/x-amz-json-1.1")]
        if target != "secretsmanager.GetSecretValue":
            return _aws_error(400, "UnknownOperationException", f"lambda-local serves no {target}", common)
        secret_id = json.loads(body or b"{}").get("SecretId", "")
        self._stats["secret_reads"] += 1
        if secret_id not in self.secrets:
            msg = "Secrets Manager can't find the specified secret."
            return _aws_error(400, "ResourceNotFoundException", msg, common, message_key="Message")
        name = secret_id.rsplit(":", 1)[-1]
        arn = f"arn:aws:secretsmanager:{self.region}:{self.account}:secret:{name}"
        reply = {"ARN": arn, "Name": name, "SecretString": self.secrets[secret_id], "VersionId": "1"}
        return 200, common, json.dumps(reply).encode()

    async def _invoke(self, name, qualifier, headers, body, length):
        rid = str(uuid.uuid4())
        common = [("x-amzn-RequestId", rid)]
        kind = headers.get("x-amz-invocation-type", "RequestResponse")
        if kind not in INVOCATION_TYPES:
            msg = f"1 validation error detected: Value '{kind}' at 'invocationType' failed to satisfy constraint"
            return _aws_error(400, "InvalidParameterValueException", msg, common)
        function = self._resolve(name, qualifier)
        if function is None:
            arn = self._arn(name, qualifier)
            return _aws_error(
                404, "ResourceNotFoundException", f"Function not found: {arn}", common, message_key="Message"
            )
        if kind == "Event" and length > self.max_event_payload:
            limit = self.max_event_payload
            msg = f"{length} byte payload is too large for the Event invocation type (limit {limit} bytes)"
            return _aws_error(413, "RequestEntityTooLargeException", msg, common)
        if length > self.max_sync_payload:
            msg = f"Request must be smaller than {self.max_sync_payload} bytes for the InvokeFunction operation"
            return _aws_error(413, "RequestEntityTooLargeException", msg, common)
        payload = body if body.strip() else b"{}"
        try:
            json.loads(payload)
        except ValueError as e:
            msg = f"Could not parse request body into json: Could not parse payload into json: {e}"
            return _aws_error(400, "InvalidRequestContentException", msg, common)
        if kind == "DryRun":
            return 204, common, b""
        counted = kind != "Event" or self.throttle_events
        if counted and self.concurrency is not None and self._admitted >= self.concurrency:
            self._stats["throttles"] += 1
            return _aws_error(
                429,
                "TooManyRequestsException",
                "Rate Exceeded.",
                common,
                Reason="ReservedFunctionConcurrentInvocationLimitExceeded",
            )
        self._stats["invocations"] += 1
        self._admitted += int(counted)
        cc = headers.get("x-amz-client-context")
        if kind == "Event":
            self._event_queue.append(_Job(function, rid, payload, cc, None))
            self._pump()
            return 202, common, b""
        future = asyncio.get_running_loop().create_future()
        self._sync_queue.append(_Job(function, rid, payload, cc, future))
        self._pump()
        result_kind, seconds, result = await future
        extra = common + [("X-Amz-Executed-Version", "$LATEST")]
        if result_kind == ERROR:
            extra.append(("X-Amz-Function-Error", "Unhandled"))
        if headers.get("x-amz-log-type") == "Tail":
            extra.append(("X-Amz-Log-Result", _log_tail(rid, seconds, self.memory)))
        return 200, extra, result

    def _resolve(self, name: str, qualifier: str | None) -> str | None:
        """Registered function named by ``name`` (a name, partial or full ARN)."""
        parts = name.split(":")
        if parts[0] == "arn" and len(parts) >= 7 and parts[5] == "function":
            base, extra = parts[6], parts[7:]
        elif len(parts) >= 3 and parts[1] == "function":
            base, extra = parts[2], parts[3:]
        else:
            base, extra = parts[0], parts[1:]
        versions = set(extra[:1]) | ({qualifier} if qualifier else set())
        if base not in self.functions or len(extra) > 1 or not versions <= {"$LATEST"}:
            return None
        return base

    def _arn(self, name: str, qualifier: str | None) -> str:
        arn = name if name.startswith("arn:") else f"arn:aws:lambda:{self.region}:{self.account}:function:{name}"
        return f"{arn}:{qualifier}" if qualifier else arn


def _stop_at_exit(ref: weakref.ref[LambdaLocal]) -> None:
    lam = ref()
    if lam is not None:
        lam.stop()


def _parse_head(head: bytes) -> tuple[str, str, str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[0].isalpha() or not parts[2].startswith("HTTP/1."):
        raise _BadRequest(f"malformed request line {lines[0][:200]!r}")
    method, target, version = parts
    headers = {}
    for line in lines[1:]:
        key, sep, value = line.partition(":")
        if sep:
            headers[key.strip().lower()] = value.strip()
    return method, target, version, headers


def _content_length(headers: dict[str, str]) -> int:
    value = headers.get("content-length", "0")
    if not value.isdigit():  # digits only: no sign, no spaces, no list of lengths
        raise _BadRequest(f"malformed Content-Length {value[:100]!r}")
    return int(value)


async def _read_body(reader: asyncio.StreamReader, length: int, limit: int) -> bytes | None:
    """The body, or None when it is over ``limit`` (read and dropped when not huge)."""
    if length <= limit:
        return await reader.readexactly(length)
    if length <= _MAX_DISCARD:
        remaining = length
        while remaining:
            remaining -= len(await reader.readexactly(min(remaining, 2**20)))
    return None


def _http(status: int, headers: list[tuple[str, str]], body: bytes, keep: bool) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}"]
    lines += [f"{k}: {v}" for k, v in headers]
    if status != 204:
        lines.append("Content-Type: application/json")
        lines.append(f"Content-Length: {len(body)}")
    lines.append("Connection: keep-alive" if keep else "Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _aws_error(status, code, message, headers, message_key="message", **fields):
    body = {"Type": "User", message_key: message, **fields}
    return status, headers + [("x-amzn-ErrorType", code)], json.dumps(body).encode()


def _log_tail(rid: str, seconds: float, memory: int) -> str:
    ms = seconds * 1000
    log = (
        f"START RequestId: {rid} Version: $LATEST\nEND RequestId: {rid}\n"
        f"REPORT RequestId: {rid}\tDuration: {ms:.2f} ms\tBilled Duration: {int(ms) + 1} ms\t"
        f"Memory Size: {memory} MB\n"
    )
    return base64.b64encode(log.encode()).decode()


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    """``python -m wukong.lambda_local --function NAME=module:handler [...]``."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        worker_main(argv[1])
        return 0
    p = argparse.ArgumentParser(prog="wukong lambda-local", description="Serve the Lambda Invoke API locally.")
    p.add_argument("--function", action="append", metavar="NAME=MODULE:HANDLER")
    p.add_argument("--zip", help="serve this deployment package through the Runtime API, run by awslambdaric")
    p.add_argument("--runtime-python", help="the runtime's Python for --zip (default: a python3.12 found here)")
    p.add_argument("--runtime-dir", help="awslambdaric and boto3 for --zip (installed there if missing)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--workers", type=int)
    p.add_argument("--concurrency", type=int)
    p.add_argument("--latency", type=float, default=0.0)
    p.add_argument("--timeout", type=float, default=900.0)
    p.add_argument("--memory", type=int, default=3008)
    p.add_argument("--idle-timeout", type=float, default=IDLE_TIMEOUT_S, help="seconds a connection may idle")
    p.add_argument("--read-timeout", type=float, default=READ_TIMEOUT_S, help="seconds to receive a request")
    args = p.parse_args(argv)
    if args.zip:
        args.function = args.function or ["wukong-executor=handler.handler"]
    elif not args.function:
        p.error("give --function NAME=module:handler, or --zip")
    functions = {}
    for item in args.function:
        name, sep, ref = item.partition("=")
        if not sep:
            p.error(f"--function wants NAME=module:handler, got {item!r}")
        functions[name] = ref
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    runtime = Runtime(args.zip, args.runtime_python, args.runtime_dir) if args.zip else None
    lam = LambdaLocal(
        functions,
        workers=args.workers,
        concurrency=args.concurrency,
        latency=args.latency,
        timeout=args.timeout,
        memory=args.memory,
        idle_timeout=args.idle_timeout,
        read_timeout=args.read_timeout,
        host=args.host,
        port=args.port,
        runtime=runtime,
    )
    try:
        with lam:
            print(lam.url, flush=True)
            while not done.wait(1.0):
                pass
    finally:
        if runtime is not None:
            runtime.close()
    return 0

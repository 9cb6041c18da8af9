"""The AWS Lambda backend: executors are invocations of one Lambda function.

Invoking.  ``LambdaInvoker`` is the ``invoke(batch, job, invocations)``
callable of both the client (through ``LocalCluster(backend="lambda")``) and
every executor running on Lambda.  It builds one JSON event per invocation::

    {"config": {"store": ..., "executor": ..., "lambda": ...},
     "invocation": "<base64 of encode_invocation(inv)>"}

and returns ``after()``, which the caller runs once ``batch`` has executed
(schedules and inputs are stored before any executor can start).  ``after``
sends the events with ``InvocationType="Event"`` from a pool of
``num_invokers`` threads, one boto3 client per thread, and returns when Lambda
has accepted every one of them (a Lambda container is frozen when its handler
returns, so an executor must not leave invocations in flight).

Large events.  An event over ``max_event_payload`` (Lambda's asynchronous
limit, 1 MB) is spilled: the encoded invocation is written to the MDS under
``Keys.spill`` in ``batch`` (so before ``after`` runs), its key added to the
registry ``Keys.spills``, and the event carries ``{"ref": key}``.  The client
deletes the registry and its members with the job (``Store.delete_job``).

Failures.  Throttling (429) and transient errors (5xx, lost connections) are
retried here with exponential backoff and full jitter; botocore's own retries
are off so there is one policy.  An invocation that still fails is reported
on the job's event stream as an error naming the function and the endpoint,
plus an exit count for the executor that never started, so the client raises
instead of waiting.

Security.  No secret travels in an event: the store config in it names the
Redis endpoints (or the Redis Cluster) without credentials, and the proxy's
options without its shared secret.  The handler reads both from the
function's own configuration, once per warm container
(``wukong.store.credentials``: ``WUKONG_REDIS_SECRET_ARN``, an SSM parameter,
or ElastiCache IAM authentication; ``WUKONG_PROXY_SECRET_ARN``).

``LambdaBackend`` is the cluster's face of all this (``wukong.backends.base``).

The handler (``handler``; ``executor/handler.py`` re-exports it) caches one
``Store`` and one ``Executor`` per warm container and config, runs the
invocation and adds a ``{"k": "d", "ms", "mem"}`` event (its duration and
memory size) for cost accounting.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import random
import secrets
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from wukong import aws, protocol, task_warnings, versions
from wukong.backends import invoker_tree
from wukong.cost import job_cost
from wukong.errors import JobFailed
from wukong.executor import Executor
from wukong.protocol import Invocation, Keys, decode_invocation, encode_invocation
from wukong.store import Batch, StorageError, Store, credentials

MAX_EVENT_PAYLOAD = 1_048_576  # Lambda's limit for an asynchronous (Event) payload
DEFAULT_FUNCTION = "wukong-executor"
# seconds an invocation never seen running has, beyond the watchdog's ``lost_after``, to take
# its lease: a cold start's Init phase (the runtime, our imports, the Redis log-in) may last
# 10 s on AWS before Lambda stops it and retries it with the invocation
START_GRACE_S = 10.0
# The invoker tree's model (wukong.backends.invoker_tree): a node's start (a warm Lambda start
# plus the handler's set-up), the invoke latency before one is measured, CPU per invoke.
TREE_START_S = 0.05
TREE_LATENCY_S = 0.03
LEAN_CPU_S = 0.0002
BOTO3_CPU_S = 0.0013
RETRY_STATUS = (429, 500, 502, 503, 504)
RETRY_CODES = {
    "TooManyRequestsException",
    "ThrottlingException",
    "Throttling",
    "RequestLimitExceeded",
    "ServiceException",
    "EC2ThrottledException",
    "ENILimitReachedException",
}


class InvokeFailed(Exception):
    """Lambda did not accept an invocation after every retry."""


class LambdaInvoker:
    """Start executors as asynchronous invocations of a Lambda function.

    Parameters
    ----------
    store : Store
        Where spilled payloads and failure events go.
    config : dict
        ``{"store", "executor", "lambda"}``: sent in every event; its
        ``"lambda"`` part configures this invoker (see ``lambda_config``).
    """

    def __init__(self, store: Store, config: dict, *, num_invokers: int | None = None):
        lam = config["lambda"]
        self.store = store
        self.config = config
        self.function_name: str = lam["function_name"]
        self.region: str | None = lam.get("region")
        self.endpoint_url: str | None = lam.get("endpoint_url")
        self.max_event_payload: int = lam.get("max_event_payload", MAX_EVENT_PAYLOAD)
        self.attempts: int = lam.get("attempts", 8)
        self.base_delay: float = lam.get("base_delay", 0.05)
        self.max_delay: float = lam.get("max_delay", 2.0)
        self.num_invokers: int = num_invokers or lam.get("num_invokers", 16)
        self.connections: int = lam.get("connections", 64)
        self.kind: str = lam.get("invoker", "lean")
        self.tree_branching: int | None = lam.get("tree_branching")  # forced; 0: never a tree
        self.tree_start: float = lam.get("tree_start_s", TREE_START_S)
        self.tree_latency: float = lam.get("tree_latency_s", TREE_LATENCY_S)
        self.tree_events = 0  # "invoke these" events sent (wukong.backends.invoker_tree)
        self._lean: Any = None  # the LeanInvoker; False when it cannot be used (boto3 then)
        self._local = threading.local()
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._latency: float | None = None  # boto3 path's smoothed seconds per accepted request
        self._config_json = json.dumps(config, separators=(",", ":"))
        self.invoked = 0
        self.throttled = 0

    @property
    def endpoint(self) -> str:
        return self.endpoint_url or f"https://lambda.{self.region or os.environ.get('AWS_REGION', '?')}.amazonaws.com"

    # -- the Executor.invoke contract ------------------------------------------
    def __call__(self, batch: Batch, job: str, invocations: list[Invocation]) -> Callable[[], None] | None:
        if not invocations:
            return None
        items: list[list[Any]] = [[inv.id, self.tail(batch, job, inv)] for inv in invocations]
        b = self.branching(len(items))
        if b is None:
            events = [(self.payload(*next(iter(tail.items()))), [inv_id]) for inv_id, tail in items]
        else:  # a wide launch: b "invoke these" events, not one event per invocation
            events = invoker_tree.tree_events(self, batch, job, items, b)
            self.tree_events += len(events)
        return lambda: self.send_events(job, events)

    def branching(self, n: int) -> int | None:
        """The invoker tree's branching for ``n`` launches (``None``: invoke each directly)."""
        forced = self.tree_branching
        if forced is not None:
            return forced if forced and n > forced else None
        latency = self.latency if self.latency is not None else self.tree_latency
        in_flight = self.connections if self.lean() else self.num_invokers
        cpu = LEAN_CPU_S if self.lean() else BOTO3_CPU_S
        return invoker_tree.branching(n, latency, in_flight, cpu, self.tree_start)

    def payload(self, key: str, value: Any) -> bytes:
        """An event: the config, and ``key`` (``invocation``, ``ref`` or ``tree``) set to ``value``."""
        return ('{"config":' + self._config_json + "," + json.dumps(key) + ":" + json.dumps(value) + "}").encode()

    def tail(self, batch: Batch, job: str, inv: Invocation) -> dict:
        """What an event carries for ``inv`` beside the config; spills it to the MDS (in ``batch``) when too large."""
        encoded = base64.b64encode(encode_invocation(inv)).decode()
        if len(encoded) + len(self._config_json) + 27 <= self.max_event_payload:  # the payload's length
            return {"invocation": encoded}
        keys = Keys(job)
        key = keys.spill(secrets.token_hex(8))
        ttl = self.store.ttl
        batch.mds("set", key, encode_invocation(inv), ttl)
        batch.mds("sadd", keys.spills, key)
        batch.mds("expire", keys.spills, ttl)
        batch.record(self.store.mds_index, key)  # a late executor's spill is deleted if its job ended
        batch.record(self.store.mds_index, keys.spills)
        payload = self.payload("ref", key)
        if len(payload) > self.max_event_payload:
            raise ValueError(
                f"the executor config alone ({len(payload)} bytes) exceeds max_event_payload={self.max_event_payload}"
            )
        return {"ref": key}

    def event(self, batch: Batch, job: str, inv: Invocation) -> bytes:
        """The JSON event for ``inv``; spills it to the MDS (in ``batch``) when too large."""
        return self.payload(*next(iter(self.tail(batch, job, inv).items())))

    def send_events(self, job: str, events: Sequence[tuple[bytes, list]]) -> None:
        """Send ``(payload, ids of the invocations it starts)`` events; report the ones that failed for good."""
        errors = self.transport([p for p, _ in events])
        failed = [e for e in errors if e is not None]
        if failed:
            ids = [i for (_, ids), e in zip(events, errors, strict=True) if e is not None for i in ids]
            self.report_failures(job, failed, ids)

    def send(self, job: str, payloads: Sequence[bytes], ids: Sequence[str] = ()) -> None:
        """Invoke once per payload, in parallel; report the ones that failed for good."""
        errors = self.transport(payloads)
        failed = [e for e in errors if e is not None]
        if failed:
            self.report_failures(job, failed, [i for i, e in zip(ids, errors, strict=False) if e is not None])

    def transport(self, payloads: Sequence[bytes]) -> list[str | None]:
        """Invoke once per payload, in parallel: ``None`` per accepted one, else what went wrong."""
        lean = self.lean()
        if lean:
            throttled = lean.throttled
            errors = lean.send(payloads)
            self.throttled += lean.throttled - throttled
            self.invoked += sum(e is None for e in errors)
            return errors
        if len(payloads) == 1 or self.num_invokers <= 1:
            return [self.invoke_one(p) for p in payloads]
        return list(self.pool().map(self.invoke_one, payloads))

    def lean(self) -> Any:
        """The lean asynchronous invoker (``wukong.backends.lean_invoke``), or ``False``: use boto3."""
        with self._lock:
            if self._lean is None:
                self._lean = False
                if self.kind == "lean":
                    from wukong.backends.lean_invoke import LeanInvoker

                    url, region, credentials = aws.lambda_target(region=self.region, endpoint_url=self.endpoint_url)
                    if credentials is not None:  # else boto3 reports the missing credentials, as always
                        self._lean = LeanInvoker(
                            url,
                            region,
                            self.function_name,
                            credentials,
                            connections=self.connections,
                            attempts=self.attempts,
                            base_delay=self.base_delay,
                            max_delay=self.max_delay,
                            retry_codes=RETRY_CODES,
                        )
            return self._lean

    @property
    def latency(self) -> float | None:
        """Smoothed seconds per accepted Invoke request (``None`` until measured)."""
        return self._lean.latency if self._lean else self._latency

    def pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.num_invokers, thread_name_prefix="wukong-invoker")
            return self._pool

    def client(self) -> Any:
        """This thread's boto3 Lambda client (sessions are not thread-safe; clients are cheap to keep)."""
        client = getattr(self._local, "client", None)
        if client is None:  # our backoff is the one that acts: botocore's retries are off
            client = self._local.client = aws.client("lambda", region=self.region, endpoint_url=self.endpoint_url)
        return client

    def invoke_one(self, payload: bytes) -> str | None:
        """Invoke with retries; ``None`` on success, else what went wrong."""
        return self.request(payload, "Event")[1]

    def request(self, payload: bytes, kind: str) -> tuple[Any, str | None]:
        """Invoke (``kind``: ``"Event"`` or ``"RequestResponse"``) with retries: ``(response, None)``
        on success, else ``(None, what went wrong)``."""
        from botocore.exceptions import BotoCoreError, ClientError

        for attempt in range(self.attempts):
            try:
                t0 = time.monotonic()
                response = self.client().invoke(FunctionName=self.function_name, InvocationType=kind, Payload=payload)
                if kind == "Event":
                    self.invoked += 1
                    dt = time.monotonic() - t0
                    self._latency = dt if self._latency is None else 0.9 * self._latency + 0.1 * dt
                return response, None
            except ClientError as exc:
                err = exc.response.get("Error", {})
                status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
                what = f"{err.get('Code', 'error')} (HTTP {status}): {err.get('Message', exc)}"
                if status == 429:
                    self.throttled += 1
                if status not in RETRY_STATUS and err.get("Code") not in RETRY_CODES:
                    return None, what
            except (BotoCoreError, OSError) as exc:  # connection errors, timeouts
                if "Credentials" in type(exc).__name__ or "Region" in type(exc).__name__:
                    return None, f"{type(exc).__name__}: {exc}"
                what = f"{type(exc).__name__}: {exc}"
            if attempt + 1 < self.attempts:
                time.sleep(random.uniform(0, min(self.max_delay, self.base_delay * 2**attempt)))
        return None, f"{what} (gave up after {self.attempts} attempts)"

    def report_failures(self, job: str, failed: list[str], ids: Sequence[str] = ()) -> None:
        """Tell the client: an error, and an exit for each executor that never started."""
        what = f"could not invoke Lambda function {self.function_name!r} at {self.endpoint}: {failed[0]}" + (
            f" (and {len(failed) - 1} more invocation(s) failed)" if len(failed) > 1 else ""
        )
        keys = Keys(job)
        batch = self.store.batch()
        protocol.emit_error(batch, keys, None, what, None, "")
        for inv_id in ids:  # these executors will never start: their exits, for the client's accounting
            protocol.emit_event(batch, keys, protocol.counts_fields(0, exited=inv_id))
        batch.execute()

    def close(self) -> None:
        with self._lock:
            if self._lean:
                self._lean.close()
            self._lean = None
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None


def lambda_config(
    function_name: str = DEFAULT_FUNCTION,
    *,
    region: str | None = None,
    endpoint_url: str | None = None,
    num_invokers: int = 16,
    executor_invokers: int | None = None,
    max_event_payload: int = MAX_EVENT_PAYLOAD,
    attempts: int = 8,
    base_delay: float = 0.05,
    max_delay: float = 2.0,
    invoker: str | None = None,
    connections: int = 64,
    tree_branching: int | None = None,
    tree_start_s: float = TREE_START_S,
) -> dict:
    """The ``"lambda"`` part of the config: how the client (and executors) invoke.

    ``invoker`` is ``"lean"`` (``wukong.backends.lean_invoke``: ``connections``
    requests in flight from one asyncio loop) or ``"boto3"`` (``num_invokers``
    threads calling boto3); default ``$WUKONG_INVOKER`` or ``"lean"``.
    Wide launches go through an invoker tree (``wukong.backends.invoker_tree``)
    whose branching is chosen from the launch's width, the measured invoke
    latency and ``tree_start_s`` (a node's start); ``tree_branching`` forces
    it (``0``: never a tree).
    """
    invoker = invoker or os.environ.get("WUKONG_INVOKER") or "lean"
    if invoker not in ("lean", "boto3"):
        raise ValueError(f"invoker must be 'lean' or 'boto3', got {invoker!r}")
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, got {attempts}")
    return {
        "function_name": function_name,
        "region": region,
        "endpoint_url": endpoint_url,
        "num_invokers": num_invokers,
        "executor_invokers": executor_invokers or min(num_invokers, 8),
        "max_event_payload": max_event_payload,
        "attempts": attempts,
        "base_delay": base_delay,
        "max_delay": max_delay,
        "invoker": invoker,
        "connections": connections,
        "tree_branching": tree_branching,
        "tree_start_s": tree_start_s,
    }


class LambdaBackend:
    """Executors are asynchronous invocations of one Lambda function (the ``Backend`` surface)."""

    name = "lambda"
    leaf_groups = None  # one invocation per leaf: concurrency is not ours to bound
    sees_in_flight = False  # an invocation in Lambda's queue is invisible: the watchdog waits for its lease
    inline_plan = 0  # an event is at most 256 KB; the plan is read with the lease, in the same round trip
    children: list = []  # no process of ours

    def __init__(
        self,
        store: Store,
        config: dict,
        *,
        memory_mb: int = 3008,
        architecture: str = "x86_64",
        start_grace: float = START_GRACE_S,
    ):
        if start_grace < 0:
            raise ValueError(f"start_grace must be 0 or more seconds, got {start_grace}")
        self.invoker = LambdaInvoker(store, config)
        self.store = store
        self.start_grace = start_grace
        self.memory_mb, self.architecture = memory_mb, architecture
        self._versions: dict[str, str] | None = None

    def invoke(self, batch: Batch, job: str, invocations: list[Invocation]) -> Callable[[], None] | None:
        return self.invoker(batch, job, invocations)

    def backlog(self) -> int:
        return 0

    def running(self, job: str) -> set[str]:
        return set()

    def unavailable(self) -> str | None:
        return None  # Lambda answers each invoke: its errors are reported per invocation

    def job_cost(self, durations: Sequence[tuple[float, int]]) -> dict | None:
        return job_cost(durations, self.architecture)

    def describe(self) -> str:
        return f"lambda {self.invoker.function_name!r} at {self.invoker.endpoint}"

    def executor_versions(self) -> dict[str, str]:
        """Asked once, by a ``RequestResponse`` probe invocation (``wukong.versions``)."""
        if self._versions is None:
            inv = self.invoker
            probe = ('{"config":' + inv._config_json + "," + json.dumps(versions.PROBE)[1:]).encode()
            response, error = inv.request(probe, "RequestResponse")
            if error is not None:
                raise JobFailed(f"could not invoke Lambda function {inv.function_name!r} at {inv.endpoint}: {error}")
            payload = json.loads(response["Payload"].read() or b"null")
            self._versions = versions.from_probe(payload, response.get("FunctionError"), self.describe())
            if isinstance(payload, dict) and payload.get("store_error"):  # before any job waits on it
                versions.check(self._versions, self.describe())  # a version mismatch is said first
                self._versions = None  # asked again by the next job: the configuration may be fixed
                where = self.store.name_of(self.store.mds_index)
                raise StorageError(
                    f"Lambda function {inv.function_name!r} cannot use "
                    f"{where if where.startswith('Redis') else 'Redis at ' + where} "
                    f"with its own configuration (${credentials.SECRET_ARN_ENV} and the like): {payload['store_error']}"
                )
        return self._versions

    def probe_again(self) -> None:
        """A function that fails before its first event (its Redis secret now wrong, its
        endpoint unreachable, another wukong deployed under its name) looks, from here,
        like invocations lost: probe it once more and say why."""
        self._versions = None
        try:
            versions.check_backend(self)
        except versions.VersionMismatch:
            raise
        except JobFailed:  # the probe itself could not be invoked (throttled, say): the resend will tell
            pass

    def close(self) -> None:
        self.invoker.close()


# -- the Lambda side ---------------------------------------------------------------

_warm: dict[str, tuple[Store, Executor]] = {}  # config JSON -> what a warm container reuses
_invokers: dict[str, LambdaInvoker] = {}  # config JSON -> the executor's invoker (invoker-tree nodes use it)


def _executor_for(config: dict) -> tuple[Store, Executor]:
    ident = json.dumps(config, sort_keys=True)
    cached = _warm.get(ident)
    if cached is None:
        store = Store.from_config(config["store"], credentials.from_environment())
        invoker = _invokers[ident] = LambdaInvoker(
            store, config, num_invokers=config["lambda"].get("executor_invokers", 8)
        )
        from wukong.proxy.client import executor_kwargs as proxy_kwargs

        route = {"backend": "lambda", "config": config}  # the proxy invokes as this invoker would
        proxy = config.get("proxy")
        renew = None  # reads a rotated secret (a new proxy) this warm container did not see
        if proxy and not proxy.get("secret"):  # events carry no secret: the function's own configuration does
            secret = credentials.proxy_secret_from_environment()
            if not secret:
                print(
                    f"wukong: the cluster uses the proxy at {proxy['address']} but this function has no "
                    f"${credentials.PROXY_SECRET_ARN_ENV}: invoking directly",
                    file=sys.stderr,
                )
            proxy = {**proxy, "secret": secret} if secret else None
            renew = functools.partial(credentials.proxy_secret_from_environment, renew=True)
        executor = Executor(store, invoker, **config["executor"], **proxy_kwargs(proxy, store, route, renew))
        task_warnings.executor_process()
        cached = _warm[ident] = (store, executor)
    return cached


def _probe(event: dict) -> dict:
    """The versions this executor runs and, given the cluster's config, whether it can use
    its Redis: a secret it cannot read, a password Redis refuses, an endpoint it cannot
    reach.  Otherwise the client would learn that only as invocations lost, again and again."""
    answer: dict[str, Any] = versions.report()
    if "config" in event:
        try:
            store, _ = _executor_for(event["config"])
            store.mds.ping()
        except Exception as exc:
            answer["store_error"] = f"{type(exc).__name__}: {exc}"
    return answer


def handler(event: dict, context: Any) -> dict:
    """The Lambda entry point: run one executor invocation."""
    if event.get("wukong_probe") == "versions":  # versions.PROBE: what this executor runs
        return _probe(event)
    t0 = time.perf_counter()
    config = event["config"]
    store, executor = _executor_for(config)
    memory = int(getattr(context, "memory_limit_in_mb", 0) or os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", 0))
    if "tree" in event:  # a node of an invoker tree: it invokes, it runs no task
        return invoker_tree.handle(event, store, _invokers[json.dumps(config, sort_keys=True)], memory)
    blob: Any
    if "ref" in event:
        blob = store.mds.get(event["ref"])
        if blob is None:  # the job ended (and was cleaned up) before this delivery
            return {"tasks": 0, "duration_ms": (time.perf_counter() - t0) * 1000, "gone": True}
    else:
        blob = base64.b64decode(event["invocation"])
    inv = decode_invocation(blob)

    def duration() -> list[dict]:  # sent just before the exit event
        return [protocol.duration_fields((time.perf_counter() - t0) * 1000, memory)]

    ntasks = executor.run(inv, exit_events=duration)
    return {"tasks": ntasks, "duration_ms": (time.perf_counter() - t0) * 1000}

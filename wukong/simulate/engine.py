"""A discrete-event simulation of one job on AWS Lambda and Redis, running the real executor.

What is real.  The job is planned by ``wukong.scheduler.plan`` (the static
schedules), and every invocation is run by ``wukong.executor.Executor`` --
its ``_Run``: the become/invoke decisions, fan-in notifications and their
deferral, task clustering, inline or stored outputs, events.  Only three
things are substituted (``_SimRun``): running a task sleeps for its profiled
duration and returns a stand-in; serializing an output makes a stand-in of its
profiled size; reading one back returns a stand-in.  The executor's clock
(``time.monotonic``, for its deferral and progress timers) is the simulated one.
A schedule an executor fetches is decoded once for all of them (``Simulation.schedule``,
in place of ``wukong.executor.Schedule``; each executor still fetches and caches it,
those fetches are simulated) and its task bodies are never unpickled.

Memory (a million tasks must fit): no reference cycle per invocation or round trip
(the cyclic collector is off during a run, so one would stay until the end), the
modelled store holds sizes (``SimBlob``), not bytes, and a finished invocation's
greenlet, run and batches are freed; what grows with the job is its plan, one ``Span``
per invocation, the store's keys and the per-task counts.

What is modelled (``Model``).

* Redis (``_SimStore``, ``_SimBatch``): one in-memory dict per job; each
  server (MDS, KVS shards) is a FIFO queue serving ``shard_ops_per_s``
  commands, ``shard_Bps`` bytes in and ``shard_out_Bps`` bytes out per second.
  A batch executes as the real one does -- one pipeline per server, KVS first,
  MDS last, one after the other -- each costing a round trip plus its bytes over
  the executor's link.  On shared cores (``Model.cores``: lambda-local) moving
  bytes over the link is the executor's CPU and the server's work is the
  server's, both slowed while more computations than cores run.
* The client: it has the job's results when it has read (a stored result:
  one GET) and decoded each one after its event (``client_reads``); the
  makespan is then, as the client's ``run_s`` measures it.
  Commands take effect when the server serves them, in simulated-time order;
  ``fanin.lua`` and ``lease.lua`` are re-stated in Python (their semantics,
  not their code: the simulator has no Redis).
* Lambda (``_Lambda``): events are queued after ``invoke_latency_s`` (at
  their 202 Accepted), or ``queued_after_s`` after their request when the
  endpoint queues them before answering (lambda-local); a queued event
  waits for a free slot under the concurrency limit and the burst limit
  (``burst`` more concurrent executions per ``burst_every_s``),
  then starts on an idle warm environment (``warm_start_s``) or a new one
  (``cold_start_s``).  An environment keeps its ``Executor`` (and its cache of
  schedules) between invocations, as a warm container does.
* The invoker: ``k`` invokes cost the invoking executor
  ``ceil(k / invoke_in_flight) * invoke_latency_s + k * invoke_cpu_s``; wide
  launches go through an invoker tree shaped by the real
  ``invoker_tree.branching``, whose nodes are invocations too.

State (all owned by ``Simulation``; one greenlet per running invocation, the
hub greenlet runs the event loop): ``now``; ``_heap`` of (time, seq,
greenlet); the per-invocation ``Span`` records (start, end, tasks, busy
seconds by activity) from which the report and its checks are made.
"""

from __future__ import annotations

import gc
import heapq
import itertools
import json
import math
import os
from array import array
from collections import defaultdict, deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import greenlet

from wukong import executor as executor_module
from wukong import serialization
from wukong.backends import invoker_tree
from wukong.executor import Executor, Schedule, _Run
from wukong.protocol import Invocation, Keys, TaskRecord
from wukong.scheduler import Plan
from wukong.simulate.model import Model
from wukong.simulate.profile import Profile

_RANDOM = os.urandom(64 * 1024)  # incompressible filler for small outputs (real pickles)


class SimBlob:
    """A serialized output of ``n`` bytes that is never materialized."""

    __slots__ = ("n",)

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n


class _Value:
    """A task's output inside a simulated executor (stands in for the real value)."""

    __slots__ = ("tid",)

    def __init__(self, tid: int):
        self.tid = tid


def _size(x: Any) -> int:
    t = type(x)  # the common types first: this runs for every simulated command and reply
    if t is str or t is bytes or t is SimBlob:
        return len(x)
    if t is int or x is None:
        return 8
    if t is tuple or t is list:
        n = 0
        for v in x:
            n += _size(v)
        return n
    if isinstance(x, (bytes, bytearray, memoryview, SimBlob)):
        return len(x)
    if isinstance(x, str):
        return len(x)
    if isinstance(x, (list, tuple)):
        return sum(_size(v) for v in x)
    if isinstance(x, dict):  # an event's fields: a result in the stream is its bytes
        return sum(_size(k) + _size(v) for k, v in x.items())
    return 8


@dataclass(slots=True)
class Span:
    """One invocation's life in simulated time."""

    inv: str
    kind: str  # "executor" or "tree"
    queued: float  # accepted by Lambda
    start: float = 0.0  # handler starts (after a cold or warm start)
    end: float = 0.0
    cold: bool = False
    tasks: int = 0
    busy: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    @property
    def accounted(self) -> float:
        return sum(self.busy.values())


class _SimTime:
    """``time`` as the executor module sees it during a simulation: ``monotonic`` and ``sleep``
    are simulated (a real sleep would stop the whole simulation, and not advance its clock)."""

    def __init__(self, sim: Simulation):
        self._sim = sim

    def monotonic(self) -> float:
        return self._sim.now

    def monotonic_ns(self) -> int:
        return int(self._sim.now * 1e9)

    def sleep(self, seconds: float) -> None:  # a holder of delayed I/O waits for its next turn
        self._sim.pause("hold", seconds)

    def __getattr__(self, name: str) -> Any:
        import time

        return getattr(time, name)


class _NoHeartbeat:
    def hold(self, keys: Any, inv: str, token: str, guard: Any = None) -> None:
        pass

    def release(self) -> None:
        pass


# -- Redis -------------------------------------------------------------------------------------


class _Server:
    __slots__ = ("name", "free_at", "ops", "bytes_in", "bytes_out")

    def __init__(self, name: str):
        self.name, self.free_at, self.ops, self.bytes_in, self.bytes_out = name, 0.0, 0, 0, 0


class _SimStore:
    """The store surface the executor uses, over dicts, with servers that take time."""

    def __init__(self, sim: Simulation, shards: int, ttl: int = 3600, part_size: int = 256 * 1024 * 1024):
        self.sim = sim
        self.ttl = ttl
        self.part_size = part_size
        self.shm_dir = None
        self.mds_index = 0
        self.kvs_index = list(range(1, shards + 1))
        self.servers_ = [_Server("mds")] + [_Server(f"kvs{i}") for i in range(shards)]
        self.data: dict[str, Any] = {}
        self.sets: dict[str, set] = defaultdict(set)
        self.hashes: dict[str, dict] = defaultdict(dict)  # fan-ins' holds (delayed I/O)
        self.mds = self  # _Run.cancelled() calls store.mds.exists

    def batch(self) -> _SimBatch:
        return _SimBatch(self)

    def name_of(self, server: int) -> str:
        return self.servers_[server].name

    def kvs_server(self, key: str) -> int:
        return self.kvs_index[hash(key) % len(self.kvs_index)]

    def exists(self, key: str) -> int:
        return int(key in self.data)

    def whole(self, key: str, value: Any) -> Any:
        return value  # values are never split here

    def command(self, command: str, args: tuple) -> Any:
        data, sets = self.data, self.sets
        if command == "get":
            return data.get(args[0])
        if command == "set":
            data[args[0]] = args[1]
            return True
        if command == "exists":
            return int(args[0] in data)
        if command in ("delete", "unlink"):
            return sum(data.pop(k, None) is not None for k in args)
        if command == "sadd":
            sets[args[0]].update(args[1:])
            return len(args) - 1
        if command in ("expire", "pexpire", "hincrby"):
            return 1
        if command == "hget":  # an invocation's attempts: never re-sent in a simulation
            return None
        if args and args[0] == self.sim.keys.events:  # an event appended (wukong.protocol.emit_*)
            self.sim.on_event(args[1])
            return b"0-0"
        raise NotImplementedError(f"the simulated store has no {command!r}")

    def lease(self, keys: Keys, inv: str, value: str, px: int) -> int:  # lease.lua's semantics
        if keys.events not in self.data:
            return -1
        k = keys.lease(inv)
        if px and k in self.data:
            return 0
        self.data[k] = value
        return 1

    def exit(self, keys: Keys, inv: str, arrivals: list[tuple[int, str]], events: list[dict]) -> int:
        if keys.events not in self.data:  # exit.lua's semantics
            return -1
        if any(self.data.get(keys.owner(t)) == me for t, me in arrivals):
            return 0
        for fields in events:
            self.sim.on_event(fields)
        self.data[keys.lease(inv)] = "done"
        return 1

    def fanin(
        self,
        keys: Keys,
        tid: int,
        parent: int,
        ndeps: int,
        sid: int,
        want_schedule: bool,
        invocation: str,
        hold: bool = False,
        max_missing: int = 0,
    ) -> Any:  # fanin.lua's semantics
        arrivals = self.sets[keys.fanin(tid)]
        # a fan-in's holds exist once a parent holds (an empty dict kept per fan-in is memory at 1M)
        holds = self.hashes[keys.holds(tid)] if hold else self.hashes.get(keys.holds(tid)) or {}
        new = parent not in arrivals
        arrivals.add(parent)
        full = len(arrivals) >= ndeps
        me = f"{invocation}/{parent}"  # the owner: invocation and parent of the completing arrival
        owned = self.data.get(keys.owner(tid)) == me
        complete = [1, self.data.get(keys.schedule(sid), b"") if want_schedule else b""]
        if hold:
            if not new and (owned or parent not in holds):
                return complete if owned else 0
            owner = self.data.get(keys.owner(tid))
            if not new and owner is not None:  # complete already: a re-run's owner arrival
                return 3 if owner.startswith(f"{invocation}/") else 0  # completes it again, with this value
            mine = f"h{invocation}"
            holds[parent] = "w" if ndeps - len(arrivals) > max_missing else mine
            if holds[parent] == "w":
                return 2
            if not full:
                return 3
            others = [state for p, state in holds.items() if p != parent]
            if any(state not in ("w", mine) for state in others):
                holds[parent] = "w"
                return 2
            if "w" in others:
                return 3
            del holds[parent]  # the others, if any, are this invocation's: kept for a re-run of it
            self.data[keys.owner(tid)] = me
            return complete
        stored = holds.pop(parent, None) is not None
        if not new and (owned or self.data.get(keys.owner(tid)) is not None or not stored):
            return complete if owned else 0
        if not full or holds:
            return 0
        self.data[keys.owner(tid)] = me
        return complete


class _SimBatch:
    """``wukong.store.Batch``'s surface; commands run when their server serves them.

    A command is ``(function, arguments, bytes)`` with a function of the store,
    never a closure over the batch: nothing here is a reference cycle, so a batch
    (and what it holds) is freed by reference counting as soon as its executor
    drops it -- the simulation runs with the cyclic collector off.
    """

    __slots__ = ("store", "cmds", "replies")

    def __init__(self, store: _SimStore):
        self.store = store
        self.cmds: dict[int, list[tuple[Callable[..., Any], tuple, int]]] = {}
        self.replies: dict[int, list] = {}

    def _add(self, server: int, fn: Callable[..., Any], args: tuple, nbytes: int) -> tuple[int, int]:
        cmds = self.cmds.setdefault(server, [])
        cmds.append((fn, args, nbytes))
        return server, len(cmds) - 1

    def add(self, server: int, command: str, *args: Any) -> tuple[int, int]:
        return self._add(server, self.store.command, (command, args), _size(args) + len(command))

    def mds(self, command: str, *args: Any) -> tuple[int, int]:
        return self.add(self.store.mds_index, command, *args)

    def lease(self, keys: Keys, inv: str, value: str, px: int) -> tuple[int, int]:
        return self._add(self.store.mds_index, self.store.lease, (keys, inv, value, px), 64)

    def fanin(
        self,
        keys: Keys,
        tid: int,
        parent: int,
        ndeps: int,
        sid: int,
        want_schedule: bool,
        invocation: str,
        hold: bool = False,
        max_missing: int = 0,
    ) -> tuple[int, int]:
        args = (keys, tid, parent, ndeps, sid, want_schedule, invocation, hold, max_missing)
        return self._add(self.store.mds_index, self.store.fanin, args, 96)

    def exit(self, keys: Keys, inv: str, arrivals: list[tuple[int, str]], events: list[dict]) -> tuple[int, int]:
        return self._add(self.store.mds_index, self.store.exit, (keys, inv, arrivals, events), 64 + _size(events))

    def kvs_set(self, key: str, value: Any, shm_min: int | None = None) -> tuple[int, int]:  # no shared memory here
        if isinstance(value, list):  # the pieces of one value
            value = value[0] if len(value) == 1 else SimBlob(sum(len(p) for p in value))
        n = len(value)
        sim = self.store.sim
        sim.stored_bytes += n
        sim.stored[int(key.rsplit(":", 1)[1])] = n
        blob = value if isinstance(value, SimBlob) else SimBlob(n)
        return self.add(self.store.kvs_server(key), "set", key, blob)

    def kvs_get_many(self, keys: Any) -> list[tuple[int, int]]:
        return [self.add(self.store.kvs_server(k), "get", k) for k in keys]

    def get_value(self, server: int, key: str) -> tuple[int, int]:
        return self.add(server, "get", key)

    def set_value(self, server: int, key: str, value: Any) -> tuple[int, int]:
        return self.add(server, "set", key, value)

    def record(self, server: int, key: str) -> None:
        """Nothing to take back: a simulated job never ends under a running executor."""

    def undo(self) -> None:
        pass

    def extend(self, other: _SimBatch) -> None:
        for server, cmds in other.cmds.items():
            self.cmds.setdefault(server, []).extend(cmds)

    def __bool__(self) -> bool:
        return bool(self.cmds)

    def __getitem__(self, handle: tuple[int, int]) -> Any:
        server, i = handle
        return self.replies[server][i]

    def send(self) -> Callable[[], _SimBatch]:
        """``Batch.send``: here a whole round trip now (no solo job starts from its invocation)."""
        self.execute()
        return lambda: self

    def execute(self, atomic: bool = False) -> _SimBatch:  # atomic: one unit anyway (a simulated round trip)
        sim, m = self.store.sim, self.store.sim.model
        mds = self.store.mds_index
        order = sorted(self.cmds, key=lambda s: s == mds) if len(self.cmds) > 1 else self.cmds  # KVS first, MDS last
        sim.cpu("redis", m.roundtrip_cpu_s)
        t0 = sim.now
        for server in order:
            cmds = self.cmds[server]
            srv = self.store.servers_[server]
            up = 0
            for _, _, n in cmds:
                up += n
            sim.compute(up / m.bandwidth_Bps)  # the executor's link (on shared cores: its CPU, contended)
            start = max(sim.now + m.redis_rtt_s / 2, srv.free_at)
            slow = sim.contention()  # a Redis server on the executors' cores (lambda-local) shares them
            work = len(cmds) / m.shard_ops_per_s + up / m.shard_Bps
            srv.free_at = start + work * slow
            sim.sleep_until(srv.free_at)
            replies = [fn(*args) for fn, args, _ in cmds]
            down = _size(replies)
            srv.free_at += down / m.shard_out_Bps * slow
            sim.server_seconds += work + down / m.shard_out_Bps
            srv.ops += len(cmds)
            srv.bytes_in += up
            srv.bytes_out += down
            sim.sent_bytes += up
            sim.received_bytes += down
            self.replies[server] = replies
            sim.sleep_until(max(sim.now, srv.free_at) + m.redis_rtt_s / 2)
            sim.compute(down / m.bandwidth_Bps)
        sim.charge("redis", sim.now - t0)
        return self


# -- the executor, with tasks and outputs simulated ---------------------------------------------


class _Key:
    """A task body as the simulated executor needs it: only its key (running it is simulated)."""

    __slots__ = ("key",)

    def __init__(self, key: Hashable):
        self.key = key


_NO_BODIES = memoryview(b"")


class _SimSchedule(Schedule):
    """A schedule decoded as the executor decodes it, but whose task bodies are never unpickled:
    the only user of a body besides its key is ``_Run.execute``, which ``_SimRun`` replaces."""

    __slots__ = ("keys_of",)

    def __init__(self, blob: bytes, keys_of: list[Hashable]):
        super().__init__(blob)
        self.keys_of = keys_of
        self._pickled = _NO_BODIES  # (the blob stays in the store)

    def body(self, pos: int) -> tuple[Any, tuple]:
        return _Key(self.keys_of[self.records[pos].tid]), ()


class _SimRun(_Run):
    def execute(self, rec: TaskRecord, body: tuple[Any, tuple]) -> Any:
        sim = self.ex.sim  # type: ignore[attr-defined]
        sim.ran[rec.tid] += 1
        sim.span().tasks += 1
        sim.task_start[rec.tid] = sim.now
        sim.cpu("tasks", sim.durations[rec.tid] / sim.model.task_speed)
        sim.task_end[rec.tid] = sim.now
        sim.cpu("task overhead", sim.model.task_cpu_s)
        return _Value(rec.tid)

    def dumps(self, key: Any, result: Any) -> Any:
        sim = self.ex.sim  # type: ignore[attr-defined]
        n = sim.sizes[result.tid]
        sim.cpu("serialize", n / sim.model.serialize_Bps)
        if n <= self.ex.inline_limit:  # small: a real pickle, as it may travel inline
            return [serialization.dumps(_RANDOM[: max(0, n - 40)])]
        return [SimBlob(n)]  # in pieces, as the executor's own serializer returns them

    def load_remote(self, tid: int, value: Any) -> Any:
        if value is None:
            return super().load_remote(tid, value)
        sim = self.ex.sim  # type: ignore[attr-defined]
        sim.read_bytes[tid] += len(value)
        sim.reads[tid] += 1
        sim.cpu("deserialize", len(value) / sim.model.deserialize_Bps)
        return _Value(tid)


class _SimExecutor(Executor):
    def __init__(self, sim: Simulation, **options: Any):
        super().__init__(sim.store, sim.invoke, **options)  # type: ignore[arg-type]
        self.sim = sim
        self.heartbeat = _NoHeartbeat()  # type: ignore[assignment]

    def new_run(self, inv: Invocation) -> _Run:
        return _SimRun(self, inv)


# -- Lambda ------------------------------------------------------------------------------------


class Simulation:
    """One job's simulated run (see the module docstring)."""

    def __init__(self, plan: Plan, keys_of: list[Hashable], profile: Profile, model: Model, **executor_options: Any):
        self.plan, self.model, self.keys_of = plan, model, keys_of
        self.executor_options = {"inline_limit": 64 * 1024, "cluster_threshold": 64 * 1024 * 1024}
        self.executor_options.update(executor_options)
        costs = [profile.cost(k) for k in keys_of]
        self.durations = [s for s, _ in costs]
        if model.cores:  # shared CPUs: a task's demand is its CPU seconds (its threads', other work's not)
            self.durations = [profile.cpu_seconds(k) for k in keys_of]
        self.sizes = [b for _, b in costs]
        self.now = 0.0
        self._heap: list[tuple[float, int, Any, Any]] = []
        self._seq = itertools.count()
        self.hub = greenlet.getcurrent()
        self.idle_envs: list[Executor] = []
        self.store = _SimStore(self, model.kvs_shards)
        self.keys = Keys("sim")
        self.ran: dict[int, int] = defaultdict(int)
        self.read_bytes: dict[int, int] = defaultdict(int)
        self.reads: dict[int, int] = defaultdict(int)
        self.stored: dict[int, int] = {}  # task id -> bytes of its output stored in the KVS
        self.stored_bytes = self.sent_bytes = self.received_bytes = 0
        self.event_bytes = 0  # bytes of Lambda events (invocations inline)
        self.spans: list[Span] = []
        self._current: dict[Any, Span] = {}
        self.idle_envs = [_SimExecutor(self, **self.executor_options) for _ in range(model.warm_pool)]
        self.envs = 0
        self.running = 0
        self.computing = 0  # executors running a task now (for Model.cores)
        self.peak = 0
        self.queue: deque[tuple[Span, Callable[[Executor], Any]]] = deque()  # accepted, not started
        self.decoded: dict[int, tuple[bytes, Schedule]] = {}  # id(blob) -> it, decoded once for all executors
        self.results = 0
        self.results_at = 0.0  # when the client has read and decoded the last result
        self.cpu_seconds = 0.0  # the executors' computing (``compute``), before contention
        self.server_seconds = 0.0  # the Redis servers' work, before contention
        self.task_start = array("d", bytes(8 * len(keys_of)))  # task id -> simulated start, end
        self.task_end = array("d", bytes(8 * len(keys_of)))
        self.errors: list[str] = []
        self._pump_at: float | None = None

    def schedule(self, blob: bytes) -> Schedule:
        """``wukong.executor.Schedule`` during a simulation: each executor still fetches a schedule
        and caches it (its round trips and bytes are simulated), but what it decodes is shared --
        a schedule is immutable, and a copy per simulated environment would not fit in memory."""
        got = self.decoded.get(id(blob))
        if got is None or got[0] is not blob:  # (the store keeps its blobs for the whole run)
            got = self.decoded[id(blob)] = (blob, _SimSchedule(blob, self.keys_of))
        return got[1]

    # -- the clock ------------------------------------------------------------------------
    def sleep_until(self, t: float) -> None:
        t = max(t, self.now)
        seq = next(self._seq)
        heap = self._heap
        if not heap or t < heap[0][0]:  # the next event is this wake-up: the hub would pop it and
            self.now = t  # switch straight back (a tie goes to the earlier entry: through the hub)
            return
        heapq.heappush(heap, (t, seq, greenlet.getcurrent(), None))
        self.hub.switch()

    def pause(self, what: str, seconds: float) -> None:
        if seconds > 0:
            self.sleep_until(self.now + seconds)
            self.charge(what, seconds)

    def cpu(self, what: str, seconds: float) -> None:
        """Compute for ``seconds``, charged to ``what``; slower while more executors than
        ``Model.cores`` compute."""
        t0 = self.now
        self.compute(seconds)
        self.charge(what, self.now - t0)

    def compute(self, seconds: float) -> None:
        """``cpu`` without charging the time (the caller charges it, with its waits)."""
        if seconds <= 0:
            return
        self.cpu_seconds += seconds
        seconds *= self.contention()
        self.computing += 1
        self.sleep_until(self.now + seconds)
        self.computing -= 1

    def contention(self) -> float:
        """How much slower one more computation runs now: more computing than ``Model.cores``
        share them (1 when each environment has its own CPUs)."""
        cores = self.model.cores
        return max(1.0, (self.computing + 1) / cores) if cores else 1.0

    def charge(self, what: str, seconds: float) -> None:
        span = self._current.get(greenlet.getcurrent())
        if span is not None:
            span.busy[what] += seconds

    def span(self) -> Span:
        return self._current[greenlet.getcurrent()]

    def at(self, t: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._heap, (t, next(self._seq), None, fn))

    def on_event(self, fields: dict) -> None:
        kind = fields.get("k")
        if kind in ("r", "R"):
            self.results += 1
            self.client_reads(kind, fields)
        elif kind == "e":
            from wukong.protocol import decode_error

            key, what, exc, tb = decode_error(fields["v"])
            self.errors.append(f"task {key!r} {what}: {exc!r}\n{tb}")

    def client_reads(self, kind: str, fields: dict) -> None:
        """The client reads a result's bytes (through the server and its link) and decodes it,
        once its event is in the stream: in the event, or, for a result too long for the
        stream (``"R"``), with one more round trip from the KVS (``Job.read_stored_result``).  The job is over for the
        client (its ``run_s``) when it has the last one, after the executors' ends."""
        m = self.model
        n = self.sizes[int(fields["t"])] if kind == "R" else len(fields["v"])
        fetch = n / m.shard_out_Bps + n / m.bandwidth_Bps + (m.redis_rtt_s if kind == "R" else 0.0)
        self.results_at = max(self.results_at, self.now) + fetch + n / m.deserialize_Bps

    # -- Lambda ---------------------------------------------------------------------------
    def allowed(self, t: float) -> int:
        m = self.model
        return min(m.concurrency, m.burst * (1 + int(t // m.burst_every_s)))

    def accept(self, t: float, span: Span, body: Callable[[Executor], Any]) -> None:
        """Lambda has accepted an event at ``t``: queue it."""

        def arrive() -> None:
            self.queue.append((span, body))
            self.pump()

        self.at(t, arrive)

    def pump(self) -> None:
        while self.queue and self.running < self.allowed(self.now):
            span, body = self.queue.popleft()
            self.running += 1
            self.peak = max(self.peak, self.running)
            if self.idle_envs:
                env, delay = self.idle_envs.pop(), self.model.warm_start_s
            else:
                env, delay = _SimExecutor(self, **self.executor_options), self.model.cold_start_s
                self.envs += 1
                span.cold = True
            span.start = self.now + delay
            g = greenlet.greenlet(self._runner(span, env, body), parent=self.hub)
            heapq.heappush(self._heap, (span.start, next(self._seq), g, None))
        if self.queue and self.running < self.model.concurrency:
            nxt = (self.now // self.model.burst_every_s + 1) * self.model.burst_every_s
            if self._pump_at != nxt:  # the burst limit rises then
                self._pump_at = nxt
                self.at(nxt, self.pump)

    def _runner(self, span: Span, env: Executor, body: Callable[[Executor], Any]) -> Callable[[], None]:
        def run() -> None:
            self._current[greenlet.getcurrent()] = span
            self.spans.append(span)
            self.cpu("start", self.model.invocation_cpu_s)
            body(env)
            span.end = self.now
            del self._current[greenlet.getcurrent()]
            self.running -= 1
            self.idle_envs.append(env)
            self.pump()

        return run

    # -- invoking -------------------------------------------------------------------------
    def invoke(self, batch: Any, job: str, invocations: list[Invocation]) -> Callable[[], None] | None:
        """The backend's ``invoke`` for executors (and the client): ``after`` sends them."""
        if not invocations:
            return None
        return lambda: self.send(invocations)

    def send(self, invocations: list[Invocation]) -> None:
        m = self.model
        n = len(invocations)
        b = invoker_tree.branching(n, m.invoke_latency_s, m.invoke_in_flight, m.invoke_cpu_s, m.tree_start_s)
        if b is None:
            self._send_direct([(inv, None) for inv in invocations])
            return
        groups = invoker_tree.split(list(invocations), b)
        self._send_direct([(None, g) for g in groups], b)

    def _send_direct(self, items: list[tuple[Invocation | None, list | None]], b: int = 0) -> None:
        m = self.model
        t0 = self.now
        queued_after = m.invoke_latency_s if m.queued_after_s is None else m.queued_after_s
        for i, (inv, group) in enumerate(items):
            sent = t0 + (i // m.invoke_in_flight) * m.invoke_latency_s + (i + 1) * m.invoke_cpu_s
            accepted = sent + queued_after
            if inv is not None:
                self.event_bytes += sum(len(v) for v in inv.inline.values())
                self.accept(accepted, Span(inv.id, "executor", accepted), self._executor_body(inv))
            else:
                assert group is not None
                self.accept(accepted, Span(f"tree:{i}", "tree", accepted), self._tree_body(group, b))
        k = len(items)
        self.pause("invoke", math.ceil(k / m.invoke_in_flight) * m.invoke_latency_s + k * m.invoke_cpu_s)

    def _executor_body(self, inv: Invocation) -> Callable[[Executor], Any]:
        return lambda env: env.run(inv)

    def _tree_body(self, group: list[Invocation], b: int) -> Callable[[Executor], None]:
        def node(env: Executor) -> None:
            # its start is its environment's (warm or cold) and ``invocation_cpu_s``, as any
            # invocation's: ``tree_start_s`` is the real code's estimate of that same start,
            # used (as the real code uses it) only to choose the branching
            if len(group) <= b:
                self._send_direct([(inv, None) for inv in group])
            else:
                self._send_direct([(None, g) for g in invoker_tree.split(group, b)], b)

        return node

    def release(self) -> None:
        """Drop the job's state (the store's keys, the environments, the decoded schedules, the
        per-task counts) once a report has taken what it needs: a simulation is a reference
        cycle, and the executor module keeps the last store used, so it would otherwise stay
        in memory until the collector's next full pass, or the next simulation."""
        self.store.data.clear()
        self.store.sets.clear()
        self.idle_envs.clear()
        self.decoded.clear()
        for counts in (self.ran, self.read_bytes, self.reads, self.stored):
            counts.clear()

    # -- the job ----------------------------------------------------------------------------
    def run(self) -> None:
        p, keys = self.plan, self.keys
        data = self.store.data
        data[keys.events] = b""
        data[keys.options] = json.dumps({"retries": 0, "task_timeout": None}).encode()
        for sid, blob in enumerate(p.schedules):
            data[keys.schedule(sid)] = blob
        starts = [Invocation(keys.job, s, 0, {}, ()) for s in p.leaf_schedules]
        client = greenlet.greenlet(lambda: self.send(starts), parent=self.hub)  # the client's launch
        heapq.heappush(self._heap, (0.0, next(self._seq), client, None))
        saved = executor_module.time, executor_module.Schedule
        executor_module.time = _SimTime(self)  # type: ignore[assignment]
        executor_module.Schedule = self.schedule  # type: ignore[assignment,misc]
        collecting = gc.isenabled()
        gc.disable()  # many live greenlets: the cyclic collector's passes would dominate
        try:
            while self._heap:
                t, _, g, fn = heapq.heappop(self._heap)
                self.now = t
                if fn is not None:
                    fn()
                else:
                    g.switch()
        finally:
            executor_module.time, executor_module.Schedule = saved  # type: ignore[misc]
            if collecting:
                gc.enable()

"""The wire: everything one wukong process says to another, in one place.

Whatever crosses a process boundary is defined here and nowhere else:

* **Key names** (``Keys``).  Every key of a job starts with ``wk:``.  The
  job's metadata keys (schedules, fan-in state, leases, invocations, the event
  stream, the cancel flag, registries) share the hash tag ``{<job>}``, so on a
  Redis Cluster every Lua call and multi-key pipeline of a job touches one
  slot; intermediate values (``wk:<job>:d:<tid>``) carry no tag and spread
  over every shard.  A local cluster's invocation queue and its workers'
  processing lists are ``wk:cluster:{<id>}:...`` (one slot, for BLMOVE) and
  live as long as the cluster.
* **Invocations** (``Invocation``, ``encode_invocation``/``decode_invocation``):
  what starts an executor.
* **The schedule blob**: ``pack_schedule``/``unpack_schedule`` frame one
  schedule's binary metadata (``VERSION``, ``OUTPUT``, ``TaskRecord``,
  ``Dependent``: encoded by ``wukong._core.encoding``, whose pure-Python
  oracle is ``wukong.reference.encoding``) with the pickle of its task bodies.
  **The plan blob** (``pack_plan``/``unpack_plan``): every schedule of a solo
  job (``wukong.durations``) in one key, ``Keys.plan``, or in its invocation
  (``Invocation.plan``, where the backend takes it): their metadata, then one
  pickle of all their bodies.  Its invocation's ``more`` is ``WHOLE_JOB``.
* **Events** on a job's stream, written by executors, backends and the client
  and read by the client: one ``emit_*`` function per kind, one ``parse_event``.
  Every event is written with ``NOMKSTREAM`` (except the stream's creation by
  ``emit_start``), so a late writer never recreates the stream of a job that
  has ended.

======  ====================  =================================================
kind    written by            fields
======  ====================  =================================================
``s``   client                the stream's first entry (creates it)
``c``   executor, backends    ``n`` tasks done since the last report by ``a``
                              (``<invocation id>@<attempt>``), ``i`` ids of
                              invocations made, ``x`` this one's id on exit;
                              from an executor also ``w`` its worker id, ``t``
                              the (task id, start, end, CPU seconds, bytes
                              fetched) of each task it ran since
                              (``pack_timings``), ``st`` bytes it stored and
                              ``fi`` its fan-in round trips; on exit ``iv``:
                              when the invocation was sent, picked up and
                              ended, and its waits on held outputs
                              (``pack_span``)
``w``   executor              ``t`` task id, ``v`` = ``encode_warnings`` of the
                              warnings it issued
``h``   executor              ``t`` task id: its result is held in the KVS at
                              ``Keys.held`` for the client's futures (not sent)
``d``   Lambda handler        ``ms`` duration and ``mem`` MB of one executor (cost)
``r``   executor              ``t`` task id, ``v`` its serialized result
``R``   executor              ``t`` task id; the result is in the KVS (too long)
``e``   anyone                ``v`` = ``encode_error(key, what, exc, traceback)``
======  ====================  =================================================

Emitters take anything with ``mds(command, *args)`` (``wukong.store.Batch``).
"""

from __future__ import annotations

import pickle
import struct
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

# -- key names -------------------------------------------------------------------------


class Keys:
    """The names of one job's keys (see the module docstring)."""

    __slots__ = ("job", "prefix", "data_prefix", "events", "cancel", "parts", "options", "attempts", "spills", "plan")

    def __init__(self, job: str):
        self.job = job
        p = f"wk:{{{job}}}:"  # hash tag: a job's metadata lives in one cluster slot
        self.prefix = p
        self.data_prefix = f"wk:{job}:d:"  # no tag: values spread over the KV store
        self.events = p + "ev"
        self.cancel = p + "cancel"
        self.parts = p + "parts"  # registry: parts of split values, proxy claims
        self.options = p + "opts"
        self.attempts = p + "attempts"
        self.spills = p + "invs"  # registry: invocation payloads too large for a Lambda event
        self.plan = p + "plan"  # a solo job's every schedule (``pack_plan``)

    def schedule(self, sid: int) -> str:
        return f"{self.prefix}s:{sid}"

    def fanin(self, tid: int) -> str:
        return f"{self.prefix}f:{tid}"

    def owner(self, tid: int) -> str:
        return f"{self.prefix}o:{tid}"

    def holds(self, tid: int) -> str:
        """Parents of fan-in ``tid`` that arrived keeping their values in memory (delayed I/O)."""
        return f"{self.prefix}h:{tid}"

    def lease(self, inv: str) -> str:
        return f"{self.prefix}l:{inv}"

    def invocation(self, inv: str) -> str:
        return f"{self.prefix}i:{inv}"

    def current(self, inv: str) -> str:
        """The task a re-run invocation is running (its executor may die of it)."""
        return f"{self.prefix}t:{inv}"

    def spill(self, token: str) -> str:
        return f"{self.prefix}inv:{token}"

    def proxy_claim(self, tid: int, token: str) -> str:
        return f"{self.prefix}px:{tid}:{token}"

    def data(self, tid: int) -> str:
        return f"{self.data_prefix}{tid}"

    @staticmethod
    def is_held(key: str) -> bool:
        """Whether ``key`` is a result held for the client's futures (``held``)."""
        return key.startswith("wk:h")

    def held(self, tid: int) -> str:
        """A result kept after the job for the client's futures (``persist``,
        ``compute``, ``submit``); released by the client, TTL'd as a safety net.
        Not under the job's data prefix: the job's cleanup leaves it alone."""
        return f"wk:h{self.job}:{tid}"

    def data_part(self, tid: int, i: int) -> str:
        return f"{self.data_prefix}{tid}:p{i}"

    @staticmethod
    def job_of(key: str | bytes) -> str:
        """The job a key belongs to: ``wk:{<job>}:...`` or ``wk:<job>:...``."""
        name = key.decode() if isinstance(key, bytes) else key
        job = name.split(":", 2)[1]
        return job[1:-1] if job.startswith("{") else job

    def part_names(self, key: str, n: int) -> list[str]:
        """The names of the ``n`` parts of the split value at ``key``."""
        return [f"{key}:p{i}" for i in range(n)]


def cluster_queue(cluster_id: str) -> str:
    """A local cluster's invocation queue (its workers block on it)."""
    return f"wk:cluster:{{{cluster_id}}}:q"  # hash tag: one slot with the processing lists (BLMOVE)


def worker_processing(cluster_id: str, wid: int) -> str:
    """What worker ``wid`` has taken from the queue and not finished."""
    return f"wk:cluster:{{{cluster_id}}}:q:w:{wid}"


# -- invocations -------------------------------------------------------------------------


# ``Invocation.more`` of a solo job's one invocation: it reads every schedule from the
# job's plan blob (``Keys.plan``, or ``Invocation.plan``) and runs from each leaf schedule in turn.
WHOLE_JOB = (-1,)


class Invocation(NamedTuple):
    """What an executor is started with."""

    job: str
    sched: int
    pos: int
    inline: dict[int, bytes]  # dependency id -> serialized value
    remote: tuple[int, ...]  # dependency ids to read from the KVS
    more: tuple[int, ...] = ()  # further leaf schedules to run from position 0 (grouped leaves), or WHOLE_JOB
    sent: float = 0.0  # when it was handed to a backend (``backends.base.launch``); seconds since the epoch
    attempt: int = 0  # deliveries before this one (``recovery.resend``)
    # A solo job's plan blob and options (JSON), carried here rather than read from the MDS
    # where the backend takes them (``Backend.inline_plan``): its executor runs the tasks
    # while its start round trip is under way (``executor._Run.start``).
    plan: bytes | None = None
    options: str | None = None

    @property
    def id(self) -> str:
        """Deterministic: each task is started by at most one invocation, so a
        repeated delivery or a re-run of the same invocation has the same id."""
        return f"{self.sched}.{self.pos}"

    def sent_at(self, sent: float) -> Invocation:
        """This invocation, stamped with when it is sent (a quarter of what ``_replace`` costs)."""
        job, sched, pos, inline, remote, more, _, attempt, plan, options = self
        return Invocation(job, sched, pos, inline, remote, more, sent, attempt, plan, options)


def encode_invocation(inv: Invocation) -> bytes:
    return pickle.dumps(tuple(inv), protocol=5)


def decode_invocation(payload: bytes) -> Invocation:
    return Invocation(*pickle.loads(payload))


# -- the schedule blob -----------------------------------------------------------------------

# A schedule's metadata is one native-endian int64 array, so an executor reads
# its chain without unpickling a Python object per task:
#
#     [VERSION, ntasks,
#      then per task on the chain, in order:
#        tid, flags, ndeps, dep ids..., ndependents,
#        then per dependent: cid, cid's ndeps, cid's schedule, cid's position]
#
# ``flags`` bit 0 (``OUTPUT``) marks a requested output.
VERSION = 0x574B0001  # "WK", format 1
OUTPUT = 1

_U64 = struct.Struct("<Q")


class Dependent(NamedTuple):
    tid: int
    ndeps: int
    sched: int
    pos: int


class TaskRecord(NamedTuple):
    tid: int
    flags: int
    deps: tuple[int, ...]
    dependents: tuple[Dependent, ...]


def pack_schedule(meta: bytes, bodies: bytes) -> bytes:
    """One stored schedule: its binary metadata, then the pickle of its task bodies."""
    return _U64.pack(len(meta)) + meta + bodies


def unpack_schedule(blob: bytes) -> tuple[bytes, memoryview]:
    """``pack_schedule``'s inverse: (metadata, task bodies' pickle)."""
    (n,) = _U64.unpack_from(blob)
    return blob[8 : 8 + n], memoryview(blob)[8 + n :]


def pack_plan(metas: list[bytes], bodies: bytes) -> bytes:
    """Every schedule of a job in one blob: the schedule count, each one's metadata
    length, the metadata, then one pickle of the list of every schedule's bodies."""
    head = struct.pack(f"<{len(metas) + 1}Q", len(metas), *map(len, metas))
    return b"".join((head, *metas, bodies))


def unpack_plan(blob: bytes) -> tuple[list[bytes], memoryview]:
    """``pack_plan``'s inverse: (each schedule's metadata, the bodies' pickle)."""
    (n,) = _U64.unpack_from(blob)
    sizes = struct.unpack_from(f"<{n}Q", blob, 8)
    metas, at = [], 8 * (n + 1)
    for size in sizes:
        metas.append(blob[at : at + size])
        at += size
    return metas, memoryview(blob)[at:]


# -- events -----------------------------------------------------------------------------------


class _Commands(Protocol):
    def mds(self, command: str, *args: Any) -> Any: ...


def _xadd(batch: _Commands, keys: Keys, fields: dict) -> None:
    # NOMKSTREAM: after the job ended (a late duplicate, a bounded drain) write nothing
    batch.mds("xadd", keys.events, fields, "*", None, True, True)


def emit_event(batch: _Commands, keys: Keys, fields: dict) -> None:
    """Add an event whose fields were built apart (``counts_fields``, ``duration_fields``)."""
    _xadd(batch, keys, fields)


def emit_start(batch: _Commands, keys: Keys, ttl: int) -> None:
    """Create the job's stream: executors and leases see the job is alive."""
    batch.mds("xadd", keys.events, {"k": "s"})
    batch.mds("expire", keys.events, ttl)


def counts_fields(
    done: int,
    invoked: Any = (),
    exited: str = "",
    attempt: str = "",
    timings: bytes = b"",
    worker: str = "",
    stats: tuple[int, int, int] = (0, 0, 0),
    span: bytes = b"",
) -> dict[str, Any]:
    """The fields of a counts event (sent by ``emit_event``): ``done`` tasks finished
    by ``attempt``; invocations made (their ids); an invocation's exit.

    ``attempt`` (``<invocation id>@<token>``) lets the client count a re-run
    invocation's tasks once: it keeps, per invocation, its busiest attempt.
    An executor adds its worker id, the packed timings of the tasks it ran
    since its last report (``pack_timings``: with each task's CPU seconds and the
    bytes its inputs were read from the KVS) and, in ``stats``, the bytes it stored, its fan-in
    round trips and the fan-ins it ran with a value it held instead of storing
    (delayed I/O) since then; on its exit, ``span`` (``pack_span``).
    """
    fields: dict[str, Any] = {"k": "c", "n": done, "i": ",".join(invoked), "x": exited, "a": attempt}
    if timings or any(stats) or span:
        fields.update(w=worker, t=timings, st=stats[0], fi=stats[1], hf=stats[2])
    if span:
        fields["iv"] = span
    return fields


def emit_warnings(batch: _Commands, keys: Keys, tid: int, caught: list) -> None:
    """Task ``tid`` issued the ``warnings.WarningMessage``s ``caught``: the client re-issues them."""
    _xadd(batch, keys, {"k": "w", "t": tid, "v": encode_warnings(caught)})


def encode_warnings(caught: list) -> bytes:
    """``(message text, category, filename, lineno)`` each; the category by cloudpickle
    (a ``__main__`` class travels by value), ``None`` when it cannot be pickled."""
    import cloudpickle

    out = []
    for w in caught:
        try:
            category = cloudpickle.dumps(w.category, protocol=5)
        except Exception:
            category = None
        out.append((str(w.message), category, w.filename, w.lineno))
    return pickle.dumps(out, protocol=5)


def decode_warnings(payload: bytes) -> list[tuple[str, type[Warning], str, int]]:
    out = []
    for message, blob, filename, lineno in pickle.loads(payload):
        try:
            category = pickle.loads(blob) if blob else UserWarning
        except Exception:
            category = UserWarning
        out.append((message, category, filename, lineno))
    return out


# task id, start, end (seconds since the epoch), CPU seconds of the thread that ran it,
# bytes of its inputs read from the KVS
_TIMING = struct.Struct("<qdddq")
Timing = tuple[int, float, float, float, int]


def pack_timings(timings: list[Timing]) -> bytes:
    return b"".join(_TIMING.pack(*t) for t in timings)


def unpack_timings(blob: bytes) -> list[Timing]:
    return list(_TIMING.iter_unpack(blob))


def pack_span(sent: float, picked: float, ended: float, waits: list[float]) -> bytes:
    """One invocation's life on its executor, seconds since the epoch: when it was sent
    (0.0: unknown), picked up and ended, then the (start, end) of each sleep until a
    held output's next ask, flat (``waits``: start, end, start, end, ...)."""
    return struct.pack(f"<{3 + len(waits)}d", sent, picked, ended, *waits)


def unpack_span(blob: bytes) -> tuple[float, float, float, list[tuple[float, float]]]:
    v = struct.unpack(f"<{len(blob) // 8}d", blob)
    return v[0], v[1], v[2], list(zip(v[3::2], v[4::2], strict=True))


def emit_held(batch: _Commands, keys: Keys, tid: int) -> None:
    """The result of ``tid`` is held at ``keys.held(tid)`` (the write goes first in the same batch)."""
    _xadd(batch, keys, {"k": "h", "t": tid})


def emit_duration(batch: _Commands, keys: Keys, ms: float, memory_mb: int) -> None:
    _xadd(batch, keys, duration_fields(ms, memory_mb))


def duration_fields(ms: float, memory_mb: int) -> dict[str, Any]:
    """An executor's run time and memory (lambda backend), for cost (``wukong.cost``)."""
    return {"k": "d", "ms": f"{ms:.3f}", "mem": memory_mb}


def emit_result(batch: _Commands, keys: Keys, tid: int, value: bytes) -> None:
    _xadd(batch, keys, {"k": "r", "t": tid, "v": value})


def emit_stored_result(batch: _Commands, keys: Keys, tid: int) -> None:
    """The result of ``tid`` is too long for the stream: read it at ``keys.data(tid)``."""
    _xadd(batch, keys, {"k": "R", "t": tid})


def emit_error(batch: _Commands, keys: Keys, key: Any, what: str, exc: BaseException | None, tb: str) -> None:
    """A task (``key``) or the job (``key=None``) failed: ``what`` happened, ``exc``, traceback ``tb``."""
    _xadd(batch, keys, {"k": "e", "v": encode_error(key, what, exc, tb)})


def encode_error(key: Any, what: str, exc: BaseException | None, tb: str) -> bytes:
    """A failure, for the client.  The exception is pickled on its own with
    cloudpickle, so a class of the user's ``__main__`` (or a notebook) travels
    by value and is re-created as that very class; when the exception itself
    cannot be pickled (its args), its type and message are sent instead."""
    import cloudpickle  # light `import wukong`: only executors and backends encode errors

    exc_blob = type_blob = b""
    name = message = ""
    if exc is not None:
        name, message = f"{type(exc).__module__}.{type(exc).__qualname__}", _str(exc)
        try:
            exc_blob = cloudpickle.dumps(exc, protocol=5)
        except Exception:
            try:
                type_blob = cloudpickle.dumps(type(exc), protocol=5)
            except Exception:  # the type's name is in the traceback
                pass
    return pickle.dumps((key, what, exc_blob, type_blob, name, message, tb), protocol=5)


def decode_error(payload: bytes) -> tuple[Any, str, BaseException | None, str]:
    """``(key, what, exception, traceback)``; never fails on the exception: one
    that cannot be unpickled here comes back as ``None``, its text in ``what``."""
    key, what, exc_blob, type_blob, name, message, tb = pickle.loads(payload)
    if exc_blob:
        try:
            return key, what, pickle.loads(exc_blob), tb
        except Exception as e:
            why = f"the exception could not be unpickled here: {type(e).__name__}: {_str(e)}"
            return key, f"{what} {name}: {message} ({why})", None, tb
    if type_blob:
        try:
            typ = pickle.loads(type_blob)
            exc = typ.__new__(typ)  # its args could not be pickled: keep the type, carry the message
            exc.args = (message,)
            return key, what, exc, tb
        except Exception:
            pass
    return key, f"{what} {name}: {message}" if name else what, None, tb


def _str(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:
        return "<str() failed>"


@dataclass
class Event:
    """One entry of a job's stream, parsed (see the table in the module docstring)."""

    kind: str
    done: int = 0
    invoked: tuple[str, ...] = ()
    exited: str = ""
    attempt: str = ""
    tid: int = -1
    value: bytes = b""
    ms: float = 0.0
    memory_mb: int = 0
    worker: str = ""
    timings: list[Timing] = field(default_factory=list)  # tid, start, end, CPU s, bytes fetched
    stats: tuple[int, int, int] = (0, 0, 0)  # bytes stored, fan-in round trips, fan-ins run with a held value
    span: tuple[float, float, float, list[tuple[float, float]]] | None = None  # on exit: ``unpack_span``


def parse_event(f: dict[bytes, bytes]) -> Event:
    kind = f[b"k"].decode()
    if kind == "c":
        invoked = tuple(f[b"i"].decode().split(",")) if f[b"i"] else ()
        attempt = f[b"a"].decode() if b"a" in f else ""
        ev = Event(kind, done=int(f[b"n"]), invoked=invoked, exited=f[b"x"].decode(), attempt=attempt)
        if b"w" in f:
            ev.worker = f[b"w"].decode()
            ev.timings = unpack_timings(f[b"t"])
            ev.stats = (int(f[b"st"]), int(f[b"fi"]), int(f[b"hf"]))
            if b"iv" in f:
                ev.span = unpack_span(f[b"iv"])
        return ev
    if kind == "r":
        return Event(kind, tid=int(f[b"t"]), value=f[b"v"])
    if kind == "w":
        return Event(kind, tid=int(f[b"t"]), value=f[b"v"])
    if kind in ("R", "h"):
        return Event(kind, tid=int(f[b"t"]))
    if kind == "e":
        return Event(kind, value=f[b"v"])
    if kind == "d":
        return Event(kind, ms=float(f[b"ms"]), memory_mb=int(f[b"mem"]))
    return Event(kind)

"""How values and task bodies become bytes.

Data (task outputs) uses pickle protocol 5 with out-of-band buffers, so a
numpy array's memory is never copied into the pickle stream; each buffer is
framed and lz4-compressed when that pays (``wukong_native.compress`` decides
with a cheap probe) -- or framed raw, with no copy and no probe, for values
that stay on this machine (``compress=False``).  Small plain objects skip the framing: one tag byte and
the pickle.

    small:  b"p" + pickle
    framed: b"F" + u32 nframes + u64 length * nframes + frames
            frame 0 is the pickle stream, frames 1.. the out-of-band buffers,
            each after zero padding that puts its data at a multiple of 64

Task bodies use the C pickler, or ``cloudpickle`` when they hold lambdas,
locals or functions defined in ``__main__`` (sent by value).  A legacy tuple
task travels as it was written (``LegacyTask``) and becomes a Dask ``Task``
where it runs.
"""

from __future__ import annotations

import io
import pickle
import struct
import types
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import cloudpickle
from dask._task_spec import _execute_subgraph
from dask.task_spec import Alias, DataNode, GraphNode, Task, TaskRef
from wukong_native import HEADER_LEN, TAG_RAW, compress, decompress

SMALL = 1024  # below this a value with no buffers is not framed
REUSE_MAX_BYTES = 8192  # a body pickler whose last pickle was longer is not reused (``BodyPickler``)
ALIGN = 64  # buffer data offsets within a value
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


def dumps(obj: Any, compress: bool = True) -> bytes:
    """Serialize a task output; raises whatever pickling raises."""
    return b"".join(dumps_parts(obj, compress))


def dumps_parts(obj: Any, compress: bool = True) -> list[bytes | memoryview]:
    """``dumps(obj)`` as pieces to be written one after the other (``writev``).

    With ``compress=False`` the buffers are framed raw and the pieces are the
    buffers' own memory: the value's one copy is the one made where it is
    written.  Floats rarely compress, and a value that stays on this machine
    is cheaper copied than compressed.
    """
    buffers: list[pickle.PickleBuffer] = []
    try:
        stream = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    except (pickle.PicklingError, AttributeError, TypeError):
        buffers.clear()
        stream = cloudpickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    if not buffers and len(stream) < SMALL:
        return [b"p" + stream]
    frame = _compressed if compress else _raw
    frames = [frame(stream), *(frame(b.raw()) for b in buffers)]
    lengths = [sum(len(p) for p in f) for f in frames]
    header = b"F" + _U32.pack(len(frames)) + struct.pack(f"<{len(frames)}Q", *lengths)
    parts = [header, *frames[0]]
    offset = len(header) + lengths[0]
    for pieces, n in zip(frames[1:], lengths[1:], strict=True):
        pad = _padding(offset)
        parts += [bytes(pad), *pieces]
        offset += pad + n
    return parts


def _compressed(data: bytes | memoryview) -> list[bytes | memoryview]:
    return [compress(data)]


def _raw(data: bytes | memoryview) -> list[bytes | memoryview]:
    """A raw frame (what ``compress`` makes of incompressible data) without copying ``data``."""
    return [bytes([TAG_RAW]) + _U64.pack(len(data)), data]


def _padding(offset: int) -> int:
    """Zero bytes before a buffer frame, so its data starts 64-byte aligned
    (from a page-aligned mapping, arrays used in place are aligned)."""
    return -(offset + HEADER_LEN) % ALIGN


def loads(data: bytes | memoryview) -> Any:
    """Inverse of ``dumps``; out-of-band buffers come back writable."""
    mv = memoryview(data)
    tag = mv[:1].tobytes()
    if tag == b"p":
        return pickle.loads(mv[1:])
    if tag != b"F":
        raise ValueError(f"not a wukong value (tag {tag!r})")
    (n,) = _U32.unpack_from(mv, 1)
    lengths = struct.unpack_from(f"<{n}Q", mv, 5)
    offset = 5 + 8 * n
    stream = decompress(mv[offset : offset + lengths[0]])
    offset += lengths[0]
    buffers = []
    for size in lengths[1:]:
        offset += _padding(offset)
        buffers.append(_writable(mv[offset : offset + size]))
        offset += size
    return pickle.loads(stream, buffers=buffers)


def _writable(frame: memoryview) -> bytearray | memoryview:
    """A buffer's frame as writable memory (tasks may modify their input arrays).

    A raw frame in writable memory (a copy-on-write mapping of shared memory)
    is used in place; one in a read-only ``bytes`` is copied once.
    """
    if len(frame) >= HEADER_LEN and frame[0] == TAG_RAW:
        (n,) = struct.unpack_from("<Q", frame, 1)
        if n == len(frame) - HEADER_LEN:
            return frame[HEADER_LEN:] if not frame.readonly else bytearray(frame[HEADER_LEN:])
    return bytearray(decompress(frame))


class LegacyTask:
    """A legacy tuple task (``(func, *args)``, or a literal) as executors receive it.

    Converted to task spec where it runs, by Dask's own ``convert_legacy_task``,
    against the keys of its dependencies: the only keys of the graph its
    arguments name (``wukong.graph.LegacyGraph`` found them the way that
    conversion does), so the ``Task`` is the one the client would have built --
    without the client building and pickling a ``Task`` per task.
    """

    __slots__ = ("key", "task")

    def __init__(self, key: Any, task: Any):
        self.key = key
        self.task = task

    def __call__(self, values: dict) -> Any:
        from dask._task_spec import GraphNode, convert_legacy_task

        node = convert_legacy_task(self.key, self.task, values)
        return node(values) if isinstance(node, GraphNode) else node

    def __reduce__(self) -> tuple:
        return LegacyTask, (self.key, self.task)


def dumps_function(obj: Any) -> bytes:
    """Serialize task bodies (``BodyPickler``, for one object)."""
    return BodyPickler().dumps(obj)


class BodyPickler:
    """Serializes task bodies, one ``dumps`` per schedule, with one pickler for a whole plan.

    What many schedules share is pickled once per plan: a callable other than
    a plain function or class (a ``functools.partial``, a toolz ``curry``
    carrying its function's docstring, a ``Compose``) becomes a payload that
    every schedule's pickle carries (``pickle.loads(payload)``); functions and
    classes the workers cannot import (``__main__``'s, lambdas, locals) are
    such payloads too, made by cloudpickle.  A graph of a million tasks calling
    one curried or ``__main__`` function pays for pickling it once.  Objects of
    the ``per_task`` types (the graph's nodes) are never cached; a Dask
    ``Task`` travels as its definition (``rebuild_task``), a body's own one as
    a ``SimpleTask`` where it can be one (``dumps``'s ``nodes``).  Everything
    goes through the C pickler (cloudpickle decides how to pickle every
    object in Python, about three times slower on task bodies); an object it
    refuses is pickled whole by cloudpickle.  Each ``dumps`` is a complete
    pickle, sharing the plan's cache of payloads.  One pickler serves the
    next ``dumps`` with its memo cleared (a fresh one costs a quarter of a
    small schedule's pickling), unless its last pickle was over
    ``REUSE_MAX_BYTES``: ``clear_memo`` costs as much as the largest memo so
    far, on every call (120 µs a schedule after one schedule with 20,000
    dependents), so a large pickle's pickler is dropped.
    """

    def __init__(self, per_task: tuple[type, ...] = ()) -> None:
        self._cache: dict = {}
        self._per_task = per_task
        self._pickler: tuple[_BodyPickler, io.BytesIO] | None = None  # its memo cleared, for the next dumps

    def dumps(self, obj: Any, nodes: Iterable[Any] = ()) -> bytes:
        """``obj``'s pickle; ``nodes``: the task bodies' own nodes in it (each ``Task`` of
        them that can be goes as a ``SimpleTask``)."""
        pickler, buf = self._pickler or self._new()
        self._pickler = None  # until this dumps ends well, with a small pickle
        pickler.bodies = {id(n) for n in nodes}
        try:
            pickler.dump(obj)
        except (pickle.PicklingError, AttributeError, TypeError):
            return cloudpickle.dumps(obj, protocol=5)
        finally:
            pickler.bodies = set()
        data = buf.getvalue()
        if len(data) <= REUSE_MAX_BYTES:
            buf.seek(0)
            buf.truncate()
            pickler.clear_memo()
            self._pickler = pickler, buf
        return data

    def _new(self) -> tuple[_BodyPickler, io.BytesIO]:
        buf = io.BytesIO()
        return _BodyPickler(buf, self._cache, self._per_task), buf


class _BodyPickler(pickle.Pickler):
    def __init__(self, file: io.BytesIO, cache: dict, per_task: tuple[type, ...], top: Any = None):
        super().__init__(file, protocol=5)
        self.cache = cache  # id -> (object, None: pickled in place, or its payload)
        self.per_task = per_task
        self.top = top  # the object a payload is being made of
        self.bodies: set[int] = set()  # ids of the task bodies' own nodes (``BodyPickler.dumps``)

    def reducer_override(self, obj: Any) -> Any:
        kind = type(obj)
        if kind is Task:  # what Dask's own pickling sends, through Python: every slot, derived ones too
            if id(obj) in self.bodies and not obj.kwargs:  # a body's own node, not one inside an argument
                simple = _simple(obj.args)
                if simple is not None:
                    func = run_subgraph if obj.func is _execute_subgraph else obj.func
                    return SimpleTask, (obj.key, func, *simple)
            return rebuild_task, (obj.key, obj.func, obj.args, obj.kwargs, obj.data_producer)
        if kind is TaskRef:  # its own ``__reduce__``, without the call
            return TaskRef, (obj.key,)
        if not callable(obj) or obj is self.top or isinstance(obj, self.per_task):
            return NotImplemented
        hit = self.cache.get(id(obj))
        if hit is None:  # the object is kept in the entry, so its id is not reused
            self.cache[id(obj)] = (obj, None)  # a reference back to it, while its payload is made, goes in place
            hit = self.cache[id(obj)] = (obj, self._payload(obj))
        return NotImplemented if hit[1] is None else (pickle.loads, (hit[1],))

    def _payload(self, obj: Any) -> bytes | None:
        if isinstance(obj, (types.FunctionType, type)):
            return None if _importable(obj) else cloudpickle.dumps(obj, protocol=5)
        if isinstance(obj, types.BuiltinFunctionType):
            return None  # a name: nothing to save
        buf = io.BytesIO()
        _BodyPickler(buf, self.cache, self.per_task, obj).dump(obj)
        return buf.getvalue()


class SimpleTask(GraphNode):
    """A Dask ``Task`` whose arguments are positional and none of them a graph node but an
    ``Alias`` (a reference by another name) or a ``DataNode`` (a value), as
    it travels (``BodyPickler``) and runs: called as the ``Task`` is (``Task.__call__``:
    each reference replaced by its value, any other argument passed as it is), without
    the ``Task`` and ``TaskRef`` objects an executor would build to run it.  ``refs``
    are the keys of the references; ``args`` the arguments with ``None`` at ``pos``, where
    the references go, in order (``args`` ``None``: every argument is a reference).

    A tree reduction's 1,023 tasks unpickled in 1.3-1.6 ms as ``Task``s (three objects
    and their constructors each), in 0.45 ms as these.  Most of Dask's array, bag and
    delayed tasks are of this kind (a fused task too: its inner graph is an argument, run by
    ``run_subgraph``).

    A graph node itself, so that where the pickle's memo puts one in place of the
    same ``Task`` inside another task's argument (one object as a body and as an
    inlined argument), Dask's code evaluates it there as it would that ``Task``.
    """

    __slots__ = ("func", "refs", "args", "pos")  # and ``GraphNode``'s key
    __hash__ = object.__hash__

    def __init__(self, key: Any, func: Any, refs: tuple, args: tuple | None = None, pos: tuple = ()):
        self.key, self.func, self.refs, self.args, self.pos = key, func, refs, args, pos

    def __call__(self, values: Any = ()) -> Any:
        if self.args is None:
            return self.func(*[values[k] for k in self.refs])
        if not self.refs:
            return self.func(*self.args)
        args = list(self.args)
        for i, k in zip(self.pos, self.refs, strict=True):
            args[i] = values[k]
        return self.func(*args)

    @property
    def dependencies(self) -> frozenset:  # as a ``Task``'s (``GraphNode``'s is a slot set at init)
        return frozenset(self.refs)

    def __reduce__(self) -> tuple:
        return SimpleTask, (self.key, self.func, self.refs, self.args, self.pos)

    def __repr__(self) -> str:
        return f"<SimpleTask {self.key!r} {getattr(self.func, '__name__', self.func)!s}>"


def _simple(args: tuple) -> tuple | None:
    """``SimpleTask``'s (refs, args, pos) for a ``Task``'s ``args``; ``None`` when one is a
    graph node other than an ``Alias`` (a reference) or a ``DataNode`` (its value)."""
    refs, pos, out = [], [], None
    for i, a in enumerate(args):
        if type(a) is TaskRef or isinstance(a, TaskRef):
            refs.append(a.key)
            pos.append(i)
        elif type(a) is Alias:  # evaluates to its target's value (``Alias.__call__``)
            refs.append(a.target)
            pos.append(i)
        elif type(a) is DataNode:  # evaluates to its value
            if out is None:
                out = list(args)
            out[i] = a.value
        elif isinstance(a, GraphNode):
            return None
    if len(refs) == len(args):
        return tuple(refs), None, ()
    if out is None:
        if not refs:
            return (), args, ()
        out = list(args)
    for i in pos:
        out[i] = None
    return tuple(refs), tuple(out), tuple(pos)


def run_subgraph(inner: Mapping, outkey: Any, inkeys: Sequence, *inputs: Any) -> Any:
    """A fused task's subgraph run as Dask's ``_execute_subgraph`` runs it, in an order
    found without ``dask.order`` (what a body's fused task calls, ``BodyPickler``).

    ``_execute_subgraph`` orders the inner tasks with ``dask.order`` on every call,
    which costs more than the tasks of most fused chains: the 73 fused tasks of a
    Cholesky of 100² (25² blocks) run in 3.1 ms this way, in 9.2 ms with it
    (``/tmp/s11_count.py``).  Here they run depth first, each after its inputs
    (any such order is one Dask's may be); ``inkeys[i]`` names ``inputs[i]``,
    and a value is let go after its last use, as there.
    """
    values = dict(zip(inkeys, inputs, strict=True))
    order = _depth_first(inner, values)
    uses: dict = {}
    for key in order:
        for dep in inner[key].dependencies:
            uses[dep] = uses.get(dep, 0) + 1
    for key in order:
        node = inner[key]
        values[key] = node(values)
        for dep in node.dependencies:
            left = uses[dep] = uses[dep] - 1
            if not left and dep != outkey:
                del values[dep]
    return values[outkey]


def _depth_first(inner: Mapping, given: Mapping) -> list:
    """The keys of ``inner`` but those ``given``, each after the inner keys it depends on."""
    order: list = []
    state: dict = {}  # key -> 1: its inputs are being ordered (an ancestor on the path), 2: ordered
    for root in inner:
        if root in state or root in given:
            continue
        stack = [root]
        while stack:
            key = stack[-1]
            seen = state.get(key)
            if seen == 2:
                stack.pop()
            elif seen == 1:
                state[key] = 2
                order.append(key)
                stack.pop()
            else:
                state[key] = 1
                for dep in inner[key].dependencies:
                    if dep in inner and dep not in given:
                        if state.get(dep) == 1:
                            raise ValueError(f"the fused task's subgraph has a cycle through {dep!r}")
                        if dep not in state:
                            stack.append(dep)
    return order


def rebuild_task(key: Any, func: Any, args: tuple, kwargs: dict, data_producer: bool) -> Task:
    """A Dask ``Task`` where it runs, from what defines it (``BodyPickler``).

    Dask pickles a ``Task`` as all of its slots, in Python: its dependencies
    again (they are in its arguments), its cached token and repr.  Made
    again from its definition it is the same task, in fewer bytes, pickled
    in a third less time.
    """
    return Task(key, func, *args, _data_producer=data_producer, **kwargs)


def _importable(obj: Any) -> bool:
    """True when cloudpickle itself would pickle ``obj`` by reference."""
    decide = getattr(cloudpickle.cloudpickle, "_should_pickle_by_reference", None)
    if decide is None:  # a cloudpickle without it: let cloudpickle do everything
        return False
    try:
        return bool(decide(obj))
    except Exception:
        return False


loads_function = pickle.loads

"""Task outputs survive ``dumps``/``loads``: same value, arrays writable, large buffers framed."""

import operator
import weakref
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from wukong import serialization


def roundtrip(x):
    return serialization.loads(serialization.dumps(x))


@pytest.mark.parametrize(
    "array",
    [
        np.random.default_rng(0).random((300, 300)),  # incompressible: stored raw
        np.zeros((400, 400)),  # compressible: lz4
        np.arange(100_000, dtype=np.int32),
        np.asfortranarray(np.random.default_rng(1).random((200, 100))),
        np.array([], dtype=np.float64),
    ],
)
def test_arrays_come_back_equal_and_writable(array):
    back = roundtrip(array)
    np.testing.assert_array_equal(back, array)
    assert back.dtype == array.dtype and back.flags.writeable
    back[...] = 0  # tasks may modify their inputs in place


@settings(max_examples=50, deadline=None)
@given(hnp.arrays(hnp.scalar_dtypes(), hnp.array_shapes(max_dims=3, max_side=40)))
def test_any_dtype_round_trips(array):
    np.testing.assert_array_equal(roundtrip(array), array)


@given(
    st.recursive(
        st.none() | st.integers() | st.text() | st.binary(), lambda c: st.lists(c) | st.dictionaries(st.text(), c)
    )
)
def test_plain_objects_round_trip(value):
    assert roundtrip(value) == value


def test_small_values_are_not_framed():
    assert serialization.dumps(42)[:1] == b"p"


def test_garbage_is_a_clear_error():
    with pytest.raises(ValueError, match="not a wukong value"):
        serialization.loads(b"?garbage")


def test_uncompressed_parts_are_the_arrays_own_memory():
    array = np.random.default_rng(2).random((300, 300))
    parts = serialization.dumps_parts(array, compress=False)
    assert any(isinstance(p, memoryview) and p.obj is not None and p.nbytes == array.nbytes for p in parts)
    back = serialization.loads(b"".join(parts))
    np.testing.assert_array_equal(back, array)
    assert b"".join(parts) != serialization.dumps(np.zeros((300, 300)), compress=False)


def test_uncompressed_and_compressed_values_read_the_same():
    array = np.zeros((400, 400))
    raw, packed = serialization.dumps(array, compress=False), serialization.dumps(array)
    assert len(raw) > array.nbytes > len(packed)
    np.testing.assert_array_equal(serialization.loads(raw), serialization.loads(packed))


def _main_function() -> Any:
    """A function defined in ``__main__``: workers cannot import it, it must go by value."""
    ns: dict = {"__name__": "__main__"}
    exec("def double(x):\n    return 2 * x\n", ns)
    return ns["double"]


def test_by_value_functions_are_cloudpickled_once_per_plan(monkeypatch):
    calls = []
    real = serialization.cloudpickle.dumps
    monkeypatch.setattr(serialization.cloudpickle, "dumps", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    double = _main_function()
    pickler = serialization.BodyPickler()
    blobs = [pickler.dumps([(double, i), (double, -i)]) for i in range(3)]
    assert calls == [double]
    for i, blob in enumerate(blobs):
        (f, a), (g, b) = serialization.loads_function(blob)
        assert f is g and (f(a), g(b)) == (2 * i, -2 * i)


def test_each_body_pickle_loads_alone_where_main_functions_are_unknown():
    import subprocess
    import sys

    pickler = serialization.BodyPickler()
    double = _main_function()
    blobs = [pickler.dumps((double, operator.add, i)) for i in range(2)]
    code = "import pickle, sys; f, add, i = pickle.loads(sys.stdin.buffer.read()); print(add(f(i), 1))"
    for i, blob in enumerate(blobs):
        out = subprocess.run([sys.executable, "-c", code], input=blob, capture_output=True, timeout=60, check=True)
        assert out.stdout.decode().strip() == str(2 * i + 1)


def test_local_classes_and_lambdas_go_by_value():
    class Local:
        def __reduce__(self):
            return (Local, ())

    pickler = serialization.BodyPickler()
    body = serialization.loads_function(pickler.dumps([Local(), (lambda: 3)]))
    assert body[1]() == 3 and type(body[0]).__qualname__.endswith("Local")
    assert serialization.loads_function(pickler.dumps((operator.add, 1, 2)))[0] is operator.add


def test_bodies_the_c_pickler_refuses_go_whole_through_cloudpickle():
    pickler = serialization.BodyPickler()
    assert serialization.loads_function(pickler.dumps([np, 1])) == [np, 1]  # a module: cloudpickle only
    assert serialization.loads_function(pickler.dumps([2])) == [2]  # the pickler is still usable


class _Counted:
    """A callable that counts how often it is pickled."""

    reduced = 0

    def __init__(self, n: int):
        self.n = n

    def __call__(self, x: int) -> int:
        return x + self.n

    def __reduce__(self):
        type(self).reduced += 1
        return (_Counted, (self.n,))


def test_shared_callables_are_pickled_once_per_plan_and_keep_identity_within_a_schedule():
    shared = _Counted(5)
    _Counted.reduced = 0
    pickler = serialization.BodyPickler()
    blobs = [pickler.dumps([(shared, i), (shared, i + 1)]) for i in range(4)]
    assert _Counted.reduced == 1
    for i, blob in enumerate(blobs):
        (f, a), (g, b) = serialization.loads_function(blob)
        assert f is g and (f(a), g(b)) == (i + 5, i + 6)


def test_objects_of_the_per_task_types_are_never_cached():
    pickler = serialization.BodyPickler(per_task=(_Counted,))
    _Counted.reduced = 0
    for _ in range(3):
        pickler.dumps(_Counted(1))
    assert _Counted.reduced == 3
    assert not any(isinstance(obj, _Counted) for obj, _ in pickler._cache.values())


def test_a_callable_that_refers_to_itself_round_trips():
    import functools

    holder: list = []
    f = functools.partial(operator.getitem, holder)
    holder.append(f)
    pickler = serialization.BodyPickler()
    g = serialization.loads_function(pickler.dumps([f, f]))
    assert g[0] is g[1] and g[0](0) is g[0]


def test_each_body_is_pickled_with_a_fresh_memo():
    """After one body with many objects, a small body's pickle is as small as ever
    (no memo entries carried over) -- and the pickler that made the large one is not
    reused: clearing its memo would cost as much as the largest memo so far, on every call."""
    pickler = serialization.BodyPickler()
    shared = "a string both bodies hold"
    small = pickler.dumps((operator.add, shared, 2))
    assert pickler._pickler is not None  # kept for the next body
    assert pickler.dumps((operator.add, shared, 2)) == small
    pickler.dumps([str(i) for i in range(20_000)])
    assert pickler._pickler is None
    assert pickler.dumps((operator.add, shared, 2)) == small


def test_a_body_pickler_is_usable_after_a_body_it_refused():
    pickler = serialization.BodyPickler()
    small = pickler.dumps((operator.add, 1, 2))
    assert serialization.loads_function(pickler.dumps([np, 1])) == [np, 1]  # refused: cloudpickle
    assert pickler.dumps((operator.add, 1, 2)) == small


def test_a_dask_task_travels_as_its_definition():
    """Dependencies, token and repr are made again where the task runs, not sent."""
    from dask.task_spec import List, Task, TaskRef

    tasks = [
        Task("nested", sum, List(TaskRef("a"), 1)),  # a graph node among its arguments
        Task("kw", dict, x=TaskRef("b"), y=2),
    ]
    for t in tasks:
        repr(t), hash(t)  # cache the repr and token Dask's own pickling would carry
    blob = serialization.BodyPickler().dumps(tasks)
    assert b"<Task" not in blob
    nested, made = serialization.loads_function(blob)
    assert type(nested) is Task and nested.key == "nested" and nested.dependencies == {"a"}
    assert made.dependencies == {"b"} and not made.data_producer
    assert nested({"a": 2}) == 3 and made({"b": 1}) == {"x": 1, "y": 2}


def test_a_task_of_positional_references_and_literals_runs_as_a_simple_task():
    """No ``Task`` or ``TaskRef`` is built where it runs; it is called as the ``Task`` is:
    references replaced by values, anything else (a literal list holding a reference
    included, as ``Task.__call__`` leaves it) passed as it is."""
    from dask.task_spec import Alias, DataNode, Task, TaskRef

    ref = TaskRef("c")
    tasks = [
        Task("sum", operator.add, TaskRef("a"), 1, _data_producer=True),
        Task("both", operator.sub, TaskRef("a"), TaskRef("b")),
        Task("twice", operator.mul, TaskRef("a"), TaskRef("a")),
        Task("none", operator.neg, 5),
        Task("literal", list, [ref, 1]),
        Task("alias", operator.add, Alias("x", "a"), 1),  # an alias evaluates to its target's value
        Task("data", operator.add, DataNode("d", 10), TaskRef("b")),  # a DataNode to its value
    ]
    values = {"a": 7, "b": 2, "c": 0}
    pickler = serialization.BodyPickler()
    assert b"TaskRef" not in pickler.dumps(tasks[:4], tasks[:4])
    sent = serialization.loads_function(pickler.dumps(tasks, tasks))
    assert all(type(s) is serialization.SimpleTask for s in sent)
    assert [s.key for s in sent] == [t.key for t in tasks]
    assert [s(values) for s in sent] == [t(values) for t in tasks] == [8, 5, 49, -5, [ref, 1], 8, 12]
    # A Task inside an argument (a fused task's inner graph) stays a Task: Dask's code runs it.
    inner = {"x": Task("x", operator.add, TaskRef("a"), 1)}
    fused = Task("fused", dict, inner)
    (back,) = serialization.loads_function(pickler.dumps([fused], [fused]))
    assert type(back) is serialization.SimpleTask and type(back.args[0]["x"]) is Task
    # One Task object both a body and inlined in another body's argument: whichever form
    # the pickle's memo gives the second occurrence, it evaluates to the task's value there.
    shared = Task("s", operator.add, TaskRef("a"), 1)
    outer = Task("o", operator.neg, shared)
    for order in ([shared, outer], [outer, shared]):
        got = serialization.loads_function(pickler.dumps(order, order))
        assert [t(values) for t in got] == [t(values) for t in order]


def test_a_fused_task_runs_its_subgraph_as_dask_does_without_dask_order():
    """A body's fused task (``_execute_subgraph``) travels calling ``run_subgraph``: the same
    values as Dask's runner, each inner task after its inputs, an intermediate let go after
    its last use, a cycle refused by name."""
    from dask._task_spec import Task, TaskRef, _execute_subgraph

    ran: list = []

    def step(name: str, *xs: int) -> int:
        ran.append(name)
        return sum(xs) + len(name)

    # a diamond inside the fused task: a -> (b, c) -> d, reading the outer "x" twice
    inner = [
        Task("d", step, "d", TaskRef("b"), TaskRef("c")),
        Task("b", step, "b", TaskRef("a")),
        Task("c", step, "c", TaskRef("a"), TaskRef("x")),
        Task("a", step, "a", TaskRef("x")),
    ]
    fused = Task.fuse(*inner)
    assert fused.func is _execute_subgraph
    (sent,) = serialization.loads_function(serialization.BodyPickler().dumps([fused], [fused]))
    assert type(sent) is serialization.SimpleTask and sent.func is serialization.run_subgraph
    assert sent({"x": 10}) == fused({"x": 10}) == 35  # its function travelled by value: a copy
    ran.clear()
    subgraph, outkey, inkeys = fused.args[:3]
    assert serialization.run_subgraph(subgraph, outkey, inkeys, 10) == 35
    assert ran[0] == "a" and ran[-1] == "d" and sorted(ran[1:3]) == ["b", "c"]

    class Box:
        pass

    made: dict = {}  # name -> weak reference to its value
    alive: list = []  # the values still held when each inner task ran

    def box(name: str, *inputs: Box) -> Box:
        alive.append(sorted(n for n, ref in made.items() if ref() is not None))
        out = Box()
        made[name] = weakref.ref(out)
        return out

    chain = {k: Task(k, box, k, TaskRef(dep)) for k, dep in (("r", "q"), ("q", "p"), ("p", "x"))}
    for run in (_execute_subgraph, serialization.run_subgraph):  # Dask's runner, then ours
        made.clear()
        alive.clear()
        assert isinstance(run(chain, "r", ("x",), Box()), Box)
        assert alive == [[], ["p"], ["q"]]  # p let go once q ran, q once r ran

    loop = {"u": Task("u", box, "u", TaskRef("v")), "v": Task("v", box, "v", TaskRef("u"))}
    with pytest.raises(ValueError, match="cycle"):
        serialization.run_subgraph(loop, "u", ())

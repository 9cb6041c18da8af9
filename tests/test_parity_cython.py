"""The compiled static-scheduling core (``wukong._core``) and its pure-Python references
(``wukong.reference.partition``, ``wukong.reference.encoding``) as one specification.

Parity: on random DAGs and on odd shapes the two give identical CSR arrays, schedules,
encoded bytes and decoded records.  Specification (run on both): every task lies on exactly
one schedule, ``sched_idx[sched_ptr[sched_of[t]] + pos_of[t]] == t``, consecutive tasks of a
schedule are dependency -> dependent edges, the encoded records describe the graph, and
the write order puts every schedule downstream of a leaf before that leaf is ready.
Robustness: corrupt or truncated blobs raise ``ValueError``; malformed arrays given to the
compiled functions raise ``ValueError`` instead of reading out of bounds.
"""

from __future__ import annotations

import random
from array import array
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wukong import _core, reference
from wukong.protocol import OUTPUT, VERSION, Dependent, TaskRecord
from wukong.reference import encoding, partition

REFERENCE = reference  # the same surface as wukong._core
IMPLS = [pytest.param(_core, id="compiled"), pytest.param(REFERENCE, id="reference")]

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- graphs ---------------------------------------------------------------------------


def key_of(kind: str, i: int):
    return {"int": i, "str": f"task-{i}", "tuple": ("chunk", i // 7, i % 7)}[kind]


@st.composite
def dags(draw, max_tasks: int = 300):
    """(order, dependencies, outputs): random edges from a lower id to a higher one."""
    n = draw(st.integers(1, max_tasks))
    kind = draw(st.sampled_from(["int", "str", "tuple"]))
    seed = draw(st.integers(0, 2**32 - 1))
    p_edge = draw(st.sampled_from([0.0, 0.2, 0.5, 0.9]))  # chance of each of max_deps slots
    max_deps = draw(st.sampled_from([1, 2, 4, 8, 40]))
    rng = random.Random(seed)
    order = [key_of(kind, i) for i in range(n)]
    deps = []
    for i in range(n):
        k = min(i, sum(rng.random() < p_edge for _ in range(max_deps)))
        deps.append(tuple(order[j] for j in rng.sample(range(i), k)))
    outputs = rng.sample(range(n), rng.randint(1, n))
    return order, deps, outputs


def chain(n: int):
    return list(range(n)), [()] + [(i - 1,) for i in range(1, n)]


def fan_out(width: int):
    return list(range(width + 1)), [()] + [(0,)] * width


def fan_in(width: int):
    return list(range(width + 1)), [()] * width + [tuple(range(width))]


SHAPES = {
    "empty": (([], []), []),
    "one-task": (([0], [()]), [0]),
    "chain-10000": (chain(10_000), [9_999]),
    "fan-out-1-to-5000": (fan_out(5000), list(range(1, 5001))),
    "fan-in-5000-to-1": (fan_in(5000), [5000]),
}


# --- the pipeline and what it must satisfy ---------------------------------------------


def run(impl, order, deps, outputs):
    """intern -> dependents -> schedules -> encode -> decode, every intermediate kept."""
    n = len(order)
    ids, dep_ptr, dep_idx = impl.intern(order, deps)
    dnt_ptr, dnt_idx = impl.dependents(n, dep_ptr, dep_idx)
    sched = impl.schedules(n, dep_ptr, dnt_ptr, dnt_idx)
    flags = bytearray(n)
    for t in outputs:
        flags[t] = OUTPUT
    metas = impl.encode_schedules(*sched, dep_ptr, dep_idx, dnt_ptr, dnt_idx, flags)
    records = [impl.decode_schedule(m) for m in metas]
    sched_ptr, sched_idx, sched_of, _ = sched
    leaves = array(
        "q",
        [
            s
            for s in range(len(sched_ptr) - 1)
            if dep_ptr[sched_idx[sched_ptr[s]]] == dep_ptr[sched_idx[sched_ptr[s]] + 1]
        ],
    )
    writes = impl.write_order(sched_ptr, sched_idx, sched_of, dnt_ptr, dnt_idx, leaves)
    return SimpleNamespace(
        ids=ids,
        csr=(dep_ptr, dep_idx, dnt_ptr, dnt_idx),
        sched=sched,
        flags=bytes(flags),
        metas=metas,
        records=records,
        leaves=leaves,
        writes=writes,
    )


def assert_same(a, b):
    assert a.ids == b.ids
    for x, y in zip(a.csr + a.sched, b.csr + b.sched, strict=True):
        assert type(x) is array and x.typecode == "q"
        assert x == y
    assert a.metas == b.metas
    assert all(type(m) is bytes for m in a.metas)
    assert a.records == b.records
    assert all(type(x) is array and x.typecode == "q" for x in a.writes)
    assert a.writes == b.writes


def assert_specification(order, deps, r):
    n = len(order)
    dep_ptr, dep_idx, dnt_ptr, dnt_idx = r.csr
    sched_ptr, sched_idx, sched_of, pos_of = r.sched
    # interning and the two CSRs
    assert r.ids == {k: i for i, k in enumerate(order)}
    assert [list(dep_idx[dep_ptr[t] : dep_ptr[t + 1]]) for t in range(n)] == [[r.ids[d] for d in ds] for ds in deps]
    rows = [list(dnt_idx[dnt_ptr[t] : dnt_ptr[t + 1]]) for t in range(n)]
    transpose: list[list[int]] = [[] for _ in range(n)]
    for c in range(n):
        for d in dep_idx[dep_ptr[c] : dep_ptr[c + 1]]:
            transpose[d].append(c)
    assert rows == transpose  # rows sorted by id
    # a path cover: each task on exactly one non-empty schedule, located by sched_of/pos_of
    assert sorted(sched_idx) == list(range(n))
    assert all(sched_ptr[s] < sched_ptr[s + 1] for s in range(len(sched_ptr) - 1))
    for t in range(n):
        assert sched_idx[sched_ptr[sched_of[t]] + pos_of[t]] == t
    for s in range(len(sched_ptr) - 1):
        chain_ = sched_idx[sched_ptr[s] : sched_ptr[s + 1]]
        for a, b in zip(chain_[:-1], chain_[1:], strict=True):
            assert b in rows[a], f"schedule {s}: {a} -> {b} is not an edge"
    # the records describe the chain and the graph
    assert len(r.records) == len(sched_ptr) - 1
    for s, recs in enumerate(r.records):
        assert [rec.tid for rec in recs] == list(sched_idx[sched_ptr[s] : sched_ptr[s + 1]])
        for rec in recs:
            assert type(rec) is TaskRecord
            assert rec.flags == r.flags[rec.tid]
            assert rec.deps == tuple(dep_idx[dep_ptr[rec.tid] : dep_ptr[rec.tid + 1]])
            assert rec.dependents == tuple(
                Dependent(c, dep_ptr[c + 1] - dep_ptr[c], sched_of[c], pos_of[c]) for c in rows[rec.tid]
            )
    # the write order: every schedule once, and each leaf's downstream written before it is ready
    written, ready = r.writes
    assert sorted(written) == list(range(len(sched_ptr) - 1))
    assert len(ready) == len(r.leaves) and list(ready) == sorted(ready)
    for start, k in zip(r.leaves, ready, strict=True):
        stack, downstream = [start], set()
        while stack:
            s = stack.pop()
            if s not in downstream:
                downstream.add(s)
                stack += [sched_of[c] for t in sched_idx[sched_ptr[s] : sched_ptr[s + 1]] for c in rows[t]]
        assert downstream <= set(written[:k])


# --- parity: compiled == reference ------------------------------------------------------


@FAST
@given(dags())
def test_random_dags_give_identical_outputs(graph):
    order, deps, outputs = graph
    assert_same(run(_core, order, deps, outputs), run(REFERENCE, order, deps, outputs))


@pytest.mark.parametrize("shape", SHAPES)
def test_odd_shapes_give_identical_outputs(shape):
    (order, deps), outputs = SHAPES[shape]
    assert_same(run(_core, order, deps, outputs), run(REFERENCE, order, deps, outputs))


def shuffled(order, deps, seed):
    """The same graph interned in a random order (ids no longer topological)."""
    perm = list(range(len(order)))
    random.Random(seed).shuffle(perm)
    return [order[i] for i in perm], [deps[i] for i in perm]


def kahn(order, deps):
    """Kahn's order of keys, written out plainly: the specification of ``toposort``."""
    missing = {k: len(d) for k, d in zip(order, deps, strict=True)}
    dependents: dict = {k: [] for k in order}
    for k, ds in zip(order, deps, strict=True):
        for d in ds:
            dependents[d].append(k)
    out = [k for k in order if missing[k] == 0]
    for k in out:
        for c in dependents[k]:
            missing[c] -= 1
            if missing[c] == 0:
                out.append(c)
    return out


@FAST
@given(dags(), st.integers(0, 2**32 - 1))
def test_toposort_of_a_shuffled_dag_is_kahns_order_in_both(graph, seed):
    order, deps = shuffled(*graph[:2], seed)
    ids, dep_ptr, dep_idx = _core.intern(order, deps)
    got = [list(impl.toposort(len(order), dep_ptr, dep_idx)) for impl in (_core, REFERENCE)]
    assert got[0] == got[1]
    assert [order[i] for i in got[0]] == kahn(order, deps)


@pytest.mark.parametrize("impl", IMPLS)
def test_toposort_leaves_out_what_lies_on_or_behind_a_cycle(impl):
    order = ["a", "b", "c", "d", "e"]  # a -> b -> c -> b, c -> d; e alone
    ids, dep_ptr, dep_idx = impl.intern(order, [(), ("a", "c"), ("b",), ("c",), ()])
    assert list(impl.toposort(5, dep_ptr, dep_idx)) == [0, 4]
    assert list(impl.toposort(0, array("q", [0]), array("q"))) == []


def test_toposort_refuses_a_malformed_csr():
    with pytest.raises(ValueError):
        _core.toposort(3, array("q", [0, 1, 2, 3]), array("q", [0, 7, 1]))


@FAST
@given(dags(max_tasks=60))
def test_schedule_view_reads_the_decoded_records(graph):
    r = run(_core, *graph)
    for meta, recs in zip(r.metas, r.records, strict=True):
        view = _core.ScheduleView(meta)
        assert view.ntasks == len(view) == len(recs)
        assert list(view) == recs
        for pos, rec in enumerate(recs):
            assert view[pos] == rec and type(view[pos]) is TaskRecord
            assert (view.tid(pos), view.flags(pos), view.deps(pos), view.dependents(pos)) == tuple(rec)
            assert view.ndeps(pos) == len(rec.deps) and view.ndependents(pos) == len(rec.dependents)
            assert all(type(c) is Dependent for c in view.dependents(pos))


# --- the specification, on both implementations -------------------------------------------


@pytest.mark.parametrize("impl", IMPLS)
@FAST
@given(graph=dags(max_tasks=80))
def test_random_dags_meet_the_specification(impl, graph):
    order, deps, outputs = graph
    assert_specification(order, deps, run(impl, order, deps, outputs))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", ["empty", "one-task", "fan-out-1-to-5000", "fan-in-5000-to-1"])
def test_odd_shapes_meet_the_specification(impl, shape):
    (order, deps), outputs = SHAPES[shape]
    assert_specification(order, deps, run(impl, order, deps, outputs))


@pytest.mark.parametrize("impl", IMPLS)
def test_empty_graph_has_no_schedules(impl):
    r = run(impl, [], [], [])
    assert list(r.sched[0]) == [0] and r.metas == [] and r.records == []


@pytest.mark.parametrize("impl", IMPLS)
def test_chain_is_one_schedule(impl):
    (order, deps), outputs = SHAPES["chain-10000"]
    r = run(impl, order, deps, outputs)
    assert list(r.sched[0]) == [0, 10_000] and list(r.sched[1]) == list(range(10_000))
    assert len(r.metas) == 1 and r.records[0][-1].flags == OUTPUT


@pytest.mark.parametrize("impl", IMPLS)
def test_fan_out_becomes_first_dependent_and_invokes_the_rest(impl):
    (order, deps), outputs = SHAPES["fan-out-1-to-5000"]
    r = run(impl, order, deps, outputs)
    assert list(r.sched[1][:2]) == [0, 1] and len(r.metas) == 5000
    assert [c.tid for c in r.records[0][0].dependents] == list(range(1, 5001))


@pytest.mark.parametrize("impl", IMPLS)
def test_fan_in_lies_on_the_first_leaf_schedule(impl):
    (order, deps), outputs = SHAPES["fan-in-5000-to-1"]
    r = run(impl, order, deps, outputs)
    assert list(r.sched[1][:2]) == [0, 5000] and len(r.metas) == 5000
    assert r.records[0][1] == TaskRecord(5000, OUTPUT, tuple(range(5000)), ())
    assert all(rec[0].dependents == (Dependent(5000, 5000, 0, 1),) for rec in r.records[1:])


@pytest.mark.parametrize("impl", IMPLS)
def test_unknown_dependency_raises_key_error(impl):
    with pytest.raises(KeyError):
        impl.intern(["a", "b"], [(), ("missing",)])


@pytest.mark.parametrize("impl", IMPLS)
def test_repeated_key_takes_its_last_position(impl):
    ids, dep_ptr, dep_idx = impl.intern(["a", "b", "a"], [(), ("a",), ("b",)])
    assert ids == {"a": 2, "b": 1} and list(dep_idx) == [2, 1]


# --- corrupt blobs --------------------------------------------------------------------------

CORRUPT_IMPLS = [pytest.param(_core, id="compiled"), pytest.param(REFERENCE, id="reference")]


def sample_blob() -> bytes:
    deps = [(), (0,), (0, 1), (1, 2)]
    return run(_core, list(range(4)), deps, [3]).metas[0]


@pytest.mark.parametrize("impl", CORRUPT_IMPLS)
def test_truncated_blob_raises_value_error(impl):
    blob = sample_blob()
    for cut in range(len(blob)):
        with pytest.raises(ValueError):
            impl.decode_schedule(blob[:cut])


@pytest.mark.parametrize("impl", IMPLS)
def test_bad_header_or_trailing_data_raises_value_error(impl):
    blob = sample_blob()
    for bad in (b"", b"\0" * 16, array("q", [VERSION + 1, 0]).tobytes(), blob + bytes(8), blob + b"\1"):
        with pytest.raises(ValueError):
            impl.decode_schedule(bad)


@FAST
@given(st.data())
def test_corrupted_words_never_crash_the_compiled_decoder(data):
    """Any blob either decodes exactly as the reference does or raises ValueError."""
    words = array("q", sample_blob())
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(1, len(words) - 1))
        words[i] = data.draw(st.sampled_from([-(2**63), -1, 0, 1, 2, 3, 7, 1000, 2**62, 2**63 - 1]))
    blob = words.tobytes()
    try:
        got = _core.decode_schedule(blob)
    except ValueError:
        with pytest.raises(ValueError):
            _core.ScheduleView(blob)
        return
    assert got == encoding.decode_schedule(blob) == list(_core.ScheduleView(blob))


def test_schedule_view_accepts_unaligned_and_array_buffers():
    blob = sample_blob()
    unaligned = memoryview(b"\0" + blob)[1:]
    expected = encoding.decode_schedule(blob)
    assert list(_core.ScheduleView(unaligned)) == expected
    assert _core.decode_schedule(bytearray(blob)) == expected
    assert list(_core.ScheduleView(array("q", blob))) == expected


def test_schedule_view_position_out_of_range_raises_index_error():
    view = _core.ScheduleView(sample_blob())
    assert view[-1] == view[len(view) - 1]
    for bad in (len(view), -len(view) - 1):
        with pytest.raises(IndexError):
            view[bad]
    with pytest.raises(IndexError):
        view.deps(len(view))
    with pytest.raises(IndexError):
        view.tid(-1)


# --- malformed arrays: the compiled functions check before running C loops ------------------


def q(*xs):
    return array("q", xs)


@pytest.mark.parametrize(
    "args",
    [
        (2, q(0, 0), q()),  # dep_ptr too short
        (2, q(0, 0, 1), q(5)),  # dependency id out of range
        (2, q(0, 0, 1), q(-1)),  # negative id
        (2, q(0, 1, 0), q(0)),  # pointers not monotone
        (2, q(0, 0, 3), q(0)),  # pointer past the end of dep_idx
        (-1, q(0), q()),  # negative n
    ],
)
def test_compiled_dependents_rejects_malformed_csr(args):
    with pytest.raises(ValueError):
        _core.dependents(*args)


def test_compiled_schedules_rejects_malformed_csr():
    with pytest.raises(ValueError):
        _core.schedules(2, q(0, 0, 1), q(0, 1, 1), q(7))
    with pytest.raises(ValueError):
        _core.schedules(3, q(0, 0, 1), q(0, 1, 1), q(1))


def test_compiled_write_order_rejects_malformed_arrays():
    n = 3
    _, dep_ptr, dep_idx = _core.intern(list(range(n)), [(), (0,), (1,)])
    dnt = _core.dependents(n, dep_ptr, dep_idx)
    sched_ptr, sched_idx, sched_of, _ = _core.schedules(n, dep_ptr, *dnt)
    good = (sched_ptr, sched_idx, sched_of, *dnt, q(0))
    assert _core.write_order(*good) == partition.write_order(*good) == (q(0), q(1))
    for i, bad in [
        (0, q()),
        (0, q(0, 9)),
        (1, q(0, 1, 7)),
        (2, q(0, 0, 4)),
        (2, q(0, 0)),
        (3, q(0, 1)),
        (4, q(9, 9)),
        (5, q(1)),
    ]:
        args = list(good)
        args[i] = bad
        with pytest.raises(ValueError):
            _core.write_order(*args)


def test_compiled_encode_rejects_inconsistent_arrays():
    n = 3
    order, deps = list(range(n)), [(), (0,), (1,)]
    _, dep_ptr, dep_idx = _core.intern(order, deps)
    dnt = _core.dependents(n, dep_ptr, dep_idx)
    sched = list(_core.schedules(n, dep_ptr, *dnt))
    good = (*sched, dep_ptr, dep_idx, *dnt, bytes(n))
    assert _core.encode_schedules(*good) == encoding.encode_schedules(*good)
    for i, bad in [(1, q(0, 1, 9)), (0, q(0, 5)), (8, b"\0"), (6, q(0, 1)), (2, q())]:
        args = list(good)
        args[i] = bad
        with pytest.raises(ValueError):
            _core.encode_schedules(*args)


def test_compiled_accepts_numpy_int64_arrays():
    order, deps = chain(50)
    _, dep_ptr, dep_idx = _core.intern(order, deps)
    dnt = _core.dependents(50, np.asarray(dep_ptr), np.asarray(dep_idx))
    assert dnt == partition.dependents(50, dep_ptr, dep_idx)
    assert _core.schedules(50, np.asarray(dep_ptr), *map(np.asarray, dnt)) == partition.schedules(50, dep_ptr, *dnt)


# --- cull: what the requested tasks need ------------------------------------------------------


def culled(graph, seed: int):
    """A random cull of ``graph``: (dep_ptr, dep_idx, roots, the tasks they need in depth-first order)."""
    order, deps, _ = graph
    _, dep_ptr, dep_idx = _core.intern(order, deps)
    rng = random.Random(seed)
    roots = array("q", rng.sample(range(len(order)), rng.randint(0, min(5, len(order)))))
    return dep_ptr, dep_idx, roots, _core.needed(len(order), dep_ptr, dep_idx, roots)


@FAST
@given(dags(), st.integers(0, 2**32 - 1))
def test_needed_is_the_same_cull_in_both(graph, seed):
    order, deps, _ = graph
    dep_ptr, dep_idx, roots, visited = culled(graph, seed)
    assert type(visited) is array and visited.typecode == "q"
    assert visited == partition.needed(len(order), dep_ptr, dep_idx, roots)
    ids = {k: i for i, k in enumerate(order)}
    closure, stack = set(), [order[r] for r in roots]
    while stack:
        k = stack.pop()
        if k not in closure:
            closure.add(k)
            stack += deps[ids[k]]
    assert [order[t] for t in visited] == list(dict.fromkeys(order[t] for t in visited))  # each once
    assert {order[t] for t in visited} == closure


def test_compiled_needed_rejects_malformed_arrays():
    with pytest.raises(ValueError):
        _core.needed(2, q(0, 0, 1), q(0), q(2))  # root out of range
    with pytest.raises(ValueError):
        _core.needed(2, q(0, 0, 1), q(5), q(1))  # dependency out of range


# --- legacy graphs: dependencies read as Dask's conversion would give them ---------------------


def _f(*args):
    return args


class _Point(tuple):  # a tuple subclass, as a namedtuple is
    pass


@st.composite
def legacy_graphs(draw):
    """Random legacy graphs: tasks whose arguments nest keys, literals, lists, sets,
    dicts and inner tasks (``convert_legacy_task``'s cases)."""
    n = draw(st.integers(1, 30))
    keys = [draw(st.sampled_from([f"k{i}", ("k", i), i]) if i else st.just("k0")) for i in range(n)]
    keys = list(dict.fromkeys(keys))

    def arg(depth):
        leaf = st.one_of(
            st.sampled_from(keys),
            st.integers(-3, 40),
            st.sampled_from(["x", "k1", ("k", 2), ("k", "no"), 1.0, True, None, b"k0"]),
        )
        if depth == 0:
            return leaf
        inner = arg(depth - 1)
        return st.one_of(
            leaf,
            st.lists(inner, max_size=3),
            st.lists(inner, max_size=3).map(tuple),
            st.lists(inner, max_size=3).map(lambda xs: (_f, *xs)),
            st.dictionaries(st.sampled_from(["a", "b"]), inner, max_size=2),
            st.frozensets(st.sampled_from(keys), max_size=2),
        )

    return {k: draw(st.one_of(arg(0), st.lists(arg(2), max_size=3).map(lambda xs: (_f, *xs)))) for k in keys}


@pytest.mark.parametrize("impl", IMPLS)
@settings(FAST, max_examples=60)  # drawing these nested graphs is the slow part (15 s for 150)
@given(dsk=legacy_graphs())
def test_legacy_dependencies_are_those_of_dasks_conversion(impl, dsk):
    from dask._task_spec import convert_legacy_graph

    found = impl.legacy_dependencies(dsk)
    converted = convert_legacy_graph(dsk)
    if found is None:  # given up: only for a key aliased to itself (Dask drops it)
        assert set(converted) != set(dsk)
        return
    deps, funcs = found
    assert set(converted) == set(dsk)
    assert [set(d) for d in deps] == [set(converted[k].dependencies) for k in dsk]
    assert all(len(set(d)) == len(d) for d in deps)
    assert set(funcs.values()) <= {_f}
    assert impl.legacy_dependencies(dsk) == _core.legacy_dependencies(dsk)


@pytest.mark.parametrize("impl", IMPLS)
def test_legacy_dependencies_give_up_on_what_they_do_not_read_as_dask(impl):
    from dask.task_spec import Task, TaskRef

    assert impl.legacy_dependencies({"a": 1, "b": (_f, _Point(("a", 1)))}) is None  # a tuple subclass
    assert impl.legacy_dependencies({"a": 1, "b": Task("b", _f, TaskRef("a"))}) is None  # task spec already
    assert impl.legacy_dependencies({"a": 1, "b": (_f, {"x": TaskRef("a")})}) is None  # task spec in a dict
    assert impl.legacy_dependencies({"a": "a"}) is None  # aliased to itself
    # a dict argument's values are not looked into; a list's items are
    found = impl.legacy_dependencies({"a": 1, "d": 2, "b": (_f, {"c": "d"}, [("a", "z"), "a"])})
    assert found == ([(), (), ("a",)], {id(_f): _f})


@FAST
@given(dags(), st.integers(0, 2**32 - 1))
def test_relabel_is_interning_the_kept_tasks_again(graph, seed):
    order, deps, _ = graph
    dep_ptr, dep_idx, _, kept = culled(graph, seed)  # in depth-first order: dependents before dependencies
    relabelled = _core.relabel(kept, dep_ptr, dep_idx)
    assert relabelled == partition.relabel(kept, dep_ptr, dep_idx)
    _, ptr, idx = _core.intern([order[t] for t in kept], [deps[t] for t in kept])
    assert relabelled == (ptr, idx)


@pytest.mark.parametrize("impl", IMPLS)
def test_relabel_refuses_a_dependency_not_kept(impl):
    _, dep_ptr, dep_idx = _core.intern([0, 1], [(), (0,)])
    assert impl.relabel(q(1, 0), dep_ptr, dep_idx) == (q(0, 1, 1), q(1))
    with pytest.raises(ValueError):
        impl.relabel(q(1), dep_ptr, dep_idx)

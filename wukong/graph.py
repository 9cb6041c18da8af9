"""From whatever ``compute`` hands us to a validated task-spec graph.

``Client.get`` receives a Dask expression, a ``HighLevelGraph`` or a plain dict
(legacy tuple tasks allowed).  This module turns it into ``{key: GraphNode}``,
keeps only what the requested keys need (cull), and checks it before anything
runs:

* every requested key is in the graph (``KeyError`` otherwise, as Dask does);
* every dependency a node names is in the graph (``missing dependency``);
* the graph is acyclic (the error names one cycle);
* no task relies on state that lives only in one process
  (``check_process_local``): Dask's disk shuffle (partd files in a temporary
  directory of whichever process runs the task) and ``da.store`` into an
  array in the client's memory.  On one machine with one process these work;
  across executors they would silently lose data, so they are refused,
  naming the task and what to do instead;

and finally lays the keys out in a topological order, which becomes the
dense integer id of each key (``intern``): dependencies always get smaller ids
than their dependents, which the scheduler and the executors rely on.

A graph of legacy tuple tasks is not converted whole: its dependencies are
read from the raw tuples (``wukong._core.legacy``, compiled) and each task is
converted when it is read (``LegacyGraph``), which the scheduler does a
schedule at a time as it pickles the bodies, while the first executors run.
Graphs that reader does not handle exactly as Dask would, or that hold a
callable ``check_process_local`` looks at, are converted whole.

Only public Dask API is used, except ``convert_legacy_graph`` and ``convert_legacy_task``, which live in
``dask._task_spec``; the supported Dask versions are checked at import.
"""

from __future__ import annotations

import functools
import sys
import threading
from array import array
from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import dask
import numpy as np
from dask.task_spec import DataNode, GraphNode, Task, TaskRef

from wukong import _core
from wukong.serialization import LegacyTask

SUPPORTED_DASK = ((2025, 1), (2027, 0))  # [from, to): task-spec era
_dask_version = tuple(int(p) for p in dask.__version__.split(".")[:2] if p.isdigit())
if not (SUPPORTED_DASK[0] <= _dask_version < SUPPORTED_DASK[1]):
    raise ImportError(
        f"wukong supports dask >= 2025.1 and < 2027.0 (uses dask._task_spec."
        f"convert_legacy_graph); found dask {dask.__version__}"
    )
from dask._task_spec import convert_legacy_graph, convert_legacy_task  # noqa: E402

Key = Hashable


class GraphError(ValueError):
    """The graph cannot run: a cycle, a missing dependency, an unpicklable task."""


def to_task_graph(dsk: Any) -> Mapping[Key, GraphNode]:
    """Normalise a collection's graph, a HighLevelGraph or a dict to task spec
    (a ``LegacyGraph`` when it can be converted lazily)."""
    if not isinstance(dsk, Mapping):
        dsk = dsk.__dask_graph__()
    dsk = dict(dsk)
    return LegacyGraph.of(dsk) or convert_legacy_graph(dsk)


class LegacyGraph(Mapping):
    """Legacy tuple tasks (``{key: (func, *args)}``) seen as task spec, each task
    converted when it is read; ``deps[k]`` is a key's dependencies, read without
    converting (``wukong._core.legacy``).  ``of`` returns ``None`` for a graph
    to convert whole (see the module docstring)."""

    def __init__(self, dsk: dict, keys: list[Key], deps: list[tuple]):
        self.dsk = dsk  # the whole graph: a task's references are resolved against all its keys
        self.keys_ = keys  # the keys of this graph (the whole one, or what a cull kept)
        self.deps_list = deps  # their dependencies, by position
        self._deps: dict[Key, tuple] | None = None
        self.interned: tuple[dict[Key, int], array, array] | None = None  # set by ``prepare``: see ``interned``

    @classmethod
    def of(cls, dsk: dict) -> LegacyGraph | None:
        found = _core.legacy_dependencies(dsk)
        if found is None:
            return None
        deps, funcs = found
        if any(_kind(f) for f in funcs.values()):  # a check_process_local looks at it: the full path
            return None
        return cls(dsk, list(dsk), deps)

    @property
    def deps(self) -> dict[Key, tuple]:
        if self._deps is None:  # not on the way to the first invocation: made when first read
            self._deps = dict(zip(self.keys_, self.deps_list, strict=True))
        return self._deps

    def prepare(self, keys: list[Key]) -> tuple[list[Key], LegacyGraph]:
        """``prepare`` in integers (compiled), with the same order as ``cull`` then
        ``topological_order`` give: the graph is interned whole (its dependencies
        are all keys of it), culled to what ``keys`` need in depth-first order
        from them (which keeps the leaves of one fan-in next to each other, as
        ``group_leaves`` wants), then Kahn's order of that; nothing to check (``of``)."""
        for k in keys:
            if k not in self.dsk:
                raise KeyError(k)
        names, deps = self.keys_, self.deps_list
        ids, dep_ptr, dep_idx = _core.intern(names, deps)
        visited = _core.needed(len(names), dep_ptr, dep_idx, array("q", [ids[k] for k in keys]))
        culled_ptr, culled_idx = _core.relabel(visited, dep_ptr, dep_idx)
        topo = _core.toposort(len(visited), culled_ptr, culled_idx)
        if len(topo) < len(visited):
            done = set(topo)
            stuck = {names[visited[i]]: 1 for i in range(len(visited)) if i not in done}
            raise GraphError(f"Cycle detected: {find_cycle(self, stuck)}")
        kept = array("q", map(visited.__getitem__, topo))
        order = list(map(names.__getitem__, kept))
        culled = LegacyGraph(self.dsk, order, list(map(deps.__getitem__, kept)))
        # the scheduler's interning of ``order``, without a second dict of every key
        position = np.empty(len(names), dtype=np.int64)
        position[np.frombuffer(kept, dtype=np.int64)] = np.arange(len(kept))
        culled.interned = ({k: int(position[ids[k]]) for k in keys}, *_core.relabel(kept, dep_ptr, dep_idx))
        return order, culled

    def __getitem__(self, key: Key) -> GraphNode:
        if key not in self.deps:
            raise KeyError(key)
        node = convert_legacy_task(key, self.dsk[key], self.dsk)  # type: ignore[arg-type]
        return node if isinstance(node, GraphNode) else DataNode(key, node)

    def sendable(self, key: Key) -> LegacyTask:
        """What executors receive of task ``key``: the raw task, converted where it runs."""
        return LegacyTask(key, self.dsk[key])

    def __iter__(self) -> Iterator[Key]:
        return iter(self.keys_)

    def __len__(self) -> int:
        return len(self.keys_)

    def __contains__(self, key: object) -> bool:
        return key in self.deps


def dependencies(graph: Mapping[Key, GraphNode], key: Key) -> Iterable[Key]:
    """The keys ``key`` depends on (from ``LegacyGraph.deps`` without converting it)."""
    return graph.deps[key] if isinstance(graph, LegacyGraph) else graph[key].dependencies


def interned(
    graph: Mapping[Key, GraphNode], order: Sequence[Key], outputs: Sequence[Key]
) -> tuple[Mapping, array, array]:
    """``_core.intern(order, dependency_lists(graph, order))``, or what
    ``LegacyGraph.prepare`` made of it (ids given for its requested keys only)."""
    pre = graph.interned if isinstance(graph, LegacyGraph) and graph.keys_ is order else None
    if pre is not None and all(k in pre[0] for k in outputs):
        return pre
    return _core.intern(order, dependency_lists(graph, order))


def dependency_lists(graph: Mapping[Key, GraphNode], keys: Sequence[Key]) -> list[tuple]:
    """``tuple(dependencies(graph, k))`` for each of ``keys``."""
    if isinstance(graph, LegacyGraph):
        return graph.deps_list if keys is graph.keys_ else list(map(graph.deps.__getitem__, keys))
    return [tuple(graph[k].dependencies) for k in keys]


def flatten_keys(keys: Any) -> list[Key]:
    """The distinct keys named by a (possibly nested) list of keys, in order."""
    out: dict[Key, None] = {}
    stack = [keys]
    while stack:
        k = stack.pop()
        if isinstance(k, list):
            stack.extend(reversed(k))
        else:
            out[k] = None
    return list(out)


def cull(dsk: Mapping[Key, GraphNode], keys: Iterable[Key]) -> Mapping[Key, GraphNode]:
    """The part of ``dsk`` that ``keys`` need; raises for absent keys."""
    if isinstance(dsk, LegacyGraph):
        kept = _cull(dsk.deps, keys, lambda deps: deps)
        return LegacyGraph(dsk.dsk, list(kept), list(kept.values()))
    return _cull(dsk, keys, lambda node: node.dependencies)


def _cull(dsk: Mapping, keys: Iterable[Key], dependencies_of: Any) -> dict:
    out: dict = {}
    stack = []
    for k in keys:
        if k not in dsk:
            raise KeyError(k)
        stack.append(k)
    while stack:
        k = stack.pop()
        if k in out:
            continue
        node = dsk[k]
        out[k] = node
        for d in dependencies_of(node):
            if d not in dsk:
                raise GraphError(f"task {k!r} has a missing dependency {d!r}: it is not in the graph")
            if d not in out:
                stack.append(d)
    return out


def topological_order(dsk: Mapping[Key, GraphNode]) -> list[Key]:
    """Kahn's order, leaves first (compiled: ``wukong._core.toposort``); raises
    ``GraphError`` naming a cycle."""
    keys = list(dsk)
    _, dep_ptr, dep_idx = _core.intern(keys, dependency_lists(dsk, keys))
    ids = _core.toposort(len(keys), dep_ptr, dep_idx)
    order = list(map(keys.__getitem__, ids))
    if len(order) < len(keys):
        done = set(order)
        raise GraphError(f"Cycle detected: {find_cycle(dsk, {k: 1 for k in keys if k not in done})}")
    return order


def find_cycle(dsk: Mapping[Key, GraphNode], remaining: Mapping[Key, int]) -> list[Key]:
    """One cycle among the keys Kahn's algorithm could not order."""
    stuck = {k for k, n in remaining.items() if n > 0}
    k = next(iter(stuck))
    path: list[Key] = []
    seen: dict[Key, int] = {}
    while k not in seen:  # every stuck key has a stuck dependency: walk until we repeat
        seen[k] = len(path)
        path.append(k)
        k = next(d for d in dependencies(dsk, k) if d in stuck)
    cycle = path[seen[k] :]
    cycle.reverse()  # dependency -> dependent
    return cycle + [cycle[0]]


DISK_SHUFFLE_HINT = (
    "wukong's executors share no disk: use a task-based shuffle (shuffle='tasks' for "
    "bag.groupby, shuffle_method='tasks' for dataframes, or "
    "dask.config.set({'dataframe.shuffle.method': 'tasks'}), which a wukong Client sets by default)"
)
STORE_FUNCS = frozenset({"load_store_chunk", "store_chunk"})  # in dask.array.core


# -- how Dask builds graphs for wukong ----------------------------------------------------
#
# Dask picks a collection's shuffle when the graph is *built* (``bag.groupby``,
# ``df.shuffle``, ``df.merge`` ...), before ``compute`` reaches ``Client.get``.
# Without a distributed client its default is the disk shuffle, which cannot
# work across executors.  So, as creating a distributed ``Client`` does, a
# wukong ``Client`` makes task-based shuffles the default for as long as it is
# open (unless the user chose a method), and ``Client.get`` applies the same
# defaults around the conversion of a not yet lowered expression.

DASK_DEFAULTS = {"dataframe.shuffle.method": "tasks"}  # bags read this key too
_open_clients = 0
_applied: dict[str, Any] = {}  # what we set, so closing the last client removes only that
_clients_lock = threading.Lock()


def dask_defaults() -> dict[str, Any]:
    """The entries of ``DASK_DEFAULTS`` the user has not set."""
    return {k: v for k, v in DASK_DEFAULTS.items() if dask.config.get(k, None) is None}


def acquire_dask_defaults() -> None:
    """A client opened: apply ``DASK_DEFAULTS`` (the first one does) for graphs built from now on."""
    global _open_clients
    with _clients_lock:
        _open_clients += 1
        if _open_clients == 1:
            _applied.update(dask_defaults())
            if _applied:
                dask.config.set(_applied)


def release_dask_defaults() -> None:
    """A client closed: the last one removes what the first set, unless the user changed it since."""
    global _open_clients
    with _clients_lock:
        _open_clients = max(0, _open_clients - 1)
        if _open_clients == 0:
            for k, v in _applied.items():
                if dask.config.get(k, None) == v:
                    dask.config.set({k: None})
            _applied.clear()


def check_process_local(graph: Mapping[Key, GraphNode]) -> None:
    """Refuse tasks whose effect stays in the process that runs them (see the module docstring).

    Tasks nested in a task's arguments and in fused subgraphs (Dask's
    blockwise fusion) are looked at too, by their callable; a store task's
    target is followed from the fused task's literal inputs.
    """
    if isinstance(graph, LegacyGraph):
        return  # none of its callables has a kind (``LegacyGraph.of``)
    kinds = _Kinds()
    literals = _GraphLiterals(graph)  # a large literal, such as a store's target, is a key of its own
    for key, node in graph.items():
        if not isinstance(node, Task):
            continue
        kind = kinds[node.func]
        if kind == "subgraph" or _holds_tasks(node):
            for inner_kind, task, env in _tasks_within(node, literals, kinds):
                if inner_kind:
                    _check_task(key, inner_kind, task, env)
        elif kind:
            _check_task(key, kind, node, literals)


class _Kinds(dict):
    """``_kind`` of each callable, looked at once (by id: the graph holds them while it is checked);
    and whether a fused subgraph holds a task of a kind to check (once per subgraph: one
    blockwise layer's chunks share theirs)."""

    def __init__(self) -> None:
        super().__init__()
        self.subgraphs: dict[int, tuple[Any, bool]] = {}  # id -> (the subgraph, kept while its id is), any?

    def __getitem__(self, func: Any) -> str:
        kind = self.get(id(func))
        if kind is None:
            kind = self[id(func)] = _kind(func)
        return kind

    def within(self, inner: Mapping) -> bool:
        hit = self.subgraphs.get(id(inner))
        if hit is None:
            found = any(k for t in inner.values() if isinstance(t, Task) for k, _, _ in _tasks_within(t, {}, self))
            hit = self.subgraphs[id(inner)] = (inner, found)
        return hit[1]


def _kind(func: Any) -> str:
    """ "partd", "store", "subgraph" (a fused subgraph's runner) or "" (anything else)."""
    if _opens_partd(func):
        return "partd"
    if _is_store(func):
        return "store"
    return "subgraph" if getattr(func, "__name__", None) == "_execute_subgraph" else ""


def _holds_tasks(task: Task) -> bool:
    for a in task.args:
        if isinstance(a, Task):
            return True
    for a in task.kwargs.values():
        if isinstance(a, Task):
            return True
    return False


def _check_task(key: Key, kind: str, task: Task, env: Mapping) -> None:
    if kind == "partd":
        raise GraphError(
            f"task {key!r} opens a partd store in a temporary directory of the process that "
            f"runs it (Dask's disk shuffle); the tasks that write and read it run in other "
            f"processes, so items would be lost. {DISK_SHUFFLE_HINT}"
        )
    if kind == "store" and _in_client_memory(_literal(task.args[1], env) if len(task.args) > 1 else None):
        raise GraphError(
            f"task {key!r} stores into a numpy array that lives in the client's memory "
            f"(da.store(x, target) with an in-memory target): executors write into their own "
            f"copy, so the target would stay unchanged. Compute the array instead "
            f"(target[...] = x.compute(scheduler=client.get)), or store into something the "
            f"executors can reach (a zarr or HDF5 file, an object store)"
        )


def _tasks_within(node: Any, literals: Mapping, kinds: _Kinds) -> Iterator[tuple[str, Any, Mapping]]:
    """(callable's kind, task, literal inputs by inner key) of ``node`` and of every task nested in it.

    A fused subgraph, ``_execute_subgraph(inner, outkey, inkeys, *inputs)``,
    runs ``inner``'s tasks with ``inkeys[i]`` bound to ``inputs[i]``: ``env``
    maps those names to the inputs that are literals.
    """
    stack: list[tuple[Any, Mapping]] = [(node, literals)]
    while stack:
        task, env = stack.pop()
        kind = kinds[task.func]
        if kind == "subgraph" and len(task.args) >= 3:
            inner, _, inkeys, *inputs = task.args
            if not kinds.within(inner):
                continue
            inner_env = {k: _literal(v, env) for k, v in zip(inkeys, inputs, strict=False)}
            stack.extend((t, inner_env) for t in inner.values() if isinstance(t, Task))
            continue
        yield kind, task, env
        stack.extend((a, env) for a in (*task.args, *task.kwargs.values()) if isinstance(a, Task))


class _GraphLiterals(Mapping):
    """The graph's literal nodes by key (``DataNode`` values); other keys are absent."""

    def __init__(self, graph: Mapping[Key, GraphNode]):
        self.graph = graph

    def __getitem__(self, key: Key) -> Any:
        node = self.graph.get(key)
        if not isinstance(node, DataNode):
            raise KeyError(key)
        return node.value

    def __iter__(self) -> Iterator[Key]:
        return (k for k, node in self.graph.items() if isinstance(node, DataNode))

    def __len__(self) -> int:
        return sum(1 for _ in self)


def _literal(arg: Any, env: Mapping) -> Any:
    """The value of a task argument when it is a literal (directly or bound in ``env``), else None."""
    if isinstance(arg, DataNode):
        return arg.value
    if isinstance(arg, TaskRef):
        return env.get(arg.key)
    return None if isinstance(arg, GraphNode) else arg


def _opens_partd(func: Any) -> bool:
    """A partd constructor (bag's disk groupby) or dask.dataframe's ``maybe_buffered_partd``."""
    while isinstance(func, functools.partial):
        func = func.func
    module = getattr(func, "__module__", None) or ""
    name = getattr(func, "__qualname__", None) or type(func).__qualname__
    return module.split(".")[0] == "partd" or name == "maybe_buffered_partd"


def _is_store(func: Any) -> bool:
    """``dask.array.core.load_store_chunk(x, out, ...)``: what ``da.store`` runs per chunk."""
    return getattr(func, "__module__", None) == "dask.array.core" and getattr(func, "__name__", None) in STORE_FUNCS


def _in_client_memory(target: Any) -> bool:
    np = sys.modules.get("numpy")  # an array target implies numpy is loaded; never import it here
    return np is not None and isinstance(target, np.ndarray)


def prepare(dsk: Any, keys: Any) -> tuple[list[Key], Mapping[Key, GraphNode]]:
    """Convert, cull and validate; return keys in topological order and the graph."""
    graph = to_task_graph(dsk)
    if isinstance(graph, LegacyGraph):
        return graph.prepare(flatten_keys(keys))
    graph = cull(graph, flatten_keys(keys))
    check_process_local(graph)
    return topological_order(graph), graph

"""From whatever ``compute`` hands us to a validated task-spec graph.

``Client.get`` receives a Dask expression, a ``HighLevelGraph`` or a plain dict
(legacy tuple tasks allowed).  This module turns it into ``{key: GraphNode}``,
keeps only what the requested keys need (cull), and checks it before anything
runs:

* every requested key is in the graph (``KeyError`` otherwise, as Dask does);
* every dependency a node names is in the graph (``missing dependency``);
* the graph is acyclic (the error names one cycle);
* no task makes a ``partd`` store (a disk-based shuffle of bags or
  dataframes): one is shared by reference between the tasks of one process,
  and executors would each get a copy -- wrong results, silently;


and finally lays the keys out in a topological order, which becomes the
dense integer id of each key (``intern``): dependencies always get smaller ids
than their dependents, which the scheduler and the executors rely on.

Only public Dask API is used, except ``convert_legacy_graph`` which lives in
``dask._task_spec``; the supported Dask versions are checked at import.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from typing import Any

import dask
from dask.task_spec import GraphNode

SUPPORTED_DASK = ((2025, 1), (2027, 0))  # [from, to): task-spec era
_dask_version = tuple(int(p) for p in dask.__version__.split(".")[:2] if p.isdigit())
if not (SUPPORTED_DASK[0] <= _dask_version < SUPPORTED_DASK[1]):
    raise ImportError(
        f"wukong supports dask >= 2025.1 and < 2027.0 (uses dask._task_spec."
        f"convert_legacy_graph); found dask {dask.__version__}"
    )
from dask._task_spec import convert_legacy_graph  # noqa: E402

Key = Hashable


class GraphError(ValueError):
    """The graph cannot run: a cycle, a missing dependency, an unpicklable task."""


def to_task_graph(dsk: Any) -> dict[Key, GraphNode]:
    """Normalise a collection's graph, a HighLevelGraph or a dict to task spec."""
    if not isinstance(dsk, Mapping):
        dsk = dsk.__dask_graph__()
    return convert_legacy_graph(dict(dsk))


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


def cull(dsk: Mapping[Key, GraphNode], keys: Iterable[Key]) -> dict[Key, GraphNode]:
    """The part of ``dsk`` that ``keys`` need; raises for absent keys."""
    out: dict[Key, GraphNode] = {}
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
        for d in node.dependencies:
            if d not in dsk:
                raise GraphError(f"task {k!r} has a missing dependency {d!r}: it is not in the graph")
            if d not in out:
                stack.append(d)
    return out


def topological_order(dsk: Mapping[Key, GraphNode]) -> list[Key]:
    """Kahn's order, leaves first; raises ``GraphError`` naming a cycle."""
    ndeps = {k: len(node.dependencies) for k, node in dsk.items()}
    dependents: dict[Key, list[Key]] = {k: [] for k in dsk}
    for k, node in dsk.items():
        for d in node.dependencies:
            dependents[d].append(k)
    order = [k for k, n in ndeps.items() if n == 0]
    i = 0
    while i < len(order):
        for c in dependents[order[i]]:
            ndeps[c] -= 1
            if ndeps[c] == 0:
                order.append(c)
        i += 1
    if len(order) < len(dsk):
        raise GraphError(f"Cycle detected: {find_cycle(dsk, ndeps)}")
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
        k = next(d for d in dsk[k].dependencies if d in stuck)
    cycle = path[seen[k] :]
    cycle.reverse()  # dependency -> dependent
    return cycle + [cycle[0]]


def check_no_disk_shuffle(dsk: Mapping[Key, GraphNode]) -> None:
    """Refuse a graph with a partd store: it needs every task in one process."""
    for k, node in dsk.items():
        func = getattr(node, "func", None)
        func = getattr(func, "func", func)  # a functools.partial: what it calls
        if func is None:
            continue
        if getattr(func, "__module__", "").startswith("partd") or type(func).__name__ == "maybe_buffered_partd":
            raise GraphError(
                f"task {k!r} makes a partd store for a disk-based shuffle, which needs every task in one "
                "process; use shuffle='tasks' (wukong's Client(set_as_default=True) makes it the default)"
            )


def prepare(dsk: Any, keys: Any) -> tuple[list[Key], dict[Key, GraphNode]]:
    """Convert, cull and validate; return keys in topological order and the graph."""
    graph = to_task_graph(dsk)
    graph = cull(graph, flatten_keys(keys))
    check_no_disk_shuffle(graph)
    return topological_order(graph), graph

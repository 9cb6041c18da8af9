"""Dependencies of a graph of legacy tuple tasks, read without converting it.

Dask turns a legacy graph (``{key: (func, *args)}``, keys named in the
arguments) into task spec with ``dask._task_spec.convert_legacy_graph``, which
builds a ``Task`` per task: on large graphs, most of the client's planning
time and memory.  ``dependencies`` finds, in the raw values, the dependencies
that conversion would give each task (``convert_legacy_task``'s rules: a
tuple whose first item is callable is a task; a hashable argument that is a
key of the graph is a reference; lists, tuples and sets are looked into; a
dict argument's values are not), so the tasks can be converted later, a
schedule at a time, as they are pickled (``wukong.graph.LegacyGraph``).

It gives up (``None``) on what it does not read exactly as Dask would: nodes
that are already task spec, futures, tuple subclasses (namedtuples), a key
whose value is its own name: such graphs are converted whole.  It also
returns every callable its tasks call, nested tasks' included, so that the
graph can be checked (``wukong.graph.check_process_local``) without
converting it.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

from dask.task_spec import GraphNode, TaskRef


class _Unusual(Exception):
    """Something ``dependencies`` does not read as Dask would."""


def dependencies(dsk: dict) -> tuple[list[tuple], dict[int, Callable]] | None:
    """The dependencies of each value of ``dsk`` (in order; each tuple in
    first-seen order) and the callables of its tasks by id; ``None`` to give up."""
    deps: list[tuple] = []
    funcs: dict[int, Callable] = {}
    try:
        for key, value in dsk.items():
            found: dict[Hashable, None] = {}
            _walk(value, dsk, found, funcs)
            if key in found and _is_key(value, dsk) and value == key:  # an alias of itself: Dask drops the key
                raise _Unusual
            deps.append(tuple(found))
    except _Unusual:
        return None
    return deps, funcs


def _is_key(x: Any, dsk: dict) -> bool:
    try:
        return not _is_task(x) and isinstance(x, int | float | str | tuple) and x in dsk
    except TypeError:  # unhashable
        return False


def _is_task(x: Any) -> bool:
    return type(x) is tuple and len(x) > 0 and callable(x[0])


def _walk(x: Any, dsk: dict, found: dict, funcs: dict) -> None:
    if _is_task(x):
        funcs[id(x[0])] = x[0]
        for a in x[1:]:
            if isinstance(a, dict):  # Dask's ``Dict``: only task-spec values would be dependencies
                if any(isinstance(v, GraphNode | TaskRef) for v in (*a, *a.values())):
                    raise _Unusual
            else:
                _walk(a, dsk, found, funcs)
        return
    if isinstance(x, int | float | str | tuple):
        try:
            if x in dsk:
                found[x] = None
                return
        except TypeError:  # unhashable
            pass
    if isinstance(x, list | tuple | set | frozenset):
        if isinstance(x, tuple) and type(x) is not tuple:
            raise _Unusual
        for item in x:
            _walk(item, dsk, found, funcs)
    elif isinstance(x, GraphNode | TaskRef) or getattr(x, "__dask_future__", False):
        raise _Unusual

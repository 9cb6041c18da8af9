"""The static scheduler: from a validated graph to the encoded job.

``plan`` interns the keys, builds the dependency and dependent arrays, cuts
the graph into static schedules and encodes their metadata (all compiled, in
``wukong._core``; the algorithms are explained in their pure-Python oracles,
``wukong.reference.partition`` and ``.encoding``), and pickles the task bodies
of each schedule together, with one ``serialization.BodyPickler`` for the
whole plan: a callable many tasks share is pickled once per plan, not once per
schedule.  Each schedule is stored as one blob (``wukong.protocol``); an
executor reads only the blobs of the schedules it runs.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

from dask.task_spec import GraphNode

from wukong import _core, serialization
from wukong.graph import GraphError
from wukong.protocol import OUTPUT, pack_schedule


@dataclass
class Plan:
    ntasks: int
    nschedules: int
    schedules: list[bytes]  # stored blobs, by schedule id (emptied once written: ``Job.submit``)
    leaf_schedules: list[int]  # schedules that start at a task with no dependencies
    outputs: dict[int, Hashable]  # task id -> key, for requested keys
    fanins: list[int]  # tasks with several dependencies (they own fan-in state)


def plan(order: Sequence[Hashable], graph: Mapping[Hashable, GraphNode], outputs: Sequence[Hashable]) -> Plan:
    deps = [tuple(graph[k].dependencies) for k in order]
    n = len(order)
    ids, dep_ptr, dep_idx = _core.intern(order, deps)
    dnt_ptr, dnt_idx = _core.dependents(n, dep_ptr, dep_idx)
    sched_ptr, sched_idx, sched_of, pos_of = _core.schedules(n, dep_ptr, dnt_ptr, dnt_idx)
    flags = bytearray(n)
    out_ids = {ids[k]: k for k in outputs}
    for t in out_ids:
        flags[t] = OUTPUT
    metas = _core.encode_schedules(sched_ptr, sched_idx, sched_of, pos_of, dep_ptr, dep_idx, dnt_ptr, dnt_idx, flags)
    blobs = []
    leaves = []
    pickler = serialization.BodyPickler(per_task=(GraphNode,))
    for s, meta in enumerate(metas):
        chain = sched_idx[sched_ptr[s] : sched_ptr[s + 1]]
        bodies = [(graph[order[t]], deps[t]) for t in chain]
        blobs.append(pack_schedule(meta, _dumps_bodies(bodies, pickler)))
        if dep_ptr[chain[0]] == dep_ptr[chain[0] + 1]:
            leaves.append(s)
    fanins = [t for t in range(n) if dep_ptr[t + 1] - dep_ptr[t] > 1]
    return Plan(n, len(blobs), blobs, leaves, out_ids, fanins)


def _dumps_bodies(bodies: list, pickler: serialization.BodyPickler) -> bytes:
    try:
        return pickler.dumps(bodies)
    except Exception:
        for node, _ in bodies:  # find the culprit to name it
            try:
                serialization.dumps_function(node)
            except Exception as exc:
                raise GraphError(f"task {node.key!r} cannot be pickled: {type(exc).__name__}: {exc}") from None
        raise

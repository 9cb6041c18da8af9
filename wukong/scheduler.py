"""The static scheduler: from a validated graph to the encoded job.

``plan`` interns the keys, builds the dependency and dependent arrays, cuts
the graph into static schedules and encodes their metadata (all compiled, in
``wukong._core``; the algorithms are explained in their pure-Python oracles,
``wukong.reference.partition`` and ``.encoding``).  It also chooses the order
in which the schedules are written (``write_order``): every schedule an
invocation of a leaf may read is written before that invocation is sent, so
the client starts the first leaves while the rest are still being written.

The task bodies are pickled only as each schedule is written
(``Schedules``): a schedule's bodies together, with one
``serialization.BodyPickler`` for the whole plan, so a callable many tasks
share is pickled once per plan, not once per schedule.  Each schedule is
stored as one blob (``wukong.protocol``); an executor reads only the blobs of
the schedules it runs.  A solo job's schedules are stored together instead
(``Schedules.whole``): its one executor reads them all.
"""

from __future__ import annotations

from array import array
from collections.abc import Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from dask.task_spec import GraphNode

from wukong import _core, serialization
from wukong.graph import GraphError, LegacyGraph, dependency_lists, interned
from wukong.protocol import OUTPUT, pack_plan, pack_schedule


class Schedules(Sequence[bytes]):
    """The stored blob of each schedule, by schedule id, made (pickled) when asked for."""

    def __init__(
        self,
        graph: Mapping[Hashable, GraphNode],
        order: Sequence[Hashable],
        deps: list[tuple],
        metas: list[bytes],
        sched_ptr: array,
        sched_idx: array,
    ):
        self.graph, self.order, self.deps, self.metas = graph, order, deps, metas
        self.sched_ptr, self.sched_idx = sched_ptr, sched_idx
        self.pickler = serialization.BodyPickler(per_task=(GraphNode, serialization.LegacyTask))
        self.node = graph.sendable if isinstance(graph, LegacyGraph) else graph.__getitem__

    def __len__(self) -> int:
        return len(self.metas)

    def __getitem__(self, sid: int) -> bytes:  # type: ignore[override]
        if not 0 <= sid < len(self.metas):
            raise IndexError(sid)
        bodies = self._bodies(sid)
        return pack_schedule(self.metas[sid], _dumps_bodies(bodies, bodies, self.pickler))

    def whole(self) -> bytes:
        """Every schedule in one blob (``protocol.pack_plan``), for a solo job: one
        pickle of all bodies, so whatever tasks share (a fused subgraph's inner
        graph, an argument) is pickled once; on Cholesky 100² that is 22 KB
        against 162 KB in 60 schedule blobs, pickled in half the time."""
        chains = [self._bodies(sid) for sid in range(len(self.metas))]
        return pack_plan(self.metas, _dumps_bodies(chains, [b for c in chains for b in c], self.pickler))

    def _bodies(self, sid: int) -> list[tuple[Any, tuple]]:
        chain = self.sched_idx[self.sched_ptr[sid] : self.sched_ptr[sid + 1]]
        return [(self.node(self.order[t]), self.deps[t]) for t in chain]

    def __iter__(self) -> Iterator[bytes]:
        return map(self.__getitem__, range(len(self.metas)))


@dataclass
class Plan:
    ntasks: int
    nschedules: int
    schedules: Sequence[bytes]  # stored blobs, by schedule id (dropped once written: ``Job.submit``)
    leaf_schedules: list[int]  # schedules that start at a task with no dependencies
    outputs: dict[int, Hashable]  # task id -> key, for requested keys
    fanins: list[int]  # tasks with several dependencies (they own fan-in state)
    write_order: array  # schedule ids, in the order they are written
    ready: array  # ready[i]: how many of write_order precede invoking leaf_schedules[i]


def plan(order: Sequence[Hashable], graph: Mapping[Hashable, GraphNode], outputs: Sequence[Hashable]) -> Plan:
    deps = dependency_lists(graph, order)
    n = len(order)
    ids, dep_ptr, dep_idx = interned(graph, order, outputs)
    dnt_ptr, dnt_idx = _core.dependents(n, dep_ptr, dep_idx)
    sched_ptr, sched_idx, sched_of, pos_of = _core.schedules(n, dep_ptr, dnt_ptr, dnt_idx)
    flags = bytearray(n)
    out_ids = {ids[k]: k for k in outputs}
    for t in out_ids:
        flags[t] = OUTPUT
    metas = _core.encode_schedules(sched_ptr, sched_idx, sched_of, pos_of, dep_ptr, dep_idx, dnt_ptr, dnt_idx, flags)
    nsched = len(metas)
    ndeps = np.diff(np.frombuffer(dep_ptr, dtype=np.int64))
    leaves = array("q", range(int(np.count_nonzero(ndeps == 0))))  # the leaves' walks come first
    written, ready = _core.write_order(sched_ptr, sched_idx, sched_of, dnt_ptr, dnt_idx, leaves)
    fanins = np.flatnonzero(ndeps > 1).tolist()
    blobs = Schedules(graph, order, deps, metas, sched_ptr, sched_idx)
    return Plan(n, nsched, blobs, leaves.tolist(), out_ids, fanins, written, ready)


def _dumps_bodies(obj: list, bodies: list, pickler: serialization.BodyPickler) -> bytes:
    """``obj``'s pickle; when it fails, a ``GraphError`` names the task of ``bodies`` that cannot be pickled."""
    try:
        return pickler.dumps(obj, [node for node, _ in bodies])
    except Exception:
        for node, _ in bodies:  # find the culprit to name it
            try:
                serialization.dumps_function(node)
            except Exception as exc:
                raise GraphError(f"task {node.key!r} cannot be pickled: {type(exc).__name__}: {exc}") from None
        raise

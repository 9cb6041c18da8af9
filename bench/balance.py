"""Load balance of one wukong job (issue 13.7): how long each executor sat idle while a task
was ready to run and nobody had started it.

A task is *ready* from the moment its last dependency ended (a leaf: from the job's first
task start) until it starts. An executor is *idle* between its tasks. Both come from the
job record's task runs (their start and end, on one machine's clock) and the graph's
dependencies, so the measure needs nothing from the scheduler itself.  Time an executor
spends idle while some ready task waits — in another executor's local stack, in a queue, or
in flight as an invocation — is work the job could have overlapped and did not.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from typing import Any


def dependencies(dsk: Any) -> dict[Hashable, set[Hashable]]:
    """Each task's dependencies among the graph's keys (whatever Dask hands a scheduler)."""
    from wukong.graph import to_task_graph

    graph = to_task_graph(dsk)
    return {k: set(node.dependencies) & graph.keys() for k, node in graph.items()}


def _union(intervals: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[list[float]] = []
    for a, b in sorted(intervals):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


def _overlap(xs: list[tuple[float, float]], ys: list[tuple[float, float]]) -> float:
    """Total length of the intersection of two sorted, disjoint interval lists."""
    i = j = 0
    total = 0.0
    while i < len(xs) and j < len(ys):
        lo, hi = max(xs[i][0], ys[j][0]), min(xs[i][1], ys[j][1])
        if hi > lo:
            total += hi - lo
        if xs[i][1] < ys[j][1]:
            i += 1
        else:
            j += 1
    return total


def idle_while_ready(tasks: Iterable[Any], deps: Mapping[Hashable, set[Hashable]]) -> dict[str, Any]:
    """``tasks``: the job's ``TaskRun``s (key, start, end, worker). Returns the job's span
    (first start to last end), and per executor its busy seconds and its seconds idle while
    a task was ready."""
    runs = list(tasks)
    if not runs:
        return {"span_s": 0.0, "executors": {}}
    t0, t1 = min(r.start for r in runs), max(r.end for r in runs)
    end = {r.key: r.end for r in runs}
    since = {r.key: max((end.get(d, t0) for d in deps.get(r.key, ())), default=t0) for r in runs}
    ready = _union((since[r.key], r.start) for r in runs if r.start > since[r.key])
    by_worker: dict[str, list[tuple[float, float]]] = {}
    for r in runs:
        by_worker.setdefault(r.worker, []).append((r.start, r.end))
    executors = {}
    for worker, busy in by_worker.items():
        busy = _union(busy)
        idle, at = [], t0
        for a, b in busy:
            if a > at:
                idle.append((at, a))
            at = max(at, b)
        if t1 > at:
            idle.append((at, t1))
        executors[worker] = {
            "busy_s": round(sum(b - a for a, b in busy), 6),
            "idle_while_ready_s": round(_overlap(idle, ready), 6),
        }
    return {"span_s": round(t1 - t0, 6), "executors": executors}

"""Load balance of one wukong job (issue 13.7), measured two ways from its job record.

``idle_while_queued`` is the direct measure.  An executor is *idle* only while it waits
for work: outside its invocations (a local worker blocked on the queue for its next
one), or inside one sleeping until a held output's next ask with nothing on its stack
(delayed I/O).  It is *busy* otherwise: from picking an invocation up to its exit, its own work
between tasks (serializing and storing outputs, fan-in round trips, invoking) included.
Work is *queued elsewhere* while an invocation has been sent (by the client, an executor
or the proxy) and not yet picked up.  Both come from the record's invocation runs
(``JobRecord.runs``: when each was sent, picked up and ended, and its waits), so idle
time while an invocation was queued is time the job's executors could have spent on it.
The exit's own round trip (after its end is stamped) and the sender's round trip that
pushes an invocation (after its send is stamped) count as idle and as queued: well under
a millisecond per invocation on one machine.

``idle_while_ready`` is the older, indirect one: how long each executor sat between its
tasks while a task was ready to run and nobody had started it.

A task is *ready* from the moment its last dependency ended (a leaf: from the job's first
task start) until it starts. An executor is *idle* between its tasks. Both come from the
job record's task runs (their start and end, on one machine's clock) and the graph's
dependencies, so the measure needs nothing from the scheduler itself.  Time an executor
spends idle while some ready task waits — in another executor's local stack, in a queue, or
in flight as an invocation — is work the job could have overlapped and did not.  It
over-counts: the gaps between an executor's tasks hold its own work, and a task is
"ready" before its producer has stored the input anyone else would need.
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


def _gaps(xs: list[tuple[float, float]], t0: float, t1: float) -> list[tuple[float, float]]:
    """The parts of [t0, t1] outside the sorted, disjoint intervals ``xs``."""
    out, at = [], t0
    for a, b in xs:
        if a > at:
            out.append((at, min(a, t1)))
        at = max(at, b)
        if at >= t1:
            break
    if t1 > at:
        out.append((at, t1))
    return [(a, b) for a, b in out if b > a]


def _clip(xs: Iterable[tuple[float, float]], t0: float, t1: float) -> list[tuple[float, float]]:
    return [(max(a, t0), min(b, t1)) for a, b in xs if min(b, t1) > max(a, t0)]


def _length(xs: list[tuple[float, float]]) -> float:
    return sum(b - a for a, b in xs)


def span(tasks: Iterable[Any]) -> tuple[float, float]:
    """The job's span: its first task's start to its last task's end."""
    runs = list(tasks)
    return min(r.start for r in runs), max(r.end for r in runs)


def idle_while_queued(runs: Iterable[Any], tasks: Iterable[Any]) -> dict[str, Any]:
    """``runs``: the job's ``InvocationRun``s (worker, sent, picked, ended, waits);
    ``tasks``: its ``TaskRun``s, for the span.  Returns the span, the seconds some
    invocation was queued in it, and per executor its busy seconds and its seconds
    idle while an invocation was queued (see the module docstring), all within the span."""
    runs, tasks = list(runs), list(tasks)
    if not runs or not tasks:
        return {"span_s": 0.0, "queued_s": 0.0, "executors": {}}
    t0, t1 = span(tasks)
    queued = _clip(_union((r.sent, r.picked) for r in runs if 0 < r.sent < r.picked), t0, t1)
    by_worker: dict[str, list[Any]] = {}
    for r in runs:
        by_worker.setdefault(r.worker, []).append(r)
    executors = {}
    for worker, mine in by_worker.items():
        outside = _gaps(_union(_clip(((r.picked, r.ended) for r in mine), t0, t1)), t0, t1)
        idle = _union(outside + _clip((w for r in mine for w in r.waits), t0, t1))
        executors[worker] = {
            "busy_s": round(t1 - t0 - _length(idle), 6),
            "idle_while_queued_s": round(_overlap(idle, queued), 6),
        }
    return {"span_s": round(t1 - t0, 6), "queued_s": round(_length(queued), 6), "executors": executors}


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
        idle = _gaps(busy, t0, t1)
        executors[worker] = {
            "busy_s": round(sum(b - a for a, b in busy), 6),
            "idle_while_ready_s": round(_overlap(idle, ready), 6),
        }
    return {"span_s": round(t1 - t0, 6), "executors": executors}

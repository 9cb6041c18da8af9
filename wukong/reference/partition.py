"""Static scheduling: interning, dependency arrays and static schedules.

This is the pure-Python reference (the test oracle); ``wukong._core`` holds the
compiled twin with the same functions and identical outputs.

State, all plain int64 arrays over dense task ids ``0..n-1`` (ids follow a
topological order, so a dependency's id is smaller than its dependent's):

* ``dep_ptr, dep_idx`` -- CSR of dependencies: task ``t`` depends on
  ``dep_idx[dep_ptr[t]:dep_ptr[t+1]]``.
* ``dnt_ptr, dnt_idx`` -- CSR of dependents, the transpose, each row sorted.
* ``sched_ptr, sched_idx`` -- the static schedules, a path cover of the DAG:
  schedule ``s`` is the chain of tasks ``sched_idx[sched_ptr[s]:sched_ptr[s+1]]``.
* ``toposort`` orders the ids of a graph interned in any order (from which the
  graph is interned again, in that order).
* ``sched_of, pos_of`` -- where each task sits: ``sched_idx[sched_ptr[sched_of[t]]
  + pos_of[t]] == t``.

Schedules are made by depth-first walks: starting from each leaf in id order,
a walk claims the task, then "becomes" the first dependent not yet claimed by
an earlier walk, and stops when every dependent is claimed (the other dependents
are "invoked" at run time).  Tasks no walk from a leaf reached start walks of
their own, in id order.  Every task lies on exactly one schedule, so the total
size of all schedules is ``n``, and an executor that starts at a task needs only
that task's schedule: its start-up cost is independent of the graph's size.
At run time a fan-in task is run by whichever parent completes it, which then
carries on along the fan-in task's schedule.
"""

from __future__ import annotations

from array import array
from collections.abc import Hashable, Sequence


def intern(order: Sequence[Hashable], dependencies: Sequence[Sequence[Hashable]]) -> tuple[dict, array, array]:
    """Dense ids for ``order`` and the CSR of each key's dependencies.

    ``dependencies[i]`` lists the dependency keys of ``order[i]``; the CSR keeps
    their order (the executor pairs ids with keys by position).
    """
    ids = {k: i for i, k in enumerate(order)}
    dep_ptr = array("q", [0])
    dep_idx = array("q")
    for deps in dependencies:
        dep_idx.extend(ids[d] for d in deps)
        dep_ptr.append(len(dep_idx))
    return ids, dep_ptr, dep_idx


def toposort(n: int, dep_ptr: array, dep_idx: array) -> array:
    """Kahn's topological order of tasks whose ids need not be topological.

    First every task with no dependencies, by id; then, taking the order's
    tasks one by one, each dependent (by id) whose last dependency that was.
    Shorter than ``n`` when the graph has a cycle: the tasks on or behind one
    are left out.
    """
    dnt_ptr, dnt_idx = dependents(n, dep_ptr, dep_idx)
    missing = [dep_ptr[t + 1] - dep_ptr[t] for t in range(n)]
    order = array("q", [t for t in range(n) if missing[t] == 0])
    i = 0
    while i < len(order):
        for c in dnt_idx[dnt_ptr[order[i]] : dnt_ptr[order[i] + 1]]:
            missing[c] -= 1
            if missing[c] == 0:
                order.append(c)
        i += 1
    return order


def dependents(n: int, dep_ptr: array, dep_idx: array) -> tuple[array, array]:
    """Transpose the dependency CSR; each row of dependents sorted by id."""
    rows: list[list[int]] = [[] for _ in range(n)]
    for t in range(n):
        for d in dep_idx[dep_ptr[t] : dep_ptr[t + 1]]:
            rows[d].append(t)
    dnt_ptr = array("q", [0])
    dnt_idx = array("q")
    for row in rows:
        dnt_idx.extend(row)  # t ascends, so rows come out sorted
        dnt_ptr.append(len(dnt_idx))
    return dnt_ptr, dnt_idx


def schedules(n: int, dep_ptr: array, dnt_ptr: array, dnt_idx: array) -> tuple[array, array, array, array]:
    """The path cover described in the module docstring."""
    sched_of = array("q", [-1]) * n
    pos_of = array("q", [-1]) * n
    sched_ptr = array("q", [0])
    sched_idx = array("q")
    leaves = [t for t in range(n) if dep_ptr[t] == dep_ptr[t + 1]]
    for start in leaves + list(range(n)):
        if sched_of[start] != -1:
            continue
        s = len(sched_ptr) - 1
        t = start
        while t != -1:
            sched_of[t] = s
            pos_of[t] = len(sched_idx) - sched_ptr[s]
            sched_idx.append(t)
            t = next((c for c in dnt_idx[dnt_ptr[t] : dnt_ptr[t + 1]] if sched_of[c] == -1), -1)
        sched_ptr.append(len(sched_idx))
    return sched_ptr, sched_idx, sched_of, pos_of


def write_order(
    sched_ptr: array, sched_idx: array, sched_of: array, dnt_ptr: array, dnt_idx: array, starts: Sequence[int]
) -> tuple[array, array]:
    """The order in which to write the schedules so that invocations can start early.

    An executor that starts on schedule ``s`` may read the schedule of any task
    downstream of ``s``'s tasks (a dependent it invokes, a fan-in it completes,
    and so on).  For each of ``starts`` in turn, a depth-first walk over
    schedules appends every schedule downstream of it not yet in the order;
    ``ready[i]`` is the length of the order once ``starts[i]``'s walk is done:
    invoking ``starts[i]`` is safe once that many schedules are written.  The
    written schedules are always closed downstream, so a walk stops at them.
    With every leaf schedule among ``starts`` the order holds every schedule
    once (each task lies downstream of some leaf).
    """
    seen = bytearray(len(sched_ptr) - 1)
    order = array("q")
    ready = array("q")
    for start in starts:
        stack = [start]
        while stack:
            s = stack.pop()
            if seen[s]:
                continue
            seen[s] = 1
            order.append(s)
            for t in sched_idx[sched_ptr[s] : sched_ptr[s + 1]]:
                stack.extend(sched_of[c] for c in dnt_idx[dnt_ptr[t] : dnt_ptr[t + 1]] if not seen[sched_of[c]])
        ready.append(len(order))
    return order, ready


def needed(n: int, dep_ptr: array, dep_idx: array, roots: Sequence[int]) -> array:
    """The tasks ``roots`` need, themselves included (a cull), in the order a
    depth-first walk from them meets them: ``roots`` taken from the last, each
    task's dependencies pushed in order, the last pushed visited first."""
    seen = bytearray(n)
    order = array("q")
    stack = list(roots)
    while stack:
        t = stack.pop()
        if not seen[t]:
            seen[t] = 1
            order.append(t)
            stack.extend(d for d in dep_idx[dep_ptr[t] : dep_ptr[t + 1]] if not seen[d])
    return order


def relabel(kept: Sequence[int], dep_ptr: array, dep_idx: array) -> tuple[array, array]:
    """The dependency CSR of the tasks ``kept``, each renamed to its position in
    ``kept`` (as ``intern`` of them in that order would give); a dependency
    that is not kept raises ``ValueError``."""
    new = {t: i for i, t in enumerate(kept)}
    out_ptr = array("q", [0])
    out_idx = array("q")
    for t in kept:
        for d in dep_idx[dep_ptr[t] : dep_ptr[t + 1]]:
            if d not in new:
                raise ValueError(f"task {t} depends on {d}, which is not kept")
            out_idx.append(new[d])
        out_ptr.append(len(out_idx))
    return out_ptr, out_idx

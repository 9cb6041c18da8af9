"""Per-task durations and output sizes, from a local run of the graph.

``record(dsk, keys)`` runs the graph's tasks one at a time in this process
(the executor's own call, ``node({dependency key: value})``), timing each and
measuring its output as wukong ships it (``serialization.dumps``).  A
``Profile`` answers ``cost(key) -> (seconds, bytes)``; for a key it has not
seen it answers with the mean of the keys of the same kind (``key_split``:
``"matmul"``, ``"add"``...), so a profile recorded at a small size with the
same chunk shape prices the same workload at full size.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Hashable
from typing import Any

from dask.utils import key_split

from wukong import serialization
from wukong.graph import prepare


class Profile:
    """Measured ``(seconds, output bytes)`` per task key, and per kind of task."""

    def __init__(
        self,
        tasks: dict[Hashable, tuple[float, int]],
        kinds: dict[str, tuple[float, int]] | None = None,
        cpu: dict[Hashable, float] | None = None,
    ):
        self.tasks = tasks
        self.cpu = cpu or {}  # key -> CPU seconds (more than its seconds when it ran on several threads)
        self.kinds = kinds if kinds is not None else _kinds(tasks)
        self.guess = False  # price a kind never recorded at the mean task instead of raising
        self.guessed: set[str] = set()
        n = max(1, len(self.kinds))
        self.mean = (sum(s for s, _ in self.kinds.values()) / n, round(sum(b for _, b in self.kinds.values()) / n))

    def cost(self, key: Hashable) -> tuple[float, int]:
        got = self.tasks.get(key)
        if got is not None:
            return got
        kind = key_split(key)
        if kind in self.kinds:
            return self.kinds[kind]
        # a variant of a recorded kind ("chunk_sum-partial" of "chunk_sum": wider graphs reduce in steps)
        stem = kind.split("-")[0]
        for known, cost in self.kinds.items():
            if known.split("-")[0] == stem:
                return cost
        if not self.guess:
            raise KeyError(f"the profile has no task of kind {kind!r} (key {key!r}): record one of this workload")
        self.guessed.add(kind)  # priced at the mean task: said in the report
        return self.mean

    def cpu_seconds(self, key: Hashable) -> float:
        """The task's demand on shared cores: its CPU seconds when recorded (all its threads';
        unlike its seconds, not stretched by other work on the machine), else its seconds."""
        got = self.cpu.get(key)
        return got if got is not None else self.cost(key)[0]

    def with_job(self, job: Any) -> Profile:
        """This profile with each task's CPU seconds as a job (a ``JobRecord``) measured them on
        the executor that ran it: with the executors' fresh memory and shared caches, which a
        recording in one process does not pay.  A task's seconds become those CPU seconds plus
        what it spent off the CPU when recorded (sleeping, waiting); its bytes stay recorded."""
        tasks, cpu = dict(self.tasks), dict(self.cpu)
        for t in job.tasks:
            if t.key in tasks:
                seconds, nbytes = tasks[t.key]
                off_cpu = max(0.0, seconds - self.cpu.get(t.key, seconds))
                tasks[t.key] = (t.cpu + off_cpu, nbytes)
                cpu[t.key] = t.cpu
        return Profile(tasks, cpu=cpu)

    def total_seconds(self) -> float:
        return sum(s for s, _ in self.tasks.values())

    def to_json(self) -> str:
        return json.dumps({"kinds": self.kinds})

    @classmethod
    def from_json(cls, text: str) -> Profile:
        kinds = {k: (float(s), int(b)) for k, (s, b) in json.loads(text)["kinds"].items()}
        return cls({}, kinds)


def _kinds(tasks: dict[Hashable, tuple[float, int]]) -> dict[str, tuple[float, int]]:
    acc: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
    for key, (s, b) in tasks.items():
        a = acc[key_split(key)]
        a[0] += s
        a[1] += b
        a[2] += 1
    return {k: (s / n, round(b / n)) for k, (s, b, n) in acc.items()}


def waited_for_a_core() -> float:
    """Seconds this thread has spent runnable but waiting for a core (Linux's schedstat); 0.0
    where the kernel does not say."""
    try:
        with open("/proc/thread-self/schedstat", "rb") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def record(dsk: Any, keys: Any) -> Profile:
    """Run the graph here, task by task: each task's seconds and serialized output bytes.

    A task's seconds are its wall time less the time its thread waited for a core, so that
    a profile recorded beside other work prices each task as on a core of its own."""
    order, graph = prepare(dsk, keys)
    readers: dict[Hashable, int] = defaultdict(int)
    for k in order:
        for d in graph[k].dependencies:
            readers[d] += 1
    values: dict[Hashable, Any] = {}
    tasks: dict[Hashable, tuple[float, int]] = {}
    cpu: dict[Hashable, float] = {}
    for k in order:
        node = graph[k]
        args = {d: values[d] for d in node.dependencies}
        c0, w0, t0 = time.process_time(), waited_for_a_core(), time.perf_counter()
        value = node(args)
        wall, waited = time.perf_counter() - t0, waited_for_a_core() - w0
        cpu[k] = time.process_time() - c0
        # a wait is accounted when the thread gets its core back, so one that began before the
        # task can show in it: never below its CPU time, never above its wall time
        seconds = min(wall, max(wall - waited, cpu[k]))
        tasks[k] = (seconds, len(serialization.dumps(value)))
        for d in node.dependencies:
            readers[d] -= 1
            if readers[d] == 0:
                del values[d]
        if readers[k] or k not in values:
            values[k] = value
    return Profile(tasks, cpu=cpu)


class _Captured(Exception):
    pass


def graph_of(*collections: Any) -> tuple[Any, Any]:
    """``(dsk, keys)`` as Dask hands them to a scheduler for ``dask.compute(*collections)``."""
    import dask

    got: list = []

    def capture(dsk: Any, keys: Any, **kwargs: Any) -> Any:
        got.append((dsk, keys))
        raise _Captured()

    try:
        dask.compute(*collections, scheduler=capture)
    except _Captured:
        pass
    return got[0]

"""Running a simulation and what it reports (``Report``)."""

from __future__ import annotations

import os
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from wukong.cost import job_cost
from wukong.graph import flatten_keys, prepare
from wukong.scheduler import plan
from wukong.simulate.engine import Simulation, Span
from wukong.simulate.model import Model
from wukong.simulate.profile import Profile, graph_of


@dataclass
class Report:
    """A simulated job: predictions, and the accounting the tests hold the simulator to."""

    model: Model
    tasks: int
    makespan: float  # seconds from the client's first invoke until it has every result (and every executor ended)
    executors_end: float  # the last executor's end
    executors: int  # executor invocations
    tree_nodes: int  # invoker-tree invocations
    environments: int  # execution environments started (cold starts)
    peak_concurrency: int
    kvs_bytes: int  # bytes stored in the KV store (outputs read elsewhere)
    event_bytes: int  # bytes of outputs carried inline in invocation events
    network_bytes: int  # bytes between executors and Redis, both directions
    work_seconds: float  # sum of the profiled task durations (at task_speed)
    cpu_seconds: float  # the executors' computing: tasks, (de)serializing, starts, invokes, moving bytes
    server_seconds: float  # the Redis servers' work
    cost: dict
    spans: list[Span]
    ran: dict[int, int]  # task id -> times run
    read_bytes: dict[int, int]  # task id -> bytes of its output read back from the KVS
    reads: dict[int, int]  # task id -> times its output was read back
    stored: dict[int, int]  # task id -> bytes of its output stored in the KVS
    sizes: list[int]  # task id -> profiled output bytes
    keys: list[Hashable]  # task id -> key
    task_start: Sequence[float]  # task id -> when it started running, in simulated seconds
    task_end: Sequence[float]

    def ideal(self, concurrency: int | None = None) -> float:
        """Work / concurrency: perfect scaling, no overhead."""
        return self.work_seconds / (concurrency or self.model.concurrency)

    def one_machine(self, cores: int | None = None) -> float:
        """The same work on one machine with ``cores`` cores (this one's by default), no overhead."""
        return self.work_seconds / (cores or os.cpu_count() or 1)

    def timeline(self, width: int = 60, rows: int = 12) -> str:
        """Running executors over time, as text: one row per time slice."""
        if not self.spans or self.makespan <= 0:
            return ""
        out = []
        for r in range(rows):
            t0, t1 = self.makespan * r / rows, self.makespan * (r + 1) / rows
            n = sum(1 for s in self.spans if s.start < t1 and s.end > t0)
            bar = "#" * round(width * n / max(1, self.peak_concurrency))
            out.append(f"{t0:9.3f}s {n:>7} {bar}")
        return "\n".join(out)

    def __str__(self) -> str:
        m = self.model
        lines = [
            f"predicted makespan   {self.makespan:.3f} s  (ideal {self.ideal():.3f} s at {m.concurrency}-way, "
            f"one {os.cpu_count()}-core machine {self.one_machine():.3f} s)",
            f"tasks                {self.tasks}  ({self.work_seconds:.3f} s of work)",
            f"executors            {self.executors} invocations + {self.tree_nodes} invoker-tree nodes, "
            f"{self.environments} environments (cold starts)",
            f"peak concurrency     {self.peak_concurrency} (limit {m.concurrency})",
            f"bytes moved          {self.network_bytes:,} to/from Redis, {self.kvs_bytes:,} stored, "
            f"{self.event_bytes:,} inline in events",
            f"cost                 ${self.cost['price_usd']:.6f} ({self.cost['gb_seconds']:.1f} GB-s, "
            f"{self.cost['requests']} requests)",
            "timeline (running executors)",
            self.timeline(),
        ]
        return "\n".join(lines)


def simulate_graph(
    dsk: Any, keys: Any, profile: Profile, model: Model | None = None, **executor_options: Any
) -> Report:
    """Simulate the graph ``dsk`` (what Dask hands a scheduler) computing ``keys``."""
    model = model or Model.aws()
    order, graph = prepare(dsk, keys)
    p = plan(order, graph, flatten_keys(keys))
    keys_of: list[Hashable] = list(order)  # the planner's task ids are positions in ``order``
    del order, graph  # the plan has what the simulation needs (a million tasks' graph is gigabytes)
    sim = Simulation(p, keys_of, profile, model, **executor_options)
    sim.run()
    if sim.errors:
        raise RuntimeError(f"the simulated job failed: {sim.errors[0]}")
    executors = [s for s in sim.spans if s.kind == "executor"]
    durations = [((s.end - s.start) * 1000, model.memory_mb) for s in sim.spans]
    report = Report(
        model=model,
        tasks=p.ntasks,
        makespan=max(sim.results_at, max((s.end for s in sim.spans), default=0.0)),
        executors_end=max((s.end for s in sim.spans), default=0.0),
        executors=len(executors),
        tree_nodes=len(sim.spans) - len(executors),
        environments=sim.envs,
        peak_concurrency=sim.peak,
        kvs_bytes=sim.stored_bytes,
        event_bytes=sim.event_bytes,
        network_bytes=sim.sent_bytes + sim.received_bytes,
        work_seconds=sum(sim.durations) / model.task_speed,
        cpu_seconds=sim.cpu_seconds,
        server_seconds=sim.server_seconds,
        cost=job_cost(durations),
        spans=sim.spans,
        ran=dict(sim.ran),
        read_bytes=dict(sim.read_bytes),
        reads=dict(sim.reads),
        stored=dict(sim.stored),
        sizes=sim.sizes,
        keys=keys_of,
        task_start=sim.task_start,
        task_end=sim.task_end,
    )
    sim.release()
    return report


def simulate(*collections: Any, profile: Profile, model: Model | None = None, **executor_options: Any) -> Report:
    """Simulate ``dask.compute(*collections)`` on the modelled platform."""
    dsk, keys = graph_of(*collections)
    return simulate_graph(dsk, keys, profile, model, **executor_options)

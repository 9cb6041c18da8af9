"""Where a job's time goes, inside its tasks and outside them: ``python -m bench.taskgroups``.

A system can be slower than Dask's for two reasons: its tasks run slower (they contend
for memory bandwidth, caches or the GIL differently), or it spends time between them
(storing, reading, round trips).  This times every task of a workload's jobs and sums
them per task group (Dask's ``key_split`` of the key), per system, the systems taking
turns job by job so that each sees the same moments of the machine.

Tasks are timed where they run: on ``sync`` and ``threads`` on the thread that runs the
task (``dask.local``'s ``loads`` hook hands it over, wrapped in a timer); on wukong by the executor's
own record of each task (``client.jobs[-1].tasks``).  ``outside tasks`` is what the
task-running threads had (the job's time × their number) less what the tasks took:
time between tasks, and time a thread had nothing to run.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import time
from collections import defaultdict
from typing import Any

import dask
from dask._task_spec import GraphNode
from dask.utils import key_split

from bench import harness, workloads

SYSTEMS = ("threads", "sync", "wukong", "wukong-threads")  # those whose tasks are timed where they run


class _TaskTimer:
    """Seconds per task, timed on the thread that runs it (a local Dask scheduler).

    ``dask.local`` hands each task and its inputs through ``loads`` on the thread that
    runs it (and, on the scheduler's thread, each result through ``loads`` too): the
    task is handed back wrapped in a timer."""

    def __init__(self) -> None:
        self.spans: list[tuple[Any, float]] = []

    def loads(self, info: tuple) -> tuple:
        node, data = info
        if not isinstance(node, GraphNode):  # a result arriving on the scheduler's thread
            return info
        spans = self.spans

        def timed(inputs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return node(inputs)
            finally:
                spans.append((node.key, time.perf_counter() - t0))

        return timed, data


def _threads(system: harness.System) -> int:
    """How many threads run the system's tasks."""
    return 1 if system.name == "sync" else harness._cores()


def _one_job(system: harness.System, wl: workloads.Workload, reference: tuple) -> tuple[float, dict[str, float]]:
    """One job's seconds and its task seconds per group; its result checked against ``reference``."""
    timer = _TaskTimer() if system.last_tasks is None else None
    hooks = {"loads": timer.loads} if timer is not None else {}
    with harness._blas_limit(system.blas_threads):
        t0 = time.perf_counter()
        result = dask.compute(*wl.collections, scheduler=system.scheduler, **system.kwargs, **hooks)
        seconds = time.perf_counter() - t0
    mismatch = wl.check(result, reference)
    if mismatch:
        raise AssertionError(f"{wl.name} on {system.name}: {mismatch}")
    spans = timer.spans if timer is not None else system.last_tasks()
    groups: dict[str, float] = defaultdict(float)
    for key, busy in spans:
        groups[key_split(key)] += busy
    return seconds, groups


def measure(name: str, size: str, systems: list[harness.System], runs: int, warmup: int = 2) -> dict:
    """Medians over ``runs`` jobs per system, taken in turn: the job's seconds, and per task
    group the seconds its tasks took in a job.  Every result is checked against ``sync``'s."""
    wl = workloads.build(name, size)
    reference = harness._reference(wl)
    gc.collect()  # as the harness does before a cell's warm-up, not between its runs
    for system in systems:
        for _ in range(warmup):
            _one_job(system, wl, reference)
    jobs: dict[str, list[float]] = defaultdict(list)
    groups: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for _ in range(runs):
        for system in systems:
            seconds, per_group = _one_job(system, wl, reference)
            jobs[system.name].append(seconds)
            for group, busy in per_group.items():
                groups[system.name][group].append(busy)
            groups[system.name]["(all tasks)"].append(sum(per_group.values()))
    out: dict[str, Any] = {"workload": name, "size": size, "runs": runs, "systems": {}}
    for system in systems:
        job = statistics.median(jobs[system.name])
        tasks = {g: statistics.median(v) for g, v in groups[system.name].items()}
        threads = _threads(system)
        out["systems"][system.name] = {
            "job_s": job,
            "threads": threads,
            "tasks_s": tasks,
            "outside_s": job * threads - tasks.get("(all tasks)", 0.0),
        }
    return out


def table(result: dict) -> str:
    names = list(result["systems"])
    rows = result["systems"]
    groups = sorted({g for r in rows.values() for g in r["tasks_s"]}, key=lambda g: (g == "(all tasks)", g))
    width = max(len(g) for g in [*groups, "outside tasks", "job (× threads)"]) + 2
    lines = [
        f"{result['workload']} [{result['size']}], medians of {result['runs']} jobs per system, seconds per job",
        "".ljust(width) + "".join(f"{n:>16}" for n in names),
    ]
    for g in groups:
        lines.append(g.ljust(width) + "".join(f"{rows[n]['tasks_s'].get(g, 0.0):>16.4f}" for n in names))
    lines.append("outside tasks".ljust(width) + "".join(f"{rows[n]['outside_s']:>16.4f}" for n in names))
    lines.append(
        "job (× threads)".ljust(width) + "".join(f"{rows[n]['job_s']:>11.4f} × {rows[n]['threads']:<2}" for n in names)
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.taskgroups", description=__doc__.splitlines()[0])
    p.add_argument("--only", default="gemm,svd_compressed", help="workloads, comma-separated")
    p.add_argument("--size", default="small", choices=["tiny", "small", "full"])
    p.add_argument("--systems", default="threads,wukong-threads,wukong", help=f"of {', '.join(SYSTEMS)}")
    p.add_argument("--runs", type=int, default=10, help="jobs per system per workload")
    args = p.parse_args(argv)
    names = args.systems.split(",")
    unknown = [n for n in names if n not in SYSTEMS]
    if unknown:
        p.error(f"tasks are timed where they run only on {', '.join(SYSTEMS)}; not on {', '.join(unknown)}")
    print(f"load before: {os.getloadavg()[0]:.2f} on {harness._cores()} cores")
    systems = [harness.STARTERS[n]() for n in names]
    try:
        for name in args.only.split(","):
            print(table(measure(name, args.size, systems, args.runs)), end="\n\n")
    finally:
        for system in systems:
            system.close()


if __name__ == "__main__":
    main()

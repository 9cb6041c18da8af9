"""A wukong job's edges: ``python -m bench.edges``.

Per job, from the client's call to its return: the time to the first task's start
(planning, the first invocation, the worker's pick-up), the span of the tasks (first
start to last end) and the tail (the last task's end to the return: the result's way
to the client).  From the job record (``client.jobs[-1].tasks``, the executors' own
clocks: one machine's), every result checked against ``sync``'s.  Medians, minima and
maxima of ``--runs`` jobs after two warm-ups.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import time

import dask

from bench import harness, workloads


def edges(name: str, size: str, wukong: str, runs: int, warmup: int = 2) -> dict[str, list[float]]:
    wl = workloads.build(name, size)
    reference = harness._reference(wl)
    system = harness.STARTERS[wukong]()
    out: dict[str, list[float]] = {"job": [], "to first task": [], "span": [], "tail": []}
    try:
        assert system.last_record is not None
        gc.collect()  # as the harness does before a cell's warm-up, not between its runs
        for i in range(warmup + runs):
            t0 = time.time()
            result = dask.compute(*wl.collections, scheduler=system.scheduler, **system.kwargs)
            t1 = time.time()
            mismatch = wl.check(result, reference)
            if mismatch:
                raise AssertionError(f"{name} on {wukong}: {mismatch}")
            if i < warmup:
                continue
            tasks = system.last_record().tasks
            first, last = min(t.start for t in tasks), max(t.end for t in tasks)
            out["job"].append(t1 - t0)
            out["to first task"].append(first - t0)
            out["span"].append(last - first)
            out["tail"].append(t1 - last)
    finally:
        system.close()
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.edges", description=__doc__.splitlines()[0])
    p.add_argument("--only", default="gemm", help="workloads, comma-separated")
    p.add_argument("--size", default="small", choices=["tiny", "small", "full"])
    p.add_argument("--wukong", default="wukong", choices=["wukong", "wukong-threads"], help="processes or threads")
    p.add_argument("--runs", type=int, default=12, help="timed jobs per workload")
    args = p.parse_args(argv)
    print(f"load before: {os.getloadavg()[0]:.2f} on {harness._cores()} cores; {args.wukong}, medians [min, max], ms")
    for name in args.only.split(","):
        parts = edges(name, args.size, args.wukong, args.runs)
        cells = ", ".join(
            f"{k} {1e3 * statistics.median(v):.1f} [{1e3 * min(v):.1f}, {1e3 * max(v):.1f}]" for k, v in parts.items()
        )
        print(f"{name} [{args.size}]: {cells}")


if __name__ == "__main__":
    main()

"""Planning at scale: from ``client.get`` to the first invocations sent, and the client's memory.

    python -m bench.plan                        # 100k and 1M tasks, every shape
    python -m bench.plan --tasks 1000000 --shapes tree,array

Each (shape, size) runs in a fresh child process with a ``LocalCluster`` of one
worker.  The graph is built first (not timed); the process's peak RSS is then
reset (``/proc/self/clear_refs``) and ``client.get`` is called.  The job is
stopped as soon as its invocations are sent -- the run is not measured -- so
the numbers are what a caller waits for before the first executor can start:

* ``plan``: graph conversion, cull, validation and ``scheduler.plan``
  (``JobRecord.plan_s``);
* ``first``: from ``get``'s entry to the first invocation sent (``JobRecord.first_s``):
  the schedules are written as they are pickled, and a group of leaves is invoked
  as soon as every schedule it may read is written;
* ``launch``: from ``get``'s entry to the last leaf invoked, every schedule
  written to the MDS (``JobRecord.launch_s``); ``cpu``: the client's CPU seconds
  over the same span (steadier than wall time on a loaded machine);
* ``peak``: the client's peak RSS during ``get``; ``graph``: its RSS before
  (the Dask graph, built by the caller).

Shapes, each of about ``--tasks`` tasks:

* ``tree``: a binary tree reduction, a raw dict of legacy tuple tasks;
* ``array``: ``da.ones(n/2, chunks=1).sum(split_every=2)`` (dask.array's own tree);
* ``wide``: ``n/2`` independent ``load -> inc`` chains, every ``inc`` requested
  (embarrassingly parallel, many outputs).

Compare numbers within one run: the machine is shared (``load`` is printed).
"""

from __future__ import annotations

import argparse
import json
import operator
import os
import subprocess
import sys
import time

SHAPES = ("tree", "array", "wide")
HEADER = "{:6} {:>8} {:>8} {:>7} {:>7} {:>8} {:>6} {:>11} {:>8} {:>8}"
ROW = "{:6} {:>8} {:>8} {:>7.2f} {:>7.2f} {:>8.2f} {:>6.2f} {:>11.1f} {:>8.0f} {:>8.0f}"


def _inc(x: int) -> int:
    return x + 1


def tree(n: int) -> tuple[dict, list]:
    leaves = (n + 1) // 2
    dsk: dict = {("x", i): i for i in range(leaves)}
    level = [("x", i) for i in range(leaves)]
    depth = 0
    while len(level) > 1:
        depth += 1
        nxt = []
        for i in range(0, len(level) - 1, 2):
            key = ("sum", depth, i // 2)
            dsk[key] = (operator.add, level[i], level[i + 1])
            nxt.append(key)
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return dsk, [level[0]]


def array(n: int) -> tuple[object, list]:
    import dask.array as da

    x = da.ones((n + 1) // 2, chunks=1).sum(split_every=2)
    return x.__dask_graph__(), x.__dask_keys__()


def wide(n: int) -> tuple[dict, list]:
    m = n // 2
    dsk: dict = {}
    for i in range(m):
        dsk[("load", i)] = i
        dsk[("inc", i)] = (_inc, ("load", i))
    return dsk, [("inc", i) for i in range(m)]


def _status(field: str) -> int:
    """A ``/proc/self/status`` field in bytes (VmRSS, VmHWM)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


class _Stop(Exception):
    """Raised once the job's invocations are sent: the run is not measured."""


def child(shape: str, n: int, profile: str | None) -> dict:
    import gc

    import wukong
    from wukong.client import Job

    launched: list[float] = []

    def stop(self: Job) -> None:
        launched.append(time.process_time())  # the invocations are sent: the client's CPU so far
        raise _Stop

    with wukong.LocalCluster(n_workers=1) as cluster, wukong.Client(cluster) as client:
        client.get({"warm": (_inc, 1)}, "warm")  # the cluster's start-up is not timed
        Job.wait = stop  # type: ignore[method-assign]
        dsk, keys = globals()[shape](n)
        gc.collect()
        graph_rss = _status("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        t0, cpu0 = time.perf_counter(), time.process_time()
        prof = None
        if profile:
            import cProfile

            prof = cProfile.Profile()
            prof.enable()
        try:
            client.get(dsk, keys)
        except _Stop:
            pass
        if prof is not None:
            prof.disable()
            prof.dump_stats(profile)
        total = time.perf_counter() - t0
        peak = _status("VmHWM")
        record = client.jobs[-1]
    return {
        "shape": shape,
        "tasks": record.ntasks,
        "schedules": record.nschedules,
        "plan_s": record.plan_s,
        "first_s": record.first_s,
        "launch_s": record.launch_s,
        "launch_cpu_s": launched[0] - cpu0,
        "get_s": total,  # launch_s + stopping the job and deleting its keys
        "graph_rss": graph_rss,
        "peak_rss": peak,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.plan", description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", default="100000,1000000", help="sizes, comma-separated (default 100000,1000000)")
    p.add_argument("--shapes", default=",".join(SHAPES), help=f"comma-separated, of {','.join(SHAPES)}")
    p.add_argument("--profile", help="write a cProfile of get to this file (one shape and size)")
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), args.profile)))
        return 0
    shapes = [s for s in args.shapes.split(",") if s]
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown:
        p.error(f"unknown shape {', '.join(unknown)}; choose from {', '.join(SHAPES)}")
    print(f"load {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    print(
        HEADER.format(
            "shape", "tasks", "scheds", "plan s", "first s", "launch s", "cpu s", "cpu µs/task", "graph MB", "peak MB"
        )
    )
    for size in (int(s) for s in args.tasks.split(",")):
        for shape in shapes:
            cmd = [sys.executable, "-m", "bench.plan", "--child", shape, str(size)]
            if args.profile:
                cmd += ["--profile", args.profile]
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
            if out.returncode != 0:
                print(f"{shape:6} {size:>8} failed:\n{out.stderr[-2000:]}")
                return 1
            r = json.loads(out.stdout.strip().splitlines()[-1])
            cells = [r[k] for k in ("tasks", "schedules", "plan_s", "first_s", "launch_s", "launch_cpu_s")]
            per_task = 1e6 * r["launch_cpu_s"] / r["tasks"]
            print(ROW.format(shape, *cells, per_task, r["graph_rss"] / 2**20, r["peak_rss"] / 2**20), flush=True)
    print(f"load {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

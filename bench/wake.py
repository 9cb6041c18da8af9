"""A one-task job after the client has been idle: ``python -m bench.wake``.

A job's fixed cost is its hops between processes: the client's pipeline to Redis and
on to the worker blocked on the queue, the executor's start, its exit back to the
client blocked on the job's stream, the clean-up.  A process that has slept a while
wakes more slowly than one that has just run, so the fixed cost depends on how long
the client took between jobs (Dask's optimization, the plan).  Here a job of one
``operator.add`` runs right after the last, and after the client slept or spun for
5 and 20 ms; ``sync``'s time for the same graph beside it.  Medians of ``--runs`` jobs.
"""

from __future__ import annotations

import argparse
import operator
import os
import statistics
import time

import dask

GAPS_MS = (0, 5, 20)


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def wake(runs: int) -> list[tuple[str, float]]:
    """(how the client waited before each job, the median job in ms)."""
    from wukong import Client, LocalCluster

    graph = {"a": (operator.add, 1, 2)}
    rows = []
    with LocalCluster() as cluster:
        client = Client(cluster, progress=False)
        for _ in range(20):
            client.get(graph, ["a"])
        for gap in GAPS_MS:
            for how, wait in (("sleep", time.sleep), ("spin", _spin)) if gap else (("none", None),):
                times = []
                for _ in range(runs):
                    if wait is not None:
                        wait(gap / 1000)
                    t0 = time.perf_counter()
                    assert client.get(graph, ["a"]) == (3,)
                    times.append(time.perf_counter() - t0)
                rows.append((f"{gap} ms ({how})", statistics.median(times) * 1e3))
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        dask.get(graph, ["a"])
        times.append(time.perf_counter() - t0)
    rows.append(("sync", statistics.median(times) * 1e3))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.wake", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=300)
    args = parser.parse_args(argv)
    print(f"a one-task job, median of {args.runs}, ms; load average {os.getloadavg()[0]:.2f}")
    print(f"{'client idle before each job':>28} {'ms':>7}")
    for label, ms in wake(args.runs):
        print(f"{label:>28} {ms:>7.3f}")


if __name__ == "__main__":
    main()

"""A solo job's plan in its queue entry or through Redis: ``python -m bench.inline_plan``.

On the local backend a solo job's plan up to ``local.INLINE_PLAN`` bytes travels in
its queue entry, and its executor runs the tasks while its lease is being taken
(``executor._Run.start_inline``); a longer one is SET by the client and read with the
lease.  In the entry the plan crosses Redis three times (pushed, moved to the
worker, and sent back by the exit's LREM that acknowledges the entry), against
twice (SET, GET); what it saves is the start's round trip.  Here one cluster runs a
three-task solo job whose plan carries ``size`` bytes of arguments both ways, the
two alternating job by job; medians of ``--runs`` jobs each.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import dask

SIZES_KIB = (64, 128, 192, 256, 512, 1024)


def _length(blob: bytes, i: int) -> int:
    return len(blob) + i


def _add(*xs: int) -> int:
    return sum(xs)


def inline_or_redis(runs: int, sizes_kib: tuple[int, ...] = SIZES_KIB) -> dict[int, tuple[float, float]]:
    """plan size (KiB) -> (median ms in the queue entry, median ms through Redis)."""
    from wukong import Client, LocalCluster

    out = {}
    with dask.config.set({"wukong.solo-work": 1e9}), LocalCluster(n_workers=2) as cluster:
        client = Client(cluster, progress=False)
        backend = cluster.backend
        for kib in sizes_kib:
            half = kib << 9
            dsk = {
                "a-1": (_length, os.urandom(half), 1),
                "a-2": (_length, os.urandom(half), 2),
                "c-1": (_add, "a-1", "a-2"),
            }
            times: dict[int, list[float]] = {1 << 62: [], 0: []}
            for i in range(runs + 2):  # the first two teach the client that the tasks are short
                for cap in times:
                    backend.inline_plan = cap  # type: ignore[misc]
                    t0 = time.perf_counter()
                    assert client.get(dsk, "c-1") == 2 * half + 3
                    if i >= 2:
                        assert client.last_job["solo"]
                        times[cap].append(time.perf_counter() - t0)
            out[kib] = (statistics.median(times[1 << 62]) * 1e3, statistics.median(times[0]) * 1e3)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.inline_plan", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args(argv)
    print(f"a solo job of 3 tasks, median of {args.runs} each, ms; load average {os.getloadavg()[0]:.2f}")
    print(f"{'plan KiB':>9} {'in entry':>9} {'in Redis':>9} {'entry / Redis':>14}")
    for kib, (inline, redis) in inline_or_redis(args.runs).items():
        print(f"{kib:>9} {inline:>9.3f} {redis:>9.3f} {inline / redis:>13.3f}x")


if __name__ == "__main__":
    main()

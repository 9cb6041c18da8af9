"""The local data plane against memcpy: ``python -m bench.dataplane``.

For float64 arrays of a few sizes, microseconds per MB of:

* ``write``: what an executor does to hand a large value to another process --
  serialize (``serialization.dumps_parts``, no compression on the local
  backend) and write the pieces to a file on ``/dev/shm`` (``shm.write``): a
  new one, or one an ended job left in the pool (``shm``'s docstring);
* ``read``: what the reader does -- map the file (``shm.read``) and unpickle
  (``serialization.loads``): the array is used in place, no byte copied;
* ``memcpy (fresh)``: copying the array into newly allocated memory (what any
  writer into fresh pages pays, page faults included);
* ``memcpy (reused)``: copying it into memory already touched (the floor);
* ``remove``: what the client does with the file when the job ends -- unlink
  it (its pages are freed), or keep it in the pool for the next write.

Best of ``--repeat`` runs each.

``--threshold``: what a fresh value of 64 KiB to 1 MiB costs written, read and removed
through Redis and through a file, the measure behind ``shm.SHM_MIN``; and what a job's
result of 64 KiB to 1 MiB costs on the job's event stream and through a file, the
measure behind ``shm.SHM_MIN`` for results (``Executor``'s ``result_shm_min``; real
jobs, their client blocked on the stream).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable

import numpy as np

from wukong import serialization
from wukong.store import shm

SIZES_MB = (1, 4.5, 32)


def best_us(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times) * 1e6


def measure(mb: float, repeat: int, directory: str) -> dict[str, float]:
    """µs per MB of each path for one array of ``mb`` megabytes, in the cluster directory
    ``directory`` (with its pool of kept files)."""
    x = np.random.default_rng(0).random(int(mb * 1e6) // 8)
    raw = memoryview(x).cast("B")
    reused = bytearray(len(raw))
    fresh = tempfile.mkdtemp(dir=directory)  # no pool there: every write makes a new file
    counter = iter(range(10**9))

    def cycle(where: str, keep: bool) -> tuple[float, float]:
        """Best write and best removal: unlinked, or moved to the pool for the next write."""
        writes, removals = [], []
        for _ in range(repeat):
            job = f"bench{next(counter)}"
            t0 = time.perf_counter()
            shm.write(where, f"wk:{job}:d:0", serialization.dumps_parts(x, compress=False))
            t1 = time.perf_counter()
            if keep:
                shm.remove_job(where, job)
            else:
                shm.remove(where, f"wk:{job}:d:0")
            writes.append(t1 - t0)
            removals.append(time.perf_counter() - t1)
        return min(writes) * 1e6, min(removals) * 1e6

    marker = shm.write(fresh, "wk:read:d:0", serialization.dumps_parts(x, compress=False))

    def read() -> None:
        y = serialization.loads(shm.read(marker))
        assert y.shape == x.shape

    def copy_fresh() -> None:
        bytearray(raw)

    def copy_reused() -> None:
        memoryview(reused)[:] = raw

    write_fresh, unlink = cycle(fresh, keep=False)
    write_kept, keep = cycle(directory, keep=True)
    shm.trim_pool(directory, idle_s=0)
    us = {
        "write (new file)": write_fresh,
        "write (kept file)": write_kept,
        "read": best_us(read, repeat),
        "memcpy (fresh)": best_us(copy_fresh, repeat),
        "memcpy (reused)": best_us(copy_reused, repeat),
        "remove (unlink)": unlink,
        "remove (keep)": keep,
    }
    return {name: t / mb for name, t in us.items()}


THRESHOLD_KIB = (64, 128, 256, 512, 1024)
RESULT_KIB = (64, 128, 192, 256, 512, 1024)


def file_or_redis(repeat: int, values: int = 40) -> dict[int, tuple[float, float]]:
    """µs per value, through Redis and through a file (``shm.SHM_MIN``'s choice), for fresh
    float64 values of ``THRESHOLD_KIB`` sizes on a ``LocalCluster``'s store: each serialized,
    written (``Batch.kvs_set``), read back (``kvs_get_many``), unpickled and removed, as a job
    does; ``values`` of them per measure, the median of ``repeat`` measures."""
    import statistics

    from wukong import LocalCluster

    out = {}
    with LocalCluster(n_workers=1) as cluster:
        store = cluster.store
        for kib in THRESHOLD_KIB:
            row = []
            for threshold in (1 << 62, 1):  # Redis, then files
                times = []
                for rep in range(repeat):
                    blocks = [np.random.default_rng(rep).random(kib * 128) for _ in range(values)]
                    keys = [f"wk:bench:{threshold}:{kib}:{rep}:{i}" for i in range(values)]
                    t0 = time.perf_counter()
                    for key, block in zip(keys, blocks, strict=True):
                        b = store.batch()
                        b.kvs_set(key, serialization.dumps_parts(block, compress=False), shm_min=threshold)
                        b.execute()
                    for key in keys:
                        b = store.batch()
                        (h,) = b.kvs_get_many([key])
                        serialization.loads(b.execute()[h])
                    b = store.batch()
                    for key in keys:
                        b.add(store.kvs_server(key), "delete", key)
                        shm.remove(store.shm_dir, key)
                    b.execute()
                    times.append((time.perf_counter() - t0) / values * 1e6)
                row.append(statistics.median(times))
            out[kib] = (row[0], row[1])
    return out


def stream_or_file(repeat: int, jobs: int = 100) -> dict[int, tuple[float, float]]:
    """ms per job of two results of ``RESULT_KIB`` sizes (fresh float64 arrays), run on two
    ``LocalCluster``s of one worker, one sending results on the job's event stream, one
    through files (``Executor``'s ``result_shm_min``, ``shm.SHM_MIN`` by default), side by side: the
    median of ``jobs`` jobs, ``repeat`` rounds alternating, the median round."""
    import statistics

    from wukong import Client, LocalCluster

    class Cluster(LocalCluster):
        def __init__(self, result_shm_min: int):
            self.result_shm_min = result_shm_min
            super().__init__(n_workers=1)

        def executor_config(self) -> dict:
            return {**super().executor_config(), "result_shm_min": self.result_shm_min}

    out = {}
    with Cluster(1 << 62) as on_stream, Cluster(1) as in_files:
        clients = [Client(c, progress=False) for c in (on_stream, in_files)]
        for kib in RESULT_KIB:
            graph = {"a": (np.random.random, kib * 128), "b": (np.random.random, kib * 128)}
            rounds: list[list[float]] = [[], []]
            for _ in range(repeat):
                for client, times in zip(clients, rounds, strict=True):
                    client.get(graph, ["a", "b"])  # warm
                    each = []
                    for _ in range(jobs):
                        t0 = time.perf_counter()
                        client.get(graph, ["a", "b"])
                        each.append(time.perf_counter() - t0)
                    times.append(statistics.median(each) * 1e3)
            out[kib] = (statistics.median(rounds[0]), statistics.median(rounds[1]))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.dataplane", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--threshold", action="store_true", help="Redis or a file, by value size (shm.SHM_MIN)")
    args = parser.parse_args(argv)
    if args.threshold:
        print(f"µs per value written, read and removed; load average {os.getloadavg()[0]:.2f}")
        print(f"{'KiB':>6} {'Redis':>8} {'file':>8} {'file/Redis':>11}   (now from {shm.SHM_MIN >> 10} KiB: file)")
        for kib, (redis_us, file_us) in file_or_redis(max(3, args.repeat // 4)).items():
            print(f"{kib:>6} {redis_us:>8.0f} {file_us:>8.0f} {file_us / redis_us:>10.2f}x")
        print(f"\nms per job of two results, sent, received and removed; load average {os.getloadavg()[0]:.2f}")
        print(f"{'KiB':>6} {'stream':>8} {'file':>8} {'file/stream':>12}   (now from {shm.SHM_MIN >> 10} KiB: file)")
        for kib, (stream_ms, file_ms) in stream_or_file(max(3, args.repeat // 4)).items():
            print(f"{kib:>6} {stream_ms:>8.2f} {file_ms:>8.2f} {file_ms / stream_ms:>11.2f}x")
        return
    directory = shm.make_dir("bench")  # as a local cluster's, with its pool
    if directory is None:
        raise SystemExit("no writable /dev/shm here: the local data plane writes nothing to measure")
    try:
        rows = {mb: measure(mb, args.repeat, directory) for mb in SIZES_MB}
    finally:
        shm.remove_dir(directory)
    names = list(next(iter(rows.values())))
    print(f"µs per MB, best of {args.repeat}; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    print(f"{'MB':>6} " + " ".join(f"{n:>16}" for n in names))
    for mb, row in rows.items():
        print(f"{mb:>6g} " + " ".join(f"{row[n]:>16.0f}" for n in names))


if __name__ == "__main__":
    main()

"""The local data plane against memcpy: ``python -m bench.dataplane``.

For float64 arrays of a few sizes, microseconds per MB of:

* ``write``: what an executor does to hand a large value to another process --
  serialize (``serialization.dumps_parts``, no compression on the local
  backend) and write the pieces to a fresh file on ``/dev/shm`` (``shm.write``);
* ``read``: what the reader does -- map the file (``shm.read``) and unpickle
  (``serialization.loads``): the array is used in place, no byte copied;
* ``memcpy (fresh)``: copying the array into newly allocated memory (what any
  writer into fresh pages pays, page faults included);
* ``memcpy (reused)``: copying it into memory already touched (the floor).

Best of ``--repeat`` runs each.
"""

from __future__ import annotations

import argparse
import os
import shutil
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
    """µs per MB of each path for one array of ``mb`` megabytes."""
    x = np.random.default_rng(0).random(int(mb * 1e6) // 8)
    raw = memoryview(x).cast("B")
    reused = bytearray(len(raw))
    counter = iter(range(10**9))

    def write() -> bytes:
        return shm.write(directory, f"wk:bench:d:{next(counter)}", serialization.dumps_parts(x, compress=False))

    marker = write()

    def read() -> None:
        y = serialization.loads(shm.read(marker))
        assert y.shape == x.shape

    def copy_fresh() -> None:
        bytearray(raw)

    def copy_reused() -> None:
        memoryview(reused)[:] = raw

    paths = {"write": write, "read": read, "memcpy (fresh)": copy_fresh, "memcpy (reused)": copy_reused}
    return {name: best_us(fn, repeat) / mb for name, fn in paths.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.dataplane", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args(argv)
    directory = tempfile.mkdtemp(prefix="wukong-bench-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    try:
        rows = {mb: measure(mb, args.repeat, directory) for mb in SIZES_MB}
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    names = list(next(iter(rows.values())))
    print(f"µs per MB, best of {args.repeat}; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    print(f"{'MB':>6} " + " ".join(f"{n:>16}" for n in names))
    for mb, row in rows.items():
        print(f"{mb:>6g} " + " ".join(f"{row[n]:>16.0f}" for n in names))


if __name__ == "__main__":
    main()

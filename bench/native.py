"""Benchmark of the native module against its references and yardsticks.

    python -m bench.native [--quick]

Hashing: keys placed per second by ``wukong_native.HashRing.nodes_for`` vs the pure-Python
``wukong.reference.hashring``. Compression: GB/s (of input bytes) for ``wukong_native.compress`` and
``decompress`` vs PyPI ``lz4.block`` / ``lz4.frame`` (C liblz4) and vs storing raw (one
``bytes`` copy), on compressible (int64 arange) and incompressible (random float64)
buffers from 1 KiB to 256 MiB. Each cell is the best of several timed repetitions.
"""

from __future__ import annotations

import argparse
import time

import lz4.block
import lz4.frame
import numpy as np
import wukong_native

from wukong.reference import hashring

SIZES = [1 << 10, 64 << 10, 1 << 20, 16 << 20, 256 << 20]


def best_time(fn, budget: float = 0.3, max_reps: int = 200) -> float:
    """Best wall time of ``fn()`` over repetitions filling about ``budget`` seconds."""
    best, spent, reps = float("inf"), 0.0, 0
    while reps < 3 or (spent < budget and reps < max_reps):
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        best, spent, reps = min(best, dt), spent + dt, reps + 1
    return best


def bench_hashing() -> None:
    servers = [f"10.0.0.{i}:6379" for i in range(8)]
    keys = [f"job-1/('chunk', {i}, {i % 7})".encode() for i in range(100_000)]
    compiled, reference = wukong_native.HashRing(servers), hashring.HashRing(servers)
    t_c = best_time(lambda: compiled.nodes_for(keys))
    t_one = best_time(lambda: [compiled.node_for(k) for k in keys], budget=0.5)
    t_r = best_time(lambda: reference.nodes_for(keys[:10_000]), budget=0.5, max_reps=3) * 10
    print("hashing: 100,000 keys over 8 servers x 160 vnodes")
    print(f"  {'implementation':32} {'keys/s':>14} {'vs reference':>13}")
    for name, t in [
        ("compiled nodes_for (batch)", t_c),
        ("compiled node_for (loop)", t_one),
        ("reference (pure Python)", t_r),
    ]:
        print(f"  {name:32} {len(keys) / t:14,.0f} {t_r / t:12.1f}x")
    print()


def buffers(n: int) -> dict[str, bytes]:
    return {
        "compressible (int64 arange)": np.arange(n // 8, dtype=np.int64).tobytes(),
        "incompressible (random f64)": np.random.default_rng(0).random(n // 8).tobytes(),
    }


def human(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 else f"{n >> 10} KiB"


def compression_row(kind: str, data: bytes) -> str:
    n = len(data)
    budget = 0.5 if n <= 16 << 20 else 2.0
    t_w = best_time(lambda: wukong_native.compress(data), budget)
    t_b = best_time(lambda: lz4.block.compress(data, store_size=False), budget)
    t_f = best_time(lambda: lz4.frame.compress(data), budget)
    t_raw = best_time(lambda: bytes(memoryview(data)), budget)
    frame = wukong_native.compress(data)
    block = lz4.block.compress(data, store_size=False)
    t_dw = best_time(lambda: wukong_native.decompress(frame), budget)
    t_db = best_time(lambda: lz4.block.decompress(block, uncompressed_size=n), budget)
    tag = "lz4" if frame[0] == 1 else "raw"
    w, b, f, raw, dw, db = (n / t / 1e9 for t in (t_w, t_b, t_f, t_raw, t_dw, t_db))
    return (
        f"  {kind:28} {human(n):>8} | {w:7.2f} {b:7.2f} {f:7.2f} {raw:8.2f} {w / b:9.2f}x"
        f" | {len(frame) / n:5.2f} | {dw:8.2f} {db:9.2f}  ({tag})"
    )


def bench_compression(sizes: list[int]) -> None:
    print("compression: GB/s of input (higher is better); ratio = compressed/original")
    header = (
        f"  {'data':28} {'size':>8} | {'wukong':>7} {'lz4.blk':>7} {'lz4.frm':>7}"
        f" {'raw copy':>8} {'vs lz4.blk':>10} | {'ratio':>5} | {'unwukong':>8}"
        f" {'unlz4.blk':>9}"
    )
    print(header)
    for n in sizes:
        for kind, data in buffers(n).items():
            print(compression_row(kind, data))
    print("  'vs lz4.blk' = wukong speed / lz4.block speed; 'unX' = decompression GB/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="sizes up to 16 MiB only")
    args = parser.parse_args()
    bench_hashing()
    bench_compression(SIZES[:-1] if args.quick else SIZES)


if __name__ == "__main__":
    main()

"""Static scheduling, compiled (``wukong._core``) vs the pure-Python reference.

    python -m bench.core            # 10k, 100k, 1M tasks
    python -m bench.core --quick    # 10k, 100k only

Part 1 times what ``wukong.scheduler.plan`` does before pickling task bodies:
``intern`` + ``dependents`` + ``schedules`` + ``encode_schedules``, on graphs built
directly as key and dependency lists (building them is not timed).  The reference
at 1M tasks runs in a forked child and is abandoned after 60 s.

Part 2 times an executor's start-up: decoding one leaf schedule's metadata
(``decode_schedule``, and ``ScheduleView`` plus reading its first record), for the
same shapes at 10k and 1M tasks: it depends on the schedule, not the graph.

Shapes: a binary tree reduction; a blocked GEMM (C[i,j] = sum_k A[i,k]·B[k,j] with
one product task per (i,j,k) and one sum per (i,j)); a wide map-reduce (load -> map
per partition, partial sums over 100 maps, one total).
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing as mp
import time
from collections.abc import Callable

from wukong import _core, reference
from wukong.protocol import OUTPUT
from wukong.reference import encoding

REFERENCE = reference  # the same surface as wukong._core
REFERENCE_LIMIT_S = 60.0

Graph = tuple[list, list, list]  # order, dependencies, outputs


# --- graphs ----------------------------------------------------------------------------


def tree_reduction(n: int) -> Graph:
    """A binary reduction over about n/2 leaves: about n tasks."""
    level = [("x", i) for i in range((n + 1) // 2)]
    order, deps = list(level), [()] * len(level)
    depth = 0
    while len(level) > 1:
        depth += 1
        nxt = []
        for i in range(0, len(level), 2):
            key = ("sum", depth, i // 2)
            order.append(key)
            deps.append(tuple(level[i : i + 2]))
            nxt.append(key)
        level = nxt
    return order, deps, [level[0]]


def gemm(n: int) -> Graph:
    """Blocked C = A @ B with b x b blocks, b^3 products and b^2 sums: about n tasks."""
    b = max(1, round(n ** (1 / 3)))
    order = [("A", i, k) for i in range(b) for k in range(b)] + [("B", k, j) for k in range(b) for j in range(b)]
    deps: list[tuple] = [()] * len(order)
    for i in range(b):
        for j in range(b):
            for k in range(b):
                order.append(("AB", i, j, k))
                deps.append((("A", i, k), ("B", k, j)))
            order.append(("C", i, j))
            deps.append(tuple(("AB", i, j, k) for k in range(b)))
    return order, deps, [("C", i, j) for i in range(b) for j in range(b)]


def map_reduce(n: int, group: int = 100) -> Graph:
    """load_i -> map_i for m partitions, a partial sum per `group` maps, one total."""
    m = max(1, n * group // (2 * group + 1))
    order = [f"load-{i}" for i in range(m)] + [f"map-{i}" for i in range(m)]
    deps: list[tuple] = [()] * m + [(f"load-{i}",) for i in range(m)]
    partials = []
    for g in range(0, m, group):
        partials.append(f"partial-{g // group}")
        order.append(partials[-1])
        deps.append(tuple(f"map-{i}" for i in range(g, min(g + group, m))))
    order.append("total")
    deps.append(tuple(partials))
    return order, deps, ["total"]


SHAPES: dict[str, Callable[[int], Graph]] = {
    "tree reduction": tree_reduction,
    "blocked GEMM": gemm,
    "wide map-reduce": map_reduce,
}


# --- timing ----------------------------------------------------------------------------


def plan(impl, order: list, deps: list, outputs: list) -> list[bytes]:
    """What plan() does up to the schedule metadata, with `impl`'s functions."""
    n = len(order)
    ids, dep_ptr, dep_idx = impl.intern(order, deps)
    dnt_ptr, dnt_idx = impl.dependents(n, dep_ptr, dep_idx)
    sched = impl.schedules(n, dep_ptr, dnt_ptr, dnt_idx)
    flags = bytearray(n)
    for k in outputs:
        flags[ids[k]] = OUTPUT
    return impl.encode_schedules(*sched, dep_ptr, dep_idx, dnt_ptr, dnt_idx, flags)


def timed(fn: Callable, *args, repeat: int = 1) -> tuple[float, object]:
    """Best wall time of `repeat` runs (garbage collector off while timing, as timeit does)."""
    best, out = float("inf"), None
    for _ in range(repeat):
        out = None
        gc.collect()
        gc.disable()
        try:
            t0 = time.perf_counter()
            out = fn(*args)
            best = min(best, time.perf_counter() - t0)
        finally:
            gc.enable()
    return best, out


def _child(conn, graph: Graph) -> None:
    conn.send(timed(plan, REFERENCE, *graph)[0])


def reference_with_limit(graph: Graph) -> float | None:
    """The reference's time in a forked child, or None past REFERENCE_LIMIT_S."""
    parent, child = mp.get_context("fork").Pipe(duplex=False)
    proc = mp.get_context("fork").Process(target=_child, args=(child, graph))
    proc.start()
    ready = parent.poll(REFERENCE_LIMIT_S)
    seconds = parent.recv() if ready else None
    if proc.is_alive():
        proc.kill()
    proc.join()
    return seconds


def per_call(fn: Callable, arg, budget_s: float = 0.2) -> float:
    """Median seconds per call over batches filling about `budget_s`."""

    def batch(calls: int) -> float:
        return timed(lambda: [fn(arg) for _ in range(calls)])[0]

    calls = 1
    while batch(calls) < 0.01:
        calls *= 2
    samples = []
    deadline = time.perf_counter() + budget_s
    while len(samples) < 5 or time.perf_counter() < deadline:
        samples.append(batch(calls) / calls)
    return sorted(samples)[len(samples) // 2]


def view_first_record(meta: bytes):
    view = _core.ScheduleView(meta)
    return view[0]


# --- report ----------------------------------------------------------------------------


def fmt_s(s: float | None) -> str:
    return "skipped (too slow)" if s is None else f"{s:.3f} s"


def fmt_us(s: float) -> str:
    return f"{s * 1e6:,.1f} µs"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="10k and 100k tasks only")
    args = ap.parse_args()
    sizes = [10_000, 100_000] if args.quick else [10_000, 100_000, 1_000_000]

    print("Schedule generation + encoding: intern + dependents + schedules + encode_schedules")
    head = (
        f"| {'graph':<16} | {'tasks':>9} | {'edges':>9} | {'schedules':>9} "
        f"| {'compiled':>9} | {'reference':>18} | {'speed-up':>8} |"
    )
    print(head)
    print("|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|")
    leaf_metas: dict[tuple[str, int], bytes] = {}
    for name, make in SHAPES.items():
        for size in sizes:
            graph = make(size)
            n, edges = len(graph[0]), sum(map(len, graph[1]))
            compiled, metas = timed(plan, _core, *graph, repeat=3)
            if size < 1_000_000:
                reference, ref_metas = timed(plan, REFERENCE, *graph)
                assert ref_metas == metas, f"{name}: compiled and reference blobs differ"
            else:
                reference = reference_with_limit(graph)
            leaf_metas[name, size] = metas[0]  # schedule 0 starts at the first leaf
            ratio = "" if reference is None else f"{reference / compiled:.0f}×"
            print(
                f"| {name:<16} | {n:>9,} | {edges:>9,} | {len(metas):>9,} | {compiled:>7.3f} s "
                f"| {fmt_s(reference):>18} | {ratio:>8} |"
            )
            del graph, metas

    print()
    print("Executor start-up: decode one leaf schedule's metadata (schedule 0), median per call")
    head = (
        f"| {'graph':<16} | {'~size':>9} | {'chain':>5} | {'bytes':>7} | {'reference decode':>16} "
        f"| {'decode_schedule':>15} | {'ScheduleView+[0]':>16} |"
    )
    print(head)
    print("|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|")
    for (name, size), meta in leaf_metas.items():
        if size == 100_000:
            continue
        ntasks = _core.ScheduleView(meta).ntasks
        print(
            f"| {name:<16} | {size:>9,} | {ntasks:>5} | {len(meta):>7,} "
            f"| {fmt_us(per_call(encoding.decode_schedule, meta)):>16} "
            f"| {fmt_us(per_call(_core.decode_schedule, meta)):>15} "
            f"| {fmt_us(per_call(view_first_record, meta)):>16} |"
        )


if __name__ == "__main__":
    main()

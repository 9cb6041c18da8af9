"""Wide fan-out with and without the proxy: ``python -m bench.fanout``.

A root task, ``--width`` children that each record when they started, and one
task reducing them all, on the lambda backend against ``LambdaLocal`` (the
Lambda Invoke API served locally, ``--latency`` seconds per Invoke call, no
throttling).  Reported per mode: the time from the root's end until the last
child started (the fan-out), and the whole job.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from dask import delayed

from wukong import Client, LocalCluster
from wukong.lambda_local import LambdaLocal
from wukong.proxy.client import ProxyClient

FUNCTION = "wukong-executor"
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


def root() -> float:
    return time.time()


def child(root_end: float, i: int) -> float:
    return time.time()


def reduce(root_end: float, *starts: float) -> tuple[float, float, int]:
    """(first child start, last child start) after the root's end, and the count."""
    return min(starts) - root_end, max(starts) - root_end, len(starts)


def graph(width: int):
    r = delayed(root)()
    return delayed(reduce)(r, *[delayed(child)(r, i) for i in range(width)])


def run(lam: LambdaLocal, width: int, proxy: bool, repeat: int, max_task_fanout: int) -> dict:
    options = {"use_local_proxy": True, "max_task_fanout": max_task_fanout} if proxy else {}
    with LocalCluster(
        backend="lambda", function_name=FUNCTION, endpoint_url=lam.url, region="us-east-1", **options
    ) as c:
        with Client(c, progress=False) as client:
            graph(8).compute(scheduler=client.get)  # warm the workers and the connections
            spans, totals, handover = [], [], []
            for _ in range(repeat):
                t0 = time.perf_counter()
                first, last, n = graph(width).compute(scheduler=client.get)
                totals.append(time.perf_counter() - t0)
                assert n == width
                spans.append(last)
                if proxy:  # how long the proxy took to hand the fan-out's invocations to Lambda
                    stats = ProxyClient(c.proxy["address"], c.proxy["secret"], {}, c.store).stats()
                    handover.append(stats["handover_s"][-1])
    return {
        "fanout": statistics.median(spans),
        "total": statistics.median(totals),
        "handover": statistics.median(handover) if handover else None,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.fanout", description=__doc__.splitlines()[0])
    p.add_argument("--width", type=int, default=1000)
    p.add_argument("--latency", type=float, default=0.05, help="seconds per Invoke call")
    p.add_argument("--workers", type=int, default=8, help="LambdaLocal worker processes")
    p.add_argument("--repeat", type=int, default=3, help="runs per mode (medians reported)")
    p.add_argument("--max-task-fanout", type=int, default=64)
    args = p.parse_args(argv)
    os.environ.update(AWS_ENV)
    handler = {FUNCTION: "wukong.backends.aws_lambda:handler"}
    with LambdaLocal(handler, workers=args.workers, latency=args.latency, env=AWS_ENV) as lam:
        rows = [
            (mode, run(lam, args.width, mode == "proxy", args.repeat, args.max_task_fanout))
            for mode in ("direct", "proxy")
        ]
    print(
        f"1 -> {args.width} fan-out + reduction, lambda backend on LambdaLocal "
        f"(latency {args.latency * 1000:.0f} ms, {args.workers} workers, {os.cpu_count()} cores), "
        f"median of {args.repeat}"
    )
    print(f"{'mode':<8} {'last child started (s)':>24} {'total (s)':>10} {'proxy handover (s)':>20}")
    for mode, r in rows:
        handover = "-" if r["handover"] is None else f"{r['handover']:.3f}"
        print(f"{mode:<8} {r['fanout']:>24.3f} {r['total']:>10.3f} {handover:>20}")
    direct, proxy = rows[0][1], rows[1][1]
    print(f"speed-up of the fan-out: {direct['fanout'] / proxy['fanout']:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

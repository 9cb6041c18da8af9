"""The simulator against measurements, then its predictions: ``python -m bench.simulate``.

Validation (``validate``): each seed workload at a small size runs on the lambda
backend against ``LambdaLocal`` (``--latency`` seconds injected per Invoke,
``--workers`` warm workers on this machine's cores); the same graph is
recorded locally (``wukong.simulate.record``) and simulated with
``Model.local`` calibrated here (Redis round trip, invoke latency, the
worker's dispatch).  Reported: measured and predicted makespan, and the error.

Predictions (``--predict``): the seed workloads at full size, GEMM 50k² and a
tree reduction of ``--tree-leaves`` numbers on ``Model.aws`` at 1,000, 10,000
and 100,000-way concurrency, each task priced by a profile recorded at a small
size with the same chunk shape; compared with ideal scaling (work /
concurrency) and one machine (work / its cores).
"""

from __future__ import annotations

import argparse
import operator
import os
import statistics
import time
from typing import Any

import dask.array as da
from dask import delayed

from bench.fanout import lambda_local
from bench.workloads import build
from wukong import Client, LocalCluster
from wukong.lambda_local import LambdaLocal
from wukong.simulate import Model, Profile, graph_of, record, simulate_graph

FUNCTION = "wukong-executor"
VALIDATE = [("tree", "small"), ("gemm", "small"), ("svd", "tiny"), ("tsqr", "small"), ("svd_compressed", "tiny")]


def calibrate(lam: LambdaLocal, cluster: LocalCluster) -> dict[str, float]:
    """Redis round trip from Python, Event invoke latency, and a worker's dispatch, measured here."""
    import boto3

    from wukong.backends.aws_lambda import LambdaInvoker, lambda_config

    r = cluster.store.mds
    t0 = time.perf_counter()
    for _ in range(500):
        r.ping()
    rtt = (time.perf_counter() - t0) / 500
    inv = LambdaInvoker(cluster.store, {"lambda": lambda_config("noop", region="us-east-1", endpoint_url=lam.url)})
    inv.send("calibrate", [b"{}"] * 200)
    latency = inv.latency or 0.0
    inv.close()
    client = boto3.client("lambda", endpoint_url=lam.url, region_name="us-east-1")
    rounds = []
    for _ in range(20):
        t0 = time.perf_counter()
        client.invoke(FunctionName="noop", Payload=b"{}")
        rounds.append(time.perf_counter() - t0)
    dispatch = max(0.0, statistics.median(rounds) - lam.latency)
    # an executor's own CPU per invocation: the workers' CPU time over one-task jobs, per invocation
    import psutil

    one = Client(cluster, progress=False)
    wide = delayed(sum)([delayed(operator.add)(i, 1) for i in range(200)])  # jobs of many invocations
    wide.compute(scheduler=one.get)
    procs = [psutil.Process(pid) for pid in lam.worker_pids()]
    cpu0 = sum(sum(p.cpu_times()[:2]) for p in procs)
    n0 = lam.stats()["invocations"]
    for _ in range(3):
        wide.compute(scheduler=one.get)
    per_invocation = (sum(sum(p.cpu_times()[:2]) for p in procs) - cpu0) / (lam.stats()["invocations"] - n0)
    return {
        "redis_rtt_s": rtt,
        "invoke_latency_s": latency,
        "warm_start_s": dispatch,
        "invocation_cpu_s": per_invocation,
    }


def measure(cluster: LocalCluster, collections: tuple, repeat: int) -> float:
    client = Client(cluster, progress=False)
    client.get(*graph_of(*collections))  # warm the workers' imports
    runs = []
    for _ in range(repeat):
        client.get(*graph_of(*collections))
        runs.append(client.last_job["run_s"])
    return statistics.median(runs)


def validate(args: argparse.Namespace) -> None:
    handlers = {FUNCTION: "wukong.backends.aws_lambda:handler", "noop": "bench.fanout:noop"}
    with lambda_local(handlers, workers=args.workers, latency=args.latency) as lam:
        options = lam.cluster_options  # type: ignore[attr-defined]
        with LocalCluster(
            backend="lambda", function_name=FUNCTION, endpoint_url=lam.url, region="us-east-1", **options
        ) as c:
            cal = calibrate(lam, c)
            model = Model.local(args.workers, cal["invoke_latency_s"], os.cpu_count() or 1).with_(
                redis_rtt_s=cal["redis_rtt_s"],
                roundtrip_cpu_s=cal["redis_rtt_s"],  # a PING from Python is mostly the client's CPU
                warm_start_s=cal["warm_start_s"],
                invocation_cpu_s=cal["invocation_cpu_s"],
            )
            print(f"calibrated here: {', '.join(f'{k}={v * 1000:.2f} ms' for k, v in cal.items())}")
            print(f"load {os.getloadavg()[0]:.1f}, {os.cpu_count()} cores, {args.workers} lambda-local workers")
            print(f"{'workload':<24} {'tasks':>6} {'measured (s)':>13} {'predicted (s)':>14} {'error':>7}")
            for name, size in VALIDATE:
                w = build(name, size)
                dsk, keys = graph_of(*w.collections)
                profile = record(dsk, keys)
                measured = measure(c, w.collections, args.repeat)
                report = simulate_graph(dsk, keys, profile, model)
                err = (report.makespan - measured) / measured
                print(
                    f"{name + ' ' + size:<24} {report.tasks:>6} {measured:>13.3f} {report.makespan:>14.3f} {err:>+7.0%}"
                )


# -- predictions ----------------------------------------------------------------------------


def tree_graph(n: int) -> tuple[dict, Any]:
    """The seed's tree reduction of ``n`` numbers as a raw graph (delayed is too slow at 1M)."""
    dsk: dict = {}
    level = [("x", 0, i) for i in range(n)]
    for i, k in enumerate(level):
        dsk[k] = i
    d = 0
    while len(level) > 1:
        d += 1
        nxt = []
        for j in range(0, len(level) - 1, 2):
            k = ("add", d, j // 2)
            dsk[k] = (operator.add, level[j], level[j + 1])
            nxt.append(k)
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return dsk, level[0]


def gemm(n: int, chunk: int) -> Any:
    rs = da.random.RandomState(42)
    return da.matmul(rs.random((n, n), chunks=(chunk, chunk)), rs.random((n, n), chunks=(chunk, chunk)))


def predict(args: argparse.Namespace) -> None:
    cases: list[tuple[str, Any, Any]] = []  # (name, graph thunk, profile thunk)
    tree_profile = lambda: record(*tree_graph(1024))  # noqa: E731
    cases.append((f"tree reduction of {args.tree_leaves:,}", lambda: tree_graph(args.tree_leaves), tree_profile))
    cases.append(("tree reduction of 1,024 (seed)", lambda: tree_graph(1024), tree_profile))
    for n, c in ((10_000, 2000), (50_000, args.gemm_chunk)):
        cases.append(
            (
                f"GEMM {n:,}² (chunks {c:,}²)",
                lambda n=n, c=c: graph_of(gemm(n, c)),
                lambda c=c: record(*graph_of(gemm(2 * c, c))),
            )
        )
    for name in ("svd", "tsqr", "svd_compressed"):
        w_full = build(name, "full")
        cases.append(
            (
                f"{name} full {w_full.params}",
                lambda w=w_full: graph_of(*w.collections),
                lambda w=w_full: _small_profile(w),
            )
        )
    print(
        f"load {os.getloadavg()[0]:.1f}; profiles recorded on this machine ({os.cpu_count()} cores); "
        f"{args.kvs_shards} KV shard(s)"
    )
    head = f"{'workload':<44} {'way':>7} {'tasks':>9} {'makespan (s)':>13} {'ideal (s)':>10}"
    print(head + f" {'1 machine (s)':>14} {'peak':>7} {'cost $':>9}")
    for name, graph, prof in cases:
        if args.only and not any(word in name for word in args.only):
            continue
        profile: Profile = prof()
        profile.guess = True
        dsk, keys = graph()
        for way in args.ways:
            t0 = time.perf_counter()
            r = simulate_graph(dsk, keys, profile, Model.aws(way, kvs_shards=args.kvs_shards))
            wall = time.perf_counter() - t0
            print(
                f"{name:<44} {way:>7,} {r.tasks:>9,} {r.makespan:>13.2f} {r.ideal():>10.3f} "
                f"{r.one_machine():>14.1f} {r.peak_concurrency:>7,} {r.cost['price_usd']:>9.4f}  (sim {wall:.0f} s)",
                flush=True,
            )
        if profile.guessed:
            print(f"    (kinds not in the profile, priced at its mean task: {sorted(profile.guessed)})")


def _small_profile(w: Any) -> Profile:
    """A profile of the workload with its full-size chunks but only a few of them (the full graph,
    run here, would take too long): a tall-skinny input of 4 row blocks prices every kind of task."""
    from bench.workloads import BUILDERS

    params = dict(w.params)
    if "m" in params:
        params["m"] = 4 * params["chunk"]
    else:  # square inputs (svd_compressed): 2 x 2 blocks
        params["n"] = 2 * params["chunk"]
    return record(*graph_of(*BUILDERS[w.name](params).collections))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.simulate", description=__doc__.splitlines()[0])
    p.add_argument("--latency", type=float, default=0.02)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--predict", action="store_true", help="predictions at full size instead of validation")
    p.add_argument("--ways", type=int, nargs="+", default=[1000, 10_000, 100_000])
    p.add_argument("--tree-leaves", type=int, default=1_000_000)
    p.add_argument("--kvs-shards", type=int, default=1, help="KV store shards of the modelled Redis")
    p.add_argument("--only", nargs="*", help="predict only the workloads whose name has one of these words")
    p.add_argument("--gemm-chunk", type=int, default=2500)
    args = p.parse_args(argv)
    predict(args) if args.predict else validate(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

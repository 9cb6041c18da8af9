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

import dask
import dask.array as da
from dask import delayed

from bench.fanout import lambda_local
from bench.workloads import build
from wukong import Client, LocalCluster
from wukong.lambda_local import LambdaLocal
from wukong.simulate import Model, Profile, graph_of, record, simulate_graph

FUNCTION = "wukong-executor"
VALIDATE = [("tree", "small"), ("gemm", "small"), ("svd", "small"), ("tsqr", "small"), ("svd_compressed", "small")]


def calibrate(lam: LambdaLocal, cluster: LocalCluster) -> dict[str, float]:
    """This machine and endpoint, measured: the Redis round trip from Python, the Event invoke
    latency, a worker's dispatch, the CPU per invocation, the rates of moving and (de)serializing
    bytes.  Each is the best of its repeats (the machine is shared: the model is of this
    machine's capacity, not of the moment's other work), but the CPU, which is counted."""
    import boto3

    from wukong.backends.aws_lambda import LambdaInvoker, lambda_config

    r = cluster.store.mds
    rtts = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(100):
            r.ping()
        rtts.append((time.perf_counter() - t0) / 100)
    rtt = min(rtts)
    inv = LambdaInvoker(cluster.store, {"lambda": lambda_config("noop", region="us-east-1", endpoint_url=lam.url)})
    inv.send("calibrate", [b"{}"] * 64)  # its connections opened
    latencies = []
    for _ in range(20):  # one Event invoke, sent and accepted
        t0 = time.perf_counter()
        inv.send("calibrate", [b"{}"])
        latencies.append(time.perf_counter() - t0)
    inv.close()
    latency = min(latencies)
    client = boto3.client("lambda", endpoint_url=lam.url, region_name="us-east-1")
    rounds = []
    for _ in range(20):
        t0 = time.perf_counter()
        client.invoke(FunctionName="noop", Payload=b"{}")
        rounds.append(time.perf_counter() - t0)
    dispatch = max(0.0, min(rounds) - lam.latency)
    # CPU per invocation and per task on the shared cores (the workers', the endpoint's and the
    # client's here, Redis's), measured on jobs of one-task invocations and on a one-invocation
    # chain; what the model already charges those jobs (round trips, Redis, bytes: simulated
    # with these two at 0) is taken off, so that the model, simulating them, spends the CPU
    # they spent (two jobs, two unknowns)
    import psutil

    one = Client(cluster, progress=False)
    wide = delayed(sum)([delayed(operator.add)(i, 1) for i in range(200)])  # jobs of many invocations
    chain = delayed(operator.add)(0, 1)
    for _ in range(199):
        chain = delayed(operator.add)(chain, 1)
    me = psutil.Process()
    procs = [me, *me.children(recursive=True)]

    def cpu() -> float:
        return sum(sum(p.cpu_times()[:2]) for p in procs)

    def job_cpu(collection: Any) -> tuple[float, int, int]:  # CPU s, invocations, tasks of one job
        collection.compute(scheduler=one.get)  # warm
        cpu0 = cpu()
        for _ in range(3):
            collection.compute(scheduler=one.get)
        jobs = list(one.jobs)[-3:]
        return (cpu() - cpu0) / 3, round(sum(j.invocations for j in jobs) / 3), jobs[0].ntasks

    measured = [job_cpu(wide), job_cpu(chain)]
    cal = {"redis_rtt_s": rtt, "invoke_latency_s": latency, "warm_start_s": dispatch, **calibrate_bytes(cluster.store)}
    bare = Model.local(lam.workers, latency, os.cpu_count() or 1).with_(  # type: ignore[attr-defined]
        roundtrip_cpu_s=rtt, **cal, invocation_cpu_s=0.0, task_cpu_s=0.0
    )
    rows, rest = [], []
    for collection, (spent, invocations, tasks) in zip((wide, chain), measured, strict=True):
        dsk, keys = graph_of(collection)
        r = simulate_graph(dsk, keys, record(dsk, keys), bare)
        rows.append((invocations, tasks))
        rest.append(max(0.0, spent - r.cpu_seconds - r.server_seconds))
    (a, b), (c, d) = rows  # rest = invocations * per_invocation + tasks * per_task
    det = a * d - b * c
    per_invocation = max(0.0, (rest[0] * d - b * rest[1]) / det)
    per_task = max(0.0, (a * rest[1] - c * rest[0]) / det)
    return {**cal, "invocation_cpu_s": per_invocation, "task_cpu_s": per_task}


def calibrate_bytes(store: Any, nbytes: int = 4_500_000, repeat: int = 24) -> dict[str, float]:
    """Bytes per CPU second, measured here on blocks of GEMM small's size through the
    executor's own path (``serialization.dumps_parts``, ``Batch.kvs_set``, ``kvs_get_many``,
    ``serialization.loads``): the client's side of moving them (this process's CPU), the Redis
    server's side of a SET and of a GET (its process's CPU), and the (de)serializer's.

    As a job moves them: each block a value of its own under a key of its own, every copy kept
    until all are made, so each is fresh memory on both sides.  Re-serializing one block into
    the buffer just freed, or re-setting one key, reuses warm pages, and measured a fifth or
    less of what a job pays (first-touch page faults, Redis allocating each new value)."""
    import numpy as np
    import psutil

    from wukong import serialization

    (redis,) = [p for p in psutil.Process().children(recursive=True) if "redis" in p.name()]

    def cpu(fn: Any) -> tuple[float, float]:  # CPU seconds per block: here, and Redis's
        here, there = time.process_time(), sum(redis.cpu_times()[:2])
        fn()
        return (time.process_time() - here) / repeat, (sum(redis.cpu_times()[:2]) - there) / repeat

    rng = np.random.default_rng(0)
    blocks = [rng.random(nbytes // 8) for _ in range(repeat)]
    keys = [f"wukong-calibrate-{i}" for i in range(repeat)]
    parts: list = []
    dumps, _ = cpu(lambda: parts.extend(serialization.dumps_parts(b) for b in blocks))

    def put() -> None:
        for key, value in zip(keys, parts, strict=True):
            b = store.batch()
            b.kvs_set(key, value)
            b.execute()

    replies: list = []

    def get() -> None:
        for key in keys:
            b = store.batch()
            (h,) = b.kvs_get_many([key])
            replies.append(b.execute()[h])

    values: list = []
    put_here, put_redis = cpu(put)
    get_here, get_redis = cpu(get)
    loads, _ = cpu(lambda: values.extend(serialization.loads(r) for r in replies))
    b = store.batch()
    for key in keys:
        b.add(store.kvs_server(key), "delete", key)
    b.execute()
    return {
        "bandwidth_Bps": 2 * nbytes / (put_here + get_here),
        "shard_Bps": nbytes / put_redis,
        "shard_out_Bps": nbytes / get_redis,
        "serialize_Bps": nbytes / dumps,
        "deserialize_Bps": nbytes / loads,
    }


def measure(cluster: LocalCluster, collections: tuple, repeat: int) -> tuple[float, Any, dict[str, float], float, Any]:
    """The median of ``repeat`` runs' ``run_s`` (from the job's first invoke to the client having
    every result), after one to warm the workers' imports and one whose job record prices the
    tasks (``Profile.with_job``: not one of the runs measured); of the median run, the job
    record, the CPU seconds of this job's processes (the endpoint and client here, its workers,
    Redis) and of all others on the machine (other people's work: the model has the cores to
    itself); last, the pricing run's job record."""
    import psutil

    me = psutil.Process()
    ours = [me, *me.children(recursive=True)]

    def cpu() -> dict[str, float]:
        got: dict[str, float] = {"workers": 0.0, "redis": 0.0, "endpoint+client": 0.0}
        for p in ours:
            name = "endpoint+client" if p is me else "redis" if "redis" in p.name() else "workers"
            got[name] += sum(p.cpu_times()[:4])
        t = psutil.cpu_times()
        got["machine"] = sum(t) - t.idle - getattr(t, "iowait", 0.0)
        return got

    client = Client(cluster, progress=False)
    client.get(*graph_of(*collections))  # warm the workers' imports
    client.get(*graph_of(*collections))
    pricing = client.jobs[-1]
    runs = []
    for _ in range(repeat):
        before = cpu()
        client.get(*graph_of(*collections))
        used = {k: v - before[k] for k, v in cpu().items()}
        machine = used.pop("machine")
        runs.append((client.jobs[-1].run_s, client.jobs[-1], used, machine - sum(used.values())))
    runs.sort(key=lambda r: r[0])
    return (*runs[len(runs) // 2], pricing)


# One BLAS thread per execution environment, in the workers and in the recorded profile: the
# workers outnumber the cores, and OpenBLAS threads that spin-wait for a core they share with
# seven other workers' made tsqr 7x slower here than its tasks' CPU time (a pathology of
# oversubscribing this machine, not of Lambda, where each environment has its own vCPUs).
ONE_THREAD = {name: "1" for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}


def validate(args: argparse.Namespace) -> None:
    from threadpoolctl import threadpool_limits

    handlers = {FUNCTION: "wukong.backends.aws_lambda:handler", "noop": "bench.fanout:noop"}
    with lambda_local(handlers, workers=args.workers, latency=args.latency, env=ONE_THREAD) as lam:
        options = lam.cluster_options  # type: ignore[attr-defined]
        with LocalCluster(
            backend="lambda", function_name=FUNCTION, endpoint_url=lam.url, region="us-east-1", **options
        ) as c:
            # each parameter the median of several calibrations: one alone moved the predictions
            # by up to 40% between runs on this shared machine
            cals = [calibrate(lam, c) for _ in range(args.calibrations)]
            cal = {k: statistics.median(x[k] for x in cals) for k in cals[0]}
            model = Model.local(args.workers, cal["invoke_latency_s"], os.cpu_count() or 1).with_(
                roundtrip_cpu_s=cal["redis_rtt_s"],  # a PING from Python is mostly the client's CPU
                **cal,
            )
            spread = {k: f" ({_value(k, min(x[k] for x in cals))}-{_value(k, max(x[k] for x in cals))})" for k in cal}
            print(
                f"calibrated here (median of {len(cals)}, lowest-highest): "
                + ", ".join(f"{k}={_value(k, v)}{spread[k] if len(cals) > 1 else ''}" for k, v in cal.items())
            )
            print(f"load {_load()}, {os.cpu_count()} cores, {args.workers} lambda-local workers, one BLAS thread each")
            print(
                f"{'workload':<24} {'tasks':>6} {'measured (s)':>13} {'predicted (s)':>14} {'error':>7} "
                f"{'CPU s meas/sim':>15} {'others':>7} {'on cores left (s)':>16}  load"
            )
            for name, size in VALIDATE:
                if args.only and name not in args.only:
                    continue
                w = build(name, size)
                dsk, keys = graph_of(*w.collections)
                with threadpool_limits(1):
                    recorded = record(dsk, keys)
                measured, job, ours, others, pricing = measure(c, w.collections, args.repeat)
                profile = recorded.with_job(pricing)
                report = simulate_graph(dsk, keys, profile, model)
                err = (report.makespan - measured) / measured
                cpu = f"{sum(ours.values()):.2f}/{report.cpu_seconds + report.server_seconds:.2f}"
                # the same prediction on the cores other people's work left this job (measured)
                left = max(0.5, model.cores - others / measured)  # type: ignore[operator]
                shared = simulate_graph(dsk, keys, profile, model.with_(cores=left)).makespan
                print(
                    f"{name + ' ' + size:<24} {report.tasks:>6} {measured:>13.3f} {report.makespan:>14.3f} "
                    f"{err:>+7.0%} {cpu:>15} {others / measured:>7.1f} {shared:>9.3f} "
                    f"{(shared - measured) / measured:>+6.0%}  {_load()}",
                    flush=True,
                )
                if args.detail:
                    print(compare(job, report))
                    print(
                        f"    CPU s measured: {', '.join(f'{k} {v:.2f}' for k, v in ours.items())}; simulated: "
                        f"executors {report.cpu_seconds:.2f} (tasks {report.work_seconds:.2f}), "
                        f"Redis {report.server_seconds:.2f}"
                    )


def _value(name: str, value: float) -> str:
    return f"{value / 1e6:.0f} MB/s" if name.endswith("Bps") else f"{value * 1000:.2f} ms"


def _load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def compare(job: Any, report: Any) -> str:
    """Measured (the job record: each task's start and end on its executor) against simulated,
    by kind of task: how many, their summed seconds, and when the last one ended (seconds
    after the first task started)."""
    from collections import defaultdict

    from dask.utils import key_split

    measured: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0])
    t0 = min(t.start for t in job.tasks)
    for t in job.tasks:
        m = measured[key_split(t.key)]
        m[0] += 1
        m[1] += t.end - t.start
        m[2] = max(m[2], t.end - t0)
    simulated: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0])
    s0 = min(report.task_start)
    for key, start, end in zip(report.keys, report.task_start, report.task_end, strict=True):
        m = simulated[key_split(key)]
        m[0] += 1
        m[1] += end - start
        m[2] = max(m[2], end - s0)
    lines = [f"    {'kind':<34} {'tasks':>11} {'task s (meas/sim)':>19} {'last end (meas/sim)':>21}"]
    for kind, (n, busy, last) in sorted(measured.items(), key=lambda kv: -kv[1][1]):
        sn, sbusy, slast = simulated.get(kind, (0, 0.0, 0.0))
        lines.append(f"    {kind:<34} {n:>5}/{sn:<5} {busy:>9.3f}/{sbusy:<9.3f} {last:>10.3f}/{slast:<10.3f}")
    lines.append(
        f"    executors {len(job.executors)} measured, invocations {job.invocations}/{report.executors}; "
        f"the client had the results {report.makespan - report.executors_end:.3f} s after the last executor's end "
        f"(simulated)"
    )
    return "\n".join(lines)


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
    p.add_argument("--calibrations", type=int, default=3, help="validation: calibrate this many times, take medians")
    p.add_argument("--predict", action="store_true", help="predictions at full size instead of validation")
    p.add_argument("--ways", type=int, nargs="+", default=[1000, 10_000, 100_000])
    p.add_argument("--tree-leaves", type=int, default=1_000_000)
    p.add_argument("--kvs-shards", type=int, default=1, help="KV store shards of the modelled Redis")
    p.add_argument("--only", nargs="*", help="validate or predict only the workloads whose name has one of these words")
    p.add_argument("--detail", action="store_true", help="validation: measured against simulated, by kind of task")
    p.add_argument("--gemm-chunk", type=int, default=2500)
    args = p.parse_args(argv)
    # The model spreads every job; a repeated small job here would run solo (``wukong.durations``):
    # the calibration's jobs of many invocations and the measured runs must be spread too.
    with dask.config.set({"wukong.solo-work": None}):
        predict(args) if args.predict else validate(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

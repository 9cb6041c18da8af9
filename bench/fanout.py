"""Wide fan-out with and without the proxy: ``python -m bench.fanout``.

A root task, ``--width`` children that each record when they started, and one
task reducing them all, on the lambda backend against ``LambdaLocal`` (the
Lambda Invoke API served locally, ``--latency`` seconds per Invoke call, no
throttling).  Reported per mode (direct or through the proxy) and invoker
(``lean``: ``wukong.backends.lean_invoke``; ``boto3``): the time from the
root's end until the last child started (the fan-out), and the whole job.

Then the invoker's own cost: ``--cpu-invokes`` Event invokes of a no-op
function, sent from this process to a ``wukong lambda-local`` child process
(so this process's CPU time is the invoker's alone), per invoker: CPU
milliseconds per invoke and invokes per second.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import dask
from dask import delayed

from wukong import Client, LocalCluster
from wukong.lambda_local import LambdaLocal
from wukong.proxy.client import ProxyClient
from wukong.store.credentials import PROXY_SECRET_ARN_ENV, SECRET_ARN_ENV
from wukong.store.server import RedisServer

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


def noop(event: dict, context: object) -> dict:
    return {}


def secret_arn(name: str) -> str:
    """The ARN ``LambdaLocal.put_secret(name, ...)`` gives (its default region and account)."""
    return f"arn:aws:secretsmanager:us-east-1:123456789012:secret:{name}"


@contextlib.contextmanager
def lambda_local(handlers: dict, env: dict | None = None, **kwargs: Any) -> Iterator[LambdaLocal]:
    """``LambdaLocal`` and a private Redis whose password, as on AWS, only a secret holds:
    the functions, the client and the proxy read it (``WUKONG_REDIS_SECRET_ARN``).
    ``lam.cluster_options``: the ``LocalCluster`` keyword arguments that name them.
    ``env``: more environment variables for the functions."""
    os.environ.update(AWS_ENV)
    env = {
        **AWS_ENV,
        SECRET_ARN_ENV: secret_arn("wukong-redis"),
        PROXY_SECRET_ARN_ENV: secret_arn("wukong-proxy"),
        **(env or {}),
    }
    with RedisServer() as redis, LambdaLocal(handlers, env=env, **kwargs) as lam:
        os.environ.update({"AWS_ENDPOINT_URL_SECRETS_MANAGER": lam.url, SECRET_ARN_ENV: secret_arn("wukong-redis")})
        arn = lam.put_secret("wukong-redis", json.dumps({"username": None, "password": redis.password}))
        lam.cluster_options = {"redis_endpoints": [redis.endpoint], "redis_secret_arn": arn}  # type: ignore[attr-defined]
        yield lam


def run(
    lam: LambdaLocal, width: int, proxy: bool, repeat: int, max_task_fanout: int, invoker: str, tree: int | None
) -> dict:
    os.environ["WUKONG_INVOKER"] = invoker  # the clusters' lambda config (sent to executors and the proxy)
    options: dict = {"use_local_proxy": True, "max_task_fanout": max_task_fanout} if proxy else {}
    options["invoker_tree_branching"] = tree
    options.update(lam.cluster_options)  # Redis, whose password only the secret holds (as on AWS)
    with LocalCluster(
        backend="lambda", function_name=FUNCTION, endpoint_url=lam.url, region="us-east-1", **options
    ) as c:
        if proxy:  # the functions' WUKONG_PROXY_SECRET_ARN
            lam.put_secret("wukong-proxy", c.proxy["secret"])
        # The fan-out is what is measured: a repeated job of short tasks would run solo
        # (one invocation, ``wukong.durations``), so solo jobs are off here.
        with Client(c, progress=False) as client, dask.config.set({"wukong.solo-work": None}):
            graph(8).compute(scheduler=client.get)
            # One untimed run at full width first (reported apart): the workers' invokers open
            # their connections, their heaps grow; on this machine the next runs keep
            # getting faster for several after a cold one (1.97, 1.21, 1.15, 1.10 s...).
            t0 = time.perf_counter()
            cold = graph(width).compute(scheduler=client.get)[1], time.perf_counter() - t0
            spans, totals, handover = [], [], []
            for _ in range(repeat):
                t0 = time.perf_counter()
                first, last, n = graph(width).compute(scheduler=client.get)
                totals.append(time.perf_counter() - t0)
                assert n == width and not client.last_job["solo"]
                spans.append(last)
                if proxy:  # how long the proxy took to hand the fan-out's invocations to Lambda
                    stats = ProxyClient(c.proxy["address"], c.proxy["secret"], {}, c.store).stats()
                    handover += stats["handover_s"][-1:]  # none: the fan-out went through the invoker tree
    return {
        "cold": cold,
        "fanout": statistics.median(spans),
        "total": statistics.median(totals),
        "handover": statistics.median(handover) if handover else None,
    }


def invoke_cpu(n: int, latency: float, invoker: str) -> dict:
    """CPU seconds of this process per Event invoke, and invokes per second, for ``invoker``."""
    from wukong.backends.aws_lambda import LambdaInvoker, lambda_config
    from wukong.process import spawn, stop

    argv = [sys.executable, "-m", "wukong.lambda_local", "--function", "noop=bench.fanout:noop"]
    argv += ["--latency", str(latency), "--workers", "1"]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, **AWS_ENV, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    proc = spawn(argv, stdout=subprocess.PIPE, env=env)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().decode().strip()
        config = {"lambda": lambda_config("noop", region="us-east-1", endpoint_url=url, invoker=invoker)}
        inv = LambdaInvoker(None, config)  # type: ignore[arg-type]  # no spills, no failures to report
        inv.send("warm", [b"{}"] * 200)  # connections (and boto3's clients) made before measuring
        c0, t0 = time.process_time(), time.perf_counter()
        inv.send("bench", [b"{}"] * n)
        cpu, wall = time.process_time() - c0, time.perf_counter() - t0
        inv.close()
        assert inv.invoked == n + 200, inv.invoked
    finally:
        stop([proc])
    return {"cpu_ms": cpu / n * 1000, "per_s": n / wall, "wall": wall}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.fanout", description=__doc__.splitlines()[0])
    p.add_argument("--width", type=int, default=1000)
    p.add_argument("--latency", type=float, default=0.05, help="seconds per Invoke call")
    p.add_argument("--workers", type=int, default=8, help="LambdaLocal worker processes")
    p.add_argument("--repeat", type=int, default=3, help="runs per mode (medians reported)")
    p.add_argument("--max-task-fanout", type=int, default=64)
    p.add_argument("--invoker", choices=("lean", "boto3", "both"), default="both")
    p.add_argument("--modes", default="direct,proxy", help="comma-separated: direct, proxy")
    p.add_argument(
        "--tree-branching", type=int, help="force the invoker tree's branching (0: no tree; default: chosen)"
    )
    p.add_argument("--cpu-invokes", type=int, default=2000, help="invokes for the CPU measurement (0: skip)")
    args = p.parse_args(argv)
    invokers = ("lean", "boto3") if args.invoker == "both" else (args.invoker,)
    modes = args.modes.split(",")
    os.environ.update(AWS_ENV)
    handler = {FUNCTION: "wukong.backends.aws_lambda:handler"}
    with lambda_local(handler, workers=args.workers, latency=args.latency) as lam:
        rows = [
            (
                mode,
                invoker,
                run(lam, args.width, mode == "proxy", args.repeat, args.max_task_fanout, invoker, args.tree_branching),
            )
            for mode in modes
            for invoker in invokers
        ]
    tree = args.tree_branching
    print(
        f"1 -> {args.width} fan-out + reduction, lambda backend on LambdaLocal "
        f"(latency {args.latency * 1000:.0f} ms, {args.workers} workers, {os.cpu_count()} cores, "
        f"load {os.getloadavg()[0]:.1f}, invoker tree {'chosen' if tree is None else tree}), "
        f"median of {args.repeat}"
    )
    print(
        f"{'mode':<8} {'invoker':<8} {'last child started (s)':>24} {'total (s)':>10} {'proxy handover (s)':>20}"
        f" {'first run: last child, total (s)':>34}"
    )
    for mode, invoker, r in rows:
        handover = "-" if r["handover"] is None else f"{r['handover']:.3f}"
        cold = f"{r['cold'][0]:.3f}, {r['cold'][1]:.3f}"
        print(f"{mode:<8} {invoker:<8} {r['fanout']:>24.3f} {r['total']:>10.3f} {handover:>20} {cold:>34}")
    if args.cpu_invokes:
        latency_ms = f"{args.latency * 1000:.0f} ms"
        print(f"\ninvoker cost: {args.cpu_invokes} Event invokes to a lambda-local process (latency {latency_ms})")
        print(f"{'invoker':<8} {'CPU ms / invoke':>16} {'invokes / s':>12}")
        cost = {inv: invoke_cpu(args.cpu_invokes, args.latency, inv) for inv in invokers}
        for inv, c in cost.items():
            print(f"{inv:<8} {c['cpu_ms']:>16.3f} {c['per_s']:>12.0f}")
        if len(cost) == 2:
            print(f"boto3 / lean CPU per invoke: {cost['boto3']['cpu_ms'] / cost['lean']['cpu_ms']:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

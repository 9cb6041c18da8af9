"""Recovery cost: the same random DAGs with and without injected faults.

``python -m bench.faults [--backend local|lambda] [--graphs 20] [--tasks 120]``
prints, per fault kind, the total time over the fault-free total; the
fault-tolerance issue asks for at most 3x.  Results are checked against
Dask's synchronous scheduler.
"""

from __future__ import annotations

import argparse
import os
import random
import time

import dask

from wukong import Client, LocalCluster

FAULTS = {
    "none": None,
    "crash 10%": {"crash": 0.1},
    "duplicate 100%": {"duplicate": 1.0},
    "drop 5%": {"drop": 0.05},
    "all three": {"crash": 0.1, "duplicate": 1.0, "drop": 0.05},
}


def combine(i, work_s, *parents):
    if work_s:
        time.sleep(work_s)  # stands for a task's computation
    return (i * 7 + sum(p * (j + 1) for j, p in enumerate(parents))) % 1_000_003


def random_dag(rng: random.Random, n: int, work_s: float) -> tuple[dict, list]:
    dsk = {}
    for i in range(n):
        parents = rng.sample(range(i), min(i, rng.randint(0, 5))) if i else []
        dsk[f"t{i}"] = (combine, i, work_s, *[f"t{p}" for p in sorted(parents)])
    return dsk, [f"t{n - 1}", f"t{n // 2}"]


def make_cluster(backend: str, faults: dict | None, lease_ms: int, lam) -> LocalCluster:
    if backend == "local":
        return LocalCluster(faults=faults, lease_ms=lease_ms)
    return LocalCluster(backend="lambda", endpoint_url=lam.url, region="us-east-1", faults=faults, lease_ms=lease_ms)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", choices=["local", "lambda"], default="local")
    ap.add_argument("--graphs", type=int, default=20)
    ap.add_argument("--tasks", type=int, default=120)
    ap.add_argument("--lease-ms", type=int, default=300)
    ap.add_argument("--task-ms", type=float, default=0.0, help="work per task (a sleep), milliseconds")
    args = ap.parse_args(argv)
    rng = random.Random(42)
    graphs = [random_dag(rng, args.tasks, args.task_ms / 1000) for _ in range(args.graphs)]
    expected = [dask.get(dsk, out) for dsk, out in graphs]
    lam = None
    if args.backend == "lambda":
        from wukong.lambda_local import LambdaLocal

        for k, v in {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x", "AWS_DEFAULT_REGION": "us-east-1"}.items():
            os.environ.setdefault(k, v)
        lam = LambdaLocal({"wukong-executor": "wukong.backends.aws_lambda:handler"}, workers=os.cpu_count() or 2)
        lam.start()
    rows = []
    # spread jobs' recovery: these graphs' tasks are short, and repeated they would run solo
    for name, faults in FAULTS.items():
        with (
            dask.config.set({"wukong.solo-work": None}),
            make_cluster(args.backend, faults, args.lease_ms, lam) as cluster,
        ):
            client = Client(cluster, progress=False)
            client.get(*graphs[0])  # warm-up
            t = time.perf_counter()
            for (dsk, out), want in zip(graphs, expected, strict=False):
                assert client.get(dsk, out) == want, f"{name}: wrong result"
            rows.append((name, time.perf_counter() - t))
    if lam is not None:
        lam.stop()
    base = rows[0][1]
    print(
        f"{args.graphs} random DAGs of {args.tasks} tasks ({args.task_ms} ms each), "
        f"{args.backend} backend, lease {args.lease_ms} ms"
    )
    print(f"{'faults':<16} {'total s':>8} {'vs none':>8}")
    for name, secs in rows:
        print(f"{name:<16} {secs:8.2f} {secs / base:7.2f}x")


if __name__ == "__main__":
    main()

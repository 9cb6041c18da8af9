"""The client side of test_lambda_zip.py, run by the runtime's Python (3.12) with the
deployment package's own libraries on its path (plus boto3): the versions the executors run.

``python3.12 -S lambda_zip_client.py TASK_ROOT RUNTIME_DIR URL SLOW_URL``: runs the seed
examples, a task error, the fault-injection mix and a task that outlives the function's
timeout against the endpoints, each checked against Dask's sync scheduler; prints one
``ok NAME`` line per check; any failure raises (exit status 1, traceback on stderr).
"""

import os
import sys

task_root, runtime_dir, url, slow_url = sys.argv[1:5]
sys.path[:] = [task_root, runtime_dir, *[p for p in sys.path[1:] if p]]

import operator  # noqa: E402
import random  # noqa: E402
import time  # noqa: E402

import dask  # noqa: E402
import dask.array as da  # noqa: E402
import numpy as np  # noqa: E402
from dask import delayed  # noqa: E402

from wukong import Client, LocalCluster, TaskError  # noqa: E402
from wukong.demo import add_values, decr, double, incr  # noqa: E402


def job_keys(cluster):
    assert cluster.store.deleted(30), "the deletes of ended jobs still run after 30 s"
    keys = []
    for r in cluster.store.servers:
        keys += [k for k in r.scan_iter(match="wk:*", count=1000) if not k.startswith(b"wk:cluster:")]
    return keys


def same(x, y):
    np.testing.assert_allclose(x, y, rtol=1e-8, atol=1e-8)


def tree(n):
    L = range(n)
    while len(L) > 1:
        L = list(map(delayed(operator.add), L[0::2], L[1::2]))
    return L[0]


def examples():
    rs = da.random.RandomState
    X = rs(0).random_sample((2000, 50), chunks=(200, 50))
    A = da.tril(da.ones((100, 100), chunks=(25, 25)))
    yield "single_node", [delayed(incr)(5)], 6
    yield "linear", [delayed(double)(delayed(decr)(delayed(incr)(5)))], 10
    yield "fan_in", [delayed(add_values)(delayed(incr)(3), delayed(decr)(7))], 10
    yield "tree_1024", [tree(1024)], sum(range(1024))
    yield "several_collections", [delayed(incr)(1), da.arange(10, chunks=3).sum()], None
    yield "tall_skinny_svd", list(da.linalg.svd(X)), None
    sq = rs(1).random_sample((400, 400), chunks=100)
    yield "svd_compressed", [da.linalg.svd_compressed(sq, k=5, seed=42)[1]], None
    x, y = rs(2).random_sample((600, 600), chunks=200), rs(3).random_sample((600, 600), chunks=200)
    yield "gemm", [da.matmul(x, y)], None
    yield "qr", [da.linalg.qr(rs(3).random_sample((128, 128), chunks=(16, 128)))[1]], None
    yield "tsqr", list(da.linalg.tsqr(rs(4).random_sample((8192, 32), chunks=(512, 32)))), None
    for lower in (False, True):
        yield f"cholesky_lower_{lower}", [da.linalg.cholesky(da.asarray(A.dot(A.T), chunks=25), lower=lower)], None
    big = rs(5).random_sample((4000, 4000), chunks=(1000, 1000))
    yield "large_arrays", [(big + big.T).sum(axis=0)], None


def combine(i, *parents):
    return (i * 7 + sum(p * (j + 1) for j, p in enumerate(parents))) % 1_000_003


def random_dag(seed, n=120):
    r = random.Random(seed)
    dsk = {f"t{i}": (combine, i, *[f"t{p}" for p in r.sample(range(i), min(i, r.randint(0, 5)))]) for i in range(n)}
    return dsk, r.sample(sorted(dsk), 4)


def boom(x):
    raise ValueError(f"boom {x}")


def main():
    kw = dict(backend="lambda", region="us-east-1", num_lambda_invokers=4)
    # the functions' Redis; its password is only in the secret (read by the client too)
    kw.update(redis_endpoints=[os.environ["WUKONG_TEST_REDIS"]], redis_secret_arn=os.environ["WUKONG_TEST_SECRET_ARN"])
    with LocalCluster(endpoint_url=url, **kw) as cluster:
        client = Client(cluster, progress=False)
        for name, collections, expected in examples():
            got = dask.compute(*collections, scheduler=client.get)
            want = dask.compute(*collections, scheduler="sync")
            for g, w in zip(got, want, strict=True):
                same(g, w)
            if expected is not None:
                assert got[0] == expected, (name, got)
            assert job_keys(cluster) == [], name
            print("ok", name, flush=True)
        try:
            delayed(boom)(delayed(incr)(1)).compute(scheduler=client.get)
        except ValueError as e:  # the task's own type, with the remote traceback
            assert "boom 2" in str(e) and "Remote traceback" in str(e), e
        else:
            raise AssertionError("no error")
        assert job_keys(cluster) == []
        print("ok task_error", flush=True)
    faults = {"crash": 0.1, "duplicate": 1.0, "drop": 0.05}
    with LocalCluster(endpoint_url=url, faults=faults, lease_ms=300, start_grace=0.5, **kw) as cluster:
        client = Client(cluster, progress=False)
        for seed in range(3):
            dsk, outputs = random_dag(seed)
            assert client.get(dsk, outputs, timeout=120) == dask.get(dsk, outputs), seed
            assert job_keys(cluster) == []
        print("ok faults", flush=True)
    with LocalCluster(endpoint_url=slow_url, lease_ms=300, max_attempts=2, start_grace=0.5, **kw) as cluster:
        t0 = time.monotonic()
        try:
            delayed(time.sleep)(30).compute(scheduler=Client(cluster, progress=False).get, timeout=60)
        except TaskError as e:  # each delivery ran "sleep" past the function's timeout: it is named
            assert e.key.startswith("sleep-") and "killed its executor" in str(e), e
            print("timeout_error:", str(e).splitlines()[0], flush=True)
        else:
            raise AssertionError("a task longer than the function's timeout finished")
        assert time.monotonic() - t0 < 30, "the job was not stopped by the function's timeout"
        assert job_keys(cluster) == []
        print("ok function_timeout", flush=True)


if __name__ == "__main__":
    main()

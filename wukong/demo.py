"""The seed examples on an embedded local cluster, with timings: ``wukong demo``.

Each example runs on wukong and on Dask's synchronous scheduler; results are
checked against each other and both times are printed.
"""

from __future__ import annotations

import operator
import time

import dask
import dask.array as da
import numpy as np
from dask import delayed


def incr(x):
    return x + 1


def decr(x):
    return x - 1


def double(x):
    return x * 2


def add_values(x, y):
    return x + y


def tree_reduction():
    L = range(1024)
    while len(L) > 1:
        L = list(map(delayed(operator.add), L[0::2], L[1::2]))
    return L[0]


def cholesky():
    A = da.ones((100, 100), chunks=(25, 25))
    lA = da.tril(A)
    X = da.asarray(lA.dot(lA.T), chunks=(25, 25))
    return da.linalg.cholesky(X, lower=False)


def examples() -> list[tuple[str, object]]:
    rs = da.random.RandomState(42)
    return [
        ("single node: incr(5)", delayed(incr)(5)),
        ("linear 3-node DAG", delayed(double)(delayed(decr)(delayed(incr)(5)))),
        ("fan-in 3-node DAG", delayed(add_values)(delayed(incr)(3), delayed(decr)(7))),
        ("tree reduction of 1024 numbers", tree_reduction()),
        ("tall-and-skinny SVD 20000x100", da.linalg.svd(rs.random_sample((20000, 100), chunks=(2000, 100)))[2]),
        (
            "svd_compressed 2000x2000, k=5",
            da.linalg.svd_compressed(rs.random_sample((2000, 2000), chunks=(500, 500)), k=5, seed=1)[1],
        ),
        (
            "GEMM 2000x2000 @ 2000x2000",
            da.matmul(
                rs.random_sample((2000, 2000), chunks=(500, 500)), rs.random_sample((2000, 2000), chunks=(500, 500))
            ),
        ),
        ("QR 128x128", da.linalg.qr(rs.random_sample((128, 128), chunks=(16, 128)))[1]),
        ("TSQR 262144x128", da.linalg.tsqr(rs.random_sample((262_144, 128), chunks=(8192, 128)))[1]),
        ("Cholesky 100x100", cholesky()),
    ]


def _show(x: object) -> str:
    if isinstance(x, np.ndarray):
        return f"array{x.shape} sum={x.sum():.6g}"
    return repr(x)


def main(kvs_shards: int = 1) -> int:
    from wukong import Client, LocalCluster

    t0 = time.perf_counter()
    with LocalCluster(kvs_shards=kvs_shards) as cluster, Client(cluster, progress=False) as client:
        print(f"{cluster!r} started in {time.perf_counter() - t0:.2f}s\n")
        print(f"{'example':<34} {'result':<34} {'wukong':>8} {'sync':>8}  check")
        failures = 0
        for name, x in examples():
            t = time.perf_counter()
            (got,) = dask.compute(x, scheduler=client.get)
            t_wk = time.perf_counter() - t
            t = time.perf_counter()
            (want,) = dask.compute(x, scheduler="sync")
            t_sync = time.perf_counter() - t
            ok = np.allclose(got, want) if isinstance(want, np.ndarray) else got == want
            failures += not ok
            print(f"{name:<34} {_show(got):<34} {t_wk:7.3f}s {t_sync:7.3f}s  {'ok' if ok else 'MISMATCH'}")
    print("\nall results equal to dask's sync scheduler" if not failures else f"\n{failures} MISMATCHES")
    return 1 if failures else 0


def cli(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="wukong demo", description=__doc__.splitlines()[0])
    ap.add_argument("--kvs-shards", type=int, default=1, help="embedded Redis servers for intermediate data")
    return main(ap.parse_args(argv).kvs_shards)


if __name__ == "__main__":
    raise SystemExit(cli())

"""The seed's workloads, each at three sizes, as Dask collections built once per run.

A workload is built once per harness run and the same collection objects (hence the same
graph, with the same seeded inputs) are handed to every system. Each workload knows how
to compare a system's result with the synchronous scheduler's (its ``check``), and GEMM
knows its hardware limit (one ``numpy.matmul`` of the materialized inputs).

Sizes: ``tiny`` for the CI smoke test (well under a second each), ``small`` (a second or
two on ``sync``), ``full`` (the seed's sizes, or as close as a 2-core / 24 GB machine
allows). ``SIZES`` is the one table of them; ``bench/README.md`` lists it.
"""

from __future__ import annotations

import operator
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import dask
import dask.array as da
import numpy as np
from dask.delayed import Delayed, delayed

SEED = 42

SIZES: dict[str, dict[str, dict[str, Any]]] = {
    "tree": {
        "tiny": {"n": 256},
        "small": {"n": 1024},
        "full": {"n": 1024},  # the seed's size
    },
    "gemm": {
        "tiny": {"n": 200, "chunk": 100},
        "small": {"n": 3000, "chunk": 750},
        "full": {"n": 10000, "chunk": 2000},
    },
    "svd": {
        "tiny": {"m": 2000, "n": 20, "chunk": 200},
        "small": {"m": 200000, "n": 100, "chunk": 10000},  # the docs' size
        "full": {"m": 200000, "n": 1000, "chunk": 10000},
    },
    "svd_compressed": {
        "tiny": {"n": 200, "chunk": 50, "k": 5},
        "small": {"n": 8000, "chunk": 2000, "k": 5},
        "full": {"n": 10000, "chunk": 2000, "k": 5},
    },
    "tsqr": {
        "tiny": {"m": 4096, "n": 16, "chunk": 256},
        "small": {"m": 262144, "n": 64, "chunk": 8192},
        "full": {"m": 262144, "n": 128, "chunk": 8192},
    },
    "qr": {
        "tiny": {"m": 64, "n": 64, "chunk": 16},
        "small": {"m": 128, "n": 128, "chunk": 16},  # the docs' shape; dask needs whole rows per block
        "full": {"m": 65536, "n": 1024, "chunk": 4096},
    },
    "cholesky": {
        "tiny": {"n": 40, "chunk": 10},
        "small": {"n": 100, "chunk": 25},  # the docs' size
        "full": {"n": 4000, "chunk": 250},
    },
    "svc": {
        "tiny": {"n_samples": 2000, "nchunks": 20},
        "small": {"n_samples": 40000, "nchunks": 20},
        "full": {"n_samples": 800000, "nchunks": 20},  # the seed's size
    },
    "fanout": {
        "tiny": {"width": 1000},
        "small": {"width": 20000},
        "full": {"width": 100000},
    },
    "fanout_fanin": {
        "tiny": {"width": 1000},
        "small": {"width": 20000},
        "full": {"width": 100000},
    },
    "noop": {
        "tiny": {"tasks": 1000},
        "small": {"tasks": 10000},
        "full": {"tasks": 100000},
    },
}


@dataclass
class Workload:
    """One workload at one size.

    ``collections`` are computed together (``dask.compute(*collections)``); ``check(result,
    reference)`` returns ``None`` when ``result`` matches the reference, else what differs;
    ``limit``, when set, times the same computation without Dask (a lower bound).
    """

    name: str
    params: dict[str, Any]
    collections: tuple
    check: Callable[[tuple, tuple], str | None]
    describe: str
    limit: Callable[[], dict[str, Any]] | None = field(default=None)


def build(name: str, size: str) -> Workload:
    """The workload ``name`` at ``size``, with its collections built (not computed)."""
    params = dict(SIZES[name][size])
    return BUILDERS[name](params)


# --- comparisons -------------------------------------------------------------------------


def _equal(result: tuple, reference: tuple) -> str | None:
    for i, (a, b) in enumerate(zip(result, reference, strict=True)):
        if not np.array_equal(np.asarray(a), np.asarray(b)):
            return f"output {i}: not equal to sync's"
    return None


def _close(a: Any, b: Any, what: str, rtol: float = 1e-5, atol: float = 1e-8) -> str | None:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return f"{what}: shape {a.shape} != sync's {b.shape}"
    if not np.allclose(a, b, rtol=rtol, atol=atol):
        err = float(np.max(np.abs(a - b)))
        return f"{what}: max abs difference {err:.3g} from sync's"
    return None


def _first(*messages: str | None) -> str | None:
    return next((m for m in messages if m), None)


# --- builders ----------------------------------------------------------------------------


def _tree(p: dict) -> Workload:
    # The seed's code, verbatim: pairwise delayed additions of range(n).
    L: Any = range(p["n"])
    while len(L) > 1:
        L = list(map(delayed(operator.add), L[0::2], L[1::2]))
    return Workload("tree", p, (L[0],), _equal, f"tree reduction of {p['n']} numbers")


def _gemm(p: dict) -> Workload:
    n, c = p["n"], p["chunk"]
    rs = da.random.RandomState(SEED)
    x = rs.random((n, n), chunks=(c, c))
    y = rs.random((n, n), chunks=(c, c))
    z = da.matmul(x, y)

    def check(result: tuple, reference: tuple) -> str | None:
        return _close(result[0], reference[0], "x @ y", rtol=1e-7)

    def limit() -> dict[str, Any]:
        xs, ys = dask.compute(x, y, scheduler="threads")
        np.matmul(xs[:64], ys)  # load BLAS outside the timed call
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            np.matmul(xs, ys)
            times.append(time.perf_counter() - t0)
        return {"what": "numpy.matmul", "seconds": min(times), "runs_s": times}

    return Workload("gemm", p, (z,), check, f"matmul {n}² · {n}², chunks {c}²", limit)


def _svd(p: dict) -> Workload:
    m, n, c = p["m"], p["n"], p["chunk"]
    X = da.random.RandomState(SEED).random((m, n), chunks=(c, n))
    _, s, v = da.linalg.svd(X)

    def check(result: tuple, reference: tuple) -> str | None:
        (s1, v1), (s0, v0) = result, reference
        # v's rows are defined up to sign: compare s and vᵀ·diag(s²)·v (= XᵀX), both sign-free.
        gram1, gram0 = (v1.T * s1**2) @ v1, (v0.T * s0**2) @ v0
        return _first(_close(s1, s0, "s"), _close(gram1, gram0, "vᵀ s² v", atol=1e-6 * float(s0[0] ** 2)))

    return Workload("svd", p, (s, v), check, f"svd of {m}×{n}, chunks {c}×{n}")


def _svd_compressed(p: dict) -> Workload:
    n, c, k = p["n"], p["chunk"], p["k"]
    X = da.random.RandomState(SEED).random((n, n), chunks=(c, c))
    _, s, v = da.linalg.svd_compressed(X, k=k, seed=SEED)

    def check(result: tuple, reference: tuple) -> str | None:
        (s1, v1), (s0, v0) = result, reference
        return _first(_close(s1, s0, "s"), _close(np.abs(v1), np.abs(v0), "|v|", atol=1e-7))

    return Workload("svd_compressed", p, (s, v), check, f"svd_compressed of {n}², chunks {c}², k={k}")


def _tsqr(p: dict) -> Workload:
    m, n, c = p["m"], p["n"], p["chunk"]
    X = da.random.RandomState(SEED).random((m, n), chunks=(c, n))
    _, r = da.linalg.tsqr(X)

    def check(result: tuple, reference: tuple) -> str | None:
        return _close(np.abs(result[0]), np.abs(reference[0]), "|r|", atol=1e-7)

    return Workload("tsqr", p, (r,), check, f"tsqr of {m}×{n}, chunks {c}×{n}")


def _qr(p: dict) -> Workload:
    m, n, c = p["m"], p["n"], p["chunk"]
    # The docs chunk 128² as 16×16; dask's qr needs one column block, so rows of 16×128.
    X = da.random.RandomState(SEED).random((m, n), chunks=(c, n))
    q, r = da.linalg.qr(X)

    def check(result: tuple, reference: tuple) -> str | None:
        (q1, r1), (q0, r0) = result, reference
        return _first(
            _close(np.abs(r1), np.abs(r0), "|r|", atol=1e-7),
            _close(np.abs(q1), np.abs(q0), "|q|", atol=1e-7),
            _close(q1 @ r1, q0 @ r0, "q @ r", atol=1e-7),
        )

    return Workload("qr", p, (q, r), check, f"qr of {m}×{n}, chunks {c}×{n}")


def _cholesky(p: dict) -> Workload:
    n, c = p["n"], p["chunk"]
    # The docs' get_sym, plus n·I: tril(1)·tril(1)ᵀ alone has condition number ~n², and
    # its factor would then differ between runs by more than rounding.
    A = da.ones((n, n), chunks=(c, c))
    lA = da.tril(A)
    X = lA.dot(lA.T) + n * da.eye(n, chunks=c)
    chol = da.linalg.cholesky(X, lower=False)

    def check(result: tuple, reference: tuple) -> str | None:
        return _close(result[0], reference[0], "cholesky factor", rtol=1e-7)

    return Workload("cholesky", p, (chol,), check, f"cholesky of {n}² (spd), chunks {c}²")


def _svc(p: dict) -> Workload:
    try:
        import dask_ml.datasets
        import sklearn.datasets
        from dask_ml.wrappers import ParallelPostFit
        from sklearn.svm import SVC
    except ImportError as e:
        raise ImportError(
            f"the svc workload needs dask-ml and scikit-learn ({e}); install the bench extras: "
            "pip install -e '.[bench]'"
        ) from e
    n = p["n_samples"]
    X, y = sklearn.datasets.make_classification(n_samples=1000, random_state=SEED)
    clf = ParallelPostFit(SVC(gamma="scale"))
    clf.fit(X, y)
    Xd, _ = dask_ml.datasets.make_classification(n_samples=n, random_state=n, chunks=n // p["nchunks"])
    labels = clf.predict(Xd)
    return Workload("svc", p, (labels,), _equal, f"SVC predict on {n} samples, {p['nchunks']} chunks")


def _noop_task(i: int) -> int:
    return i


def _noop(p: dict) -> Workload:
    # A map of `width` no-op tasks and a pairwise tree reduction over them: 2·width - 1
    # tasks. The graph is a plain dict: 10⁵ `delayed` calls would make 10⁵ graph layers,
    # and the benchmark would then time Dask's graph merging rather than the schedulers.
    width = (p["tasks"] + 1) // 2
    dsk: dict = {("noop", i): (_noop_task, i) for i in range(width)}
    level = [("noop", i) for i in range(width)]
    depth = 0
    while len(level) > 1:
        depth += 1
        nxt = []
        for j in range(0, len(level) - 1, 2):
            dsk[("sum", depth, j // 2)] = (operator.add, level[j], level[j + 1])
            nxt.append(("sum", depth, j // 2))
        if len(level) % 2:
            nxt.append(level[-1])  # carried up to the next level
        level = nxt
    result = Delayed(level[0], dsk)
    return Workload("noop", p | {"graph_tasks": len(dsk)}, (result,), _equal, f"{len(dsk)} no-op tasks")


def _fanout_root(width: int) -> list[int]:
    return list(range(width))


def _fanout_child(xs: list[int], i: int) -> int:
    return xs[i] + 1


def _fanout_graph(width: int) -> tuple[dict, list]:
    # A plain dict, as for noop: one task whose output every child reads.
    dsk: dict = {"root": (_fanout_root, width)}
    children = [("child", i) for i in range(width)]
    for i, k in enumerate(children):
        dsk[k] = (_fanout_child, "root", i)
    return dsk, children


class Outputs:
    """Several keys of one graph as one collection: each key a requested output, and
    no task gathering them (the list is made after ``compute`` returns them)."""

    def __init__(self, dsk: dict, keys: list):
        self.dsk, self.keys = dsk, keys

    def __dask_graph__(self) -> dict:
        return self.dsk

    def __dask_keys__(self) -> list:
        return self.keys

    def __dask_postcompute__(self) -> tuple:
        return list, ()

    def __dask_tokenize__(self) -> tuple:
        return ("outputs", id(self))

    __dask_optimize__ = staticmethod(lambda dsk, keys, **kwargs: dsk)
    __dask_scheduler__ = staticmethod(dask.get)


def _fanout(p: dict) -> Workload:
    # One task fanning out to `width` children, each a requested output.
    dsk, children = _fanout_graph(p["width"])
    return Workload("fanout", p, (Outputs(dsk, children),), _equal, f"1 task → {p['width']} children")


def _fanout_fanin(p: dict) -> Workload:
    # The same fan-out, then one task reading every child (a `width`-wide fan-in).
    dsk, children = _fanout_graph(p["width"])
    result = Delayed("total", dsk | {"total": (sum, children)})
    return Workload("fanout_fanin", p, (result,), _equal, f"1 task → {p['width']} children → 1 sum")


BUILDERS: dict[str, Callable[[dict], Workload]] = {
    "tree": _tree,
    "gemm": _gemm,
    "svd": _svd,
    "svd_compressed": _svd_compressed,
    "tsqr": _tsqr,
    "qr": _qr,
    "cholesky": _cholesky,
    "svc": _svc,
    "noop": _noop,
    "fanout": _fanout,
    "fanout_fanin": _fanout_fanin,
}

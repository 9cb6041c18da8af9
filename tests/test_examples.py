"""The seed README's and docs' examples, at small sizes, equal to ``scheduler="sync"``."""

import operator

import dask
import dask.array as da
import numpy as np
import pytest
from dask import delayed

from wukong.demo import add_values, decr, double, incr


def test_single_node(client):
    assert delayed(incr)(5).compute(scheduler=client.get) == 6


def test_linear_three_nodes(client):
    c = delayed(double)(delayed(decr)(delayed(incr)(5)))
    assert c.compute(scheduler=client.get) == 10


def test_fan_in_three_nodes(client):
    z = delayed(add_values)(delayed(incr)(3), delayed(decr)(7))
    assert z.compute(scheduler=client.get) == 10


def test_tree_reduction_of_1024(client):
    L = range(1024)
    while len(L) > 1:
        L = list(map(delayed(operator.add), L[0::2], L[1::2]))
    assert L[0].compute(scheduler=client.get) == sum(range(1024))


def test_dask_compute_of_several_collections(client):
    a = delayed(incr)(1)
    b = da.arange(10, chunks=3).sum()
    assert dask.compute(a, b, scheduler=client.get) == (2, 45)


def _same(x, y):
    np.testing.assert_allclose(x, y, rtol=1e-8, atol=1e-8)


def test_tall_skinny_svd(client):
    X = da.random.RandomState(0).random_sample((2000, 50), chunks=(200, 50))
    u, s, v = da.linalg.svd(X)
    got = dask.compute(u, s, v, scheduler=client.get)
    want = dask.compute(u, s, v, scheduler="sync")
    for g, w in zip(got, want, strict=False):
        _same(g, w)


def test_svd_compressed(client):
    X = da.random.RandomState(1).random_sample((400, 400), chunks=(100, 100))
    u, s, v = da.linalg.svd_compressed(X, k=5, seed=42)
    _same(s.compute(scheduler=client.get), s.compute(scheduler="sync"))


def test_gemm(client):
    rs = da.random.RandomState(2)
    x = rs.random_sample((600, 600), chunks=(200, 200))
    y = rs.random_sample((600, 600), chunks=(200, 200))
    z = da.matmul(x, y)
    _same(z.compute(scheduler=client.get), z.compute(scheduler="sync"))


def test_qr(client):
    # The docs use chunks=(16, 16); current Dask's qr accepts only one column
    # block (or one row block), so the blocks here are 16 rows tall.
    X = da.random.RandomState(3).random_sample((128, 128), chunks=(16, 128))
    q, r = da.linalg.qr(X)
    _same(r.compute(scheduler=client.get), r.compute(scheduler="sync"))


def test_tsqr(client):
    X = da.random.RandomState(4).random_sample((8192, 32), chunks=(512, 32))
    q, r = da.linalg.tsqr(X)
    got_q, got_r = dask.compute(q, r, scheduler=client.get)
    want_q, want_r = dask.compute(q, r, scheduler="sync")
    _same(got_q, want_q)
    _same(got_r, want_r)


@pytest.mark.parametrize("lower", [False, True])
def test_cholesky(client, lower):
    A = da.ones((100, 100), chunks=(25, 25))
    lA = da.tril(A)
    X = da.asarray(lA.dot(lA.T), chunks=(25, 25))
    chol = da.linalg.cholesky(X, lower=lower)
    _same(chol.compute(scheduler=client.get), chol.compute(scheduler="sync"))


def test_large_arrays_travel_between_executors(client):
    # 8 MB chunks: above the inline limit, so outputs go through the KV store
    x = da.random.RandomState(5).random_sample((4000, 4000), chunks=(1000, 1000))
    y = (x + x.T).sum(axis=0)
    _same(y.compute(scheduler=client.get), y.compute(scheduler="sync"))

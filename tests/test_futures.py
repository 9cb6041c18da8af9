"""Futures: compute/submit/map/gather/persist, results held in the KV store, released by reference count."""

from __future__ import annotations

import concurrent.futures
import gc
import os
import threading
import time

import dask
import dask.array as da
import numpy as np
import pytest
from conftest import job_keys

import wukong
from wukong import Client
from wukong.futures import Future, as_completed, wait


@pytest.fixture
def fclient(cluster):
    client = Client(cluster, progress=False)
    yield client
    client.close()
    assert job_keys(cluster) == [], "a job or a future left keys behind"


def inc(x):
    return x + 1


def add(x, y):
    return x + y


def boom(x):
    raise ValueError(f"boom {x}")


def gated(path, value):
    """Returns ``value`` once ``path`` exists (bounded: never blocks a worker for long)."""
    deadline = time.monotonic() + 60
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return value


def held_names(cluster) -> list[bytes]:
    return [k for k in job_keys(cluster) if k.startswith(b"wk:h")]


def test_submit_returns_before_the_task_runs(fclient, tmp_path):
    gate = tmp_path / "go"
    f = fclient.submit(gated, str(gate), 7)
    try:
        assert isinstance(f, Future)
        assert not f.done() and f.status == "pending"
    finally:
        gate.touch()
    assert f.result() == 7
    assert f.done() and f.status == "finished"


def test_several_jobs_in_flight_on_one_cluster(fclient, tmp_path):
    gates = [tmp_path / f"go{i}" for i in range(3)]
    fs = [fclient.submit(gated, str(g), i) for i, g in enumerate(gates)]
    try:
        assert not any(f.done() for f in fs)
        assert len(fclient.futures.runs) == 3  # three jobs, each waiting on its gate
    finally:
        for g in gates:
            g.touch()
    assert fclient.gather(fs) == [0, 1, 2]


def test_get_from_several_threads_at_once(fclient):
    xs = [da.arange(100, chunks=10) * i for i in range(4)]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        sums = list(pool.map(lambda x: x.sum().compute(scheduler=fclient), xs))
    assert sums == [sum(range(100)) * i for i in range(4)]


def test_a_future_argument_is_read_on_the_executor_not_through_the_client(fclient, monkeypatch):
    f = fclient.submit(inc, 1)
    wait(f)
    fetched = []
    real = wukong.store.held.fetch
    monkeypatch.setattr(wukong.store.held, "fetch", lambda store, names: fetched.extend(names) or real(store, names))
    g = fclient.submit(add, f, 10)
    assert g.result() == 12
    assert fetched == [g._state.name]  # only g's own result came to the client


def test_map_and_gather_nested(fclient):
    fs = fclient.map(add, range(5), range(5))
    assert fclient.gather(fs) == [0, 2, 4, 6, 8]
    assert fclient.gather({"a": fs[1], "b": [fs[2], fs[3]]}) == {"a": 2, "b": [4, 6]}


def test_compute_returns_futures_for_collections(fclient):
    x = da.ones((20, 20), chunks=5)
    f = fclient.compute(x.sum())
    assert isinstance(f, Future)
    fs = fclient.compute([x.sum(), x.mean(), dask.delayed(inc)(1)])
    assert f.result() == 400
    assert [v.result() for v in fs] == [400, 1.0, 2]
    np.testing.assert_array_equal(fclient.compute(x + 1).result(), np.full((20, 20), 2.0))


def test_persist_keeps_chunks_in_the_kv_store_and_later_graphs_read_them(fclient, cluster):
    x = da.arange(100, chunks=10) + 1
    y = fclient.persist(x)
    assert type(y) is type(x) and y.chunks == x.chunks
    values = dict(y.__dask_graph__())
    assert len(values) == 10 and all(isinstance(v, Future) for v in values.values())
    wait(list(values.values()))
    assert len(held_names(cluster)) == 10
    assert (y * 2).sum().compute(scheduler=fclient) == 2 * sum(range(1, 101))
    del y, values
    gc.collect()
    fclient.futures.flush()
    assert held_names(cluster) == []


def test_held_results_carry_a_ttl(fclient, cluster):
    f = fclient.submit(inc, 1)
    wait(f)
    name = f._state.name
    server = cluster.store.servers[cluster.store.kvs_server(name)]
    assert 0 < server.ttl(name) <= cluster.store.ttl


def test_the_last_reference_dropped_releases_the_value(fclient, cluster):
    a = fclient.submit(inc, 41)
    b = fclient.submit(inc, 41)  # same key (pure): the same held value
    assert a.key == b.key and a.result() == 42
    assert len(held_names(cluster)) == 1
    del a
    gc.collect()
    fclient.futures.flush()
    assert len(held_names(cluster)) == 1 and b.result() == 42
    del b
    gc.collect()
    fclient.futures.flush()
    assert held_names(cluster) == []


def test_a_failed_task_raises_its_own_exception_type(fclient):
    f = fclient.submit(boom, 3)
    assert isinstance(f.exception(), ValueError)
    assert f.status == "error"
    with pytest.raises(ValueError, match="boom 3"):
        f.result()
    g = fclient.submit(inc, f)  # a dependent of a failed future fails the same way
    with pytest.raises(ValueError, match="boom 3"):
        g.result()


def test_cancel_a_running_future(fclient, tmp_path):
    gate = tmp_path / "go"
    f = fclient.submit(gated, str(gate), 1)
    try:
        f.cancel()
        assert f.cancelled() and f.done()
        with pytest.raises(concurrent.futures.CancelledError):
            f.result()
    finally:
        gate.touch()


def test_result_timeout(fclient, tmp_path):
    gate = tmp_path / "go"
    f = fclient.submit(gated, str(gate), 1)
    try:
        with pytest.raises(TimeoutError):
            f.result(timeout=0.05)
    finally:
        gate.touch()
    assert f.result() == 1


def test_as_completed_and_wait(fclient, tmp_path):
    gate = tmp_path / "go"
    slow = fclient.submit(gated, str(gate), "slow")
    fast = fclient.submit(inc, 1)
    try:
        first = wait([slow, fast], return_when="FIRST_COMPLETED")
        assert fast in first.done and slow in first.not_done
        seen = []
        ac = as_completed([fast, slow], with_results=True)
        seen.append(next(ac))
        gate.touch()
        seen += list(ac)
    finally:
        gate.touch()
    assert seen == [(fast, 2), (slow, "slow")]


def test_add_done_callback(fclient):
    called = threading.Event()
    got = []
    f = fclient.submit(inc, 1)
    f.add_done_callback(lambda fut: (got.append(fut.result()), called.set()))
    assert called.wait(60)
    assert got == [2]


def test_close_releases_everything(cluster, tmp_path):
    client = Client(cluster, progress=False)
    fs = client.map(inc, range(4))
    wait(fs)
    gate = tmp_path / "go"
    pending = client.submit(gated, str(gate), 0)
    try:
        client.close()
    finally:
        gate.touch()
    assert pending.cancelled()
    assert job_keys(cluster) == []


def test_futures_and_profiler_on_the_lambda_backend(lambda_cluster):
    from dask.diagnostics import Profiler

    client = Client(lambda_cluster, progress=False)
    try:
        f = client.submit(inc, 1)
        g = client.submit(add, f, 10)  # f is loaded on the Lambda executor, with its store
        assert g.result() == 12
        with Profiler() as prof:
            assert da.arange(20, chunks=5).sum().compute(scheduler=client) == 190
        assert prof.results and all(r.start_time <= r.end_time and r.worker_id for r in prof.results)
    finally:
        client.close()
    assert job_keys(lambda_cluster) == []


def test_persist_dataframes_bags_and_delayed(fclient, cluster):
    pd = pytest.importorskip("pandas")
    dd = pytest.importorskip("dask.dataframe")
    import dask.bag as db

    pdf = pd.DataFrame({"a": range(100), "b": [i % 3 for i in range(100)]})
    df, bag, d = fclient.persist(
        [dd.from_pandas(pdf, npartitions=4), db.from_sequence(range(10), npartitions=2), dask.delayed(sum)([1, 2])]
    )
    got = df.groupby("b").a.sum().compute(scheduler=fclient)  # waits for the persisted chunks
    assert got.to_dict() == pdf.groupby("b").a.sum().to_dict()
    assert bag.sum().compute(scheduler=fclient) == 45
    assert d.compute(scheduler=fclient) == 3
    assert len(held_names(cluster)) == 4 + 2 + 1  # still held: the collections refer to them


def test_scatter_then_submit_reads_the_data_where_it_is_stored(fclient):
    arr = np.arange(1000)
    a, b = fclient.scatter([arr, 5])
    assert a.done() and a.status == "finished"
    assert fclient.submit(np.sum, a).result() == arr.sum()
    assert fclient.submit(add, b, 1).result() == 6
    d = fclient.scatter({"x": 1})
    assert fclient.gather(d) == {"x": 1}


def test_compute_sync_returns_values(fclient):
    assert fclient.compute([da.ones(10, chunks=5).sum()], sync=True) == [10]


def gated_strict(path, value):
    """``value`` once ``path`` exists; an error if it never does (a blocked event loop never makes it)."""
    deadline = time.monotonic() + 30
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.01)
    return value


def test_await_a_future_without_blocking_the_event_loop(fclient, tmp_path):
    import asyncio

    gate = tmp_path / "go"

    async def main():
        f = fclient.submit(gated_strict, str(gate), 7)

        async def open_gate():  # runs only if the loop is free while ``await f`` waits
            await asyncio.sleep(0.05)
            gate.touch()

        opener = asyncio.create_task(open_gate())
        value = await f
        await opener
        return value

    assert asyncio.run(main()) == 7


def test_await_a_failed_future_raises_its_error(fclient):
    import asyncio

    async def main():
        return await fclient.submit(boom, 3)

    with pytest.raises(ValueError, match="boom 3"):
        asyncio.run(main())


def test_async_gather_in_an_asynchronous_client(cluster, tmp_path):
    import asyncio

    gate = tmp_path / "go"

    async def main():
        async with Client(cluster, progress=False, asynchronous=True) as client:
            assert await client is client
            futures = client.map(gated_strict, [str(gate)] * 3, [1, 2, 3])
            gathering = asyncio.ensure_future(client.gather({"xs": futures, "y": client.submit(inc, 10)}))
            await asyncio.sleep(0.05)
            assert not gathering.done()
            gate.touch()  # on the loop: the gather must not be holding it
            out = await gathering
            assert await client.compute(dask.delayed(inc)(1), sync=True) == 2
            return out

    assert asyncio.run(main()) == {"xs": [1, 2, 3], "y": 11}
    assert job_keys(cluster) == []


def test_gather_asynchronous_per_call(fclient):
    import asyncio

    f = fclient.submit(inc, 1)
    assert fclient.gather(f) == 2  # a synchronous client
    assert asyncio.run(fclient.gather([f, f], asynchronous=True)) == [2, 2]


def test_async_for_over_as_completed(fclient, tmp_path):
    import asyncio

    gate = tmp_path / "go"

    async def main():
        futures = [fclient.submit(inc, 1), fclient.submit(gated_strict, str(gate), "gated")]

        async def open_gate():  # runs only if the loop is free while the iteration waits
            while not futures[0].done():
                await asyncio.sleep(0.01)
            gate.touch()

        opener = asyncio.create_task(open_gate())
        seen = [value async for _, value in as_completed(futures, with_results=True)]
        await opener
        return seen

    assert asyncio.run(main()) == [2, "gated"]

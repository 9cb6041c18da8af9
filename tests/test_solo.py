"""Solo jobs (``wukong.durations``): a job whose tasks are known to be short runs as
one invocation that counts its fan-ins in memory; results as when spread, also
when tasks fail, results are large or held, and executors crash or repeat."""

import json
import time

import dask
import dask.array as da
import numpy as np
import pytest
from conftest import dags, job_files, job_keys
from hypothesis import HealthCheck, given, settings

from wukong import Client, LocalCluster, TaskError
from wukong.durations import SOLO_MAX_TASKS, TaskDurations

SOLO = {"wukong.solo-work": 1e9}  # any job whose task prefixes are known runs solo


def inc(x):
    return x + 1


def add(*xs):
    return sum(xs)


def fail(x):
    raise ValueError(f"no thanks: {x}")


# a leaf fanning out to two, both read by a fan-in, and a second leaf feeding it too
DIAMOND = {
    "a-1": (inc, 0),
    "a-2": (inc, 5),
    "b-1": (inc, "a-1"),
    "b-2": (inc, "a-1"),
    "c-1": (add, "b-1", "b-2", "a-2"),
}


def test_durations_learn_by_prefix_and_estimate():
    d = TaskDurations()
    assert not d.solo(["x-1", "x-2"], 2, 1.0)  # nothing known yet
    d.learn([(("x-01", 0), 0.01), (("x-01", 1), 0.03), ("y-2", 0.5)])
    assert d.mean == {"x": pytest.approx(0.02), "y": 0.5}
    assert d.solo([("x-1", 5), ("x-1", 6)], 2, 0.05)
    assert not d.solo([("x-1", 5), ("x-1", 6), ("x-1", 7)], 2, 0.05)  # 0.06 s in all
    assert not d.solo([("x-1", 5), "z-1"], 2, 1.0)  # a prefix never seen
    assert not d.solo([("x-1", 5)], 2, None)  # turned off
    assert not d.solo([("x-1", 5)], 1, 1.0)  # one schedule is one invocation anyway
    assert d.solo([("x-1", 5)], 1024, 1.0)  # many schedules: one blob all the same
    assert not d.solo([("x-1", i) for i in range(SOLO_MAX_TASKS + 1)], 2, 1e9)  # too many to estimate
    d.learn([("x-9", 0.04)])
    assert d.mean["x"] == pytest.approx(0.03)  # half way to the new job's mean


def test_the_least_recently_learned_names_are_forgotten_first(monkeypatch):
    from wukong import durations

    monkeypatch.setattr(durations, "NAMES_KEPT", 3)
    d = TaskDurations()
    for name in ["a-1", "b-1", "c-1"]:
        d.learn([((name, 0), 0.5)])
    d.learn([(("a-1", 0), 0.3)])  # learned again: now the most recent
    d.learn([(("d-1", 0), 0.2)])  # a fourth name: the least recently learned, b-1, goes
    assert list(d.by_name) == ["c-1", "a-1", "d-1"]
    assert d.by_name["a-1"] == 0.3  # faster: learned at once


def test_an_estimate_falls_at_once_and_rises_half_way():
    """A first run's one-off costs (a worker's first import inside a task) do not keep the
    next runs of a small graph spread: a faster job's mean replaces its tasks' estimate by
    name, a slower one's moves it half way."""
    d = TaskDurations()
    keys = [("cholesky-1", i) for i in range(100)]
    d.learn([(k, 0.2 if k[1] == 0 else 0.0005) for k in keys])  # the first run: one task imports for 0.2 s
    assert not d.solo(keys, 10, 0.1)
    d.learn([(k, 0.0005) for k in keys])  # the second, spread: 50 ms in all
    assert d.estimate(keys[0]) == pytest.approx(0.0005)
    assert d.mean["cholesky"] > 0.0005  # a prefix's mean still moves half way
    assert d.solo(keys, 10, 0.1)  # the third runs solo
    d.learn([(k, 0.0013) for k in keys])  # slower again: half way up
    assert d.estimate(keys[0]) == pytest.approx(0.0009) and d.solo(keys, 10, 0.1)


def test_a_task_is_estimated_by_its_name_before_its_prefix():
    d = TaskDurations()
    d.learn([(("random_sample-b1g", i), 0.05) for i in range(8)])  # a TSQR's chunks
    d.learn([(("random_sample-5ma11", i), 0.001) for i in range(8)])  # a small QR's
    assert d.estimate(("random_sample-5ma11", 3)) == 0.001
    assert d.estimate(("random_sample-n3w", 0)) == pytest.approx(0.0255)  # the prefix's
    assert d.solo([("random_sample-5ma11", i) for i in range(8)], 8, 0.01)
    assert not d.solo([("random_sample-n3w", i) for i in range(8)], 8, 0.01)


@pytest.fixture
def solo_client(cluster):
    client = Client(cluster, progress=False)
    with dask.config.set(SOLO):
        yield client
    client.close()  # releases the futures' held results
    assert job_keys(cluster) == [], "a job or a future left keys behind"


def test_a_known_short_job_runs_as_one_invocation_writing_no_data(solo_client):
    expected = dask.get(DIAMOND, ["c-1", "b-2"])
    assert solo_client.get(DIAMOND, ["c-1", "b-2"]) == expected
    assert not solo_client.last_job["solo"]  # the first run learns what the tasks take
    assert solo_client.get(DIAMOND, ["c-1", "b-2"]) == expected
    record = solo_client.jobs[-1]
    assert solo_client.last_job["solo"]
    assert (record.invocations, record.fanin_round_trips, record.bytes_stored) == (1, 0, 0)
    assert sorted(t.key for t in record.tasks) == sorted(DIAMOND)  # each task once


def test_off_and_unknown_prefixes_spread(cluster):
    client = Client(cluster, progress=False)
    with dask.config.set({"wukong.solo-work": None}):
        client.get(DIAMOND, ["c-1"])
        client.get(DIAMOND, ["c-1"])
        assert not client.last_job["solo"]
    with dask.config.set(SOLO):
        client.get(DIAMOND, ["c-1"])
        assert client.last_job["solo"]
        client.get({**DIAMOND, "d-1": (inc, "c-1")}, ["d-1"])  # ``d`` never ran
        assert not client.last_job["solo"]


def test_a_dask_array_job_solo_equals_spread(solo_client):
    x = da.from_array(np.arange(400.0).reshape(20, 20), chunks=5)
    y = (x @ x.T + x.sum(axis=0)).std()
    expected = y.compute(scheduler="sync")
    assert y.compute(scheduler=solo_client) == pytest.approx(expected)
    assert y.compute(scheduler=solo_client) == pytest.approx(expected)
    assert solo_client.last_job["solo"]


def test_large_results_of_a_solo_job_are_read_from_the_store(solo_client):
    x = da.ones((600, 600), chunks=300) + 1  # results of 720 kB: through shared memory, not the stream
    first = x.compute(scheduler=solo_client)
    again = x.compute(scheduler=solo_client)
    assert solo_client.last_job["solo"]
    np.testing.assert_array_equal(again, first)
    np.testing.assert_array_equal(again, np.full((600, 600), 2.0))


def test_a_failing_task_in_a_solo_job_is_named(solo_client):
    solo_client.get(DIAMOND, ["c-1"])
    with pytest.raises(TaskError) as info:
        solo_client.get({**DIAMOND, "b-2": (fail, "a-1")}, ["c-1"])  # ``b`` is known: solo
    assert solo_client.jobs[-1].invocations == 1
    assert "b-2" in str(info.value) and "no thanks: 1" in str(info.value)


def ended(record):
    deadline = time.monotonic() + 10
    while record.status == "running" and time.monotonic() < deadline:
        time.sleep(0.01)
    return record


def test_persist_in_a_solo_job(solo_client):
    x = da.arange(100, chunks=10) * 2
    y = (x + x[::-1]).sum()
    solo_client.compute(y, sync=True)
    ended(solo_client.jobs[-1])  # the result comes before the job ends, and learns
    future = solo_client.compute(y)  # its result is held in the KV store
    assert future.result() == 2 * 99 * 100
    record = ended(solo_client.jobs[-1])
    assert (record.status, record.invocations, record.fanin_round_trips) == ("finished", 1, 0)
    future.release()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(dags(max_tasks=200))
def test_random_dags_solo_equal_sync(solo_client, dag):
    dsk, outputs = dag
    expected = dask.get(dsk, outputs)
    solo_client.get(dsk, outputs)  # learns what ``t`` tasks take
    assert solo_client.get(dsk, outputs) == expected
    assert solo_client.last_job["solo"] or solo_client.last_job["schedules"] == 1


@pytest.mark.parametrize("faults", [{"crash": 0.1}, {"crash": 0.1, "duplicate": 1.0, "drop": 0.05}])
def test_random_dags_solo_under_faults_equal_sync(faults):
    with dask.config.set(SOLO), LocalCluster(n_workers=2, faults=faults, lease_ms=300) as cluster:
        client = Client(cluster, progress=False)
        solos = []

        @settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
        @given(dags(max_tasks=120, max_parents=5, max_outputs=4))
        def check(dag):
            dsk, outputs = dag
            expected = dask.get(dsk, outputs)
            assert client.get(dsk, outputs, timeout=60) == expected
            assert client.get(dsk, outputs, timeout=60) == expected
            solos.append(client.last_job["solo"])
            assert job_keys(cluster) == []

        check()
        assert any(solos)


def test_a_solo_job_on_the_lambda_backend(lambda_cluster):
    client = Client(lambda_cluster, progress=False)
    expected = dask.get(DIAMOND, ["c-1", "b-2"])
    with dask.config.set(SOLO):
        assert client.get(DIAMOND, ["c-1", "b-2"]) == expected
        assert client.get(DIAMOND, ["c-1", "b-2"]) == expected
    assert client.last_job["solo"] and client.jobs[-1].invocations == 1
    assert job_keys(lambda_cluster) == []


def test_a_solo_job_travels_in_its_invocation_and_no_plan_is_stored(solo_client, monkeypatch):
    # The local backend takes a solo job's plan and options in the queue entry: the
    # executor runs the tasks while its lease is being taken, and nobody stores or reads
    # the plan in Redis (a plan in neither place would fail the job).
    from wukong.backends import local
    from wukong.store import Batch

    sent, stored = [], []
    encode, set_many = local.encode_invocation, Batch.set_many
    monkeypatch.setattr(local, "encode_invocation", lambda inv: sent.append(inv) or encode(inv))

    def setting(self, server, names, values):
        stored.extend(names)
        return set_many(self, server, names, values)

    monkeypatch.setattr(Batch, "set_many", setting)
    expected = dask.get(DIAMOND, ["c-1", "b-2"])
    solo_client.get(DIAMOND, ["c-1", "b-2"])  # learns
    sent.clear()
    assert solo_client.get(DIAMOND, ["c-1", "b-2"]) == expected
    assert solo_client.last_job["solo"]
    (inv,) = sent
    assert inv.plan and json.loads(inv.options)["solo"] is True and inv.attempt == 0
    assert not any(name.endswith(":plan") for name in stored)


def test_a_solo_job_delivered_twice_reports_each_task_once(monkeypatch):
    # Each copy runs the tasks before it learns whether its lease was granted; the one
    # refused (or come after the job ended) writes nothing: no result, no task timing,
    # no exit, no key or file left.
    with dask.config.set(SOLO), LocalCluster(n_workers=2) as cluster:
        invoke = cluster.backend.invoke
        monkeypatch.setattr(cluster.backend, "invoke", lambda batch, job, invs: invoke(batch, job, invs * 2))
        client = Client(cluster, progress=False)
        dsk = {**DIAMOND, "big": (np.full, (600, 600), 2.0)}  # 2.9 MB: written to a file before the exit
        client.get(dsk, ["c-1", "big"])
        for _ in range(10):
            c, big = client.get(dsk, ["c-1", "big"])
            assert client.last_job["solo"] and c == dask.get(DIAMOND, "c-1")
            np.testing.assert_array_equal(big, np.full((600, 600), 2.0))
            assert sorted(t.key for t in client.jobs[-1].tasks) == sorted(dsk)
            assert client.jobs[-1].invocations == 1
        assert job_keys(cluster) == [] and job_files(cluster) == []


@pytest.mark.parametrize("lease", ["granted", "refused"])
def test_a_solo_copy_ended_for_a_stuck_task_reports_only_if_its_lease_was_granted(cluster, lease, monkeypatch):
    # ``_Run.abandon`` (a task past its timeout that will not stop) before the start's
    # answer is read: the copy that holds the lease reports its end and why; a refused
    # copy only acknowledges its queue entry: the other copy speaks for the invocation.
    import os

    from wukong import protocol
    from wukong.executor import Duplicate, Executor, _Run
    from wukong.graph import prepare
    from wukong.protocol import Invocation, Keys
    from wukong.scheduler import plan
    from wukong.store import JobWrites

    store, keys = cluster.store, Keys(f"stuckcopy{lease:0>7}")
    order, graph = prepare(DIAMOND, ["c-1"])
    inv = Invocation(keys.job, 0, 0, {}, (), protocol.WHOLE_JOB, plan=plan(order, graph, ["c-1"]).schedules.whole())
    batch = store.batch()
    protocol.emit_start(batch, keys, store.ttl)
    batch.execute()
    if lease == "refused":
        store.mds.set(keys.lease(inv.id), b"the other copy")
    run = _Run(Executor(store, lambda *a: None), inv)
    run.start()  # the lease is asked for, its answer not read
    acks = keys.prefix + "acks"
    run.on_exit = lambda b: b.mds("incr", acks)
    monkeypatch.setattr(os, "_exit", lambda code: (_ for _ in ()).throw(SystemExit(code)))
    try:
        with pytest.raises(SystemExit):
            run.abandon("it would not stop")
        ended = [f for _, f in store.mds.xrange(keys.events)[1:]]  # after the start's
        assert store.mds.get(acks) == b"1"
        assert bool(ended) == (lease == "granted")
        if lease == "refused":
            with pytest.raises(Duplicate):  # and what the connection owes is read
                run.settle()
        else:
            run.settle()
    finally:
        store.delete_job(keys, JobWrites(len(DIAMOND), invocations=[inv.id]))
        store.mds.delete(acks)

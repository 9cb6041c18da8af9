"""Delayed I/O: a large output read by one fan-in is held in memory while the fan-in may
complete where it is; the fan-in then runs there and the output is never stored.

``fanin.lua`` decides who completes a fan-in; these tests drive it directly (atomic,
idempotent, one completion, a dead holder's re-run completes it) and run jobs through
it (results, stored bytes, a holder's crash, no key left behind).
"""

import time
from types import SimpleNamespace

import dask
import numpy as np
import pytest
from conftest import job_keys

from wukong import Client, LocalCluster
from wukong.executor import _Run
from wukong.protocol import Keys
from wukong.store import Endpoint, Store
from wukong.store.server import RedisServer

HOLD, STORE_NOW = 3, 2  # fanin.lua's replies to a holder
N = 1 << 18  # float64: 2 MiB per value


@pytest.fixture(scope="module")
def store():
    with RedisServer() as server:
        endpoint = Endpoint(*server.endpoint, password=server.password)
        s = Store(endpoint, [endpoint])
        yield s
        s.close()


@pytest.fixture
def keys(store):
    keys = Keys(f"job{np.random.randint(1 << 30)}")
    store.mds.xadd(keys.events, {"k": "start"})  # the job lives while its stream does
    store.mds.set(keys.schedule(7), b"schedule")
    yield keys
    store.mds.delete(keys.events, keys.schedule(7), keys.fanin(9), keys.owner(9), keys.holds(9))


def arrive(store, keys, parent, ndeps=3, hold=False, inv=None, max_missing=2):
    """One parent's arrival at fan-in 9 (schedule 7); ``inv``: its invocation's id."""
    batch = store.batch()
    h = batch.fanin(keys, 9, parent, ndeps, 7, True, inv or f"inv{parent}", hold, max_missing)
    reply = batch.execute()[h]
    return [reply[0], bytes(reply[1])] if isinstance(reply, list) else reply


COMPLETE = [1, b"schedule"]


def test_a_holder_completes_the_fan_in_once_the_others_stored_theirs(store, keys):
    assert arrive(store, keys, 1, hold=True) == HOLD
    assert arrive(store, keys, 2) == 0
    assert arrive(store, keys, 1, hold=True) == HOLD  # parent 3 is missing
    assert arrive(store, keys, 3) == 0  # the last arrival: but 1's value is not stored
    assert arrive(store, keys, 1, hold=True) == COMPLETE
    assert arrive(store, keys, 3) == 0 and arrive(store, keys, 2) == 0  # repeats never fire it again
    assert store.mds.exists(keys.holds(9)) == 0


def test_of_two_holders_one_stores_its_value_and_the_other_keeps_its_own(store, keys):
    assert arrive(store, keys, 1, hold=True) == HOLD
    assert arrive(store, keys, 2) == 0
    assert arrive(store, keys, 3, hold=True) == STORE_NOW  # 1 keeps its value: 3 stores
    assert arrive(store, keys, 1, hold=True) == HOLD  # until 3's value is stored
    assert arrive(store, keys, 3) == 0  # 3 stored it and arrives
    assert arrive(store, keys, 1, hold=True) == COMPLETE


def test_values_one_invocation_holds_complete_the_fan_in_together(store, keys):
    assert arrive(store, keys, 1, hold=True, inv="inv") == HOLD
    assert arrive(store, keys, 2) == 0
    assert arrive(store, keys, 3, hold=True, inv="inv") == COMPLETE  # 1's value is in its memory too
    assert arrive(store, keys, 1, hold=True, inv="inv") == HOLD  # its ask in the same round trip
    assert arrive(store, keys, 2) == 0 and arrive(store, keys, 1, hold=True, inv="other") == 0


def test_a_rerun_of_an_invocation_that_held_two_values_waits_for_its_owner_parent(store, keys):
    assert arrive(store, keys, 1, hold=True, inv="inv") == HOLD
    assert arrive(store, keys, 2) == 0
    assert arrive(store, keys, 3, hold=True, inv="inv") == COMPLETE  # then its executor dies
    # run again: 1 arrives first; the fan-in needs 3's value too, which only 3's arrival brings
    assert arrive(store, keys, 1, hold=True, inv="inv") == HOLD
    assert arrive(store, keys, 1, inv="inv") == 0  # 1's wait expired: stored, still not complete
    assert arrive(store, keys, 3, hold=True, inv="inv") == COMPLETE


def test_a_holder_whose_wait_expired_stores_and_may_complete(store, keys):
    assert arrive(store, keys, 1, hold=True) == HOLD
    assert arrive(store, keys, 2) == 0
    assert arrive(store, keys, 3, hold=True) == STORE_NOW
    assert arrive(store, keys, 1) == 0  # 1's wait is over: it stores and arrives
    assert arrive(store, keys, 3) == COMPLETE  # the last value stored completes it


def test_a_value_is_not_held_while_too_many_parents_are_missing(store, keys):
    assert arrive(store, keys, 1, hold=True, max_missing=1) == STORE_NOW  # 2 and 3 missing
    assert arrive(store, keys, 2, hold=True, max_missing=1) == HOLD  # only 3 missing
    assert arrive(store, keys, 1) == 0  # 1 stored its value
    assert arrive(store, keys, 3) == 0
    assert arrive(store, keys, 2, hold=True, max_missing=1) == COMPLETE


def test_a_dead_holders_rerun_completes_the_fan_in(store, keys):
    assert arrive(store, keys, 1, hold=True) == HOLD  # and its executor dies
    assert arrive(store, keys, 2) == 0 and arrive(store, keys, 3) == 0
    assert arrive(store, keys, 1, hold=True) == COMPLETE  # its invocation, run again


def test_the_owner_completes_again_when_run_again(store, keys):
    assert arrive(store, keys, 2) == 0 and arrive(store, keys, 3) == 0
    assert arrive(store, keys, 1, hold=True) == COMPLETE  # then it dies running the fan-in
    assert arrive(store, keys, 1, hold=True) == COMPLETE  # its re-run
    assert arrive(store, keys, 1) == COMPLETE
    assert arrive(store, keys, 1, hold=True, inv="someone-else") == 0


def test_only_the_owners_completing_parent_completes_again(store, keys):
    # parents 1 and 2 ran in one invocation: 1 held its value and completed the fan-in
    assert arrive(store, keys, 2, inv="inv") == 0 and arrive(store, keys, 3) == 0
    assert arrive(store, keys, 1, hold=True, inv="inv") == COMPLETE
    # re-run, the invocation stores 2 again first: 1's value is not stored, the fan-in may not start
    assert arrive(store, keys, 2, inv="inv") == 0
    assert arrive(store, keys, 1, hold=True, inv="inv") == COMPLETE


def test_a_repeat_of_a_stored_arrival_is_told_it_is_done(store, keys):
    assert arrive(store, keys, 1) == 0
    assert arrive(store, keys, 1, hold=True) == 0  # its value is in the KV store: nothing to keep


def test_nothing_is_written_once_the_job_ended(store, keys):
    store.mds.delete(keys.events)
    assert arrive(store, keys, 1, hold=True) == 0
    assert store.mds.exists(keys.fanin(9), keys.holds(9)) == 0


# -- jobs ---------------------------------------------------------------------


def block(i):
    return np.full(N, float(i))


def add(*xs):
    return sum(xs)


def total(x):
    return float(x.sum())


def reduction(width):
    """``width`` leaves of 2 MiB each, summed by one fan-in."""
    dsk = {f"leaf{i}": (block, i) for i in range(width)}
    dsk["sum"] = (add, *[f"leaf{i}" for i in range(width)])
    dsk["total"] = (total, "sum")
    return dsk, "total", float(N * sum(range(width)))


@pytest.fixture(scope="module")
def clusters():
    settings = {"threshold": 1 << 20, "max-wait": 5.0}  # long: this machine is loaded
    with (
        LocalCluster(n_workers=2, delayed_io=settings) as on,
        LocalCluster(n_workers=2, delayed_io=False) as off,
    ):
        yield on, off


@pytest.mark.parametrize("width", [2, 5])
def test_a_held_value_completes_its_fan_in_without_being_stored(clusters, width):
    on, off = clusters
    dsk, key, expected = reduction(width)
    client_on, client_off = Client(on, progress=False), Client(off, progress=False)
    assert client_on.get(dsk, key) == client_off.get(dsk, key) == expected
    held, plain = client_on.jobs[-1], client_off.jobs[-1]
    assert held.held_fanins == 1 and plain.held_fanins == 0
    value = N * 8
    assert plain.bytes_stored >= width * value
    assert held.bytes_stored < (width - 1) * value + value // 2  # one value fewer at least
    assert job_keys(on) == [] and job_keys(off) == []


def late_block(i):
    time.sleep(1.0)  # arrives long after the other parent: that one would wait for it
    return block(i)


def arrivals(cluster):
    """fanin.lua calls so far: each adds its parent to the fan-in's set (one SADD)."""
    return sum(r.info("commandstats").get("cmdstat_sadd", {}).get("calls", 0) for r in cluster.store.servers)


def test_a_value_is_not_held_for_a_parent_that_runs_elsewhere(clusters):
    # leaf0 arrives first, with one parent missing; leaf1 runs in another invocation, not on
    # leaf0's stack: waiting for it would only poll.  leaf0 stores its value at once (two
    # calls: asked, told to store); leaf1, last, completes the fan-in with its own (one call).
    on, _ = clusters
    dsk = {"leaf0": (block, 0), "leaf1": (late_block, 1), "sum": (add, "leaf0", "leaf1"), "total": (total, "sum")}
    client = Client(on, progress=False)
    before = arrivals(on)
    assert client.get(dsk, "total") == float(N)
    assert arrivals(on) - before == 3
    assert client.jobs[-1].held_fanins == 1
    assert client.jobs[-1].bytes_stored < N * 8 + N * 4  # leaf0's value only


def block_after(_, i):
    return block(i)


@pytest.fixture(scope="module")
def one_executor():
    with LocalCluster(n_workers=1, delayed_io={"threshold": 1 << 20, "max-wait": 5.0}) as cluster:
        yield cluster


def test_a_fan_in_of_values_held_by_one_executor_stores_none_of_them(one_executor):
    # r's narrow fan-out runs here: a, then b from the stack.  a waits for b (on its stack);
    # b's arrival completes the fan-in with both values in memory: neither is written.
    dsk = {
        "r": (abs, 0),
        "a": (block_after, "r", 1),
        "b": (block_after, "r", 2),
        "sum": (add, "a", "b"),
        "total": (total, "sum"),
    }
    client = Client(one_executor, progress=False)
    # values stored, as in a cluster of several processes (one process alone stores none)
    assert client.get(dsk, "total", store_values=True) == 3.0 * N
    job = client.jobs[-1]
    assert job.held_fanins == 1 and len(job.executors) == 1
    assert job.bytes_stored == 0
    assert job_keys(one_executor) == []


def test_one_worker_process_holds_nothing_as_it_writes_nothing(one_executor):
    # without ``store_values`` the values stay in the process's object table: holding one
    # would save no write, so none is held (no asks), and nothing is stored
    dsk = {"a": (block, 1), "b": (block, 2), "sum": (add, "a", "b"), "total": (total, "sum")}
    client = Client(one_executor, progress=False)
    assert client.get(dsk, "total") == 3.0 * N
    job = client.jobs[-1]
    assert job.held_fanins == 0 and job.bytes_stored == 0
    assert job_keys(one_executor) == []


def test_a_holders_sleep_until_its_next_ask_is_recorded_as_a_wait():
    # the loop sleeps here when it has nothing but held outputs: that, and only that,
    # is the invocation's wait (``InvocationRun.waits``); an ask already due sleeps not
    due = SimpleNamespace(ask_at=time.monotonic() + 0.02)
    run = SimpleNamespace(ex=SimpleNamespace(faults=None), crash_after=None, careful=False, holds=[due], waits=[])
    before = time.time()
    _Run.pause_holding(run)
    [start, end] = run.waits
    assert before <= start < end <= time.time() and time.monotonic() >= due.ask_at
    due.ask_at = time.monotonic() - 1
    _Run.pause_holding(run)
    assert len(run.waits) == 2


def test_small_outputs_are_not_held(clusters):
    on, _ = clusters
    dsk = {"a": (abs, -1), "b": (abs, -2), "c": (add, "a", "b")}
    client = Client(on, progress=False)
    assert client.get(dsk, "c") == 3
    assert client.jobs[-1].held_fanins == 0


def test_a_crashed_holder_is_run_again_and_the_job_finishes():
    settings = {"threshold": 1 << 20, "max-wait": 5.0}
    with LocalCluster(n_workers=2, delayed_io=settings, faults={"crash_holding": 1.0}, lease_ms=300) as cluster:
        client = Client(cluster, progress=False)
        dsk, key, expected = reduction(4)
        workers = {p.pid for p in cluster.backend.workers if p is not None}
        assert client.get(dsk, key, timeout=60) == expected
        assert client.jobs[-1].held_fanins == 1  # by a re-run holder
        assert {p.pid for p in cluster.backend.workers if p is not None} != workers  # a holder died
        assert job_keys(cluster) == []


def test_delayed_io_settings_are_checked():
    with pytest.raises(ValueError, match="unknown delayed_io setting.*'wait'"):
        LocalCluster(n_workers=1, delayed_io={"wait": 1})
    with pytest.raises(ValueError, match="delayed-io max-wait must be a number >= 0, got -1"):
        LocalCluster(n_workers=1, delayed_io={"max-wait": -1})


def test_delayed_io_is_configured_in_dask_config():
    with dask.config.set({"wukong.delayed-io.enabled": False}):
        from wukong.cluster import _delayed_io

        assert _delayed_io(None)["enabled"] is False
        assert _delayed_io(True)["enabled"] is True


def test_the_threshold_is_by_where_values_go_unless_configured():
    from wukong.cluster import DELAYED_IO_BYTES

    with LocalCluster(n_workers=1) as shared, LocalCluster(n_workers=1, shared_memory=False) as redis_only:
        assert shared.executor_config()["delayed_io_bytes"] == DELAYED_IO_BYTES["shared memory"] == 8 << 20
        assert redis_only.executor_config()["delayed_io_bytes"] == DELAYED_IO_BYTES["redis"] == 1 << 20
    with LocalCluster(n_workers=1, delayed_io={"threshold": 4096}) as given:
        assert given.executor_config()["delayed_io_bytes"] == 4096
    with dask.config.set({"wukong.delayed-io.threshold": 1 << 20}), LocalCluster(n_workers=1) as configured:
        assert configured.executor_config()["delayed_io_bytes"] == 1 << 20
    with LocalCluster(n_workers=1, delayed_io=False) as off:
        assert off.executor_config()["delayed_io_bytes"] is None

"""Executors as threads: ``LocalCluster(threads_per_worker=)`` and ``processes=False``.

The examples, random DAGs and fault tests run again on clusters whose worker
processes run two executors each as threads; values stored by one executor
reach another of the same process by reference (the object table), and a
job leaves nothing behind: no key, no shared-memory file, no table entry.
"""

import os
import threading
import time
from functools import partial

import dask
import dask.array as da
import numpy as np
import pytest
import redis
from conftest import job_files, job_keys

# the same tests, on the threaded clusters of this module's ``client`` fixture
from test_examples import (  # noqa: F401
    test_cholesky,
    test_fan_in_three_nodes,
    test_gemm,
    test_large_arrays_travel_between_executors,
    test_svd_compressed,
    test_tall_skinny_svd,
    test_tree_reduction_of_1024,
)
from test_faults import (  # noqa: F401
    FAULTS,
    LEASE_MS,
    random_dags_equal_sync,
    test_cancel_stops_the_job_and_deletes_its_keys,
    test_job_timeout,
    test_retries_rerun_a_failing_task,
    test_task_timeout_names_the_task,
)
from test_random_dags import random_dags_test

from wukong import Client, LocalCluster, TaskError
from wukong.backends.worker import IDLE_S
from wukong.protocol import Keys
from wukong.store.objects import ObjectTable, drop_ended
from wukong.timeout import TaskTimeout, task_timeout

THREADED = {
    "1x2": {"n_workers": 1, "threads_per_worker": 2},
    "no-processes": {"processes": False, "n_workers": 2},
}


@pytest.fixture(scope="module", params=sorted(THREADED))
def threaded(request):
    with LocalCluster(**THREADED[request.param], lease_ms=LEASE_MS) as cluster:
        yield cluster


@pytest.fixture
def client(threaded):
    yield Client(threaded, progress=False)
    assert job_keys(threaded) == [], "a job left keys behind"
    assert job_files(threaded) == [], "a job left shared-memory files behind"


# 12 random DAGs per shape here, 40 on processes (test_random_dags); 40 here with `make test-slow`.
test_random_dag_equals_sync = random_dags_test(12)
test_many_random_dags_equal_sync = pytest.mark.slow(random_dags_test(40))


# -- the cluster's shape ---------------------------------------------------------------------


def test_processes_false_is_one_worker_process_with_every_executor_as_a_thread():
    with LocalCluster(processes=False, n_workers=2, threads_per_worker=2) as cluster:
        assert (cluster.n_workers, cluster.threads_per_worker) == (1, 4)
        assert len([p for p in cluster.backend.children if p is not None]) == 1
        assert "1 workers × 4 threads" in repr(cluster)


def test_each_executor_thread_is_named_in_the_job_record(client):
    dsk = {f"p{i}": (time.sleep, 0.05) for i in range(16)}
    client.get(dsk, list(dsk))
    executors = client.jobs[-1].executors
    assert len({e.rpartition("/")[0] for e in executors}) == 1  # one process ...
    assert sorted(e.rpartition("/")[2] for e in executors) == ["0", "1"]  # ... two executor threads


def test_threads_per_worker_and_processes_come_from_dask_config():
    with dask.config.set({"wukong.threads-per-worker": 2, "wukong.processes": False}):
        with LocalCluster(n_workers=2) as cluster:
            assert (cluster.n_workers, cluster.threads_per_worker) == (1, 4)


def test_threads_per_worker_must_be_positive():
    with pytest.raises(ValueError, match="threads_per_worker must be at least 1"):
        LocalCluster(threads_per_worker=0)


# -- values by reference ---------------------------------------------------------------------


def widen(i):
    return np.full(20_000, float(i))  # 160 kB: above the inline limit, below shared memory's


def wide_fan_in(tail=None):
    """A fan-in of 8 wide parents: each parent's output is shared, and the fan-in reads the others'."""
    dsk = {f"p{i}": (widen, i) for i in range(8)}
    dsk["sum"] = (tail or total, *dsk)
    return dsk


def total(*xs):
    return float(sum(x.sum() for x in xs))


def test_values_between_executors_of_one_process_are_neither_stored_nor_fetched(client):
    assert client.get(wide_fan_in(), "sum") == sum(i * 20_000.0 for i in range(8))
    job = client.jobs[-1]
    # one worker process: every executor is of it, so values stay in its object table, and
    # the fan-in's arrivals are counted there (``ObjectTable.arrive``): no round trip for the
    # eight of them, one at most for the completer to read the fan-in's schedule
    assert job.bytes_stored == 0 and job.bytes_fetched == 0
    assert job.invocations == 8 and job.fanin_round_trips <= 1


def test_several_processes_store_what_their_threads_share():
    with LocalCluster(n_workers=2, threads_per_worker=2) as cluster:
        client = Client(cluster, progress=False)
        assert client.get(wide_fan_in(), "sum") == sum(i * 20_000.0 for i in range(8))
        job = client.jobs[-1]
        assert job.bytes_stored > 8 * 160_000  # written for the other process, ...
        fetched = job.bytes_fetched
        for _ in range(4):
            client.get(wide_fan_in(), "sum")
            fetched += client.jobs[-1].bytes_fetched
        # ... read from the object table by the threads of the same one: never all of it
        assert fetched < 5 * 7 * 160_000


def die_once(path, *xs):
    """The fan-in: its first run kills its worker process (the values it read went with it)."""
    if not os.path.exists(path):
        open(path, "w").close()
        os._exit(1)
    return total(*xs)


def test_values_lost_with_the_one_process_run_the_job_again_with_its_values_stored(threaded, tmp_path):
    client = Client(threaded, progress=False)
    dsk = wide_fan_in(partial(die_once, str(tmp_path / "died")))
    assert client.get(dsk, "sum", timeout=60) == sum(i * 20_000.0 for i in range(8))
    lost, again = client.jobs[-2], client.jobs[-1]
    assert lost.status == "error" and lost.error.startswith("ValuesLost: ")
    assert "held only by a worker process that is gone" in lost.error
    assert again.status == "finished" and again.bytes_stored >= 7 * 160_000  # the second run stores
    assert job_keys(threaded) == [] and job_files(threaded) == []
    # and the next job keeps its values in memory again
    assert client.get(wide_fan_in(), "sum") == sum(i * 20_000.0 for i in range(8))
    assert client.jobs[-1].bytes_stored == 0


def leaf_dies_once(path, i):
    """A leaf that kills its worker process the first time, once the other leaves have arrived."""
    if not os.path.exists(path):
        time.sleep(0.5)
        open(path, "w").close()
        os._exit(1)
    return widen(i)


def test_a_leaf_run_again_in_a_new_process_does_not_leave_its_fan_in_short(threaded, tmp_path):
    """The other leaves arrived at the fan-in in the process that died (its counts went with it):
    the leaf sent again must not arrive alone in the new one, and the job runs again, stored."""
    client = Client(threaded, progress=False)
    dsk = wide_fan_in()
    dsk["p7"] = (leaf_dies_once, str(tmp_path / "died"), 7)
    assert client.get(dsk, "sum", timeout=60) == sum(i * 20_000.0 for i in range(8))
    lost, again = client.jobs[-2], client.jobs[-1]
    assert lost.status == "error" and "held only by a worker process that is gone" in lost.error
    assert again.status == "finished" and again.fanin_round_trips > 0  # stored, counted in the MDS
    assert job_keys(threaded) == [] and job_files(threaded) == []


def test_processes_fetch_what_threads_share():
    """The control: with two single-threaded processes some inputs cross through Redis."""
    dsk = wide_fan_in()
    with LocalCluster(n_workers=2, threads_per_worker=1) as cluster:
        client = Client(cluster, progress=False)
        fetched = 0
        for _ in range(5):  # which process runs which leaf varies: some run lands leaves on both
            client.get(dsk, "sum")
            fetched += client.jobs[-1].bytes_fetched
        assert fetched > 0


def table_jobs(_):
    """Run on a worker (``python -m wukong.backends.worker``): the jobs its object table holds."""
    import sys

    return sorted(sys.modules["__main__"].table.jobs())


def test_no_value_of_an_ended_job_stays_in_the_table(client):
    dsk = {f"p{i}": (widen, i) for i in range(8)}
    dsk["sum"] = (lambda *xs: float(sum(x.sum() for x in xs)), *dsk)
    dsk["during"] = (table_jobs, "sum")
    during = client.get(dsk, "during")
    ended = client.jobs[-1].job
    assert ended in during  # the parents' values were in the table while the job ran
    time.sleep(3 * IDLE_S)  # idle executors drop what ended jobs left
    after = client.get({f"t{i}": (table_jobs, i) for i in range(8)}, [f"t{i}" for i in range(8)])
    assert [jobs for jobs in after if ended in jobs] == []


# -- the object table ------------------------------------------------------------------------


def test_the_table_counts_fan_in_arrivals_as_the_mds_does():
    table = ObjectTable(max_bytes=None)
    assert not table.arrive("j", 9, 1, 3, "inv-a/1")
    assert not table.arrive("j", 9, 1, 3, "inv-a/1")  # a repeat never counts twice
    assert not table.arrive("j", 9, 2, 3, "inv-b/2")
    assert table.arrive("j", 9, 3, 3, "inv-c/3")  # the last parent completes it: its owner
    assert table.arrive("j", 9, 3, 3, "inv-c/3")  # the owner run again completes it again
    assert not table.arrive("j", 9, 3, 3, "inv-d/3")  # anyone else's repeat does not
    assert not table.arrive("j", 9, 2, 3, "inv-b/2")
    assert table.jobs() == {"j"} and table.has_job("j") and len(table) == 0
    table.drop_job("j")  # with the job's values
    assert table.jobs() == set() and not table.arrive("j", 9, 1, 2, "inv-a/1")


def test_the_table_evicts_the_least_recently_used_within_its_bound():
    table = ObjectTable(max_bytes=100)
    table.put("j", 1, "a", 40)
    table.put("j", 2, "b", 40)
    assert table.get("j", [1]) == {1: "a"}  # 1 is now the most recently used
    table.put("j", 3, "c", 40)
    assert table.get("j", [1, 2, 3]) == {1: "a", 3: "c"} and table.nbytes == 80
    table.put("j", 4, "too big", 101)
    assert table.get("j", [4]) == {} and len(table) == 2


def test_a_jobs_entries_are_dropped_with_the_job(redis_server):
    table = ObjectTable()
    mds = redis.Redis(*redis_server.endpoint, password=redis_server.password)
    mds.xadd(Keys("live").events, {"k": "v"})
    table.put("live", 0, "x", 1)
    table.put("ended", 0, "y", 1)
    table.put("ended", 1, "z", 1)
    drop_ended(table, mds)
    assert table.jobs() == {"live"} and len(table) == 1 and table.nbytes == 1


# -- per-thread task timeouts ----------------------------------------------------------------


def spin(seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def test_a_task_timeout_interrupts_a_task_on_another_thread():
    errors = []

    def run():
        try:
            with task_timeout(0.2, "spinning"):
                spin(5)
        except TaskTimeout as exc:
            errors.append(str(exc))

    t = threading.Thread(target=run)
    started = time.monotonic()
    t.start()
    t.join(10)
    assert errors == ["task 'spinning' ran longer than 0.2s"] and time.monotonic() - started < 3


def test_a_task_timeout_never_fires_after_its_task():
    finished = []

    def run():
        with task_timeout(0.1, "quick"):
            pass
        time.sleep(0.3)  # past the limit: no TaskTimeout may reach here
        finished.append(True)

    t = threading.Thread(target=run)
    t.start()
    t.join(5)
    assert finished == [True]


def test_a_spinning_task_on_a_thread_times_out_and_its_process_lives_on(client, threaded):
    pids = [p.pid for p in threaded.backend.children if p is not None]
    for _ in range(2):  # one of the two executors is the main thread (SIGALRM), the other not
        with pytest.raises(TaskError, match="task 'spin' exceeded its timeout of 0.3s"):
            client.get({"spin": (spin, 30)}, "spin", task_timeout=0.3)
    assert client.get({"a": (sum, [1, 2])}, "a") == 3
    assert [p.pid for p in threaded.backend.children if p is not None] == pids


# -- faults ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_random_dags_under_faults_equal_sync_on_threads(fault):
    with LocalCluster(n_workers=1, threads_per_worker=2, faults=FAULTS[fault], lease_ms=LEASE_MS) as cluster:
        random_dags_equal_sync(cluster)


def test_large_arrays_pass_by_reference_and_leave_no_file(client):
    x = da.random.RandomState(5).random_sample((2000, 2000), chunks=(1000, 1000))  # 8 MB chunks: shared memory
    y = (x @ x.T).sum(axis=0)
    np.testing.assert_allclose(y.compute(scheduler=client.get), y.compute(scheduler="sync"), rtol=1e-10)

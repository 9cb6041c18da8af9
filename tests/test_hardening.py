"""Ordinary task code and ordinary faults: nothing hangs, nothing is silently wrong (issue 12).

Each test reproduces one way a new user broke wukong: a task that prints,
warns, raises its own exception class, kills its process or never returns; a
worker that cannot start, is frozen, or outlives its client; an empty graph.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from contextlib import contextmanager

import dask
import psutil
import pytest
from dask.local import get_sync

from tests.conftest import job_files, job_keys
from wukong import Client, LocalCluster, WukongError
from wukong.client import DRAIN_S
from wukong.errors import JobCancelled, JobFailed, TaskError
from wukong.futures import FutureCancelledError
from wukong.timeout import GRACE_S

# -- point 1: a task's output ---------------------------------------------------------------


def shout(x):
    print(f"task says {x}")
    return x + 1


def test_a_task_that_prints_works_and_its_output_reaches_the_client(client, capsys):
    assert client.get({"a": (shout, 1)}, "a") == 2
    deadline = time.monotonic() + 5
    out = ""
    while "task says 1" not in out and time.monotonic() < deadline:  # copied by a thread
        out += capsys.readouterr().out
        time.sleep(0.05)
    assert "[wukong worker" in out and "] task says 1" in out


def print_lots(n):
    sys.stdout.write("y" * n)
    print()
    print("z\n" * 1000, end="")
    return n


@pytest.mark.slow
def test_a_task_that_prints_100_mb_works(client, capsys):
    assert client.get({"a": (print_lots, 100_000_000)}, "a") == 100_000_000


# -- point 5: workers that cannot start ----------------------------------------------------

SITECUSTOMIZE = textwrap.dedent(
    """
    import os, sys, time

    class Broken:
        def find_spec(self, name, path=None, target=None):
            if name == "dask":
                raise ImportError("site-packages broken on purpose")

    if os.path.exists({flag!r}):
        if open({flag!r}).read() == "raise":
            sys.meta_path.insert(0, Broken())  # the worker's own `import dask` fails
        else:
            time.sleep(3600)
    """
)


@pytest.fixture
def broken_site(tmp_path, monkeypatch):
    """A ``sitecustomize`` on the workers' path that breaks them once ``flag`` says how."""
    flag = tmp_path / "flag"
    (tmp_path / "sitecustomize.py").write_text(SITECUSTOMIZE.format(flag=str(flag)))
    monkeypatch.syspath_prepend(str(tmp_path))  # local workers get our sys.path
    return flag


def test_workers_that_cannot_import_fail_the_cluster_quoting_their_stderr(broken_site):
    broken_site.write_text("raise")
    t0 = time.monotonic()
    with pytest.raises(WukongError, match="site-packages broken on purpose"):
        LocalCluster(n_workers=2)
    assert time.monotonic() - t0 < 30


def test_workers_that_hang_before_ready_fail_the_cluster_after_the_start_timeout(broken_site):
    broken_site.write_text("hang")
    t0 = time.monotonic()
    with pytest.raises(WukongError, match="not ready after 2"):
        LocalCluster(n_workers=2, worker_start_timeout=2)
    assert time.monotonic() - t0 < 20


def test_workers_start_in_parallel():
    t0 = time.monotonic()
    with LocalCluster(n_workers=1):
        one = time.monotonic() - t0
    t0 = time.monotonic()
    with LocalCluster(n_workers=4) as cluster:
        four = time.monotonic() - t0
        assert all(slot.state == "ready" for slot in cluster.backend.slots)
    print(f"start-up: 1 worker {one:.2f}s, 4 workers {four:.2f}s")


def test_a_job_with_no_live_worker_fails_quoting_their_stderr(broken_site):
    with LocalCluster(n_workers=1) as cluster, Client(cluster, progress=False) as client:
        broken_site.write_text("raise")  # restarts fail from now on
        for proc in cluster.backend.workers:
            proc.kill()
        t0 = time.monotonic()
        with pytest.raises(JobFailed, match="site-packages broken on purpose"):
            client.get({"a": (shout, 1)}, "a")
        assert time.monotonic() - t0 < 15
        assert job_keys(cluster) == []


# -- point 7: the client is killed ------------------------------------------------------------

KILLED_CLIENT = textwrap.dedent(
    """
    import sys, threading, time
    import psutil
    from wukong import Client, LocalCluster
    cluster = LocalCluster(n_workers=2, redis_endpoints=[sys.argv[1]], redis_password=sys.argv[2])
    client = Client(cluster, progress=False)
    threading.Thread(target=client.get, args=({"a": (time.sleep, 120)}, "a"), daemon=True).start()
    time.sleep(1.0)  # the task is running
    print(" ".join(str(p.pid) for p in psutil.Process().children(recursive=True)), flush=True)
    time.sleep(120)
    """
)


def _alive(pids):
    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.NoSuchProcess:
            pass
    return out


def test_workers_die_promptly_with_their_killed_client_while_a_task_runs(redis_server):
    host, port = redis_server.endpoint
    argv = [sys.executable, "-c", KILLED_CLIENT, f"{host}:{port}", redis_server.password]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, cwd=os.getcwd())
    pids = [int(p) for p in proc.stdout.readline().split()]
    assert len(pids) == 2  # the two workers (Redis is ours)
    proc.kill()
    proc.wait()
    t0 = time.monotonic()
    while _alive(pids) and time.monotonic() - t0 < 10:
        time.sleep(0.05)
    assert _alive(pids) == [], f"workers still alive {time.monotonic() - t0:.1f}s after their client was killed"


# -- point 8: empty graphs -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "dsk, keys",
    [({}, []), ({}, [[]]), ({"a": 1}, []), ({"a": (shout, 1)}, [[], []])],
)
def test_empty_graphs_return_what_dask_returns(client, dsk, keys):
    assert client.get(dsk, keys) == get_sync(dsk, keys)


def test_compute_of_nothing_returns_what_dask_returns(client):
    assert dask.compute(scheduler=client.get) == dask.compute(scheduler="sync")


# -- point 2: exceptions ----------------------------------------------------------------------

MAIN_CLASS = textwrap.dedent(
    """
    from wukong import Client, LocalCluster

    class MyError(Exception):
        pass

    def fail(x):
        raise MyError(f"bad {x}")

    with LocalCluster(n_workers=1) as cluster:
        try:
            Client(cluster, progress=False).get({"a": (fail, 1)}, "a")
        except MyError as e:
            print("caught", type(e).__name__, e.args, e.key, flush=True)
    """
)


def test_an_exception_class_of_main_is_raised_as_that_very_class():
    out = subprocess.run([sys.executable, "-c", MAIN_CLASS], capture_output=True, text=True, timeout=120)
    assert "caught" in out.stdout, out.stderr[-2000:]
    assert "MyError ('bad 1',) a" in out.stdout


class CarriesALock(ValueError):
    pass


def raise_with_a_lock(x):
    raise CarriesALock("cannot pickle my args", threading.Lock())


def test_an_exception_whose_args_cannot_be_pickled_keeps_its_type(client):
    with pytest.raises(CarriesALock, match="cannot pickle my args") as info:
        client.get({"a": (raise_with_a_lock, 1)}, "a")
    assert isinstance(info.value, TaskError) and info.value.key == "a"
    assert "raise_with_a_lock" in info.value.remote_traceback


class TwoArgs(Exception):
    def __init__(self, a, b):  # pickles fine, cannot be unpickled: TwoArgs("x-y") lacks b
        super().__init__(f"{a}-{b}")


def raise_two_args(x):
    raise TwoArgs("x", "y")


def test_an_exception_that_cannot_be_unpickled_becomes_a_task_error_naming_the_task(client):
    with pytest.raises(TaskError, match="could not be unpickled") as info:
        client.get({"a": (raise_two_args, 1)}, "a")
    assert info.value.key == "a" and "x-y" in str(info.value)
    assert "raise_two_args" in info.value.remote_traceback


# -- point 3: a task that kills its process -------------------------------------------------


def count_and_exit(path, how, x):
    with open(path, "a") as f:
        f.write("run\n")
    if how == "os._exit":
        os._exit(3)
    if how == "segfault":
        import ctypes

        ctypes.string_at(0)
    if how == "SystemExit":
        sys.exit(3)
    raise KeyboardInterrupt


@pytest.fixture(scope="module")
def fragile_cluster():
    """Lost executors are found fast; an invocation is re-run once at most."""
    with LocalCluster(n_workers=2, lease_ms=500, max_attempts=1) as cluster:
        yield cluster


@pytest.mark.parametrize("how", ["os._exit", "segfault", "SystemExit", "KeyboardInterrupt"])
def test_a_task_that_kills_its_process_fails_the_job_naming_it(fragile_cluster, tmp_path, how):
    runs = tmp_path / "runs"
    dsk = {"a": 1, "b": (count_and_exit, str(runs), how, "a"), "c": (shout, "b")}
    t0 = time.monotonic()
    with pytest.raises(TaskError) as info, Client(fragile_cluster, progress=False) as client:
        client.get(dsk, "c")
    print(f"{how}: error after {time.monotonic() - t0:.1f}s: {str(info.value).splitlines()[0]}")
    assert info.value.key == "b"
    assert runs.read_text().count("run") <= 2  # re-run max_attempts times at most
    assert job_keys(fragile_cluster) == []


def test_a_task_that_kills_its_lambda_executor_fails_the_job_naming_it(tmp_path):
    from tests.conftest import lambda_local

    runs = tmp_path / "runs"
    dsk = {"a": 1, "b": (count_and_exit, str(runs), "os._exit", "a"), "c": (shout, "b")}
    handlers = {"wukong-executor": "wukong.backends.aws_lambda:handler"}
    with lambda_local(handlers, workers=1) as lam:
        options = {"endpoint_url": lam.url, "region": "us-east-1", "lease_ms": 500, "max_attempts": 1}
        options["start_grace"] = 0.5  # it dies soon after its lease: maybe never seen running
        with (
            LocalCluster(backend="lambda", **options, **lam.cluster_options) as cluster,
            Client(cluster, progress=False) as client,
        ):
            t0 = time.monotonic()
            with pytest.raises(TaskError) as info:
                client.get(dsk, "c")
            print(f"lambda: error after {time.monotonic() - t0:.1f}s: {str(info.value).splitlines()[0]}")
            assert info.value.key == "b"
            assert runs.read_text().count("run") <= 2  # re-run max_attempts times at most
            assert job_keys(cluster) == []


class Recorded:
    """A ProgressBar that remembers what it was told."""

    last: list = []

    def __init__(self, total):
        self.total = total
        Recorded.last = []

    def update(self, done):
        Recorded.last.append(done)

    def finish(self, done):
        Recorded.last.append(done)


def slow_then_exit_once(path, x):
    time.sleep(0.3)
    if x == 3 and not os.path.exists(path):
        open(path, "w").close()
        os._exit(3)
    return x + 1


def test_the_progress_bar_counts_a_rerun_task_once(fragile_cluster, tmp_path, monkeypatch):
    monkeypatch.setattr("wukong.client.ProgressBar", Recorded)
    flag = str(tmp_path / "died")
    dsk = {"t0": 0, **{f"t{i}": (slow_then_exit_once, flag, f"t{i - 1}") for i in range(1, 8)}}
    with Client(fragile_cluster, progress=True) as client:
        assert client.get(dsk, "t7") == 7
    assert os.path.exists(flag)  # the chain was cut and run again
    assert max(Recorded.last) == len(dsk)


# -- point 1: a task's warnings ------------------------------------------------------------


class TaskWarning(UserWarning):
    pass


def warn_and_return(x):
    import warnings

    warnings.warn(f"careful with {x}", TaskWarning, stacklevel=1)
    return x


def test_a_task_warning_is_issued_again_on_the_client(client):
    with pytest.warns(TaskWarning, match="careful with 41") as record:
        assert client.get({"a": (warn_and_return, 41)}, "a") == 41
    assert record[0].filename == __file__


def warn_same(x):
    import warnings

    warnings.warn("the same warning", TaskWarning, stacklevel=1)
    return x


def test_every_warns_block_sees_its_jobs_warning_as_on_sync(client):
    """An executor process that issued a warning before still sends it: the client's filters decide."""
    graph = {f"w{i}": (warn_same, i) for i in range(4)}
    for get in (get_sync, client.get):
        for _ in range(2):  # the second job: on workers that issued this warning already
            with pytest.warns(TaskWarning, match="the same warning"):
                assert list(get(graph, list(graph))) == [0, 1, 2, 3]


def test_a_repeated_warning_is_shown_once_per_location_as_on_sync(client):
    def shown(run) -> int:
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("default")  # Python's default: once per location
            run({f"w{i}": (warn_same, i) for i in range(6)})
            run({"again": (warn_same, 7)})  # a second job
        return sum(issubclass(w.category, TaskWarning) for w in record)

    assert shown(lambda g: client.get(g, list(g))) == shown(lambda g: get_sync(g, list(g))) == 1


# -- point 4: stopping work that is running --------------------------------------------------


def sleep_then(seconds, x=None):
    time.sleep(seconds)
    return seconds


def ignore_timeouts(seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            time.sleep(seconds)
        except BaseException:  # swallows the TaskTimeout: only ending the process stops it
            pass
    return seconds


@pytest.fixture(scope="module")
def one_worker():
    with LocalCluster(n_workers=1) as cluster:
        yield cluster


def _next_job_runs_at_once(cluster):
    t0 = time.monotonic()
    with Client(cluster, progress=False) as client:
        assert client.get({"a": (shout, 1)}, "a") == 2
    assert time.monotonic() - t0 < 20  # not behind the 60 s task
    assert job_keys(cluster) == []


def test_cancel_stops_a_running_task(one_worker):
    client = Client(one_worker, progress=False)
    threading.Timer(1.0, client.cancel).start()
    t0 = time.monotonic()
    with pytest.raises(JobCancelled):
        client.get({"a": (sleep_then, 60)}, "a")
    print(f"cancel: ended {time.monotonic() - t0 - 1.0:.1f}s after the cancel")
    assert time.monotonic() - t0 < 15
    _next_job_runs_at_once(one_worker)


def test_a_job_timeout_stops_a_running_task(one_worker):
    t0 = time.monotonic()
    with pytest.raises(JobFailed, match="timed out"), Client(one_worker, progress=False) as client:
        client.get({"a": (sleep_then, 60)}, "a", timeout=1)
    print(f"timeout=1: error after {time.monotonic() - t0:.1f}s")
    assert time.monotonic() - t0 < 15
    _next_job_runs_at_once(one_worker)


def spin(seconds):
    deadline = time.monotonic() + seconds
    n = 0
    while time.monotonic() < deadline:  # pure Python: gives the GIL away, never blocks
        n += 1
    return n


@pytest.mark.parametrize(("task", "processes"), [(sleep_then, True), (spin, True), (spin, False)])
def test_a_cancelled_task_is_interrupted_and_its_worker_kept(task, processes):
    """A task sleeping or running Python code is stopped by an exception raised in it
    when its job's timeout cancels it: the worker process is not ended and serves the
    next job.  (On an executor's main thread a signal breaks the sleep; an executor
    thread's ``time.sleep`` cannot be broken from outside: it is ended with its
    process after the grace, as before.)"""
    with LocalCluster(n_workers=1, processes=processes) as cluster, Client(cluster, progress=False) as client:
        pids = _worker_pids(cluster)
        with pytest.raises(JobFailed, match="timed out"):
            client.get({"a": (task, 60)}, "a", timeout=1)
        assert client.get({"b": (shout, 1)}, "b") == 2
        time.sleep(GRACE_S + 1.5)  # past the time the guard would have ended it
        assert _worker_pids(cluster) == pids
        assert job_keys(cluster) == []


def test_a_task_that_ignores_its_task_timeout_is_ended(one_worker):
    t0 = time.monotonic()
    with (
        pytest.raises(TaskError, match="exceeded its timeout of 1s") as info,
        Client(one_worker, progress=False) as client,
    ):
        client.get({"a": (ignore_timeouts, 60)}, "a", task_timeout=1)
    print(f"task_timeout=1 ignored: error after {time.monotonic() - t0:.1f}s")
    assert info.value.key == "a"
    assert time.monotonic() - t0 < 15
    _next_job_runs_at_once(one_worker)


def deadlock_holding_the_gil(path):
    """Start a child, note both pids, then lock a held mutex in C through ``ctypes.PyDLL``,
    which keeps the GIL: no signal handler, heartbeat or guard of this process runs again."""
    child = subprocess.Popen(["sleep", "600"])
    with open(path, "w") as f:
        f.write(f"{os.getpid()} {child.pid}")
    libc = ctypes.PyDLL(None)
    mutex = ctypes.create_string_buffer(64)  # at least a pthread_mutex_t
    libc.pthread_mutex_init(mutex, None)
    libc.pthread_mutex_lock(mutex)
    libc.pthread_mutex_lock(mutex)


@pytest.fixture(scope="module")
def gil_worker():
    with LocalCluster(n_workers=1) as cluster:
        yield cluster


def _worker_pids(cluster):
    return [p.pid for p in cluster.backend.workers if p is not None and p.poll() is None]


def _stuck_task_is_gone(cluster, path):
    """The stuck worker and the task's child are dead, a fresh worker took its place,
    nothing of the job is left (keys, shared memory) and the next job runs at once."""
    worker, child = (int(p) for p in path.read_text().split())
    deadline = time.monotonic() + 20
    while (_alive([worker, child]) or job_keys(cluster) or not _worker_pids(cluster)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _alive([worker, child]) == [], "the stuck worker or its task's child still runs"
    assert job_keys(cluster) == []
    assert job_files(cluster) == []
    assert len(_worker_pids(cluster)) == 1 and worker not in _worker_pids(cluster)
    _next_job_runs_at_once(cluster)


@pytest.mark.timeout(120)
def test_a_job_timeout_stops_a_task_holding_the_gil(gil_worker, tmp_path):
    path = tmp_path / "pids"
    t0 = time.monotonic()
    with pytest.raises(JobFailed, match="timed out"), Client(gil_worker, progress=False) as client:
        client.get({"a": (deadlock_holding_the_gil, str(path))}, "a", timeout=1)
    print(f"timeout=1, GIL held: error after {time.monotonic() - t0:.1f}s")
    assert time.monotonic() - t0 < 30
    _stuck_task_is_gone(gil_worker, path)


@pytest.mark.timeout(120)
def test_a_task_holding_the_gil_past_its_task_timeout_is_ended_and_named(gil_worker, tmp_path):
    path = tmp_path / "pids"
    t0 = time.monotonic()
    with (
        pytest.raises(TaskError, match="exceeded its timeout of 1s") as info,
        Client(gil_worker, progress=False) as client,
    ):
        client.get({"a": (deadlock_holding_the_gil, str(path))}, "a", task_timeout=1)
    print(f"task_timeout=1, GIL held: error after {time.monotonic() - t0:.1f}s")
    assert info.value.key == "a"
    assert time.monotonic() - t0 < 30
    _stuck_task_is_gone(gil_worker, path)


def maybe_deadlock(path):
    if path:
        deadlock_holding_the_gil(path)
    return 1


@pytest.mark.timeout(120)
def test_a_task_holding_the_gil_in_a_solo_job_is_ended_and_named(gil_worker, tmp_path):
    """The watchdog reads the task's key from a solo job's plan blob (``protocol.pack_plan``)."""
    path = tmp_path / "pids"

    def graph(path):
        return {"m-1": (maybe_deadlock, None), "m-2": (maybe_deadlock, path), "s-1": (sum, ["m-1", "m-2"])}

    with dask.config.set({"wukong.solo-work": 1e9}), Client(gil_worker, progress=False) as client:
        assert client.get(graph(None), "s-1") == 2  # learns that ``m`` and ``s`` are short
        with pytest.raises(TaskError, match="exceeded its timeout of 1s") as info:
            client.get(graph(str(path)), "s-1", task_timeout=1)
        assert client.jobs[-1].solo
    assert info.value.key == "m-2"
    _stuck_task_is_gone(gil_worker, path)


@pytest.mark.timeout(120)
def test_cancelling_a_future_stops_its_task_holding_the_gil(gil_worker, tmp_path):
    path = tmp_path / "pids"
    with Client(gil_worker, progress=False) as client:
        future = client.submit(deadlock_holding_the_gil, str(path))
        deadline = time.monotonic() + 30
        while not (path.exists() and len(path.read_text().split()) == 2) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert path.exists(), "the task never started"
        t0 = time.monotonic()
        client.cancel(future)
        assert future.cancelled()
        with pytest.raises(FutureCancelledError):
            future.result(timeout=5)
        _stuck_task_is_gone(gil_worker, path)
        print(f"cancel, GIL held: next job done {time.monotonic() - t0:.1f}s after the cancel")
        assert time.monotonic() - t0 < 40


def hold_the_gil(seconds):
    """Sleep in C through ``ctypes.PyDLL``, holding the GIL: the heartbeat stops, the lease lapses."""
    ctypes.PyDLL(None).usleep(int(seconds * 1_000_000))
    return seconds


@pytest.mark.timeout(120)
def test_a_task_holding_the_gil_with_no_limit_is_left_to_finish(gil_worker):
    """A lapsed lease alone ends nothing: nobody asked this task to stop."""
    with Client(gil_worker, progress=False) as client:
        pids = _worker_pids(gil_worker)
        assert client.get({"a": (hold_the_gil, 7.0)}, "a") == 7.0  # longer than the watch's grace (5 s)
        assert _worker_pids(gil_worker) == pids
    assert job_keys(gil_worker) == []


# -- point 6: a frozen worker ---------------------------------------------------------------


def note_pid_and_sleep(path, seconds):
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")
    time.sleep(seconds)
    return seconds


@contextmanager
def _first_worker_to_note_frozen(tmp_path, n_workers):
    """A cluster of ``n_workers`` (short leases) and a client; the first worker to note its
    pid in ``pids`` (``note_pid_and_sleep``) is SIGSTOPped, never resumed, and killed
    at the end.  Yields (cluster, client, pids, stopped: the frozen pid, once frozen)."""
    pids = tmp_path / "pids"
    stopped: list[int] = []

    def stop():
        while not pids.exists() or not pids.read_text():
            time.sleep(0.02)
        stopped.append(int(pids.read_text().split()[0]))
        os.kill(stopped[0], signal.SIGSTOP)

    with LocalCluster(n_workers=n_workers, lease_ms=500) as cluster, Client(cluster, progress=False) as client:
        threading.Thread(target=stop, daemon=True).start()
        try:
            yield cluster, client, pids, stopped
        finally:
            for pid in stopped:
                if psutil.pid_exists(pid):
                    os.kill(pid, signal.SIGKILL)


def _gone(pid):
    deadline = time.monotonic() + 10
    while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_a_stopped_worker_s_invocation_is_sent_again_and_the_job_finishes(tmp_path):
    with _first_worker_to_note_frozen(tmp_path, 2) as (cluster, client, pids, stopped):
        t0 = time.monotonic()
        assert client.get({"a": (note_pid_and_sleep, str(pids), 2)}, "a") == 2
        print(f"SIGSTOP: job finished after {time.monotonic() - t0:.1f}s")
        ran = [int(p) for p in pids.read_text().split()]
        assert len(ran) == 2 and ran[1] != stopped[0]
        assert job_keys(cluster) == []


def test_the_only_worker_stopped_mid_job_is_replaced_and_the_job_finishes(tmp_path):
    """Nobody else can take the invocation sent again: the cluster ends the frozen
    worker, a fresh one runs it, once (the invocation already sent again is not sent
    a second time by the dead worker's slot)."""
    with _first_worker_to_note_frozen(tmp_path, 1) as (cluster, client, pids, stopped):
        dsk = {"a": (note_pid_and_sleep, str(pids), 1), "b": (sum, ["a", "a"])}
        assert client.get(dsk, "b", timeout=60) == 2  # (before, it waited forever)
        ran = [int(p) for p in pids.read_text().split()]
        assert len(ran) == 2 and ran[1] != stopped[0]
        assert _gone(stopped[0]), "the frozen worker was not ended"
        assert job_keys(cluster) == []
        assert client.get({"c": (sum, [1, 1])}, "c") == 2  # the fresh worker serves the next job


def test_a_job_timing_out_while_a_worker_is_frozen_ends_soon_after_its_timeout(tmp_path):
    """The frozen worker's job was cancelled (its timeout): the cluster ends it as it
    ends a running one, and the client's wait for its executors is short."""
    with _first_worker_to_note_frozen(tmp_path, 2) as (cluster, client, pids, stopped):
        t0 = time.monotonic()
        with pytest.raises(JobFailed, match="timed out after 2"):
            client.get({"a": (note_pid_and_sleep, str(pids), 60)}, "a", timeout=2)
        took = time.monotonic() - t0
        print(f"timeout=2 with a frozen worker: raised after {took:.1f}s")
        # a bound on a hang, not a speed claim: the client no longer waits its whole drain
        assert took < 2 + DRAIN_S, f"raised {took:.1f}s after a timeout of 2s: it waited for the frozen worker"
        assert _gone(stopped[0]), "the frozen worker was not ended"
        assert job_keys(cluster) == []


def note_pid_sleep_and_mark(path, seconds):
    note_pid_and_sleep(path, seconds)
    with open(path + ".done", "a") as f:
        f.write(f"{os.getpid()}\n")
    return seconds


def test_a_late_executor_takes_back_what_it_wrote_after_its_job_ended(tmp_path):
    """A worker frozen mid-task has its invocation run again elsewhere; the job ends; the
    frozen one resumes, finishes the task, stores its output for the fan-in and learns in
    that same round trip that the job is gone: it deletes the value it just wrote."""
    pids = str(tmp_path / "pids")
    with LocalCluster(n_workers=2, lease_ms=500) as cluster, Client(cluster, progress=False) as client:
        stopped = []

        def stop_the_worker():
            while not os.path.exists(pids) or not open(pids).read():
                time.sleep(0.02)
            stopped.append(int(open(pids).read().split()[0]))
            os.kill(stopped[0], signal.SIGSTOP)

        threading.Thread(target=stop_the_worker, daemon=True).start()
        dsk = {"a": (note_pid_sleep_and_mark, pids, 1), "b": (sum, [1, 2]), "c": (max, "a", "b")}
        try:
            assert client.get(dsk, "c") == 3
            os.kill(stopped[0], signal.SIGCONT)  # it finishes "a" after the job ended
            deadline = time.monotonic() + 30
            while str(stopped[0]) not in open(pids + ".done").read().split() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert str(stopped[0]) in open(pids + ".done").read().split(), "the frozen worker never finished"
            time.sleep(1.0)  # its store-and-notify round trip, and the undo after it
            assert job_keys(cluster) == []
        finally:
            for pid in stopped:
                try:
                    os.kill(pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass


CTRL_C = textwrap.dedent(
    """
    import sys, time
    from tests.test_hardening import deadlock_holding_the_gil
    from wukong import Client, LocalCluster
    with LocalCluster(n_workers=1) as cluster:
        client = Client(cluster, progress=False)
        print("ready", flush=True)
        t0 = time.monotonic()
        try:
            client.get({"a": TASK}, "a")
        except KeyboardInterrupt:
            print(f"interrupted {time.monotonic() - t0:.1f}", flush=True)
        t0 = time.monotonic()
        print(f"next {client.get({'a': (sum, [1, 2])}, 'a')} {time.monotonic() - t0:.1f}", flush=True)
    """
)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("task", ["sleeping", "holding the GIL"])
def test_ctrl_c_stops_a_running_task_and_the_next_job_runs(task, tmp_path):
    path = tmp_path / "pids"
    call = "(time.sleep, 60)" if task == "sleeping" else f"(deadlock_holding_the_gil, {str(path)!r})"
    script = CTRL_C.replace("TASK", call)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=os.getcwd())
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(1.5)  # the task is running
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:  # a script Ctrl-C did not stop is not left running (its workers follow it)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    print(f"Ctrl-C, task {task}: process done {time.monotonic() - t0:.1f}s after SIGINT: {out.split()}")
    assert "interrupted" in out and "next 3" in out  # on its one worker: the stuck one was replaced
    assert time.monotonic() - t0 < 30
    if task == "holding the GIL":
        assert _alive([int(p) for p in path.read_text().split()]) == []

"""Dask's callbacks and diagnostics on the client, the default-scheduler switch, dask.config."""

from __future__ import annotations

import html
import io
import os
import subprocess
import sys
import time

import dask
import dask.array as da
import psutil
import pytest
from conftest import job_keys
from dask.callbacks import Callback
from dask.diagnostics import Profiler, ProgressBar, ResourceProfiler

from bench.balance import idle_while_queued
from wukong import Client, LocalCluster, protocol
from wukong.diagnostics import JobRecord, format_bytes


@pytest.fixture
def client(cluster):
    c = Client(cluster, progress=False)
    yield c
    c.close()
    assert job_keys(cluster) == [], "a job left keys behind"


class Recorder(Callback):
    def __init__(self):
        super().__init__()
        self.calls = []

    def _start(self, dsk):
        self.calls.append(("start",))

    def _start_state(self, dsk, state):
        self.calls.append(("start_state", len(state["ready"]) + len(state["waiting"])))

    def _pretask(self, key, dsk, state):
        self.calls.append(("pre", key))

    def _posttask(self, key, result, dsk, state, worker_id):
        self.calls.append(("post", key, worker_id))

    def _finish(self, dsk, state, failed):
        self.calls.append(("finish", failed))


def tasks_of(x) -> set:
    """The keys Dask's own synchronous scheduler calls ``posttask`` for."""
    with Recorder() as rec:
        x.compute(scheduler="sync", optimize_graph=False)
    return {same(c[1]) for c in rec.calls if c[0] == "post"}


def same(key):
    """Keys equal across two computes (each compute's finalize key is new)."""
    return "finalize" if isinstance(key, str) and key.startswith("finalize-") else key


def worker_ids() -> set[str]:
    import socket

    host = socket.gethostname()
    return {f"{host}:{p.pid}" for p in psutil.Process().children(recursive=True)}


def test_a_user_callback_sees_every_task_in_dasks_order(client):
    x = (da.ones((40, 40), chunks=10) + 1).sum()
    with Recorder() as rec:
        assert x.compute(scheduler=client, optimize_graph=False) == 3200
    calls = rec.calls
    assert calls[0] == ("start",) and calls[1][0] == "start_state" and calls[-1] == ("finish", False)
    pre = [c[1] for c in calls if c[0] == "pre"]
    post = [c[1] for c in calls if c[0] == "post"]
    assert pre == post and {same(k) for k in post} == tasks_of(x) and len(post) == len(set(post))
    assert calls[1][1] == len(post)  # start_state's ready + waiting: every task
    for i, c in enumerate(calls):  # each pretask right before its posttask
        if c[0] == "pre":
            assert calls[i + 1][:2] == ("post", c[1])
    assert {c[2] for c in calls if c[0] == "post"} <= worker_ids()


def test_callbacks_passed_to_get_and_finish_on_failure(client):
    def boom(x):
        raise ValueError("no")

    rec = Recorder()
    with pytest.raises(ValueError):
        client.get({"a": 1, "b": (boom, "a")}, "b", callbacks=[rec])
    assert rec.calls[-1] == ("finish", True)


def test_profiler_has_the_executors_times_and_workers(client):
    x = (da.ones((40, 40), chunks=10) * 2).sum()
    before = time.perf_counter()
    with Profiler() as prof:
        x.compute(scheduler=client.get, optimize_graph=False)
    after = time.perf_counter()
    assert {same(r.key) for r in prof.results} == tasks_of(x)
    for r in prof.results:
        assert before <= r.start_time <= r.end_time <= after
        assert r.worker_id in worker_ids()
    fig = prof.visualize(show=False, save=False)
    assert fig is not None and len(fig.renderers) > 0


def test_progress_bar_draws_to_100_percent(client):
    out = io.StringIO()
    with ProgressBar(out=out, minimum=0, dt=0.01):
        da.ones(100, chunks=10).sum().compute(scheduler=client)
    assert "100% Completed" in out.getvalue()


def test_resource_profiler_samples_during_the_job(client):
    def slow(x):
        time.sleep(0.3)
        return x

    with ResourceProfiler(dt=0.01) as rprof:
        dask.delayed(slow)(1).compute(scheduler=client)
    assert len(rprof.results) > 0


def test_jobs_are_recorded(client):
    da.ones(100, chunks=10).sum().compute(scheduler=client)
    record = client.jobs[-1]
    assert isinstance(record, JobRecord) and record.status == "finished"
    assert record.ntasks == len(record.tasks) and record.noutputs == 1
    assert record.invocations >= 1 and record.fanin_round_trips >= 1 and record.bytes_stored > 0
    assert set(record.executors) <= worker_ids()
    assert all(t.start <= t.end for t in record.tasks)


def nap(x, seconds=0.3):
    time.sleep(seconds)
    return x


def test_each_invocation_is_recorded_sent_picked_up_and_ended_around_its_tasks(client):
    # two leaves in two invocations (a local cluster groups leaves 4 per executor), one fan-in
    assert client.get({"a": (nap, 1), "b": (nap, 2), "c": (sum, ["a", "b"])}, "c") == 3
    record = client.jobs[-1]
    assert len(record.runs) == record.invocations == 2
    assert {r.worker for r in record.runs} == set(record.executors)
    for r in record.runs:
        assert record.started < r.sent <= r.picked <= r.ended and r.waits == []
    for t in record.tasks:  # a task runs inside an invocation of its executor: never while it waits for work
        assert any(r.worker == t.worker and r.picked <= t.start <= t.end <= r.ended for r in record.runs)


class Fields:
    """Stands for a ``Batch``: keeps the fields of the event an emitter adds."""

    def mds(self, command, key, fields, *args):
        self.fields = {k.encode(): v if isinstance(v, bytes) else str(v).encode() for k, v in fields.items()}


def test_an_exit_report_carries_the_invocations_span_and_waits():
    span = protocol.pack_span(10.0, 10.5, 12.0, [11.0, 11.25, 11.5, 11.75])
    out = Fields()
    fields = protocol.counts_fields(2, (), "3.0", "3.0@t", b"", "host:1", (0, 0, 0), span)
    protocol.emit_event(out, protocol.Keys("j"), fields)
    ev = protocol.parse_event(out.fields)
    assert ev.exited == "3.0" and ev.worker == "host:1"
    assert ev.span == (10.0, 10.5, 12.0, [(11.0, 11.25), (11.5, 11.75)])
    protocol.emit_event(out, protocol.Keys("j"), protocol.counts_fields(2, (), "", "3.0@t", b"", "host:1", (1, 0, 0)))
    assert protocol.parse_event(out.fields).span is None  # a progress report carries none


def test_an_invocation_sent_while_every_executor_is_busy_waits_until_one_exits(client):
    # three leaves, three invocations, two executors: one of them queues behind a nap
    assert client.get({f"x{i}": (nap, i) for i in range(3)} | {"s": (sum, ["x0", "x1", "x2"])}, "s") == 3
    runs = sorted(client.jobs[-1].runs, key=lambda r: r.picked)
    assert len(runs) == 3
    last = runs[-1]
    before = [r for r in runs[:-1] if r.worker == last.worker]
    assert before and last.picked >= max(r.ended for r in before) > last.sent  # picked up once its executor exited
    waiting = idle_while_queued(runs, client.jobs[-1].tasks)
    assert waiting["queued_s"] > 0 and set(waiting["executors"]) == {r.worker for r in runs}


def payload(i):
    return bytes([i]) * 20_000


def joined(a, b):
    return len(a) + len(b)


def _process(worker: str) -> str:
    """The worker process of an executor (``host:pid``, or ``host:pid/thread``)."""
    return worker.split("/")[0]


def test_a_fan_in_of_remote_values_records_the_bytes_it_fetched(client):
    """Two leaves start in two invocations: the one completing the fan-in reads the other's
    output from the KV store -- unless both ran in its process, whose object table hands
    values over by reference.  Run until the remote case has been seen."""
    remote_seen = 0
    for _ in range(10):
        assert client.get({"a": (payload, 1), "b": (payload, 2), "c": (joined, "a", "b")}, "c") == 40_000
        record = client.jobs[-1]
        runs = {t.key: t for t in record.tasks}
        fetched = {k: t.fetched for k, t in runs.items()}
        assert fetched["a"] == fetched["b"] == 0
        remote = [k for k in "ab" if _process(runs[k].worker) != _process(runs["c"].worker)]
        assert len(remote) <= 1  # c ran where the last of its inputs was made
        if remote:
            assert 20_000 <= fetched["c"] < 21_000  # the other value, serialized, read once
            remote_seen += 1
        else:
            assert fetched["c"] == 0
        assert record.bytes_fetched == fetched["c"]
        if remote:
            assert f"{record.bytes_fetched / 1000:.1f} kB fetched" in record.summary()
        if remote_seen >= 2:
            break
    assert remote_seen >= 1


def test_a_chain_fetches_nothing(client):
    x = dask.delayed(payload)(3)
    for _ in range(4):
        x = dask.delayed(bytes)(x)
    assert len(x.compute(scheduler=client)) == 20_000
    record = client.jobs[-1]
    assert len(record.tasks) == 5 and [t.fetched for t in record.tasks] == [0] * 5 and record.bytes_fetched == 0


def spin(seconds):
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass
    return seconds


def test_the_record_has_each_tasks_cpu_seconds(client):
    """A task that spins has its CPU seconds in the record; one that sleeps has next to none
    (the simulator's profile reads them: ``wukong.simulate.Profile.with_job``)."""
    assert client.get({"spin": (spin, 0.05), "sleep": (time.sleep, 0.05)}, ["spin", "sleep"]) == (0.05, None)
    runs = {t.key: t for t in client.jobs[-1].tasks}
    assert 0.05 <= runs["spin"].cpu <= runs["spin"].end - runs["spin"].start + 0.001  # one thread: CPU <= wall
    assert runs["sleep"].cpu < 0.02 < runs["sleep"].end - runs["sleep"].start


def test_a_future_read_on_an_executor_counts_as_fetched(client):
    """A future's value read by a task in another worker process is fetched from the KV
    store (in the process that made it, the object table may hand it over: 0 bytes).
    Run until a read has come from the store."""
    for _ in range(10):
        f = client.submit(payload, 4)
        assert client.get({"n": (len, f)}, "n") == 20_000  # get returns once the job's record is complete
        record = client.jobs[-1]
        assert [t.fetched for t in record.tasks if t.key == f.key] == [record.bytes_fetched]
        assert record.bytes_fetched == 0 or 20_000 <= record.bytes_fetched < 21_000
        f.release()
        if record.bytes_fetched:
            break
    else:
        raise AssertionError("no read of the future was counted")


def test_scheduler_may_be_the_client_object(client):
    assert da.arange(10, chunks=5).sum().compute(scheduler=client) == 45
    assert len(client.jobs) == 1


def inc(x):
    return x + 1


def gated(path, value):
    """Returns ``value`` once ``path`` exists (bounded: never blocks a worker for long)."""
    deadline = time.monotonic() + 60
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return value


def test_compute_futures_fire_the_callbacks_as_get_does(client):
    x = (da.ones((40, 40), chunks=10) + 1).sum()
    with Recorder() as rec:
        future = client.compute(x, optimize_graph=False)
        assert future.result() == 3200
        calls = list(rec.calls)  # the future settles after ``finish``: the job is complete here
    assert calls[0] == ("start",) and calls[1][0] == "start_state" and calls[-1] == ("finish", False)
    post = [c[1] for c in calls if c[0] == "post"]
    assert [c[1] for c in calls if c[0] == "pre"] == post
    assert {same(k) for k in post} == tasks_of(x) and len(post) == len(set(post)) == calls[1][1]
    assert {c[2] for c in calls if c[0] == "post"} <= worker_ids()


def test_submit_fires_the_callbacks_and_compute_takes_callbacks_for_one_job(client):
    def boom(x):
        raise ValueError("no")

    with Recorder() as rec:
        f = client.submit(inc, 1, key="inc-one")
        assert f.result() == 2
    assert rec.calls == [("start",), ("start_state", 1), ("pre", "inc-one"), ("post", "inc-one", rec.calls[3][2]),
                         ("finish", False)]  # fmt: skip
    rec = Recorder()
    g = client.compute(dask.delayed(boom)(1), callbacks=[rec])  # for this job only
    assert isinstance(g.exception(), ValueError)
    assert rec.calls[-1] == ("finish", True)


def test_callbacks_are_taken_when_the_future_is_made(client, tmp_path):
    """A job that runs after the ``with`` block still reports to the callbacks active when it began."""
    gate = tmp_path / "go"
    with Recorder() as rec:
        f = client.submit(gated, str(gate), 5)
    assert Recorder.active == set()
    gate.touch()
    assert f.result() == 5
    assert [c[0] for c in rec.calls] == ["start", "start_state", "pre", "post", "finish"]


def test_progress_bar_and_profiler_on_futures(client):
    x = da.ones((40, 40), chunks=10).sum()
    out = io.StringIO()
    with ProgressBar(out=out, minimum=0, dt=0.01), Profiler() as prof:
        assert client.compute(x, optimize_graph=False).result() == 1600
        (y,) = client.persist([da.arange(20, chunks=5) + 1])
        assert y.sum().compute(scheduler=client) == 210
    assert "100% Completed" in out.getvalue()
    assert {same(r.key) for r in prof.results} >= tasks_of(x)
    assert all(r.worker_id in worker_ids() and r.start_time <= r.end_time for r in prof.results)


def test_set_as_default_routes_bare_computes_until_close(cluster):
    x = da.arange(10, chunks=5)
    with Client(cluster, progress=False, set_as_default=True) as client:
        assert x.sum().compute() == 45
        assert dask.compute(x.max(), x.min()) == (9, 0)
        (y,) = dask.persist(x + 1)
        assert y.sum().compute() == 55
        assert len(client.jobs) == 4
    assert dask.config.get("scheduler", None) is None
    assert job_keys(cluster) == []


def test_client_without_cluster_owns_a_configured_local_cluster():
    with dask.config.set({"wukong.n-workers": 1, "wukong.inline-limit": 1234}):
        client = Client(progress=False)
    cluster = client.cluster
    try:
        assert isinstance(cluster, LocalCluster) and client.owns_cluster
        assert cluster.n_workers == 1 and cluster.inline_limit == 1234
        pids = [p.pid for p in cluster.backend.children if p is not None]
        assert da.arange(10, chunks=5).sum().compute(scheduler=client) == 45
    finally:
        client.close()
    assert cluster.closed
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie" for p in pids)


def test_config_defaults_ship_with_the_package():
    import wukong.config

    assert os.path.exists(wukong.config._YAML)
    assert dask.config.get("wukong.inline-limit") == 65536
    assert dask.config.get("wukong.lambda.function-name") == "wukong-executor"
    with dask.config.set({"wukong.ttl": 60}):
        assert wukong.config.cluster_defaults(ttl=None, kvs_shards=2) == {"ttl": 60, "kvs_shards": 2}


def test_config_from_environment_variables():
    code = "import wukong.config, dask; print(dask.config.get('wukong.inline-limit'), dask.config.get('wukong.ttl'))"
    env = {**os.environ, "DASK_WUKONG__INLINE_LIMIT": "4096"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["4096", "86400"]


def test_performance_report_writes_one_self_contained_html_file(client, tmp_path):
    import dask.bag as db

    import wukong

    path = tmp_path / "report.html"
    with wukong.performance_report(str(path)) as records:
        da.ones((40, 40), chunks=10).sum().compute(scheduler=client)
        db.from_sequence(range(50), npartitions=5).frequencies().compute(scheduler=client)
        client.get({"a": (payload, 1), "b": (payload, 2), "c": (joined, "a", "b")}, "c")
    assert [r.job for r in records] == [r.job for r in list(client.jobs)[-3:]]
    text = path.read_text()
    fetched = sum(r.bytes_fetched for r in records)
    total = html.escape(f"<b>{format_bytes(fetched)} fetched</b> by ")  # the data movement's total (the Div's text)
    assert total in text  # how much depends on where tasks ran (test_a_fan_in_of_remote_values_...)
    for r in records:
        assert r.job in text
    from dask.utils import key_split

    prefixes = {key_split(t.key) for r in records for t in r.tasks}
    assert len(prefixes) > 2 and all(p in text for p in prefixes)  # the timeline's colours, by key prefix
    assert "Bokeh" in text and "cdn.bokeh.org" not in text  # the library is inlined: opens offline


def test_a_callers_own_gc_freeze_is_left_alone(client):
    """A caller that froze its objects (``gc.freeze``, as servers do after start-up) keeps
    them frozen, and no job's objects join them: they stayed frozen, never collected, and
    each later job paid for walking the growing list (a tree of 1,024 went 0.09 -> 0.55 s)."""
    import gc

    tree = dask.delayed(sum)([dask.delayed(abs)(-i) for i in range(200)])
    gc.collect()
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        for _ in range(3):
            assert tree.compute(scheduler=client) == sum(range(200))
        assert gc.get_freeze_count() <= frozen  # (frozen objects can still be freed by reference counting)
    finally:
        gc.unfreeze()
    assert tree.compute(scheduler=client) == sum(range(200))
    assert gc.get_freeze_count() == 0  # what a job froze while planning is thawed when it ends

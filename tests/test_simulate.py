"""The simulator (``wukong.simulate``): the real plan and executor, simulated; its accounting adds up."""

from __future__ import annotations

import operator

import dask.array as da
import pytest
from dask import delayed
from dask.utils import key_split

from wukong import cli
from wukong.graph import prepare
from wukong.simulate import Model, Profile, graph_of, record, simulate_graph


def tree(n):
    L = [delayed(operator.add)(i, 0) for i in range(n)]
    while len(L) > 1:
        L = list(map(delayed(operator.add), L[0::2], L[1::2]))
    return L[0]


def gemm():
    x = da.random.RandomState(1).random((400, 400), chunks=(100, 100))
    return x @ x.T


def fanout(width):
    root = delayed(operator.add)(1, 1)
    return delayed(sum)([delayed(operator.mul)(root, i) for i in range(width)])


GRAPHS = {"tree": lambda: tree(64), "gemm": gemm, "fanout": lambda: fanout(300)}


@pytest.fixture(scope="module", params=sorted(GRAPHS))
def case(request):
    dsk, keys = graph_of(GRAPHS[request.param]())
    profile = record(dsk, keys)
    report = simulate_graph(dsk, keys, profile, Model.aws(1000))
    return dsk, keys, profile, report


def test_every_task_is_simulated_exactly_once(case):
    dsk, keys, profile, r = case
    assert r.tasks == len(prepare(dsk, keys)[0])
    assert sorted(r.ran) == list(range(r.tasks)) and set(r.ran.values()) == {1}
    assert sum(s.tasks for s in r.spans) == r.tasks


def test_every_executor_is_busy_from_its_start_to_its_end(case):
    r = case[3]
    for s in r.spans:  # tasks, round trips, invokes, serialization: nothing else, no waiting on others
        assert s.end - s.start == pytest.approx(s.accounted, abs=1e-9), (s.inv, dict(s.busy))


def test_bytes_are_conserved(case):
    dsk, keys, profile, r = case
    order, graph = prepare(dsk, keys)
    # the KVS holds what was stored; every read of an output returns what was stored for it
    assert r.kvs_bytes == sum(r.stored.values())
    for tid, nbytes in r.read_bytes.items():
        assert nbytes == r.reads[tid] * r.stored[tid]
    # the parents of every fan-in stored their outputs (the executor's rule), at their profiled size
    for key in order:
        if len(graph[key].dependencies) > 1:
            for dep in graph[key].dependencies:
                t = order.index(dep)
                assert t in r.stored
                if r.sizes[t] > 64 * 1024:
                    assert r.stored[t] == r.sizes[t]


def test_a_wide_fan_out_is_launched_through_an_invoker_tree():
    dsk, keys = graph_of(fanout(2000))
    r = simulate_graph(dsk, keys, record(dsk, keys), Model.aws(10_000))
    assert r.tree_nodes > 0 and set(r.ran.values()) == {1}


def test_concurrency_never_exceeds_the_limit_and_the_burst_rate():
    dsk, keys = graph_of(tree(256))
    profile = Profile({}, {"add": (0.5, 28)})  # half a second per task
    r = simulate_graph(dsk, keys, profile, Model.aws(50))
    assert r.peak_concurrency == 50
    r = simulate_graph(dsk, keys, profile, Model.aws(1000, burst=20, burst_every_s=1.0))
    running = [sum(1 for s in r.spans if s.start <= t < s.end) for t in (0.9, 1.9)]
    assert running[0] <= 20 and running[1] <= 40 and r.peak_concurrency <= 20 * (1 + int(r.makespan))


def test_makespan_and_cost_grow_with_the_work():
    dsk, keys = graph_of(tree(32))
    fast = simulate_graph(dsk, keys, Profile({}, {"add": (0.01, 28)}), Model.aws(1000))
    slow = simulate_graph(dsk, keys, Profile({}, {"add": (1.0, 28)}), Model.aws(1000))
    assert slow.makespan > fast.makespan + 4  # the critical path is 6 tasks deep
    assert slow.cost["gb_seconds"] > fast.cost["gb_seconds"]
    assert slow.ideal() == pytest.approx(63 * 1.0 / 1000)


def test_a_profile_prices_unseen_keys_by_kind():
    small = record(*graph_of(tree(16)))
    dsk, keys = graph_of(tree(128))
    r = simulate_graph(dsk, keys, Profile.from_json(small.to_json()), Model.aws(1000))
    assert set(r.ran.values()) == {1}
    with pytest.raises(KeyError, match="no task of kind"):
        simulate_graph(*graph_of(gemm()), small, Model.aws(1000))


def test_cli_prints_a_prediction(capsys, tmp_path, monkeypatch):
    (tmp_path / "wl.py").write_text(
        "import operator\nfrom dask import delayed\n"
        "def build():\n    return delayed(operator.add)(delayed(operator.add)(1, 2), delayed(operator.add)(3, 4))\n"
    )
    monkeypatch.chdir(tmp_path)
    assert cli.main(["simulate", "wl:build", "--concurrency", "10", "100", "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and '"tasks": 3' in lines[0] and '"concurrency": 100' in lines[1]


def _simulation(n, model):
    from wukong.graph import flatten_keys
    from wukong.scheduler import plan
    from wukong.simulate.engine import Simulation

    dsk, keys = graph_of(tree(n))
    order, graph = prepare(dsk, keys)
    p = plan(order, graph, flatten_keys(keys))
    return p, Simulation(p, list(order), Profile({}, {"add": (0.01, 28)}), model)


def test_a_simulation_leaves_no_garbage_cycles():
    # the simulation runs with the cyclic collector off: whatever an invocation built in a
    # reference cycle (a batch and its commands) would stay until the end -- gigabytes at 1M tasks
    import gc

    first = _simulation(8, Model.aws(1000))[1]  # the executor module keeps the last store used: ...
    first.run()  # ... the previous simulation is released when this one starts
    p, sim = _simulation(512, Model.aws(1000))
    gc.collect()
    gc.disable()  # (so that nothing is collected before we count)
    try:
        sim.run()
        garbage = gc.collect()
    finally:
        gc.enable()
    assert first.ran and not sim.errors and set(sim.ran.values()) == {1} and len(sim.ran) == p.ntasks
    assert garbage < 50  # a leak per invocation or per round trip would be thousands


def test_environments_share_the_decoded_schedules():
    # each environment caches the schedules it fetched (the fetches are simulated), but one
    # decoded copy serves all of them, and no task body is unpickled (running tasks is simulated)
    from wukong import executor as executor_module

    p, sim = _simulation(512, Model.aws(100))
    saved = executor_module.Schedule
    sim.run()
    assert executor_module.Schedule is saved
    cached = [s for env in sim.idle_envs for job in env.jobs.values() for s in job.values()]
    assert len(sim.idle_envs) > 1 and len(cached) > len(p.schedules)  # several environments fetched them
    assert len({id(s) for s in cached}) <= len(p.schedules)
    assert all(s._bodies is None for s in cached)
    assert not sim.queue


def test_a_report_does_not_keep_the_simulation():
    # a prediction at several concurrencies runs one simulation after the other: the last one's
    # store, environments and decoded schedules must not stay in memory under the next
    import gc

    from wukong.simulate.engine import Simulation

    gc.collect()
    gc.disable()
    try:
        r = simulate_graph(*graph_of(tree(256)), Profile({}, {"add": (0.01, 28)}), Model.aws(100))
        sims = [o for o in gc.get_objects() if isinstance(o, Simulation) and o.spans is r.spans]
    finally:
        gc.enable()
    assert set(r.ran.values()) == {1} and len(r.ran) == r.tasks and r.stored
    assert len(sims) == 1  # (alive: the executor module keeps the last store used) ...
    for sim in sims:  # ... but empty
        assert not sim.store.data and not sim.store.sets and not sim.idle_envs and not sim.decoded
        assert not sim.ran and not sim.stored


def test_every_task_has_its_simulated_times(case):
    dsk, keys, profile, r = case
    assert len(r.keys) == len(r.task_start) == len(r.task_end) == r.tasks
    for tid, key in enumerate(r.keys):  # it ran for its profiled seconds (the model's cores are its own)
        assert r.task_end[tid] - r.task_start[tid] == pytest.approx(profile.cost(key)[0], abs=1e-9)
    assert 0 < max(r.task_end) <= r.executors_end <= r.makespan


def test_the_makespan_includes_the_client_reading_the_result():
    # one 10 MB output, in the job's event stream: sent by the executor, read and decoded by the client
    dsk, keys = {"x": (operator.add, 1, 1)}, ["x"]
    profile = Profile({"x": (0.01, 10_000_000)})
    m = Model.aws(10, shard_out_Bps=1e7, bandwidth_Bps=1e9, deserialize_Bps=1e9)
    r = simulate_graph(dsk, keys, profile, m)
    assert r.kvs_bytes == 0 and r.network_bytes > 10_000_000  # the event carried it
    reading = 1.0 + 0.01 + 0.01  # 1 s through the server, its link, decoding
    # from when the server took the event in: before the executor's end by (part of) a round trip
    assert r.makespan == pytest.approx(r.executors_end + reading, abs=m.redis_rtt_s)


def test_an_invoker_tree_node_costs_a_start_like_any_invocation():
    dsk, keys = graph_of(fanout(2000))
    r = simulate_graph(dsk, keys, record(dsk, keys), Model.aws(10_000, tree_start_s=1e-6))
    nodes = [s for s in r.spans if s.kind == "tree"]
    assert nodes and all(set(s.busy) <= {"start", "invoke"} for s in nodes)  # no tree_start_s pause


def test_on_shared_cores_moving_bytes_is_contended_cpu():
    # the same job on 1 shared core and on environments of their own: the bytes' time is longer shared
    dsk, keys = graph_of(gemm())
    profile = Profile({}, {k: (0.0, 10_000_000) for k in {key_split(k) for k in prepare(dsk, keys)[0]}})
    own = simulate_graph(dsk, keys, profile, Model.local(8, 0.0, 8).with_(cores=None))
    shared = simulate_graph(dsk, keys, profile, Model.local(8, 0.0, 1))
    assert shared.kvs_bytes == own.kvs_bytes > 0
    redis = lambda r: sum(s.busy["redis"] for s in r.spans)  # noqa: E731
    assert redis(shared) > redis(own)
    assert set(shared.ran.values()) == {1}


def test_delayed_io_holds_sleep_in_simulated_time():
    # holders of delayed I/O sleep between asks: simulated, charged, and every task still runs once
    dsk, keys = graph_of(tree(64))
    profile = Profile({}, {"add": (0.01, 100_000)})
    r = simulate_graph(dsk, keys, profile, Model.aws(4), delayed_io_bytes=1)
    assert set(r.ran.values()) == {1} and sorted(r.ran) == list(range(r.tasks))
    for s in r.spans:
        assert s.end - s.start == pytest.approx(s.accounted, abs=1e-9)


def test_each_task_costs_the_executor_its_bookkeeping():
    dsk, keys = graph_of(tree(32))
    r = simulate_graph(dsk, keys, Profile({}, {"add": (0.01, 28)}), Model.aws(1000, task_cpu_s=0.001))
    assert sum(s.busy["task overhead"] for s in r.spans) == pytest.approx(r.tasks * 0.001)
    for s in r.spans:
        assert s.end - s.start == pytest.approx(s.accounted, abs=1e-9)


def test_an_endpoint_that_queues_before_answering_starts_the_executor_before_the_202():
    # one leaf: on AWS its executor starts after the Invoke's 202 (and a warm start); lambda-local
    # queues the event as it reads the request and sleeps its latency before answering
    dsk, keys = {"x": (operator.add, 1, 1)}, ["x"]
    profile = Profile({"x": (0.0, 28)})
    at_202 = Model.aws(10, invoke_latency_s=0.5, warm_pool=1, warm_start_s=0.01, invocation_cpu_s=0.0)
    early = at_202.with_(queued_after_s=0.0)
    (late_span,) = simulate_graph(dsk, keys, profile, at_202).spans
    (early_span,) = simulate_graph(dsk, keys, profile, early).spans
    assert late_span.start == pytest.approx(0.5 + 0.01 + at_202.invoke_cpu_s)
    assert early_span.start == pytest.approx(0.01 + at_202.invoke_cpu_s)
    assert Model.local(8, 0.02, 2).queued_after_s == 0.0 and Model.aws().queued_after_s is None


def _through_the_hub(self, t):
    """``Simulation.sleep_until`` without its shortcut: every wake-up is pushed and popped."""
    import heapq

    import greenlet

    heapq.heappush(self._heap, (max(t, self.now), next(self._seq), greenlet.getcurrent(), None))
    self.hub.switch()


def _outcome(r):
    spans = [(s.inv, s.kind, s.queued, s.start, s.end, s.cold, s.tasks, dict(s.busy)) for s in r.spans]
    totals = (r.makespan, r.executors, r.peak_concurrency, r.network_bytes, r.cpu_seconds, r.server_seconds, r.cost)
    return spans, list(r.task_start), list(r.task_end), r.ran, r.reads, r.stored, totals


@pytest.mark.parametrize("model", [Model.aws(1000), Model.aws(4), Model.local(8, 0.02, 2, kvs_shards=2)])
@pytest.mark.parametrize("name", ["tree", "gemm"])
def test_a_wake_up_that_is_the_next_event_skips_the_hub_with_the_same_outcome(name, model, monkeypatch):
    from wukong.simulate.engine import Simulation

    dsk, keys = graph_of(GRAPHS[name]())
    profile = record(dsk, keys)
    shortcut = _outcome(simulate_graph(dsk, keys, profile, model, delayed_io_bytes=1 << 20))
    monkeypatch.setattr(Simulation, "sleep_until", _through_the_hub)
    assert _outcome(simulate_graph(dsk, keys, profile, model, delayed_io_bytes=1 << 20)) == shortcut


def test_a_job_record_prices_tasks_at_the_cpu_they_used_where_they_ran():
    """``Profile.with_job``: each task's CPU seconds as its executor measured them, plus the
    time it spent off the CPU when recorded (a sleep stays a sleep); bytes stay recorded."""
    from wukong.diagnostics import JobRecord, TaskRun

    dsk = {"nap": (operator.add, 1, 1), "sum": (operator.add, 1, 2), "out": (operator.add, "nap", "sum")}
    # as ``record`` would have it: nap slept 20 ms on 1 ms of CPU, sum ran 0.1 ms
    profile = Profile({"nap": (0.021, 40), "sum": (0.0001, 30), "out": (0.0001, 20)}, cpu={"nap": 0.001, "sum": 0.0001})
    job = JobRecord("j", 0.0, tasks=[TaskRun("nap", 0.0, 0.5, "w", cpu=0.002), TaskRun("sum", 0.0, 0.5, "w", cpu=0.25)])
    priced = profile.with_job(job)
    assert priced.cpu_seconds("sum") == 0.25 and priced.cost("sum") == (0.25, 30)
    assert priced.cpu_seconds("nap") == 0.002 and priced.cost("nap") == (pytest.approx(0.022), 40)  # slept 20 ms
    assert priced.cost("out") == (0.0001, 20)  # not in the job: as recorded
    assert simulate_graph(dsk, ["out"], priced, Model.aws(10)).work_seconds > 0.25


def test_a_profile_recorded_beside_other_work_prices_a_task_as_on_its_own_core():
    """``record`` takes off a task's seconds the time its thread waited for a core: here a
    spinning process shares this process's one allowed core, so the task's wall time is
    about twice its CPU time, and its recorded seconds are not."""
    import multiprocessing
    import os
    import time

    def spin_cpu(seconds):
        end = time.thread_time() + seconds
        while time.thread_time() < end:
            pass
        return seconds

    core = {min(os.sched_getaffinity(0))}
    allowed = os.sched_getaffinity(0)
    rival = multiprocessing.get_context("fork").Process(target=spin_cpu, args=(30,), daemon=True)
    os.sched_setaffinity(0, core)
    try:
        rival.start()
        os.sched_setaffinity(rival.pid, core)
        t0 = time.perf_counter()
        profile = record({"x": (spin_cpu, 0.3)}, ["x"])
        wall = time.perf_counter() - t0
    finally:
        rival.kill()
        rival.join()
        os.sched_setaffinity(0, allowed)
    assert wall > 0.5  # the rival took about half the core
    assert 0.3 <= profile.cost("x")[0] < 0.4 and profile.cpu["x"] >= 0.3

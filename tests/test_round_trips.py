"""What the executor does not send: fan-ins settled in one executor, wide fan-outs started in groups.

Counted on the cluster's own Redis (``INFO commandstats``), around one job: only
``fanin.lua`` adds to a set here (``SADD``, one per parent's arrival), and every
invocation is acknowledged with one ``LREM`` when it exits.
"""

from __future__ import annotations

import operator
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from wukong.backends.local import LEAF_GROUPS_PER_WORKER


def calls(cluster, command: str) -> int:
    return sum(r.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0) for r in cluster.store.servers)


def tree(leaves: int) -> tuple[dict, str]:
    dsk: dict = {f"l{i}": i for i in range(leaves)}
    level = list(dsk)
    while len(level) > 1:
        nxt = [f"{a}+{b}" for a, b in zip(level[::2], level[1::2], strict=True)]
        dsk |= {k: (operator.add, a, b) for k, a, b in zip(nxt, level[::2], level[1::2], strict=True)}
        level = nxt
    return dsk, level[0]


def test_fanins_whose_parents_ran_in_one_executor_cost_no_arrival(cluster, client):
    # 2 leaves per invocation: the fan-in of each pair completes in its executor,
    # without a fanin.lua call; only the fan-ins above the pairs record arrivals.
    groups = LEAF_GROUPS_PER_WORKER * cluster.n_workers
    dsk, top = tree(2 * groups)
    client.get(dsk, top)  # warm: nothing below depends on a first job
    before = calls(cluster, "sadd")
    assert client.get(dsk, top) == sum(range(2 * groups))
    arrivals = calls(cluster, "sadd") - before
    above_pairs = 2 * (groups - 1)  # two parents each, one fan-in per pair of pairs
    # (+2: a worker descheduled for over DEFER_S between the two leaves of a pair sends one early)
    assert above_pairs <= arrivals <= above_pairs + 2, f"{arrivals} arrivals; one per parent: {4 * groups - 2}"


def test_a_wide_fanout_starts_its_children_in_grouped_invocations(cluster, client):
    width = 10 * LEAF_GROUPS_PER_WORKER * cluster.n_workers
    dsk = {"root": 1, **{f"c{i}": (operator.add, "root", i) for i in range(width)}}
    dsk["total"] = (sum, [f"c{i}" for i in range(width)])
    before = calls(cluster, "lrem")
    assert client.get(dsk, "total") == width + sum(range(width))
    invocations = calls(cluster, "lrem") - before
    assert invocations <= 1 + LEAF_GROUPS_PER_WORKER * cluster.n_workers, f"{invocations} invocations for {width}"


def test_a_narrow_fanout_needs_no_more_invocations_than_the_other_executors(cluster, client):
    # This executor runs its share of the children; the others go in one invocation per
    # other executor at most, not one each: more could only wait for an executor.
    executors = cluster.n_workers * cluster.threads_per_worker
    width = LEAF_GROUPS_PER_WORKER * executors  # the widest fan-out that is not started as leaves are
    dsk = {"root": 1, **{f"c{i}": (operator.add, "root", i) for i in range(width)}}
    dsk["total"] = (sum, [f"c{i}" for i in range(width)])
    client.get(dsk, "total")  # warm
    before = calls(cluster, "lrem")
    assert client.get(dsk, "total") == width + sum(range(width))
    invocations = calls(cluster, "lrem") - before
    assert invocations <= executors, f"{invocations} invocations; one per child: {width}"


def test_a_narrow_fanout_runs_here_while_invocations_wait_in_the_queue(cluster, client):
    # One leaf per invocation, more invocations than executors: while some wait in the
    # queue, each leaf's second child runs in the leaf's executor instead of an invocation.
    # Only the last leaves (the queue empty when they start) invoke theirs.
    executors = cluster.n_workers * cluster.threads_per_worker
    groups = LEAF_GROUPS_PER_WORKER * executors
    dsk: dict = {f"l{i}": i for i in range(groups)}
    dsk |= {f"{c}{i}": (operator.add, f"l{i}", n) for i in range(groups) for c, n in (("a", 1), ("b", 2))}
    dsk["total"] = (sum, [f"{c}{i}" for i in range(groups) for c in "ab"])
    client.get(dsk, "total")  # warm
    before = calls(cluster, "lrem")
    assert client.get(dsk, "total") == 2 * sum(range(groups)) + 3 * groups
    invocations = calls(cluster, "lrem") - before
    # (2 * executors: a few more leaves may find the queue empty when descheduled under load)
    assert invocations <= groups + 2 * executors, f"{invocations} invocations; one per child: {2 * groups}"


def test_a_chain_holds_back_the_arrivals_of_its_tasks_at_a_fanin(cluster, client):
    # Each task of a chain feeds the next and the total: its arrival waits while the next
    # runs, so the chain's arrivals go together, and the total, whose parents are then all
    # held in one executor, completes there without recording any arrival.
    n = 100
    dsk: dict = {"c0": 0, **{f"c{i}": (operator.add, f"c{i - 1}", 1) for i in range(1, n)}}
    dsk["total"] = (sum, [f"c{i}" for i in range(n)])
    client.get(dsk, "total")  # warm
    before = calls(cluster, "sadd")
    assert client.get(dsk, "total") == sum(range(n))
    arrivals = calls(cluster, "sadd") - before
    # (a worker descheduled for over DEFER_S mid-chain sends the arrivals held so far)
    assert arrivals < n // 2, f"{arrivals} arrivals; one per task: {n}"


def slow_add(a, b):
    time.sleep(0.05)  # long enough for the client to queue every leaf before the first exits
    return a + b


def test_a_busy_executor_takes_its_next_invocation_with_its_exit(cluster, client):
    # Many more leaf invocations than executors: an executor that exits while others wait
    # in the queue takes the next one in its exit's round trip (LMOVE), not with a
    # blocking pop of its own (BLMOVE) after it.
    executors = cluster.n_workers * cluster.threads_per_worker
    groups = LEAF_GROUPS_PER_WORKER * executors
    dsk = {f"l{i}": (slow_add, i, 1) for i in range(groups)}
    dsk["total"] = (sum, [f"l{i}" for i in range(groups)])
    client.get(dsk, "total")  # warm
    before_pops, before_exits = calls(cluster, "blmove"), calls(cluster, "lrem")
    assert client.get(dsk, "total") == sum(range(groups)) + groups
    pops, invocations = calls(cluster, "blmove") - before_pops, calls(cluster, "lrem") - before_exits
    assert invocations >= groups
    # (+executors: a blocking pop that was waiting when the job began, or one that found
    # the queue empty for a moment under load)
    assert pops <= 2 * executors, f"{pops} blocking pops for {invocations} invocations"


def test_a_small_jobs_keys_are_deleted_in_one_round_trip(cluster, client):
    dsk, top = tree(64)
    client.get(dsk, top)  # warm
    assert cluster.store.deleted(10)  # its keys are deleted after its results are returned
    before = calls(cluster, "unlink")
    assert client.get(dsk, top) == sum(range(64))
    assert cluster.store.deleted(10)  # after the results are returned (``Store.delete_job_soon``)
    assert calls(cluster, "unlink") - before == 1


def test_the_leaves_are_invoked_in_the_round_trips_that_write_their_schedules(cluster, client, monkeypatch):
    from wukong import client as client_module
    from wukong.store import Batch

    trips = {"submit": 0, "launch": 0}
    inside = []
    execute, submit, launch = Batch.execute, client_module.Job.submit, client_module.Job.launch

    def counted_execute(self, *args, **kwargs):
        if inside:
            trips["submit"] += 1
        return execute(self, *args, **kwargs)

    def counted_submit(self):
        inside.append(1)
        try:
            submit(self)
        finally:
            inside.clear()

    def counted_launch(self, *args, **kwargs):
        trips["launch"] += 1
        launch(self, *args, **kwargs)

    monkeypatch.setattr(Batch, "execute", counted_execute)
    monkeypatch.setattr(client_module.Job, "submit", counted_submit)
    monkeypatch.setattr(client_module.Job, "launch", counted_launch)
    dsk, top = tree(64 * LEAF_GROUPS_PER_WORKER * cluster.n_workers)  # streamed in several steps
    assert client.get(dsk, top) == sum(range(64 * LEAF_GROUPS_PER_WORKER * cluster.n_workers))
    assert trips["launch"] > 1
    assert trips["submit"] == trips["launch"], trips


def test_a_fanout_reads_the_schedules_of_its_local_children_as_it_invokes_the_others(cluster, client):
    # root fans out to 8 children (new schedules, each a requested result); its executor
    # runs its share and invokes the rest in one round trip that also reads its own
    # children's schedules.  Every round trip an executor makes while it runs tasks asks
    # the queue's length (LLEN; the exit's does not): root's invocation starts (1) and
    # fans out (1), the other starts (1).  Reading the schedules in a round trip of their
    # own made it 4.
    assert cluster.n_workers * cluster.threads_per_worker == 2
    width = 8
    dsk = {"root": 1, **{f"c{i}": (operator.add, "root", i) for i in range(width)}}
    keys = [f"c{i}" for i in range(width)]
    client.get(dsk, keys)  # warm
    trips = []
    for _ in range(3):  # the fewest: an executor descheduled under load checks for a cancel once more
        before = calls(cluster, "llen")
        assert client.get(dsk, keys) == tuple(1 + i for i in range(width))
        trips.append(calls(cluster, "llen") - before)
    assert min(trips) <= 3, trips


def test_an_exit_sent_with_the_last_arrivals_takes_effect_only_if_none_completed(cluster):
    # exit.lua, after fan-in arrivals in one pipeline: the invocation exits (its events
    # added, its lease marked done) unless an arrival of it completed a fan-in.
    from wukong import protocol
    from wukong.protocol import Keys

    store = cluster.store
    keys = Keys(f"exit-{time.monotonic_ns()}")
    store.mds.xadd(keys.events, {"k": "s"})  # the job lives while its stream does
    store.mds.set(keys.schedule(7), b"schedule")

    def arrive_and_exit(inv: str, parent: int) -> tuple[object, int]:
        batch = store.batch()
        fanin = batch.fanin(keys, 9, parent, 2, 7, False, inv)
        counts = protocol.counts_fields(1, exited=inv, attempt=f"{inv}@t")
        h = batch.exit(keys, inv, [(9, f"{inv}/{parent}")], [protocol.duration_fields(1.5, 128), counts])
        batch.execute()
        return batch[fanin], batch[h]

    try:
        assert arrive_and_exit("a", 1) == (0, 1)  # the first of two parents: nothing to run, it exits
        events = [protocol.parse_event(f) for _, f in store.mds.xrange(keys.events)][1:]
        assert [(e.kind, e.exited) for e in events] == [("d", ""), ("c", "a")] and events[0].ms == 1.5
        assert store.mds.get(keys.lease("a")) == b"done" and store.mds.ttl(keys.lease("a")) > 0
        reply, exited = arrive_and_exit("b", 2)  # the last parent: it completes the fan-in and runs it
        assert reply[0] == 1 and exited == 0
        assert store.mds.xlen(keys.events) == 3 and store.mds.get(keys.lease("b")) is None  # nothing written
        assert arrive_and_exit("b", 2) == ([1, b""], 0)  # a re-run of it completes it again: still no exit
        store.mds.delete(keys.events)  # the job ends
        assert arrive_and_exit("c", 3) == (0, -1) and store.mds.get(keys.lease("c")) is None
    finally:
        store.mds.delete(*(k for k in store.mds.scan_iter(match=f"{keys.prefix}*")))


def test_a_one_task_invocation_that_arrives_at_a_fanin_exits_in_the_same_round_trip(monkeypatch):
    # The real executor, its store simulated (``wukong.simulate``): a child of a 1 -> 200
    # fan-out whose arrival does not complete the sum makes two round trips (its start,
    # its arrival with its exit), not three; the one whose arrival completes it runs the sum.
    import operator

    from dask import delayed

    from wukong.simulate import Model, engine, graph_of, record, simulate_graph

    trips: dict[int, int] = {}
    execute = engine._SimBatch.execute

    def counted(self, atomic=False):
        span = self.store.sim.span()
        trips[id(span)] = trips.get(id(span), 0) + 1
        return execute(self, atomic)

    monkeypatch.setattr(engine._SimBatch, "execute", counted)
    root = delayed(operator.add)(1, 1)
    dsk, keys = graph_of(delayed(sum)([delayed(operator.mul)(root, i) for i in range(200)]))
    report = simulate_graph(dsk, keys, record(dsk, keys), Model.aws(1000))
    children = [s for s in report.spans if s.tasks == 1]
    assert len(children) >= 150
    assert sorted({trips[id(s)] for s in children}) == [2], sorted(trips[id(s)] for s in children)


def test_an_atomic_batch_wakes_a_blocked_reader_once_with_all_its_events(cluster):
    # An executor's exit pipeline (its last results, then its exit) runs inside MULTI/EXEC:
    # the client, blocked on the job's stream, reads every event in one XREAD, not one
    # per XADD.  Replies keep their places, an error reply included.
    import threading

    import redis

    store = cluster.store
    stream = f"atomic-{time.monotonic_ns()}"
    store.mds.xadd(stream, {"k": "s"})
    first = store.mds.xrange(stream)[-1][0]
    got: list = []

    def read() -> None:  # on another connection of the pool
        got.extend(store.mds.xread({stream: first}, block=10_000)[0][1])

    try:
        for atomic in (True, False):
            got.clear()
            thread = threading.Thread(target=read)
            thread.start()
            deadline = time.monotonic() + 10
            while store.mds.info("clients")["blocked_clients"] < 1:  # until it waits in XREAD
                assert time.monotonic() < deadline, "the reader never blocked"
                time.sleep(0.01)
            batch = store.batch()
            hs = [batch.mds("xadd", stream, {"k": "r", "n": i}) for i in range(3)]
            batch.execute(atomic=atomic)
            thread.join(10)
            assert all(isinstance(batch[h], bytes) for h in hs)
            assert len(got) == (3 if atomic else 1)  # Redis serves a blocked reader after each command
            first = store.mds.xrange(stream)[-1][0]
        pipe = store.pipeline(store.mds_index)  # the replies of an atomic pipeline, an error in its place
        pipe.xlen(stream)
        pipe.incr(stream)
        pipe.exists(stream)
        n, bad, exists = pipe.execute(raise_on_error=False, atomic=True)
        assert n == 7 and exists == 1
        assert isinstance(bad, redis.ResponseError) and "WRONGTYPE" in str(bad)
    finally:
        store.mds.delete(stream)


def test_a_round_trip_read_later_keeps_its_replies_when_another_goes_first(cluster):
    # ``Batch.send``: the replies of a round trip sent now and read later are read by the
    # next round trip on the same connection (this thread's), and kept for their batch.
    store = cluster.store
    first = store.batch()
    h_set = first.mds("set", "wk:test:early", b"1")
    h_get = first.mds("get", "wk:test:early")
    receive = first.send()
    second = store.batch()
    h_incr = second.mds("incr", "wk:test:early")
    assert second.execute()[h_incr] == 2
    third = store.batch()
    h_del = third.mds("delete", "wk:test:early")
    receive_third = third.send()
    assert receive()[h_set] is True and first[h_get] == b"1"
    assert receive_third()[h_del] == 1 and receive_third() is third  # read once
    assert store.connection(store.mds_index).wukong_owed == []


def test_jobs_from_many_short_lived_threads_share_their_connections(cluster, client):
    """A client driven from a new thread each time (a web server's handlers, the bench
    harness): a thread that ended hands its connections to the next, so Redis sees no
    more of them, and the 150th job runs as the first did (each thread's own connection,
    never given back, counted against redis-py's pool limit of 100 until the 100th
    thread's job failed with "Too many connections")."""

    def connections() -> int:  # Redis's clients (on its Unix socket, or TCP): the workers' stay as they are
        return len(cluster.store.mds.client_list())

    with ThreadPoolExecutor(1) as thread:  # the connections one job needs
        assert thread.submit(client.get, {"x": (operator.add, 1, 1)}, "x").result() == 2
    assert cluster.store.deleted(10)  # the store's deleting thread has its connection too
    made = connections()
    for i in range(150):
        with ThreadPoolExecutor(1) as thread:  # a new thread for each job
            assert thread.submit(client.get, {"x": (operator.add, i, 1)}, "x").result() == i + 1
    assert connections() == made


def test_a_job_returns_its_results_before_its_keys_are_deleted(cluster, client, monkeypatch):
    # A job that ended well returns without waiting for its deletes (``Store.delete_job_soon``);
    # one that failed deletes its keys before its error is raised.
    from conftest import job_keys

    from wukong import TaskError
    from wukong.store import Store

    release = threading.Event()
    delete_job = Store.delete_job

    def held_back(self, keys, written, **how):
        release.wait(10)
        delete_job(self, keys, written, **how)

    def left() -> list[bytes]:  # without waiting for the deletes, as ``job_keys`` does
        return [k for k in cluster.store.mds.scan_iter(match="wk:*", count=1000) if not k.startswith(b"wk:cluster:")]

    monkeypatch.setattr(Store, "delete_job", held_back)
    assert client.get({"x": (operator.add, 1, 1)}, "x") == 2
    assert left() != [] and not cluster.store.deleted(0.05)
    release.set()
    assert cluster.store.deleted(10) and left() == []
    with pytest.raises(TaskError):
        client.get({"x": (operator.truediv, 1, 0)}, "x")
    assert left() == []
    assert job_keys(cluster) == []

"""The storage layer: an MDS plus a KV store sharded over several Redis servers.

Most tests share one cluster whose metadata store is its own Redis and whose
KV store is three more (``sharded``); its part size is small (``SMALL_PART``)
so split values are exercised by ordinary jobs.  After every test no job key
is left on any server and no child process is left running.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time

import dask
import dask.array as da
import numpy as np
import pytest
import redis
from dask import delayed
from wukong_native import HashRing

from wukong import Client, LocalCluster, StorageError
from wukong.protocol import Keys
from wukong.store import Endpoint, JobWrites, Store
from wukong.store import parts as value_parts
from wukong.store import store as storage
from wukong.store.server import RedisServer, free_port

SMALL_PART = 256 * 1024


class Sharded:
    """One MDS server, three KVS servers, and a cluster over them."""

    def __init__(self):
        self.mds = RedisServer().start()
        self.kvs = [RedisServer().start() for _ in range(3)]
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(value_parts, "PART_SIZE", SMALL_PART)  # reaches the workers through Store.to_config
            self.cluster = LocalCluster(
                n_workers=2,
                mds_endpoint=url(self.mds),
                kvs_endpoints=[url(s) for s in self.kvs],
                shared_memory=False,  # these tests are about Redis: large values must go through it
            )

    @property
    def servers(self) -> list[RedisServer]:
        return [self.mds, *self.kvs]

    def close(self) -> None:
        self.cluster.close()
        for s in self.servers:
            s.stop()


def url(server: RedisServer) -> str:
    return f"redis://:{server.password}@127.0.0.1:{server.port}/0"


def connect(server: RedisServer) -> redis.Redis:
    return redis.Redis(port=server.port, password=server.password)


def job_keys(sharded: Sharded) -> list[bytes]:
    """The jobs' keys on ``sharded``'s servers, once the deletes of ended jobs are done."""
    assert sharded.cluster.store.deleted(30), "the deletes of ended jobs still run after 30 s"
    keys = []
    for s in sharded.servers:
        if s.proc is None:
            continue
        with connect(s) as r:
            keys += [k for k in r.scan_iter(match="wk:*", count=1000) if not k.startswith(b"wk:cluster:")]
    return keys


@pytest.fixture(scope="module")
def sharded():
    s = Sharded()
    yield s
    s.close()


@pytest.fixture(autouse=True)
def hygiene(request):
    """No job keys on any server and no new child process after each test."""
    import psutil

    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    yield
    sharded = request.node.funcargs.get("sharded")
    if sharded is not None:
        assert job_keys(sharded) == [], "a job left keys behind"
        # the shared cluster's own processes (a restarted server included) live on
        before |= {s.proc.pid for s in sharded.servers if s.proc is not None}
        before |= {w.pid for w in sharded.cluster.backend.workers if w is not None}
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        extra = [p for p in me.children(recursive=True) if p.pid not in before and p.is_running()]
        extra = [p for p in extra if p.status() != psutil.STATUS_ZOMBIE]
        if not extra:
            break
        time.sleep(0.05)
    assert not extra, f"child processes left running: {extra}"


def matmul_graph(seed: int, n: int = 240, chunk: int = 40):
    x = da.random.RandomState(seed).random_sample((n, n), chunks=chunk)
    return (x @ x.T + seed).sum(axis=0)


# -- configuration -----------------------------------------------------------


def test_config_round_trips_every_storage_setting():
    mds = Endpoint.parse("rediss://alice:s%40crt@mds.example:6380/2?ssl_cert_reqs=none&ssl_ca_certs=/ca.pem")
    kvs = [Endpoint.parse("kvs.example:7000", password="pw"), mds]
    store = Store(mds, kvs, connect_timeout=1.5, socket_timeout=30.0, ttl=600, part_size=1 << 20)
    config = store.to_config()
    assert config["mds"] == {
        "host": "mds.example",
        "port": 6380,
        "password": "s@crt",
        "username": "alice",
        "tls": True,
        "db": 2,
        "tls_ca_certs": "/ca.pem",
        "tls_verify": False,
        "unix_socket": None,
    }
    again = Store.from_config(config)
    assert again.to_config() == config
    assert again.endpoints == store.endpoints
    kwargs = again.servers[0].connection_pool.connection_kwargs
    assert kwargs["username"] == "alice" and kwargs["password"] == "s@crt"
    assert kwargs["socket_connect_timeout"] == 1.5 and kwargs["socket_timeout"] == 30.0
    assert again.servers[0].connection_pool.connection_class is redis.SSLConnection
    assert kwargs["ssl_cert_reqs"] == "none" and kwargs["ssl_ca_certs"] == "/ca.pem"


def test_an_embedded_redis_is_reached_on_its_unix_socket():
    """The client and the workers talk to a cluster's embedded Redis on its Unix socket
    (a round trip costs less than on loopback TCP); it listens on TCP too, under the
    address that errors name."""
    with LocalCluster(n_workers=2) as cluster, Client(cluster, progress=False) as client:
        (endpoint,) = cluster.store.endpoints
        assert endpoint.unix_socket and os.path.exists(endpoint.unix_socket)
        assert cluster.store.to_config()["mds"]["unix_socket"] == endpoint.unix_socket  # what workers get
        assert delayed(sum)([delayed(abs)(-i) for i in range(10)]).compute(scheduler=client.get) == 45
        clients = cluster.store.mds.client_list()
        blocked = [c for c in clients if c["cmd"] == "blmove"]  # each worker waiting on the queue
        assert len(blocked) == 2 and all(c["addr"].startswith(endpoint.unix_socket) for c in blocked), clients
        assert all(c["addr"].startswith(endpoint.unix_socket) for c in clients), clients
        host, port = cluster.redis_servers[0].endpoint
        assert redis.Redis(host, port, password=endpoint.password).ping()


def test_a_socket_path_too_long_leaves_redis_on_tcp(monkeypatch, tmp_path):
    """A Unix socket's path must fit in 108 bytes: under a long ``$TMPDIR`` the embedded
    Redis has none, and the cluster runs on TCP alone."""
    import tempfile

    deep = tmp_path / ("d" * 100)
    deep.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(deep))
    with LocalCluster(n_workers=1) as cluster, Client(cluster, progress=False) as client:
        assert cluster.store.endpoints[0].unix_socket is None
        assert delayed(abs)(-3).compute(scheduler=client.get) == 3


def test_workers_get_the_clusters_storage_settings(sharded):
    config = sharded.cluster.store.to_config()
    assert config["part_size"] == SMALL_PART
    assert [e["port"] for e in config["kvs"]] == [s.port for s in sharded.kvs]
    assert config["mds"]["port"] == sharded.mds.port


# -- spreading data over the shards --------------------------------------------


def job_like_keys(njobs: int = 20, ntasks: int = 5000) -> list[bytes]:
    return [Keys(f"{j:016x}").data(t).encode() for j in range(njobs) for t in range(ntasks)]


def test_keys_spread_evenly_over_the_shards(sharded):
    store = sharded.cluster.store
    keys = job_like_keys()
    counts = np.bincount(store.ring.nodes_for(keys), minlength=3)
    spread = np.abs(counts / (len(keys) / 3) - 1).max()
    print(f"key spread over 3 shards: {counts.tolist()}, worst {spread:.1%} from even")
    assert spread <= 0.20


def test_adding_a_fourth_server_moves_few_keys(sharded):
    names = [s.name for s in sharded.cluster.store.endpoints[1:]]
    keys = job_like_keys()
    before = HashRing(names, storage.RING_VNODES).nodes_for(keys)
    after = HashRing([*names, f"127.0.0.1:{free_port()}"], storage.RING_VNODES).nodes_for(keys)
    moved = sum(a != b for a, b in zip(before, after, strict=True)) / len(keys)
    print(f"adding a 4th server moved {moved:.1%} of the keys")
    assert moved <= 0.30
    assert all(b in (a, 3) for a, b in zip(before, after, strict=True))  # keys only move to the new server


def commandstats(server: RedisServer) -> dict[str, int]:
    with connect(server) as r:
        return {k: v["calls"] for k, v in r.info("commandstats").items()}


def test_results_match_a_single_server(sharded):
    graph = matmul_graph(1)
    expected = graph.compute(scheduler="sync")
    with LocalCluster(n_workers=1) as one:
        single = graph.compute(scheduler=Client(one, progress=False).get)
        assert job_keys_of(one) == []
    for s in sharded.kvs:
        with connect(s) as r:
            r.config_resetstat()
    shards = graph.compute(scheduler=Client(sharded.cluster, progress=False).get)
    np.testing.assert_array_equal(single, expected)
    np.testing.assert_array_equal(shards, single)
    sets = [commandstats(s).get("cmdstat_set", 0) for s in sharded.kvs]
    assert all(n > 0 for n in sets), f"SETs per KVS server: {sets}"


# -- large values ----------------------------------------------------------------


def test_split_values_round_trip_in_one_batch(sharded):
    store = sharded.cluster.store
    keys = Keys("splittest0000001")
    rng = np.random.default_rng(0)
    values = {0: rng.bytes(SMALL_PART * 3 + 17), 1: b"small", 2: rng.bytes(SMALL_PART), 3: rng.bytes(SMALL_PART + 1)}
    values[4] = value_parts.header(2, 99)  # looks like a header: still a value
    batch = store.batch()
    for t, v in values.items():
        batch.kvs_set(keys.data(t), v)
    batch.execute()
    with connect(sharded.mds) as r:
        parts = sorted(r.smembers(keys.parts))
    assert parts == sorted(f"{keys.data(t)}:p{i}".encode() for t, n in [(0, 4), (3, 2), (4, 1)] for i in range(n))
    holding = [s for s in sharded.kvs if any(connect(s).exists(p) for p in parts)]
    assert len(holding) > 1, "parts are spread over the ring"
    batch = store.batch()
    handles = batch.kvs_get_many([keys.data(t) for t in values])
    batch.execute()
    assert {t: bytes(batch[h]) for t, h in zip(values, handles, strict=True)} == values
    store.delete_job(keys, JobWrites(ntasks=len(values)))
    assert job_keys(sharded) == []


def test_set_many_writes_each_key_with_the_ttl_in_few_commands(sharded, monkeypatch):
    from wukong.store import batch as batches

    monkeypatch.setattr(batches, "SET_MANY_KEYS", 3)  # 6 small keys: two calls
    store = sharded.cluster.store
    keys = Keys("setmany000000001")
    values = [f"schedule {s}".encode() for s in range(7)]
    values[4] = bytes(SMALL_PART + 5)  # longer than a part: split, as set_value does
    names = [keys.schedule(s) for s in range(len(values))]
    batch = store.batch()
    batch.set_many(store.mds_index, names, values)
    assert batch.counts[store.mds_index] == 2 + 3  # the split one: its registry (SADD, EXPIRE) and header
    batch.execute()
    batch = store.batch()
    handles = [batch.get_value(store.mds_index, n) for n in names]
    batch.execute()
    assert [bytes(batch[h]) for h in handles] == values
    with connect(sharded.mds) as r:
        assert all(0 < r.ttl(n) <= store.ttl for n in names)
    store.delete_job(keys, JobWrites(ntasks=0, nschedules=len(values)))
    assert job_keys(sharded) == []


def test_schedules_written_in_many_small_pipelines_run_the_job(sharded, monkeypatch):
    from wukong import client as client_module
    from wukong.store.batch import Batch

    monkeypatch.setattr(client_module, "WRITE_BYTES", 256)  # a pipeline per few schedules
    calls = []
    real = Batch.set_many
    monkeypatch.setattr(Batch, "set_many", lambda self, *a: calls.append(len(a[1])) or real(self, *a))
    total = sum(delayed(lambda i: i * i)(i) for i in range(40))  # a __main__-like lambda: by value
    client = Client(sharded.cluster, progress=False)
    assert total.compute(scheduler=client.get) == sum(i * i for i in range(40))
    assert len(calls) > 3 and sum(calls) == client.jobs[-1].nschedules
    assert job_keys(sharded) == []


def test_a_missing_part_is_an_error_naming_its_server(sharded):
    store = sharded.cluster.store
    keys = Keys("splittest0000002")
    batch = store.batch()
    batch.kvs_set(keys.data(0), b"x" * (SMALL_PART * 2))
    batch.execute()
    part = f"{keys.data(0)}:p1"
    server = store.name_of(store.kvs_server(part))
    store.servers[store.kvs_server(part)].delete(part)
    batch = store.batch()
    batch.kvs_get_many([keys.data(0)])
    with pytest.raises(StorageError, match=f"p1.*{server}"):
        batch.execute()
    store.delete_job(keys, JobWrites(ntasks=1))


def test_results_and_intermediates_larger_than_a_part_round_trip(sharded):
    big = SMALL_PART * 5 // 8 + 1000  # float64 count: 5 parts per array

    def make(seed):
        return np.random.default_rng(seed).random(big)

    parts = [delayed(make)(i) for i in range(3)]
    total = delayed(lambda *xs: np.concatenate(xs))(*parts)  # a fan-in of split values
    out = dask.compute(total, parts[0], scheduler=Client(sharded.cluster, progress=False).get)
    expected = dask.compute(total, parts[0], scheduler="sync")
    np.testing.assert_array_equal(out[0], expected[0])
    np.testing.assert_array_equal(out[1], expected[1])


@pytest.mark.slow  # 20-30 s here; splitting is tested at a small part size above
def test_a_600mb_result_round_trips():
    size = 600 * 1024 * 1024
    with LocalCluster(n_workers=1, kvs_shards=3, shared_memory=False) as cluster:  # split over Redis, not /dev/shm

        def make():
            return np.random.default_rng(7).bytes(size)  # incompressible: 3 parts of 256 MB

        t0 = time.perf_counter()
        value = delayed(make)().compute(scheduler=Client(cluster, progress=False).get)
        elapsed = time.perf_counter() - t0
        print(f"600 MB result round trip: {elapsed:.1f} s")
        assert len(value) == size
        assert hashlib.sha256(value).digest() == hashlib.sha256(make()).digest()
        assert job_keys_of(cluster) == []


def job_keys_of(cluster: LocalCluster) -> list[bytes]:
    assert cluster.store.deleted(30), "the deletes of ended jobs still run after 30 s"
    keys = []
    for r in cluster.store.servers:
        keys += [k for k in r.scan_iter(match="wk:*", count=1000) if not k.startswith(b"wk:cluster:")]
    return keys


# -- isolation ---------------------------------------------------------------------


def test_concurrent_clients_see_only_their_own_data(sharded):
    results: dict[int, object] = {}
    errors: list[BaseException] = []

    def run(seed):
        try:
            with Client(sharded.cluster, progress=False) as c:
                results[seed] = matmul_graph(seed, n=160).compute(scheduler=c.get)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=(seed,)) for seed in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    for seed in range(4):
        np.testing.assert_array_equal(results[seed], matmul_graph(seed, n=160).compute(scheduler="sync"))


# -- failures ------------------------------------------------------------------------


def slow_tree(n: int = 16):
    def leaf(i):
        time.sleep(0.2)
        return np.full(1000, i, dtype=float)

    def pair(a, b):
        time.sleep(0.2)
        return a + b

    level = [delayed(leaf)(i) for i in range(n)]
    while len(level) > 1:
        level = [delayed(pair)(a, b) for a, b in zip(level[::2], level[1::2], strict=True)]
    return level[0]


def test_a_kvs_server_killed_mid_job_fails_it_clearly_and_the_cluster_recovers(sharded):
    victim = sharded.kvs[1]
    port, password = victim.port, victim.password
    client = Client(sharded.cluster, progress=False)
    outcome: list[BaseException | object] = []

    def run():
        try:
            outcome.append(slow_tree().compute(scheduler=client.get))
        except BaseException as e:
            outcome.append(e)

    t0 = time.monotonic()
    job = threading.Thread(target=run)
    job.start()
    time.sleep(0.5)
    victim.proc.kill()
    victim.proc.wait()
    job.join(20)
    assert not job.is_alive(), "the job hung after its KV server died"
    elapsed = time.monotonic() - t0
    (error,) = outcome
    assert isinstance(error, Exception), f"the job succeeded without its KV server: {error!r}"
    print(f"after {elapsed:.1f} s: {type(error).__name__}: {str(error)[:300]}")
    assert f"127.0.0.1:{port}" in str(error)
    assert elapsed < 10
    victim.stop()
    victim.port, victim.password = port, password
    victim.start()
    result = slow_tree(4).compute(scheduler=client.get)
    np.testing.assert_array_equal(result, np.full(1000, 6.0))
    np.testing.assert_array_equal(
        matmul_graph(3).compute(scheduler=client.get), matmul_graph(3).compute(scheduler="sync")
    )


def test_wrong_password_is_named_within_5s(redis_server):
    t0 = time.monotonic()
    with pytest.raises(StorageError, match=f"127.0.0.1:{redis_server.port}.*credentials"):
        LocalCluster(n_workers=1, redis_endpoints=[redis_server.endpoint], redis_password="wrong")
    assert time.monotonic() - t0 < 5


def test_wrong_password_on_one_shard_names_that_shard(sharded):
    good = [url(s) for s in sharded.kvs[:2]]
    bad = f"redis://:wrong@127.0.0.1:{sharded.kvs[2].port}"
    with pytest.raises(StorageError, match=f"127.0.0.1:{sharded.kvs[2].port}"):
        LocalCluster(n_workers=1, mds_endpoint=url(sharded.mds), kvs_endpoints=[*good, bad])


def test_closed_port_is_named_within_5s():
    port = free_port()
    t0 = time.monotonic()
    with pytest.raises(StorageError, match=f"cannot reach Redis at 127.0.0.1:{port}"):
        LocalCluster(n_workers=1, redis_endpoints=[("127.0.0.1", port)])
    assert time.monotonic() - t0 < 5


@pytest.fixture
def silent_server():
    """A TCP server that accepts connections and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    yield sock.getsockname()[1]
    sock.close()


def test_a_server_that_never_answers_fails_within_the_timeout(silent_server):
    t0 = time.monotonic()
    with pytest.raises(StorageError, match=f"127.0.0.1:{silent_server}"):
        LocalCluster(n_workers=1, redis_endpoints=[("127.0.0.1", silent_server)], connect_timeout=1.0)
    assert time.monotonic() - t0 < 3


def test_tls_to_a_plain_server_fails_within_the_timeout(redis_server):
    t0 = time.monotonic()
    spec = f"rediss://:{redis_server.password}@127.0.0.1:{redis_server.port}"
    with pytest.raises(StorageError, match=f"127.0.0.1:{redis_server.port} over TLS"):
        LocalCluster(n_workers=1, redis_endpoints=[spec], connect_timeout=2.0)
    assert time.monotonic() - t0 < 4


@pytest.mark.parametrize("ending", ["close", "finalizer"])
def test_a_cluster_on_an_external_redis_ends_after_its_last_deletes(ending, monkeypatch):
    # A job returns before its keys are deleted (``Store.delete_job_soon``); a cluster
    # closed, or left to its finalizer (at exit: never closed), waits for those deletes:
    # on a Redis it does not own, nothing else would delete the keys before their TTL.
    import operator

    server = RedisServer().start()
    release, deleted = threading.Event(), threading.Event()
    delete_job = Store.delete_job

    def held_back(self, keys, written, **how):
        release.wait(10)
        delete_job(self, keys, written, **how)
        deleted.set()

    monkeypatch.setattr(Store, "delete_job", held_back)
    try:
        cluster = LocalCluster(n_workers=1, mds_endpoint=url(server))
        assert Client(cluster, progress=False).get({"x": (operator.add, 1, 1)}, "x") == 2
        with connect(server) as r:
            assert any(not k.startswith(b"wk:cluster:") for k in r.scan_iter(match="wk:*"))
            timer = threading.Timer(1.5, release.set)  # later than the workers take to stop
            timer.start()
            if ending == "close":
                cluster.close()
            else:
                cluster._finalizer()
            assert deleted.is_set(), "the cluster ended before its last job's keys were deleted"
            assert [k for k in r.scan_iter(match="wk:*") if not k.startswith(b"wk:cluster:")] == []
        timer.join()
        cluster.close()
    finally:
        release.set()
        server.stop()


@pytest.mark.parametrize("held", ["deleter", "connections"])
def test_a_child_forked_while_a_store_thread_holds_its_lock_does_not_hang(held):
    """A process forked (``multiprocessing``'s ``fork``, say) at the instant the store's
    deleter thread, or a thread taking a connection, holds its lock: the child's copy of
    that lock was held for ever, and the child's first delete (or first connection)
    waited on it.  The child now starts them afresh."""
    import signal

    obj = storage._Deleter() if held == "deleter" else storage._Threads()
    lock = obj.cond if isinstance(obj, storage._Deleter) else obj.lock
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with lock:
            holding.set()
            release.wait(10)

    thread = threading.Thread(target=hold)
    thread.start()
    assert holding.wait(10)
    pid = os.fork()
    if pid == 0:  # the child: never back into pytest
        code = 3
        try:
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
            signal.alarm(10)  # a hang ends the child by SIGALRM
            if isinstance(obj, storage._Deleter):
                ran: list[int] = []
                obj.put(lambda: ran.append(1))
                code = 0 if obj.wait(5) and ran == [1] else 1
            else:
                obj.register({})
                code = 0 if obj.take(0) is None else 1
        finally:
            os._exit(code)
    release.set()
    thread.join()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, os.waitstatus_to_exitcode(status)

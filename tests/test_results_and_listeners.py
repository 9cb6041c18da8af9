"""Results that must never be silently wrong, listeners that must hold, secrets that must not leak.

Issue 12, points 9-13 and the storage half of point 5: each test is a
reproducer of what went wrong before.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import socket
import stat
import struct
import subprocess
import sys
import time

import dask
import dask.array as da
import dask.bag as db
import numpy as np
import psutil
import pytest
from conftest import children, job_keys

import wukong.graph
from wukong import Client, LocalCluster
from wukong.errors import WukongError
from wukong.graph import GraphError
from wukong.proxy.frames import HEAD_TAG, MAX_FRAME, PREFIX, pack, unpack
from wukong.store import Endpoint

# -- shuffles and stores (points 9, 10) -------------------------------------------------


def groups(pairs):
    return sorted((k, sorted(v)) for k, v in pairs)


def test_bag_groupby_built_while_a_client_is_open_returns_syncs_groups(any_client):
    bag = db.from_sequence(range(300), npartitions=6).groupby(lambda x: x % 7)  # no shuffle= given
    got = bag.compute(scheduler=any_client.get)
    assert groups(got) == groups(bag.compute(scheduler="sync"))
    assert sum(len(v) for _, v in got) == 300


def test_dataframe_shuffle_built_while_a_client_is_open_returns_syncs_rows(cluster):
    pd = pytest.importorskip("pandas")
    dd = pytest.importorskip("dask.dataframe")
    with Client(cluster, progress=False) as client:
        df = dd.from_pandas(pd.DataFrame({"a": [i % 5 for i in range(200)], "b": range(200)}), npartitions=4)
        shuffled = df.shuffle("a")
        got = shuffled.compute(scheduler=client.get)
    assert sorted(got["b"]) == list(range(200))
    for _, part in got.groupby("a"):  # each group whole in one partition's rows, as sync gives
        assert len(part) == 40


def test_a_client_makes_task_shuffles_the_default_until_the_last_one_closes(cluster, monkeypatch):
    monkeypatch.setattr(wukong.graph, "_open_clients", 0)  # as if no other client were open
    monkeypatch.setattr(wukong.graph, "_applied", {})
    with dask.config.set({"dataframe.shuffle.method": None}):
        first, second = Client(cluster, progress=False), Client(cluster, progress=False)
        assert dask.config.get("dataframe.shuffle.method") == "tasks"
        first.close()
        assert dask.config.get("dataframe.shuffle.method") == "tasks"
        with dask.config.set({"dataframe.shuffle.method": "p2p"}):  # the user's choice wins
            assert dask.config.get("dataframe.shuffle.method") == "p2p"
        second.close()
        assert dask.config.get("dataframe.shuffle.method", None) is None


def test_a_shuffle_method_the_user_chose_is_left_alone(cluster, monkeypatch):
    monkeypatch.setattr(wukong.graph, "_open_clients", 0)
    monkeypatch.setattr(wukong.graph, "_applied", {})
    with dask.config.set({"dataframe.shuffle.method": "disk"}):
        with Client(cluster, progress=False):
            assert dask.config.get("dataframe.shuffle.method") == "disk"
        assert dask.config.get("dataframe.shuffle.method") == "disk"


def test_a_disk_shuffle_is_refused_naming_its_task(client):
    bag = db.from_sequence(range(30), npartitions=3).groupby(lambda x: x % 4, shuffle="disk")
    with pytest.raises(GraphError, match=r"task \('partd-.*shuffle='tasks'"):
        bag.compute(scheduler=client.get)


@pytest.mark.parametrize("shape, chunks", [((4, 4), 2), ((400, 400), 100), ((1000,), 1000)])
def test_store_into_a_numpy_array_in_the_clients_memory_is_refused(client, shape, chunks):
    """Small targets travel inside the fused store tasks, large ones as keys of their own."""
    x = da.ones(shape, chunks=chunks)
    target = np.zeros(shape)
    with pytest.raises(GraphError, match=r"task .*store-map-.*client's memory"):
        da.store(x, target, scheduler=client.get)
    stored = da.store(x, target, compute=False)
    with pytest.raises(GraphError, match="client's memory"):
        stored.compute(scheduler=client.get)
    with pytest.raises(GraphError, match="client's memory"):
        da.store(x, target, compute=False, return_stored=True).compute(scheduler=client.get)
    assert not target.any()


class FileTarget:
    """A store target the executors can reach: each chunk written as a file in a shared directory."""

    def __init__(self, path):
        self.path = path

    def __setitem__(self, index, value):
        name = "_".join(f"{s.start}-{s.stop}" for s in index)
        np.save(os.path.join(self.path, name + ".npy"), value)


def test_store_into_a_target_the_executors_reach_fills_it(client, tmp_path):
    x = da.arange(16, chunks=4).reshape(4, 4).rechunk(2)
    da.store(x, FileTarget(str(tmp_path)), lock=False, scheduler=client.get)
    assert sorted(os.listdir(tmp_path)) == ["0-2_0-2.npy", "0-2_2-4.npy", "2-4_0-2.npy", "2-4_2-4.npy"]
    assert (np.load(tmp_path / "2-4_2-4.npy") == np.arange(16).reshape(4, 4)[2:, 2:]).all()


# -- literals longer than a Redis string (point 11) --------------------------------------


def total(a, b):
    return float(a.sum() + b.sum())


def subtract_slowly(a, b):
    time.sleep(1.0)  # so that this chain completes the fan-in, which it does not hold the schedule of
    return a - b


def test_schedules_longer_than_part_size_are_split_and_joined(any_client):
    """A schedule blob longer than ``part_size`` is split like a value: its first schedule
    (read at start-up), a fan-in's (from the fan-in reply) and the parts all round-trip."""
    from dask import delayed

    store = any_client.cluster.store
    old, store.part_size = store.part_size, 64 * 1024  # the client splits what it writes; readers join any header
    try:
        big = np.arange(100_000, dtype="float64")  # 800 kB: 13 parts per blob
        a = delayed(np.add)(big, 1)
        b = delayed(np.multiply)(big, 2)
        result = delayed(total)(a, delayed(subtract_slowly)(b, big))
        assert result.compute(scheduler=any_client.get) == float((big + 1).sum() + big.sum())
    finally:
        store.part_size = old


@pytest.mark.slow
def test_a_literal_longer_than_a_redis_string_runs():
    from dask import delayed

    with LocalCluster(n_workers=1) as cluster:
        client = Client(cluster, progress=False)
        big = np.ones(600 * 1024 * 1024 // 8)  # 600 MB, above Redis's 512 MB string limit
        assert delayed(np.sum)(big).compute(scheduler=client.get, timeout=600) == big.size
        assert job_keys(cluster) == []


# -- the proxy's listener (point 12) -----------------------------------------------------

PROXY_SECRET = "listener-test-secret"


@pytest.fixture
def proxy():
    """A standalone proxy with short limits: (host, port, process)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "wukong.cli", "proxy", "--port", "0", "--max-connections", "3"]
        + ["--idle-timeout", "1", "--frame-timeout", "1"],
        env={**os.environ, "WUKONG_PROXY_SECRET": PROXY_SECRET},
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        host, port = proc.stdout.readline().split()[1].decode().rsplit(":", 1)
        yield host, int(port), proc
    finally:
        proc.terminate()
        proc.wait(10)


def connect(proxy) -> socket.socket:
    sock = socket.create_connection(proxy[:2], timeout=10)
    return sock


def reply_of(sock: socket.socket) -> dict | None:
    """The proxy's reply frame, or None when it closed the connection without one."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return unpack(PROXY_SECRET.encode(), data)[0] if data else None


def rss_mb(proc) -> float:
    return psutil.Process(proc.pid).memory_info().rss / 2**20


def test_an_unauthenticated_length_is_refused_before_its_body_is_read(proxy):
    before = rss_mb(proxy[2])
    socks = []
    for _ in range(4):  # each claims a 256 MiB frame and sends 16 MiB of it
        sock = connect(proxy)
        sock.sendall(PREFIX.pack(MAX_FRAME, b"\0" * 32, b"\0" * 32))
        try:
            sock.sendall(b"x" * (16 * 2**20))
        except OSError:
            pass  # the proxy already answered and closed: exactly what should happen
        socks.append(sock)
    for sock in socks:
        assert reply_of(sock) == {"ok": False, "error": "authentication failed"}
        sock.close()
    assert rss_mb(proxy[2]) - before < 32  # it used to grow by ~480 MB here


def test_an_authentic_frame_above_the_cap_is_refused_unread(proxy):
    n = MAX_FRAME + 1
    head = hmac.new(PROXY_SECRET.encode(), HEAD_TAG + struct.pack("!I", n), hashlib.sha256).digest()
    with connect(proxy) as sock:
        sock.sendall(PREFIX.pack(n, head, b"\0" * 32))
        assert "exceeds the limit" in reply_of(sock)["error"]


def test_an_idle_connection_is_closed(proxy):
    with connect(proxy) as sock:
        t0 = time.monotonic()
        assert reply_of(sock) is None  # closed without a word
        assert time.monotonic() - t0 < 8


def test_a_half_sent_frame_is_answered_and_closed(proxy):
    frame = pack(PROXY_SECRET.encode(), {"op": "stats"})
    with connect(proxy) as sock:
        sock.sendall(frame[:-3])
        t0 = time.monotonic()
        assert reply_of(sock) == {"ok": False, "error": "frame not received within 1s"}
        assert time.monotonic() - t0 < 8


def test_connections_beyond_the_cap_are_refused_and_the_proxy_keeps_serving(proxy):
    held = [connect(proxy) for _ in range(3)]
    time.sleep(0.2)  # let the proxy accept them
    with connect(proxy) as sock:
        assert reply_of(sock) == {"ok": False, "error": "too many connections (3)"}
    for sock in held:
        sock.close()
    time.sleep(0.2)
    with connect(proxy) as sock:
        sock.sendall(pack(PROXY_SECRET.encode(), {"op": "stats"}))
        sock.shutdown(socket.SHUT_WR)
        assert reply_of(sock)["ok"] is True


# -- wukong lambda-local's HTTP listener (point 12) --------------------------------------


@pytest.fixture(scope="module")
def lambda_local():
    from wukong.lambda_local import LambdaLocal

    with LambdaLocal({"f": "wukong.backends.aws_lambda:handler"}, workers=1, idle_timeout=1, read_timeout=1) as lam:
        yield lam


def http(lam, data: bytes) -> bytes:
    """What the endpoint answers to raw ``data`` before it closes the connection."""
    host, port = lam.url.split("//")[1].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(data)
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
    return out


@pytest.mark.parametrize(
    "request_line", [b"GARBAGE\r\n\r\n", b"POST /x\r\n\r\n", b"\x16\x03\x01 TLS hello HTTP/9\r\n\r\n"]
)
def test_lambda_local_answers_a_malformed_request_line_with_400(lambda_local, request_line):
    assert http(lambda_local, request_line).startswith(b"HTTP/1.1 400 ")


@pytest.mark.parametrize("length", [b"abc", b"-5", b"1, 2", b""])
def test_lambda_local_answers_a_malformed_content_length_with_400(lambda_local, length):
    request = b"POST /2015-03-31/functions/f/invocations HTTP/1.1\r\nContent-Length: " + length + b"\r\n\r\n{}"
    reply = http(lambda_local, request)
    assert reply.startswith(b"HTTP/1.1 400 ") and b"Content-Length" in reply


def test_lambda_local_answers_a_half_sent_request_with_408(lambda_local):
    t0 = time.monotonic()
    request = b"POST /2015-03-31/functions/f/invocations HTTP/1.1\r\nContent-Length: 100\r\n\r\n{"
    assert http(lambda_local, request).startswith(b"HTTP/1.1 408 ")
    assert time.monotonic() - t0 < 8


def test_lambda_local_closes_an_idle_connection(lambda_local):
    t0 = time.monotonic()
    assert http(lambda_local, b"") == b""
    assert time.monotonic() - t0 < 8
    dry = b"POST /2015-03-31/functions/f/invocations HTTP/1.1\r\nX-Amz-Invocation-Type: DryRun\r\n"
    assert http(lambda_local, dry + b"Connection: close\r\n\r\n").startswith(b"HTTP/1.1 204 ")  # still serving


# -- secrets (point 13) ----------------------------------------------------------------


def cmdlines() -> dict[int, str]:
    out = {}
    for p in children():
        try:
            out[p.pid] = open(f"/proc/{p.pid}/cmdline", "rb").read().replace(b"\0", b" ").decode()
        except OSError:
            pass
    return out


def test_the_redis_password_is_in_no_childs_argv():
    with LocalCluster(n_workers=2, kvs_shards=2, use_local_proxy=True) as cluster:
        password = cluster.store.endpoints[0].password
        assert password
        lines = cmdlines()
        assert len(lines) >= 5  # two redis-servers, two workers, the proxy
        assert [cmd for cmd in lines.values() if password in cmd] == []
        assert any("redis-server" in cmd for cmd in lines.values())


@pytest.mark.parametrize(
    "url",
    ["http://user:s3cret-pw@host:6379/0", "redis://user:s3cret-pw@host:notaport/0", "redis://:s3cret-pw@host:1/x"],
)
def test_a_bad_redis_url_is_named_without_its_password(url):
    with pytest.raises(ValueError) as info:
        Endpoint.parse(url)
    assert "s3cret-pw" not in str(info.value)
    assert "host" in str(info.value) and "***" in str(info.value)


def test_the_proxy_refuses_a_password_on_its_command_line():
    run = subprocess.run(
        [sys.executable, "-m", "wukong.cli", "proxy", "--port", "0", "--redis", "redis://:s3cret-pw@127.0.0.1:1"],
        env={**os.environ, "WUKONG_PROXY_SECRET": "x"},
        capture_output=True,
        timeout=60,
    )
    assert run.returncode == 2
    assert b"WUKONG_PROXY_REDIS" in run.stderr and b"s3cret-pw" not in run.stderr


def test_the_proxy_reads_its_redis_url_from_the_environment(redis_server):
    url = f"redis://:{redis_server.password}@127.0.0.1:{redis_server.port}/0"
    proc = subprocess.Popen(
        [sys.executable, "-m", "wukong.cli", "proxy", "--port", "0"],
        env={**os.environ, "WUKONG_PROXY_SECRET": "x", "WUKONG_PROXY_REDIS": url},
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith(b"listening")  # it checked the store at start-up
        assert redis_server.password not in " ".join(psutil.Process(proc.pid).cmdline())
    finally:
        proc.terminate()
        proc.wait(10)


# -- an embedded redis-server that never becomes ready (point 5) ---------------------------


def test_a_redis_server_that_hangs_fails_the_cluster_by_the_clock(tmp_path, monkeypatch):
    fake = tmp_path / "redis-server"
    fake.write_text("#!/bin/sh\necho 'starting, but never ready'\nexec sleep 600\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("WUKONG_REDIS_SERVER", str(fake))
    before = {p.pid for p in children()}
    t0 = time.monotonic()
    with pytest.raises(WukongError, match=r"not ready after 1s .*never ready"):
        LocalCluster(n_workers=1, startup_timeout=1.0)
    assert time.monotonic() - t0 < 8
    left = [p for p in children() if p.pid not in before and p.status() != psutil.STATUS_ZOMBIE]
    assert left == []

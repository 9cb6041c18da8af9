"""The fan-out proxy: wide fan-outs go through it, and a job never depends on it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import psutil
import pytest
from dask import delayed

from wukong import Client, LocalCluster
from wukong.process import spawn, stop
from wukong.protocol import Invocation, Keys, decode_invocation
from wukong.proxy.client import ProxyClient
from wukong.proxy.frames import SECRET_ENV, ProxyError, pack, unpack

try:
    from .conftest import children, job_keys, lambda_local
    from .test_lambda_backend import AWS_ENV, HANDLER, lambda_cluster
except ImportError:
    from conftest import children, job_keys, lambda_local
    from test_lambda_backend import AWS_ENV, HANDLER, lambda_cluster


FANOUT = 16  # max_task_fanout of these clusters


def add(x, i):
    return x + i


def total(*xs):
    return sum(xs)


def fan_out(n, start=1):
    """One root, ``n`` children of it, one sum of them all."""
    root = delayed(add)(start, 0)
    return delayed(total)(*[delayed(add)(root, i) for i in range(n)])


def expected(n, start=1):
    return sum(start + i for i in range(n))


def stats(cluster) -> dict:
    return ProxyClient(cluster.proxy["address"], cluster.proxy["secret"], {}, cluster.store).stats()


@pytest.fixture(scope="module")
def cluster():
    with LocalCluster(n_workers=2, use_local_proxy=True, max_task_fanout=FANOUT) as c:
        yield c


@pytest.fixture
def client(cluster):
    yield Client(cluster, progress=False)
    assert job_keys(cluster) == [], "a job left keys behind"


# The root "becomes" one child and invokes the other n - 1.
@pytest.mark.parametrize("n", [1, FANOUT - 1, FANOUT, FANOUT + 1, 5000])
def test_fan_out_gives_the_right_result(client, cluster, n):
    served = stats(cluster)["served"]
    assert fan_out(n).compute(scheduler=client.get) == expected(n)
    assert stats(cluster)["served"] - served == (1 if n - 1 >= FANOUT else 0)


def test_large_parent_output_travels_through_the_kv_store(client, cluster):
    big = b"x" * (cluster.inline_limit + 1)
    kids = [delayed(lambda b, i: len(b) + i)(delayed(bytes)(big), i) for i in range(FANOUT + 4)]
    assert delayed(total)(*kids).compute(scheduler=client.get) == sum(len(big) + i for i in range(FANOUT + 4))


def test_a_fan_out_is_started_once_by_whoever_claims_it(cluster):
    queue, job = "wk:cluster:claim-test:q", "claim-test"
    route = {"backend": "local", "store": cluster.store.to_config(), "queue": queue}
    proxy = ProxyClient(cluster.proxy["address"], cluster.proxy["secret"], route, cluster.store)
    invs = [Invocation(job, 1, i, {0: b"parent"}, ()) for i in range(3)]
    try:
        assert proxy.request(job, 0, "c1", invs) == 3
        assert not proxy.claim(job, "c1")  # an executor that lost the reply finds it done
        proxy.request(job, 0, "c1", invs)  # a replay pushes nothing
        assert proxy.claim(job, "c2")  # the executor gave up first: the proxy must not push
        proxy.request(job, 0, "c2", invs)
        assert [decode_invocation(b) for b in cluster.store.mds.lrange(queue, 0, -1)] == invs
    finally:
        cluster.store.mds.delete(queue, Keys(job).parts)


def raw_request(address: str, data: bytes) -> bytes:
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    return reply


def read_reply(secret: str, reply: bytes) -> dict:
    header, _ = unpack(secret.encode(), reply)
    return header


@pytest.mark.parametrize("data", [b"garbage, not a frame", b"\x00\x00\x00\x05abc", b"\xff" * 64])
def test_garbage_gets_an_error_and_the_proxy_keeps_serving(client, cluster, data):
    reply = read_reply(cluster.proxy["secret"], raw_request(cluster.proxy["address"], data))
    assert reply["ok"] is False and reply["error"]
    assert fan_out(FANOUT + 3).compute(scheduler=client.get) == expected(FANOUT + 3)


def test_wrong_secret_is_refused(client, cluster):
    frame = pack(b"not the secret", {"op": "stats"})
    reply = read_reply(cluster.proxy["secret"], raw_request(cluster.proxy["address"], frame))
    assert reply == {"ok": False, "error": "authentication failed"}
    with pytest.raises(ProxyError, match="authentication failed"):
        ProxyClient(cluster.proxy["address"], "wrong", {}, cluster.store).stats()
    assert fan_out(FANOUT + 3).compute(scheduler=client.get) == expected(FANOUT + 3)


def test_a_failing_request_does_not_stop_the_proxy(client, cluster):
    proxy = ProxyClient(cluster.proxy["address"], cluster.proxy["secret"], {"backend": "nowhere"}, cluster.store)
    with pytest.raises(ProxyError, match="unknown route"):
        proxy.request("nojob", 0, "wk:nojob:px:0", [])
    with pytest.raises(ProxyError, match="KeyError"):  # authenticated but malformed
        proxy.roundtrip(pack(cluster.proxy["secret"].encode(), {"job": "x"}))
    assert proxy.stats()["ok"]  # the same connection still works
    assert fan_out(FANOUT + 3).compute(scheduler=client.get) == expected(FANOUT + 3)


def test_proxy_killed_before_the_job_falls_back(capfd):
    with LocalCluster(n_workers=2, use_local_proxy=True, max_task_fanout=FANOUT) as cluster:
        cluster.local_proxy.proc.kill()
        cluster.local_proxy.proc.wait()
        with Client(cluster, progress=False) as client:
            assert fan_out(300).compute(scheduler=client.get) == expected(300)
        assert job_keys(cluster) == []
    assert "invoking directly" in capfd.readouterr().err


def stages(k, width):
    """``k`` fan-outs one after the other: each stage's root is the previous stage's sum."""
    x = delayed(add)(0, 1)
    for _ in range(k):
        x = delayed(total)(*[delayed(add)(x, i) for i in range(width)])
    return x


def stages_expected(k, width):
    x = 1
    for _ in range(k):
        x = sum(x + i for i in range(width))
    return x


def test_proxy_killed_mid_job_falls_back():
    k, width = 12, 200
    with LocalCluster(n_workers=2, use_local_proxy=True, max_task_fanout=FANOUT) as cluster:
        pid = cluster.local_proxy.pid
        killed = threading.Event()

        def kill_after_two_fan_outs():
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if stats(cluster)["served"] >= 2:
                    os.kill(pid, signal.SIGKILL)
                    killed.set()
                    return
                time.sleep(0.002)

        t = threading.Thread(target=kill_after_two_fan_outs)
        t.start()
        with Client(cluster, progress=False) as client:
            assert stages(k, width).compute(scheduler=client.get) == stages_expected(k, width)
        t.join()
        assert killed.is_set()
        assert job_keys(cluster) == []
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_cluster_close_leaves_no_proxy_process():
    before = {p.pid for p in children()}
    cluster = LocalCluster(n_workers=1, use_local_proxy=True)
    pid = cluster.local_proxy.pid
    assert pid in {p.pid for p in children()}
    cluster.close()
    assert {p.pid for p in children()} <= before


def test_standalone_proxy_by_address(monkeypatch):
    secret = "s3cret-for-this-test"
    proc = spawn(
        [sys.executable, "-m", "wukong.cli", "proxy", "--port", "0"],
        stdout=subprocess.PIPE,
        env={**os.environ, SECRET_ENV: secret},
    )
    try:
        address = proc.stdout.readline().decode().split()[1]
        monkeypatch.setenv(SECRET_ENV, secret)
        with LocalCluster(n_workers=2, proxy_address=address, max_task_fanout=FANOUT) as cluster:
            with Client(cluster, progress=False) as client:
                assert fan_out(100).compute(scheduler=client.get) == expected(100)
            assert stats(cluster)["served"] == 1
            assert job_keys(cluster) == []
    finally:
        proc.stdout.close()
        stop([proc])


def test_lambda_backend_fan_out_through_the_proxy(monkeypatch):
    for k, v in AWS_ENV.items():
        monkeypatch.setenv(k, v)
    with lambda_local(HANDLER, workers=3) as lam:
        # the proxy reads Redis's password from the secret, as the functions do
        monkeypatch.setenv("WUKONG_REDIS_SECRET_ARN", lam.cluster_options["redis_secret_arn"])
        monkeypatch.setenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", lam.url)
        with lambda_cluster(lam, use_local_proxy=True, max_task_fanout=FANOUT) as cluster:
            lam.put_secret("wukong-proxy", cluster.proxy["secret"])  # the functions' WUKONG_PROXY_SECRET_ARN
            with Client(cluster, progress=False) as client:
                assert fan_out(120).compute(scheduler=client.get) == expected(120)
                assert stats(cluster)["served"] == 1
            assert job_keys(cluster) == []
        # A new proxy under the same secret ARN, with a new secret: the warm functions kept
        # the old one, are refused once, read the secret again and go through the new proxy
        # (before, they fell back to invoking directly for the life of the container).
        with lambda_cluster(lam, use_local_proxy=True, max_task_fanout=FANOUT) as cluster:
            lam.put_secret("wukong-proxy", cluster.proxy["secret"])
            with Client(cluster, progress=False) as client:
                assert fan_out(120).compute(scheduler=client.get) == expected(120)
                assert stats(cluster)["served"] == 1
                assert stats(cluster)["refused"] >= 1  # the kept secret's request
            assert job_keys(cluster) == []

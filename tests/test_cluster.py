"""Cluster life cycle: start-up errors, and no process left behind."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from wukong import Client, LocalCluster, StorageError, WukongError
from wukong.store.server import free_port


def test_close_leaves_no_process():
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    cluster = LocalCluster(n_workers=2)
    assert len(psutil.Process().children(recursive=True)) >= 3  # redis + 2 workers
    with Client(cluster, progress=False) as client:
        assert client.get({"x": 1, "y": (sum, ["x", "x"])}, "y") == 2
    cluster.close()
    cluster.close()  # idempotent
    assert {p.pid for p in psutil.Process().children(recursive=True)} - before == set()


SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    from wukong import LocalCluster
    cluster = LocalCluster(n_workers=2)
    import psutil
    print(" ".join(str(p.pid) for p in psutil.Process().children(recursive=True)), flush=True)
    if sys.argv[1] == "exit":
        sys.exit(0)
    time.sleep(60)
    """
)


def _gone(pids, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        if not alive:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("how", ["exit", "sigint", "sigkill"])
def test_no_orphans_when_the_user_process_ends(how):
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, how], stdout=subprocess.PIPE, text=True)
    pids = [int(p) for p in proc.stdout.readline().split()]
    assert len(pids) >= 3
    if how == "sigint":
        proc.send_signal(signal.SIGINT)  # Ctrl-C
    elif how == "sigkill":
        proc.kill()
    proc.wait(15)
    assert _gone(pids), f"children left running after {how}"


def test_unreachable_redis_named_quickly():
    port = free_port()
    t = time.monotonic()
    with pytest.raises(StorageError, match=f"127.0.0.1:{port}"):
        LocalCluster(redis_endpoints=[("127.0.0.1", port)], n_workers=1)
    assert time.monotonic() - t < 5


def test_wrong_password_named(redis_server):
    host, port = redis_server.endpoint
    with pytest.raises(StorageError, match=f"{host}:{port}"):
        LocalCluster(redis_endpoints=[(host, port)], redis_password="wrong", n_workers=1)


def test_existing_redis_is_used_and_left_clean(redis_server):
    host, port = redis_server.endpoint
    with LocalCluster(redis_endpoints=[(host, port)], redis_password=redis_server.password, n_workers=1) as c:
        assert Client(c, progress=False).get({"a": 2, "b": (pow, "a", 10)}, "b") == 1024
    import redis

    r = redis.Redis(host, port, password=redis_server.password)
    assert r.keys("wk:*") == []


def test_missing_redis_server_binary_says_how_to_install(monkeypatch):
    monkeypatch.setenv("WUKONG_REDIS_SERVER", "/nonexistent/redis-server")
    monkeypatch.setenv("PATH", "/nonexistent")
    import wukong.store.server as rs

    monkeypatch.setattr(rs.os, "access", lambda p, mode: False)
    with pytest.raises(WukongError, match="apt-get install redis-server"):
        LocalCluster(n_workers=1)


def test_worker_killed_mid_job_fails_the_job_clearly(cluster):
    client = Client(cluster, progress=False)

    def suicide(x):
        os.kill(os.getpid(), signal.SIGKILL)

    with pytest.raises(WukongError, match="died"):
        client.get({"a": 1, "b": (suicide, "a")}, "b")
    # the worker was replaced: the cluster still runs jobs
    assert client.get({"a": 1, "b": (abs, "a")}, "b") == 1

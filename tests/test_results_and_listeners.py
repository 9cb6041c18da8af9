"""Results that must never be silently wrong, listeners that must hold, secrets that must not leak.

Issue 12, points 9-13 and the storage half of point 5: each test is a
reproducer of what went wrong before.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time

import psutil
import pytest
from conftest import children

from wukong import LocalCluster
from wukong.errors import WukongError
from wukong.store import Endpoint

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

"""Shared fixtures: real clusters with embedded Redis, and hygiene checks.

Every test that runs a job gets, afterwards, a check that no key of any job
is left in the cluster's Redis (``wk:<job>:...``; the cluster's own queue keys
``wk:cluster:...`` live as long as the cluster).
"""

from __future__ import annotations

import os

import psutil
import pytest

from wukong import Client, LocalCluster
from wukong.redis_server import RedisServer


def job_keys(cluster: LocalCluster) -> list[bytes]:
    keys = []
    for r in cluster.store.servers:
        keys += [k for k in r.scan_iter(match="wk:*", count=1000) if not k.startswith(b"wk:cluster:")]
    return keys


@pytest.fixture(scope="session")
def cluster():
    with LocalCluster(n_workers=2) as c:
        yield c


@pytest.fixture
def client(cluster):
    yield Client(cluster, progress=False)
    assert job_keys(cluster) == [], "a job left keys behind"


@pytest.fixture
def redis_server():
    with RedisServer() as server:
        yield server


def children() -> list[psutil.Process]:
    return psutil.Process(os.getpid()).children(recursive=True)

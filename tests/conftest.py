"""Shared fixtures: real clusters with embedded Redis, and hygiene checks.

Every test that runs a job gets, afterwards, a check that no key of any job
is left in the cluster's Redis (``wk:<job>:...``; the cluster's own queue keys
``wk:cluster:...`` live as long as the cluster).
"""

from __future__ import annotations

import json
import os
import signal
import time
from contextlib import contextmanager

import dask
import psutil
import pytest
from hypothesis import strategies as st

from wukong import Client, LocalCluster
from wukong.store import shm
from wukong.store.server import RedisServer

# Ctrl-C is tested (in this process and in the scripts it starts): a run started in the
# background (``nohup``, ``cmd &``) inherits SIGINT ignored, and would leave those tests a
# signal that nobody sees -- and a script holding the GIL running forever.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


# Tests of spread jobs run the same tiny tasks again and again: learned durations would
# make most of them solo (``wukong.durations``) and leave the spread paths untested.
# ``tests/test_solo.py`` turns it on; Dask's suites and the example scripts keep it on.
dask.config.set({"wukong.solo-work": None})


def job_keys(cluster: LocalCluster) -> list[bytes]:
    """The jobs' keys on the cluster's servers, once the deletes of ended jobs are done
    (``Store.delete_job_soon``)."""
    assert cluster.store.deleted(30), "the deletes of ended jobs still run after 30 s"
    keys = []
    for r in cluster.store.servers:
        keys += [k for k in r.scan_iter(match="wk:*", count=1000) if not k.startswith(b"wk:cluster:")]
    return keys


def job_files(cluster: LocalCluster) -> list[str]:
    """The cluster's shared-memory files of jobs (the pool of files kept for reuse aside)."""
    assert cluster.store.deleted(30), "the deletes of ended jobs still run after 30 s"
    return sorted(set(os.listdir(cluster.shm_dir)) - {shm.POOL})


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


def argv_and_environments(procs: list[psutil.Process]) -> list[str]:
    """Each process's command line and environment, as one string; a process that ended
    meanwhile (gone, or a zombie not yet reaped) has neither any more and is left out."""
    seen = []
    for p in procs:
        try:
            seen.append(" ".join(p.cmdline()) + repr(p.environ()))
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return seen


AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


def secret_arn(name: str) -> str:
    """The ARN ``LambdaLocal.put_secret(name, ...)`` gives (its default region and account)."""
    return f"arn:aws:secretsmanager:us-east-1:123456789012:secret:{name}"


REDIS_SECRET_ARN = secret_arn("wukong-redis")
PROXY_SECRET_ARN = secret_arn("wukong-proxy")


@contextmanager
def lambda_local(functions: dict, **kwargs):
    """A Lambda-compatible endpoint and a private Redis whose credentials live, as on
    AWS, only in a secret: the functions are configured with its ARN
    (``WUKONG_REDIS_SECRET_ARN``) and read it from the endpoint's Secrets Manager
    stand-in; so does the client.  ``lam.cluster_options``: ``LocalCluster`` kwargs."""
    from wukong.lambda_local import LambdaLocal
    from wukong.store.credentials import PROXY_SECRET_ARN_ENV, SECRET_ARN_ENV

    env = {**AWS_ENV, SECRET_ARN_ENV: REDIS_SECRET_ARN, PROXY_SECRET_ARN_ENV: PROXY_SECRET_ARN}
    with RedisServer() as redis, LambdaLocal(functions, env=env, **kwargs) as lam:
        old = {k: os.environ.get(k) for k in [*AWS_ENV, "AWS_ENDPOINT_URL_SECRETS_MANAGER"]}
        os.environ.update({**AWS_ENV, "AWS_ENDPOINT_URL_SECRETS_MANAGER": lam.url})
        try:
            arn = lam.put_secret("wukong-redis", json.dumps({"username": None, "password": redis.password}))
            lam.cluster_options = {"redis_endpoints": [redis.endpoint], "redis_secret_arn": arn}
            lam.redis = redis
            yield lam
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


@pytest.fixture(scope="session")
def lambda_cluster():
    """The lambda backend through boto3 against a Lambda-compatible endpoint on loopback."""
    with lambda_local({"wukong-executor": "wukong.backends.aws_lambda:handler"}, workers=2) as lam:
        options = {"endpoint_url": lam.url, "region": "us-east-1", "num_lambda_invokers": 4}
        with LocalCluster(backend="lambda", **options, **lam.cluster_options) as c:
            yield c


@pytest.fixture(params=["local", "lambda"])
def any_client(request):
    """A client on each backend: the test runs once per backend."""
    cluster = request.getfixturevalue("cluster" if request.param == "local" else "lambda_cluster")
    yield Client(cluster, progress=False)
    assert job_keys(cluster) == [], "a job left keys behind"


def pytest_sessionfinish(session, exitstatus):
    """After every fixture is torn down, no process we started may be left."""
    left = [p for p in children() if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    if left:
        print(f"\nleftover child processes: {[(p.pid, p.name(), p.cmdline()[:3]) for p in left]}")
        session.exitstatus = 1


def combine(i, *parents):
    """A task of the random DAGs: depends on every parent's value and on its position."""
    return (i * 7 + sum(p * (j + 1) for j, p in enumerate(parents))) % 1_000_003


@st.composite
def dags(draw, max_tasks=300, max_parents=6, max_outputs=5):
    """Random DAGs with fan-ins and fan-outs, as legacy dicts, and some keys to compute."""
    n = draw(st.integers(1, max_tasks))
    dsk = {}
    for i in range(n):
        k = draw(st.integers(0, min(i, max_parents)))
        parents = sorted(draw(st.sets(st.integers(0, i - 1), min_size=k, max_size=k))) if i else []
        dsk[f"t{i}"] = (combine, i, *[f"t{p}" for p in parents])
    outputs = draw(st.lists(st.sampled_from(sorted(dsk)), min_size=1, max_size=max_outputs, unique=True))
    return dsk, outputs


def wait_until(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {predicate}")
        time.sleep(0.005)

"""Wide launches through a tree of invocations (``wukong.backends.invoker_tree``),
end to end through botocore against ``LambdaLocal``."""

from __future__ import annotations

import os

import pytest
from dask import delayed

from tests.conftest import job_keys, lambda_local
from wukong import Client, LocalCluster
from wukong.backends import invoker_tree

FUNCTION = "wukong-executor"
HANDLERS = {FUNCTION: "wukong.backends.aws_lambda:handler", "noop": "tests.lambda_handlers:noop"}
LEASE_MS = 1000


@pytest.fixture(scope="module")
def lam():
    """lambda-local whose functions read Redis's credentials from a secret (conftest.lambda_local)."""
    with lambda_local(HANDLERS, workers=2) as server:
        yield server


def record_start(path: str, i: int) -> int:
    """A leaf: appends its index to ``path`` (one line per run of the task)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, f"{i}\n".encode())
    finally:
        os.close(fd)
    return i


def total(*xs: int) -> int:
    return sum(xs)


def leaves_job(path: str, n: int):
    return delayed(total)(*[delayed(record_start)(path, i) for i in range(n)])


def starts(path: str) -> list[int]:
    with open(path) as f:
        return sorted(int(line) for line in f.read().split())


def lambda_cluster(lam, **kwargs):
    options = {"region": "us-east-1", "endpoint_url": lam.url, "function_name": FUNCTION}
    return LocalCluster(backend="lambda", **options, **lam.cluster_options, **kwargs)


# -- the shape ----------------------------------------------------------------------------


def test_narrow_launches_are_direct_and_wide_ones_a_tree():
    # 50 ms per invoke, 64 in flight, a node starts in 50 ms
    assert invoker_tree.branching(64, 0.05, 64, 0.0002, 0.05) is None
    b = invoker_tree.branching(1000, 0.05, 64, 0.0002, 0.05)
    assert b is not None and 2 <= b <= 64
    assert invoker_tree.branching(100_000, 0.05, 64, 0.0002, 0.05) <= 64
    # the slower the invoke, the earlier a tree pays
    assert invoker_tree.branching(200, 0.5, 16, 0.0013, 0.05) is not None
    assert invoker_tree.branching(200, 0.001, 16, 0.0002, 0.05) is None
    # CPU-bound invokers (boto3: ~1.3 ms each) share the work out
    assert invoker_tree.branching(200, 0.001, 16, 0.0013, 0.05) is not None


def test_split_keeps_every_item_once_in_at_most_b_groups():
    items = [[str(i), {}] for i in range(103)]
    groups = invoker_tree.split(items, 10)
    assert len(groups) == 10 and [x for g in groups for x in g] == items
    assert max(map(len, groups)) - min(map(len, groups)) <= 1
    assert invoker_tree.split(items[:3], 10) == [[x] for x in items[:3]]


# -- end to end ------------------------------------------------------------------------------


def test_every_leaf_starts_once_and_the_client_sends_branching_requests(lam, tmp_path):
    path = str(tmp_path / "starts")
    with lambda_cluster(lam, invoker_tree_branching=4) as cluster:
        client = Client(cluster, progress=False)
        before = lam.stats()["invocations"]
        assert leaves_job(path, 120).compute(scheduler=client.get) == sum(range(120))
        invoker = cluster.backend.invoker
        assert invoker.tree_events == 4 and invoker.invoked == 4  # not 120
        # nodes hand on until their share is at most 4: 4 of 30, 16 of 7-8, 64 of 1-2, then the leaves
        probe = 1  # the version check's probe, once per cluster (wukong.versions)
        assert lam.stats()["invocations"] - before == probe + 4 + 16 + 64 + 120
        assert job_keys(cluster) == []
    assert starts(path) == list(range(120))


@pytest.mark.parametrize(
    "faults",
    [
        {"duplicate": 1.0, "seed": 1},
        {"drop": 0.2, "seed": 2},
        {"invoker_crash": 0.5, "seed": 3},
        {"invoker_crash": 0.3, "duplicate": 0.5, "drop": 0.1, "seed": 4},
    ],
    ids=["duplicate", "drop", "invoker_crash", "all"],
)
def test_every_leaf_starts_exactly_once_under_faults(lam, tmp_path, faults):
    # one level of 8 nodes; a lost leaf is sent again (directly, or through a new tree) until it starts.
    # Which node draws a crash depends on which process runs it, so a job may see none: with
    # invoker crashes the job runs again (each time checked) until a node has died.
    crashed = False
    with lambda_cluster(
        lam, invoker_tree_branching=8, faults=faults, lease_ms=LEASE_MS, max_attempts=20, start_grace=0.5
    ) as cluster:
        client = Client(cluster, progress=False)
        for attempt in range(5):
            path = str(tmp_path / f"starts{attempt}")
            before = lam.stats()
            assert leaves_job(path, 60).compute(scheduler=client.get) == sum(range(60))
            after = lam.stats()
            assert job_keys(cluster) == []
            assert starts(path) == list(range(60))
            if faults.get("duplicate") == 1.0:  # every node sent every leaf twice: 8 nodes + 120 deliveries
                assert after["invocations"] - before["invocations"] == 1 + 8 + 120  # + the version probe
            crashed = crashed or after["errors"] > before["errors"]
            if crashed or not faults.get("invoker_crash"):
                break
    if faults.get("invoker_crash"):  # some node died, and its leaves were sent again
        assert crashed


def test_a_wide_fan_out_through_the_proxy_uses_the_tree(lam, tmp_path, monkeypatch):
    path = str(tmp_path / "starts")
    # the proxy reads Redis's password from the secret, as the functions do
    monkeypatch.setenv("WUKONG_REDIS_SECRET_ARN", lam.cluster_options["redis_secret_arn"])
    monkeypatch.setenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", lam.url)
    with lambda_cluster(lam, invoker_tree_branching=4, use_local_proxy=True, max_task_fanout=8) as cluster:
        lam.put_secret("wukong-proxy", cluster.proxy["secret"])  # the functions' WUKONG_PROXY_SECRET_ARN
        client = Client(cluster, progress=False)
        root = delayed(record_start)(path, -1)
        children = [delayed(record_start)(path, i + 0 * root) for i in range(40)]  # noqa: B023
        before = lam.stats()["invocations"]
        assert delayed(total)(*children).compute(scheduler=client.get) == sum(range(40))
        # 1 leaf + 39 children invoked through 4 nodes handing on to sub-nodes (39 > 4 * 4)
        assert lam.stats()["invocations"] - before > 1 + 39
        assert job_keys(cluster) == []
    assert starts(path) == [-1, *range(40)]

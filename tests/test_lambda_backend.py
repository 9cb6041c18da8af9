"""The lambda backend, end to end through the real boto3 client against ``LambdaLocal``."""

from __future__ import annotations

import contextlib
import operator
import os

import dask
import dask.array as da
import numpy as np
import pytest
from dask import delayed

from wukong import Client, JobFailed, LocalCluster
from wukong.cost import job_cost
from wukong.demo import add_values, decr, double, incr

try:
    from .conftest import argv_and_environments, children, job_keys, lambda_local
    from .lambda_handlers import nap
except ImportError:
    from conftest import argv_and_environments, children, job_keys, lambda_local
    from lambda_handlers import nap

from wukong.lambda_local import LambdaLocal

FUNCTION = "wukong-executor"
HANDLER = {FUNCTION: "wukong.backends.aws_lambda:handler"}
# Fake credentials: LambdaLocal does not check signatures, botocore needs something to sign with.
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


@pytest.fixture(scope="module", autouse=True)
def aws_env():
    old = {k: os.environ.get(k) for k in AWS_ENV}
    os.environ.update(AWS_ENV)
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def lam(aws_env):
    with lambda_local(HANDLER, workers=2) as server:
        yield server


def lambda_cluster(lam, **kwargs):
    kwargs.setdefault("function_name", FUNCTION)
    kwargs.setdefault("num_lambda_invokers", 4)
    options = {**lam.cluster_options, **kwargs}  # Redis credentials from the secret, as on AWS
    return LocalCluster(backend="lambda", region="us-east-1", endpoint_url=lam.url, **options)


@pytest.fixture(scope="module")
def cluster(lam):
    with lambda_cluster(lam) as c:
        yield c


@pytest.fixture
def client(cluster):
    yield Client(cluster, progress=False)
    assert job_keys(cluster) == [], "a job left keys behind"


def tree_sum(n):
    L = range(n)
    while len(L) > 1:
        L = list(map(delayed(operator.add), L[0::2], L[1::2]))
    return L[0]


def _same(x, y):
    np.testing.assert_allclose(x, y, rtol=1e-8, atol=1e-8)


# -- the seed examples ---------------------------------------------------------------


def test_lambda_cluster_starts_no_local_workers(cluster):
    assert cluster.backend.name == "lambda" and cluster.backend.children == [] and cluster.n_workers == 0
    assert "lambda" in repr(cluster)


def test_no_event_log_line_argv_or_environment_holds_the_password(capfd):
    """The Redis password lives in the secret only: the client and every function read it there."""
    with lambda_local(HANDLER, workers=2) as lam:
        password = lam.redis.password
        bodies: list[bytes] = []
        invoke = lam._invoke

        async def recording(name, qualifier, headers, body, length):  # every event, the executors' too
            bodies.append(bytes(body))
            return await invoke(name, qualifier, headers, body, length)

        lam._invoke = recording
        with lambda_cluster(lam) as cluster:
            client = Client(cluster, progress=False)
            assert tree_sum(64).compute(scheduler=client.get) == sum(range(64))
            procs = children()
            seen = argv_and_environments(procs)
        assert len(bodies) > 8 and lam.stats()["secret_reads"] >= 2  # the client's, and each container's
    out, err = capfd.readouterr()
    assert procs and all(password not in s for s in seen)
    assert not any(password.encode() in b for b in bodies)
    assert password not in out + err


def test_warm_functions_log_in_again_once_the_redis_secret_is_rotated():
    """A rotated secret (a new password on Redis and in Secrets Manager): the warm
    containers kept the old one, and Redis dropped their connections (an idle timeout,
    a failover).  The next job's executors are refused once, read the secret again and
    run it; before, every warm container failed its invocations until it was recycled."""
    import json
    import time

    import redis

    from wukong.store.credentials import RENEW_MIN_S

    with lambda_local(HANDLER, workers=2) as lam:
        with lambda_cluster(lam) as cluster:
            assert tree_sum(16).compute(scheduler=Client(cluster, progress=False).get) == sum(range(16))
        reads = lam.stats()["secret_reads"]
        time.sleep(RENEW_MIN_S)  # a secret read a moment ago is not read again
        port = lam.redis.port
        redis.Redis(port=port, password=lam.redis.password).config_set("requirepass", "rotated")
        lam.put_secret("wukong-redis", json.dumps({"username": None, "password": "rotated"}))
        redis.Redis(port=port, password="rotated").client_kill_filter(_type="normal", skipme=True)
        with lambda_cluster(lam) as cluster:  # the client reads the new secret
            client = Client(cluster, progress=False)
            assert tree_sum(16).compute(scheduler=client.get) == sum(range(16))
            assert job_keys(cluster) == []
        assert lam.stats()["secret_reads"] > reads + 1  # the client's, and the warm containers'
        redis.Redis(port=port, password="rotated").config_set("requirepass", lam.redis.password)


def test_a_long_lived_client_logs_in_again_once_the_redis_secret_is_rotated():
    """The client keeps the secret it read as a credential provider too: after a rotation
    (and Redis dropping every connection) its next job opens new connections, is refused
    once, reads the secret again and runs.  Before, it had read the password once, when
    the cluster was made, and every later job failed to log in."""
    import json
    import time

    import redis

    from wukong.store.credentials import RENEW_MIN_S

    with lambda_local(HANDLER, workers=2) as lam:
        port = lam.redis.port
        try:
            with lambda_cluster(lam) as cluster:
                client = Client(cluster, progress=False)
                assert tree_sum(16).compute(scheduler=client.get) == sum(range(16))
                time.sleep(RENEW_MIN_S)  # a secret read a moment ago is not read again
                redis.Redis(port=port, password=lam.redis.password).config_set("requirepass", "rotated")
                lam.put_secret("wukong-redis", json.dumps({"username": None, "password": "rotated"}))
                redis.Redis(port=port, password="rotated").client_kill_filter(_type="normal", skipme=True)
                assert tree_sum(16).compute(scheduler=client.get) == sum(range(16))
                assert job_keys(cluster) == []
        finally:
            with contextlib.suppress(redis.AuthenticationError):  # rotated back, if it was
                redis.Redis(port=port, password="rotated").config_set("requirepass", lam.redis.password)


def test_a_function_that_cannot_log_in_to_redis_fails_the_first_job_at_once():
    """The functions' secret holds a wrong password (the client read the right one): the
    version probe, which now also has the function open the cluster's store, says so
    before any job is sent, naming the function and the endpoint, and leaves no key; the
    next job, once the secret is right, runs.  Before, each invocation was lost and sent
    again until the job gave up, 40 s later, saying only that an executor was lost."""
    import json
    import time

    from wukong.store import StorageError
    from wukong.store.credentials import RENEW_MIN_S

    with lambda_local(HANDLER, workers=1) as lam:
        with lambda_cluster(lam) as cluster:  # the client read the right password
            right = json.dumps({"username": None, "password": lam.redis.password})
            lam.put_secret("wukong-redis", json.dumps({"username": None, "password": "wrong"}))
            client = Client(cluster, progress=False)
            with pytest.raises(StorageError) as failed:  # from the probe: no invocation was sent
                client.get({"a": (abs, -1)}, "a")
            message = str(failed.value)
            assert FUNCTION in message and f"127.0.0.1:{lam.redis.port}" in message
            assert "invalid username-password pair" in message and lam.redis.password not in message
            assert job_keys(cluster) == []
            lam.put_secret("wukong-redis", right)
            time.sleep(RENEW_MIN_S)  # a secret read a moment ago is not read again
            assert client.get({"a": (abs, -1)}, "a") == 1


def test_invocations_lost_to_a_configuration_broken_after_the_probe_are_named():
    """The first job's probe found the functions fine; then Redis's password was rotated
    but the functions' secret got a wrong one, and Redis dropped their connections: each
    invocation now fails before its first task, which the client sees only as
    invocations lost.  Before sending them again it probes once more, and the job fails
    naming the function and the endpoint; before, they were sent again until the job
    gave up, saying only that an executor was lost.  Once Redis and the secret agree
    again, the next job runs."""
    import json
    import time

    import psutil
    import redis

    from wukong.store import StorageError
    from wukong.store.credentials import RENEW_MIN_S

    with lambda_local(HANDLER, workers=1) as lam:
        with lambda_cluster(lam, start_grace=0.5) as cluster:  # they fail before a lease: never seen
            client = Client(cluster, progress=False)
            assert client.get({"a": (abs, -1)}, "a") == 1
            admin = redis.Redis(port=lam.redis.port, password=lam.redis.password)
            admin.ping()  # logged in: stays so (as do the client's connections) when the password changes
            time.sleep(RENEW_MIN_S)  # the functions read the secret a moment ago: they would not again
            admin.config_set("requirepass", "rotated")
            lam.put_secret("wukong-redis", json.dumps({"username": None, "password": "wrong"}))
            functions = [
                p for p in psutil.Process().children(recursive=True) if "wukong.lambda_local" in " ".join(p.cmdline())
            ]
            ports = {c.laddr.port for p in functions for c in p.net_connections("tcp") if c.raddr}
            for conn in admin.client_list():
                if int(conn["addr"].rpartition(":")[2]) in ports:
                    admin.client_kill(conn["addr"])
            with pytest.raises(StorageError) as failed:
                client.get({"a": (abs, -2)}, "a")
            message = str(failed.value)  # at the first loss: the old code's give-up raised JobFailed
            assert FUNCTION in message and f"127.0.0.1:{lam.redis.port}" in message
            assert "invalid username-password pair" in message and "rotated" not in message
            assert job_keys(cluster) == []
            admin.config_set("requirepass", lam.redis.password)
            lam.put_secret("wukong-redis", json.dumps({"username": None, "password": lam.redis.password}))
            time.sleep(RENEW_MIN_S)
            assert client.get({"a": (abs, -3)}, "a") == 3


def test_single_node(client):
    assert delayed(incr)(5).compute(scheduler=client.get) == 6


def test_linear_three_nodes(client):
    assert delayed(double)(delayed(decr)(delayed(incr)(5))).compute(scheduler=client.get) == 10


def test_fan_in_three_nodes(client):
    z = delayed(add_values)(delayed(incr)(3), delayed(decr)(7))
    assert z.compute(scheduler=client.get) == 10


def test_tree_reduction_of_64(client):
    assert tree_sum(64).compute(scheduler=client.get) == sum(range(64))


def test_fan_out_invokes_executors_from_executors(client, lam):
    root = delayed(incr)(1)
    total = delayed(sum)([delayed(double)(root) for _ in range(6)] + [delayed(incr)(root) for _ in range(6)])
    assert total.compute(scheduler=client.get) == total.compute(scheduler="sync")


def test_gemm(client):
    rs = da.random.RandomState(2)
    x = rs.random_sample((300, 300), chunks=(100, 100))
    y = rs.random_sample((300, 300), chunks=(100, 100))
    z = da.matmul(x, y)
    _same(z.compute(scheduler=client.get), z.compute(scheduler="sync"))


def test_tall_skinny_svd(client):
    X = da.random.RandomState(0).random_sample((800, 20), chunks=(200, 20))
    got = dask.compute(*da.linalg.svd(X), scheduler=client.get)
    want = dask.compute(*da.linalg.svd(X), scheduler="sync")
    for g, w in zip(got, want, strict=True):
        _same(g, w)


def test_task_error_reaches_client_as_its_type(client):
    def boom(x):
        raise KeyError(f"no {x}")

    with pytest.raises(KeyError, match="no 3"):
        delayed(boom)(delayed(incr)(2)).compute(scheduler=client.get)


# -- cost accounting ------------------------------------------------------------------


def test_every_executor_reports_its_duration_for_cost(client, lam):
    assert tree_sum(16).compute(scheduler=client.get) == sum(range(16))
    cost = client.last_job["cost"]
    assert cost["executors"] >= 8 and cost["requests"] == cost["executors"]  # one per leaf schedule at least
    assert cost["billed_ms"] >= cost["executors"] and cost["gb_seconds"] > 0
    assert cost["price_usd"] == pytest.approx(cost["gb_seconds"] * 0.0000166667 + cost["requests"] * 0.2e-6)


def test_summary_line_printed_when_progress_on(cluster, capsys):
    with Client(cluster, progress=True) as c:
        assert delayed(incr)(1).compute(scheduler=c.get) == 2
    assert "Lambda executor(s)" in capsys.readouterr().err


def test_cost_rounds_each_duration_up_to_a_millisecond():
    c = job_cost([(0.2, 2048), (1.5, 2048)], "arm64")
    assert c["billed_ms"] == 3 and c["gb_seconds"] == pytest.approx(0.006)
    assert c["compute_usd"] == pytest.approx(0.006 * 0.0000133334)
    with pytest.raises(ValueError, match="mips"):
        job_cost([], "mips")


# -- large events, throttling, failures -----------------------------------------------


def spills(cluster):
    """How many invocation events were spilled to the MDS (Redis counts the SADDs)."""
    return cluster.store.mds.info("commandstats").get("cmdstat_sadd", {}).get("calls", 0)


def test_large_invocation_is_spilled_to_the_store_and_cleaned_up(lam):
    with lambda_cluster(lam, max_event_payload=2048, inline_limit=1 << 20) as cluster:
        client = Client(cluster, progress=False)
        x = delayed(np.arange)(10_000)  # 80 KB: inline (< inline_limit) but over the event limit
        y = delayed(np.sum)(x) + delayed(np.max)(x)
        assert y.compute(scheduler=client.get) == np.arange(10_000).sum() + 9_999
        assert spills(cluster) >= 1  # sent by the executor of x, which fans out
        assert job_keys(cluster) == []
    assert lam.stats()["errors"] == 0


def test_spilled_leaf_events_from_the_client(lam):
    with lambda_cluster(lam) as cluster:
        small = len(cluster.backend.invoker._config_json) + 100  # the ref fits, the invocation does not
    with lambda_cluster(lam, max_event_payload=small) as cluster:
        client = Client(cluster, progress=False)
        assert (
            delayed(add_values)(delayed(incr)(1), delayed(incr)(np.zeros(100))).compute(scheduler=client.get).tolist()
            == [3.0] * 100
        )
        assert spills(cluster) >= 1
        assert job_keys(cluster) == []


def test_throttled_invocations_are_retried(aws_env):
    with lambda_local(HANDLER, workers=2, concurrency=2) as lam:
        with lambda_cluster(lam, num_lambda_invokers=8, invoke_attempts=12) as cluster:
            client = Client(cluster, progress=False)
            assert tree_sum(64).compute(scheduler=client.get) == sum(range(64))
            assert job_keys(cluster) == []
            assert cluster.backend.invoker.throttled > 0
        assert lam.stats()["throttles"] > 0


def test_invocations_queued_behind_busy_executors_are_not_sent_again(aws_env, monkeypatch):
    """One Lambda worker runs the children of a fan-out one after another: the last ones
    wait in the function's queue for many times ``lost_after`` without a lease, and
    are not taken for lost (each sent again would count towards ``max_attempts``: a
    wide fan-out on AWS, queued behind the concurrency limit, failed that way)."""
    import wukong.client

    sent_again = []
    resend = wukong.client.resend
    with lambda_local(HANDLER, workers=1) as lam, lambda_cluster(lam, lease_ms=300) as cluster:
        client = Client(cluster, progress=False)
        # warm: the first job's first invocation also sets up the worker's connections,
        # which on a loaded machine can take longer than lost_after (0.6 s) before its lease
        assert delayed(nap)(1, 0.0).compute(scheduler=client.get) == 1
        monkeypatch.setattr(wukong.client, "resend", lambda *a, **k: (sent_again.append(a[3]), resend(*a, **k)))
        root = delayed(nap)(0, 0.0)
        total = delayed(sum)([delayed(operator.add)(delayed(nap)(i, 0.4), root) for i in range(6)])
        assert total.compute(scheduler=client.get) == sum(range(6))
        record = client.jobs[-1]
        assert record.run_s > 2.0  # the children did queue, 0.4 s each on one worker
        assert sent_again == []
        assert record.invocations == len(record.runs)  # each ran to its exit once
        assert job_keys(cluster) == []


def test_cold_starts_longer_than_lost_after_are_not_sent_again(aws_env, monkeypatch):
    """The function's one instance takes 2 s before its first invocation reaches the
    executor (a cold start: Lambda's Init, which AWS allows 10 s), far more than
    ``lost_after`` (0.6 s with 0.3 s leases), and the job's other leaves wait behind
    it.  They are not sent again while they may still be starting (``start_grace``, 10
    s by default); with no grace they are, as every one was before: a cold start
    longer than ``lost_after`` (7.5 s on AWS with the default lease) had every leaf of
    a job's first run sent again, each resend a new cold instance counting towards
    ``max_attempts``."""
    import wukong.client

    resend = wukong.client.resend
    sent_again: list = []
    monkeypatch.setattr(wukong.client, "resend", lambda *a, **k: (sent_again.append(a[3]), resend(*a, **k)))
    for config, resent in (({}, False), ({"wukong.lambda.start-grace": 0.0}, True)):
        sent_again.clear()
        with (
            dask.config.set(config),
            lambda_local({FUNCTION: "tests.lambda_handlers:cold_executor"}, workers=1) as lam,
            lambda_cluster(lam, lease_ms=300) as cluster,
        ):
            assert cluster.backend.start_grace == (0.0 if config else 10.0)
            client = Client(cluster, progress=False)
            total = delayed(sum)([delayed(nap)(i, 0.0) for i in range(4)])
            assert total.compute(scheduler=client.get) == sum(range(4))
            record = client.jobs[-1]
            assert record.run_s > 2.0  # the instance did start cold during the job
            assert bool(sent_again) is resent, (config, sent_again)
            if not resent:
                assert record.invocations == len(record.runs)  # each ran to its exit once
            assert job_keys(cluster) == []


def test_start_grace_is_checked():
    from wukong.backends.aws_lambda import LambdaBackend

    with pytest.raises(ValueError, match="start_grace must be 0 or more seconds, got -1"):
        LambdaBackend(None, {}, start_grace=-1)  # type: ignore[arg-type]


def test_unknown_function_fails_with_a_clear_error(lam):
    with lambda_cluster(lam, function_name="no-such-function") as cluster:
        client = Client(cluster, progress=False)
        with pytest.raises(JobFailed, match=r"no-such-function.*127\.0\.0\.1.*ResourceNotFound"):
            tree_sum(8).compute(scheduler=client.get)
        assert job_keys(cluster) == []


def test_unreachable_endpoint_gives_up_after_retries(aws_env):
    with LambdaLocal(HANDLER, workers=1) as lam:
        url = lam.url
    with LocalCluster(backend="lambda", endpoint_url=url, region="us-east-1", invoke_attempts=2) as cluster:
        cluster.backend.invoker.base_delay = 0.01
        client = Client(cluster, progress=False)
        with pytest.raises(JobFailed, match="gave up after 2 attempts"):
            delayed(incr)(1).compute(scheduler=client.get)
        assert job_keys(cluster) == []


def test_backend_name_is_checked():
    with pytest.raises(ValueError, match="backend"):
        LocalCluster(backend="k8s")


def test_tree_reduction_of_1024(client):
    assert tree_sum(1024).compute(scheduler=client.get) == sum(range(1024))


# -- deploy (argument building, against botocore's Stubber) ------------------------------


def deploy_args(tmp_path, *extra):
    from wukong.cli import parser

    zip_path = tmp_path / "f.zip"
    zip_path.write_bytes(b"PK zip")
    argv = ["deploy", "--function-name", "wk", "--role-arn", "arn:aws:iam::1:role/r", "--zip", str(zip_path)]
    return parser().parse_args(argv + list(extra))


def stubbed_lambda():
    import boto3
    from botocore.stub import Stubber

    client = boto3.client("lambda", region_name="us-east-1")
    return client, Stubber(client)


def test_deploy_creates_a_missing_function(tmp_path):
    from wukong.cli import deploy

    args = deploy_args(
        tmp_path, "--memory", "2048", "--arch", "arm64", "--subnet-ids", "s-1", "--security-group-ids", "g"
    )
    client, stub = stubbed_lambda()
    stub.add_client_error("get_function", "ResourceNotFoundException", http_status_code=404)
    stub.add_response(
        "create_function",
        {"FunctionArn": "arn:aws:lambda:us-east-1:1:function:wk"},
        {
            "FunctionName": "wk",
            "Role": "arn:aws:iam::1:role/r",
            "Runtime": "python3.12",
            "Handler": "handler.handler",
            "MemorySize": 2048,
            "Timeout": 900,
            "Description": "wukong executor",
            "Environment": {"Variables": {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}},
            "VpcConfig": {"SubnetIds": ["s-1"], "SecurityGroupIds": ["g"]},
            "Code": {"ZipFile": b"PK zip"},
            "Architectures": ["arm64"],
            "PackageType": "Zip",
            "Publish": False,
        },
    )
    with stub:
        assert deploy(args, client) == "arn:aws:lambda:us-east-1:1:function:wk"
    stub.assert_no_pending_responses()


def test_deploy_updates_code_then_configuration_of_an_existing_function(tmp_path):
    from botocore.stub import ANY

    from wukong.cli import deploy

    args = deploy_args(tmp_path, "--timeout", "60")
    client, stub = stubbed_lambda()
    stub.add_response("get_function", {"Configuration": {"FunctionName": "wk"}}, {"FunctionName": "wk"})
    stub.add_response(
        "update_function_code", {}, {"FunctionName": "wk", "ZipFile": b"PK zip", "Architectures": ["x86_64"]}
    )
    stub.add_response(  # the function_updated_v2 waiter
        "get_function", {"Configuration": {"LastUpdateStatus": "Successful"}}, {"FunctionName": "wk"}
    )
    expected = {k: ANY for k in ("Role", "Runtime", "Handler", "MemorySize", "Description", "Environment")}
    stub.add_response(
        "update_function_configuration",
        {"FunctionArn": "arn:wk"},
        {**expected, "FunctionName": "wk", "Timeout": 60},
    )
    with stub:
        assert deploy(args, client) == "arn:wk"
    stub.assert_no_pending_responses()


def test_cli_checks_limits_and_wraps_lambda_local(capsys):
    from wukong.cli import main

    with pytest.raises(SystemExit):
        main(["deploy", "--role-arn", "r", "--zip", "z", "--memory", "64"])
    assert "128..10240" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["lambda-local"])  # requires --function, like python -m wukong.lambda_local
    assert "--function" in capsys.readouterr().err


# -- the zip builder's checks -------------------------------------------------------------


def _build_module():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "executor" / "build.py"
    spec = importlib.util.spec_from_file_location("wukong_executor_build", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_build_reads_glibc_versions_of_our_extensions():
    import wukong._core.partition as partition

    build = _build_module()
    need = build.glibc_needed(__import__("pathlib").Path(partition.__file__))
    assert (2, 2) <= need <= (2, 99)


def test_build_refuses_too_new_glibc_and_too_large_trees(tmp_path, monkeypatch):
    build = _build_module()
    monkeypatch.setattr(build, "glibc_needed", lambda so: (2, 38))
    with pytest.raises(build.BuildError, match="GLIBC_2.38"):
        build.check_glibc([tmp_path / "x.so"])
    (tmp_path / "big").mkdir()
    (tmp_path / "big" / "blob").write_bytes(b"x" * 1000)
    monkeypatch.setattr(build, "MAX_UNZIPPED", 999)
    with pytest.raises(build.BuildError, match="exceeds Lambda's 250 MB.*big"):
        build.check_size(tmp_path)


def test_build_refuses_to_cross_compile(tmp_path):
    build = _build_module()
    other = "arm64" if build.HOST_ARCH.get(__import__("platform").machine().lower()) == "x86_64" else "x86_64"
    with pytest.raises(build.BuildError, match="not cross-compiled"):
        build.build(other, tmp_path)

"""The deployment zip, proven: built by ``executor/build.py``, unzipped read-only, run by
AWS's runtime interface client under Python 3.12 behind lambda-local's Runtime API, and
driven through boto3 and ``LocalCluster(backend="lambda")``.

The client side of the jobs runs under Python 3.12 as well (``lambda_zip_client.py``, in a
subprocess, with the zip's own libraries): a 3.11 client must be refused by the version
check, which ``test_a_311_client_is_refused_before_any_task_runs`` holds.

Slow (the build takes minutes): ``make test-slow``; CI runs it as its own step of
``make test``.  ``WUKONG_LAMBDA_ZIP=path`` uses an already built zip instead of building one.
"""

import json
import os
import subprocess
import sys

import boto3
import pytest
from dask import delayed

from wukong import Client, LocalCluster
from wukong.lambda_local import LambdaLocal
from wukong.lambda_local.runtime_api import Runtime
from wukong.store.credentials import SECRET_ARN_ENV
from wukong.store.server import RedisServer
from wukong.versions import VersionMismatch

try:
    from .conftest import AWS_ENV, REDIS_SECRET_ARN, job_keys
except ImportError:
    from conftest import AWS_ENV, REDIS_SECRET_ARN, job_keys

pytestmark = pytest.mark.slow
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FUNCTION = {"wukong-executor": "handler.handler"}


@pytest.fixture(scope="module")
def zip_path(tmp_path_factory):
    given = os.environ.get("WUKONG_LAMBDA_ZIP")
    if given:
        return given
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "executor/build.py", "--arch", "x86_64", "--out", str(out)], cwd=ROOT, check=True)
    return str(out / "wukong-executor-x86_64.zip")


@pytest.fixture(scope="module")
def runtime(zip_path):
    old = {k: os.environ.get(k) for k in AWS_ENV}
    os.environ.update(AWS_ENV)
    with Runtime(zip_path) as rt:
        yield rt
    for k, v in old.items():
        os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def lambda_client(lam):
    return boto3.client(
        "lambda", endpoint_url=lam.url, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
    )


def test_seed_examples_errors_faults_and_timeouts_under_the_runtime(runtime):
    # as on AWS, Redis's password is only in a secret the functions (and the client) read
    env = {**AWS_ENV, SECRET_ARN_ENV: REDIS_SECRET_ARN}
    with (
        RedisServer() as redis,
        LambdaLocal(FUNCTION, workers=2, runtime=runtime, env=env) as lam,
        LambdaLocal(FUNCTION, workers=1, runtime=runtime, env=env, timeout=3) as short,
    ):
        secret = json.dumps({"username": None, "password": redis.password})
        for server in (lam, short):
            assert server.put_secret("wukong-redis", secret) == REDIS_SECRET_ARN
        # a function error, as real Lambda reports one: the handler raised on a bad event
        response = lambda_client(lam).invoke(FunctionName="wukong-executor", Payload=b'{"not": "an invocation"}')
        body = json.loads(response["Payload"].read())
        assert response["FunctionError"] == "Unhandled" and body["errorType"] == "KeyError", body
        # the probe: the zip answers with the runtime's versions
        response = lambda_client(lam).invoke(FunctionName="wukong-executor", Payload=b'{"wukong_probe": "versions"}')
        assert json.loads(response["Payload"].read())["python"].startswith("3.12.")
        argv = [runtime.python, "-S", os.path.join(ROOT, "tests", "lambda_zip_client.py")]
        argv += [str(runtime.task_root), str(runtime.runtime_dir), lam.url, short.url]
        env = {**os.environ, **AWS_ENV, "AWS_ENDPOINT_URL_SECRETS_MANAGER": lam.url}
        env.update(WUKONG_TEST_REDIS="{}:{}".format(*redis.endpoint), WUKONG_TEST_SECRET_ARN=REDIS_SECRET_ARN)
        env.pop("PYTHONPATH", None)
        done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=1200)
    assert done.returncode == 0, done.stdout + done.stderr
    oks = [line.split()[1] for line in done.stdout.splitlines() if line.startswith("ok ")]
    assert oks == [
        "single_node", "linear", "fan_in", "tree_1024", "several_collections", "tall_skinny_svd",
        "svd_compressed", "gemm", "qr", "tsqr", "cholesky_lower_False", "cholesky_lower_True",
        "large_arrays", "task_error", "faults", "function_timeout",
    ], done.stdout  # fmt: skip
    print(done.stdout)


def test_init_error_of_the_zip_as_on_lambda(runtime):
    with LambdaLocal({"wukong-executor": "handler.no_such_handler"}, workers=1, runtime=runtime) as lam:
        response = lambda_client(lam).invoke(FunctionName="wukong-executor", Payload=b"{}")
        body = json.loads(response["Payload"].read())
    assert response["FunctionError"] == "Unhandled" and body["errorType"] == "Runtime.HandlerNotFound", body


def test_a_311_client_is_refused_before_any_task_runs(runtime, tmp_path):
    if sys.version_info[:2] == (3, 12):
        pytest.fail("this test needs a client Python other than the runtime's 3.12 (the suite runs under 3.11)")
    ran = tmp_path / "ran"
    with LambdaLocal(FUNCTION, workers=1, runtime=runtime, env=AWS_ENV) as lam:
        with LocalCluster(backend="lambda", endpoint_url=lam.url, region="us-east-1") as cluster:
            with pytest.raises(VersionMismatch) as info:
                delayed(open)(str(ran), "w").compute(scheduler=Client(cluster, progress=False).get)
            assert job_keys(cluster) == []
        assert lam.stats()["invocations"] == 1  # the probe alone
    message = str(info.value)
    assert f"python {sys.version.split()[0]} here, 3.12." in message and "under the executors' Python (3.12)" in message
    assert not ran.exists()

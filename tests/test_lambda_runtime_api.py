"""lambda-local's Runtime API mode: a zip run by AWS's runtime interface client (awslambdaric)
under Python 3.12, as Lambda runs it.  Here the zip holds ``lambda_handlers.py`` only; the
deployment package itself runs in test_lambda_zip.py.  A machine without Python 3.12
fails these tests (``find_python`` says what to install); it does not skip them."""

import json
import os
import zipfile

import boto3
import pytest

from wukong.lambda_local import LambdaLocal
from wukong.lambda_local.runtime_api import Runtime

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    z = tmp_path_factory.mktemp("zip") / "handlers.zip"
    with zipfile.ZipFile(z, "w") as f:
        f.write(os.path.join(HERE, "lambda_handlers.py"), "lambda_handlers.py")
    with Runtime(z) as rt:
        yield rt


def serve(runtime, handler, **kwargs):
    return LambdaLocal({"fn": handler}, workers=1, runtime=runtime, **kwargs)


def invoke(lam, event=None):
    client = boto3.client(
        "lambda", endpoint_url=lam.url, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
    )
    response = client.invoke(FunctionName="fn", Payload=json.dumps(event or {}))
    return response.get("FunctionError"), json.loads(response["Payload"].read() or "null")


def test_environment_is_lambdas(runtime):
    with serve(runtime, "lambda_handlers.inspect_environment", memory=1024) as lam:
        error, got = invoke(lam)
    assert error is None and got["version"] == [3, 12]
    task, rt = str(runtime.task_root), str(runtime.runtime_dir)
    assert got["path"][:2] == [task, rt]
    prefix = os.path.dirname(os.path.dirname(os.path.realpath(runtime.python)))
    stdlib = got["path"][2:]  # the runtime's standard library only: no site-packages
    assert stdlib and all(p.startswith(prefix) and "site-packages" not in p for p in stdlib), stdlib
    env = got["env"]
    assert env["AWS_LAMBDA_FUNCTION_NAME"] == "fn" and env["_HANDLER"] == "lambda_handlers.inspect_environment"
    assert env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] == "1024" and env["LAMBDA_TASK_ROOT"] == task
    assert env["AWS_LAMBDA_RUNTIME_API"].startswith("127.0.0.1:") and env["AWS_REGION"] == "us-east-1"
    assert "PYTHONPATH" not in env and "VIRTUAL_ENV" not in env  # nothing of ours leaks in
    # the task root cannot be written (EROFS in a mount namespace, else EACCES), /tmp can
    expected = {"mount": "Read-only file system", "permissions": "Permission denied"}
    assert got["task_root"] == f"OSError: {expected[env['WUKONG_LAMBDA_LOCAL_SANDBOX']]}"
    assert got["tmp"] == "ok"


def test_function_error_timeout_and_exit_as_on_lambda(runtime):
    with serve(runtime, "lambda_handlers.fail", timeout=2) as lam:
        error, got = invoke(lam, {"x": 7})
        assert error == "Unhandled" and got["errorType"] == "ValueError" and got["errorMessage"] == "bad input: 7"
        assert any("lambda_handlers.py" in line for line in got["stackTrace"])
    with serve(runtime, "lambda_handlers.sleep", timeout=1) as lam:
        error, got = invoke(lam, {"seconds": 5})
        assert error == "Unhandled" and got["errorType"] == "Sandbox.Timedout"
        assert "Task timed out after 1.00 seconds" in got["errorMessage"]
        assert invoke(lam, {"seconds": 0}) == (None, 0)  # a fresh environment took over
    with serve(runtime, "lambda_handlers.exit_process") as lam:
        error, got = invoke(lam, {"status": 3})
        assert error == "Unhandled" and got["errorType"] == "Runtime.ExitError"
        assert "exit status 3" in got["errorMessage"]


@pytest.mark.parametrize(
    "handler, error_type, message",
    [
        ("no_such_module.handler", "Runtime.ImportModuleError", "Unable to import module 'no_such_module'"),
        ("lambda_handlers.missing", "Runtime.HandlerNotFound", "Handler 'missing' missing on module"),
    ],
)
def test_init_errors_as_on_lambda(runtime, handler, error_type, message):
    with serve(runtime, handler) as lam:
        for _ in range(2):  # each invocation tries a fresh init, as Lambda does after one failed
            error, got = invoke(lam)
            assert error == "Unhandled" and got["errorType"] == error_type and message in got["errorMessage"]
        assert lam.stats()["errors"] == 2

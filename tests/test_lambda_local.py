"""wukong.lambda_local behaves like the Lambda Invoke API, as seen through the real boto3."""

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from conftest import wait_until

from wukong.lambda_local import LambdaLocal

# The handlers' module, named the way pytest imported this file (with or without a package).
HANDLERS = __name__.replace("test_lambda_local", "lambda_handlers")
NAMES = [
    "echo",
    "noop",
    "context_info",
    "fail",
    "write_file",
    "block_until_released",
    "sleep",
    "exit_process",
    "unserializable",
]
FUNCTIONS = {name: f"{HANDLERS}:{name}" for name in NAMES}


def make_client(lam, **config):
    return boto3.client(
        "lambda",
        endpoint_url=lam.url,
        region_name="us-east-1",
        aws_access_key_id="x",
        aws_secret_access_key="x",
        config=Config(**config),
    )


def invoke_json(client, name, event=None, **kwargs):
    response = client.invoke(FunctionName=name, Payload=json.dumps(event or {}), **kwargs)
    return response, json.loads(response["Payload"].read() or "null")


def process_gone(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"  # a zombie is dead
    except FileNotFoundError:
        return True


@pytest.fixture(scope="module")
def lam():
    with LambdaLocal(FUNCTIONS, workers=2) as server:
        yield server


@pytest.fixture(scope="module")
def client(lam):
    return make_client(lam)


def test_request_response_returns_handler_result(client):
    response, result = invoke_json(client, "echo", {"a": [1, 2]})
    assert response["StatusCode"] == 200
    assert "FunctionError" not in response
    assert response["ExecutedVersion"] == "$LATEST"
    assert result["event"] == {"a": [1, 2]}
    assert result["function"] == "echo"
    assert result["request_id"] == response["ResponseMetadata"]["RequestId"]


def test_function_may_be_named_by_arn_and_latest_qualifier(client):
    arn = "arn:aws:lambda:us-east-1:123456789012:function:echo"
    assert invoke_json(client, arn, {"b": 1})[1]["event"] == {"b": 1}
    assert invoke_json(client, "echo", {"c": 1}, Qualifier="$LATEST")[1]["event"] == {"c": 1}


def test_empty_payload_is_empty_event(client):
    response = client.invoke(FunctionName="echo")
    assert json.loads(response["Payload"].read())["event"] == {}


def test_context_has_lambda_attributes(client):
    _, info = invoke_json(client, "context_info")
    assert info["function_name"] == "context_info"
    assert info["memory_limit_in_mb"] == 3008
    assert 890_000 < info["remaining_ms"] <= 900_000
    assert info["arn"] == "arn:aws:lambda:us-east-1:123456789012:function:context_info"


def test_event_returns_202_and_runs_handler(client, tmp_path):
    path = str(tmp_path / "out.txt")
    response = client.invoke(
        FunctionName="write_file",
        InvocationType="Event",
        Payload=json.dumps({"path": path, "text": "done"}),
    )
    assert response["StatusCode"] == 202
    assert response["Payload"].read() == b""
    wait_until(lambda: os.path.exists(path))
    assert open(path).read() == "done"


def test_dry_run_returns_204_without_running(client):
    response = client.invoke(FunctionName="fail", InvocationType="DryRun", Payload=b"{}")
    assert response["StatusCode"] == 204


def test_handler_exception_is_unhandled_function_error(client):
    response, error = invoke_json(client, "fail", {"x": 7})
    assert response["StatusCode"] == 200
    assert response["FunctionError"] == "Unhandled"
    assert error["errorType"] == "ValueError"
    assert error["errorMessage"] == "bad input: 7"
    assert any("raise ValueError" in frame for frame in error["stackTrace"])


def test_unserializable_result_is_marshal_error(client):
    response, error = invoke_json(client, "unserializable")
    assert response["FunctionError"] == "Unhandled"
    assert error["errorType"] == "Runtime.MarshalError"


def test_unknown_function_is_resource_not_found(client):
    with pytest.raises(client.exceptions.ResourceNotFoundException) as info:
        client.invoke(FunctionName="nope", Payload=b"{}")
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    assert "function:nope" in info.value.response["Error"]["Message"]


def test_unknown_qualifier_is_resource_not_found(client):
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.invoke(FunctionName="echo", Qualifier="7", Payload=b"{}")


@pytest.mark.parametrize("invocation_type, size", [("Event", 1_048_576 + 1), ("RequestResponse", 6_291_456 + 1)])
def test_payload_over_limit_is_413(client, invocation_type, size):
    # Like AWS: code RequestEntityTooLargeException, which botocore's model does not
    # map to a class, so boto3 raises a plain ClientError.
    payload = b'"' + b"x" * (size - 2) + b'"'
    with pytest.raises(ClientError) as info:
        client.invoke(FunctionName="echo", InvocationType=invocation_type, Payload=payload)
    assert info.value.response["Error"]["Code"] == "RequestEntityTooLargeException"
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 413


def test_payload_at_event_limit_is_accepted(client):
    payload = b'"' + b"x" * (1_048_576 - 2) + b'"'
    assert client.invoke(FunctionName="noop", InvocationType="Event", Payload=payload)["StatusCode"] == 202


def test_invalid_json_is_invalid_request_content(client):
    with pytest.raises(client.exceptions.InvalidRequestContentException) as info:
        client.invoke(FunctionName="echo", Payload=b"{not json")
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


def test_over_concurrency_limit_is_throttled(tmp_path):
    started, release = str(tmp_path / "started"), str(tmp_path / "release")
    with LambdaLocal(FUNCTIONS, workers=2, concurrency=1) as lam:
        client = make_client(lam, retries={"max_attempts": 0})
        with ThreadPoolExecutor(1) as pool:
            blocked = pool.submit(invoke_json, client, "block_until_released", {"started": started, "release": release})
            wait_until(lambda: os.path.exists(started))
            with pytest.raises(client.exceptions.TooManyRequestsException) as info:
                client.invoke(FunctionName="echo", Payload=b"{}")
            assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 429
            assert info.value.response["Reason"] == "ReservedFunctionConcurrentInvocationLimitExceeded"
            with pytest.raises(client.exceptions.TooManyRequestsException):
                client.invoke(FunctionName="noop", InvocationType="Event", Payload=b"{}")
            open(release, "w").close()
            assert blocked.result(10)[1] == "released"
        assert invoke_json(client, "echo", {"after": 1})[1]["event"] == {"after": 1}
        assert lam.stats()["throttles"] == 2


def test_latency_applies_to_calls_concurrently():
    with LambdaLocal(FUNCTIONS, workers=2, latency=0.2) as lam:
        client = make_client(lam, max_pool_connections=50)
        invoke_json(client, "noop")  # connect once before timing
        start = time.monotonic()
        with ThreadPoolExecutor(50) as pool:
            results = list(pool.map(lambda i: invoke_json(client, "echo", {"i": i})[1], range(50)))
        elapsed = time.monotonic() - start
    assert [r["event"]["i"] for r in results] == list(range(50))
    assert 0.2 <= elapsed < 3.0


def test_dead_worker_is_replaced():
    with LambdaLocal(FUNCTIONS, workers=1) as lam:
        client = make_client(lam)
        (before,) = lam.worker_pids()
        response, error = invoke_json(client, "exit_process", {"status": 3})
        assert response["FunctionError"] == "Unhandled"
        assert error["errorType"] == "Runtime.ExitError"
        assert "exit status 3" in error["errorMessage"]
        _, info = invoke_json(client, "context_info")
        assert info["pid"] != before
        assert process_gone(before)


def test_handler_over_timeout_is_killed_and_replaced():
    with LambdaLocal(FUNCTIONS, workers=1, timeout=0.3) as lam:
        client = make_client(lam)
        response, error = invoke_json(client, "sleep", {"seconds": 30})
        assert response["FunctionError"] == "Unhandled"
        assert error["errorType"] == "Sandbox.Timedout"
        assert invoke_json(client, "sleep", {"seconds": 0})[1] == 0


def test_stats_count_invocations_errors_and_durations():
    with LambdaLocal(FUNCTIONS, workers=1) as lam:
        client = make_client(lam)
        invoke_json(client, "echo")
        invoke_json(client, "fail")
        stats = lam.stats()
    assert (stats["invocations"], stats["errors"], stats["throttles"]) == (2, 1, 0)
    assert len(stats["durations"]) == 2 and all(d >= 0 for d in stats["durations"])


def test_stop_leaves_no_worker_processes():
    lam = LambdaLocal(FUNCTIONS, workers=2)
    lam.start()
    pids = lam.worker_pids()
    assert len(pids) == 2
    lam.stop()
    assert all(process_gone(pid) for pid in pids)


def run_server_script(body):
    """Start a Python process that runs a LambdaLocal and prints its worker pids."""
    code = (
        "from wukong.lambda_local import LambdaLocal\n"
        f"lam = LambdaLocal({FUNCTIONS!r}, workers=2)\n"
        "lam.start()\n"
        "print(*lam.worker_pids(), flush=True)\n" + body
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=env, text=True)
    return proc, [int(pid) for pid in proc.stdout.readline().split()]


def test_interpreter_exit_without_stop_leaves_no_worker_processes():
    proc, pids = run_server_script("")
    assert proc.wait(20) == 0 and len(pids) == 2
    wait_until(lambda: all(process_gone(pid) for pid in pids))


def test_killed_server_leaves_no_worker_processes():
    proc, pids = run_server_script("import time; time.sleep(60)\n")
    assert len(pids) == 2
    proc.kill()
    proc.wait(10)
    wait_until(lambda: all(process_gone(pid) for pid in pids))


def test_cli_serves_until_sigterm():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    command = [sys.executable, "-m", "wukong.lambda_local", "--function", f"echo={HANDLERS}:echo", "--workers", "1"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, env=env, text=True)
    try:
        url = proc.stdout.readline().strip()
        client = boto3.client(
            "lambda",
            endpoint_url=url,
            region_name="us-east-1",
            aws_access_key_id="x",
            aws_secret_access_key="x",
        )
        assert invoke_json(client, "echo", {"cli": True})[1]["event"] == {"cli": True}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_tasks_left_on_a_stopped_loop_end_before_it_closes():
    """A task still pending when the server's loop stops (a connection waiting for its next
    invocation, a watcher started during shutdown) is cancelled and run to its end before
    the loop closes, not destroyed later by the garbage collector with its loop closed."""
    import asyncio
    import threading

    from wukong.lambda_local.server import _finish_tasks

    loop = asyncio.new_event_loop()
    ended: list[str] = []

    async def waits_forever(name: str) -> None:
        try:
            await asyncio.Event().wait()
        finally:
            ended.append(name)
            await asyncio.sleep(0)  # its clean-up needs the loop

    tasks = [loop.create_task(waits_forever(n)) for n in ("a", "b")]
    thread = threading.Thread(target=loop.run_forever)
    thread.start()
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    assert not any(t.done() for t in tasks)
    _finish_tasks(loop)
    loop.close()
    assert all(t.cancelled() for t in tasks) and sorted(ended) == ["a", "b"]

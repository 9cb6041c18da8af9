"""Tiny Lambda handlers for tests/test_lambda_local.py (run inside lambda-local workers)."""

import os
import time


def echo(event, context):
    return {"event": event, "function": context.function_name, "request_id": context.aws_request_id}


def noop(event, context):
    return None


def context_info(event, context):
    return {
        "function_name": context.function_name,
        "memory_limit_in_mb": context.memory_limit_in_mb,
        "remaining_ms": context.get_remaining_time_in_millis(),
        "arn": context.invoked_function_arn,
        "pid": os.getpid(),
    }


def fail(event, context):
    raise ValueError(f"bad input: {event.get('x')}")


def write_file(event, context):
    """Write event["text"] to event["path"] (atomically, so a reader never sees half)."""
    tmp = event["path"] + ".tmp"
    with open(tmp, "w") as f:
        f.write(event["text"])
    os.replace(tmp, event["path"])


def block_until_released(event, context):
    """Mark itself started, then wait (bounded) for the release file."""
    open(event["started"], "w").close()
    deadline = time.monotonic() + 10
    while not os.path.exists(event["release"]) and time.monotonic() < deadline:
        time.sleep(0.005)
    return "released"


def sleep(event, context):
    time.sleep(event["seconds"])
    return event["seconds"]


def exit_process(event, context):
    os._exit(event.get("status", 3))


def unserializable(event, context):
    return {1, 2}


def inspect_environment(event, context):
    """What an execution environment sees: path, variables, and whether it can write where."""
    import sys

    def writable(directory):
        path = os.path.join(directory, f"probe-{os.getpid()}")
        try:
            with open(path, "w") as f:
                f.write("x")
        except OSError as e:
            return f"{type(e).__name__}: {e.strerror}"
        os.remove(path)
        return "ok"

    return {
        "path": sys.path,
        "env": dict(os.environ),
        "task_root": writable(os.environ.get("LAMBDA_TASK_ROOT", ".")),
        "tmp": writable("/tmp"),
        "version": list(sys.version_info[:2]),
    }


def fake_versions(event, context):
    """wukong's executor, answering the version probe with $FAKE_VERSIONS laid over its own."""
    import json

    from wukong.backends.aws_lambda import handler

    result = handler(event, context)
    if event.get("wukong_probe"):
        result.update(json.loads(os.environ.get("FAKE_VERSIONS", "{}")))
    return result


def append_id(event, context):
    """Append event["id"] and a newline to event["path"] (O_APPEND: lines never interleave)."""
    fd = os.open(event["path"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, f"{event['id']}\n".encode())
    finally:
        os.close(fd)


COLD_S = 2.0  # the cold start of ``cold_executor``
_cold = [True]


def cold_executor(event, context):
    """wukong's executor behind a cold start: each process's first invocation (not the
    client's version probe) waits ``COLD_S`` before the executor sees it, as a new
    Lambda instance's Init (the runtime, the imports, the log-in to Redis) delays its
    first invocation's lease."""
    if _cold[0] and "invocation" in event:
        _cold[0] = False
        time.sleep(COLD_S)
    from wukong.backends.aws_lambda import handler

    return handler(event, context)


def nap(i, seconds):
    """A task for the Lambda backend's tests, from this light module: a first task whose
    module pulls in dask.array and pytest (1.2 s, several under load) would hold the
    executor's GIL while its lease is 0.3 s."""
    time.sleep(seconds)
    return i

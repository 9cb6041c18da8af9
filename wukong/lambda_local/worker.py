"""One execution environment of ``wukong lambda-local``: a worker process.

It imports every registered handler once, says ``READY``, then runs one
invocation at a time.  Frames on its socket to the server's loop:

* loop -> worker: ``!II`` (meta length, payload length), meta JSON, payload
* worker -> loop: ``!BdI`` (kind, handler seconds, body length), body; kind is
  ``READY``, ``OK`` (body is the JSON result) or ``ERROR`` (body is Lambda's
  ``{"errorMessage", "errorType", "stackTrace"}``)
"""

from __future__ import annotations

import base64
import importlib
import json
import os
import signal
import socket
import struct
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

from wukong.process import die_with_parent

TO_WORKER = struct.Struct("!II")
FROM_WORKER = struct.Struct("!BdI")
READY, OK, ERROR = 0, 1, 2


def error_body(message: str, error_type: str, stack: list[str] | None = None, **extra: str) -> bytes:
    body = {"errorMessage": message, "errorType": error_type, **extra, "stackTrace": stack or []}
    return json.dumps(body).encode()


class LambdaContext:
    """The ``context`` argument handlers get, with the attributes AWS's Python runtime has."""

    def __init__(self, function_name, request_id, deadline, memory, region, account, client_context=None):
        self.function_name = function_name
        self.function_version = "$LATEST"
        self.invoked_function_arn = f"arn:aws:lambda:{region}:{account}:function:{function_name}"
        self.memory_limit_in_mb = memory
        self.aws_request_id = request_id
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = f"lambda-local/{os.getpid()}"
        self.identity = None
        self.client_context = client_context
        self._deadline = deadline

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.time()) * 1000))


def _load_handler(ref: str) -> Callable | bytes:
    """The handler function, or the error body every invocation of it returns."""
    module_name, _, attr = ref.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:
        return error_body(f"Unable to import module '{module_name}': {e}", "Runtime.ImportModuleError")
    handler = getattr(module, attr, None)
    if not callable(handler):
        return error_body(f"Handler '{attr}' missing on module '{module_name}'", "Runtime.HandlerNotFound")
    return handler


def _run_handler(handler: Callable | bytes, event: Any, context: LambdaContext) -> tuple[int, bytes]:
    if isinstance(handler, bytes):
        return ERROR, handler
    try:
        result = handler(event, context)
    except Exception as e:
        stack = traceback.format_list(traceback.extract_tb(e.__traceback__)[1:])
        return ERROR, error_body(str(e), type(e).__name__, stack, requestId=context.aws_request_id)
    try:
        return OK, json.dumps(result).encode()
    except (TypeError, ValueError) as e:
        return ERROR, error_body(f"Unable to marshal response: {e}", "Runtime.MarshalError")


def main(spec_json: str) -> None:
    """Run one worker: ``python -m wukong.lambda_local --worker SPEC``."""
    spec = json.loads(spec_json)
    die_with_parent(spec["parent"], signal.SIGKILL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the server's to handle
    sys.path[:] = spec["path"] + [p for p in sys.path if p not in spec["path"]]
    sock = socket.socket(fileno=spec["fd"])
    handlers = {name: _load_handler(ref) for name, ref in spec["functions"].items()}
    rfile = sock.makefile("rb")
    sock.sendall(FROM_WORKER.pack(READY, 0.0, 0))
    while True:
        head = rfile.read(TO_WORKER.size)
        if len(head) < TO_WORKER.size:
            return
        meta_len, payload_len = TO_WORKER.unpack(head)
        meta = json.loads(rfile.read(meta_len))
        event = json.loads(rfile.read(payload_len))
        context = LambdaContext(
            meta["fn"],
            meta["rid"],
            meta["deadline"],
            spec["memory"],
            spec["region"],
            spec["account"],
            meta["cc"] and json.loads(base64.b64decode(meta["cc"])),
        )
        start = time.perf_counter()
        kind, body = _run_handler(handlers[meta["fn"]], event, context)
        sock.sendall(FROM_WORKER.pack(kind, time.perf_counter() - start, len(body)) + body)

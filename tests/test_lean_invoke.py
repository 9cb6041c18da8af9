"""The lean asynchronous invoker (``wukong.backends.lean_invoke``), against real servers."""

from __future__ import annotations

import json
import os
import socket
import threading
import time

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from wukong.backends.aws_lambda import LambdaInvoker, lambda_config
from wukong.lambda_local import LambdaLocal

AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}
HANDLERS = {
    "append": "tests.lambda_handlers:append_id",
    "sleep": "tests.lambda_handlers:sleep",
}


@pytest.fixture(autouse=True)
def aws_env(monkeypatch):
    for k, v in AWS_ENV.items():
        monkeypatch.setenv(k, v)


def invoker(url: str, function: str, **kwargs) -> LambdaInvoker:
    """A lean LambdaInvoker with no store: these tests never spill nor report failures."""
    lam = lambda_config(function, region="us-east-1", endpoint_url=url, invoker="lean", **kwargs)
    return LambdaInvoker(None, {"lambda": lam})  # type: ignore[arg-type]


def lean_send(inv: LambdaInvoker, payloads: list[bytes]) -> list[str | None]:
    lean = inv.lean()
    assert lean, "the lean invoker is in use"
    return lean.send(payloads)


def wait_for_lines(path: str, n: int, timeout: float = 30) -> list[str]:
    deadline = time.monotonic() + timeout
    lines: list[str] = []
    while time.monotonic() < deadline:
        if os.path.exists(path):
            with open(path) as f:
                lines = f.read().splitlines()
            if len(lines) >= n:
                break
        time.sleep(0.02)
    return lines


def test_every_event_is_delivered_exactly_once(tmp_path):
    path = str(tmp_path / "ids")
    with LambdaLocal(HANDLERS, workers=2, latency=0.01, env=AWS_ENV) as lam:
        inv = invoker(lam.url, "append", connections=16)
        payloads = [json.dumps({"path": path, "id": i}).encode() for i in range(300)]
        try:
            assert lean_send(inv, payloads) == [None] * 300
        finally:
            inv.close()
        lines = wait_for_lines(path, 300)
        time.sleep(0.2)  # nothing more arrives
        assert sorted(map(int, wait_for_lines(path, 300))) == list(range(300))
        assert lam.stats()["invocations"] == 300
    assert len(lines) == 300


class _OneShotServer:
    """Answers every request 202 and closes the connection after each one (no
    ``Connection: close`` header: the client finds out when it reuses it); keeps the raw requests."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.requests: list[bytes] = []
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                head, _, body = data.partition(b"\r\n\r\n")
                length = int(
                    [ln for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length")][0].split(b":")[1]
                )
                while len(body) < length:
                    body += conn.recv(65536)
                self.requests.append(head + b"\r\n\r\n" + body)
                conn.sendall(b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n")

    def close(self) -> None:
        self.sock.close()


def test_requests_carry_botocores_sigv4_signature_of_what_is_on_the_wire():
    server = _OneShotServer()
    inv = invoker(server.url, "my-fn")
    try:
        assert lean_send(inv, [b'{"x": 1}']) == [None]
    finally:
        inv.close()
        server.close()
    head, _, body = server.requests[0].partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    method, path, _ = lines[0].split(" ")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    auth = headers.pop("Authorization")
    assert auth.startswith("AWS4-HMAC-SHA256 Credential=testing/") and "/us-east-1/lambda/aws4_request" in auth
    assert method == "POST" and path == "/2015-03-31/functions/my-fn/invocations"
    assert headers["X-Amz-Invocation-Type"] == "Event" and body == b'{"x": 1}'
    # recompute the signature from the request as received, over the headers it says it signed
    signed = auth.split("SignedHeaders=")[1].split(",")[0].split(";")
    assert signed == ["host", "x-amz-date", "x-amz-invocation-type"]
    wire = {k: v for k, v in headers.items() if k.lower() in signed}
    req = AWSRequest(method=method, url=server.url + path, data=body, headers=wire)
    req.context["timestamp"] = headers["X-Amz-Date"]
    signer = SigV4Auth(Credentials("testing", "testing"), "lambda", "us-east-1")
    canonical = signer.canonical_request(req)
    expected = signer.signature(signer.string_to_sign(req, canonical), req)
    assert auth.endswith(f"Signature={expected}")


def test_a_connection_closed_by_the_server_is_replaced():
    server = _OneShotServer()
    inv = invoker(server.url, "my-fn", connections=1, attempts=3)
    inv.base_delay = 0.001
    try:
        for i in range(4):  # the kept connection is dead at each later send
            assert lean_send(inv, [f'{{"i": {i}}}'.encode()]) == [None]
    finally:
        inv.close()
        server.close()
    assert [r.rpartition(b"\r\n\r\n")[2] for r in server.requests][-1] == b'{"i": 3}'


def test_unknown_function_is_reported_at_once_with_its_code():
    with LambdaLocal(HANDLERS, workers=1, env=AWS_ENV) as lam:
        inv = invoker(lam.url, "no-such-function")
        try:
            (error,) = lean_send(inv, [b"{}"])
        finally:
            inv.close()
    assert error is not None and error.startswith("ResourceNotFoundException (HTTP 404)")
    assert "gave up" not in error  # not retried


def test_throttled_invokes_are_retried_until_accepted():
    with LambdaLocal(HANDLERS, workers=1, concurrency=1, env=AWS_ENV) as lam:
        inv = invoker(lam.url, "sleep", attempts=30, base_delay=0.01, max_delay=0.05)
        try:
            assert lean_send(inv, [b'{"seconds": 0.02}'] * 6) == [None] * 6
            assert inv.lean().throttled > 0
        finally:
            inv.close()
        assert lam.stats()["invocations"] == 6


def test_unreachable_endpoint_gives_up_after_the_attempts():
    with LambdaLocal(HANDLERS, workers=1, env=AWS_ENV) as lam:
        url = lam.url
    inv = invoker(url, "append", attempts=2, base_delay=0.001)
    try:
        (error,) = lean_send(inv, [b"{}"])
    finally:
        inv.close()
    assert error is not None and "gave up after 2 attempts" in error


def test_without_credentials_boto3_is_used_and_says_so(monkeypatch, tmp_path):
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    inv = invoker("http://127.0.0.1:9", "append", attempts=1)
    try:
        assert inv.lean() is False
        assert inv.invoke_one(b"{}") == "NoCredentialsError: Unable to locate credentials"
    finally:
        inv.close()


def test_invoker_kind_is_checked():
    with pytest.raises(ValueError, match="invoker"):
        lambda_config("f", invoker="curl")

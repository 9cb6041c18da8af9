"""The Lambda Runtime API: ``wukong lambda-local`` running the built zip the way AWS runs it.

In this mode (``LambdaLocal(..., runtime=Runtime.prepare("dist/wukong-executor-x86_64.zip"))``,
or ``wukong lambda-local --zip ...``) an execution environment is not one of our
worker processes but AWS's own runtime interface client, ``awslambdaric`` from
PyPI, run by the runtime's Python (3.12), which fetches invocations over HTTP:

====================================================  ====  ==============================
request (from the runtime client)                     code  meaning
====================================================  ====  ==============================
``GET  /2018-06-01/runtime/invocation/next``          200   the next event (long poll)
``POST /2018-06-01/runtime/invocation/{id}/response`` 202   the handler's JSON result
``POST /2018-06-01/runtime/invocation/{id}/error``    202   the handler raised
``POST /2018-06-01/runtime/init/error``               202   the handler could not be loaded
====================================================  ====  ==============================

Each environment gets its own Runtime API server on 127.0.0.1 (as each Lambda
sandbox has its own at ``$AWS_LAMBDA_RUNTIME_API``), so an environment's
requests need no routing.  ``RuntimeEnvironment`` has the surface of the
in-process mode's worker (``ready``, ``call``, ``read_frames``, ``kill``,
``proc``), and the Invoke side of ``LambdaLocal`` drives both alike:
timeouts (``Sandbox.Timedout``) and processes that exit
(``Runtime.ExitError``) are handled there.  An init error is answered to the
invocation that finds it, and that environment is then retired, so the next
invocation tries a fresh init, as on Lambda (no restart loop in between).

What the environment sees (``Runtime``):

* ``sys.path``: the unzipped deployment package (the task root), then the
  runtime directory holding ``awslambdaric`` and ``boto3`` (what Lambda's
  ``/var/runtime`` provides), then the standard library; no site-packages
  (``python -S``), so nothing of this machine's installs leaks in;
* the environment variables Lambda sets (``AWS_LAMBDA_FUNCTION_NAME``,
  ``_HANDLER``, ``AWS_LAMBDA_FUNCTION_MEMORY_SIZE``, ``LAMBDA_TASK_ROOT``,
  ``AWS_LAMBDA_RUNTIME_API``, ``AWS_REGION``...) plus the function's own, and
  none of the caller's;
* a read-only file system except ``/tmp``.  Where the kernel lets us (root,
  or a user namespace), the environment enters its own mount namespace and
  bind-mounts the task root and every other mount read-only, ``/tmp``, ``/dev``,
  ``/proc`` and ``/sys`` excepted: a write fails with ``EROFS`` as on Lambda.
  Elsewhere the task root is made read-only by permissions (``chmod -R a-w``,
  owned by ``nobody`` when we are root).  Either way the environment then
  drops every capability, so even as uid 0 it cannot undo either.
  ``Runtime.sandbox`` says which was done (``"mount"`` or ``"permissions"``).
"""

from __future__ import annotations

import asyncio
import glob
import json
import os
import shutil
import subprocess
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

from wukong.lambda_local.worker import ERROR, OK, error_body
from wukong.process import spawn

__all__ = ["EnvironmentExit", "Runtime", "RuntimeEnvironment", "find_python", "install_runtime"]

PYTHON_VERSION = "3.12"  # the Lambda runtime executor/build.py builds for
RUNTIME_PACKAGES = ["awslambdaric>=3,<5", "boto3"]
PREFIX = "/2018-06-01/runtime/"
MAX_RESPONSE = 6_291_456  # Lambda's limit on a synchronous response

# Runs first in each environment under the runtime's Python (``python -S -c``),
# standard library only: tie its life to ours, enter the sandbox, drop every
# capability, set the path, then hand over to awslambdaric as ``python -m`` would.
_LAUNCHER = r"""
import ctypes, os, runpy, sys
parent, task, runtime, handler = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl(1, 9, 0, 0, 0)  # PR_SET_PDEATHSIG: SIGKILL when the server's loop thread ends
if os.getppid() != parent:
    os._exit(1)

def mount(src, dst, flags):
    if libc.mount(src and src.encode(), dst.encode(), None, flags, None) != 0:
        raise OSError(ctypes.get_errno(), "mount " + dst)

MS_RDONLY, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 32, 4096, 16384, 1 << 18
WRITABLE = ("/tmp", "/dev", "/proc", "/sys")
sandbox = "permissions"
if libc.unshare(0x00020000) == 0:  # CLONE_NEWNS: a private mount table
    try:
        mount(None, "/", MS_REC | MS_PRIVATE)
        mount("/tmp", "/tmp", MS_BIND | MS_REC)  # its own mount, left writable
        mount(task, task, MS_BIND)
        with open("/proc/self/mountinfo") as f:
            points = [line.split()[4].encode().decode("unicode_escape") for line in f]
        for point in sorted(set(points)):
            under = [w for w in WRITABLE if point == w or point.startswith(w + "/")]
            if point == task or not under:
                try:
                    mount(None, point, MS_REMOUNT | MS_BIND | MS_RDONLY)
                except OSError:
                    if point in ("/", task):
                        raise
        sandbox = "mount"
    except OSError as e:
        sys.exit(f"lambda-local: cannot make the file system read-only: {e}")
for cap in range(64):
    libc.prctl(24, cap, 0, 0, 0)  # PR_CAPBSET_DROP (fails harmlessly without CAP_SETPCAP)
libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
libc.capset(header, (ctypes.c_uint32 * 6)())  # effective, permitted, inheritable: none
os.environ["WUKONG_LAMBDA_LOCAL_SANDBOX"] = sandbox
sys.path[:] = [task, runtime] + [p for p in sys.path[1:] if p]
sys.argv = ["awslambdaric", handler]
runpy.run_module("awslambdaric", run_name="__main__", alter_sys=True)
"""


class EnvironmentExit(Exception):
    """The process running an invocation (a worker or an execution environment) went away."""


# --------------------------------------------------------------------------- set-up


def find_python(version: str = PYTHON_VERSION, given: str | None = None) -> str:
    """A Python ``version`` executable: ``given``, ``pythonX.Y`` on the PATH, or pyenv's."""
    candidates = [given] if given else [shutil.which(f"python{version}")]
    if not given:
        candidates += sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{version}.*/bin/python3")))
    for c in filter(None, candidates):
        try:
            out = subprocess.run([c, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], capture_output=True)
        except OSError:
            continue
        if out.returncode == 0 and out.stdout.decode().strip() == version:
            return c
    raise RuntimeError(
        f"no Python {version} found (the Lambda runtime's): tried {[c for c in candidates if c]}; "
        f"install one (e.g. `pyenv install {version}`) or pass its path"
    )


def install_runtime(python: str, directory: str | os.PathLike | None = None) -> Path:
    """The runtime directory for ``python``: ``awslambdaric`` and ``boto3``, installed once.

    Lambda's python runtimes bring both (in ``/var/runtime``); they are not
    part of the deployment zip.  Default place:
    ``~/.cache/wukong/lambda-runtime/python<version>``.
    """
    out = subprocess.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], capture_output=True)
    version = out.stdout.decode().strip()
    path = Path(directory or Path.home() / ".cache" / "wukong" / "lambda-runtime" / f"python{version}")
    if (path / "awslambdaric").is_dir() and (path / "boto3").is_dir():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=path.name + ".", dir=path.parent))
    try:
        subprocess.run(
            [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--only-binary=:all:",
             "--target", str(tmp), *RUNTIME_PACKAGES],
            check=True,
        )  # fmt: skip
        try:
            tmp.rename(path)  # atomic: a concurrent install of the same either wins or finds it there
        except OSError:
            if not (path / "awslambdaric").is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


class Runtime:
    """A deployment package unzipped read-only, and the runtime that runs it.

    Parameters
    ----------
    zip_path : path
        The deployment package (``executor/build.py``'s output).
    python : str, optional
        The runtime's Python; found by ``find_python`` when not given.
    runtime_dir : path, optional
        Where ``awslambdaric`` and ``boto3`` are (installed there if missing).
    """

    def __init__(self, zip_path: str | os.PathLike, python: str | None = None, runtime_dir: Any = None):
        self.zip_path = Path(zip_path)
        if not self.zip_path.is_file():
            raise FileNotFoundError(f"no deployment package at {self.zip_path}: build it with `make lambda-zip`")
        self.python = find_python(given=python)
        self.runtime_dir = install_runtime(self.python, runtime_dir)
        self.work = Path(tempfile.mkdtemp(prefix="wukong-lambda-local-"))
        os.chmod(self.work, 0o755)  # mkdtemp's 0700 would hide the task root from ``nobody``
        self.task_root = self.work / "task"
        try:
            with zipfile.ZipFile(self.zip_path) as z:
                z.extractall(self.task_root)
            _make_read_only(self.task_root)
        except BaseException:
            self.close()
            raise

    def command(self, handler: str) -> list[str]:
        """argv of one environment (the loop thread's pid is checked by the launcher)."""
        where = [str(os.getpid()), str(self.task_root), str(self.runtime_dir)]
        return [self.python, "-S", "-c", _LAUNCHER, *where, handler]

    def close(self) -> None:
        """Remove the unzipped package."""
        if self.work.exists():
            for d, dirs, _ in os.walk(self.work):
                for name in dirs:
                    os.chmod(os.path.join(d, name), 0o755)
            os.chmod(self.work, 0o755)
            shutil.rmtree(self.work, ignore_errors=True)

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _make_read_only(root: Path) -> None:
    """``chmod -R a-w``; owned by ``nobody`` when we are root, so uid 0 without capabilities is "other"."""
    owner = 65534 if os.geteuid() == 0 else -1
    for d, dirs, files in os.walk(root, topdown=False):
        for name in files:
            p = os.path.join(d, name)
            os.chmod(p, os.stat(p).st_mode & 0o555)
            os.chown(p, owner, owner) if owner >= 0 else None
        for name in dirs:
            os.chmod(os.path.join(d, name), 0o555)
            os.chown(os.path.join(d, name), owner, owner) if owner >= 0 else None
    os.chmod(root, 0o555)
    if owner >= 0:
        os.chown(root, owner, owner)


# --------------------------------------------------------------------------- environments


class RuntimeEnvironment:
    """One execution environment: awslambdaric in the runtime's Python, and its Runtime API server.

    Use ``await RuntimeEnvironment.start(...)``; then ``ready`` resolves when the
    runtime first asks for an invocation (init done) or reports an init error.
    """

    def __init__(self, function: str, memory: int, region: str, account: str):
        loop = asyncio.get_running_loop()
        self.function, self.memory, self.region, self.account = function, memory, region, account
        self.ready: asyncio.Future = loop.create_future()
        self.current: asyncio.Future | None = None
        self.alive = True
        self.served = False
        self.init_error: bytes | None = None
        self.proc: subprocess.Popen
        self._inbox: asyncio.Queue = asyncio.Queue(maxsize=1)
        self._rid: str | None = None
        self._started = 0.0
        self._retired = loop.create_future()  # an init-failed environment: retired after one answer
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[asyncio.Task] = set()

    @classmethod
    async def start(
        cls, runtime: Runtime, function: str, handler: str, env: dict[str, str], memory: int, region: str, account: str
    ) -> RuntimeEnvironment:
        self = cls(function, memory, region, account)
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, limit=2**16)
        port = self._server.sockets[0].getsockname()[1]
        env = {**env, "AWS_LAMBDA_RUNTIME_API": f"127.0.0.1:{port}", "_HANDLER": handler}
        env["LAMBDA_TASK_ROOT"] = str(runtime.task_root)
        env["LAMBDA_RUNTIME_DIR"] = str(runtime.runtime_dir)
        self.proc = spawn(runtime.command(handler), env=env, cwd=str(runtime.task_root), stdin=subprocess.DEVNULL)
        return self

    # -- the Invoke side (LambdaLocal's loop) -------------------------------------

    async def call(self, job: Any, meta: dict, timeout: float) -> tuple[int, float, bytes]:
        if self.init_error is not None:  # Lambda answers the init error, then tries a fresh init
            self.alive = False
            if not self._retired.done():
                self._retired.set_result(None)
            return ERROR, 0.0, self.init_error
        self.current = fut = asyncio.get_running_loop().create_future()
        self._inbox.put_nowait((job.payload, meta))
        try:
            async with asyncio.timeout(timeout):
                return await fut
        finally:
            self.current = None

    async def read_frames(self) -> None:
        """Return when the environment is gone; fail what it was running."""
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, self.proc.wait)
            if self.init_error is not None:
                await self._retired  # kept (dead) until an invocation has seen its init error
        finally:
            self.alive = False
            if self._server is not None:
                self._server.close()
            for task in list(self._connections):
                task.cancel()
            for fut in (self.ready, self.current):
                if fut is not None and not fut.done():
                    fut.set_exception(EnvironmentExit())

    def kill(self) -> None:
        self.alive = False
        if not self._retired.done():
            self._retired.set_result(None)
        if self.proc.poll() is None:
            self.proc.kill()

    # -- the Runtime API (the environment's requests) -----------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                    return
                method, path, headers = _parse(head)
                if headers.get("expect", "").lower() == "100-continue":
                    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                status, extra, payload = await self._route(method, path, headers, body)
                writer.write(_response(status, extra, payload))
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            self._connections.discard(task)
            writer.close()

    async def _route(self, method: str, path: str, headers: dict, body: bytes) -> tuple[int, list, bytes]:
        if not path.startswith(PREFIX):
            return _runtime_error(404, "UnknownPath", f"no such path {path}")
        rest = path[len(PREFIX) :]
        if method == "GET" and rest == "invocation/next":
            return await self._next()
        if method == "POST" and rest == "init/error":
            self.init_error = body or error_body("init failed", headers.get("lambda-runtime-function-error-type", ""))
            if not self.ready.done():
                self.ready.set_result(None)
                self.served = True
            return 202, [], b'{"status":"OK"}'
        parts = rest.split("/")
        if method == "POST" and len(parts) == 3 and parts[0] == "invocation" and parts[2] in ("response", "error"):
            return self._finish(parts[1], parts[2], body)
        return _runtime_error(404, "UnknownPath", f"no such path {method} {path}")

    async def _next(self) -> tuple[int, list, bytes]:
        if not self.ready.done():
            self.served = True
            self.ready.set_result(None)
        payload, meta = await self._inbox.get()
        self._rid, self._started = meta["rid"], time.perf_counter()
        arn = f"arn:aws:lambda:{self.region}:{self.account}:function:{self.function}"
        headers = [
            ("Lambda-Runtime-Aws-Request-Id", meta["rid"]),
            ("Lambda-Runtime-Deadline-Ms", str(int(meta["deadline"] * 1000))),
            ("Lambda-Runtime-Invoked-Function-Arn", arn),
            ("Lambda-Runtime-Trace-Id", f"Root=1-{int(time.time()):08x}-{meta['rid'].replace('-', '')[:24]}"),
        ]
        if meta.get("cc"):  # the Invoke API's base64 client context, decoded, as Lambda passes it on
            import base64

            headers.append(("Lambda-Runtime-Client-Context", base64.b64decode(meta["cc"]).decode()))
        return 200, headers, payload

    def _finish(self, rid: str, outcome: str, body: bytes) -> tuple[int, list, bytes]:
        if rid != self._rid or self.current is None or self.current.done():
            return _runtime_error(400, "InvalidRequestID", f"Invalid request ID: {rid}")
        seconds = time.perf_counter() - self._started
        self._rid = None
        if outcome == "error":
            self.current.set_result((ERROR, seconds, body))
        elif len(body) > MAX_RESPONSE:
            msg = (
                f"Response payload size ({len(body)} bytes) exceeded maximum allowed payload size "
                f"({MAX_RESPONSE} bytes)."
            )
            self.current.set_result((ERROR, seconds, error_body(msg, "Function.ResponseSizeTooLarge")))
            return _runtime_error(413, "RequestEntityTooLarge", msg)
        else:
            self.current.set_result((OK, seconds, body))
        return 202, [], b'{"status":"OK"}'


def environment_variables(function: str, memory: int, region: str, extra: dict[str, str]) -> dict[str, str]:
    """What Lambda puts in a python3.12 function's environment (``_HANDLER`` and the
    ``AWS_LAMBDA_RUNTIME_API`` are per environment), plus the function's own ``extra``."""
    env = {
        "AWS_LAMBDA_FUNCTION_NAME": function,
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(memory),
        "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{function}",
        "AWS_LAMBDA_LOG_STREAM_NAME": f"lambda-local/{os.getpid()}",
        "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
        "AWS_EXECUTION_ENV": f"AWS_Lambda_python{PYTHON_VERSION}",
        "AWS_REGION": region,
        "AWS_DEFAULT_REGION": region,
        "TZ": ":UTC",
        "LANG": "en_US.UTF-8",
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": "/tmp",  # not set on Lambda; /tmp is the one writable place
    }
    env.update(extra)
    return env


def _parse(head: bytes) -> tuple[str, str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        key, sep, value = line.partition(":")
        if sep:
            headers[key.strip().lower()] = value.strip()
    return method, target.partition("?")[0], headers


def _response(status: int, headers: list[tuple[str, str]], body: bytes) -> bytes:
    reason = {200: "OK", 202: "Accepted", 400: "Bad Request", 404: "Not Found", 413: "Payload Too Large"}
    lines = [f"HTTP/1.1 {status} {reason.get(status, 'Error')}", *(f"{k}: {v}" for k, v in headers)]
    lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _runtime_error(status: int, error_type: str, message: str) -> tuple[int, list, bytes]:
    return status, [], json.dumps({"errorMessage": message, "errorType": error_type}).encode()

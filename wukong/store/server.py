"""A private Redis server: a ``redis-server`` child on a free loopback port.

Random password, no persistence (no RDB, no AOF), its own temporary
directory, ``maxmemory`` unset; it dies with us (``wukong.processes``).
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time

from wukong.errors import WukongError
from wukong.process import spawn, stop

INSTALL_HINT = (
    "wukong's local cluster needs the redis-server binary. Install it with "
    "`apt-get install redis-server` (Debian/Ubuntu), `dnf install redis` (Fedora), "
    "`brew install redis` (macOS), or run `make setup`; or point wukong at an "
    "existing server with LocalCluster(redis_endpoints=[(host, port)])."
)


def find_redis_server() -> str:
    path = os.environ.get("WUKONG_REDIS_SERVER") or shutil.which("redis-server")
    for p in (path, "/usr/bin/redis-server", "/usr/sbin/redis-server", "/usr/local/bin/redis-server"):
        if p and os.access(p, os.X_OK):
            return p
    raise WukongError(f"redis-server not found. {INSTALL_HINT}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """``with RedisServer() as r: r.port, r.password``."""

    def __init__(self, password: str | None = None, port: int | None = None, startup_timeout: float = 10.0):
        self.binary = find_redis_server()
        self.password = password if password is not None else secrets.token_hex(16)
        self.port = port
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen | None = None
        self.dir: tempfile.TemporaryDirectory | None = None

    def start(self) -> RedisServer:
        for _ in range(5):  # a free port may be taken between probing and binding
            port = self.port or free_port()
            if self._start(port):
                self.port = port
                return self
            if self.port:
                break
        raise WukongError(f"could not start redis-server on 127.0.0.1 (last port tried {port}): {self.last_log}")

    def _start(self, port: int) -> bool:
        self.dir = tempfile.TemporaryDirectory(prefix="wukong-redis-")
        args = [
            self.binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            self.dir.name,
            "--protected-mode",
            "yes",
            "--loglevel",
            "notice",
            "--daemonize",
            "no",
            "--maxclients",
            "10000",
            "--tcp-backlog",
            "511",
            "--proto-max-bulk-len",
            "536870912",
        ]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = spawn(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        assert self.proc.stdout is not None
        lines = []
        deadline = time.monotonic() + self.startup_timeout
        for raw in self.proc.stdout:  # blocks until redis logs readiness or exits
            line = raw.decode(errors="replace").rstrip()
            lines.append(line)
            if "Ready to accept connections" in line:
                threading.Thread(target=self._drain, args=(self.proc.stdout,), daemon=True).start()
                return True
            if time.monotonic() > deadline:
                break
        self.last_log = "\n".join(lines[-5:])
        self.stop()
        return False

    def _drain(self, pipe) -> None:  # redis must never block on a full log pipe
        for _ in pipe:
            pass

    @property
    def endpoint(self) -> tuple[str, int]:
        assert self.port is not None
        return ("127.0.0.1", self.port)

    def stop(self) -> None:
        if self.proc is not None:
            stop([self.proc])
            self.proc = None
        if self.dir is not None:
            self.dir.cleanup()
            self.dir = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

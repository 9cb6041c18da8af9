"""A private Redis server: a ``redis-server`` child on a free loopback port.

Random password, no persistence (no RDB, no AOF), its own temporary
directory, ``maxmemory`` unset; it dies with us (``wukong.process``).  Its
configuration goes to ``redis-server -`` on stdin, so the password is never in
its argv; readiness is awaited by the clock (``startup_timeout``).
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
from collections import deque
from collections.abc import Sequence
from typing import Any

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
    """``with RedisServer() as r: r.port, r.password``.

    The configuration, password included, goes to ``redis-server -`` on its
    stdin: it never appears in the child's argv (``/proc/<pid>/cmdline`` is
    readable by every user).  Readiness is awaited by the clock: a server that
    neither says "Ready to accept connections" nor exits within
    ``startup_timeout`` seconds is stopped and ``start`` raises, naming its
    last log lines.
    """

    def __init__(
        self,
        password: str | None = None,
        port: int | None = None,
        startup_timeout: float = 10.0,
        extra_args: Sequence[str] = (),
    ):
        self.binary = find_redis_server()
        self.extra_args = list(extra_args)
        self.password = password if password is not None else secrets.token_hex(16)
        self.port = port
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen | None = None
        self.dir: tempfile.TemporaryDirectory | None = None
        self.last_log = ""

    def start(self) -> RedisServer:
        deadline = time.monotonic() + self.startup_timeout
        port = self.port
        for _ in range(5):  # a free port may be taken between probing and binding
            port = self.port or free_port()
            outcome = self._start(port, deadline)
            if outcome == "ready":
                self.port = port
                return self
            if self.port or outcome == "timeout":
                break
        if outcome == "timeout":
            raise WukongError(
                f"redis-server ({self.binary}) on 127.0.0.1:{port} was not ready after "
                f"{self.startup_timeout:g}s (startup_timeout); its last output: {self.last_log or '(none)'}"
            )
        raise WukongError(f"could not start redis-server on 127.0.0.1 (last port tried {port}): {self.last_log}")

    def config(self, port: int, directory: str) -> str:
        """The server's configuration file (what ``redis-server -`` reads on stdin)."""
        lines = [
            f"port {port}",
            "bind 127.0.0.1",
            'save ""',
            "appendonly no",
            f"dir {_quote(directory)}",
            "protected-mode yes",
            "loglevel notice",
            "daemonize no",
            "maxclients 10000",
            "tcp-backlog 511",
            "proto-max-bulk-len 536870912",
        ]
        socket = _socket_path(directory)
        if socket is not None:  # for clients on this machine: a round trip costs less than on TCP
            lines += [f"unixsocket {_quote(socket)}", "unixsocketperm 700"]
        if self.password:  # masterauth: a cluster's replicas authenticate to their primaries
            lines += [f"requirepass {_quote(self.password)}", f"masterauth {_quote(self.password)}"]
        return "\n".join(lines) + "\n"

    def _start(self, port: int, deadline: float) -> str:
        """One attempt on ``port``: "ready", "exited" (e.g. the port was taken) or "timeout"."""
        self.dir = tempfile.TemporaryDirectory(prefix="wukong-redis-")
        argv = [self.binary, "-", *self.extra_args]  # "-": the configuration comes on stdin
        self.proc = spawn(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.PIPE)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(self.config(port, self.dir.name).encode())
            self.proc.stdin.close()
        except OSError:
            pass  # it exited already: its log says why
        log = _Log(self.proc.stdout)
        outcome = log.wait_ready(self.proc, deadline)
        self.last_log = log.tail()
        if outcome != "ready":
            self.stop()
        return outcome

    @property
    def endpoint(self) -> tuple[str, int]:
        assert self.port is not None
        return ("127.0.0.1", self.port)

    @property
    def unix_socket(self) -> str | None:
        """The path of the server's Unix socket, where it has one (``Endpoint.unix_socket``)."""
        return _socket_path(self.dir.name) if self.dir is not None else None

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


SOCKET_PATH_MAX = 100  # bytes; a Unix socket's path must fit in sun_path (108 on Linux)


def _socket_path(directory: str) -> str | None:
    """The Unix socket of the server whose directory is ``directory``: none where the
    path would be too long for a socket (a long ``$TMPDIR``); TCP serves alone then."""
    path = os.path.join(directory, "redis.sock")
    return path if len(os.fsencode(path)) <= SOCKET_PATH_MAX else None


def _quote(value: str) -> str:
    """A configuration-file string: double quotes, with ``\\`` and ``"`` escaped."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class _Log:
    """Reads a server's output on a thread for its whole life (it must never block
    on a full pipe), keeping the last lines and noting readiness."""

    def __init__(self, pipe: Any):
        self.lines: deque[str] = deque(maxlen=20)
        self.ready = threading.Event()
        self.ended = threading.Event()
        threading.Thread(target=self._read, args=(pipe,), name="wukong-redis-log", daemon=True).start()

    def _read(self, pipe: Any) -> None:
        try:
            for raw in pipe:
                line = raw.decode(errors="replace").rstrip()
                self.lines.append(line)
                if "Ready to accept connections" in line:
                    self.ready.set()
        except (OSError, ValueError):
            pass
        finally:
            self.ended.set()

    def wait_ready(self, proc: subprocess.Popen, deadline: float) -> str:
        while not self.ready.is_set():
            if self.ended.is_set() or proc.poll() is not None:
                return "ready" if self.ready.is_set() else "exited"
            if time.monotonic() >= deadline:
                return "timeout"
            self.ready.wait(min(0.05, max(0.0, deadline - time.monotonic())))
        return "ready"

    def tail(self, n: int = 5) -> str:
        return "\n".join(list(self.lines)[-n:])


class RedisClusterServers:
    """A private Redis Cluster: ``masters`` primaries with ``replicas`` replicas each.

    ``with RedisClusterServers(3, 1) as c: c.url`` -- every node is a
    ``RedisServer`` child with ``--cluster-enabled yes`` on a free loopback
    port, joined by ``redis-cli --cluster create``; ``url`` names one node
    (a ``redis://`` URL with the password, for ``LocalCluster(redis_cluster=)``).
    """

    def __init__(self, masters: int = 3, replicas: int = 1, node_timeout_ms: int = 2000, binary: str | None = None):
        self.masters, self.replicas, self.node_timeout_ms = masters, replicas, node_timeout_ms
        self.binary = binary
        self.password = secrets.token_hex(16)
        self.nodes: list[RedisServer] = []

    def start(self) -> RedisClusterServers:
        try:
            for _ in range(self.masters * (1 + self.replicas)):
                node = RedisServer(self.password, extra_args=self._cluster_args())
                if self.binary:
                    node.binary = self.binary
                self.nodes.append(node.start())
            self.cli(
                "--cluster", "create", *[f"127.0.0.1:{n.port}" for n in self.nodes],
                "--cluster-replicas", str(self.replicas), "--cluster-yes",
            )  # fmt: skip
            self.wait_ok()
        except BaseException:
            self.stop()
            raise
        return self

    def _cluster_args(self) -> list[str]:
        conf = f"nodes-{secrets.token_hex(6)}.conf"  # in the node's own --dir
        # A replica's first sync starts at once (not after the default 5 s wait for more
        # replicas): until it is in sync it cannot be promoted, and a lost master stays lost.
        return ["--cluster-enabled", "yes", "--cluster-config-file", conf, "--cluster-node-timeout",
                str(self.node_timeout_ms), "--repl-diskless-sync-delay", "0"]  # fmt: skip

    def cli(self, *args: str, timeout: float = 120.0) -> str:
        """Run ``redis-cli`` (authenticated through its environment, not its argv)."""
        cli = shutil.which("redis-cli") or os.path.join(os.path.dirname(find_redis_server()), "redis-cli")
        env = {**os.environ, "REDISCLI_AUTH": self.password}
        done = subprocess.run([cli, *args], env=env, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
        out = done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")
        if done.returncode != 0 or "[ERR]" in out:
            raise WukongError(f"redis-cli {' '.join(args[:2])} failed: {out[-2000:]}")
        return out

    def wait_ok(self, timeout: float = 60.0) -> None:
        """Until every live node says ``cluster_state:ok`` and agrees on the slots, and
        every live replica is in sync with its primary (else it could not take over)."""
        deadline = time.monotonic() + timeout
        while True:
            live = [n for n in self.nodes if n.proc is not None]
            try:
                if all("cluster_state:ok" in self.cli("-p", str(n.port), "cluster", "info") for n in live):
                    self.cli("--cluster", "check", f"127.0.0.1:{live[0].port}")
                    if all(self._in_sync(n) for n in live):
                        return
            except WukongError:
                pass
            if time.monotonic() > deadline:
                raise WukongError(f"the Redis Cluster on ports {[n.port for n in live]} did not become ready")
            time.sleep(0.1)

    def _in_sync(self, node: RedisServer) -> bool:
        """A primary, or a replica whose link to its primary is up."""
        info = self.cli("-p", str(node.port), "info", "replication")
        return "role:master" in info or "master_link_status:up" in info

    def primaries(self) -> list[RedisServer]:
        """The nodes that are masters now (a replica promoted after a failover included)."""
        out = []
        for n in self.nodes:
            if n.proc is not None and "role:master" in self.cli("-p", str(n.port), "info", "replication"):
                out.append(n)
        return out

    @property
    def url(self) -> str:
        live = next(n for n in self.nodes if n.proc is not None)
        return f"redis://:{self.password}@127.0.0.1:{live.port}"

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()
        self.nodes = []

    def __enter__(self) -> RedisClusterServers:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

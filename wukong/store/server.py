"""A private Redis server: a ``redis-server`` child on a free loopback port.

Random password (handed over on stdin, never in argv), no persistence (no RDB, no AOF), its own temporary
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
from collections.abc import Sequence

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
        args += self.extra_args
        # The password goes in on stdin ("-": read config from it), never in our
        # argv or environment, where any local user could read it.
        self.proc = spawn(
            [*args[:1], "-", *args[1:]], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.PIPE
        )
        assert self.proc.stdout is not None and self.proc.stdin is not None
        secret = f'requirepass "{self.password}"\nmasterauth "{self.password}"\n' if self.password else ""
        self.proc.stdin.write(secret.encode())
        self.proc.stdin.close()
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
        return ["--cluster-enabled", "yes", "--cluster-config-file", conf, "--cluster-node-timeout",
                str(self.node_timeout_ms)]  # fmt: skip

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
        """Until every live node says ``cluster_state:ok`` and agrees on the slots."""
        deadline = time.monotonic() + timeout
        while True:
            live = [n for n in self.nodes if n.proc is not None]
            try:
                if all("cluster_state:ok" in self.cli("-p", str(n.port), "cluster", "info") for n in live):
                    self.cli("--cluster", "check", f"127.0.0.1:{live[0].port}")
                    return
            except WukongError:
                pass
            if time.monotonic() > deadline:
                raise WukongError(f"the Redis Cluster on ports {[n.port for n in live]} did not become ready")
            time.sleep(0.1)

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

"""Running a proxy: a local child process, and the options every executor of a cluster gets."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import weakref

from wukong.process import spawn, stop
from wukong.proxy.frames import SECRET_ENV, ProxyError

MAX_IN_FLIGHT = 256


class LocalProxy:
    """A proxy in a child process on 127.0.0.1 (``LocalCluster(use_local_proxy=True)``)."""

    def __init__(self, port: int = 0, *, max_in_flight: int = MAX_IN_FLIGHT):
        self.secret = secrets.token_hex(32)
        argv = [sys.executable, "-c", "import sys; from wukong.proxy.server import main; sys.exit(main())"]
        argv += ["--port", str(port), "--max-in-flight", str(max_in_flight)]
        self.proc = spawn(argv, stdout=subprocess.PIPE, env={**os.environ, SECRET_ENV: self.secret})
        self._finalizer = weakref.finalize(self, stop, [self.proc])
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode().split()
        self.proc.stdout.close()
        if len(line) != 2 or line[0] != "listening":
            self.stop()
            raise ProxyError(f"the proxy did not start (exit code {self.proc.returncode})")
        self.address = line[1]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        self._finalizer()


def proxy_config(
    proxy_address: str | None,
    proxy_port: int | None,
    use_local_proxy: bool,
    max_task_fanout: int,
    proxy_secret: str | None = None,
) -> tuple[LocalProxy | None, dict | None]:
    """What ``LocalCluster`` needs: the proxy it started (if any) and the executors' proxy config."""
    if max_task_fanout < 1:
        raise ValueError(f"max_task_fanout must be at least 1, got {max_task_fanout}")
    if use_local_proxy:
        if proxy_address:
            raise ValueError("give either proxy_address or use_local_proxy=True, not both")
        local = LocalProxy(proxy_port or 0)
        return local, {"address": local.address, "secret": local.secret, "max_task_fanout": max_task_fanout}
    if not proxy_address:
        return None, None
    if ":" not in proxy_address:
        if not proxy_port:
            raise ValueError(f"proxy_address {proxy_address!r} has no port and proxy_port is not given")
        proxy_address = f"{proxy_address}:{proxy_port}"
    secret = proxy_secret or os.environ.get(SECRET_ENV)
    if not secret:
        raise ValueError(f"a proxy_address needs its shared secret: proxy_secret= or ${SECRET_ENV}")
    return None, {"address": proxy_address, "secret": secret, "max_task_fanout": max_task_fanout}

"""The executor's side of the proxy: ``ProxyClient``.

Before calling the proxy the executor has already stored the parent's output
and emitted its count of invocations, so either the proxy or the executor --
never both, never neither -- must start them: each request carries a fresh
claim name, and whoever adds it first to the job's claims registry owns the
fan-out (``wukong.proxy`` explains).
"""

from __future__ import annotations

import secrets
import socket
import sys
import time
from collections.abc import Callable, Sequence

from wukong.protocol import Invocation, Keys, encode_invocation
from wukong.proxy.frames import AuthenticationFailed, ProxyError, pack, recv_frame
from wukong.store import Store

RETRY_AFTER_S = 5.0  # after a failure, executors invoke directly this long before trying the proxy again


class ProxyClient:
    """``proxy(job, tid, invocations) -> bool``: what an ``Executor`` calls.

    True when the invocations are handed over (by the proxy, or, after a
    failure, found claimed by it); False when the caller must invoke them
    itself (the claim is then the caller's).  Failures are logged once.

    ``renew()``, when given, reads the shared secret again: a proxy that fails
    to authenticate a request (its secret was rotated, as when a new proxy
    starts under the same secret ARN while this warm container kept the old
    one) gets the request once more with the renewed secret, under the same
    claim, before the caller gives up on it.  A proxy that refused the frame
    ran nothing, and one that ran it holds the claim, so nothing runs twice.
    """

    def __init__(
        self,
        address: str,
        secret: str | bytes,
        route: dict,
        store: Store,
        *,
        timeout: float = 60.0,
        renew: Callable[[], str | None] | None = None,
    ):
        host, _, port = address.rpartition(":")
        self.address = (host or "127.0.0.1", int(port))
        self.secret = secret.encode() if isinstance(secret, str) else secret
        self.renew = renew
        self.route = route
        self.store = store
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self.warned = False
        self.down_until = 0.0

    def __call__(self, job: str, tid: int, invocations: Sequence[Invocation]) -> bool:
        if time.monotonic() < self.down_until:  # it just failed: do not wait on it again yet
            return False
        claim = Keys(job).proxy_claim(tid, secrets.token_hex(8))
        try:
            try:
                self.request(job, tid, claim, invocations)
            except AuthenticationFailed:
                if not self.renewed():
                    raise
                self.request(job, tid, claim, invocations)
            return True
        except (OSError, ProxyError, ValueError) as exc:
            self.disconnect()
            self.warn(exc)
            self.down_until = time.monotonic() + RETRY_AFTER_S
        return not self.claim(job, claim)

    def renewed(self) -> bool:
        """Read the secret again (``renew``); True when it changed."""
        self.disconnect()  # the proxy hung up after the failure
        secret = self.renew() if self.renew is not None else None
        if not secret or secret.encode() == self.secret:
            return False
        self.secret = secret.encode()
        return True

    def stats(self) -> dict:
        """The proxy's counts of requests served and refused."""
        return self.roundtrip(pack(self.secret, {"op": "stats"}))

    def roundtrip(self, frame: bytes) -> dict:
        sock = self.connect()
        sock.sendall(frame)
        reply = recv_frame(sock, self.secret)
        if not reply.get("ok"):
            error = reply.get("error", "error")
            raise (AuthenticationFailed if error == str(AuthenticationFailed()) else ProxyError)(error)
        return reply

    def request(self, job: str, tid: int, claim: str, invocations: Sequence[Invocation]) -> int:
        return self.roundtrip(self.frame(job, tid, claim, invocations))["n"]

    def frame(self, job: str, tid: int, claim: str, invocations: Sequence[Invocation]) -> bytes:
        """The parent's output once, each child encoded without it."""
        blob: bytes | None = None
        children, encoded = [], []
        for inv in invocations:
            inline = bool(inv.inline)
            if inline:
                if len(inv.inline) != 1 or tid not in inv.inline:
                    raise ProxyError("an invocation carries inputs other than its parent's output")
                value = inv.inline[tid]
                if blob is None:
                    blob = value
                elif value is not blob and value != blob:
                    raise ProxyError("invocations carry different parent outputs")
                inv = inv._replace(inline={})
            e = encode_invocation(inv)
            children.append((len(e), inline))
            encoded.append(e)
        blob = blob or b""
        header = {"job": job, "claim": claim, "route": self.route, "tid": tid, "blob": len(blob), "children": children}
        return pack(self.secret, header, blob, *encoded)

    def connect(self) -> socket.socket:
        if self.sock is None:
            sock = socket.create_connection(self.address, timeout=min(self.timeout, 2.0))
            sock.settimeout(self.timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock = sock
        return self.sock

    def disconnect(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            finally:
                self.sock = None

    def claim(self, job: str, claim: str) -> bool:
        """Take the fan-out over; False when the proxy already has it."""
        pipe = self.store.mds.pipeline(transaction=False)
        pipe.sadd(Keys(job).parts, claim)
        pipe.expire(Keys(job).parts, self.store.ttl)
        added, _ = pipe.execute()
        return bool(added)

    def warn(self, exc: BaseException) -> None:
        if not self.warned:
            self.warned = True
            where = f"{self.address[0]}:{self.address[1]}"
            print(f"wukong: proxy at {where} failed ({exc}); invoking directly", file=sys.stderr, flush=True)


def executor_kwargs(
    config: dict | None, store: Store, route: dict, renew: Callable[[], str | None] | None = None
) -> dict:
    """``Executor`` keyword arguments for a cluster's proxy config (``{}``: no proxy);
    ``renew``: reads the secret again (``ProxyClient``)."""
    if not config:
        return {}
    client = ProxyClient(config["address"], config["secret"], route, store, renew=renew)
    return {"proxy": client, "max_task_fanout": config["max_task_fanout"]}

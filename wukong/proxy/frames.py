"""The proxy's wire: authenticated request/reply frames.

One TCP connection carries any number of frames::

    frame  = !I n | head MAC (32 bytes) | body MAC (32 bytes) | body (n bytes)
    head MAC = HMAC-SHA256(secret, "wukong-proxy-head" | !I n)
    body MAC = HMAC-SHA256(secret, !I n | body)
    body   = !I header length | header (JSON) | blob | child invocations

The length is authenticated before the body is read: a peer without the
secret can make the proxy read the 68-byte prefix and nothing more, so the
frame size cap (``MAX_FRAME``) binds only peers that hold the secret.
(``wukong.proxy`` explains the requests; ``client`` and ``server`` speak it.)
"""

from __future__ import annotations

import hashlib
import hmac
import socket
import struct

import orjson

SECRET_ENV = "WUKONG_PROXY_SECRET"
MAX_FRAME = 256 * 1024 * 1024
MAC_SIZE = 32
LEN = struct.Struct("!I")
PREFIX = struct.Struct(f"!I{MAC_SIZE}s{MAC_SIZE}s")  # n, head MAC, body MAC
HEAD_TAG = b"wukong-proxy-head"


class ProxyError(Exception):
    """The proxy could not be reached, or refused or failed a request."""


class AuthenticationFailed(ProxyError):
    """A frame's MAC does not match: the two sides hold different secrets."""

    def __init__(self, message: str = "authentication failed"):
        super().__init__(message)


# -- framing -----------------------------------------------------------------------


def _mac(secret: bytes, *data: bytes | memoryview) -> bytes:
    h = hmac.new(secret, digestmod=hashlib.sha256)
    for d in data:
        h.update(d)
    return h.digest()


def pack(secret: bytes, header: dict, *parts: bytes) -> bytes:
    """One authenticated frame: ``header`` (JSON) followed by raw ``parts``."""
    head = orjson.dumps(header)
    body = b"".join([LEN.pack(len(head)), head, *parts])
    n = LEN.pack(len(body))
    return PREFIX.pack(len(body), _mac(secret, HEAD_TAG, n), _mac(secret, n, body)) + body


def read_prefix(secret: bytes, prefix: bytes) -> tuple[int, bytes]:
    """(body length, body MAC) of a frame's prefix; ``ProxyError`` unless authentic and within the cap."""
    n, head_mac, body_mac = PREFIX.unpack(prefix)
    if not hmac.compare_digest(head_mac, _mac(secret, HEAD_TAG, LEN.pack(n))):
        raise AuthenticationFailed()
    if n > MAX_FRAME:
        raise ProxyError(f"frame of {n} bytes exceeds the limit of {MAX_FRAME}")
    return n, body_mac


def read_body(secret: bytes, body_mac: bytes, body: bytes) -> tuple[dict, memoryview]:
    """An authenticated frame's body -> (header, rest); ``ProxyError`` when bad."""
    view = memoryview(body)
    if not hmac.compare_digest(body_mac, _mac(secret, LEN.pack(len(body)), view)):
        raise AuthenticationFailed()
    if len(body) < LEN.size:
        raise ProxyError("frame too short")
    (n,) = LEN.unpack_from(view)
    try:
        header = orjson.loads(view[LEN.size : LEN.size + n])
    except orjson.JSONDecodeError as exc:
        raise ProxyError(f"bad header: {exc}") from None
    if not isinstance(header, dict):
        raise ProxyError("bad header: not an object")
    return header, view[LEN.size + n :]


def unpack(secret: bytes, frame: bytes) -> tuple[dict, memoryview]:
    """A whole frame -> (header, rest); ``ProxyError`` when bad."""
    if len(frame) < PREFIX.size:
        raise ProxyError("frame too short")
    n, body_mac = read_prefix(secret, frame[: PREFIX.size])
    if len(frame) != PREFIX.size + n:
        raise ProxyError(f"frame of {len(frame) - PREFIX.size} bytes, not {n}")
    return read_body(secret, body_mac, frame[PREFIX.size :])


def recv_frame(sock: socket.socket, secret: bytes) -> dict:
    """The next frame's header from a blocking socket (the client's side)."""
    n, body_mac = read_prefix(secret, recv_exactly(sock, PREFIX.size))
    header, _ = read_body(secret, body_mac, recv_exactly(sock, n))
    return header


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise ProxyError("the proxy closed the connection")
        buf += chunk
    return bytes(buf)

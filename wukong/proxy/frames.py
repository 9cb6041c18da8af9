"""The proxy's wire: authenticated request/reply frames.

One TCP connection carries any number of frames::

    frame  = !I length of what follows | HMAC-SHA256(secret, body) (32 bytes) | body
    body   = !I header length | header (JSON) | blob | child invocations

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


class ProxyError(Exception):
    """The proxy could not be reached, or refused or failed a request."""


# -- framing -----------------------------------------------------------------------


def pack(secret: bytes, header: dict, *parts: bytes) -> bytes:
    """One authenticated frame: ``header`` (JSON) followed by raw ``parts``."""
    head = orjson.dumps(header)
    body = b"".join([LEN.pack(len(head)), head, *parts])
    mac = hmac.new(secret, body, hashlib.sha256).digest()
    return LEN.pack(MAC_SIZE + len(body)) + mac + body


def unpack(secret: bytes, frame: bytes) -> tuple[dict, memoryview]:
    """``frame`` without its length prefix -> (header, rest); ``ProxyError`` when bad."""
    if len(frame) < MAC_SIZE + LEN.size:
        raise ProxyError("frame too short")
    mac, body = frame[:MAC_SIZE], memoryview(frame)[MAC_SIZE:]
    if not hmac.compare_digest(mac, hmac.new(secret, body, hashlib.sha256).digest()):
        raise ProxyError("authentication failed")
    (n,) = LEN.unpack_from(body)
    try:
        header = orjson.loads(body[LEN.size : LEN.size + n])
    except orjson.JSONDecodeError as exc:
        raise ProxyError(f"bad header: {exc}") from None
    if not isinstance(header, dict):
        raise ProxyError("bad header: not an object")
    return header, body[LEN.size + n :]


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise ProxyError("the proxy closed the connection")
        buf += chunk
    return bytes(buf)

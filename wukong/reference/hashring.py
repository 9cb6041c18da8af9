"""Consistent-hash ring: the pure-Python reference of ``wukong_native.HashRing``.

Every server (node) owns ``vnodes`` points on a 64-bit circle; the point of vnode ``v`` of
node ``name`` is ``hash64(f"{name}#{v}")``. A key lives on the node owning the first point
clockwise from ``hash64(key)``: the first point ``>=`` the hash, wrapping around to the
smallest. Points depend on node names, not list positions, so adding or removing one of N
servers moves only about 1/N of the keys.

State, built once: ``_points`` is every vnode point sorted ascending (ties broken by node
index), ``_owners[i]`` the index into ``nodes`` of the node owning ``_points[i]``.

This module is the test oracle, written to be obviously right rather than fast; the
storage layer uses the compiled twin, whose placements are bit-identical.
"""

from __future__ import annotations

from bisect import bisect_left

_MASK64 = (1 << 64) - 1
_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3


def hash64(data: bytes) -> int:
    """FNV-1a 64 of ``data``, then murmur3's fmix64 finalizer.

    >>> hex(hash64(b""))
    '0xefd01f60ba992926'
    """
    h = _FNV_OFFSET
    for byte in data:
        h = ((h ^ byte) * _FNV_PRIME) & _MASK64
    return _fmix64(h)


def _fmix64(h: int) -> int:
    # FNV-1a alone mixes the tail of short, similar strings ("host:6379#17") poorly.
    h ^= h >> 33
    h = (h * 0xFF51AFD7ED558CCD) & _MASK64
    h ^= h >> 33
    h = (h * 0xC4CEB9FE1A85EC53) & _MASK64
    return h ^ (h >> 33)


class HashRing:
    """Consistent-hash ring of ``nodes`` (server names like ``"127.0.0.1:6379"``).

    Parameters
    ----------
    nodes
        Server names; ``node_for`` answers with indexes into this list.
    vnodes
        Points per node on the ring; more points give a more even spread.
    """

    def __init__(self, nodes: list[str], vnodes: int = 160) -> None:
        if not nodes or vnodes <= 0:
            raise ValueError("HashRing needs at least one node")
        self.nodes = list(nodes)
        placed = sorted(
            (hash64(f"{name}#{v}".encode()), index) for index, name in enumerate(self.nodes) for v in range(vnodes)
        )
        self._points = [point for point, _ in placed]
        self._owners = [owner for _, owner in placed]

    def node_for(self, key: bytes) -> int:
        """Index into ``nodes`` of the server holding ``key``."""
        i = bisect_left(self._points, hash64(key))
        return self._owners[i if i < len(self._points) else 0]

    def nodes_for(self, keys: list[bytes]) -> list[int]:
        """``node_for`` of every key."""
        return [self.node_for(key) for key in keys]

    def __len__(self) -> int:
        return len(self.nodes)

    def __repr__(self) -> str:
        return f"HashRing({self.nodes!r})"

from collections.abc import Buffer

TAG_RAW: int
TAG_LZ4: int
HEADER_LEN: int

class HashRing:
    """Consistent-hash ring of ``nodes`` (server names), ``vnodes`` points per node."""

    def __init__(self, nodes: list[str], vnodes: int = 160) -> None: ...
    @property
    def nodes(self) -> list[str]: ...
    def node_for(self, key: bytes) -> int:
        """Index into ``nodes`` of the server holding ``key``."""
    def nodes_for(self, keys: list[bytes]) -> list[int]:
        """``node_for`` of every key; hashes without holding the GIL."""
    def __len__(self) -> int: ...

def hash64(data: bytes) -> int:
    """FNV-1a 64 + murmur3 fmix64: the ring's hash."""

def compress(data: Buffer, *, min_size: int = 1024) -> bytes:
    """Frame ``data``: tag byte, u64 LE length, then raw bytes or one LZ4 block."""

def decompress(frame: Buffer) -> bytes:
    """The original bytes of a frame; ``ValueError`` if it is corrupt or truncated."""

def is_compressible(data: Buffer) -> bool:
    """The cheap probe: would LZ4 shrink ``data`` below 90%? Reads at most 8 KiB."""

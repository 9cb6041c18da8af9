"""Compiled hot paths of wukong's storage layer (Rust, via PyO3).

``HashRing`` places KVS keys on servers by consistent hashing; ``compress`` /
``decompress`` frame values, LZ4-compressing them when the cheap ``is_compressible``
probe says it pays. ``wukong.hashring`` and ``wukong.compression`` are the pure-Python
references with bit-identical output.
"""

from wukong_native._native import (
    HEADER_LEN,
    TAG_LZ4,
    TAG_RAW,
    HashRing,
    compress,
    decompress,
    hash64,
    is_compressible,
)

__all__ = [
    "HEADER_LEN",
    "TAG_LZ4",
    "TAG_RAW",
    "HashRing",
    "compress",
    "decompress",
    "hash64",
    "is_compressible",
]

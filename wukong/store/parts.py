"""Values longer than a Redis string may hold, split into parts.

A Redis string holds at most 512 MB, so ``Batch.kvs_set`` splits a value
longer than ``Store.part_size`` (``PART_SIZE``, 256 MB): the parts go to
``<key>:p0 .. <key>:p<n-1>``, each on its own ring server, and ``<key>``
holds a small header (``MAGIC``, part count, total length).  The part names
are added to the job's registry set on the MDS (``Keys.parts``) in the same
batch, so ``Store.delete_job`` finds and deletes them.  A read that answers
with a header costs one more round trip (``Batch._join_parts``), one pipeline
per server holding parts.  A value that merely looks like a header is stored
as one part, so a read never mistakes it for one.
"""

from __future__ import annotations

import struct
from typing import Any

PART_SIZE = 256 * 1024 * 1024  # values longer than this are split (Redis strings stop at 512 MB)

# The header a split value's key holds: magic, u32 part count, u64 total length.
MAGIC = b"\x00wukong-parts\x00"
HEADER = struct.Struct(f"<{len(MAGIC)}sIQ")


def is_header(value: Any) -> bool:
    return len(value) == HEADER.size and bytes(value[: len(MAGIC)]) == MAGIC


def header(nparts: int, total: int) -> bytes:
    return HEADER.pack(MAGIC, nparts, total)


def read_header(value: bytes) -> tuple[int, int]:
    """(part count, total length) of a header."""
    _, n, total = HEADER.unpack(value)
    return n, total


def names(key: str, n: int) -> list[str]:
    return [f"{key}:p{i}" for i in range(n)]

"""The implementations in use on the hot paths: compiled when built.

Compression and the hash ring come from the Rust module ``wukong_native``;
their pure-Python references (``wukong.compression``, ``wukong.hashring``)
are test oracles, far too slow to serve.
"""

from __future__ import annotations

from wukong_native import HEADER_LEN, TAG_RAW, HashRing, compress, decompress, is_compressible

__all__ = ["HEADER_LEN", "TAG_RAW", "HashRing", "compress", "decompress", "is_compressible"]

# Static scheduling hot paths: the Cython twins of wukong.partition / wukong.encoding.
from wukong._core import ScheduleView, decode_schedule, dependents, encode_schedules, intern, schedules  # noqa: E402

__all__ += ["ScheduleView", "decode_schedule", "dependents", "encode_schedules", "intern", "schedules"]

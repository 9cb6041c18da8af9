"""Pure-Python oracles of the compiled hot paths, with the same module names.

===========================  ===========================================
oracle                       compiled twin
===========================  ===========================================
``reference.partition``      ``wukong._core.partition`` (Cython)
``reference.encoding``       ``wukong._core.encoding`` (Cython)
``reference.legacy``         ``wukong._core.legacy`` (Cython)
``reference.hashring``       ``wukong_native.HashRing`` (Rust)
``reference.compression``    ``wukong_native.compress`` / ``decompress`` (Rust)
===========================  ===========================================

Small, obvious code that the parity tests (``tests/test_parity_cython.py``,
``tests/test_parity_rust.py``) and ``bench/`` hold the compiled code to.  The
runtime never imports this package.
"""

from wukong.reference.encoding import decode_schedule, encode_schedules
from wukong.reference.legacy import dependencies as legacy_dependencies
from wukong.reference.partition import dependents, intern, needed, relabel, schedules, toposort, write_order

# the same surface as ``wukong._core`` (less ``ScheduleView``, which has no oracle)
__all__ = [
    "decode_schedule",
    "dependents",
    "encode_schedules",
    "intern",
    "legacy_dependencies",
    "needed",
    "relabel",
    "schedules",
    "toposort",
    "write_order",
]

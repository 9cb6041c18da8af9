"""Compiled hot paths of static scheduling (Cython).

Twins of the pure-Python references ``wukong.reference.partition``,
``wukong.reference.encoding`` and ``wukong.reference.legacy``, with identical outputs; ``tests/test_parity_cython.py``
holds both to one specification.  ``ScheduleView`` has no reference twin: it
is a lazy, zero-copy reader of one schedule's metadata for executors.
Built by ``setup.py`` (``pip install -e .``).
"""

from wukong._core.encoding import ScheduleView, decode_schedule, encode_schedules
from wukong._core.legacy import dependencies as legacy_dependencies
from wukong._core.partition import dependents, intern, needed, relabel, schedules, toposort, write_order

__all__ = [
    "ScheduleView",
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

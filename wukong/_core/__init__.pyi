"""Type stubs for the compiled ``wukong._core`` (twins of wukong.reference.partition / .encoding)."""

from array import array
from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import Any

from wukong.protocol import Dependent, TaskRecord

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

# int64 arrays: array('q'), numpy int64 arrays, or any buffer of format 'q'
Int64Buffer = Any

def intern(
    order: Sequence[Hashable], dependencies: Sequence[Sequence[Hashable]]
) -> tuple[dict[Hashable, int], array[int], array[int]]: ...
def legacy_dependencies(dsk: dict) -> tuple[list[tuple], dict[int, Callable[..., Any]]] | None: ...
def dependents(n: int, dep_ptr: Int64Buffer, dep_idx: Int64Buffer) -> tuple[array[int], array[int]]: ...
def needed(n: int, dep_ptr: Int64Buffer, dep_idx: Int64Buffer, roots: Int64Buffer) -> array[int]: ...
def relabel(kept: Int64Buffer, dep_ptr: Int64Buffer, dep_idx: Int64Buffer) -> tuple[array[int], array[int]]: ...
def toposort(n: int, dep_ptr: Int64Buffer, dep_idx: Int64Buffer) -> array[int]: ...
def schedules(
    n: int, dep_ptr: Int64Buffer, dnt_ptr: Int64Buffer, dnt_idx: Int64Buffer
) -> tuple[array[int], array[int], array[int], array[int]]: ...
def write_order(
    sched_ptr: Int64Buffer,
    sched_idx: Int64Buffer,
    sched_of: Int64Buffer,
    dnt_ptr: Int64Buffer,
    dnt_idx: Int64Buffer,
    starts: Int64Buffer,
) -> tuple[array[int], array[int]]: ...
def encode_schedules(
    sched_ptr: Int64Buffer,
    sched_idx: Int64Buffer,
    sched_of: Int64Buffer,
    pos_of: Int64Buffer,
    dep_ptr: Int64Buffer,
    dep_idx: Int64Buffer,
    dnt_ptr: Int64Buffer,
    dnt_idx: Int64Buffer,
    flags: bytes | bytearray | memoryview,
) -> list[bytes]: ...
def decode_schedule(meta: bytes | bytearray | memoryview) -> list[TaskRecord]: ...

class ScheduleView:
    """Lazy, zero-copy reader of one schedule's metadata; ``view[pos]`` is a ``TaskRecord``."""

    def __init__(self, meta: bytes | bytearray | memoryview | array[int]) -> None: ...
    @property
    def ntasks(self) -> int: ...
    def __len__(self) -> int: ...
    def __getitem__(self, pos: int) -> TaskRecord: ...
    def __iter__(self) -> Iterator[TaskRecord]: ...
    def tid(self, pos: int) -> int: ...
    def flags(self, pos: int) -> int: ...
    def ndeps(self, pos: int) -> int: ...
    def deps(self, pos: int) -> tuple[int, ...]: ...
    def ndependents(self, pos: int) -> int: ...
    def dependents(self, pos: int) -> tuple[Dependent, ...]: ...

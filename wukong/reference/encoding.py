"""Binary encoding of static schedules: the pure-Python oracle of ``wukong._core.encoding``.

A schedule's metadata is one little-endian int64 array, so an executor reads
its chain without unpickling a Python object per task::

    [VERSION, ntasks,
     then per task on the chain, in order:
       tid, flags, ndeps, dep ids..., ndependents,
       then per dependent: cid, cid's ndeps, cid's schedule, cid's position]

``flags`` bit 0 marks a requested output.  The task bodies travel next to the
metadata as one pickle per schedule (``wukong.protocol.pack_schedule``).
"""

from __future__ import annotations

from array import array

from wukong.protocol import VERSION, Dependent, TaskRecord

__all__ = ["VERSION", "Dependent", "TaskRecord", "decode_schedule", "encode_schedules"]


def encode_schedules(
    sched_ptr: array,
    sched_idx: array,
    sched_of: array,
    pos_of: array,
    dep_ptr: array,
    dep_idx: array,
    dnt_ptr: array,
    dnt_idx: array,
    flags: bytes,
) -> list[bytes]:
    """The metadata of every schedule, in schedule order."""
    out = []
    for s in range(len(sched_ptr) - 1):
        chain = sched_idx[sched_ptr[s] : sched_ptr[s + 1]]
        a = array("q", [VERSION, len(chain)])
        for t in chain:
            deps = dep_idx[dep_ptr[t] : dep_ptr[t + 1]]
            a.extend((t, flags[t], len(deps)))
            a.extend(deps)
            a.append(dnt_ptr[t + 1] - dnt_ptr[t])
            for c in dnt_idx[dnt_ptr[t] : dnt_ptr[t + 1]]:
                a.extend((c, dep_ptr[c + 1] - dep_ptr[c], sched_of[c], pos_of[c]))
        out.append(a.tobytes())
    return out


def decode_schedule(meta: bytes) -> list[TaskRecord]:
    """The chain of task records encoded by ``encode_schedules``; ``ValueError`` if corrupt."""
    try:
        return _decode(meta)
    except (IndexError, TypeError) as e:  # a count pointing past the end
        raise ValueError(f"corrupt wukong schedule (truncated: {e})") from None


def _decode(meta: bytes) -> list[TaskRecord]:
    a = array("q")
    a.frombytes(meta)
    if len(a) < 2 or a[0] != VERSION:
        raise ValueError("not a wukong schedule (bad version header)")
    records = []
    i = 2
    for _ in range(a[1]):
        tid, flags, nd = a[i], a[i + 1], a[i + 2]
        deps = tuple(a[i + 3 : i + 3 + nd])
        i += 3 + nd
        nc = a[i]
        i += 1
        dnts = tuple(Dependent(*a[j : j + 4]) for j in range(i, i + 4 * nc, 4))
        i += 4 * nc
        records.append(TaskRecord(tid, flags, deps, dnts))
    if i != len(a):
        raise ValueError("corrupt wukong schedule (trailing data)")
    return records

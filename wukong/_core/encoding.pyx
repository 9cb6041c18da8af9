# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""Compiled twin of ``wukong.reference.encoding``: binary schedule metadata.

The format is documented in ``wukong.reference.encoding`` (the pure-Python oracle)::

    [VERSION, ntasks,
     then per task: tid, flags, ndeps, dep ids..., ndependents,
                    then per dependent: cid, cid's ndeps, cid's schedule, cid's position]

as native-endian int64 words (``array('q').tobytes()``).  ``encode_schedules``
and ``decode_schedule`` give byte-identical blobs and equal ``TaskRecord``
lists.  ``ScheduleView`` is the fast way in for an executor: it checks the
whole blob once (O(its size), never the graph's), remembers where each record
starts, and builds Python objects only for what is asked.

Malformed input never reads out of bounds: every CSR given to
``encode_schedules`` is checked first, and a blob that is truncated, has a bad
header, a negative count or trailing data raises ``ValueError``.
"""

from cpython cimport array
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.long cimport PyLong_FromLongLong
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.tuple cimport PyTuple_New, PyTuple_SET_ITEM
from cpython.ref cimport Py_INCREF
from libc.string cimport memcpy

from wukong._core.partition cimport check_csr

from wukong.protocol import OUTPUT, VERSION, Dependent, TaskRecord

cdef long long _VERSION = VERSION
cdef object _tuple_new = tuple.__new__  # NamedTuple instances without a Python-level __new__ frame


cdef inline const long long* _p(const long long[:] a) noexcept nogil:
    return &a[0] if a.shape[0] else NULL


cdef inline long long _ld(const unsigned char* p, Py_ssize_t i) noexcept nogil:
    # memcpy load: the blob may sit at any alignment (e.g. a memoryview slice);
    # gcc turns this into one mov on x86-64 / arm64
    cdef long long v
    memcpy(&v, p + 8 * i, 8)
    return v


cdef Py_ssize_t schedule_words(Py_ssize_t s, const long long* sched_ptr, const long long* sched_idx,
                               const long long* dep_ptr, const long long* dnt_ptr) noexcept nogil:
    """Size in int64 words of schedule ``s``'s metadata."""
    cdef Py_ssize_t j, t, w = 2
    for j in range(sched_ptr[s], sched_ptr[s + 1]):
        t = sched_idx[j]
        w += 4 + (dep_ptr[t + 1] - dep_ptr[t]) + 4 * (dnt_ptr[t + 1] - dnt_ptr[t])
    return w


cdef void write_schedule(long long* out, Py_ssize_t s,
                         const long long* sched_ptr, const long long* sched_idx,
                         const long long* sched_of, const long long* pos_of,
                         const long long* dep_ptr, const long long* dep_idx,
                         const long long* dnt_ptr, const long long* dnt_idx,
                         const unsigned char* flags) noexcept nogil:
    """Write schedule ``s``'s metadata to ``out`` (sized by ``schedule_words``)."""
    cdef Py_ssize_t i = 2, j, k, t, c
    out[0] = _VERSION
    out[1] = sched_ptr[s + 1] - sched_ptr[s]
    for j in range(sched_ptr[s], sched_ptr[s + 1]):
        t = sched_idx[j]
        out[i] = t
        out[i + 1] = flags[t]
        out[i + 2] = dep_ptr[t + 1] - dep_ptr[t]
        i += 3
        for k in range(dep_ptr[t], dep_ptr[t + 1]):
            out[i] = dep_idx[k]
            i += 1
        out[i] = dnt_ptr[t + 1] - dnt_ptr[t]
        i += 1
        for k in range(dnt_ptr[t], dnt_ptr[t + 1]):
            c = dnt_idx[k]
            out[i] = c
            out[i + 1] = dep_ptr[c + 1] - dep_ptr[c]
            out[i + 2] = sched_of[c]
            out[i + 3] = pos_of[c]
            i += 4


def encode_schedules(const long long[:] sched_ptr, const long long[:] sched_idx,
                     const long long[:] sched_of, const long long[:] pos_of,
                     const long long[:] dep_ptr, const long long[:] dep_idx,
                     const long long[:] dnt_ptr, const long long[:] dnt_idx,
                     const unsigned char[:] flags):
    """The metadata of every schedule, in schedule order (``list[bytes]``).

    Same outputs as ``wukong.reference.encoding.encode_schedules``.  Each blob is
    written by C straight into a fresh, uninitialised ``bytes`` object of its
    exact size (sizes come from a first pass), so the metadata is written once
    and never copied.
    """
    cdef Py_ssize_t n = dep_ptr.shape[0] - 1 if dep_ptr.shape[0] else 0
    cdef Py_ssize_t nsched = sched_ptr.shape[0] - 1 if sched_ptr.shape[0] else 0
    if dep_ptr.shape[0] == 0 and nsched and sched_ptr[nsched] > sched_ptr[0]:
        raise ValueError("dep_ptr is empty but the schedules hold tasks")
    if dnt_ptr.shape[0] < n + 1 or sched_of.shape[0] < n or pos_of.shape[0] < n or flags.shape[0] < n:
        raise ValueError(f"dnt_ptr needs {n + 1} entries; sched_of, pos_of and flags need {n}")
    if check_csr(_p(dep_ptr), n, dep_idx.shape[0], _p(dep_idx), n):
        raise ValueError("malformed dependency CSR")
    if check_csr(_p(dnt_ptr), n, dnt_idx.shape[0], _p(dnt_idx), n):
        raise ValueError("malformed dependents CSR")
    if check_csr(_p(sched_ptr), nsched, sched_idx.shape[0], _p(sched_idx), n):
        raise ValueError("malformed schedule CSR")
    cdef const long long* sp = _p(sched_ptr)
    cdef const long long* si = _p(sched_idx)
    cdef const long long* dp = _p(dep_ptr)
    cdef const long long* np_ = _p(dnt_ptr)
    cdef const unsigned char* fl = &flags[0] if flags.shape[0] else NULL
    cdef list out = [None] * nsched
    cdef Py_ssize_t s, w
    cdef bytes blob
    for s in range(nsched):
        w = schedule_words(s, sp, si, dp, np_)
        blob = PyBytes_FromStringAndSize(NULL, 8 * w)
        write_schedule(<long long*>PyBytes_AS_STRING(blob), s, sp, si, _p(sched_of), _p(pos_of),
                       dp, _p(dep_idx), np_, _p(dnt_idx), fl)
        out[s] = blob
    return out


cdef Py_ssize_t parse_schedule(const unsigned char* p, Py_ssize_t nwords, Py_ssize_t* off,
                               Py_ssize_t cap) noexcept nogil:
    """Record offsets of a blob whose header is already checked; 0, or -1 when corrupt.

    ``off`` gets ``cap`` (= ntasks) offsets.  Counts are compared against the
    words left, never added first, so a huge count cannot overflow.
    """
    cdef Py_ssize_t r, i = 2
    cdef long long nd, nc
    for r in range(cap):
        if nwords - i < 4:
            return -1
        off[r] = i
        nd = _ld(p, i + 2)
        if nd < 0 or nd > nwords - i - 4:
            return -1
        i += 3 + nd
        nc = _ld(p, i)
        i += 1
        if nc < 0 or nc > (nwords - i) // 4:
            return -1
        i += 4 * nc
    return 0 if i == nwords else -2


cdef class ScheduleView:
    """A decoded schedule read in place: records by position, built on demand.

    ``ScheduleView(meta)`` takes any bytes-like blob from ``encode_schedules``,
    validates it in one O(len(meta)) pass (``ValueError`` when corrupt, exactly
    where ``decode_schedule`` would fail) and keeps a reference to it, without
    copying.  Nothing else is built up front, so an executor's start-up costs
    one pass over its own schedule.

    ``view.ntasks`` (also ``len(view)``); per position ``0 <= pos < ntasks``:
    ``tid(pos)``, ``flags(pos)``, ``ndeps(pos)``, ``deps(pos)`` (tuple of ids),
    ``ndependents(pos)``, ``dependents(pos)`` (tuple of ``Dependent``).
    ``view[pos]`` is the ``TaskRecord`` that ``decode_schedule(meta)[pos]``
    would give (built once, then cached), so a view can stand in for the
    record list: ``records = ScheduleView(meta)``.
    """

    def __cinit__(self, meta):
        self._off = NULL
        if isinstance(meta, array.array):
            meta = memoryview(meta).cast("B")
        self._buf = meta
        cdef Py_ssize_t nbytes = self._buf.shape[0]
        if nbytes % 8:
            raise ValueError("corrupt wukong schedule (length not a multiple of 8)")
        cdef Py_ssize_t nwords = nbytes // 8
        self._p = &self._buf[0] if nbytes else NULL
        if nwords < 2 or _ld(self._p, 0) != _VERSION:
            raise ValueError("not a wukong schedule (bad version header)")
        cdef long long ntasks = _ld(self._p, 1)
        if ntasks < 0 or ntasks > (nwords - 2) // 4:  # a record takes >= 4 words
            raise ValueError("corrupt wukong schedule (bad task count)")
        self._ntasks = ntasks
        self._off = <Py_ssize_t*>PyMem_Malloc((ntasks + 1) * sizeof(Py_ssize_t))
        if self._off is NULL:
            raise MemoryError()
        cdef int rc
        with nogil:
            rc = parse_schedule(self._p, nwords, self._off, ntasks)
        if rc == -1:
            raise ValueError("corrupt wukong schedule (truncated record)")
        if rc == -2:
            raise ValueError("corrupt wukong schedule (trailing data)")
        self._records = [None] * ntasks

    def __dealloc__(self):
        PyMem_Free(self._off)

    @property
    def ntasks(self):
        """Number of tasks on the schedule's chain."""
        return self._ntasks

    def __len__(self):
        return self._ntasks

    cdef Py_ssize_t _at(self, Py_ssize_t pos) except -1:
        if pos < 0 or pos >= self._ntasks:
            raise IndexError(f"schedule position {pos} out of range 0..{self._ntasks - 1}")
        return self._off[pos]

    def tid(self, Py_ssize_t pos):
        """The task id at ``pos``."""
        return _ld(self._p, self._at(pos))

    def flags(self, Py_ssize_t pos):
        """The task's flags (bit ``OUTPUT``: a requested output)."""
        return _ld(self._p, self._at(pos) + 1)

    def ndeps(self, Py_ssize_t pos):
        return _ld(self._p, self._at(pos) + 2)

    def deps(self, Py_ssize_t pos):
        """The task's dependency ids, in the order of its dependency keys."""
        return _ids(self._p, self._at(pos) + 3, _ld(self._p, self._off[pos] + 2))

    def ndependents(self, Py_ssize_t pos):
        cdef Py_ssize_t i = self._at(pos)
        return _ld(self._p, i + 3 + _ld(self._p, i + 2))

    def dependents(self, Py_ssize_t pos):
        """The task's dependents, each a ``Dependent(tid, ndeps, sched, pos)``."""
        cdef Py_ssize_t i = self._at(pos)
        i += 3 + _ld(self._p, i + 2)
        return _dependents(self._p, i + 1, _ld(self._p, i))

    cdef object _record(self, Py_ssize_t pos):
        rec = self._records[pos]
        if rec is None:
            rec = _record_at(self._p, self._off[pos])
            self._records[pos] = rec
        return rec

    def __getitem__(self, Py_ssize_t pos):
        if pos < 0:
            pos += self._ntasks
        self._at(pos)
        return self._record(pos)

    def __iter__(self):
        cdef Py_ssize_t pos
        for pos in range(self._ntasks):
            yield self._record(pos)

    def __repr__(self):
        return f"<ScheduleView ntasks={self._ntasks}>"


cdef tuple _ids(const unsigned char* p, Py_ssize_t i, Py_ssize_t count):
    cdef tuple out = PyTuple_New(count)
    cdef Py_ssize_t k
    cdef object v
    for k in range(count):
        v = PyLong_FromLongLong(_ld(p, i + k))
        Py_INCREF(v)  # PyTuple_SET_ITEM steals a reference
        PyTuple_SET_ITEM(out, k, v)
    return out


cdef tuple _dependents(const unsigned char* p, Py_ssize_t i, Py_ssize_t count):
    cdef tuple out = PyTuple_New(count)
    cdef Py_ssize_t k
    cdef object d
    for k in range(count):
        d = _tuple_new(Dependent, _ids(p, i + 4 * k, 4))
        Py_INCREF(d)
        PyTuple_SET_ITEM(out, k, d)
    return out


cdef object _record_at(const unsigned char* p, Py_ssize_t i):
    cdef Py_ssize_t nd = _ld(p, i + 2)
    cdef Py_ssize_t j = i + 3 + nd
    return _tuple_new(TaskRecord, (_ld(p, i), _ld(p, i + 1), _ids(p, i + 3, nd),
                                   _dependents(p, j + 1, _ld(p, j))))


def decode_schedule(meta):
    """The chain of task records encoded by ``encode_schedules`` (``list[TaskRecord]``).

    Same output as ``wukong.reference.encoding.decode_schedule``; ``ValueError`` when
    ``meta`` is not a well-formed schedule.  Prefer ``ScheduleView`` when not
    every record is needed.
    """
    cdef ScheduleView view = ScheduleView(meta)
    cdef Py_ssize_t pos
    return [_record_at(view._p, view._off[pos]) for pos in range(view._ntasks)]

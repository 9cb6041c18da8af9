# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""Compiled twin of ``wukong.partition``: interning, dependency CSR, static schedules.

The algorithm, the arrays and their invariants are described in
``wukong.partition`` (the pure-Python oracle); outputs here are identical,
element for element.  Differences are only in what bad input does: the array
arguments are read through typed memoryviews of int64 (``array('q')``, a
``numpy.int64`` array, any buffer of format ``q``), every CSR is checked in
one O(n + edges) pass before the C loops run, and a malformed one raises
``ValueError`` rather than reading out of bounds.

Each ``def`` only converts and checks arguments, allocates the outputs and
calls a ``cdef ... nogil`` core that works on raw pointers (the GIL is
released while it runs).
"""

from cpython cimport array
from cpython.dict cimport PyDict_GetItemWithError
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.long cimport PyLong_AsLongLong
from cpython.object cimport PyObject
from cpython.tuple cimport PyTuple_GET_ITEM, PyTuple_GET_SIZE
from libc.stdlib cimport calloc, free, malloc

import array as _array

cdef array.array _Q = _array.array("q")  # template for array.clone (no per-call type lookup)


cdef inline array.array _new(Py_ssize_t size):
    # clone(..., zero=False): a raw int64 buffer of the right size, no fill pass
    return array.clone(_Q, size, False)


cdef inline const long long* _p(const long long[:] a) noexcept nogil:
    # an empty memoryview has no element 0; the cores never read it then
    return &a[0] if a.shape[0] else NULL


cdef int check_csr(const long long* ptr, Py_ssize_t nrows, Py_ssize_t nidx,
                   const long long* idx, Py_ssize_t n) noexcept nogil:
    """0 when ptr[0..nrows] is a non-decreasing window of idx[0..nidx) whose entries lie in [0, n)."""
    cdef Py_ssize_t r, j
    if nrows == 0:
        return 0
    if ptr[0] < 0 or ptr[nrows] > nidx:
        return -1
    for r in range(nrows):
        if ptr[r + 1] < ptr[r]:
            return -1
    for j in range(ptr[0], ptr[nrows]):
        if idx[j] < 0 or idx[j] >= n:
            return -1
    return 0


cdef void dependents_core(Py_ssize_t n, const long long* dep_ptr, const long long* dep_idx,
                          long long* dnt_ptr, long long* dnt_idx, long long* fill) noexcept nogil:
    """Transpose by counting sort: count, prefix-sum, scatter with t ascending.

    Scattering in increasing t makes every row come out sorted, as in the
    reference, with no sort pass.  ``fill`` is n int64 of scratch.
    """
    cdef Py_ssize_t t, d, j
    for d in range(n + 1):
        dnt_ptr[d] = 0
    for t in range(n):
        for j in range(dep_ptr[t], dep_ptr[t + 1]):
            dnt_ptr[dep_idx[j] + 1] += 1
    for d in range(n):
        dnt_ptr[d + 1] += dnt_ptr[d]
        fill[d] = dnt_ptr[d]
    for t in range(n):
        for j in range(dep_ptr[t], dep_ptr[t + 1]):
            d = dep_idx[j]
            dnt_idx[fill[d]] = t
            fill[d] += 1


cdef inline long long _walk(long long start, long long s, long long filled,
                            const long long* dnt_ptr, const long long* dnt_idx,
                            long long* sched_idx, long long* sched_of, long long* pos_of) noexcept nogil:
    """One depth-first walk claiming schedule ``s`` from ``start``; returns the new fill of sched_idx."""
    cdef long long t = start, c, j, base = filled
    while t != -1:
        sched_of[t] = s
        pos_of[t] = filled - base
        sched_idx[filled] = t
        filled += 1
        # "become" the first unclaimed dependent: the reference's next(...) scan.
        # Each task is walked once, so all scans together cost O(edges).
        c = -1
        for j in range(dnt_ptr[t], dnt_ptr[t + 1]):
            if sched_of[dnt_idx[j]] == -1:
                c = dnt_idx[j]
                break
        t = c
    return filled


cdef Py_ssize_t schedules_core(Py_ssize_t n, const long long* dep_ptr,
                               const long long* dnt_ptr, const long long* dnt_idx,
                               long long* sched_ptr, long long* sched_idx,
                               long long* sched_of, long long* pos_of) noexcept nogil:
    """Fill the schedule arrays (sched_ptr sized n + 1); returns the number of schedules."""
    cdef Py_ssize_t t, s = 0
    cdef long long filled = 0
    for t in range(n):
        sched_of[t] = -1
        pos_of[t] = -1
    sched_ptr[0] = 0
    # leaves first, in id order; then whatever they did not reach, in id order
    for t in range(n):
        if dep_ptr[t] == dep_ptr[t + 1] and sched_of[t] == -1:
            filled = _walk(t, s, filled, dnt_ptr, dnt_idx, sched_idx, sched_of, pos_of)
            s += 1
            sched_ptr[s] = filled
    for t in range(n):
        if sched_of[t] == -1:
            filled = _walk(t, s, filled, dnt_ptr, dnt_idx, sched_idx, sched_of, pos_of)
            s += 1
            sched_ptr[s] = filled
    return s


cdef inline long long _lookup(dict ids, object key) except? -1:
    cdef PyObject* v = PyDict_GetItemWithError(ids, key)  # borrowed: no refcount traffic
    if v is NULL:
        raise KeyError(key)
    return PyLong_AsLongLong(<object>v)


def intern(order, dependencies):
    """Dense ids for ``order`` and the CSR of each key's dependencies.

    Same contract and outputs as ``wukong.partition.intern``: returns
    ``(ids, dep_ptr, dep_idx)`` with ``ids`` a dict key -> id and the CSR as
    ``array('q')``; a dependency that is not in ``order`` raises ``KeyError``.
    """
    # one dict build, entirely in C (dict(zip(...)) has the comprehension's
    # last-one-wins semantics for repeated keys)
    cdef dict ids = dict(zip(order, range(len(order))))
    if not isinstance(dependencies, (list, tuple)):
        dependencies = list(dependencies)
    cdef Py_ssize_t nrows = len(dependencies), r, j, m, e = 0
    cdef array.array dep_ptr = _new(nrows + 1)
    cdef long long* ptr = dep_ptr.data.as_longlongs
    cdef list rows = [None] * nrows
    cdef object deps
    cdef PyObject* row_obj
    # pass 1: row lengths -> dep_ptr, so dep_idx is allocated once at its final size
    ptr[0] = 0
    for r in range(nrows):
        deps = dependencies[r]
        if type(deps) is not tuple and type(deps) is not list:
            deps = tuple(deps)  # any iterable: materialise once
        rows[r] = deps
        e += len(deps)
        ptr[r + 1] = e
    cdef array.array dep_idx = _new(e)
    cdef long long* idx = dep_idx.data.as_longlongs
    # pass 2: one borrowed-reference dict probe per edge, no temporaries
    for r in range(nrows):
        row_obj = PyList_GET_ITEM(rows, r)
        m = ptr[r]
        if type(<object>row_obj) is tuple:
            for j in range(PyTuple_GET_SIZE(<object>row_obj)):
                idx[m + j] = _lookup(ids, <object>PyTuple_GET_ITEM(<object>row_obj, j))
        else:
            for j in range(PyList_GET_SIZE(<object>row_obj)):
                idx[m + j] = _lookup(ids, <object>PyList_GET_ITEM(<object>row_obj, j))
    return ids, dep_ptr, dep_idx


def dependents(Py_ssize_t n, const long long[:] dep_ptr, const long long[:] dep_idx):
    """Transpose the dependency CSR; each row of dependents sorted by id.

    Same outputs as ``wukong.partition.dependents``: ``(dnt_ptr, dnt_idx)``.
    """
    if n < 0 or dep_ptr.shape[0] < n + 1:
        raise ValueError(f"dep_ptr has {dep_ptr.shape[0]} entries, need n + 1 = {n + 1}")
    if check_csr(_p(dep_ptr), n, dep_idx.shape[0], _p(dep_idx), n):
        raise ValueError("malformed dependency CSR (pointers not monotone/in range, or an id outside 0..n-1)")
    cdef Py_ssize_t e = dep_ptr[n] - dep_ptr[0] if n else 0
    cdef array.array dnt_ptr = _new(n + 1)
    cdef array.array dnt_idx = _new(e)
    cdef long long* fill = <long long*>malloc((n + 1) * sizeof(long long))
    if fill is NULL:
        raise MemoryError()
    with nogil:
        dependents_core(n, _p(dep_ptr), _p(dep_idx), dnt_ptr.data.as_longlongs, dnt_idx.data.as_longlongs, fill)
    free(fill)
    return dnt_ptr, dnt_idx


cdef Py_ssize_t toposort_core(Py_ssize_t n, const long long* dep_ptr, const long long* dnt_ptr,
                              const long long* dnt_idx, long long* missing, long long* order) noexcept nogil:
    """Kahn's algorithm with ``order`` as its queue; returns how many tasks it ordered."""
    cdef Py_ssize_t t, j, c, head = 0, tail = 0
    for t in range(n):
        missing[t] = dep_ptr[t + 1] - dep_ptr[t]
        if missing[t] == 0:
            order[tail] = t
            tail += 1
    while head < tail:
        t = order[head]
        head += 1
        for j in range(dnt_ptr[t], dnt_ptr[t + 1]):
            c = dnt_idx[j]
            missing[c] -= 1
            if missing[c] == 0:
                order[tail] = c
                tail += 1
    return tail


def toposort(Py_ssize_t n, const long long[:] dep_ptr, const long long[:] dep_idx):
    """Kahn's topological order of ids interned in any order; shorter than ``n``
    on a cycle.  Same output as ``wukong.reference.partition.toposort``."""
    dnt_ptr, dnt_idx = dependents(n, dep_ptr, dep_idx)  # checks the CSR
    cdef const long long[:] dptr = dnt_ptr
    cdef const long long[:] didx = dnt_idx
    cdef array.array order = _new(n)
    cdef long long* missing = <long long*>malloc((n + 1) * sizeof(long long))
    if missing is NULL:
        raise MemoryError()
    cdef Py_ssize_t k
    with nogil:
        k = toposort_core(n, _p(dep_ptr), _p(dptr), _p(didx), missing, order.data.as_longlongs)
    free(missing)
    array.resize(order, k)
    return order


def schedules(Py_ssize_t n, const long long[:] dep_ptr, const long long[:] dnt_ptr, const long long[:] dnt_idx):
    """The static schedules (a path cover of the DAG); see ``wukong.partition``.

    Same outputs as ``wukong.partition.schedules``:
    ``(sched_ptr, sched_idx, sched_of, pos_of)``.
    """
    if n < 0 or dep_ptr.shape[0] < n + 1 or dnt_ptr.shape[0] < n + 1:
        raise ValueError(f"dep_ptr and dnt_ptr need n + 1 = {n + 1} entries")
    if check_csr(_p(dnt_ptr), n, dnt_idx.shape[0], _p(dnt_idx), n):
        raise ValueError("malformed dependents CSR (pointers not monotone/in range, or an id outside 0..n-1)")
    cdef array.array sched_ptr = _new(n + 1)
    cdef array.array sched_idx = _new(n)
    cdef array.array sched_of = _new(n)
    cdef array.array pos_of = _new(n)
    cdef Py_ssize_t nsched
    with nogil:
        nsched = schedules_core(n, _p(dep_ptr), _p(dnt_ptr), _p(dnt_idx),
                                sched_ptr.data.as_longlongs, sched_idx.data.as_longlongs,
                                sched_of.data.as_longlongs, pos_of.data.as_longlongs)
    array.resize(sched_ptr, nsched + 1)
    return sched_ptr, sched_idx, sched_of, pos_of


cdef void write_order_core(const long long* sched_ptr, const long long* sched_idx, const long long* sched_of,
                           const long long* dnt_ptr, const long long* dnt_idx,
                           const long long* starts, Py_ssize_t nstarts, char* seen, long long* stack,
                           long long* order, long long* ready) noexcept nogil:
    """The reference's walks; ``stack`` holds at most one entry per start and per edge."""
    cdef Py_ssize_t i, j, k, top, filled = 0
    cdef long long s, t, c
    for i in range(nstarts):
        stack[0] = starts[i]
        top = 1
        while top:
            top -= 1
            s = stack[top]
            if seen[s]:
                continue
            seen[s] = 1
            order[filled] = s
            filled += 1
            for k in range(sched_ptr[s], sched_ptr[s + 1]):
                t = sched_idx[k]
                for j in range(dnt_ptr[t], dnt_ptr[t + 1]):
                    c = sched_of[dnt_idx[j]]
                    if not seen[c]:
                        stack[top] = c
                        top += 1
        ready[i] = filled


def write_order(const long long[:] sched_ptr, const long long[:] sched_idx, const long long[:] sched_of,
                const long long[:] dnt_ptr, const long long[:] dnt_idx, const long long[:] starts):
    """The order to write schedules in and when each start is ready; see
    ``wukong.reference.partition.write_order`` (same outputs: ``(order, ready)``)."""
    cdef Py_ssize_t n = sched_of.shape[0], nsched = sched_ptr.shape[0] - 1, e = dnt_idx.shape[0], i
    if nsched < 0 or dnt_ptr.shape[0] < n + 1:
        raise ValueError(f"sched_ptr needs at least 1 entry and dnt_ptr n + 1 = {n + 1}")
    if check_csr(_p(sched_ptr), nsched, sched_idx.shape[0], _p(sched_idx), n):
        raise ValueError("malformed schedule CSR (pointers not monotone/in range, or a task id outside 0..n-1)")
    if check_csr(_p(dnt_ptr), n, e, _p(dnt_idx), n):
        raise ValueError("malformed dependents CSR (pointers not monotone/in range, or an id outside 0..n-1)")
    for i in range(n):
        if sched_of[i] < 0 or sched_of[i] >= nsched:
            raise ValueError(f"sched_of[{i}] = {sched_of[i]} is not a schedule id")
    for i in range(starts.shape[0]):
        if starts[i] < 0 or starts[i] >= nsched:
            raise ValueError(f"start {starts[i]} is not a schedule id")
    cdef array.array order = _new(nsched)
    cdef array.array ready = _new(starts.shape[0])
    cdef char* seen = <char*>calloc(nsched + 1, 1)
    cdef long long* stack = <long long*>malloc((e + 1) * sizeof(long long))
    if seen is NULL or stack is NULL:
        free(seen)
        free(stack)
        raise MemoryError()
    with nogil:
        write_order_core(_p(sched_ptr), _p(sched_idx), _p(sched_of), _p(dnt_ptr), _p(dnt_idx),
                         _p(starts), starts.shape[0], seen, stack,
                         order.data.as_longlongs, ready.data.as_longlongs)
    free(seen)
    free(stack)
    array.resize(order, ready[starts.shape[0] - 1] if starts.shape[0] else 0)
    return order, ready


def needed(Py_ssize_t n, const long long[:] dep_ptr, const long long[:] dep_idx, const long long[:] roots):
    """The tasks ``roots`` need, in the reference's depth-first order; see
    ``wukong.reference.partition.needed`` (same output)."""
    if n < 0 or dep_ptr.shape[0] < n + 1:
        raise ValueError(f"dep_ptr has {dep_ptr.shape[0]} entries, need n + 1 = {n + 1}")
    if check_csr(_p(dep_ptr), n, dep_idx.shape[0], _p(dep_idx), n):
        raise ValueError("malformed dependency CSR (pointers not monotone/in range, or an id outside 0..n-1)")
    cdef Py_ssize_t i, j, top = 0, k = 0, nroots = roots.shape[0]
    for i in range(nroots):
        if roots[i] < 0 or roots[i] >= n:
            raise ValueError(f"root {roots[i]} is not a task id")
    cdef array.array order = _new(n)
    cdef long long* out = order.data.as_longlongs
    cdef long long t, d
    cdef char* seen = <char*>calloc(n + 1, 1)
    cdef long long* stack = <long long*>malloc((dep_idx.shape[0] + nroots + 1) * sizeof(long long))
    if seen is NULL or stack is NULL:
        free(seen)
        free(stack)
        raise MemoryError()
    with nogil:
        for i in range(nroots):
            stack[top] = roots[i]
            top += 1
        while top:
            top -= 1
            t = stack[top]
            if seen[t]:
                continue
            seen[t] = 1
            out[k] = t
            k += 1
            for j in range(dep_ptr[t], dep_ptr[t + 1]):
                d = dep_idx[j]
                if not seen[d]:
                    stack[top] = d
                    top += 1
    free(seen)
    free(stack)
    array.resize(order, k)
    return order


def relabel(const long long[:] kept, const long long[:] dep_ptr, const long long[:] dep_idx):
    """See ``wukong.reference.partition.relabel`` (same outputs; a dependency
    not kept raises ``ValueError``)."""
    cdef Py_ssize_t n = dep_ptr.shape[0] - 1, m = kept.shape[0], i, j, e = 0
    if n < 0 or check_csr(_p(dep_ptr), n, dep_idx.shape[0], _p(dep_idx), n):
        raise ValueError("malformed dependency CSR (pointers not monotone/in range, or an id outside 0..n-1)")
    for i in range(m):
        if kept[i] < 0 or kept[i] >= n:
            raise ValueError(f"kept task {kept[i]} is not a task id")
        e += dep_ptr[kept[i] + 1] - dep_ptr[kept[i]]
    cdef array.array out_ptr = _new(m + 1)
    cdef array.array out_idx = _new(e)
    cdef long long* optr = out_ptr.data.as_longlongs
    cdef long long* oidx = out_idx.data.as_longlongs
    cdef long long* new = <long long*>malloc((n + 1) * sizeof(long long))
    if new is NULL:
        raise MemoryError()
    cdef long long t, d
    cdef bint bad = False
    with nogil:
        for i in range(n):
            new[i] = -1
        for i in range(m):
            new[kept[i]] = i
        e = 0
        optr[0] = 0
        for i in range(m):
            t = kept[i]
            for j in range(dep_ptr[t], dep_ptr[t + 1]):
                d = new[dep_idx[j]]
                if d < 0:
                    bad = True
                oidx[e] = d
                e += 1
            optr[i + 1] = e
    free(new)
    if bad:
        raise ValueError("a kept task depends on one that is not kept")
    return out_ptr, out_idx

# cython: language_level=3, boundscheck=False, wraparound=False
"""Compiled twin of ``wukong.reference.legacy``: the dependencies of a legacy graph.

The rules, and when it gives up (``None``), are explained in the reference;
outputs here are identical.  The walk is the reference's, with exact type
checks first: most arguments are ints, strings, key tuples and tasks, which
are told apart without a Python-level ``isinstance`` or attribute lookup.
"""

from cpython.dict cimport PyDict_Contains, PyDict_SetItem
from cpython.tuple cimport PyTuple_GET_ITEM, PyTuple_GET_SIZE

from dask.task_spec import GraphNode, TaskRef

cdef tuple _SPEC = (GraphNode, TaskRef)
cdef object _NoneType = type(None)


class _Unusual(Exception):
    pass


def dependencies(dict dsk):
    """See ``wukong.reference.legacy.dependencies``."""
    cdef list deps = []
    cdef _Funcs funcs = _Funcs()
    cdef dict found = {}  # one dict, cleared per key: most keys have a dependency or two
    try:
        for key, value in dsk.items():
            found.clear()
            _walk(value, dsk, found, funcs)
            if key in found and not _is_task(value) and isinstance(value, (int, float, str, tuple)) \
                    and _contains(dsk, value) and value == key:
                raise _Unusual
            deps.append(tuple(found))
    except _Unusual:
        return None
    return deps, funcs.by_id


cdef class _Funcs:
    """The callables seen by id, and the last one (most tasks call the one the previous task did)."""
    cdef dict by_id
    cdef object last

    def __cinit__(self):
        self.by_id = {}
        self.last = None

    cdef inline int note(self, object f) except -1:
        if f is not self.last:
            PyDict_SetItem(self.by_id, id(f), f)
            self.last = f
        return 0


cdef inline bint _is_task(object x):
    return type(x) is tuple and PyTuple_GET_SIZE(x) > 0 and callable(<object>PyTuple_GET_ITEM(x, 0))


cdef int _contains(dict dsk, object x) except -1:
    # 1 when ``x`` is a key of ``dsk``; unhashable: 0 (the reference's ``except TypeError``)
    try:
        return PyDict_Contains(dsk, x)
    except TypeError:
        return 0


cdef int _walk(object x, dict dsk, dict found, _Funcs funcs) except -1:
    cdef Py_ssize_t i, n
    cdef object t = type(x), a, f
    if t is tuple:
        n = PyTuple_GET_SIZE(x)
        if n and callable(<object>PyTuple_GET_ITEM(x, 0)):
            f = <object>PyTuple_GET_ITEM(x, 0)
            funcs.note(f)
            for i in range(1, n):
                a = <object>PyTuple_GET_ITEM(x, i)
                if isinstance(a, dict):
                    if any(isinstance(v, _SPEC) for v in (*a, *a.values())):
                        raise _Unusual
                else:
                    _walk(a, dsk, found, funcs)
            return 0
        if _contains(dsk, x):
            found[x] = None
            return 0
        for i in range(n):
            _walk(<object>PyTuple_GET_ITEM(x, i), dsk, found, funcs)
        return 0
    if t is int or t is str or t is float:
        if x in dsk:
            found[x] = None
        return 0
    if t is list or t is set or t is frozenset:
        for a in x:
            _walk(a, dsk, found, funcs)
        return 0
    if t is _NoneType or t is bytes:
        return 0
    # anything else: the reference's checks in its order
    if isinstance(x, (int, float, str, tuple)) and _contains(dsk, x):
        found[x] = None
        return 0
    if isinstance(x, (list, tuple, set, frozenset)):
        if isinstance(x, tuple):
            raise _Unusual
        for a in x:
            _walk(a, dsk, found, funcs)
    elif isinstance(x, _SPEC) or getattr(x, "__dask_future__", False):
        raise _Unusual
    return 0

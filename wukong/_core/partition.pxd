# C-level interface of wukong._core.partition (see partition.pyx for the algorithm).
# All arrays are dense int64 (``long long``) over task ids 0..n-1.

cdef int check_csr(const long long* ptr, Py_ssize_t nrows, Py_ssize_t nidx,
                   const long long* idx, Py_ssize_t n) noexcept nogil

cdef void dependents_core(Py_ssize_t n, const long long* dep_ptr, const long long* dep_idx,
                          long long* dnt_ptr, long long* dnt_idx, long long* fill) noexcept nogil

cdef Py_ssize_t schedules_core(Py_ssize_t n, const long long* dep_ptr,
                               const long long* dnt_ptr, const long long* dnt_idx,
                               long long* sched_ptr, long long* sched_idx,
                               long long* sched_of, long long* pos_of) noexcept nogil

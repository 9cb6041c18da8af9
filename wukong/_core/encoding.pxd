# C-level interface of wukong._core.encoding (see encoding.pyx for the format).

cdef Py_ssize_t schedule_words(Py_ssize_t s, const long long* sched_ptr, const long long* sched_idx,
                               const long long* dep_ptr, const long long* dnt_ptr) noexcept nogil

cdef void write_schedule(long long* out, Py_ssize_t s,
                         const long long* sched_ptr, const long long* sched_idx,
                         const long long* sched_of, const long long* pos_of,
                         const long long* dep_ptr, const long long* dep_idx,
                         const long long* dnt_ptr, const long long* dnt_idx,
                         const unsigned char* flags) noexcept nogil

cdef Py_ssize_t parse_schedule(const unsigned char* p, Py_ssize_t nwords, Py_ssize_t* off,
                               Py_ssize_t cap) noexcept nogil


cdef class ScheduleView:
    cdef const unsigned char[:] _buf   # keeps the caller's buffer alive and unresizable
    cdef const unsigned char* _p       # its first byte
    cdef Py_ssize_t _ntasks
    cdef Py_ssize_t* _off              # word offset of each record (malloc'd)
    cdef list _records                 # TaskRecords built so far (None until asked for)

    cdef Py_ssize_t _at(self, Py_ssize_t pos) except -1
    cdef object _record(self, Py_ssize_t pos)

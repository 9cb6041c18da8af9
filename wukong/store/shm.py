"""Large values between local processes, through shared memory instead of Redis.

On the local backend every executor, and the client, run on one machine, so
a large value (``SHM_MIN`` bytes or more) need not cross Redis: the writer
puts it in a file of the cluster's directory on ``/dev/shm`` (one copy, into
RAM) and stores a small marker under the key; a reader maps the file
copy-on-write, so the arrays it unpickles are writable and no byte is copied
until a task writes to one.  Files are named after the job
(``wk-<job>-<kind>-<id>``); the client removes a job's files with its keys,
and closing the cluster removes the directory.

An ended job's files are kept for the next writes rather than unlinked (the
pool, ``<dir>/free``).  tmpfs allocates and zeroes every page of a new file,
and frees them all when it is unlinked; a write into a kept file's pages costs
about 0.55-0.7x a new file's (4.5 MB: 108 against 194 us per MB; 32 MB: 223
against 317), and keeping a file costs 9 us per MB where unlinking it costs 52
(``python -m bench.dataplane``).  On a virtual machine whose host takes back
the guest's free pages (free page reporting) a new file's pages can cost far
more: a 72 MB result took 35 ms into fresh pages just freed and 200-230 ms
into pages freed some seconds before (the host maps each one again).  A kept
file is written again only when nobody maps it any more: a write lease
(``F_SETLEASE``) is granted only on a file no other open file refers to, and
a mapping keeps its file open until it is unmapped, in any process.  So a
result the user still holds, or a value a task kept, is never overwritten:
it is kept all the same, and written again once its last mapping is gone
(a job's result, say, once the user dropped the array: the next job's result
goes into its pages).  The pool is bounded (``pool_cap``, mapped files
included), an idle worker removes files unused for ``POOL_IDLE_S``, and a write
that fits no kept file takes one of another size unused that long.  A GEMM of
10000² (32 MB blocks) writes 6.4 GB a job: kept only up to 1 GiB, its workers
spent 8.6-9.2 s a job writing, 3.6-4.0 s with the pool at a quarter of memory.

A client that is killed (SIGKILL, a crashed notebook kernel) cannot remove its
directory, and the values in it would hold the machine's memory until a
reboot.  So the client holds a lock on its directory (``flock``) while it
lives, and a cluster that starts removes every ``wukong-*`` directory of this
user whose lock it can take: the kernel let go of it when its owner died.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

MARKER = b"\x00wukong-shm\x00"
# bytes; smaller values go through Redis.  Written, read and removed as in a job, fresh
# values of 256 KiB cost 0.74x through a file what they cost through Redis, of 128 KiB
# 0.92x, of 64 KiB 1.02x, of 1 MiB 0.47x (``python -m bench.dataplane --threshold``,
# idle); a Cholesky of 4000² (250² blocks, 500 kB) ran in 6.4 s against 10.8-11.6 s with
# 1 MiB here (``python -m bench --size full --only cholesky --systems wukong``, the two
# alternating), with 1.7 round trips a task against 2.7; again on 1 December (load 0.75):
# 64 KiB 1.22x, 128 KiB 1.20x, 256 KiB 0.77x, 1 MiB 0.42x.  A job's result goes to the
# client through a file from the same size: jobs of two results of 128 KiB took 1.08x and
# 1.09x as long through files as on the job's event stream (two runs), of 192 KiB 1.04x
# and 0.88x, of 256 KiB 0.87x and 0.90x, of 1 MiB 0.46x and 0.42x (``--threshold``'s
# second table, load 0.8)
SHM_MIN = 256 << 10


POOL = "free"  # the cluster's directory's subdirectory of kept files, named ``<size>-<name>``
POOL_IDLE_S = 5.0  # seconds; a kept file not taken again for this long is removed by an idle worker
POOL_FIT = 2  # a kept file is taken for a value of at least 1/2 and at most 2x its size
POOL_TRIES = 4  # kept files a writer tries (one may still be mapped) before it makes a new one
POOL_CLOSE = 16  # a kept file within 1/16 of a value's size is taken as soon as it is read
POOL_SHARE = 4  # the pool keeps at most a quarter of the machine's memory (``pool_cap``)

PREFIX = "wukong-"
_locks: dict[str, int] = {}  # directory -> the descriptor holding its lock, while its cluster lives


def make_dir(cluster_id: str) -> str | None:
    """The cluster's directory on a RAM file system, or None where there is none; the
    directories of clusters whose client died are removed first (``sweep``)."""
    base = "/dev/shm"
    if not os.path.isdir(base) or not os.access(base, os.W_OK):
        return None
    sweep(base)
    # made under another name and locked before it is renamed: a sweep elsewhere never
    # sees it unlocked
    making = tempfile.mkdtemp(prefix=f".{PREFIX}{cluster_id}-", dir=base)
    fd = os.open(making, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # new: nobody else can hold it
    path = os.path.join(base, os.path.basename(making)[1:])
    os.rename(making, path)
    _locks[path] = fd
    if _leases_work(path):
        os.mkdir(os.path.join(path, POOL))
    return path


def pool_cap() -> int:
    """Bytes the pool may keep: a quarter of the machine's memory (``POOL_SHARE``), and
    no more than half of what it has available as a job's files are kept (the kept
    files are not counted as available, so the pool only takes memory the machine
    had to spare)."""
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    available = _available()
    return min(total // POOL_SHARE, (available if available is not None else total // 8) // 2)


def _available() -> int | None:
    """The kernel's estimate of memory available without swapping (``MemAvailable``), in bytes."""
    try:
        with open("/proc/meminfo", "rb") as f:
            for line in f:
                if line.startswith(b"MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _leases_work(directory: str) -> bool:
    """Whether the file system grants leases here (``fs.leases-enable``): the pool is
    safe only where a writer can learn that nobody maps a file."""
    probe = os.path.join(directory, ".lease-probe")
    fd = os.open(probe, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        return _unmapped(fd)
    finally:
        os.close(fd)
        os.unlink(probe)


def _unmapped(fd: int) -> bool:
    """Whether no other open file (a descriptor or a mapping, in any process) refers to
    ``fd``'s file: only then is a write lease granted."""
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
    except OSError:
        return False
    fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
    return True


def remove_dir(path: str | None) -> None:
    if path:
        shutil.rmtree(path, ignore_errors=True)
        fd = _locks.pop(path, None)
        if fd is not None:
            os.close(fd)


def sweep(base: str) -> list[str]:
    """Remove this user's cluster directories in ``base`` whose owner is gone (their
    lock can be taken); returns them.  A directory without a lock's owner alive is
    one its client could not remove: it was killed."""
    removed: list[str] = []
    try:
        entries = [e for e in os.scandir(base) if e.name.startswith(PREFIX) and e.is_dir(follow_symlinks=False)]
    except OSError:
        return removed
    for entry in entries:
        if entry.path in _locks:  # one of this process's live clusters
            continue
        try:
            if entry.stat(follow_symlinks=False).st_uid != os.getuid():
                continue
            fd = os.open(entry.path, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:  # gone meanwhile, or not ours to open
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held: its cluster lives
            os.close(fd)
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        os.close(fd)
        removed.append(entry.path)
    return removed


def filename(key: str) -> str:
    return key.replace(":", "-")


def write(directory: str, key: str, value: bytes | memoryview | Sequence[bytes | memoryview]) -> bytes:
    """Write ``value`` (or its pieces, in order) to the file of ``key``; returns the
    marker to store in Redis.

    The pieces go to the file with ``writev``: the value's only copy on the way is
    the kernel's, into the file's pages: those of a kept file of about the
    same size (the pool) if one is free.  Written to a temporary name and
    renamed, so a reader never maps half a file.
    """
    pieces = [value] if isinstance(value, (bytes, memoryview)) else list(value)
    path = os.path.join(directory, filename(key))
    tmp = f"{path}.{os.getpid()}-{threading.get_ident()}.tmp"  # executors may be threads of one process
    size = sum(p.nbytes if isinstance(p, memoryview) else len(p) for p in pieces)
    fd = _reuse(directory, size, tmp)
    if fd is None:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        while pieces:
            n = os.writev(fd, pieces[:IOV_MAX])
            pieces = _advance(pieces, n)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return marker(directory, key)


def marker(directory: str, key: str) -> bytes:
    """What stands in Redis for the file of ``key`` (``write``)."""
    return MARKER + os.path.join(directory, filename(key)).encode()


IOV_MAX = 1024  # pieces per writev call (Linux's limit)


def _reuse(directory: str, size: int, tmp: str) -> int | None:
    """A kept file of about ``size`` bytes, taken from the pool as ``tmp`` and cut to
    ``size``, open for writing; None if the pool has none free.

    The pool is read entry by entry (``scandir``) and the first file within
    ``POOL_CLOSE`` of ``size`` is taken at once: a job of many values of one size
    leaves hundreds of kept files, and listing and sorting them all for every
    write cost more than the write (Cholesky 4000², 500 KB blocks: ~270 kept
    files, ~0.3 ms a write).  Otherwise the closest fits are tried.

    When none fits, the first kept file of another size is taken all the same if
    nobody took it for ``POOL_IDLE_S`` (cut to ``size``: the pages beyond it are
    freed, and those it keeps are written without being allocated again).  So the
    files an earlier job left, of sizes this one does not write, go as this job
    writes, even while no worker is idle to remove them (``trim_pool``): a miss
    costs one ``stat`` more."""
    pool = os.path.join(directory, POOL)
    fits = []
    other = None  # the first kept file of another size
    tries = POOL_TRIES
    try:
        entries = os.scandir(pool)
    except OSError:  # no pool here, or the cluster closed
        return None
    with entries:  # (a failure to take a file is not a missing pool: it is raised)
        for entry in entries:
            kept = _size_of(entry.name)
            if kept is None:
                continue
            if size > kept * POOL_FIT or kept > size * POOL_FIT:
                other = other or entry
                continue
            if abs(kept - size) * POOL_CLOSE > size:
                fits.append((abs(kept - size), entry.name))
                continue
            fd = _take(pool, entry.name, tmp, size)
            if fd is not None:
                return fd
            tries -= 1
            if not tries:
                return None
    for _, name in sorted(fits)[:tries]:
        fd = _take(pool, name, tmp, size)
        if fd is not None:
            return fd
    if other is not None and _idle(other, POOL_IDLE_S):
        return _take(pool, other.name, tmp, size)
    return None


def _idle(entry: os.DirEntry, idle_s: float) -> bool:
    """Whether the kept file ``entry`` has been in the pool ``idle_s`` seconds or more
    (its move there set its ``ctime``)."""
    try:
        return entry.stat().st_ctime < time.time() - idle_s
    except FileNotFoundError:  # taken or removed meanwhile
        return False


def _take(pool: str, name: str, tmp: str, size: int) -> int | None:
    """The pool's file ``name`` as ``tmp``, cut to ``size`` and open for writing; None when
    another writer took it first, or it is still mapped (then it goes back to the pool)."""
    try:
        os.rename(os.path.join(pool, name), tmp)
    except OSError:  # another writer took it
        return None
    fd = os.open(tmp, os.O_RDWR)
    try:
        if _unmapped(fd):
            os.ftruncate(fd, size)
            return fd
    except OSError:
        os.close(fd)
        raise
    os.close(fd)  # still mapped somewhere: back to the pool, to be written once unmapped
    with contextlib.suppress(OSError):  # the cluster closed meanwhile
        os.rename(tmp, os.path.join(pool, name))
    return None


def _advance(pieces: list, n: int) -> list:
    """What is left of ``pieces`` once their first ``n`` bytes are written."""
    while pieces and n >= len(pieces[0]):
        n -= len(pieces[0])
        pieces = pieces[1:]
    if pieces and n:
        pieces = [memoryview(pieces[0]).cast("B")[n:], *pieces[1:]]
    return pieces


def is_marker(value: object) -> bool:
    return isinstance(value, bytes) and value.startswith(MARKER)


def read(marker: bytes) -> memoryview:
    """The value behind ``marker``: a private (copy-on-write) mapping of its file."""
    path = marker[len(MARKER) :].decode()
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            return memoryview(b"")
        return memoryview(mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY))


def remove(directory: str | None, key: str) -> None:
    """Delete the file of ``key``, if there is one."""
    if directory:
        (Path(directory) / filename(key)).unlink(missing_ok=True)


def remove_job(directory: str | None, job: str) -> None:
    """Remove the files of ``job`` (``discard``)."""
    if not directory:
        return
    prefix = f"wk-{job}-"  # listed, not globbed: a glob compiles its pattern, a new one per job (~0.5 ms)
    try:
        names = [e.name for e in os.scandir(directory) if e.name.startswith(prefix)]
    except FileNotFoundError:  # the cluster closed
        return
    discard(directory, names)


def discard(directory: str, names: Sequence[str]) -> None:
    """Remove the files ``names`` of ``directory`` (those that exist): into the pool while
    it has room (a mapped one too: it is written again once unmapped); deleted otherwise
    (mappings still open stay valid until dropped)."""
    pool = os.path.join(directory, POOL)
    room = pool_cap() - sum(kept for kept, _ in _kept(pool)) if names and os.path.isdir(pool) else 0
    for name in names:
        path = os.path.join(directory, name)
        with contextlib.suppress(FileNotFoundError):
            if room > 0 and not name.endswith(".tmp"):  # a .tmp file is a writer's, still open
                size = os.stat(path).st_size
                os.rename(path, os.path.join(pool, f"{size}-{name}"))
                room -= size
                continue
            os.unlink(path)


def _kept(pool: str) -> list[tuple[int, os.DirEntry]]:
    """The pool's files and their sizes."""
    try:
        entries = list(os.scandir(pool))
    except FileNotFoundError:
        return []
    return [(size, e) for e in entries if (size := _size_of(e.name)) is not None]


def _size_of(name: str) -> int | None:
    """The size a pool file's name gives (``<size>-<name>``), None for another name."""
    size = name.partition("-")[0]
    return int(size) if size.isdigit() else None


def trim_pool(directory: str | None, idle_s: float = POOL_IDLE_S) -> None:
    """Delete the pool's files that nobody took for ``idle_s`` seconds (their move there
    set their ``ctime``)."""
    if not directory:
        return
    for _, entry in _kept(os.path.join(directory, POOL)):
        if _idle(entry, idle_s):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)

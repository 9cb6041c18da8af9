"""Large values between local processes, through shared memory instead of Redis.

On the local backend every executor, and the client, run on one machine, so
a large value (``SHM_MIN`` bytes or more) need not cross Redis: the writer
puts it in a file of the cluster's directory on ``/dev/shm`` (one copy, into
RAM) and stores a small marker under the key; a reader maps the file
copy-on-write, so the arrays it unpickles are writable and no byte is copied
until a task writes to one.  Files are named after the job
(``wk-<job>-<kind>-<id>``); the client removes a job's files with its keys,
and closing the cluster removes the directory.

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
from collections.abc import Sequence
from pathlib import Path

MARKER = b"\x00wukong-shm\x00"
# bytes; smaller values go through Redis.  Written, read and removed as in a job, fresh
# values of 256 KiB cost 0.74x through a file what they cost through Redis, of 128 KiB
# 0.92x, of 64 KiB 1.02x, of 1 MiB 0.47x (``python -m bench.dataplane --threshold``,
# idle); a Cholesky of 4000² (250² blocks, 500 kB) ran in 6.4 s against 10.8-11.6 s with
# 1 MiB here (``python -m bench --size full --only cholesky --systems wukong``, the two
# alternating), with 1.7 round trips a task against 2.7
SHM_MIN = 256 << 10


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
    return path


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
    the kernel's, into the file's pages.  Written to a temporary name and
    renamed, so a reader never maps half a file.
    """
    pieces = [value] if isinstance(value, (bytes, memoryview)) else list(value)
    path = os.path.join(directory, filename(key))
    tmp = f"{path}.{os.getpid()}-{threading.get_ident()}.tmp"  # executors may be threads of one process
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        while pieces:
            n = os.writev(fd, pieces[:IOV_MAX])
            pieces = _advance(pieces, n)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return MARKER + path.encode()


IOV_MAX = 1024  # pieces per writev call (Linux's limit)


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
    """Delete the files of ``job`` (mappings still open stay valid until dropped)."""
    if not directory:
        return
    prefix = f"wk-{job}-"  # listed, not globbed: a glob compiles its pattern, a new one per job (~0.5 ms)
    try:
        names = [e.name for e in os.scandir(directory) if e.name.startswith(prefix)]
    except FileNotFoundError:  # the cluster closed
        return
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(directory, name))

"""Results held in the KV store after their job, for the client's futures.

A job run for ``client.compute``/``submit``/``persist`` keeps its requested
results at ``Keys.held(tid)`` (the executor writes them; the client never
pulls them unless asked).  A later graph that uses such a result gets a small
task, ``load(name)``, in place of the future: it runs on an executor and reads
the value where it is stored, with that executor's store (``use``).  The
client deletes a held value when the last future referring to it is dropped
(``release``); the TTL every key carries is the safety net.
"""

from __future__ import annotations

import threading
from typing import Any

from wukong import serialization
from wukong.store import shm
from wukong.store.store import Store

# The store of the invocation this thread runs: a warm process (a Lambda sandbox, a
# lambda-local worker) may run executors of several clusters, one after the other.
_current = threading.local()


def use(store: Store) -> None:
    """Tasks run by this thread from now on load held values with ``store`` (their executor's)."""
    _current.store = store
    _current.fetched = 0


def take_fetched() -> int:
    """The bytes ``load`` read in this thread since the last call (the executor's task record)."""
    n = getattr(_current, "fetched", 0)
    _current.fetched = 0
    return n


def fetch(store: Store, names: list[str]) -> list[bytes | memoryview | None]:
    """The serialized values at ``names``, in one round trip per server."""
    batch = store.batch()
    handles = batch.kvs_get_many(names)
    batch.execute()
    return [batch[h] for h in handles]


def load(name: str) -> Any:
    """The task that stands for a future in a graph: the value held at ``name``."""
    store = getattr(_current, "store", None)
    if store is None:
        raise RuntimeError(f"no wukong executor in this thread to read the held value {name!r}")
    (value,) = fetch(store, [name])
    if value is None:
        raise LookupError(f"the held value {name!r} is gone (released, or its TTL expired)")
    _current.fetched = getattr(_current, "fetched", 0) + len(value)
    return serialization.loads(value)


def release(store: Store, names: list[str]) -> None:
    """Delete held values; their shared-memory files on a local cluster go to its pool of
    files to write again (``shm.discard``)."""
    if not names:
        return
    by_server: dict[int, list[str]] = {}
    for server, name in zip(store.kvs_servers(names), names, strict=True):
        by_server.setdefault(server, []).append(name)
    if store.shm_dir:
        shm.discard(store.shm_dir, [shm.filename(name) for name in names])
    store.delete(by_server)

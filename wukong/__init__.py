"""wukong: run Dask graphs on serverless executors with decentralized scheduling.

>>> from wukong import LocalCluster, Client          # doctest: +SKIP
>>> cluster = LocalCluster()                          # doctest: +SKIP
>>> client = Client(cluster)                          # doctest: +SKIP
>>> x.compute(scheduler=client.get)                   # doctest: +SKIP

The public API only.  Each name is imported on first use, so ``import wukong``
costs nothing of Redis, Dask or AWS until a cluster is made.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from wukong.client import Client
    from wukong.cluster import LocalCluster
    from wukong.diagnostics import JobRecord
    from wukong.errors import JobCancelled, JobFailed, TaskError, WukongError
    from wukong.futures import Future, as_completed, wait
    from wukong.graph import GraphError
    from wukong.report import performance_report
    from wukong.store import StorageError

_WHERE = {
    "Client": "wukong.client",
    "Future": "wukong.futures",
    "JobRecord": "wukong.diagnostics",
    "as_completed": "wukong.futures",
    "performance_report": "wukong.report",
    "wait": "wukong.futures",
    "GraphError": "wukong.graph",
    "JobCancelled": "wukong.errors",
    "JobFailed": "wukong.errors",
    "LocalCluster": "wukong.cluster",
    "StorageError": "wukong.store.endpoint",
    "TaskError": "wukong.errors",
    "WukongError": "wukong.errors",
}
__all__ = [
    "Client",
    "Future",
    "JobRecord",
    "as_completed",
    "performance_report",
    "wait",
    "GraphError",
    "JobCancelled",
    "JobFailed",
    "LocalCluster",
    "StorageError",
    "TaskError",
    "WukongError",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'wukong' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])

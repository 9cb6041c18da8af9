"""wukong's settings in Dask's configuration system, namespace ``wukong``.

The defaults ship with the package (``wukong.yaml``, as dask-jobqueue ships
``jobqueue.yaml``) and are merged under whatever the user set: YAML files in
``~/.config/dask/``, ``DASK_WUKONG__...`` environment variables (read when Dask
is imported), and ``dask.config.set({"wukong.inline-limit": ...})``.  An
argument given to ``LocalCluster`` or ``Client`` wins over all of them.
"""

from __future__ import annotations

import os
from typing import Any

import dask.config
import yaml

_YAML = os.path.join(os.path.dirname(__file__), "wukong.yaml")

with open(_YAML) as _f:
    DEFAULTS: dict = yaml.safe_load(_f)

dask.config.update_defaults(DEFAULTS)

# LocalCluster argument -> configuration key
CLUSTER_KEYS = {
    "backend": "wukong.backend",
    "n_workers": "wukong.n-workers",
    "threads_per_worker": "wukong.threads-per-worker",
    "processes": "wukong.processes",
    "redis_endpoints": "wukong.redis-endpoints",
    "kvs_shards": "wukong.kvs-shards",
    "inline_limit": "wukong.inline-limit",
    "cluster_threshold": "wukong.cluster-threshold",
    "ttl": "wukong.ttl",
    "max_task_fanout": "wukong.max-task-fanout",
    "retries": "wukong.retries",
    "function_name": "wukong.lambda.function-name",
    "region": "wukong.lambda.region",
    "start_grace": "wukong.lambda.start-grace",
}


def get(key: str, default: Any = None) -> Any:
    """``dask.config.get("wukong." + key)``."""
    return dask.config.get(f"wukong.{key}", default)


def cluster_defaults(**given: Any) -> dict[str, Any]:
    """``given`` with each ``None`` replaced by its configured value."""
    return {name: dask.config.get(CLUSTER_KEYS[name]) if value is None else value for name, value in given.items()}

"""wukong: run Dask graphs on serverless executors with decentralized scheduling.

>>> from wukong import LocalCluster, Client          # doctest: +SKIP
>>> cluster = LocalCluster()                          # doctest: +SKIP
>>> client = Client(cluster)                          # doctest: +SKIP
>>> x.compute(scheduler=client.get)                   # doctest: +SKIP
"""

from wukong.client import Client
from wukong.cluster import LocalCluster
from wukong.errors import JobCancelled, JobFailed, TaskError, WukongError
from wukong.graph import GraphError
from wukong.storage import StorageError

__all__ = [
    "Client",
    "GraphError",
    "JobCancelled",
    "JobFailed",
    "LocalCluster",
    "StorageError",
    "TaskError",
    "WukongError",
]
__version__ = "0.1.0"

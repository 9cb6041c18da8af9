"""Storage: the metadata store and the sharded KV store (see ``wukong.store.store``).

=================  ==========================================================
module             what
=================  ==========================================================
``endpoint``       one Redis server's address and credentials; ``StorageError``
``store``          ``Store``: connections to the MDS and the KVS shards, the ring
``batch``          ``Batch``: one pipeline per server per step
``parts``          values over Redis's 512 MB string limit, split and joined
``shm``            large values between local processes through ``/dev/shm``
``held``           results kept after their job for the client's futures
``objects``        a worker process's object table: values its executors share by reference
``scripts``        the Lua registry (``lua/*.lua``), EVALSHA, reload on NOSCRIPT
``server``         an embedded, private ``redis-server`` child process
=================  ==========================================================
"""

from wukong.store.batch import Batch
from wukong.store.endpoint import Endpoint, StorageError
from wukong.store.parts import PART_SIZE
from wukong.store.store import CLOSE_DELETES_S, DEFAULT_TTL, JobWrites, Store

__all__ = ["CLOSE_DELETES_S", "DEFAULT_TTL", "PART_SIZE", "Batch", "Endpoint", "JobWrites", "StorageError", "Store"]

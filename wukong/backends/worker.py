"""A warm local executor process: ``python -m wukong.backends.worker`` (config on stdin).

It blocks on the cluster's invocation queue (a Redis list on the MDS) with
BLMOVE, which atomically moves the invocation to this worker's own
"processing" list: if the process dies, the cluster finds there what it was
running.  The entry is removed in the same pipeline that reports the exit.
"""

from __future__ import annotations

import gc
import json
import signal
import sys

from wukong.backends.local import STOP, queue_invoker
from wukong.backends.supervise import READY
from wukong.executor import Executor
from wukong.process import die_with_parent
from wukong.protocol import decode_invocation
from wukong.proxy.client import executor_options as proxy_options
from wukong.store import Batch, Store
from wukong.timeout import TaskBoard

GC_GEN0 = 20_000  # allocations between collections of the youngest generation (Python's default: 700)


def serve(config: dict) -> None:
    store = Store.from_config(config["store"])
    queue, processing = config["queue"], config["processing"]
    route = {"backend": "local", "store": config["store"], "queue": queue}  # where the proxy pushes
    proxy = proxy_options(config.get("proxy"), store, route)
    board = TaskBoard(config["board"]) if config.get("board") is not None else None
    executor = Executor(store, queue_invoker(queue), **config["executor"], **proxy, board=board, queue=queue)
    blocking = store.connect_mds(socket_timeout=None)
    blocking.ping()
    _warm_imports()
    # What start-up made lives as long as the process: never scan it again.  Tasks make
    # many small objects; collecting the youngest every 700 allocations costs more
    # than it frees (noop jobs: up to 0.45 s of collections per worker per job).
    gc.freeze()
    gc.set_threshold(GC_GEN0, *gc.get_threshold()[1:])
    sys.stdout.buffer.write(READY)
    sys.stdout.flush()
    while True:
        payload: bytes = blocking.blmove(queue, processing, 0, "LEFT", "RIGHT")  # type: ignore[assignment]
        if payload == STOP:
            blocking.lrem(processing, 1, payload)  # type: ignore[arg-type]
            return

        def ack(batch: Batch, payload: bytes = payload) -> None:
            batch.mds("lrem", processing, 1, payload)

        executor.run(decode_invocation(payload), on_exit=ack)


def _warm_imports() -> None:
    """Import what most task bodies need before taking work, not during a job."""
    import dask.array  # noqa: F401
    import numpy  # noqa: F401


def main() -> None:
    config = json.loads(sys.stdin.readline())
    # SIGKILL: it cannot be caught or deferred by a running task (or a blocking BLMOVE)
    die_with_parent(config["parent"], signal.SIGKILL)
    try:
        serve(config)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()

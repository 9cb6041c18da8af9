"""Sending an invocation again when its executor was lost.

Two watchers find lost invocations: the local cluster sees a worker process
die (the invocations in its processing list), and the client's watchdog sees
an invocation whose lease is missing for too long (an executor that died on
Lambda, or an invocation that was never delivered).  Both call ``resend``:
it counts the attempt, clears the stale lease so the new delivery can take
it, and invokes again -- or, past ``max_attempts``, fails the job with an
error that says what happened, so the client never waits forever.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import Any

from wukong.executor import Invocation
from wukong.storage import Keys, Store

MAX_ATTEMPTS = 4  # deliveries of one invocation before its job fails


def resend(
    store: Store,
    invoke: Callable[..., Any],
    job: str,
    invocations: list[Invocation],
    why: str,
    max_attempts: int = MAX_ATTEMPTS,
) -> None:
    keys = Keys(job)
    counted = store.batch()
    h_alive = counted.mds("exists", keys.events)
    handles = [counted.mds("hincrby", keys.attempts, inv.id, 1) for inv in invocations]
    counted.mds("expire", keys.attempts, store.ttl)
    counted.execute()
    if not counted[h_alive]:  # the job has ended: nothing to recover
        store.mds.delete(keys.attempts)
        return
    again = []
    batch = store.batch()
    for inv, h in zip(invocations, handles, strict=False):
        if counted[h] > max_attempts:
            what = f"{why}; schedule {inv.sched} (invocation {inv.id}) was lost {max_attempts} times, giving up"
            batch.mds("xadd", keys.events, {"k": "e", "v": pickle.dumps((None, what, None, ""))}, "*", None, True, True)
            batch.mds("xadd", keys.events, {"k": "c", "n": 0, "i": "", "x": inv.id}, "*", None, True, True)
        else:
            batch.mds("delete", keys.lease(inv.id))
            again.append(inv)
    after = invoke(batch, job, again) if again else None
    batch.execute()
    if after is not None:
        after()

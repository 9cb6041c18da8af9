"""Leases, and sending an invocation again when its executor was lost.

Every invocation takes a lease in the MDS before it runs (``lease.lua``;
``LEASE_MS``) and a ``Heartbeat`` thread renews it while its executor lives;
at exit the lease says "done".  Two watchers find lost invocations: the
local backend sees a worker process die (the invocations in its processing
list), and the client's watchdog sees an invocation whose lease is missing
for too long (an executor that died on Lambda, or an invocation that was
never delivered).  Both call ``resend``: it counts the attempt, clears the
stale lease so the new delivery can take it, and invokes again -- or, past
``max_attempts``, fails the job with an error that says what happened, so the
client never waits forever.
"""

from __future__ import annotations

import threading

from wukong import protocol
from wukong.backends.base import Invoke, launch
from wukong.protocol import Invocation, Keys
from wukong.store import Store

LEASE_MS = 3000  # an invocation's lease; renewed every third of it while the executor lives
MAX_ATTEMPTS = 4  # deliveries of one invocation before its job fails


def resend(
    store: Store,
    invoke: Invoke,
    job: str,
    invocations: list[Invocation],
    why: str,
    max_attempts: int = MAX_ATTEMPTS,
    clear_leases: bool = True,
) -> None:
    """Send ``invocations`` again, clearing their stale leases first when ``clear_leases``.

    The watchdog passes ``clear_leases=False``: it resends only invocations it
    saw without a lease, so a lease there now was taken since by a live
    delivery (deleting it would let a queued duplicate run the tasks again).
    """
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
            protocol.emit_error(batch, keys, None, what, None, "")
            protocol.emit_counts(batch, keys, 0, exited=inv.id)
        else:
            if clear_leases:
                batch.mds("delete", keys.lease(inv.id))
            again.append(inv)
    launch(invoke, batch, job, again)


class Heartbeat:
    """Keeps the running invocation's lease alive from a background thread.

    A lease that is not renewed (the process died, or froze) expires after
    ``lease_ms``; the client's watchdog then sends the invocation again.
    """

    def __init__(self, store: Store, lease_ms: int):
        self.store = store
        self.lease_ms = lease_ms
        self.key: str | None = None
        self.token = ""
        self.wake = threading.Event()
        self.thread: threading.Thread | None = None

    def hold(self, key: str, token: str) -> None:
        self.key, self.token = key, token
        if self.thread is None:
            self.thread = threading.Thread(target=self._beat, name="wukong-heartbeat", daemon=True)
            self.thread.start()

    def release(self) -> None:
        self.key = None

    def _beat(self) -> None:
        r = self.store.endpoints[self.store.mds_index].connect(socket_timeout=self.lease_ms / 1000)
        while True:
            self.wake.wait(self.lease_ms / 3000)
            key = self.key
            if key is None:
                continue
            try:
                r.pexpire(key, self.lease_ms, xx=True)
            except Exception:
                pass  # the next round trip of the executor itself will report the trouble

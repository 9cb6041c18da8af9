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
client never waits forever.  A re-run invocation records each task before
running it (``Keys.current``), so when the last attempt dies too, the error
names the task that killed it.
"""

from __future__ import annotations

import pickle
import threading
import time
from typing import Any

from redis.exceptions import NoScriptError

from wukong import protocol
from wukong.backends.base import Invoke, launch
from wukong.protocol import Invocation, Keys
from wukong.store import Store, scripts
from wukong.timeout import Guard

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
    for inv in invocations:  # where the re-run records its tasks (only ever overwritten: SET XX)
        counted.mds("execute_command", "SET", keys.current(inv.id), b"", "EX", store.ttl, "NX")
    counted.execute()
    if not counted[h_alive]:  # the job has ended: nothing to recover
        store.mds.delete(keys.attempts, *[keys.current(inv.id) for inv in invocations])
        return
    losses = {inv.id: counted[h] for inv, h in zip(invocations, handles, strict=True)}
    lost = [inv for inv in invocations if losses[inv.id] > max_attempts]  # re-run max_attempts times
    given_up = {inv.id for inv in lost}
    # each says how often it was delivered before: a re-run records its tasks from its first
    again = [inv._replace(attempt=losses[inv.id]) for inv in invocations if inv.id not in given_up]
    batch = store.batch()
    for inv, task in zip(lost, _current_tasks(store, keys, lost), strict=True):
        runs = f"invocation {inv.id} of schedule {inv.sched} was lost {losses[inv.id]} times, giving up"
        if task is not None:  # a task kills its executor, every time
            protocol.emit_error(batch, keys, pickle.loads(task), f"killed its executor ({why}); {runs}", None, "")
        else:
            protocol.emit_error(batch, keys, None, f"{why}; {runs}", None, "")
        protocol.emit_event(batch, keys, protocol.counts_fields(0, exited=inv.id))
    for inv in again:
        if clear_leases:
            batch.mds("delete", keys.lease(inv.id))
    launch(invoke, batch, job, again)


def superseded(store: Store, invocations: list[Invocation]) -> list[bool]:
    """For each of ``invocations``, whether it has been delivered again since it was
    taken: its job's count of deliveries (``Keys.attempts``, kept by ``resend``) is
    past the one it carries."""
    if not invocations:
        return []
    pipe = store.mds.pipeline(transaction=False)
    for inv in invocations:
        pipe.hget(Keys(inv.job).attempts, inv.id)
    return [int(n or 0) > inv.attempt for inv, n in zip(invocations, pipe.execute(), strict=True)]


def _current_tasks(store: Store, keys: Keys, invocations: list[Invocation]) -> list[bytes | None]:
    """The task each invocation was running when it was last lost, where a re-run recorded it."""
    if not invocations:
        return []
    values: Any = store.mds.mget([keys.current(inv.id) for inv in invocations])
    return [v or None for v in values]


class Heartbeat:
    """Keeps the running invocation's lease alive from a background thread.

    A lease that is not renewed (the process died, or froze) expires after
    ``lease_ms``; the client's watchdog then sends the invocation again.  A
    beat that comes late -- the thread starved for a lease by a task or an
    import holding the GIL, a GC pause, a loaded host -- takes the lapsed lease
    back (``renew.lua``) unless another delivery took it since: one late beat
    no longer leaves the lease missing until the invocation's exit, for the
    watchdog to send it again while it runs.  The same beat checks the job's
    cancel flag for the ``Guard`` of the running invocation (``wukong.timeout``).
    """

    def __init__(self, store: Store, lease_ms: int):
        self.store = store
        self.lease_ms = lease_ms
        self.held: tuple[tuple[str, str], str, Guard | None] | None = None  # (events, lease), token, guard
        self.wake = threading.Event()
        self.thread: threading.Thread | None = None

    def hold(self, keys: Keys, inv: str, token: str, guard: Guard | None = None) -> None:
        self.held = ((keys.events, keys.lease(inv)), token, guard)  # one assignment: a beat reads it whole
        if self.thread is None:
            self.thread = threading.Thread(target=self._beat, name="wukong-heartbeat", daemon=True)
            self.thread.start()

    def release(self) -> None:
        self.held = None

    def _beat(self) -> None:
        r = self.store.connect_mds(socket_timeout=self.lease_ms / 1000)
        while True:
            self.wake.wait(self.lease_ms / 3000)
            held = self.held
            if held is None:
                continue
            keys, token, guard = held
            try:
                pipe = r.pipeline(transaction=False)
                pipe.execute_command(*scripts.RENEW.args(keys, (token, self.lease_ms)))
                if guard is not None:
                    pipe.exists(guard.cancel_key)
                replies = pipe.execute(raise_on_error=False)
                if isinstance(replies[0], NoScriptError):  # the server restarted: the next beat renews
                    scripts.load_all(r)
            except Exception:
                continue  # the next round trip of the executor itself will report the trouble
            if guard is not None and self.held is held and not isinstance(replies[1], Exception):
                guard.beat(bool(replies[1]), time.monotonic())

"""Ending a local worker whose task must stop and will not, from the cluster's process.

The executor's own ``Guard`` (``wukong.timeout``) runs on the worker's
heartbeat thread.  A task that holds the GIL -- a deadlock or a long call in
C code, a catastrophic regular expression -- starves that thread, so it never
acts; the cluster's process cannot be starved by it.  Every ``POLL_S`` the
``Watch`` reads what each live worker runs (its processing list: the
invocation it took) and, for those jobs, their cancel flag, whether the job
still lives, and its ``task_timeout``; for the time limit it reads the task
the worker shows on its ``TaskBoard``.

A worker must stop when the job of its invocation has been cancelled
(``Client.cancel``, ``timeout=``, Ctrl-C, a failed task) or has ended, seen
so for ``grace`` seconds; or when its task has run ``grace`` past the job's
``task_timeout``.  ``grace`` is the guard's ``GRACE_S`` plus one lease, so a
worker whose guard still runs ends itself first.  The watch notes why (the
task and the error, for a time limit) and SIGKILLs the worker's process group
(the task's own children with it); the worker's slot sees it die, the backend
reports each noted invocation as ended (``timeout.report_ended``) instead of
sending it again, and the slot starts a fresh worker.

A frozen worker (SIGSTOP, a debugger) is left alone while others can do its
work: its lease lapses and the client's watchdog sends its invocation again,
to any worker.  It is ended (and replaced) when its job must stop, as above,
or once it has been frozen for ``grace`` while invocations wait in the queue:
with every worker frozen, or the only one, nobody else would take them.  Its
invocations the watchdog sent again meanwhile are not sent once more
(``recovery.superseded``).  A lapsed lease alone is no reason to end a running worker:
a task may hold the GIL for long when nobody asked it to stop.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import threading
import time
from typing import Any

from wukong import protocol
from wukong.executor import Schedule
from wukong.process import frozen, kill_group
from wukong.protocol import Invocation, Keys, decode_invocation
from wukong.store import Store
from wukong.timeout import GRACE_S, TaskBoard, report_ended, would_not_stop

POLL_S = 0.5  # how often the watch looks; a stuck worker is ended at most this late after its grace

# Why an invocation was ended: ``None`` (its job was cancelled or ended), or
# (schedule, position, task_timeout) of the task that outlived its limit.
Ended = tuple[int, int, float] | None


class Watch:
    """The stuck-worker watch of one local cluster (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        cluster_id: str,
        workers: list[subprocess.Popen | None],
        lease_ms: int,
        closing: threading.Event,
        queue: str,
    ):
        self.store = store
        self.cluster_id = cluster_id
        self.queue = queue  # the cluster's invocation queue: work waiting for a worker
        self.workers = workers
        self.grace = GRACE_S + lease_ms / 1000
        self.closing = closing
        # one board per worker slot, kept across its workers (zeroed for each new one)
        self.files = [tempfile.TemporaryFile() for _ in workers]
        for f in self.files:
            f.truncate(TaskBoard.SIZE)
        self.boards = [TaskBoard(f.fileno()) for f in self.files]
        self.since: dict[tuple[int, str], float] = {}  # (worker, invocation) -> first seen cancelled or ended
        self.frozen_since: dict[int, float] = {}  # pid of a frozen worker holding invocations -> first seen so
        self.ended: dict[int, dict[str, Ended]] = {}  # pid of a worker ended here -> why, by invocation
        self.thread = threading.Thread(target=self._run, name="wukong-stuck-watch", daemon=True)

    def board_fd(self, wid: int) -> int:
        """The board a new worker of slot ``wid`` writes (cleared: nothing runs yet)."""
        self.boards[wid].stop()
        return self.files[wid].fileno()

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        for f in self.files:
            f.close()  # the mapping stays valid until the board is dropped

    def _run(self) -> None:
        while not self.closing.wait(POLL_S):
            try:
                self.check(time.monotonic())
            except Exception:
                pass  # Redis briefly unreachable: look again next time

    # -- looking -----------------------------------------------------------------
    def check(self, now: float) -> None:
        busy, backlog = self._busy()
        jobs = sorted({inv.job for _, _, invs, _ in busy for inv in invs})
        pipe = self.store.mds.pipeline(transaction=False)
        for job in jobs:
            keys = Keys(job)
            pipe.exists(keys.events)
            pipe.exists(keys.cancel)
            pipe.get(keys.options)
        replies: list[Any] = pipe.execute() if jobs else []
        must_stop, limit = {}, {}
        for i, job in enumerate(jobs):
            alive, cancelled, options = replies[3 * i : 3 * i + 3]
            must_stop[job] = not alive or bool(cancelled)
            limit[job] = json.loads(options).get("task_timeout") if options else None
        seen = set()
        frozen_seen: dict[int, float] = {}  # this look's frozen workers -> first seen frozen
        for wid, proc, invs, is_frozen in busy:
            ended: dict[str, Ended] = {}
            for inv in invs:
                if must_stop[inv.job]:
                    seen.add((wid, inv.id))
                    if now - self.since.setdefault((wid, inv.id), now) >= self.grace:
                        ended[inv.id] = None
            if is_frozen:  # it runs nothing: no time limit; replaced if others wait for a worker
                frozen_seen[proc.pid] = self.frozen_since.get(proc.pid, now)
                if not ended and backlog and now - frozen_seen[proc.pid] >= self.grace and proc.pid not in self.ended:
                    self.ended[proc.pid] = {}  # its invocations are sent again (``Local._worker_died``)
                    kill_group(proc)
                    continue
            else:
                last, task = invs[-1], self.boards[wid].read()  # the board shows the newest one's task
                seconds = limit[last.job]
                if task is not None and seconds and last.id not in ended and now - task[2] > seconds + self.grace:
                    ended[last.id] = (task[0], task[1], seconds)
            if ended and proc.pid not in self.ended:
                self.ended[proc.pid] = ended
                kill_group(proc)
        self.since = {k: t for k, t in self.since.items() if k in seen}
        self.frozen_since = frozen_seen

    def _busy(self) -> tuple[list[tuple[int, subprocess.Popen, list[Invocation], bool]], int]:
        """Live workers with the invocations they took, and whether each is frozen; and
        how many invocations wait in the queue."""
        pipe = self.store.mds.pipeline(transaction=False)
        for wid in range(len(self.workers)):
            pipe.lrange(protocol.worker_processing(self.cluster_id, wid), 0, -1)
        pipe.llen(self.queue)
        *lists, backlog = pipe.execute()
        out = []
        for wid, entries in enumerate(lists):
            proc = self.workers[wid]
            if entries and proc is not None and proc.poll() is None:
                out.append((wid, proc, [decode_invocation(p) for p in entries], frozen(proc.pid)))
        return out, int(backlog)

    # -- after the worker died ----------------------------------------------------
    def report(self, ended: list[tuple[Invocation, Ended]]) -> None:
        """Report the invocations of a worker ended here as ended, naming the task
        that outlived its limit (``timeout.report_ended``)."""
        batch = self.store.batch()
        for inv, why in ended:
            keys = Keys(inv.job)
            if why is None:
                report_ended(batch, keys, inv.id, None, None)
                continue
            sid, pos, seconds = why
            key = self._task_key(inv, sid, pos)
            what = would_not_stop(seconds)
            if key is None:
                what = f"a task (position {pos} of schedule {sid}) {what}"
            report_ended(batch, keys, inv.id, key, what)
        batch.execute()

    def _task_key(self, inv: Invocation, sid: int, pos: int) -> Any:
        """The key of the task at ``pos`` of schedule ``sid`` of ``inv``'s job, or ``None``
        if it cannot be read."""
        keys = Keys(inv.job)
        try:
            if inv.plan:  # a solo job's, in its invocation (``Backend.inline_plan``)
                return Schedule.whole(inv.plan)[sid].body(pos)[0].key
            batch = self.store.batch()
            h = batch.get_value(self.store.mds_index, keys.schedule(sid))
            h_plan = batch.get_value(self.store.mds_index, keys.plan)  # a solo job's (``protocol.pack_plan``)
            batch.execute()
            sched = Schedule(batch[h]) if batch[h] is not None else Schedule.whole(batch[h_plan])[sid]
            return sched.body(pos)[0].key
        except Exception:
            return None

"""``Client.get``: a Dask ``get`` that runs the graph on a wukong cluster.

One call is one job:

1. ``graph.prepare`` converts, culls and validates the graph;
2. ``scheduler.plan`` interns keys, builds the static schedules and encodes
   them with their pickled task bodies;
3. the schedules go to the metadata store and the leaf schedules are invoked
   (grouped a few per local worker; one invocation each on Lambda), all in
   one pipeline;
4. the client reads the job's event stream with blocking reads: results,
   errors, tasks done, and which invocations were made and which exited --
   by id, so a duplicated or re-run invocation never confuses the count;
   a watchdog sends again an invocation whose lease stays missing (its
   executor died, or it was never delivered: ``wukong.recovery``);
5. when every executor has exited, every key of the job is deleted and the
   results are returned in the nesting of ``keys`` (or the first task error
   is raised as its original type, carrying the remote traceback).
"""

from __future__ import annotations

import json
import secrets
import sys
import time
from typing import Any

import redis

from wukong import protocol, serialization
from wukong.backends.base import Backend, launch
from wukong.cost import cost_summary
from wukong.errors import JobCancelled, JobFailed, task_error
from wukong.graph import flatten_keys, prepare
from wukong.progress import ProgressBar
from wukong.protocol import Invocation, Keys, decode_invocation
from wukong.recovery import resend
from wukong.scheduler import Plan, plan
from wukong.store import StorageError, Store

BLOCK_MS = 250  # a blocking read returns at least this often, to redraw progress
DRAIN_S = 30.0  # after a failure, how long executors get to notice the cancel flag


class Client:
    """Runs Dask graphs on a wukong cluster.

    Parameters
    ----------
    cluster : LocalCluster
    progress : bool
        Show a progress bar on jobs that take longer than about a second.
    """

    def __init__(self, cluster: Any, *, progress: bool = True):
        self.cluster = cluster
        self.progress = progress
        self.last_job: dict[str, Any] = {}
        self.active: set[Job] = set()

    @property
    def store(self) -> Store:
        return self.cluster.store

    @property
    def backend(self) -> Backend:
        return self.cluster.backend

    def get(self, dsk: Any, keys: Any, **kwargs: Any) -> Any:
        """Compute ``keys`` of ``dsk``; the ``scheduler=`` entry point for Dask.

        Accepts what Dask hands a scheduler (an expression, a HighLevelGraph
        or a dict, legacy tuple tasks included).

        Options: ``progress``; ``retries`` (re-run a failing task up to this
        many times; default: the cluster's); ``timeout`` (seconds for the
        whole job); ``task_timeout`` (seconds for any one task).
        """
        progress = kwargs.pop("progress", self.progress)
        options = {
            "retries": int(kwargs.pop("retries", self.cluster.retries)),
            "task_timeout": kwargs.pop("task_timeout", None),
        }
        timeout = kwargs.pop("timeout", None)
        kwargs.pop("num_workers", None)
        t0 = time.perf_counter()
        order, graph = prepare(dsk, keys)
        job_plan = plan(order, graph, flatten_keys(keys))
        t1 = time.perf_counter()
        job = Job(self, job_plan, progress, options, timeout)
        self.active.add(job)
        try:
            results = job.run()
        finally:
            self.active.discard(job)
        t2 = time.perf_counter()
        self.last_job = {"tasks": len(order), "schedules": job_plan.nschedules, "plan_s": t1 - t0, "run_s": t2 - t1}
        cost = self.backend.job_cost(job.durations)
        if cost is not None:
            self.last_job["cost"] = cost
            if progress:
                print(cost_summary(cost), file=sys.stderr)
        return _nested(keys, results)

    def cancel(self) -> None:
        """Stop the running jobs (from another thread): their executors stop
        before their next task, their keys are deleted, and ``get`` raises
        ``JobCancelled``."""
        for job in list(self.active):
            job.cancel(by_user=True)

    def close(self) -> None:
        """The client holds no resources of its own; the cluster is closed separately."""

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def group_leaves(leaves: list[int], ngroups: int | None) -> list[list[int]]:
    """Cut the leaf schedules, in order, into at most ``ngroups`` invocations.

    One invocation per leaf costs a queue round trip and a start-up each; a
    backend with bounded concurrency gains nothing from more invocations than
    it can run at once.  Contiguous runs of leaves (ids follow the graph's
    order) tend to share fan-ins, which then complete inside one executor
    from its batched notifications.  ``None``: one invocation per leaf (Lambda).
    """
    if not ngroups or len(leaves) <= ngroups:
        return [[s] for s in leaves]
    size = -(-len(leaves) // ngroups)
    return [leaves[i : i + size] for i in range(0, len(leaves), size)]


def _nested(keys: Any, results: dict) -> Any:
    if isinstance(keys, list):
        return tuple(_nested(k, results) for k in keys)
    return results[keys]


class Job:
    """One run of a plan on the cluster (see the module docstring)."""

    def __init__(self, client: Client, job_plan: Plan, progress: bool, options: dict, timeout: float | None):
        self.client = client
        self.cluster = client.cluster
        self.backend = client.backend
        self.store = client.store
        self.plan = job_plan
        self.options = options
        self.deadline = time.monotonic() + timeout if timeout else None
        self.timeout = timeout
        self.keys = Keys(secrets.token_hex(8))
        self.bar = ProgressBar(job_plan.ntasks) if progress else None
        self.results: dict[Any, Any] = {}
        self.error: BaseException | None = None
        self.user_cancel = False
        self.live: dict[str, float | None] = {}  # invocation id -> since when its lease is missing
        self.exited: set[str] = set()
        self.starts: dict[str, Invocation] = {}
        self.done = 0
        self.last_id = b"0-0"
        self.durations: list[tuple[float, int]] = []
        lease_s = self.cluster.lease_ms / 1000
        self.watch_every, self.lost_after = lease_s / 2, 2 * lease_s
        if self.backend.sees_in_flight:
            # the backend shows every invocation in flight: one missing from all
            # of them, with no lease, for two checks is lost
            self.lost_after = 2 * self.watch_every
        self.next_watch = time.monotonic() + self.watch_every

    @property
    def outstanding(self) -> int:
        return len(self.live)

    def run(self) -> dict:
        try:
            self.submit()
            self.wait()
        except BaseException:  # KeyboardInterrupt included: stop the job, then re-raise
            self.cancel()
            self.drain(DRAIN_S)
            self.cleanup()
            raise
        self.cleanup()
        if self.error is not None:
            raise self.error
        return self.results

    def submit(self) -> None:
        p, keys, store = self.plan, self.keys, self.store
        batch = store.batch()
        batch.mds("set", keys.options, json.dumps(self.options), store.ttl)
        for sid, blob in enumerate(p.schedules):
            batch.mds("set", keys.schedule(sid), blob, store.ttl)
        starts = [
            Invocation(keys.job, group[0], 0, {}, (), tuple(group[1:]))
            for group in group_leaves(p.leaf_schedules, self.backend.leaf_groups)
        ]
        self.starts = {inv.id: inv for inv in starts}
        self.live = dict.fromkeys(self.starts)
        protocol.emit_start(batch, keys, store.ttl)
        launch(self.backend.invoke, batch, keys.job, starts)

    def wait(self) -> None:
        while self.live:
            if self.error is not None:  # executors stop at their next round trip
                self.drain(DRAIN_S)
                break
            if self.deadline is not None and time.monotonic() > self.deadline:
                self.fail(
                    JobFailed(
                        f"job {self.keys.job} timed out after {self.timeout}s "
                        f"({self.done}/{self.plan.ntasks} tasks done)"
                    )
                )
                continue
            self.read_events(BLOCK_MS)
            if time.monotonic() > self.next_watch:
                self.watch()
            if self.bar is not None:
                self.bar.update(self.done)
        if self.bar is not None:
            self.bar.finish(self.done)
        if self.error is None and len(self.results) < len(self.plan.outputs):
            missing = [k for k in self.plan.outputs.values() if k not in self.results]
            raise JobFailed(f"job {self.keys.job} ended without results for {missing[:5]!r}")

    def read_events(self, block_ms: int) -> None:
        try:
            reply: Any = self.store.mds.xread({self.keys.events: self.last_id}, count=10_000, block=block_ms)
        except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
            name = self.store.name_of(self.store.mds_index)
            raise StorageError(
                f"lost the metadata store (Redis at {name}) while waiting for job {self.keys.job}: {e}"
            ) from None
        for _, entries in reply or ():
            for entry_id, fields in entries:
                self.last_id = entry_id
                self.handle(fields)

    def handle(self, f: dict) -> None:
        ev = protocol.parse_event(f)
        if ev.kind == "c":
            self.done += ev.done
            for inv_id in ev.invoked:
                if inv_id not in self.exited:
                    self.live.setdefault(inv_id, None)
            if ev.exited:
                self.exited.add(ev.exited)
                self.live.pop(ev.exited, None)
        elif ev.kind == "d":  # an executor's duration and memory (lambda backend), for cost
            self.durations.append((ev.ms, ev.memory_mb))
        elif ev.kind == "r":
            self.results[self.plan.outputs[ev.tid]] = serialization.loads(ev.value)
        elif ev.kind == "R":  # a result too long for the stream, stored in the KVS
            self.read_stored_result(ev.tid)
        elif ev.kind == "e" and self.error is None:
            key, what, exc, tb = protocol.decode_error(ev.value)
            if key is None:
                detail = f": {type(exc).__name__}: {exc}" if exc is not None else ""
                trace = f"\n\nRemote traceback\n----------------\n{tb}" if tb else ""
                self.fail(JobFailed(f"job {self.keys.job}: {what}{detail}{trace}"))
            else:
                self.fail(task_error(key, what, exc, tb))

    def fail(self, error: BaseException) -> None:
        if self.error is None:
            self.error = error
        self.cancel()

    def watch(self) -> None:
        """Send again invocations whose lease has been missing for ``lost_after``.

        A lease exists while an executor runs an invocation and says "done"
        after; one missing means not started yet, or lost.  Invocations still
        queued on a local cluster are not lost, so nothing is sent while the
        queue holds any.
        """
        now = time.monotonic()
        self.next_watch = now + self.watch_every
        ids = list(self.live)
        batch = self.store.batch()
        handles = [batch.mds("exists", self.keys.lease(i)) for i in ids]
        batch.execute()
        lost = []
        for inv_id, h in zip(ids, handles, strict=False):
            if batch[h]:
                self.live[inv_id] = None
            elif self.live[inv_id] is None:
                self.live[inv_id] = now
            elif now - (self.live[inv_id] or now) > self.lost_after:
                lost.append(inv_id)
        if not lost or self.backend.backlog() > 0:
            return
        taken = self.backend.running(self.keys.job)
        lost = [i for i in lost if i not in taken]
        if not lost:
            return
        invs = self.invocations(lost)
        for inv_id in lost:
            self.live[inv_id] = None  # give the new delivery time to start
        resend(
            self.store,
            self.backend.invoke,
            self.keys.job,
            invs,
            "an executor was lost",
            self.cluster.max_attempts,
            clear_leases=False,  # they had none when checked: one there now is a live delivery's
        )

    def invocations(self, ids: list[str]) -> list[Invocation]:
        """What was sent as ``ids``: the client's own, or as stored by the executor that sent it."""
        stored = [i for i in ids if i not in self.starts]
        values = self.store.mds.mget([self.keys.invocation(i) for i in stored]) if stored else []
        found = {i: decode_invocation(v) for i, v in zip(stored, values, strict=True) if v is not None}  # type: ignore[arg-type]
        return [self.starts[i] if i in self.starts else found[i] for i in ids if i in self.starts or i in found]

    def read_stored_result(self, tid: int) -> None:
        batch = self.store.batch()
        (h,) = batch.kvs_get_many([self.keys.data(tid)])
        value = batch.execute()[h]
        if value is None:
            key = self.plan.outputs[tid]
            raise JobFailed(f"job {self.keys.job}: the result of task {key!r} is missing from the KV store")
        self.results[self.plan.outputs[tid]] = serialization.loads(value)

    def cancel(self, by_user: bool = False) -> None:
        if by_user and self.error is None:
            self.error = JobCancelled(f"job {self.keys.job} was cancelled")
        try:
            self.store.mds.set(self.keys.cancel, 1, ex=self.store.ttl)
        except Exception:
            pass

    def drain(self, timeout: float) -> None:
        """After a failure: wait, bounded, until every executor of the job has exited."""
        deadline = time.monotonic() + timeout
        try:
            while self.outstanding > 0 and time.monotonic() < deadline:
                self.read_events(BLOCK_MS)
        except Exception:
            pass

    def cleanup(self) -> None:
        p = self.plan
        try:
            ids = set(self.starts) | self.exited | set(self.live)
            self.store.delete_job(self.keys, p.ntasks, p.nschedules, p.fanins, ids)
        except Exception:
            pass  # the TTL removes what we could not

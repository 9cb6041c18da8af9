"""Wide launches through a tree of invocations of the executor function.

A client (or an executor, or the proxy) that must start ``n`` executors at
once would send ``n`` Invoke requests itself.  Past some ``n`` it is faster to
send a few "invoke these" events to the same Lambda function, each of which
invokes its share -- or, for very wide launches, hands it on the same way:
the seed's separate "Invoker" function, folded into the executor's handler.

Choosing the shape (``branching``).  An invoker with ``c`` requests in flight
sends ``k`` requests in about ``ceil(k / c) * L + k * cpu`` (``L``: the measured
invoke latency; ``cpu``: its CPU per request); a tree node adds its own start,
``S``.  A balanced tree of ``d`` invoker levels has branching
``b = ceil(n ** (1 / (d + 1)))`` and takes ``(d + 1) * send(b) + d * S``;
``d = 0`` is a direct launch.  The shallowest best ``d`` wins; the caller
sends ``b`` events, not ``n``.

Events.  A tree event is ``{"config": ..., "tree": {"job", "node", "b",
"items"}}`` where ``items`` is a list of ``[invocation id, tail]`` and a tail
is ``{"invocation": ...}`` or ``{"ref": ...}`` -- exactly what an executor's own
event carries beside the config.  A tree event too large for Lambda carries
``"ref"`` to its items, stored on the MDS (``Keys.spill``, in the registry
``Keys.spills``, deleted with the job).  ``node`` is a fresh random id per
event, so a re-sent subtree is a new node.

Idempotence and loss.  A node keeps no state: Lambda may deliver an event
twice, and both deliveries send their children; the leaf invocations' leases
(``lease.lua``) let one delivery of each start and the others exit at once, so
a repeated event changes nothing but the bill (a mark per node would have to be
written, and deleted with the job, without ever being recreated after it ends:
a round trip and a Lua call per node to save work only on a rare duplicate).
A node of a job that has ended sends nothing.  A node that dies part-way
(or a child event lost) leaves some leaf invocations unsent: their leases never
appear, and the client's watchdog sends those invocations again
(``Job.watch``, ``recovery.resend``), as for any lost executor.  A child event
that Lambda refuses for good is reported like any failed invoke: an error, and
an exit for each leaf below it.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import time
from typing import TYPE_CHECKING, Any

from wukong import protocol
from wukong.faults import CRASH_EXIT, Faults
from wukong.protocol import Keys

if TYPE_CHECKING:
    from wukong.backends.aws_lambda import LambdaInvoker
    from wukong.store import Batch, Store

Item = list  # [invocation id, tail dict]
MAX_DEPTH = 4


def send_time(k: int, latency: float, in_flight: int, cpu: float) -> float:
    """Seconds for one invoker to have ``k`` requests accepted."""
    return math.ceil(k / in_flight) * latency + k * cpu


def branching(n: int, latency: float, in_flight: int, cpu: float, start: float) -> int | None:
    """The tree's branching factor for ``n`` launches, or ``None``: launch directly."""
    best_d, best_t = 0, send_time(n, latency, in_flight, cpu)
    for d in range(1, MAX_DEPTH + 1):
        b = math.ceil(n ** (1 / (d + 1)))
        if b < 2:
            break
        t = (d + 1) * send_time(b, latency, in_flight, cpu) + d * start
        if t < best_t:
            best_d, best_t = d, t
    return None if best_d == 0 else max(2, math.ceil(n ** (1 / (best_d + 1))))


def split(items: list[Any], b: int) -> list[list[Any]]:
    """``items`` in at most ``b`` contiguous groups of nearly equal size."""
    q, r = divmod(len(items), b)
    groups, i = [], 0
    for g in range(min(b, len(items))):
        size = q + (g < r)
        groups.append(items[i : i + size])
        i += size
    return groups


def tree_events(invoker: LambdaInvoker, batch: Batch, job: str, items: list[Item], b: int) -> list[tuple[bytes, list]]:
    """The events that launch ``items`` through nodes of branching ``b``: (payload, leaf ids) each.

    Spilled items go in ``batch``, which must execute before the events are sent.
    """
    out = []
    for group in split(items, b):
        body: dict[str, Any] = {"job": job, "node": secrets.token_hex(8), "b": b, "items": group}
        payload = invoker.payload("tree", body)
        if len(payload) > invoker.max_event_payload:
            keys = Keys(job)
            key = keys.spill(secrets.token_hex(8))
            batch.mds("set", key, json.dumps(group), invoker.store.ttl)
            batch.mds("sadd", keys.spills, key)
            batch.mds("expire", keys.spills, invoker.store.ttl)
            del body["items"]
            body["ref"] = key
            payload = invoker.payload("tree", body)
        out.append((payload, [item[0] for item in group]))
    return out


def handle(event: dict, store: Store, invoker: LambdaInvoker, memory_mb: int) -> dict:
    """A tree node (``aws_lambda.handler``): invoke its children (sub-nodes or leaves)."""
    t0 = time.perf_counter()
    tree = event["tree"]
    keys = Keys(tree["job"])
    batch = store.batch()
    h_alive = batch.mds("exists", keys.events)
    h_items = batch.mds("get", tree["ref"]) if "ref" in tree else None
    batch.execute()
    if not batch[h_alive]:  # the job has ended
        return {"tree": 0, "gone": True}
    items = tree["items"] if h_items is None else json.loads(batch[h_items] or "[]")
    spec = event["config"]["executor"].get("faults")
    faults = Faults({**spec, "seed": f"{spec.get('seed')}-{tree['node']}"}) if spec else None  # per node
    children = _children(invoker, tree["job"], items, tree["b"])
    if faults is not None:
        children = _faulty(children, faults)
    _send(invoker, tree["job"], children, faults)
    done = store.batch()
    protocol.emit_duration(done, keys, (time.perf_counter() - t0) * 1000, memory_mb)  # for cost
    done.execute()
    return {"tree": len(items)}


def _children(invoker: LambdaInvoker, job: str, items: list[Item], b: int) -> list[tuple[bytes, list]]:
    """Leaf events when this node's share fits one level, else events for sub-nodes."""
    if len(items) <= b:
        return [(invoker.payload(*next(iter(tail.items()))), [inv_id]) for inv_id, tail in items]
    batch = invoker.store.batch()
    events = tree_events(invoker, batch, job, items, b)
    batch.execute()
    return events


def _faulty(children: list[tuple[bytes, list]], faults: Faults) -> list[tuple[bytes, list]]:
    """Fault injection: each child event dropped or sent twice (``drop``, ``duplicate``)."""
    return faults.deliveries(children)


def _send(invoker: LambdaInvoker, job: str, children: list[tuple[bytes, list]], faults: Faults | None) -> None:
    crash_after = faults.invoker_crash_point(len(children)) if faults is not None else None
    if crash_after is not None:  # fault injection: die part-way, as a killed invoker would
        invoker.send_events(job, children[:crash_after])
        os._exit(CRASH_EXIT)
    invoker.send_events(job, children)

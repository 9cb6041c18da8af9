"""The surface of a backend: what the client and the executor rely on.

A backend starts executors.  Its one verb is ``invoke(batch, job,
invocations)``: it may add commands to ``batch`` (the local backend pushes to
its queue there) and may return ``after``, a callable to run once ``batch``
has executed (the Lambda backend sends its events then, so that schedules and
inputs are stored before any executor can start).  ``launch`` is that
sequence, written once; the client, the executor, recovery and the proxy all
start executors through it.

The client also asks a backend what it knows of invocations in flight
(``backlog``, ``running``), how it groups leaves, and what a job cost.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from wukong.protocol import Invocation
    from wukong.store import Batch

After = Callable[[], None] | None
Invoke = Callable[["Batch", str, list["Invocation"]], After]


class Backend(Protocol):
    """What ``LocalCluster`` hands the client: one object per cluster."""

    @property
    def name(self) -> str:
        """``"local"`` or ``"lambda"``."""
        ...

    @property
    def leaf_groups(self) -> int | None:
        """Leaf schedules are cut into at most this many invocations (``None``: one each)."""
        ...

    @property
    def inline_plan(self) -> int:
        """A solo job's plan of up to this many bytes travels in its invocation, with its
        options, rather than through the MDS (0: never): its executor need not wait for
        a read before its first task (``executor._Run.start_inline``)."""
        ...

    @property
    def sees_in_flight(self) -> bool:
        """Every invocation in flight is visible (``backlog``, ``running``): lost ones are found fast."""
        ...

    @property
    def start_grace(self) -> float:
        """Seconds an invocation may take to take its lease (a cold start) beyond the
        watchdog's ``lost_after``, until it is first seen running (0: no more)."""
        ...

    @property
    def children(self) -> list:
        """Child processes that must not outlive the cluster (stopped at exit)."""
        ...

    def invoke(self, batch: Batch, job: str, invocations: list[Invocation]) -> After:
        """Start executors for ``invocations`` (see the module docstring)."""
        ...

    def backlog(self) -> int:
        """Invocations accepted and not yet taken by an executor (0 where unknown)."""
        ...

    def running(self, job: str) -> set[str]:
        """Ids of ``job``'s invocations that a live executor has taken (empty where unknown)."""
        ...

    def unavailable(self) -> str | None:
        """Why no invocation can run now (e.g. no local worker is up), or ``None``."""
        ...

    def job_cost(self, durations: Sequence[tuple[float, int]]) -> dict | None:
        """What a job's executors cost (``None`` where nothing is billed)."""
        ...

    def describe(self) -> str:
        """A few words for ``repr(cluster)``."""
        ...

    def executor_versions(self) -> dict[str, str] | None:
        """What the executors run (``wukong.versions.report``), asked once; ``None``: this interpreter."""
        ...

    def probe_again(self) -> None:
        """Before lost invocations are sent again: ask the executors once more whether they
        can run this cluster's jobs, and raise why not (a no-op where they are this
        machine's processes, whose failures the cluster sees)."""
        ...

    def close(self) -> None: ...


def launch(invoke: Invoke, batch: Batch, job: str, invocations: list[Invocation], send: Any = None) -> None:
    """Invoke ``invocations``, execute ``batch`` (or call ``send(batch)``), then finish the invoke.

    Each is stamped with the time it is sent (``Invocation.sent``): with the time an
    executor picks it up, the client knows how long it waited (``wukong.diagnostics``)."""
    after = None
    if invocations:
        sent = time.time()
        after = invoke(batch, job, [inv.sent_at(sent) for inv in invocations])
    if send is None:
        batch.execute()
    else:
        send(batch)
    if after is not None:
        after()

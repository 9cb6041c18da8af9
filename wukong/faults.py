"""Fault injection, for tests and benchmarks only (off unless configured).

``LocalCluster(faults={"crash": p, "duplicate": p, "drop": p, "seed": n})``
or ``WUKONG_FAULTS=crash=0.1,duplicate=1,drop=0.05``: an invocation's
executor dies (``os._exit(CRASH_EXIT)``) with probability ``crash`` after a
random number of its tasks (or while it holds an output for a fan-in,
delayed I/O); with probability ``crash_holding`` an executor dies when it
starts waiting with a held output (first deliveries only, so that a re-run
finishes); each invocation it makes is delivered twice with
probability ``duplicate`` and never delivered with probability ``drop``.
A node of an invoker tree (``wukong.backends.invoker_tree``) dies with
probability ``invoker_crash`` after sending a random share of its events,
and drops or duplicates each of them as above.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from typing import Any

CRASH_EXIT = 77  # exit code of an injected crash
KNOWN = ("crash", "crash_holding", "duplicate", "drop", "invoker_crash", "seed")


class Faults:
    def __init__(self, spec: dict):
        self.crash = float(spec.get("crash", 0))
        self.crash_holding = float(spec.get("crash_holding", 0))
        self.duplicate = float(spec.get("duplicate", 0))
        self.drop = float(spec.get("drop", 0))
        self.invoker_crash = float(spec.get("invoker_crash", 0))
        self.random = random.Random(spec.get("seed", os.getpid() ^ time.monotonic_ns()))

    def crash_point(self) -> int | None:
        """After how many tasks this invocation's executor dies (``None``: it does not)."""
        return self.random.randrange(4) if self.random.random() < self.crash else None

    def dies_holding(self) -> bool:
        """Whether an executor that waits with a held output dies now."""
        return self.crash_holding > 0 and self.random.random() < self.crash_holding

    def invoker_crash_point(self, n: int) -> int | None:
        """After how many of its ``n`` events an invoker-tree node dies (``None``: it does not)."""
        return self.random.randrange(n + 1) if self.random.random() < self.invoker_crash else None

    def wrap(self, invoke: Callable) -> Callable:
        """``invoke`` that drops and duplicates invocations."""

        def faulty(batch: Any, job: str, invocations: list) -> Any:
            sent = self.deliveries(invocations)
            return invoke(batch, job, sent) if sent else None

        return faulty

    def deliveries(self, items: list) -> list:
        """``items`` as a faulty network delivers them: each dropped (``drop``) or sent twice (``duplicate``)."""
        out = []
        for item in items:
            if self.random.random() < self.drop:
                continue
            out.append(item)
            if self.random.random() < self.duplicate:
                out.append(item)
        return out


def parse_faults(spec: str | None) -> dict | None:
    """``"crash=0.1,duplicate=1,drop=0.05"`` (the ``WUKONG_FAULTS`` variable) -> dict."""
    if not spec:
        return None
    out = {}
    for item in spec.split(","):
        name, _, value = item.partition("=")
        if name.strip() not in KNOWN:
            raise ValueError(f"unknown fault {name.strip()!r} in {spec!r} (known: {', '.join(KNOWN)})")
        out[name.strip()] = float(value)
    return out

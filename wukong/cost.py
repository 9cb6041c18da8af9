"""What a job cost on AWS Lambda, from the durations its executors report.

Lambda bills each invocation's duration rounded up to the next millisecond,
times the function's memory in GB (GB-seconds), plus a fee per request.
Every executor sends ``{"k": "d", "ms", "mem"}`` on the job's stream; the
client adds them up here.  The default rates are us-east-1's published
on-demand prices (first pricing tier, no free tier); pass ``rates`` for others.

>>> c = job_cost([(1.2, 1024), (10.0, 1024)])
>>> c["billed_ms"], c["gb_seconds"], c["requests"]
(12, 0.012, 2)
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

RATES: dict[str, Any] = {
    "gb_second": {"x86_64": 0.0000166667, "arm64": 0.0000133334},
    "per_request": 0.20 / 1_000_000,
    "region": "us-east-1",
}


def job_cost(durations: Iterable[tuple[float, int]], arch: str = "x86_64", rates: dict | None = None) -> dict:
    """Billed GB-seconds, requests and price of executors ``(duration ms, memory MB)``."""
    rates = rates or RATES
    if arch not in rates["gb_second"]:
        raise ValueError(f"no Lambda rate for architecture {arch!r}; known: {sorted(rates['gb_second'])}")
    executors = billed_ms = 0
    gb_ms = 0.0
    for ms, mem in durations:
        billed = max(1, math.ceil(ms))
        executors += 1
        billed_ms += billed
        gb_ms += billed * mem / 1024
    gb_seconds = gb_ms / 1000
    compute = gb_seconds * rates["gb_second"][arch]
    requests = executors * rates["per_request"]
    return {
        "executors": executors,
        "requests": executors,
        "billed_ms": billed_ms,
        "gb_seconds": round(gb_seconds, 9),
        "compute_usd": compute,
        "requests_usd": requests,
        "price_usd": compute + requests,
        "arch": arch,
        "region": rates.get("region", "?"),
    }


def cost_summary(cost: dict) -> str:
    """One line for the end of a job."""
    return (
        f"wukong: {cost['executors']} Lambda executor(s), {cost['gb_seconds']:.3f} GB-s billed, "
        f"{cost['requests']} request(s), ~${cost['price_usd']:.6f} ({cost['arch']}, {cost['region']} rates)"
    )

"""``wukong simulate MODULE:FUNCTION``: predict a job on AWS Lambda from a local run.

``FUNCTION()`` returns the Dask collection(s) to compute.  Their tasks are
first run here one by one to record each task's duration and output size
(``--profile MODULE:FUNCTION`` records a smaller build of the same workload
instead: tasks are priced by kind), then the job is simulated on the model
of ``wukong.simulate.model`` at each ``--concurrency``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from typing import Any

from wukong.simulate.model import SOURCES, Model
from wukong.simulate.profile import graph_of, record
from wukong.simulate.report import simulate_graph


def _load(ref: str) -> Any:
    module, sep, name = ref.partition(":")
    if not sep:
        raise SystemExit(f"wukong simulate: want MODULE:FUNCTION, got {ref!r}")
    sys.path.insert(0, ".")
    built = getattr(importlib.import_module(module), name)()
    return built if isinstance(built, (tuple, list)) else (built,)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="wukong simulate", description=__doc__.splitlines()[0])
    p.add_argument("workload", metavar="MODULE:FUNCTION", help="returns the Dask collection(s) to compute")
    p.add_argument("--profile", metavar="MODULE:FUNCTION", help="a smaller build to record (default: the workload)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1000])
    p.add_argument("--cold-start", type=float, help="seconds per cold start (default: the model's)")
    p.add_argument("--invoke-latency", type=float, help="seconds per Event invoke (default: the model's)")
    p.add_argument("--kvs-shards", type=int, default=1)
    p.add_argument("--json", action="store_true", help="one JSON object per concurrency")
    p.add_argument("--sources", action="store_true", help="print the model's parameters and their sources")
    args = p.parse_args(argv)
    if args.sources:
        for k, v in Model().describe().items():
            print(f"{k} = {v}\n    {SOURCES.get(k, '')}")
        return 0
    dsk, keys = graph_of(*_load(args.workload))
    profile = record(*graph_of(*_load(args.profile))) if args.profile else record(dsk, keys)
    changes: dict[str, Any] = {"kvs_shards": args.kvs_shards}
    if args.cold_start is not None:
        changes["cold_start_s"] = args.cold_start
    if args.invoke_latency is not None:
        changes["invoke_latency_s"] = args.invoke_latency
    for way in args.concurrency:
        r = simulate_graph(dsk, keys, profile, Model.aws(way, **changes))
        if args.json:
            out = {
                "concurrency": way,
                "makespan_s": r.makespan,
                "ideal_s": r.ideal(),
                "one_machine_s": r.one_machine(),
                "tasks": r.tasks,
                "executors": r.executors,
                "tree_nodes": r.tree_nodes,
                "peak_concurrency": r.peak_concurrency,
                "network_bytes": r.network_bytes,
                "kvs_bytes": r.kvs_bytes,
                "cost_usd": r.cost["price_usd"],
            }
            print(json.dumps(out))
        else:
            print(f"== {way:,}-way concurrency ==\n{r}\n")
    return 0

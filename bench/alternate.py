"""wukong and Dask's sync (or threads) scheduler job by job: ``python -m bench.alternate``.

``python -m bench`` times a system's runs of a workload one after the other, each after
a pause that samples the machine's load.  A job of 10-30 ms then runs as fast as the
machine is at that moment, and on this machine that swings by ±20% from one minute to
the next.  Here each wukong job is followed at once by the same graph on ``sync``, in
one process, so both see the same moment, and the ratio of the medians is what one
code change moves.  Run it with ``PYTHONPATH=<a checkout>`` for each version to compare
two versions, alternating.  ``--setting delayed-io.threshold=1048576`` adds a second wukong
cluster started with that ``wukong.*`` setting, its jobs taken in turn with the other two:
a setting compared in one run.  Results are checked against ``sync``'s first one.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

import dask
import yaml

from bench import harness, workloads


def alternate(
    names: list[str],
    size: str,
    runs: int,
    warmup: int = 5,
    peer: str = "sync",
    wukong: str = "wukong",
    setting: tuple[str, Any] | None = None,
) -> list[dict]:
    """Per workload: medians of ``runs`` wukong and ``peer`` (``sync`` or ``threads``) jobs,
    taken in turn; the peer with the BLAS threads the harness gives it.  ``wukong``: the
    harness's ``wukong`` (worker processes) or ``wukong-threads`` (``processes=False``).
    ``setting`` (a ``wukong.*`` name, its value): a second wukong cluster with it, in turn too."""
    system = harness.STARTERS[wukong]()
    other = harness.STARTERS[peer]()
    systems = [("wukong", system)]
    if setting is not None:
        with dask.config.set({f"wukong.{setting[0]}": setting[1]}):
            systems.append(("setting", harness.STARTERS[wukong]()))
    systems.append((peer, other))
    out = []
    try:
        for name in names:
            wl = workloads.build(name, size)
            reference = dask.compute(*wl.collections, scheduler="sync")
            for _ in range(warmup):  # the client learns the durations: a small job runs solo
                for _, sy in systems[:-1]:
                    dask.compute(*wl.collections, scheduler=sy.scheduler)
            times: dict[str, list[float]] = {label: [] for label, _ in systems}
            for _ in range(runs):
                for label, sy in systems:
                    with harness._blas_limit(sy.blas_threads):  # as the harness runs each system
                        t0 = time.perf_counter()
                        result = dask.compute(*wl.collections, scheduler=sy.scheduler, **sy.kwargs)
                        times[label].append(time.perf_counter() - t0)
                    mismatch = wl.check(result, reference)
                    if mismatch:
                        raise AssertionError(f"{name} on {label}: {mismatch}")
            w, s = statistics.median(times["wukong"]), statistics.median(times[peer])
            row = {"workload": name, "wukong_s": w, "peer_s": s, "ratio": w / s, "solo": system.last_job()["solo"]}
            if setting is not None:
                row["setting_s"] = statistics.median(times["setting"])
            out.append(row)
    finally:
        for _, sy in systems:
            if sy is not other:
                sy.close()
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.alternate", description=__doc__.splitlines()[0])
    p.add_argument("--only", default="tree,qr,cholesky", help="workloads, comma-separated")
    p.add_argument("--size", default="small", choices=["tiny", "small", "full"])
    p.add_argument("--runs", type=int, default=40, help="jobs per system per workload")
    p.add_argument("--peer", default="sync", choices=["sync", "threads"], help="the Dask scheduler to alternate with")
    p.add_argument(
        "--wukong", default="wukong", choices=["wukong", "wukong-threads"], help="wukong-threads: processes=False"
    )
    p.add_argument(
        "--setting",
        metavar="NAME=VALUE",
        help="a second wukong cluster with this wukong.* setting (a YAML value), its jobs in turn too",
    )
    args = p.parse_args(argv)
    setting = None
    if args.setting:
        name, _, value = args.setting.partition("=")
        setting = (name, yaml.safe_load(value))
    load = os.getloadavg()[0]
    rows = alternate(args.only.split(","), args.size, args.runs, peer=args.peer, wukong=args.wukong, setting=setting)
    peer = args.peer
    print(
        f"{args.wukong} and {peer} job by job, size {args.size}, median of {args.runs} each (load before: {load:.2f})"
    )
    extra = f" {'with setting ms':>16} {'setting / ' + peer:>18}" if setting else ""
    print(f"{'workload':<14} {'wukong ms':>10} {peer + ' ms':>11} {'wukong / ' + peer:>17}{extra}  solo")
    for r in rows:
        w, s = r["wukong_s"] * 1e3, r["peer_s"] * 1e3
        extra = f" {r['setting_s'] * 1e3:>16.2f} {r['setting_s'] * 1e3 / s:>17.3f}×" if setting else ""
        print(f"{r['workload']:<14} {w:>10.2f} {s:>11.2f} {r['ratio']:>16.3f}×{extra}  {r['solo']}")
    if setting:
        print(f"setting: wukong.{setting[0]} = {setting[1]!r}")


if __name__ == "__main__":
    main()

"""``python -m bench``: the seed's workloads on wukong and on Dask's schedulers.

    python -m bench [--size tiny|small|full] [--only W1,W2] [--systems S1,S2] [--storage K1,K2]
                    [--repeat N] [--min-seconds S] [--out DIR] [--timeout S]

``--storage standalone,ring3,cluster3`` runs wukong once per storage, side by
side: its one embedded Redis, three embedded Redis as consistent-hash ring
shards, a private 3-master Redis Cluster (cluster mode, no replicas).

Prints a table per workload and writes ``<out>/<timestamp>.json`` (every raw run, the
machine), ``<out>/<timestamp>.txt`` (the tables) and ``<out>/<timestamp>-<workload>.png``.
Exits 1 when any result fails or differs from Dask's ``sync`` scheduler.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench import harness, workloads

DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def _names(text: str | None, known: list[str], what: str, parser: argparse.ArgumentParser) -> list[str]:
    if text is None:
        return list(known)
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        parser.error(f"unknown {what} {', '.join(unknown) or '(none given)'}; choose from {', '.join(known)}")
    return names


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=["tiny", "small", "full"], default="small")
    parser.add_argument("--only", help=f"workloads, comma-separated (default all: {','.join(workloads.BUILDERS)})")
    parser.add_argument(
        "--systems",
        help=f"systems, comma-separated (default all available: {','.join(harness.available_systems())}; "
        f"on request: {','.join(harness.ON_REQUEST)})",
    )
    parser.add_argument(
        "--storage",
        help=f"wukong's storage, comma-separated: {','.join(harness.STORAGE)} (default standalone)",
    )
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per cell after one warm-up (default 3)")
    parser.add_argument(
        "--min-seconds",
        type=float,
        help=f"more timed runs while a cell's add up to less than this (at most {harness.MAX_RUNS} runs; "
        "default 1, 0 at size tiny; 0: exactly --repeat)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    parser.add_argument(
        "--timeout", type=float, help=f"seconds a run may take before it counts as failed (default {harness.TIMEOUT_S})"
    )
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.min_seconds is not None and args.min_seconds < 0:
        parser.error("--min-seconds must not be negative")
    args.only = _names(args.only, list(workloads.BUILDERS), "workload", parser)
    args.systems = _names(args.systems, harness.available_systems(named=args.systems is not None), "system", parser)
    if args.storage is not None:
        storage = _names(args.storage, list(harness.STORAGE), "storage", parser)
        wukongs = [harness.STORAGE[k] for k in storage]
        args.systems = [s for s in args.systems if s != "wukong"] + wukongs
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    argv = sys.argv[1:] if argv is None else argv
    results = harness.run(
        args.size,
        args.only,
        args.systems,
        args.repeat,
        args.out,
        args.timeout,
        argv=list(argv),
        min_seconds=args.min_seconds,
    )
    return 0 if results["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

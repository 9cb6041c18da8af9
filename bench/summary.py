"""One Markdown table from a saved run: ``python -m bench.summary bench/results/<stamp>.json``.

A row per workload: each system's median time; wukong (and ``wukong-threads``, when the
run has it) over the best of Dask's schedulers; wukong's Redis commands and round trips per
task.
"""

from __future__ import annotations

import json
import sys

from bench.report import IDLE_LOAD_PER_CORE, max_load_per_core, per_task, runs

ORDER = ["wukong", "wukong-threads", "sync", "threads", "processes", "distributed", "ray"]
WUKONG = ("wukong", "wukong-threads")  # the others are the peers: "best" is the best of them


class BusyMachine(Exception):
    """The run was measured on a loaded machine: its numbers are not for the README."""


def table(path: str, allow_busy: bool = False) -> str:
    run = json.load(open(path))
    load = max_load_per_core(run)
    if not allow_busy and (load is None or load > IDLE_LOAD_PER_CORE):
        seen = "was not recorded" if load is None else f"reached {load:.2f} per core"
        raise BusyMachine(
            f"{path}: the load from other processes before its runs {seen} (limit {IDLE_LOAD_PER_CORE}); "
            "rerun on an idle machine (python -m bench.report prints it anyway)"
        )
    systems = [s for s in ORDER if any(s in w["systems"] for w in run["workloads"].values())]
    ours = [s for s in WUKONG if s in systems]
    head = " | ".join(systems) + " | " + " | ".join(f"{s} / best" for s in ours)
    lines = [
        f"| workload | {head} | cmd/task | rt/task |",
        "|---|" + "---:|" * (len(systems) + len(ours) + 2),
    ]
    for name, w in run["workloads"].items():
        cells, medians = [], {}
        for s in systems:
            cell = w["systems"].get(s)
            ok = cell is not None and cell["median_s"] is not None and not cell["error"] and not cell["mismatch"]
            cells.append(f"{cell['median_s']:.3g}" if ok else ("failed" if cell else "—"))
            if ok:
                medians[s] = cell["median_s"]
        peers = [m for s, m in medians.items() if s not in WUKONG]
        for s in ours:
            cells.append(f"{medians[s] / min(peers):.2f}×" if s in medians and peers else "—")
        wk = w["systems"].get("wukong") or {}
        cells += [per_task(wk, "redis_commands"), per_task(wk, "redis_round_trips")]
        lines.append(f"| {name} ({w['describe']}) | " + " | ".join(cells) + " |")
    m = run["machine"]
    lines.append("")
    lines.append(
        f"seconds, median of {runs(run)} after a warm-up; size `{run['size']}`; "
        f"{m.get('cores')} cores; start-up (not counted): "
        + ", ".join(f"{k} {v:.2f} s" for k, v in run["startup_s"].items())
    )
    return "\n".join(lines)


if __name__ == "__main__":
    try:
        print(table(sys.argv[1]))
    except BusyMachine as e:
        sys.exit(str(e))

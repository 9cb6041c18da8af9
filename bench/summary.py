"""One Markdown table from a saved run: ``python -m bench.summary bench/results/<stamp>.json``.

A row per workload: each system's median time, and wukong over the best other system.
"""

from __future__ import annotations

import json
import sys

ORDER = ["wukong", "sync", "threads", "processes", "distributed", "ray"]


def table(path: str) -> str:
    run = json.load(open(path))
    systems = [s for s in ORDER if any(s in w["systems"] for w in run["workloads"].values())]
    lines = [
        "| workload | " + " | ".join(systems) + " | wukong / best other |",
        "|---|" + "---:|" * (len(systems) + 1),
    ]
    for name, w in run["workloads"].items():
        cells, others = [], []
        for s in systems:
            cell = w["systems"].get(s)
            ok = cell is not None and cell["median_s"] is not None and not cell["error"] and not cell["mismatch"]
            cells.append(f"{cell['median_s']:.3g}" if ok else ("failed" if cell else "—"))
            if ok and s != "wukong":
                others.append(cell["median_s"])
        wk = w["systems"].get("wukong")
        ratio = f"{wk['median_s'] / min(others):.2f}×" if wk and wk.get("median_s") and others else "—"
        lines.append(f"| {name} ({w['describe']}) | " + " | ".join(cells) + f" | {ratio} |")
    m = run["machine"]
    lines.append("")
    lines.append(
        f"seconds, median of {run['repeat']} after a warm-up; size `{run['size']}`; "
        f"{m.get('cores')} cores; start-up (not counted): "
        + ", ".join(f"{k} {v:.2f} s" for k, v in run["startup_s"].items())
    )
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(sys.argv[1]))

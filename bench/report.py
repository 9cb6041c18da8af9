"""The benchmark's outputs: terminal tables, the JSON of every raw run, a bar chart per workload.

All of them are made from the results record ``harness.run`` builds (plain dicts), so a
saved JSON can be re-rendered: ``python -m bench.report results/<stamp>.json``.
"""

from __future__ import annotations

import json
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Paths:
    """Where one run's outputs go: ``<out>/<stamp>.json``, ``.txt`` and ``-<workload>.png``."""

    out: Path
    stamp: str
    charts: list[Path] = field(default_factory=list)

    @property
    def json(self) -> Path:
        return self.out / f"{self.stamp}.json"

    @property
    def table(self) -> Path:
        return self.out / f"{self.stamp}.txt"

    def chart(self, workload: str) -> Path:
        return self.out / f"{self.stamp}-{workload}.png"


def write_json(results: dict, paths: Paths) -> None:
    tmp = paths.json.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=1, default=str))
    tmp.replace(paths.json)


# --- verdicts ----------------------------------------------------------------------------


def cell_status(cell: dict) -> str:
    """``ok``, ``MISMATCH`` or ``FAILED``."""
    if cell.get("error"):
        return "FAILED"
    if cell.get("mismatch"):
        return "MISMATCH"
    return "ok"


def all_verified(results: dict) -> bool:
    """True when every workload built and every cell ran and matched sync."""
    for record in results["workloads"].values():
        if record.get("error") or not record["systems"]:
            return False
        if any(cell_status(c) != "ok" for c in record["systems"].values()):
            return False
    return True


def _valid_medians(record: dict) -> dict[str, float]:
    return {
        name: cell["median_s"]
        for name, cell in record["systems"].items()
        if cell_status(cell) == "ok" and cell.get("median_s")
    }


IDLE_LOAD_PER_CORE = 0.5  # a run whose load average went above this is not published (bench.summary)


def max_load_per_core(results: dict) -> float | None:
    """The highest load from outside the run seen before any run, per core: the cores
    other processes kept busy (``harness.other_load``); for runs recorded before it
    existed, the 1-minute load average (which counts the run's own previous cells)."""
    cells = [c for w in results["workloads"].values() for c in w["systems"].values()]
    loads = [x for c in cells for x in c.get("other_load_before", c.get("load_before", ()))]
    return max(loads) / results["machine"]["cores"] if loads else None


# --- tables ------------------------------------------------------------------------------


def _fmt_s(s: float | None) -> str:
    if s is None:
        return "—"
    return f"{s:.4f}" if s < 1 else f"{s:.3f}" if s < 100 else f"{s:.1f}"


def _first_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1].strip() if lines else text


def per_task(cell: dict, counter: str) -> str:
    """A Redis counter per task, median over the cell's jobs (wukong only; "—" elsewhere)."""
    per = [j[counter] / j["tasks"] for j in cell.get("jobs", ()) if counter in j and j.get("tasks")]
    return f"{statistics.median(per):.2f}" if per else "—"


def table(name: str, record: dict) -> str:
    """One workload's table: system, median, ratio to the best, tasks, tasks/s, check."""
    head = f"{name} — {record.get('describe', '')}  [{record['size']}]"
    if record.get("error") and not record["systems"]:
        return f"{head}\n  !!! FAILED: {_first_line(record['error'])}"
    medians = _valid_medians(record)
    best = min(medians.values()) if medians else None
    head_row = f"{'system':<12} {'median s':>10} {'vs best':>8} {'tasks':>8} {'tasks/s':>10}"
    rows = [head_row + f" {'cmd/task':>8} {'rt/task':>7}  check"]
    for sysname, cell in record["systems"].items():
        med = cell.get("median_s")
        ratio = f"{med / best:.2f}×" if med and best and sysname in medians else "—"
        tasks = cell.get("tasks")
        rate = f"{tasks / med:,.0f}" if tasks and med else "—"
        status = cell_status(cell)
        detail = ""
        if status == "FAILED":
            detail = f": {_first_line(cell['error'])}"
        elif status == "MISMATCH":
            detail = f": {cell['mismatch']}"
        flag = "  <<<" if status != "ok" else ""
        cmds, trips = per_task(cell, "redis_commands"), per_task(cell, "redis_round_trips")
        rows.append(
            f"{sysname:<12} {_fmt_s(med):>10} {ratio:>8} {tasks if tasks is not None else '—':>8} {rate:>10} "
            f"{cmds:>8} {trips:>7}  {status}{detail}{flag}"
        )
    lines = [head, *("  " + r for r in rows)]
    lines += _summary(record, medians)
    if record.get("error"):
        lines.append(f"  !!! {_first_line(record['error'])}")
    return "\n".join(lines)


def _worker_busy(record: dict) -> str:
    """Each wukong worker's CPU seconds per job, and as a share of the job's wall time."""
    cell = record["systems"].get("wukong") or {}
    jobs = [j for j in cell.get("jobs", ())[1:] if j.get("worker_cpu_s")]  # the timed runs
    if not jobs or not cell.get("median_s"):
        return ""
    per_worker = [statistics.median(j["worker_cpu_s"][w] for j in jobs) for w in range(len(jobs[0]["worker_cpu_s"]))]
    wall = cell["median_s"]
    return ", ".join(f"{s:.3f} s ({s / wall:.0%})" for s in per_worker)


def _idle_while_ready(record: dict) -> str:
    """Each wukong executor's time not running a task while a task was ready elsewhere (its
    own work between tasks included: storing outputs, fan-in round trips), as a share of the
    job's span (first task start to last end; median of the timed runs): issue 13.7."""
    cell = record["systems"].get("wukong") or {}
    jobs = [j["balance"] for j in cell.get("jobs", ())[1:] if j.get("balance", {}).get("span_s")]
    if not jobs:
        return ""
    shares: dict[str, list[float]] = {}
    for b in jobs:  # executors are named host:pid[/thread]: the same across runs of one cluster
        for name, e in b["executors"].items():
            shares.setdefault(name, []).append(e["idle_while_ready_s"] / b["span_s"])
    per_executor = sorted((statistics.median(v) for v in shares.values()), reverse=True)
    span = statistics.median(b["span_s"] for b in jobs)
    return ", ".join(f"{x:.1%}" for x in per_executor) + f" of a {_fmt_s(span)} s span"


def _idle_while_queued(record: dict) -> str:
    """Each wukong executor's busy time and its time waiting for work while an invocation
    was queued (sent, not yet picked up), as shares of the job's span (median of the timed
    runs): issue 13.7 measured directly (``bench.balance.idle_while_queued``)."""
    cell = record["systems"].get("wukong") or {}
    jobs = [j["waiting"] for j in cell.get("jobs", ())[1:] if j.get("waiting", {}).get("span_s")]
    if not jobs:
        return ""
    shares: dict[str, list[tuple[float, float]]] = {}
    for w in jobs:
        for name, e in w["executors"].items():
            shares.setdefault(name, []).append((e["busy_s"] / w["span_s"], e["idle_while_queued_s"] / w["span_s"]))
    per_executor = sorted(
        ((statistics.median(b for b, _ in v), statistics.median(q for _, q in v)) for v in shares.values()),
        reverse=True,
    )
    queued = statistics.median(w["queued_s"] / w["span_s"] for w in jobs)
    return (
        ", ".join(f"busy {b:.0%} idle-while-queued {q:.1%}" for b, q in per_executor)
        + f"; something queued {queued:.0%} of the span"
    )


def _summary(record: dict, medians: dict[str, float]) -> list[str]:
    lines = []
    peers = {k: v for k, v in medians.items() if not k.startswith("wukong")}
    wk = medians.get("wukong")
    if wk and peers:
        peer = min(peers, key=peers.__getitem__)
        ratio = wk / peers[peer]
        verdict = "faster" if ratio < 1 else "slower"
        lines.append(f"  wukong / best peer ({peer}, {_fmt_s(peers[peer])} s) = {ratio:.2f}×  (wukong {verdict})")
    for name, t in medians.items():  # the same wukong on other storage (python -m bench --storage)
        if wk and name.startswith("wukong-"):
            lines.append(f"  {name} / wukong (one standalone Redis) = {t / wk:.2f}×")
    busy = _worker_busy(record)
    if busy:
        lines.append(f"  wukong workers' CPU per job (median of runs): {busy}")
    idle = _idle_while_ready(record)
    if idle:
        lines.append(f"  wukong executors between tasks while a task was ready (median of runs): {idle}")
    waiting = _idle_while_queued(record)
    if waiting:
        lines.append(f"  wukong executors waiting for work while an invocation was queued (median of runs): {waiting}")
    limit = record.get("limit")
    if limit and "seconds" in limit:
        line = f"  limit: one {limit['what']} = {_fmt_s(limit['seconds'])} s"
        if wk:
            line += f"; wukong / {limit['what']} = {wk / limit['seconds']:.2f}×"
        lines.append(line)
    elif limit and limit.get("error"):
        lines.append(f"  limit failed: {_first_line(limit['error'])}")
    return lines


def runs(results: dict) -> str:
    """How many timed runs a cell has: ``repeat``, or more for short ones (``min_seconds``)."""
    n, least = results["repeat"], results.get("min_seconds", 0)
    more = f", or more until they add up to {least:g} s ({results['max_runs']} at most)" if least else ""
    return f"{n} run{'s' if n != 1 else ''}{more}"


def tables(results: dict) -> str:
    """Every workload's table, with the machine and the start-up times on top."""
    m = results["machine"]
    out = [
        f"wukong bench — size {results['size']}, median of {runs(results)} after 1 warm-up",
        f"machine: {m['cores']} cores, {m['memory_gb']} GB, {m['cpu']}; Python {m['python']}, "
        f"dask {m['dask']}, numpy {m['numpy']}, wukong {m['wukong']}",
    ]
    if results.get("startup_s"):
        out.append(
            "start-up (not in the timings): " + ", ".join(f"{k} {v:.2f} s" for k, v in results["startup_s"].items())
        )
    for name, record in results["workloads"].items():
        out += ["", table(name, record)]
    load = max_load_per_core(results)
    if load is not None:
        line = f"load from other processes before the runs: at most {load:.2f} per core"
        if load > IDLE_LOAD_PER_CORE:
            line += f" -- above {IDLE_LOAD_PER_CORE}: compare ratios only; bench.summary will not publish this run"
        out += ["", line]
    verdict = (
        "all results match sync"
        if results.get("ok", all_verified(results))
        else "!!! SOME RESULTS FAILED OR DIFFER FROM SYNC (marked <<<)"
    )
    out += ["", verdict]
    return "\n".join(out)


# --- charts ------------------------------------------------------------------------------


def write_charts(results: dict, paths: Paths) -> None:
    """A bar chart per workload: median seconds per system, min–max whiskers, log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for name, record in results["workloads"].items():
        fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
        cells = record["systems"]
        names = list(cells)
        meds = [cells[n].get("median_s") or 0.0 for n in names]
        lows = [m - min(cells[n]["runs_s"]) if cells[n]["runs_s"] else 0 for n, m in zip(names, meds, strict=True)]
        highs = [max(cells[n]["runs_s"]) - m if cells[n]["runs_s"] else 0 for n, m in zip(names, meds, strict=True)]
        colors = [
            "#d62728" if cell_status(cells[n]) != "ok" else "#ff7f0e" if n == "wukong" else "#1f77b4" for n in names
        ]
        ax.bar(names, meds, yerr=[lows, highs], color=colors, capsize=4)
        for i, n in enumerate(names):
            status = cell_status(cells[n])
            label = status if status != "ok" else _fmt_s(meds[i])
            ax.annotate(
                label, (i, meds[i]), ha="center", va="bottom", fontsize=8, xytext=(0, 3), textcoords="offset points"
            )
        limit = record.get("limit") or {}
        if "seconds" in limit:
            ax.axhline(limit["seconds"], ls="--", color="gray", label=f"{limit['what']} {_fmt_s(limit['seconds'])} s")
            ax.legend(fontsize=8)
        positive = [m for m in meds if m > 0]
        if positive and max(positive) / min(positive) > 30:
            ax.set_yscale("log")
        ax.set_ylabel("median seconds (lower is better)")
        title = record.get("describe", name)
        ax.set_title(f"{name}: {title} [{record['size']}]", fontsize=10)
        if record.get("error") and not cells:
            ax.text(0.5, 0.5, "FAILED", transform=ax.transAxes, ha="center", color="#d62728", fontsize=20)
        fig.tight_layout()
        path = paths.chart(name)
        fig.savefig(path)
        plt.close(fig)
        paths.charts.append(path)


def main(argv: list[str] | None = None) -> int:
    """Re-render the tables of a saved results JSON."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m bench.report RESULTS.json", file=sys.stderr)
        return 2
    results = json.loads(Path(args[0]).read_text())
    print(tables(results))
    return 0 if all_verified(results) else 1


if __name__ == "__main__":
    sys.exit(main())

"""Run the seed's workloads on wukong and on Dask's schedulers, side by side in one process.

The run, for each workload in turn:

1. build the workload's collections once (``workloads.build``): every system computes the
   very same graph, on the same seeded inputs;
2. for each system, ``sync`` first: one warm-up run, then ``repeat`` timed runs, and more
   while the timed runs add up to less than ``min_seconds`` (``MAX_RUNS`` at most): a
   workload of a few milliseconds gets a median of many runs, not of three. Each run is
   one ``dask.compute(*collections, scheduler=...)``, timed from the call to its return.
   Every result, warm-up included, is compared with ``sync``'s warm-up result (the
   reference); a mismatch or an error marks the cell and makes the run fail;
3. for GEMM, time the limit: one ``numpy.matmul`` of the materialized inputs;
4. rewrite the JSON of everything so far, so a long run that dies keeps what it measured.

Systems with a cluster (``wukong``, ``distributed``, ``ray``) and the ``processes`` pool
start once, when the run begins, and close when it ends; their start-up time is reported
on its own. Plain data throughout: a run's record is the dict that becomes the JSON.
"""

from __future__ import annotations

import gc
import importlib.metadata
import os
import platform
import queue
import statistics
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask
import psutil

from bench import balance, report, workloads

TIMEOUT_S = {"tiny": 20.0, "small": 120.0, "full": 1800.0}  # per run; a run past it is a failure
# a cell's timed runs go on (past ``repeat``) until they add up to this (``--min-seconds``);
# tiny is a smoke size: its times are not compared
MIN_SECONDS = {"tiny": 0.0, "small": 1.0, "full": 1.0}
MAX_RUNS = 30  # ... but no more timed runs than this
SYSTEMS = [
    "wukong", "wukong-threads", "wukong-ring3", "wukong-cluster3",
    "sync", "threads", "processes", "distributed", "ray",
]  # fmt: skip
# wukong on other storage than its one embedded Redis (``--storage``): not run by default
STORAGE = {"standalone": "wukong", "ring3": "wukong-ring3", "cluster3": "wukong-cluster3"}
OTHER_STORAGE = ("wukong-ring3", "wukong-cluster3")
# run only when named (``--systems``): wukong's executors as threads of one worker process
ON_REQUEST = ("wukong-threads",)
LOAD_WINDOW_S = 0.5  # how long ``other_load`` samples the machine, before each cell and after it


@dataclass
class System:
    """How to hand a graph to one scheduler: ``dask.compute(..., scheduler=scheduler, **kwargs)``."""

    name: str
    scheduler: Any
    kwargs: dict = field(default_factory=dict)
    startup_s: float | None = None
    close: Callable[[], None] = lambda: None
    last_job: Callable[[], dict | None] = lambda: None
    counters: Callable[[], dict[str, int]] | None = None  # Redis totals, read before and after a run
    # the last job's tasks as (key, seconds), timed where they ran (wukong's job record)
    last_tasks: Callable[[], list[tuple[Any, float]]] | None = None
    last_record: Callable[[], Any] | None = None  # wukong's ``client.jobs[-1]``
    # BLAS threads per task-running thread, chosen so that every system runs at most
    # `cores` threads in all: one each where `cores` workers run tasks, `cores` for sync
    blas_threads: int = 1


# --- systems -----------------------------------------------------------------------------


def _cores() -> int:
    return os.cpu_count() or 1


def _start_wukong(storage: str = "standalone", name: str | None = None, **options: Any) -> System:
    """wukong with its embedded Redis (``standalone``), three embedded Redis as ring shards
    (``ring3``), or a private 3-master Redis Cluster without replicas (``cluster3``);
    ``options`` for ``LocalCluster`` (``wukong-threads``: ``processes=False``)."""
    from wukong import Client, LocalCluster
    from wukong.store.server import RedisClusterServers

    t0 = time.perf_counter()
    servers = None
    if storage == "cluster3":
        servers = RedisClusterServers(masters=3, replicas=0).start()
        cluster = LocalCluster(redis_cluster=servers.url, **options)
    else:
        cluster = LocalCluster(kvs_shards=3 if storage == "ring3" else 1, **options)
    client = Client(cluster, progress=False)
    startup = time.perf_counter() - t0
    graphs: list = []  # the last graph run, for the job's load balance (not timed)

    def get(dsk: Any, keys: Any, **kwargs: Any) -> Any:
        graphs[:] = [dsk]
        return client.get(dsk, keys, **kwargs)

    def last_job() -> dict:
        job = dict(client.last_job)
        if graphs and client.jobs:
            record = client.jobs[-1]
            job["balance"] = balance.idle_while_ready(record.tasks, balance.dependencies(graphs[0]))
            job["waiting"] = balance.idle_while_queued(record.runs, record.tasks)
        return job

    def close() -> None:
        cluster.close()
        if servers is not None:
            servers.stop()

    return System(
        name or STORAGE[storage],
        get,
        {},
        startup,
        close,
        last_job,
        lambda: redis_counters(cluster),
        last_tasks=lambda: [(t.key, t.end - t.start) for t in client.jobs[-1].tasks] if client.jobs else [],
        last_record=lambda: client.jobs[-1],
    )


def redis_counters(cluster: Any) -> dict[str, int]:
    """Totals over the cluster's Redis servers: commands executed (those run inside Lua
    scripts included) and read events (one per pipeline a client sends, about: round trips).

    Taken before and after a run, their difference is what one job cost, whatever the load.
    """
    commands = reads = 0
    if cluster.store.cluster is not None:
        return {}  # a Redis Cluster's node totals are not summed here
    for r in cluster.store.servers:
        stats = r.info("commandstats")
        commands += sum(v["calls"] for k, v in stats.items() if k != "cmdstat_info")
        reads += r.info("stats")["total_reads_processed"]
    counters = {"redis_commands": commands, "redis_round_trips": reads, "probe_reads": 2 * len(cluster.store.servers)}
    for i, proc in enumerate(getattr(cluster.backend, "workers", ())):
        counters[f"worker_cpu_s.{i}"] = _cpu_seconds(proc.pid) if proc is not None else 0.0
    return counters


def _cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used so far; 0 where /proc cannot tell."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def _start_processes() -> System:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # Dask's default makes a new pool per compute(); like wukong's and distributed's
    # workers, this one is started once and kept warm for the whole run.
    t0 = time.perf_counter()
    pool = ProcessPoolExecutor(_cores(), mp_context=multiprocessing.get_context("spawn"), initializer=_one_blas_thread)
    list(pool.map(abs, range(4 * _cores())))
    startup = time.perf_counter() - t0
    return System("processes", "processes", {"pool": pool}, startup, lambda: pool.shutdown(cancel_futures=True))


def _one_blas_thread() -> None:
    """In each pool process: one BLAS thread, as wukong's and distributed's workers have."""
    for var in BLAS_ENV:
        os.environ[var] = "1"
    _blas_limit(1)


BLAS_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _blas_limit(n: int) -> Any:
    """Limit this process's BLAS to ``n`` threads (``threadpoolctl``); a no-op context without it."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        import contextlib

        return contextlib.nullcontext()
    return threadpool_limits(n, user_api="blas")


def _start_distributed() -> System:
    import logging

    import distributed

    logging.getLogger("distributed").setLevel(logging.ERROR)
    t0 = time.perf_counter()
    cluster = distributed.LocalCluster(n_workers=_cores(), threads_per_worker=1, processes=True, dashboard_address=None)
    client = distributed.Client(cluster, set_as_default=False)
    startup = time.perf_counter() - t0

    def close() -> None:
        client.close()
        cluster.close()

    return System("distributed", client, {}, startup, close)


def _start_ray() -> System:
    import ray
    from ray.util.dask import ray_dask_get

    t0 = time.perf_counter()
    ray.init(num_cpus=_cores(), include_dashboard=False, log_to_driver=False)
    return System("ray", ray_dask_get, {}, time.perf_counter() - t0, ray.shutdown)


STARTERS: dict[str, Callable[[], System]] = {
    "wukong": _start_wukong,
    "wukong-threads": lambda: _start_wukong(name="wukong-threads", processes=False),
    "wukong-ring3": lambda: _start_wukong("ring3"),
    "wukong-cluster3": lambda: _start_wukong("cluster3"),
    "sync": lambda: System("sync", "sync", blas_threads=_cores()),
    "threads": lambda: System("threads", "threads", {"num_workers": _cores()}),
    "processes": _start_processes,
    "distributed": _start_distributed,
    "ray": _start_ray,
}


def available_systems(named: bool = False) -> list[str]:
    """Every system this machine runs by default (``ray`` only when it is importable);
    ``named``: also those run only when named."""
    skip = {*OTHER_STORAGE, *(() if named else ON_REQUEST)}
    try:
        import ray  # noqa: F401
    except ImportError:
        skip.add("ray")
    return [s for s in SYSTEMS if s not in skip]


# --- machine -----------------------------------------------------------------------------


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _git_rev() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    import numpy

    import wukong
    from wukong import config as wukong_config  # loads wukong's defaults into dask.config

    return {
        "cores": _cores(),
        "memory_gb": round(_memory_bytes() / 2**30, 1),
        "cpu": _cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "dask": dask.__version__,
        "distributed": _version("distributed"),
        "numpy": numpy.__version__,
        "wukong": wukong.__version__,
        "dask_ml": _version("dask-ml"),
        "scikit_learn": _version("scikit-learn"),
        "ray": _version("ray"),
        "git": _git_rev(),
        "wukong_delayed_io": dict(wukong_config.get("delayed-io")),  # DASK_WUKONG__DELAYED_IO__ENABLED=false
        "blas_threads_env": {
            k: os.environ[k] for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ
        },
    }


# --- progress ----------------------------------------------------------------------------


class Progress:
    """A one-line text progress bar on stderr (a line per step when stderr is not a tty)."""

    def __init__(self, total: int, width: int = 30):
        self.total, self.done, self.width = max(total, 1), 0, width
        self.tty = sys.stderr.isatty()
        self.t0 = time.perf_counter()

    def show(self, label: str) -> None:
        filled = self.width * self.done // self.total
        bar = "#" * filled + "-" * (self.width - filled)
        line = f"[{bar}] {self.done}/{self.total} {time.perf_counter() - self.t0:6.0f}s  {label}"
        if self.tty:
            sys.stderr.write("\r\033[K" + line)
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def step(self, label: str) -> None:
        self.done += 1
        self.show(label)

    def finish(self) -> None:
        if self.tty:
            sys.stderr.write("\n")
        sys.stderr.flush()


# --- the run -----------------------------------------------------------------------------


def graph_tasks(collections: tuple) -> int | None:
    """Tasks in the optimized graph Dask hands a scheduler for ``collections``, as
    ``dask.compute`` makes it (its finalize tasks included)."""
    try:
        from dask._expr import FinalizeCompute

        expr = FinalizeCompute(dask.base.collections_to_expr(collections, optimize_graph=True)).optimize()
        return len(expr.__dask_graph__())
    except Exception:  # only a count for the table; never fail a run over it
        return None


class RunTimeout(Exception):
    """A run that did not return within the harness's time limit."""


class _Runner:
    """The one thread the timed computes run on, one after another, as a user's session
    runs its computes on its one thread: Dask's threaded scheduler keeps a pool per calling
    thread, and wukong's client its Redis connections. (A new thread per run had ``threads``
    start a new pool for every run. qr small with a thread per run: threads 6.8 ms, sync 6.9,
    wukong 8.2; on one thread: 6.1, 6.3 and 6.8.) A daemon thread: a run that never
    returns is left to it, and the next run gets a new runner."""

    def __init__(self) -> None:
        self.calls: queue.Queue[Callable[[], None]] = queue.Queue()
        threading.Thread(target=self.serve, name="bench-runner", daemon=True).start()

    def serve(self) -> None:
        while True:
            self.calls.get()()


_runner: _Runner | None = None


def _compute(system: System, collections: tuple, timeout: float) -> tuple[float, tuple]:
    """Seconds and result of one ``dask.compute``; raises ``RunTimeout`` after ``timeout`` s.

    The compute runs on the harness's runner thread (``_Runner``) so that a run which never
    returns (a hang in the system under test) is reported and the benchmark moves on; the
    thread is abandoned with it.
    """
    global _runner
    box: dict[str, Any] = {}
    done = threading.Event()

    def target() -> None:
        t0 = time.perf_counter()
        try:
            with _blas_limit(system.blas_threads):  # the tasks sync and threads run in this process
                box["result"] = dask.compute(*collections, scheduler=system.scheduler, **system.kwargs)
            box["seconds"] = time.perf_counter() - t0
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc
        finally:
            done.set()

    if _runner is None:
        _runner = _Runner()
    _runner.calls.put(target)
    if not done.wait(timeout):
        _runner = None  # busy with the abandoned run for good
        raise RunTimeout(f"{system.name}: no result after {timeout:g} s (run abandoned)")
    if "error" in box:
        raise box["error"]
    return box["seconds"], box["result"]


def other_load(window: float | None = None) -> float:
    """Cores kept busy over ``window`` seconds (default ``LOAD_WINDOW_S``) by anything but
    this run (this process and its children: the systems' workers, Redis).

    The 1-minute load average counts the run's own previous cells for a minute after
    they end, so a run on an idle machine would look loaded; this is what the gate in
    ``bench.summary`` reads.
    """
    window = LOAD_WINDOW_S if window is None else window
    me = psutil.Process()

    def sample() -> tuple[float, float, float]:
        t = psutil.cpu_times()
        busy = t.user + t.nice + t.system + sum(getattr(t, f, 0.0) for f in ("irq", "softirq", "steal"))
        own = 0.0
        for p in [me, *me.children(recursive=True)]:
            try:
                c = p.cpu_times()
            except psutil.Error:  # it ended meanwhile
                continue
            own += c.user + c.system
        return time.monotonic(), busy, own

    t0, busy0, own0 = sample()
    time.sleep(window)
    t1, busy1, own1 = sample()
    return max(0.0, (busy1 - busy0) - (own1 - own0)) / (t1 - t0)


def _error(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc)).rstrip()


def run_cell(
    system: System,
    wl: workloads.Workload,
    reference: tuple | None,
    repeat: int,
    timeout: float,
    progress: Progress,
    min_seconds: float = 0.0,
) -> tuple[dict, tuple | None]:
    """Warm-up plus ``repeat`` timed runs of one workload on one system, and more while the
    timed runs add up to less than ``min_seconds`` (``MAX_RUNS`` in all at most).

    Returns the cell's record and, when there is no ``reference`` yet (sync's cell: its
    warm-up becomes the reference), the warm-up result; else None, and no timed run runs
    while the warm-up's result is held.
    """
    cell: dict[str, Any] = {
        "warmup_s": None,
        "runs_s": [],
        "median_s": None,
        "jobs": [],
        "mismatch": None,
        "error": None,
    }
    first = None
    # The load from other processes, sampled over a pause before the cell and once more
    # after it (``other_load_before``: both samples), not before each run: a job of a few
    # milliseconds started right after an idle pause ran up to 2x slower (sync's qr:
    # 9.9 ms back to back, 15.6 ms after 0.5 s asleep, 19-24 ms in a run that paused).
    cell["other_load_before"] = [round(other_load(), 3)]
    # Garbage is collected here, before the warm-up, not between runs (neither here nor
    # in wukong's workers): each run pays for its own system's garbage, as a user's next
    # compute would. A collection before each run (~35 ms in this process) was a pause
    # that slowed the next job of a few milliseconds on every system, most where its
    # threads or worker processes sat idle through it (qr small: threads 14.2 -> 6.8 ms,
    # wukong 9.8 -> 8.2 ms, sync 7.9 -> 6.9 ms).
    gc.collect()
    i = -1
    while True:
        i += 1
        if i > repeat and (sum(cell["runs_s"]) >= min_seconds or len(cell["runs_s"]) >= MAX_RUNS):
            break
        what = "warm-up" if i == 0 else f"run {i}/{repeat}" if i <= repeat else f"run {i} (short runs)"
        progress.show(f"{wl.name} · {system.name} · {what}")
        cell.setdefault("load_before", []).append(os.getloadavg()[0])
        before = system.counters() if system.counters else None
        try:
            seconds, result = _compute(system, wl.collections, timeout)
        except Exception as exc:
            cell["error"] = f"{what}: " + _error(exc)
            progress.done += max(0, repeat + 1 - i)
            progress.show(f"{wl.name} · {system.name} · FAILED")
            break
        job = system.last_job()
        if job is not None:
            if before is not None and system.counters is not None:
                after = system.counters()
                job["redis_commands"] = after["redis_commands"] - before["redis_commands"]
                # per worker: CPU seconds spent on this job (busy time; a restarted worker reads 0)
                job["worker_cpu_s"] = [
                    round(max(0.0, after[k] - before.get(k, 0.0)), 3) for k in after if k.startswith("worker_cpu_s.")
                ]
                # the later probe's own reads are inside the difference
                job["redis_round_trips"] = (
                    after["redis_round_trips"] - before["redis_round_trips"] - after["probe_reads"]
                )
            cell["jobs"].append(job)
        if i == 0:
            cell["warmup_s"] = seconds
            # Kept only when it becomes the reference: a result held through the timed
            # runs keeps its memory in use (wukong's: a shared-memory file still mapped,
            # so the next run's result of that size goes into new pages).
            first = result if reference is None else None
        else:
            cell["runs_s"].append(seconds)
        mismatch = wl.check(result, reference if reference is not None else result)
        if mismatch and not cell["mismatch"]:
            cell["mismatch"] = f"{what}: {mismatch}"
        del result
        label = f"{wl.name} · {system.name} · {what} {seconds:.3f}s"
        if i <= repeat:
            progress.step(label)
        else:  # the bar counts ``repeat`` runs a cell
            progress.show(label)
    cell["other_load_before"].append(round(other_load(), 3))
    if cell["runs_s"]:
        cell["median_s"] = statistics.median(cell["runs_s"])
    if cell["jobs"]:
        cell["tasks"] = cell["jobs"][-1].get("tasks")
    return cell, first


def _reference(wl: workloads.Workload) -> tuple:
    """Sync's result, when sync itself is not among the systems being timed."""
    return dask.compute(*wl.collections, scheduler="sync")


def run_workload(
    name: str,
    size: str,
    systems: list[System],
    repeat: int,
    timeout: float,
    progress: Progress,
    min_seconds: float = 0.0,
) -> dict:
    """Every system on one workload; the workload's record."""
    record: dict[str, Any] = {"size": size, "systems": {}, "limit": None, "error": None}
    try:
        wl = workloads.build(name, size)
    except Exception as exc:
        record["error"] = _error(exc)
        progress.done += len(systems) * (repeat + 1)
        progress.show(f"{name} · build FAILED")
        return record
    record |= {"describe": wl.describe, "params": wl.params, "graph_tasks": graph_tasks(wl.collections)}
    reference = None
    if not any(s.name == "sync" for s in systems):
        try:
            progress.show(f"{name} · sync reference")
            reference = _reference(wl)
        except Exception as exc:
            record["error"] = "sync (the reference) failed:\n" + _error(exc)
    for system in systems:
        cell, first = run_cell(system, wl, reference, repeat, timeout, progress, min_seconds)
        cell.setdefault("tasks", record["graph_tasks"])
        record["systems"][system.name] = cell
        if system.name == "sync":
            reference = first
            if first is None:
                record["error"] = "sync (the reference) failed: nothing verified"
        del first
    if wl.limit is not None:
        try:
            progress.show(f"{name} · limit")
            record["limit"] = wl.limit()
        except Exception as exc:
            record["limit"] = {"error": _error(exc)}
    return record


def start_systems(names: list[str], progress: Progress) -> list[System]:
    """Start the systems, sync first (its results are the reference)."""
    ordered = sorted(names, key=lambda n: (n != "sync", SYSTEMS.index(n)))
    started = []
    for n in ordered:
        progress.show(f"starting {n}")
        started.append(STARTERS[n]())
    return started


def run(
    size: str,
    only: list[str],
    systems: list[str],
    repeat: int,
    out: Path,
    timeout: float | None = None,
    argv: list[str] | None = None,
    min_seconds: float | None = None,
) -> dict:
    """The whole benchmark; returns the results record (also written to ``out``)."""
    timeout = timeout or TIMEOUT_S[size]
    min_seconds = MIN_SECONDS[size] if min_seconds is None else min_seconds
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results: dict[str, Any] = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "argv": argv,
        "size": size,
        "repeat": repeat,
        "min_seconds": min_seconds,
        "max_runs": MAX_RUNS,
        "timeout_s": timeout,
        "machine": machine(),
        "systems": systems,
        "startup_s": {},
        "workloads": {},
    }
    paths = report.Paths(out, stamp)
    progress = Progress(len(only) * len(systems) * (repeat + 1))
    started: list[System] = []
    try:
        started = start_systems(systems, progress)
        results["startup_s"] = {s.name: s.startup_s for s in started if s.startup_s is not None}
        results["blas_threads"] = {s.name: s.blas_threads for s in started}
        for name in only:
            results["workloads"][name] = run_workload(name, size, started, repeat, timeout, progress, min_seconds)
            report.write_json(results, paths)
    finally:
        progress.finish()
        for s in reversed(started):
            try:
                s.close()
            except Exception as exc:
                print(f"closing {s.name} failed: {exc}", file=sys.stderr)
    results["ok"] = report.all_verified(results)
    results["max_load_per_core"] = report.max_load_per_core(results)
    report.write_json(results, paths)
    report.write_charts(results, paths)
    table = report.tables(results)
    paths.table.write_text(table + "\n")
    print(table)
    print(f"\nresults: {paths.json}\ntable:   {paths.table}\ncharts:  {out}/{stamp}-<workload>.png")
    results["paths"] = {"json": str(paths.json), "table": str(paths.table), "charts": [str(p) for p in paths.charts]}
    return results

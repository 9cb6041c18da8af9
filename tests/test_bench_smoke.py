"""The benchmark harness, end to end at ``tiny`` sizes: every workload on wukong, sync and threads.

One harness run (module fixture, well under 90 s) into a temporary folder; each test checks
one promise of ``python -m bench``. The bench extras are required, not optional: a missing
dask-ml fails here with the command that installs it.
"""

from __future__ import annotations

import importlib.util
import json
import time

import dask
import pytest

SYSTEMS = ["wukong", "sync", "threads"]


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    missing = [m for m in ("dask_ml", "sklearn", "matplotlib", "distributed") if importlib.util.find_spec(m) is None]
    if missing:
        pytest.fail(f"the bench extras are not installed (missing {', '.join(missing)}): pip install -e '.[bench]'")
    from bench import harness, workloads
    from bench.__main__ import main

    out = tmp_path_factory.mktemp("bench")
    argv = ["--size", "tiny", "--systems", ",".join(SYSTEMS), "--repeat", "1", "--timeout", "15", "--out", str(out)]
    t0 = time.perf_counter()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(harness, "LOAD_WINDOW_S", 0.02)  # the load is recorded, not judged, here: sample briefly
        code = main(argv)
    seconds = time.perf_counter() - t0
    [json_path] = out.glob("*.json")
    results = json.loads(json_path.read_text())
    return {"code": code, "out": out, "results": results, "seconds": seconds, "workloads": list(workloads.BUILDERS)}


def _failures(results: dict) -> list[str]:
    bad = []
    for name, record in results["workloads"].items():
        if record.get("error"):
            bad.append(f"{name}: {record['error'].strip().splitlines()[-1]}")
        for system, cell in record["systems"].items():
            if cell.get("error"):
                bad.append(f"{name} on {system}: {cell['error'].strip().splitlines()[-1]}")
            if cell.get("mismatch"):
                bad.append(f"{name} on {system}: {cell['mismatch']}")
    return bad


def test_every_workload_runs_on_every_system(bench_run):
    results = bench_run["results"]
    assert list(results["workloads"]) == bench_run["workloads"]
    for record in results["workloads"].values():
        assert sorted(record["systems"]) == sorted(SYSTEMS)


def test_every_result_matches_sync(bench_run):
    assert _failures(bench_run["results"]) == []
    assert bench_run["results"]["ok"] is True
    assert bench_run["code"] == 0


def test_json_holds_raw_runs_and_machine(bench_run):
    results = bench_run["results"]
    assert {"cores", "memory_gb", "cpu", "python", "dask", "numpy", "wukong"} <= set(results["machine"])
    assert "wukong" in results["startup_s"]
    for record in results["workloads"].values():
        for cell in record["systems"].values():
            if not cell.get("error"):
                assert len(cell["runs_s"]) == 1 and cell["warmup_s"] is not None


def test_gemm_reports_numpy_limit(bench_run):
    limit = bench_run["results"]["workloads"]["gemm"]["limit"]
    assert limit["what"] == "numpy.matmul" and limit["seconds"] > 0


def test_writes_a_chart_per_workload(bench_run):
    charts = sorted(p.name.split("-", 2)[-1] for p in bench_run["out"].glob("*.png"))
    assert charts == sorted(f"{w}.png" for w in bench_run["workloads"])
    assert all(p.stat().st_size > 1000 for p in bench_run["out"].glob("*.png"))


def test_writes_the_tables(bench_run, capsys):
    [table] = bench_run["out"].glob("*.txt")
    text = table.read_text()
    for name in bench_run["workloads"]:
        assert f"\n{name} — " in text
    assert "wukong / best peer" in text


def test_storage_option_runs_wukong_once_per_storage():
    from bench.__main__ import parse

    args = parse(["--systems", "sync,wukong", "--storage", "standalone,ring3,cluster3"])
    assert args.systems == ["sync", "wukong", "wukong-ring3", "wukong-cluster3"]
    assert parse(["--systems", "wukong,sync"]).systems == ["wukong", "sync"]  # default: the embedded Redis only
    with pytest.raises(SystemExit):
        parse(["--storage", "ring7"])


def test_records_the_load_before_every_cell(bench_run):
    for record in bench_run["results"]["workloads"].values():
        for cell in record["systems"].values():
            assert len(cell["load_before"]) == len(cell["runs_s"]) + 1 or cell.get("error")
            assert len(cell["other_load_before"]) == 2  # before the cell and after it
    assert set(bench_run["results"]["blas_threads"]) == set(SYSTEMS)


def test_other_load_counts_other_processes_and_not_the_run_itself(tmp_path):
    """The gate's load: a spinning child of this run is not counted; a spinning
    process outside it (a grandchild left to init by its shell) is, whatever the load."""
    import subprocess
    import sys

    import psutil

    from bench.harness import other_load

    spin = "import time\nt = time.time() + 20\nwhile time.time() < t: pass"
    script = tmp_path / "spin.py"
    script.write_text(spin)
    before = other_load(1.0)
    child = subprocess.Popen([sys.executable, str(script)])
    try:
        time.sleep(0.2)
        assert other_load(1.0) < before + 0.5  # at most what the others did, never the child's core
    finally:
        child.kill()
        child.wait()
    pidfile = tmp_path / "pid"
    subprocess.run(["sh", "-c", f"{sys.executable} {script} & echo $! > {pidfile}"], check=True)
    outsider = psutil.Process(int(pidfile.read_text()))
    try:
        assert outsider not in psutil.Process().children(recursive=True)
        time.sleep(0.2)
        used0 = sum(outsider.cpu_times()[:2])
        load = other_load(1.0)
        used = sum(outsider.cpu_times()[:2]) - used0
        assert used > 0.05 and load >= used / 1.1 - 0.1  # its CPU time is in the load
    finally:
        outsider.kill()


def test_summary_refuses_a_run_on_a_busy_machine(bench_run, tmp_path):
    from bench import summary

    results = dict(bench_run["results"])
    cores = results["machine"]["cores"]
    for load, refused in [(0.1 * cores, False), (0.9 * cores, True)]:
        for record in results["workloads"].values():
            for cell in record["systems"].values():
                cell["load_before"] = [0.0]  # the gate reads the load from other processes
                cell["other_load_before"] = [load]
        path = tmp_path / f"{load}.json"
        path.write_text(json.dumps(results))
        if refused:
            with pytest.raises(summary.BusyMachine):
                summary.table(str(path))
        else:
            assert "| workload |" in summary.table(str(path))


@pytest.mark.parametrize("peer", ["sync", "threads"])
def test_alternate_times_wukong_and_a_peer_in_turn_and_checks_results(peer):
    from bench.alternate import alternate

    (row,) = alternate(
        ["tree"], "tiny", runs=2, warmup=1, peer=peer, wukong="wukong-threads" if peer == "threads" else "wukong"
    )
    assert row["workload"] == "tree" and row["wukong_s"] > 0 and row["peer_s"] > 0
    assert row["ratio"] == row["wukong_s"] / row["peer_s"]


def test_alternate_takes_a_second_cluster_with_a_setting_in_turn(monkeypatch):
    from bench import alternate as alt

    started = []
    real = alt.harness.STARTERS["wukong"]

    def start():  # the setting is in Dask's config while its cluster starts
        started.append(dask.config.get("wukong.delayed-io.threshold", None))
        return real()

    monkeypatch.setitem(alt.harness.STARTERS, "wukong", start)
    (row,) = alt.alternate(["tree"], "tiny", runs=2, warmup=1, setting=("delayed-io.threshold", 1 << 20))
    assert started == [None, 1 << 20]
    assert row["wukong_s"] > 0 and row["setting_s"] > 0 and row["peer_s"] > 0


def test_wake_times_a_one_task_job_after_each_idle_gap_and_sync():
    from bench.wake import GAPS_MS, wake

    rows = wake(runs=2)
    assert [label for label, _ in rows] == [
        "0 ms (none)",
        *[f"{g} ms ({h})" for g in GAPS_MS[1:] for h in ("sleep", "spin")],
        "sync",
    ]
    assert all(ms > 0 for _, ms in rows)


def test_inline_plan_times_a_solo_job_with_its_plan_in_the_entry_and_in_redis():
    from bench.inline_plan import inline_or_redis

    times = inline_or_redis(runs=2, sizes_kib=(16, 64))
    assert list(times) == [16, 64] and all(a > 0 and b > 0 for a, b in times.values())


def test_dataplane_times_results_on_the_stream_and_through_files():
    from bench.dataplane import RESULT_KIB, stream_or_file

    times = stream_or_file(repeat=1, jobs=2)
    assert list(times) == list(RESULT_KIB) and all(a > 0 and b > 0 for a, b in times.values())


def test_taskgroups_splits_each_systems_job_into_its_task_groups_and_the_rest():
    from bench import harness
    from bench.taskgroups import measure, table

    systems = [harness.STARTERS[n]() for n in ("threads", "wukong")]
    try:
        result = measure("gemm", "tiny", systems, runs=2, warmup=1)
    finally:
        for system in systems:
            system.close()
    for name in ("threads", "wukong"):
        row = result["systems"][name]
        groups = set(row["tasks_s"]) - {"(all tasks)"}
        assert {"chunk_sum", "random_sample"} <= groups, (name, groups)  # timed per group on both
        assert row["threads"] == harness._cores()
        # the tasks fit in the threads' time: a timer that counts a task twice, or its wait
        # in a queue, overflows it
        assert 0 < row["tasks_s"]["(all tasks)"] <= row["job_s"] * row["threads"], (name, row)
    assert "outside tasks" in table(result) and "chunk_sum" in table(result)


def test_edges_split_each_job_into_its_start_span_and_tail():
    from bench.edges import edges

    parts = edges("gemm", "tiny", "wukong-threads", runs=2, warmup=1)
    assert list(parts) == ["job", "to first task", "span", "tail"]
    for job, first, span, tail in zip(*parts.values(), strict=True):
        assert first > 0 and span > 0 and tail > 0
        assert first + span + tail == pytest.approx(job)


def test_summary_puts_both_wukongs_beside_dasks_schedulers_and_counts_redis_per_task(bench_run, tmp_path):
    from bench import summary

    results = json.loads(json.dumps(bench_run["results"]))
    record = results["workloads"]["tree"]
    for cell in record["systems"].values():
        cell["other_load_before"] = [0.0]
    wk = record["systems"]["wukong"]
    threads = record["systems"]["wukong-threads"] = {**wk, "median_s": wk["median_s"] / 2}
    path = tmp_path / "run.json"
    path.write_text(json.dumps({**results, "workloads": {"tree": record}}))
    head, _, row, *_ = summary.table(str(path)).splitlines()
    names = [c.strip() for c in head.strip("|").split("|")]
    cells = dict(zip(names, (c.strip() for c in row.strip("|").split("|")), strict=True))
    best = min(record["systems"][s]["median_s"] for s in ("sync", "threads"))  # a wukong is never the "best" peer
    assert cells["wukong / best"] == f"{wk['median_s'] / best:.2f}×"
    assert cells["wukong-threads / best"] == f"{threads['median_s'] / best:.2f}×"
    assert float(cells["cmd/task"]) > 0 and float(cells["rt/task"]) > 0  # the tree's jobs run Redis commands


def test_a_short_cell_runs_until_its_runs_add_up_to_min_seconds(monkeypatch):
    """A job of a few milliseconds is the median of many runs; a long one of ``repeat``."""
    from bench import harness, workloads

    def get_after(seconds):
        def get(dsk, keys, **kwargs):
            time.sleep(seconds)
            return [1 for _ in keys]

        return get

    monkeypatch.setattr(harness, "LOAD_WINDOW_S", 0.01)
    wl = workloads.Workload("short", {}, (dask.delayed(int)(1),), lambda result, reference: None, "short")

    def cell(seconds, repeat, min_seconds):
        system = harness.System("fake", get_after(seconds))
        progress = harness.Progress(repeat + 1)
        c, _ = harness.run_cell(system, wl, (1,), repeat, 10, progress, min_seconds)
        assert c["error"] is None and progress.done == repeat + 1  # the bar counts ``repeat`` runs
        return c["runs_s"]

    runs = cell(0.01, 2, 0.15)
    assert len(runs) > 2 and sum(runs) >= 0.15 and sum(runs[:-1]) < 0.15  # stops as soon as they add up
    assert len(cell(0.06, 2, 0.05)) == 2  # long runs: ``repeat`` of them
    assert len(cell(0.005, 3, 0)) == 3  # 0: exactly ``repeat``
    monkeypatch.setattr(harness, "MAX_RUNS", 5)
    assert len(cell(0.005, 2, 60)) == 5  # never more than ``MAX_RUNS``


def test_a_cell_collects_garbage_before_its_warm_up_not_between_its_runs(monkeypatch):
    """A collection is a pause (~35 ms in the harness): before each run it slowed every
    system's next short job, most those whose workers sat idle through it."""
    from bench import harness, workloads

    collections: list[int] = []
    seen: list[int] = []  # at each compute, how many collections so far

    def get(dsk, keys, **kwargs):
        seen.append(len(collections))
        return [1 for _ in keys]

    monkeypatch.setattr(harness, "LOAD_WINDOW_S", 0.01)
    monkeypatch.setattr(harness.gc, "collect", lambda *a: collections.append(1) or 0)
    wl = workloads.Workload("gc", {}, (dask.delayed(int)(1),), lambda result, reference: None, "gc")
    cell, _ = harness.run_cell(harness.System("fake", get), wl, (1,), 3, 10, harness.Progress(4))
    assert cell["error"] is None and seen == [1, 1, 1, 1]


def test_runs_share_one_thread_and_a_hung_run_is_left_behind(monkeypatch):
    """As a user's session computes on its one thread (Dask's threaded scheduler keeps a
    pool per calling thread); a run that never returns is abandoned with its thread."""
    import threading

    from bench import harness

    threads: list[int] = []
    release = threading.Event()

    def get(dsk, keys, **kwargs):
        threads.append(threading.get_ident())
        if len(threads) == 3:
            release.wait(30)  # hangs past the harness's time limit
        return [1 for _ in keys]

    system = harness.System("fake", get)
    collections = (dask.delayed(int)(1),)
    harness._compute(system, collections, 10)
    harness._compute(system, collections, 10)
    assert threads[0] == threads[1] != threading.get_ident()
    with pytest.raises(harness.RunTimeout, match="fake: no result after 0.2 s"):
        harness._compute(system, collections, 0.2)
    seconds, result = harness._compute(system, collections, 10)  # on a new thread
    assert result == (1,) and len(threads) == 4 and threads[3] != threads[2]
    release.set()


def test_a_cell_times_its_runs_without_holding_its_warm_ups_result(monkeypatch):
    """A result held through the timed runs keeps its memory in use (on wukong, a mapped
    shared-memory file: the next result of that size would go into new pages)."""
    import weakref

    from bench import harness, workloads

    class Value:
        pass

    made: list[weakref.ref] = []
    alive: list[int] = []  # at each compute, how many earlier results were still alive

    def get(dsk, keys, **kwargs):
        alive.append(sum(r() is not None for r in made))
        value = Value()
        made.append(weakref.ref(value))
        return [value for _ in keys]

    monkeypatch.setattr(harness, "LOAD_WINDOW_S", 0.01)
    wl = workloads.Workload("held", {}, (dask.delayed(Value)(),), lambda result, reference: None, "held")
    system = harness.System("fake", get)
    cell, first = harness.run_cell(system, wl, reference=(Value(),), repeat=3, timeout=10, progress=harness.Progress(4))
    assert cell["warmup_s"] is not None and len(cell["runs_s"]) == 3 and first is None
    assert alive == [0, 0, 0, 0]
    # the reference's own cell (sync's, no reference yet) hands its warm-up back: it becomes the reference
    made.clear()
    alive.clear()
    cell, first = harness.run_cell(system, wl, reference=None, repeat=2, timeout=10, progress=harness.Progress(3))
    assert isinstance(first[0], Value) and made[0]() is first[0] and alive == [0, 1, 1]

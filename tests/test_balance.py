"""The bench's load-balance measures (issue 13.7) on hand-made job records."""

from dask._task_spec import DataNode, Task, TaskRef

from bench.balance import dependencies, idle_while_queued, idle_while_ready
from wukong.diagnostics import InvocationRun, TaskRun


def test_idle_counts_only_time_a_task_was_ready_and_unstarted():
    # a and b are leaves; c needs both. Executor X runs a [0, 4] then c [6, 7];
    # executor Y runs b [1, 2] only. c is ready from 4 (a's end) until 6 (its start).
    deps = {"a": set(), "b": set(), "c": {"a", "b"}}
    tasks = [TaskRun("a", 0.0, 4.0, "X"), TaskRun("b", 1.0, 2.0, "Y"), TaskRun("c", 6.0, 7.0, "X")]
    out = idle_while_ready(tasks, deps)
    assert out["span_s"] == 7.0
    # b was ready from 0 (a leaf) until 1: Y idle then; X busy with a
    # c ready in [4, 6]: both idle then
    assert out["executors"]["X"] == {"busy_s": 5.0, "idle_while_ready_s": 2.0}
    assert out["executors"]["Y"] == {"busy_s": 1.0, "idle_while_ready_s": 3.0}


def test_no_ready_task_no_idle_counted():
    # a chain on one executor and a second executor with nothing to do
    deps = {"a": set(), "b": {"a"}}
    tasks = [TaskRun("a", 0.0, 1.0, "X"), TaskRun("b", 1.0, 2.0, "X"), TaskRun("z", 0.0, 0.5, "Y")]
    out = idle_while_ready(tasks, deps | {"z": set()})
    assert out["executors"]["X"]["idle_while_ready_s"] == 0.0
    assert out["executors"]["Y"]["idle_while_ready_s"] == 0.0


def test_dependencies_of_a_task_spec_graph():
    dsk = {"x": DataNode("x", 1), "y": Task("y", abs, TaskRef("x")), "z": Task("z", max, TaskRef("x"), TaskRef("y"))}
    assert dependencies(dsk) == {"x": set(), "y": {"x"}, "z": {"x", "y"}}


# -- idle while an invocation was queued: from the record's invocation runs --------------------


def run(worker, sent, picked, ended, waits=()):
    return InvocationRun(f"{worker}{picked}", worker, sent, picked, ended, list(waits))


def test_idle_while_queued_counts_only_waiting_for_work_while_an_invocation_waits():
    # span [0, 10] (tasks). X runs an invocation [0, 6] and, sent at 2, another picked at 6
    # (queued [2, 6]), ending at 10. Y runs one [0, 3], then waits for work: idle [3, 10],
    # of which [3, 6] while X's second invocation was queued.
    tasks = [TaskRun("a", 0.0, 5.0, "X"), TaskRun("b", 7.0, 10.0, "X"), TaskRun("c", 0.5, 2.5, "Y")]
    runs = [run("X", 0.0, 0.0, 6.0), run("X", 2.0, 6.0, 10.0), run("Y", 0.0, 0.0, 3.0)]
    out = idle_while_queued(runs, tasks)
    assert out["span_s"] == 10.0 and out["queued_s"] == 4.0
    # X's own work between its tasks ([5, 7]) is busy, not idle
    assert out["executors"]["X"] == {"busy_s": 10.0, "idle_while_queued_s": 0.0}
    assert out["executors"]["Y"] == {"busy_s": 3.0, "idle_while_queued_s": 3.0}


def test_a_wait_on_holds_inside_an_invocation_is_idle():
    # Y holds an output, its stack empty, in [1, 4] of its invocation [0, 5]; an invocation
    # sent at 2 waits until 3 (X picks it up). Y idle [1, 4] and [5, 8]; queued [2, 3].
    tasks = [TaskRun("a", 0.0, 8.0, "X"), TaskRun("b", 0.0, 1.0, "Y"), TaskRun("c", 4.0, 5.0, "Y")]
    runs = [run("X", 0.0, 0.0, 3.0), run("X", 2.0, 3.0, 8.0), run("Y", 0.0, 0.0, 5.0, [(1.0, 4.0)])]
    out = idle_while_queued(runs, tasks)
    assert out["queued_s"] == 1.0
    assert out["executors"]["Y"] == {"busy_s": 2.0, "idle_while_queued_s": 1.0}
    assert out["executors"]["X"] == {"busy_s": 8.0, "idle_while_queued_s": 0.0}


def test_only_the_job_span_counts():
    # an invocation picked before the first task starts and queued past the last task's end
    tasks = [TaskRun("a", 1.0, 3.0, "X")]
    runs = [run("X", 0.0, 0.5, 3.5), run("Y", 2.0, 4.0, 5.0)]
    out = idle_while_queued(runs, tasks)
    assert out["span_s"] == 2.0 and out["queued_s"] == 1.0
    assert out["executors"]["X"] == {"busy_s": 2.0, "idle_while_queued_s": 0.0}
    assert out["executors"]["Y"] == {"busy_s": 0.0, "idle_while_queued_s": 1.0}


def test_an_invocation_of_unknown_send_time_is_not_counted_queued():
    tasks = [TaskRun("a", 0.0, 2.0, "X")]
    runs = [run("X", 0.0, 1.0, 2.0), run("Y", 0.0, 0.0, 0.5)]  # X's was sent when? (0.0: unknown)
    assert idle_while_queued(runs, tasks)["queued_s"] == 0.0

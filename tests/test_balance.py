"""The bench's load-balance measure (issue 13.7) on hand-made job records."""

from dask._task_spec import DataNode, Task, TaskRef

from bench.balance import dependencies, idle_while_ready
from wukong.diagnostics import TaskRun


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

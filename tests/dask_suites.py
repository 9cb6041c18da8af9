"""A pytest plugin that runs Dask's own test suites with every compute routed to one scheduler.

    python -m pytest -p dask_suites --route=wukong --pyargs dask.bag.tests dask.tests.test_delayed

(run with ``tests/`` on ``PYTHONPATH``; ``tests/test_dask_suites.py`` does).

Routing happens where Dask picks a scheduler by name: ``dask.base.named_schedulers``
(one dict every module shares) gets the routed ``get`` under every name --
``"sync"`` (what ``dask.array.utils.assert_eq`` and friends pass), ``"threads"``,
``"processes"``, ``"single-threaded"`` -- and the configured default scheduler is
``"sync"``, so a bare ``.compute()`` routes too.  Shuffles default to
``"tasks"`` on both routes (what ``Client(set_as_default=True)`` sets).  A test that hands Dask its own
``get`` callable, or calls ``dask.get``/``get_sync`` directly, keeps it: it is testing
that scheduler.

``--route=wukong`` sends graphs to a wukong ``Client`` on a ``LocalCluster`` made
for the session; ``--route=sync`` to Dask's synchronous scheduler (the baseline,
through the same interception).  Every routed graph is counted per test (and
those wukong ran solo, as one invocation: ``wukong.durations``), and
``--route-report=FILE`` writes ``{nodeid: [outcome, graphs routed, of them solo]}`` as JSON.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

ROUTED_NAMES = ("sync", "synchronous", "single-threaded", "threads", "threading", "processes", "multiprocessing")

_state: dict[str, Any] = {"count": 0, "solo": 0, "per_test": {}, "client": None, "cluster": None}


def pytest_addoption(parser: Any) -> None:
    parser.addoption("--route", default="wukong", choices=["wukong", "sync"])
    parser.addoption("--route-report", default=None)


def _routed_get(target: Any) -> Any:
    def get(dsk: Any, keys: Any, **kwargs: Any) -> Any:
        _state["count"] += 1
        result = target(dsk, keys, **kwargs)
        client = _state["client"]
        if client is not None and client.last_job.get("solo"):  # run as one invocation (wukong.durations)
            _state["solo"] += 1
        return result

    get.__name__ = "routed_get"
    return get


def pytest_configure(config: Any) -> None:
    import dask
    import dask.base
    import dask.local

    route = config.getoption("--route")
    if route == "wukong":
        from wukong import Client, LocalCluster

        _state["cluster"] = LocalCluster(n_workers=2)
        _state["client"] = Client(_state["cluster"], progress=False)
        target = _state["client"].get
    else:
        target = dask.local.get_sync
    get = _routed_get(target)
    for name in ROUTED_NAMES:
        dask.base.named_schedulers[name] = get
    dask.config.set(scheduler="sync")  # the default for a bare compute: routed too
    # On both routes, what Client(set_as_default=True) sets, as distributed does: task-based
    # shuffles by default (wukong refuses disk shuffles, which need one shared process).
    dask.config.set({"dataframe.shuffle.method": "tasks"})


def pytest_unconfigure(config: Any) -> None:
    if _state["client"] is not None:
        _state["client"].close()
        _state["cluster"].close()
    path = config.getoption("--route-report")
    if path:
        with open(path, "w") as f:
            json.dump(_state["per_test"], f, indent=0, sort_keys=True)


@pytest.fixture(autouse=True)
def _keep_routing() -> Any:
    """Dask's conftest may reset the configuration between tests: route bare computes again."""
    import dask

    if dask.config.get("scheduler", None) is None:
        dask.config.set(scheduler="sync")
    yield


_names: dict[str, str] = {}  # nodeid -> "dask.bag.tests.test_bag::test_name[params]", stable across rootdirs


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: Any, nextitem: Any) -> None:
    _names[item.nodeid] = f"{item.module.__name__}::{item.name}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: Any) -> Any:
    before, solo = _state["count"], _state["solo"]
    yield
    entry = _state["per_test"].setdefault(_names[item.nodeid], ["?", 0])
    entry[1:] = [_state["count"] - before, _state["solo"] - solo]  # graphs routed, of them solo


def pytest_runtest_logreport(report: Any) -> None:
    entry = _state["per_test"].setdefault(_names.get(report.nodeid, report.nodeid), ["?", 0])
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        entry[0] = "xfailed" if hasattr(report, "wasxfail") and report.skipped else report.outcome
        if hasattr(report, "wasxfail") and report.passed:
            entry[0] = "xpassed"

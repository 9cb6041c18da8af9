"""Task exceptions and bad input: clear errors, before anything runs where possible."""

import threading

import pytest
from conftest import REDIS_SECRET_ARN
from dask import delayed
from dask.task_spec import Task, TaskRef

from wukong import Client, GraphError, LocalCluster, TaskError


@pytest.fixture
def client(any_client):
    """Every test here runs on the local and on the lambda backend."""
    return any_client


def boom(x):
    raise ValueError(f"bad value {x}")


def inc(x):
    return x + 1


def test_task_exception_reraised_as_its_own_type_with_remote_traceback(client):
    with pytest.raises(ValueError, match="bad value 1") as info:
        delayed(boom)(delayed(inc)(0)).compute(scheduler=client.get)
    err = info.value
    assert isinstance(err, TaskError)
    assert err.key.startswith("boom-")
    assert "in boom" in err.remote_traceback  # the remote frame is shown
    assert "Remote traceback" in str(err)


def test_exception_in_one_branch_of_a_wide_job_stops_the_job(client):
    parts = [delayed(inc)(i) for i in range(50)] + [delayed(boom)(7)]
    with pytest.raises(ValueError, match="bad value 7"):
        delayed(sum)(parts).compute(scheduler=client.get)


def test_cycle_is_named():
    from wukong.graph import prepare

    dsk = {"a": (inc, "c"), "b": (inc, "a"), "c": (inc, "b"), "d": (inc, "c")}
    with pytest.raises(GraphError, match=r"Cycle detected: \['a', 'b', 'c', 'a'\]|Cycle detected"):
        prepare(dsk, ["d"])


def test_cycle_rejected_by_client_before_running(client):
    dsk = {"a": (inc, "b"), "b": (inc, "a")}
    with pytest.raises(GraphError, match="Cycle detected"):
        client.get(dsk, "a")


def test_missing_dependency_is_named(client):
    dsk = {"x": Task("x", inc, TaskRef("not-there"))}
    with pytest.raises(GraphError, match="missing dependency 'not-there'"):
        client.get(dsk, "x")


def test_missing_output_key_is_a_key_error(client):
    with pytest.raises(KeyError):
        client.get({"x": 1}, "y")


def test_unpicklable_task_is_named(client):
    lock = threading.Lock()
    dsk = {"ok": (inc, 1), "locked": (lambda x, held: x, "ok", lock)}
    with pytest.raises(GraphError, match="task 'locked' cannot be pickled"):
        client.get(dsk, "locked")


def test_unpicklable_result_is_named(client):
    def make_lock(x):
        return threading.Lock()

    dsk = {"a": (inc, 1), "lock": (make_lock, "a")}
    with pytest.raises(TaskError, match="task 'lock' returned a result that cannot be pickled"):
        client.get(dsk, "lock")


def test_client_usable_after_a_failed_job(client):
    with pytest.raises(ValueError):
        client.get({"x": (boom, 1)}, "x")
    assert client.get({"x": (inc, 1)}, "x") == 2


def big(x):
    import os

    return os.urandom(200_000)  # incompressible: the serialized size stays above the limit


def test_result_above_the_configured_limit_is_named(lambda_cluster, cluster):
    """Each backend, its own cluster with a limit: the error names the task, nothing is left."""
    for base in ("local", "lambda"):
        kwargs = (
            {"n_workers": 1}
            if base == "local"
            else {
                "backend": "lambda",
                "endpoint_url": lambda_cluster.backend.invoker.endpoint,
                "region": "us-east-1",
                # the functions' Redis: its password is in the secret they are configured with
                "redis_endpoints": [lambda_cluster.store.endpoints[0].name],
                "redis_secret_arn": REDIS_SECRET_ARN,
            }
        )
        with LocalCluster(max_result_bytes=100_000, **kwargs) as limited:
            with pytest.raises(
                TaskError, match="task 'b' returned a result larger than the cluster's max_result_bytes"
            ):
                Client(limited, progress=False).get({"a": 1, "b": (big, "a")}, "b")

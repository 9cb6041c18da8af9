"""The version check: executors that run other versions than the client are refused, or
warned about, before any task runs (in-process lambda-local, versions faked by the handler)."""

import json
import os
import warnings

import pytest
from dask import delayed

from wukong import Client, LocalCluster
from wukong.demo import incr
from wukong.doctor import run as doctor
from wukong.lambda_local import LambdaLocal
from wukong.versions import VersionMismatch, VersionWarning, compare, report

try:
    from .conftest import AWS_ENV, job_keys, lambda_local
except ImportError:
    from conftest import AWS_ENV, job_keys, lambda_local

HANDLERS = __name__.replace("test_versions", "lambda_handlers")


def mark(path):
    open(path, "w").close()
    return 1


def run_with(fake, tmp_path, monkeypatch):
    """Run one job against executors claiming ``fake`` versions; return (result or error, invocations)."""
    ran = tmp_path / "ran"
    monkeypatch.setenv("FAKE_VERSIONS", json.dumps(fake))  # the workers inherit it
    with lambda_local({"wukong-executor": f"{HANDLERS}:fake_versions"}, workers=1) as lam:
        with LocalCluster(backend="lambda", endpoint_url=lam.url, region="us-east-1", **lam.cluster_options) as cluster:
            client = Client(cluster, progress=False)
            try:
                out = [delayed(mark)(str(ran)).compute(scheduler=client.get) for _ in range(2)]
            except VersionMismatch as e:
                out = e
            assert job_keys(cluster) == []
        return out, lam.stats()["invocations"], ran.exists()


def test_compare_sorts_breaking_from_lesser():
    here = {"python": "3.11.7", "cloudpickle": "3.1.3", "dask": "2026.8.0", "numpy": "2.4.6", "wukong": "0.1.0"}
    assert compare(here, dict(here)) == ([], [])
    breaking, lesser = compare(here, {**here, "python": "3.12.1", "cloudpickle": "4.0.0", "numpy": "2.3.0"})
    assert breaking == ["python 3.11.7 here, 3.12.1 there", "cloudpickle 3.1.3 here, 4.0.0 there"]
    assert lesser == ["numpy 2.4.6 here, 2.3.0 there"]
    assert compare(here, {**here, "python": "3.11.9", "cloudpickle": "3.0.0", "dask": "2026.9.0"})[0] == []
    assert compare(here, {**here, "wukong": "0.1.1"})[0] == ["wukong 0.1.0 here, 0.1.1 there"]


@pytest.mark.parametrize(
    "fake, named",
    [({"python": "3.12.1"}, "python"), ({"cloudpickle": "9.0.0"}, "cloudpickle"), ({"wukong": "0.0.9"}, "wukong")],
)
def test_breaking_mismatch_fails_before_any_task_runs(fake, named, tmp_path, monkeypatch):
    out, invocations, ran = run_with(fake, tmp_path, monkeypatch)
    assert isinstance(out, VersionMismatch)
    message = str(out)
    assert f"{named} {report()[named]} here, {fake[named]} there" in message
    assert "wukong-executor" in message and "make lambda-zip" in message and "Python" in message
    assert not ran and invocations == 1  # the probe; no executor was invoked


def test_lesser_mismatch_warns_once_and_runs(tmp_path, monkeypatch):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out, invocations, ran = run_with({"numpy": "1.26.0", "dask": "2025.1.0"}, tmp_path, monkeypatch)
    assert out == [1, 1] and ran
    found = sorted(str(w.message) for w in caught if issubclass(w.category, VersionWarning))
    assert len(found) == 2  # numpy and dask, each once over two jobs
    assert "numpy" in found[1] and "1.26.0 there" in found[1] and "dask" in found[0]


def test_same_versions_probe_once_per_cluster(tmp_path, monkeypatch):
    out, invocations, ran = run_with({}, tmp_path, monkeypatch)
    assert out == [1, 1] and invocations == 1 + 2  # one probe, then one executor per job


def test_a_function_that_does_not_answer_the_probe_is_refused(monkeypatch):
    with lambda_local({"wukong-executor": f"{HANDLERS}:echo"}, workers=1) as lam:
        with LocalCluster(backend="lambda", endpoint_url=lam.url, region="us-east-1", **lam.cluster_options) as cluster:
            with pytest.raises(VersionMismatch, match="did not answer wukong's version probe"):
                delayed(incr)(1).compute(scheduler=Client(cluster, progress=False).get)


def test_doctor_reports_client_and_function(monkeypatch, capsys):
    for k, v in AWS_ENV.items():
        monkeypatch.setenv(k, v)
    env = {**AWS_ENV, "FAKE_VERSIONS": json.dumps({"python": "3.12.1"})}
    with LambdaLocal({"wukong-executor": f"{HANDLERS}:fake_versions"}, workers=1, env=env) as lam:
        assert doctor(["--function-name", "wukong-executor", "--endpoint-url", lam.url, "--region", "us-east-1"]) == 1
    out = capsys.readouterr().out
    assert f"client: python {report()['python']}" in out
    assert "function wukong-executor: python 3.12.1" in out and "MISMATCH" in out


def test_doctor_reads_a_zip_and_redis(tmp_path, redis_server, capsys):
    import zipfile

    z = tmp_path / "f.zip"
    with zipfile.ZipFile(z, "w") as f:
        f.writestr("wukong/__init__.py", '__version__ = "0.1.0"\n')
        f.writestr("wukong/_core/partition.cpython-312-x86_64-linux-gnu.so", b"")
        f.writestr(f"numpy-{report()['numpy']}.dist-info/METADATA", "")
    host, port = redis_server.endpoint
    url = f"redis://:{redis_server.password}@{host}:{port}"
    assert doctor(["--zip", str(z), "--redis", url]) == 1
    out = capsys.readouterr().out
    assert f"zip {z}: python 3.12, cloudpickle ?, dask ?, numpy {report()['numpy']}, wukong 0.1.0" in out
    assert "MISMATCH" in out and f"redis {host}:{port}: redis_version " in out
    assert os.environ.get("FAKE_VERSIONS") is None

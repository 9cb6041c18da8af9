"""Real-world collections on small generated data, every compute on wukong (the default scheduler)."""

from __future__ import annotations

import dask
import numpy as np
import pandas as pd
import pytest
from conftest import job_keys

from wukong import Client

dd = pytest.importorskip("dask.dataframe")
db = pytest.importorskip("dask.bag")


@pytest.fixture
def client(cluster):
    """The default scheduler while the test runs: Dask's own inner computes go to wukong too."""
    with Client(cluster, progress=False, set_as_default=True) as c:
        yield c
    assert job_keys(cluster) == [], "a job left keys behind"


@pytest.fixture
def frames():
    rng = np.random.default_rng(0)
    n = 2000
    left = pd.DataFrame({"k": rng.integers(0, 50, n), "x": rng.normal(size=n), "g": rng.choice(list("abcde"), n)})
    right = pd.DataFrame({"k": np.arange(50), "y": np.arange(50) * 10.0})
    return left, right


def same_as_sync(collection):
    """Computed on wukong (the default scheduler) and on Dask's sync scheduler: equal; the wukong result."""
    got = collection.compute()
    want = collection.compute(scheduler="sync")
    if isinstance(got, pd.DataFrame | pd.Series):
        check = pd.testing.assert_frame_equal if isinstance(got, pd.DataFrame) else pd.testing.assert_series_equal
        check(got, want)
    return got


def test_groupby_aggregate(client, frames):
    left, _ = frames
    jobs = len(client.jobs)
    got = same_as_sync(dd.from_pandas(left, npartitions=8).groupby("g").agg({"x": ["sum", "mean", "count"]}))
    want = left.groupby("g").agg({"x": ["sum", "mean", "count"]})
    pd.testing.assert_frame_equal(got.sort_index(), want.sort_index(), check_index_type=False)
    assert len(client.jobs) == jobs + 1


def test_shuffle_based_merge(client, frames):
    left, right = frames
    a, b = dd.from_pandas(left, npartitions=6), dd.from_pandas(right, npartitions=3)
    got = same_as_sync(dd.merge(a, b, on="k", shuffle_method="tasks"))
    want = left.merge(right, on="k")
    cols = ["k", "x", "g", "y"]
    pd.testing.assert_frame_equal(
        got[cols].sort_values(cols).reset_index(drop=True),
        want[cols].sort_values(cols).reset_index(drop=True),
        check_dtype=False,
    )


def test_set_index_runs_its_quantiles_on_wukong(client, frames):
    left, _ = frames
    before = len(client.jobs)
    ddf = dd.from_pandas(left, npartitions=8).set_index("x")
    assert ddf.known_divisions  # Dask computed the divisions' quantiles: a bare compute, on wukong
    assert len(client.jobs) == before + 1
    got = same_as_sync(ddf)
    pd.testing.assert_frame_equal(got, left.set_index("x").sort_index(), check_dtype=False)


def test_parquet_round_trip(client, frames, tmp_path):
    pytest.importorskip("pyarrow")
    left, _ = frames
    dd.from_pandas(left, npartitions=4).to_parquet(str(tmp_path / "pq"))
    got = same_as_sync(dd.read_parquet(str(tmp_path / "pq")))
    pd.testing.assert_frame_equal(got.reset_index(drop=True), left.reset_index(drop=True), check_dtype=False)


def test_read_csv_of_generated_files(client, frames, tmp_path):
    left, _ = frames
    for i in range(4):
        left.iloc[i * 500 : (i + 1) * 500].to_csv(tmp_path / f"part-{i}.csv", index=False)
    ddf = dd.read_csv(str(tmp_path / "part-*.csv"))
    assert ddf.npartitions == 4
    got = same_as_sync(ddf.groupby("g").x.sum())
    want = left.groupby("g").x.sum()
    pd.testing.assert_series_equal(got.sort_index(), want.sort_index(), check_exact=False, check_index_type=False)


WORDS = ["the quick brown fox", "jumps over the lazy dog", "the dog barks", "a fox runs"] * 25


def test_bag_word_count_and_frequencies(client):
    bag = db.from_sequence(WORDS, npartitions=5)
    counts = dict(bag.map(str.split).flatten().frequencies().compute())
    want: dict[str, int] = {}
    for line in WORDS:
        for w in line.split():
            want[w] = want.get(w, 0) + 1
    assert counts == want


def test_bag_foldby(client):
    bag = db.from_sequence(range(1000), npartitions=8)
    got = dict(bag.foldby(lambda x: x % 7, lambda acc, x: acc + x, 0, lambda a, b: a + b, 0).compute())
    assert got == {r: sum(x for x in range(1000) if x % 7 == r) for r in range(7)}


def test_xarray_on_dask_arrays(client):
    xr = pytest.importorskip("xarray")
    rng = np.random.default_rng(1)
    data = rng.normal(size=(24, 10, 12))
    ds = xr.Dataset(
        {"t": (("time", "lat", "lon"), data)},
        coords={"time": np.arange(24) % 12, "lat": np.arange(10), "lon": np.arange(12)},
    ).chunk({"time": 6, "lat": 5})
    clim = ds.t.groupby("time").mean().compute()
    anomaly = (ds.t - ds.t.mean("time")).std("lon").compute()
    want = ds.compute()
    np.testing.assert_allclose(clim.values, want.t.groupby("time").mean().values)
    np.testing.assert_allclose(anomaly.values, (want.t - want.t.mean("time")).std("lon").values)


def test_dask_ml_parallel_post_fit_svc(client):
    """The seed's example: fit on a small sample, predict over a large dask array in parallel."""
    pytest.importorskip("dask_ml")
    import dask.array as da
    from dask_ml.wrappers import ParallelPostFit
    from sklearn.datasets import make_classification
    from sklearn.svm import SVC

    X, y = make_classification(n_samples=400, n_features=8, random_state=0)
    clf = ParallelPostFit(SVC(gamma="scale")).fit(X[:100], y[:100])
    X_big = da.from_array(np.tile(X, (5, 1)), chunks=200)
    got = clf.predict(X_big).compute()
    np.testing.assert_array_equal(got, clf.estimator.predict(np.tile(X, (5, 1))))


def test_a_disk_shuffle_is_refused_with_a_clear_error(cluster):
    from wukong import GraphError

    with Client(cluster, progress=False) as client:
        bag = db.from_sequence(range(10), npartitions=3).groupby(lambda x: x % 2, shuffle="disk")
        with pytest.raises(GraphError, match="shuffle='tasks'"):
            bag.compute(scheduler=client)
    assert job_keys(cluster) == []


def test_the_default_scheduler_shuffles_by_tasks(client):
    assert dask.config.get("dataframe.shuffle.method") == "tasks"
    groups = dict(db.from_sequence(range(10), npartitions=3).groupby(lambda x: x % 2).compute())
    assert {k: sorted(v) for k, v in groups.items()} == {0: [0, 2, 4, 6, 8], 1: [1, 3, 5, 7, 9]}

"""Random DAGs with fan-ins and fan-outs give what ``scheduler="sync"`` gives."""

import dask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


def combine(i, *parents):
    return (i * 7 + sum(p * (j + 1) for j, p in enumerate(parents))) % 1_000_003


@st.composite
def dags(draw):
    n = draw(st.integers(1, 300))
    dsk = {}
    for i in range(n):
        k = draw(st.integers(0, min(i, 6)))
        parents = sorted(draw(st.sets(st.integers(0, i - 1), min_size=k, max_size=k))) if i else []
        dsk[f"t{i}"] = (combine, i, *[f"t{p}" for p in parents])
    outputs = draw(st.lists(st.sampled_from(sorted(dsk)), min_size=1, max_size=5, unique=True))
    return dsk, outputs


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(dags())
def test_random_dag_equals_sync(client, dag):
    dsk, outputs = dag
    assert client.get(dsk, outputs) == dask.get(dsk, outputs)

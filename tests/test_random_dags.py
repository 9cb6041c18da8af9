"""Random DAGs with fan-ins and fan-outs give what ``scheduler="sync"`` gives."""

import dask
from conftest import dags
from hypothesis import HealthCheck, given, settings


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(dags(max_tasks=300))
def test_random_dag_equals_sync(client, dag):
    dsk, outputs = dag
    assert client.get(dsk, outputs) == dask.get(dsk, outputs)

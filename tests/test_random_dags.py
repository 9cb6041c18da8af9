"""Random DAGs with fan-ins and fan-outs give what ``scheduler="sync"`` gives."""

import dask
from conftest import dags
from hypothesis import HealthCheck, given, settings


def random_dags_test(examples: int):
    """The property on ``examples`` random DAGs, run with the ``client`` fixture of the
    module that holds it (other modules run it on their own backends)."""

    @settings(max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(dags(max_tasks=300))
    def test(client, dag):
        dsk, outputs = dag
        assert client.get(dsk, outputs) == dask.get(dsk, outputs)

    return test


test_random_dag_equals_sync = random_dags_test(40)

"""Dask's own conformance suite for ``get`` functions, run against ``client.get``."""

import pytest
from dask.utils_test import GetFunctionTestMixin


class TestClientGet(GetFunctionTestMixin):
    @pytest.fixture(autouse=True)
    def _use_client(self, client):
        self.get = client.get

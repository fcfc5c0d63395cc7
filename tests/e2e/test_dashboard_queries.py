"""Every PromQL query of the dashboards, with the variables of the sample service substituted,
returns data from the real Prometheus after load. Queries that need something this run did not
do (a fault, an alert, a deployment, the servicegraph connector) are skipped with that reason."""

from __future__ import annotations

import time

import httpx
import pytest
from cases import requests
from harness import StackUnderTest, require

from mlobs.dashboards import promql_queries_for_e2e

pytestmark = pytest.mark.e2e
QUERIES = promql_queries_for_e2e({"__rate_interval": "2m"})


@pytest.fixture(scope="module")
def loaded(sut: StackUnderTest) -> StackUnderTest:
    require(sut, ("prometheus",))
    requests(60, seed=71, feedback_share=0.5)(sut)
    sut.predict({"features": {"mean_radius": "not a number"}})  # one invalid request: warn logs, error spans
    return sut


@pytest.mark.parametrize("query", QUERIES, ids=[f"{q.dashboard}/{q.panel}/{i}" for i, q in enumerate(QUERIES)])
def test_panel_query_returns_data(loaded: StackUnderTest, query) -> None:
    if query.reason:
        pytest.skip(query.reason)
    deadline = time.monotonic() + 90
    rows: list = []
    while time.monotonic() < deadline:
        try:
            rows = loaded.promql(query.expr)
        except httpx.HTTPStatusError as e:
            pytest.fail(f"{query.dashboard} / {query.panel}: Prometheus refused {query.expr}: {e.response.text}")
        if rows:
            return
        time.sleep(3)
    pytest.fail(f"{query.dashboard} / {query.panel}: no data for {query.expr}")

"""Every PromQL query of the dashboards, with the variables of the sample service substituted,
returns data from the real Prometheus after load. Queries that need something this run did not
do (a fault, an alert, a deployment, the servicegraph connector) are skipped with that reason."""

from __future__ import annotations

import re
import time

import httpx
import pytest
from cases import requests
from harness import StackUnderTest, require

from mlobs.dashboards import promql_queries_for_e2e

pytestmark = pytest.mark.e2e
QUERIES = promql_queries_for_e2e({"__rate_interval": "2m"})
# The collector has an exporter per backend that runs: its per-signal exporter counters exist
# only where that backend does.
NEEDS = [
    (re.compile(r"otelcol_exporter_\w+_spans"), "tempo"),
    (re.compile(r"otelcol_exporter_\w+_log_records"), "loki"),
]


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
    for pattern, backend in NEEDS:
        if pattern.search(query.expr) and not loaded.has(backend):
            pytest.skip(f"the collector exports to {backend} only where it runs: {loaded.why_missing(backend)}")
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

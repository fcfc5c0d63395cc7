"""`mlobs verify` against the stack under test: every link of a running component is found;
links of absent components are reported as such, never as found."""

from __future__ import annotations

import pytest
from harness import StackUnderTest, require

from mlobs import verify
from mlobs.contract import STAGES

pytestmark = pytest.mark.e2e


def test_verify_follows_one_request_across_the_signals(sut: StackUnderTest) -> None:
    require(sut, ("prometheus",))
    ep = verify.Endpoints.from_stack(sut.stack)
    req, links = verify.verify(ep, timeout=90)
    assert req is not None
    by_name = {link.name: link for link in links}
    missing = [f"{link.name}: {link.detail}" for link in links if link.status == verify.MISSING]
    assert not missing, missing
    for stage in STAGES:
        assert by_name[f"span metrics: {stage}"].status == verify.OK
    assert by_name["request latency exemplar"].status == verify.OK
    assert by_name["stage latency exemplars"].status == verify.OK
    traces, logs = sut.traces, sut.logs
    trace_link = f"trace in {traces.name}" if traces else "trace"
    assert by_name[trace_link].status == (verify.OK if traces else verify.NOT_RUNNING), by_name[trace_link]
    assert by_name["logs with the trace id"].status == (verify.OK if logs else verify.NOT_RUNNING)
    if traces:
        # With a trace store every link is found: the service graph from the connector or, natively,
        # from the stored trace's CLIENT span to the feature store.
        assert by_name["service graph"].status == verify.OK, by_name["service graph"]
        assert "mlobs-feature-store" in by_name["service graph"].detail
    for link in links:
        if link.status != verify.OK:
            print(f"verify: {link.name}: {link.status}: {link.detail}")

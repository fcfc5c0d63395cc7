"""`mlobs verify` against the stack under test: every link of a running component is found;
links of absent components are reported as such, never as found."""

from __future__ import annotations

import pytest
from harness import StackUnderTest, require

from mlobs import verify

pytestmark = pytest.mark.e2e


def test_verify_follows_one_request_across_the_signals(sut: StackUnderTest) -> None:
    require(sut, ("prometheus",))
    ep = verify.Endpoints.from_stack(sut.stack)
    req, links = verify.verify(ep, timeout=90)
    assert req is not None
    by_name = {link.name: link for link in links}
    missing = [f"{link.name}: {link.detail}" for link in links if link.status == verify.MISSING]
    assert not missing, missing
    for stage in verify.STAGES:
        assert by_name[f"span metrics: {stage}"].status == verify.OK
    assert by_name["request latency exemplar"].status == verify.OK
    assert by_name["stage latency exemplars"].status == verify.OK
    for name, component in (("trace in Tempo", "tempo"), ("logs with the trace id", "loki")):
        expected = verify.OK if sut.has(component) else verify.NOT_RUNNING
        assert by_name[name].status == expected, by_name[name]
    for link in links:
        if link.status != verify.OK:
            print(f"verify: {link.name}: {link.status}: {link.detail}")

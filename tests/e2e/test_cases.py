"""Runs every case of cases.py against the stack under test; each expectation retried to its deadline."""

from __future__ import annotations

import pytest
from cases import CASES
from harness import Case, eventually, require

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_case(sut, case: Case) -> None:
    require(sut, case.needs)
    facts = case.run(sut)
    for expectation in case.expect:
        eventually(sut, facts, expectation)
    if case.then:
        case.then(sut, facts)
        for expectation in case.expect_after:
            eventually(sut, facts, expectation)

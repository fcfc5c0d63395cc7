"""Each fault of the sample service fires the alert it should and no other model alert; the
analyzer receives it through Alertmanager and names the cause; the alert resolves once the
fault stops. Runs on the fast profile of tests/stack.test.yaml (1m rate window, `for: 15s`)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from harness import StackUnderTest, Traffic, require, require_fast_profile

pytestmark = pytest.mark.e2e

# The alerts a fault of the sample service can cause; the others watch the stack itself.
MODEL_ALERTS = {"MLErrorRatioHigh", "MLStageLatencyHigh", "MLModelAccuracyLow", "MLModelF1Low",
                "MLFeatureDriftHigh", "MLServiceDown", "MLFeedbackLabelsMissing"}


@dataclass
class AlertCase:
    fault: dict[str, Any]
    alert: str
    labels: dict[str, str] = field(default_factory=dict)
    suspect: str = ""  # the analyzer's top finding kind
    subject: str = ""


CASES = [
    AlertCase({"fault": "errors", "rate": 0.5}, "MLErrorRatioHigh", suspect="errors"),
    AlertCase({"fault": "latency", "stage": "inference", "seconds": 0.8}, "MLStageLatencyHigh",
              {"ml_stage": "inference"}, suspect="stage_latency", subject="inference"),
    AlertCase({"fault": "slow_lookup", "seconds": 0.8}, "MLStageLatencyHigh",
              {"ml_stage": "feature_extraction"}, suspect="downstream_latency", subject="feature_lookup"),
    AlertCase({"fault": "drift", "features": ["mean_radius"], "scale": 3.0}, "MLFeatureDriftHigh",
              {"ml_feature": "mean_radius"}, suspect="drift", subject="mean_radius"),
]


def firing(sut: StackUnderTest) -> list[dict[str, Any]]:
    return [a for a in sut.alerts() if a["state"] == "firing"]


def matches(alert: dict[str, Any], case: AlertCase) -> bool:
    labels = alert["labels"]
    return labels["alertname"] == case.alert and all(labels.get(k) == v for k, v in case.labels.items())


def wait_for(predicate, what: str, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(3)
    raise AssertionError(f"{what}: not within {timeout:.0f}s (last: {last!r})")


def analyzer_incident(sut: StackUnderTest, case: AlertCase) -> dict[str, Any] | None:
    r = httpx.get(f"{sut.url('analyzer')}/incidents", timeout=10)
    r.raise_for_status()
    body = r.json()
    items = body if isinstance(body, list) else body.get("incidents", [])
    for incident in items:
        labels = incident.get("labels", {})
        if (incident.get("alertname") == case.alert and incident.get("status") == "firing"
                and all(labels.get(k) == v for k, v in case.labels.items())):
            return incident
    return None


@pytest.fixture(scope="module")
def traffic(sut: StackUnderTest):
    """Steady traffic for the whole module, after a clean warm-up that gives the analyzer a
    baseline to compare with (tests/stack.test.yaml: analyzer windows of 90s and 10m)."""
    require(sut, ("prometheus", "alertmanager"))
    require_fast_profile(sut)
    with Traffic(sut, seed=7, pause=0.02) as t:
        time.sleep(WARM_UP_SECONDS)
        yield t


WARM_UP_SECONDS = 150


@pytest.mark.parametrize("case", CASES, ids=[c.fault["fault"] for c in CASES])
def test_fault_fires_its_alert_and_no_other(sut: StackUnderTest, traffic: Traffic, case: AlertCase) -> None:
    try:
        with sut.fault(**case.fault):
            alert = wait_for(lambda: next((a for a in firing(sut) if matches(a, case)), None),
                             f"{case.alert} {case.labels} firing", 240)
            others = {a["labels"]["alertname"] for a in firing(sut)
                      if a["labels"]["alertname"] in MODEL_ALERTS and not matches(a, case)}
            assert not others, f"{case.fault['fault']} also fired {sorted(others)} besides {case.alert}"
            assert alert["labels"]["severity"] in ("critical", "warning")
            assert "ml_model_version" in alert["labels"]
            if sut.has("analyzer"):
                incident = wait_for(lambda: analyzer_incident(sut, case),
                                    f"the analyzer's incident for {case.alert}", 120)
                top = incident["top_suspect"]
                assert top["kind"] == case.suspect, top
                if case.subject:
                    assert top["subject"] == case.subject, top
    finally:
        # Also after a failure: the next case starts with no alert of this one left.
        wait_for(lambda: not any(matches(a, case) for a in sut.alerts()), f"{case.alert} resolved", 300)

"""Continuous detection: change points (ruptures + BARO's robust scaler), incidents the detector
opens by itself, alerts that join them."""

from __future__ import annotations

import numpy as np
from analyzer_fakes import (
    JOB,
    NOW,
    POINTS,
    ServicePrometheus,
    alert,
    fault_errors_inference,
    fault_latency_inference,
    fault_slow_lookup,
    healthy,
    payload,
)

from analyzer import rca
from analyzer.changepoint import find_change
from analyzer.detector import discover


def test_a_step_is_found_where_it_is_and_scored_against_the_points_before() -> None:
    rng = np.random.default_rng(1)
    values = np.concatenate([0.01 + rng.normal(0, 0.0005, 40), 0.3 + rng.normal(0, 0.0005, 7)])
    change = find_change(values, min_scale=0.001)
    assert change is not None and change.index == 40
    assert change.before_median < 0.011 and change.after_median > 0.29
    assert change.robust_z > 100


def test_noise_and_flat_series_have_no_strong_change() -> None:
    rng = np.random.default_rng(2)
    noise = find_change(0.01 + rng.normal(0, 0.0005, 47), min_scale=0.001)
    assert noise is None or abs(noise.robust_z) < 3.5
    assert find_change(np.full(47, 0.02)) is None
    assert find_change([np.nan] * 47) is None


def test_one_spike_after_the_change_point_does_not_make_a_change() -> None:
    values = np.full(47, 0.01)
    values[45] = 1.0
    change = find_change(values, min_scale=0.001)
    assert change is None or change.robust_z < 3.5


def test_discovery_lists_services_and_leaves_out_the_excluded() -> None:
    prom = ServicePrometheus(healthy(), services=((JOB, JOB), ("shop/cart", "cart"), ("a", "mlobs-analyzer")))
    targets = discover(prom, NOW, frozenset({"mlobs-analyzer"}))
    assert [(t.job, t.service_name) for t in targets] == [("shop/cart", "cart"), (JOB, JOB)]


def test_a_healthy_service_opens_nothing(make_client) -> None:
    prom = ServicePrometheus(healthy())
    client = make_client(prometheus=prom)
    detector = client.app.state.detector
    for i in range(3):
        assert detector.tick(NOW + i * rca.STEP_SECONDS) == []
    assert client.get("/incidents").json() == []


def test_a_change_opens_an_incident_by_itself_after_hits_a_step_of_data_apart(make_client) -> None:
    prom = ServicePrometheus(fault_slow_lookup())
    client = make_client(prometheus=prom)
    detector = client.app.state.detector
    assert detector.tick(NOW) == [], "one hit is not enough"
    assert detector.tick(NOW + 1) == [], "a second look at the same data confirms nothing"
    [incident] = detector.tick(NOW + rca.STEP_SECONDS)
    assert incident.source == "detector" and incident.status == "firing" and incident.service == JOB
    assert (incident.top_suspect.kind, incident.top_suspect.subject) == ("downstream_latency", "feature_lookup")
    # The fake's fault covers the last 6 points of the grid, which ends at the tick itself.
    start = NOW + rca.STEP_SECONDS - rca.BASELINE_SECONDS - rca.RECENT_SECONDS
    assert incident.change_point.timestamp() == start + (POINTS - 6) * 60
    assert incident.fingerprint.startswith("cp-")
    listed = client.get("/incidents").json()
    assert [i["fingerprint"] for i in listed] == [incident.fingerprint]
    assert listed[0]["source"] == "detector"
    assert not any("ml_fault_active" in q for q in prom.asked)


def test_an_alert_joins_the_open_incident_of_its_service(make_client) -> None:
    prom = ServicePrometheus(fault_latency_inference())
    client = make_client(prometheus=prom)
    detector = client.app.state.detector
    detector.tick(NOW)
    [opened] = detector.tick(NOW + rca.STEP_SECONDS)
    r = client.post("/alerts", json=payload(alert("MLStageLatencyHigh", labels={"ml_stage": "inference"})))
    assert r.json()["results"][0]["incident"] == opened.fingerprint
    [incident] = client.get("/incidents").json()
    assert incident["fingerprint"] == opened.fingerprint and incident["source"] == "detector"
    assert incident["alertname"] == "MLStageLatencyHigh" and incident["labels"]["ml_stage"] == "inference"
    assert [a["alertname"] for a in incident["alerts"]] == ["MLStageLatencyHigh"]
    assert incident["top_suspect"]["kind"] == "stage_latency"
    # The alert's fingerprint finds the incident too.
    assert client.get("/incidents/a1b2c3d4e5f60718").json()["fingerprint"] == opened.fingerprint


def test_an_alert_of_another_service_opens_its_own_incident(make_client) -> None:
    prom = ServicePrometheus(fault_errors_inference())
    client = make_client(prometheus=prom)
    detector = client.app.state.detector
    detector.tick(NOW)
    detector.tick(NOW + rca.STEP_SECONDS)
    other = alert("ServiceDown", fingerprint="0000111122223333", service={"job": "other-service"})
    client.post("/alerts", json=payload(other))
    listed = client.get("/incidents").json()
    assert sorted(i["source"] for i in listed) == ["alert", "detector"]


def test_the_later_of_two_alerts_does_not_replace_the_first_as_primary(make_client) -> None:
    client = make_client(fault_errors_inference())
    first = alert("MLErrorRatioHigh", fingerprint="1111", starts_at="2027-01-15T08:00:00Z")
    later = alert("ServiceErrorRatioHigh", fingerprint="2222", starts_at="2027-01-15T08:02:00Z")
    client.post("/alerts", json=payload(later))
    client.post("/alerts", json=payload(first))
    [incident] = client.get("/incidents").json()
    assert incident["alertname"] == "MLErrorRatioHigh", "named for the alert that fired first"
    assert len(incident["alerts"]) == 2
    # An anomaly band that started even earlier, about the service: the model's threshold alert still names it.
    band = alert("ServiceErrorRatioAnomaly", fingerprint="3333", starts_at="2027-01-15T07:59:00Z",
                 service={"service_name": JOB, "job": JOB, "span_name": "POST /predict"})
    client.post("/alerts", json=payload(band))
    [incident] = client.get("/incidents").json()
    assert incident["alertname"] == "MLErrorRatioHigh" and len(incident["alerts"]) == 3
    client.post("/alerts", json=payload(alert("ServiceErrorRatioAnomaly", status="resolved", fingerprint="3333",
                                              ends_at="2027-01-15T08:05:00Z")))
    # The first resolves: the one still firing names the incident, which stays open.
    client.post("/alerts", json=payload(alert("MLErrorRatioHigh", status="resolved", fingerprint="1111",
                                              ends_at="2027-01-15T08:10:00Z")))
    [incident] = client.get("/incidents").json()
    assert incident["status"] == "firing" and incident["alertname"] == "ServiceErrorRatioHigh"
    client.post("/alerts", json=payload(alert("ServiceErrorRatioHigh", status="resolved", fingerprint="2222",
                                              ends_at="2027-01-15T08:12:00Z")))
    [incident] = client.get("/incidents").json()
    assert incident["status"] == "resolved"

"""Annotations in a fake Grafana (httpx.MockTransport): tags, text, region end, quiet skips."""

from __future__ import annotations

import json
import logging
from datetime import datetime

from analyzer_fakes import FakeGrafana, alert, fault_drift_mean_radius, fault_latency_inference, payload


def _json(request) -> dict:
    return json.loads(request.content)


def _ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso).timestamp() * 1000)


def test_a_firing_alert_is_annotated_with_the_top_suspect(make_client, grafana: FakeGrafana) -> None:
    client = make_client(fault_latency_inference())
    client.post("/alerts", json=payload(alert()))
    [request] = grafana.requests
    assert (request.method, request.url.path) == ("POST", "/api/annotations")
    assert request.headers["authorization"].startswith("Basic ")
    body = _json(request)
    assert body["tags"] == ["mlobs", "alert", "MLLatencyAnomaly", "stage_latency"]
    assert body["time"] == _ms("2027-01-15T08:00:00+00:00")  # the alert's startsAt
    assert "top suspect stage_latency inference" in body["text"]
    assert "mlobs-inference breast-cancer-classifier v1" in body["text"]
    assert client.get("/incidents/a1b2c3d4e5f60718").json()["annotation_id"] == 41


def test_the_kind_tag_follows_the_suspect(make_client, grafana: FakeGrafana) -> None:
    make_client(fault_drift_mean_radius()).post("/alerts", json=payload(alert(alertname="MLFeatureDriftHigh")))
    assert _json(grafana.requests[0])["tags"] == ["mlobs", "alert", "MLFeatureDriftHigh", "drift"]


def test_resolving_patches_the_end_time(make_client, grafana: FakeGrafana) -> None:
    client = make_client(fault_latency_inference())
    client.post("/alerts", json=payload(alert()))
    client.post("/alerts", json=payload(alert(status="resolved", ends_at="2027-01-15T08:20:00Z")))
    patch = grafana.requests[-1]
    assert (patch.method, patch.url.path) == ("PATCH", "/api/annotations/41")
    assert _json(patch) == {"timeEnd": _ms("2027-01-15T08:20:00+00:00")}


def test_a_repeated_notification_updates_the_same_annotation(make_client, grafana: FakeGrafana) -> None:
    client = make_client(fault_latency_inference())
    client.post("/alerts", json=payload(alert()))
    client.post("/alerts", json=payload(alert()))
    assert [(r.method, r.url.path) for r in grafana.requests] == [
        ("POST", "/api/annotations"),
        ("PATCH", "/api/annotations/41"),
    ]
    assert _json(grafana.requests[1])["tags"][-1] == "stage_latency"


def test_a_token_is_sent_as_bearer(make_client, grafana: FakeGrafana) -> None:
    make_client(annotator=grafana.annotator(token="glsa_test")).post("/alerts", json=payload(alert()))
    assert grafana.requests[0].headers["authorization"] == "Bearer glsa_test"


def test_without_credentials_nothing_is_sent_and_one_line_is_logged(make_client, grafana, caplog) -> None:
    client = make_client(annotator=grafana.annotator(user="admin"))
    with caplog.at_level(logging.INFO, logger="analyzer.grafana"):
        client.post("/alerts", json=payload(alert(fingerprint="one")))
        client.post("/alerts", json=payload(alert(fingerprint="two")))
    assert grafana.requests == []
    skipped = [r for r in caplog.records if r.name == "analyzer.grafana"]
    assert len(skipped) == 1 and "no credentials" in skipped[0].getMessage()
    assert client.get("/incidents/one").json()["annotation_id"] is None


def test_grafana_down_is_skipped_quietly(make_client, caplog) -> None:
    down = FakeGrafana(down=True)
    client = make_client(annotator=down.annotator())
    with caplog.at_level(logging.INFO, logger="analyzer.grafana"):
        for fingerprint in ("one", "two"):
            body = payload(alert(fingerprint=fingerprint, labels={"job": f"service-{fingerprint}"}))
            assert client.post("/alerts", json=body).status_code == 200
    skipped = [r for r in caplog.records if r.name == "analyzer.grafana"]
    assert len(skipped) == 1 and "does not answer" in skipped[0].getMessage()
    assert [i["annotation_id"] for i in client.get("/incidents").json()] == [None, None]

"""The webhook: Alertmanager's payload in, a 422 naming the field when it is wrong, never a 500."""

from __future__ import annotations

import copy
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from analyzer_fakes import BrokenPrometheus, FakePrometheus, World, alert, fault_latency_inference, payload

ROOT = Path(__file__).resolve().parents[2]


def test_a_firing_alert_is_analysed_and_kept(make_client) -> None:
    client = make_client(fault_latency_inference())
    r = client.post("/alerts", json=payload(alert()))
    assert r.status_code == 200, r.text
    result = r.json()["results"][0]
    assert result["action"] == "analysed"
    assert (result["top_suspect"]["kind"], result["top_suspect"]["subject"]) == ("stage_latency", "inference")

    incident = client.get("/incidents/a1b2c3d4e5f60718").json()
    assert incident["alertname"] == "MLLatencyAnomaly"
    assert incident["status"] == "firing"
    assert incident["ends_at"] is None, "Alertmanager's zero endsAt of a firing alert is no end"
    assert incident["top_suspect"]["kind"] == "stage_latency"
    assert incident["links"]["tempo_explore"].startswith("http://grafana:3000/explore?")


def _broken(mutate) -> dict:
    body = payload(alert())
    mutate(body)
    return body


@pytest.mark.parametrize(
    ("mutate", "loc"),
    [
        (lambda b: b.update(version="3"), ["body", "version"]),
        (lambda b: b.update(status="burning"), ["body", "status"]),
        (lambda b: b.pop("alerts"), ["body", "alerts"]),
        (lambda b: b.update(alerts={"not": "a list"}), ["body", "alerts"]),
        (lambda b: b["alerts"][0].update(status="pending"), ["body", "alerts", 0, "status"]),
        (lambda b: b["alerts"][0].pop("startsAt"), ["body", "alerts", 0, "startsAt"]),
        (lambda b: b["alerts"][0].update(startsAt="yesterday"), ["body", "alerts", 0, "startsAt"]),
        (lambda b: b["alerts"][0].update(labels={"job": "x"}), ["body", "alerts", 0, "labels"]),
        (lambda b: b["alerts"][0]["labels"].update(severity=3), ["body", "alerts", 0, "labels", "severity"]),
    ],
    ids=[
        "version",
        "status",
        "no-alerts",
        "alerts-not-a-list",
        "alert-status",
        "no-startsAt",
        "bad-startsAt",
        "no-alertname",
        "label-not-a-string",
    ],
)
def test_a_bad_payload_is_422_naming_the_field(make_client, mutate, loc) -> None:
    r = make_client().post("/alerts", json=_broken(mutate))
    assert r.status_code == 422, r.text
    body = r.json()
    assert loc in [e["loc"] for e in body["detail"]], body
    assert ".".join(map(str, loc)) in body["message"]


def test_a_missing_alertname_says_so(make_client) -> None:
    r = make_client().post("/alerts", json=_broken(lambda b: b["alerts"][0].update(labels={"job": "x"})))
    assert "alertname" in r.json()["message"]


def test_a_body_that_is_not_json_is_422(make_client) -> None:
    r = make_client().post("/alerts", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 422


def test_random_bytes_of_another_content_type_are_422_not_500(make_client) -> None:
    """Not JSON and not UTF-8: the error body shows the bytes cut, it does not fail to encode them."""
    raw = bytes(range(256)) * 4
    r = make_client().post("/alerts", content=raw, headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 422, r.text
    assert "1024 bytes" in r.text


def test_extra_fields_from_newer_alertmanagers_are_accepted(make_client) -> None:
    body = payload(alert())
    body["somethingNew"] = {"x": 1}
    body["alerts"][0]["somethingElse"] = "y"
    assert make_client().post("/alerts", json=body).status_code == 200


def test_prometheus_down_still_answers_200_with_unknown(make_client) -> None:
    client = make_client(prometheus=BrokenPrometheus())
    r = client.post("/alerts", json=payload(alert()))
    assert r.status_code == 200
    assert r.json()["results"][0]["top_suspect"]["kind"] == "unknown"
    assert client.get("/incidents/a1b2c3d4e5f60718").json()["errors"]


class _Garbage(FakePrometheus):
    """Answers that are not series at all: the analysis itself breaks."""

    def query_range(self, expr, start, end, step):
        return [object()]


def test_an_analysis_that_breaks_is_reported_never_a_500(make_client) -> None:
    client = make_client(prometheus=_Garbage(World()))
    second = alert(fingerprint="ffff000011112222")
    r = client.post("/alerts", json=payload(alert(), second))
    assert r.status_code == 200
    assert [x["action"] for x in r.json()["results"]] == ["failed", "failed"]


def test_incidents_are_bounded_and_newest_first(make_client) -> None:
    client = make_client(max_incidents=3)
    for i in range(5):
        # Alerts about different services: each opens its own incident (one service's would join one).
        body = payload(alert(fingerprint=f"fp{i}", labels={"job": f"service-{i}"}))
        assert client.post("/alerts", json=body).status_code == 200
    listed = client.get("/incidents").json()
    assert [i["fingerprint"] for i in listed] == ["fp4", "fp3", "fp2"]
    assert client.get("/incidents/fp0").status_code == 404
    assert "keeps the last 3" in client.get("/incidents/fp0").json()["detail"]
    assert [i["fingerprint"] for i in client.get("/incidents", params={"limit": 1}).json()] == ["fp4"]


def test_a_second_notification_replaces_rather_than_duplicates(make_client) -> None:
    client = make_client()
    client.post("/alerts", json=payload(alert()))
    client.post("/alerts", json=payload(alert()))
    assert len(client.get("/incidents").json()) == 1


def test_resolved_closes_the_incident(make_client) -> None:
    client = make_client(fault_latency_inference())
    client.post("/alerts", json=payload(alert()))
    done = alert(status="resolved", ends_at="2027-01-15T08:20:00Z")
    r = client.post("/alerts", json=payload(done))
    assert r.json()["results"][0]["action"] == "resolved"
    incident = client.get("/incidents/a1b2c3d4e5f60718").json()
    assert incident["status"] == "resolved"
    assert incident["ends_at"].startswith("2027-01-15T08:20:00")
    assert incident["top_suspect"]["kind"] == "stage_latency", "the analysis made while firing is kept"


def test_resolved_without_firing_first_is_ignored(make_client) -> None:
    r = make_client().post("/alerts", json=payload(alert(status="resolved", ends_at="2027-01-15T08:20:00Z")))
    assert r.status_code == 200
    assert r.json()["results"][0]["action"].startswith("ignored")


def test_a_fingerprint_is_made_when_missing(make_client) -> None:
    client = make_client()
    body = payload(alert())
    del body["alerts"][0]["fingerprint"]
    other = copy.deepcopy(body)
    other["alerts"][0]["labels"]["ml_model_version"] = "2"
    first = client.post("/alerts", json=body).json()["results"][0]["fingerprint"]
    again = client.post("/alerts", json=body).json()["results"][0]["fingerprint"]
    second = client.post("/alerts", json=other).json()["results"][0]["fingerprint"]
    assert first == again != second


def test_links_point_where_a_browser_reaches_grafana(make_client) -> None:
    client = make_client(fault_latency_inference(), grafana_public_url="http://127.0.0.1:3000")
    client.post("/alerts", json=payload(alert()))
    links = client.get("/incidents/a1b2c3d4e5f60718").json()["links"]
    assert all(links[k].startswith("http://127.0.0.1:3000/explore?") for k in ("prometheus_explore", "tempo_explore"))


def test_health_and_readiness(make_client) -> None:
    assert make_client().get("/healthz").json() == {"status": "ok"}
    ready = make_client().get("/readyz")
    assert ready.status_code == 200 and ready.json()["prometheus"] == "ok"
    down = make_client(prometheus=BrokenPrometheus()).get("/readyz")
    assert down.status_code == 503
    assert "127.0.0.1:9090" in down.json()["prometheus"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_python_dash_m_serves_without_telemetry(tmp_path: Path) -> None:
    port = _free_port()
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("GRAFANA_ADMIN_PASSWORD", "MLOBS_GRAFANA_TOKEN")},
        "OTEL_SDK_DISABLED": "true",
        "MLOBS_ANALYZER_PORT": str(port),
        "MLOBS_PROMETHEUS_URL": "http://127.0.0.1:9",  # nothing there: analyses come back unknown
        "MLOBS_GRAFANA_URL": "http://127.0.0.1:9",
    }
    log = (tmp_path / "analyzer.log").open("w+")
    proc = subprocess.Popen([sys.executable, "-m", "analyzer.app"], cwd=ROOT, env=env, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "analyzer.log").read_text()
                time.sleep(0.1)
        assert health.json() == {"status": "ok"}
        r = httpx.post(f"http://127.0.0.1:{port}/alerts", json=payload(alert()), timeout=10)
        assert r.status_code == 200
        assert r.json()["results"][0]["top_suspect"]["kind"] == "unknown"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
    output = (tmp_path / "analyzer.log").read_text()
    assert "top suspect unknown" in output
    assert "grafana annotations skipped" in output

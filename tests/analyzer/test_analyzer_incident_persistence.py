"""The incidents survive a restart of the analyzer: the book is kept in MLOBS_ANALYZER_STATE_FILE."""

from __future__ import annotations

import json
from pathlib import Path

from analyzer_fakes import ServicePrometheus, alert, fault_latency_inference, payload

from analyzer.incidents import IncidentBook


def test_a_new_analyzer_reads_back_every_incident_alert_and_analysis(make_client, tmp_path: Path) -> None:
    state = tmp_path / "analyzer" / "incidents.json"
    prom = ServicePrometheus(fault_latency_inference())
    first = make_client(prometheus=prom, state_file=str(state))
    r = first.post("/alerts", json=payload(alert("MLStageLatencyHigh", labels={"ml_stage": "inference"})))
    incident_id = r.json()["results"][0]["incident"]
    before = first.get("/incidents").json()
    assert state.exists() and len(json.loads(state.read_text())) == len(before) == 1
    second = make_client(prometheus=prom, state_file=str(state))  # a restart: a new process, the same file
    after = second.get("/incidents").json()
    assert after == before
    # the alert's fingerprint still finds its incident, and a resolve joins it rather than being lost
    assert second.get("/incidents/a1b2c3d4e5f60718").json()["fingerprint"] == incident_id
    resolved = payload(alert("MLStageLatencyHigh", labels={"ml_stage": "inference"}, status="resolved"),
                       status="resolved")
    second.post("/alerts", json=resolved)
    assert second.get(f"/incidents/{incident_id}").json()["status"] == "resolved"
    assert json.loads(state.read_text())[0]["incident"]["status"] == "resolved"


def test_without_a_state_file_nothing_is_written(make_client, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    client = make_client(prometheus=ServicePrometheus(fault_latency_inference()))
    client.post("/alerts", json=payload(alert("MLStageLatencyHigh", labels={"ml_stage": "inference"})))
    assert list(tmp_path.iterdir()) == []


def test_an_unreadable_file_is_set_aside_and_the_book_starts_empty(tmp_path: Path) -> None:
    state = tmp_path / "incidents.json"
    state.write_text("{not json")
    book = IncidentBook(path=state)
    assert len(book) == 0 and not state.exists()
    assert (tmp_path / "incidents.json.unreadable").read_text() == "{not json"

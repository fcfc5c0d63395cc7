"""The analyzer's own telemetry: a span, a log record and a counter per analysis; nothing when disabled."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from analyzer_fakes import TARGET, alert, fault_latency_inference, payload
from opentelemetry import trace
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from analyzer import rca
from analyzer import telemetry as tel


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple]:
    for var in ("OTEL_SDK_DISABLED", "OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES"):
        monkeypatch.delenv(var, raising=False)
    spans, reader, logs = InMemorySpanExporter(), InMemoryMetricReader(), InMemoryLogRecordExporter()
    telemetry = tel.setup_telemetry(span_exporter=spans, metric_readers=[reader], log_exporter=logs)
    yield telemetry, spans, reader, logs
    telemetry.shutdown()


def test_an_analysis_leaves_a_span_a_log_and_a_count(captured, make_client) -> None:
    telemetry, spans, reader, logs = captured
    with make_client(fault_latency_inference(), telemetry=telemetry) as client:
        assert client.post("/alerts", json=payload(alert())).status_code == 200

    finished = spans.get_finished_spans()
    [analysis] = [s for s in finished if s.name == "analyze alert"]
    assert analysis.resource.attributes["service.name"] == "mlobs-analyzer"
    assert analysis.attributes["alertname"] == "MLLatencyAnomaly"
    assert analysis.attributes["job"] == "mlobs-inference"
    assert analysis.attributes["suspect.kind"] == "stage_latency"
    assert analysis.attributes["suspect.subject"] == "inference"
    server = [s for s in finished if s.kind == trace.SpanKind.SERVER]
    assert server and analysis.parent.span_id == server[0].context.span_id, "the analysis runs inside the request"
    queries = [s for s in finished if s.name.startswith("prometheus query")]
    expected = rca.promql(TARGET)
    assert len(queries) == len(expected) and all(q.parent.span_id == analysis.context.span_id for q in queries)
    assert {q.attributes["db.query.text"] for q in queries} == set(expected.values()), "one span per query"
    assert not any("ml_fault_active" in q.attributes["db.query.text"] for q in queries)

    records = [r.log_record for r in logs.get_finished_logs() if r.log_record.attributes.get("suspect.kind")]
    [record] = records
    assert record.attributes["suspect.subject"] == "inference"
    assert record.attributes["alertname"] == "MLLatencyAnomaly"
    assert record.trace_id == analysis.context.trace_id

    points = [
        point
        for rm in reader.get_metrics_data().resource_metrics
        for sm in rm.scope_metrics
        for metric in sm.metrics
        if metric.name == "mlobs.analyzer.incidents"
        for point in metric.data.data_points
    ]
    assert [(p.attributes, p.value) for p in points] == [
        ({"alertname": "MLLatencyAnomaly", "suspect.kind": "stage_latency"}, 1)
    ]


def test_otel_sdk_disabled_runs_without_telemetry(monkeypatch: pytest.MonkeyPatch, make_client) -> None:
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    root_handlers = list(logging.getLogger().handlers)
    telemetry = tel.setup_telemetry()
    assert not telemetry.enabled
    try:
        assert len(telemetry.handlers) == 1, "console only, no OTLP handler"
        with make_client(fault_latency_inference(), telemetry=telemetry) as client:
            r = client.post("/alerts", json=payload(alert()))
        assert r.status_code == 200
        assert r.json()["results"][0]["top_suspect"]["kind"] == "stage_latency"
    finally:
        telemetry.shutdown()
    assert logging.getLogger().handlers == root_handlers


def test_otel_variables_choose_the_exporters(monkeypatch: pytest.MonkeyPatch) -> None:
    for signal in ("TRACES", "METRICS", "LOGS"):
        monkeypatch.setenv(f"OTEL_{signal}_EXPORTER", "none")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=test")
    monkeypatch.delenv("OTEL_SDK_DISABLED", raising=False)
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    telemetry = tel.setup_telemetry()
    try:
        assert telemetry.enabled
        resource = telemetry.tracer_provider.resource
        assert resource.attributes["service.name"] == "mlobs-analyzer"
        assert resource.attributes["deployment.environment.name"] == "test"
    finally:
        telemetry.shutdown()


def test_the_analyzer_leaves_the_global_providers_alone(captured) -> None:
    telemetry = captured[0]
    assert trace.get_tracer_provider() is not telemetry.tracer_provider

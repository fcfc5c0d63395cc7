"""The generator's telemetry: mlobs.telemetry with the contract's views and ids, switched off by OTEL_SDK_DISABLED.

How the OTEL_* variables choose exporters, the JSON console format and the shutdown order are
tests/unit/test_telemetry.py's.
"""

from __future__ import annotations

import logging
import os

import pytest
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from generator.telemetry import setup_telemetry
from mlobs.contract import (
    ATTR_REQUEST_ID,
    ATTR_STAGE,
    EXEMPLAR_HISTOGRAMS,
    SERVICE_INFERENCE,
    SERVICE_LOADGEN,
)


def _resource(**options):
    telemetry = setup_telemetry(SERVICE_INFERENCE, span_exporter=InMemorySpanExporter(), set_global=False, **options)
    telemetry.shutdown()
    return telemetry.resource.attributes


def test_resource_defaults_yield_to_otel_variables(monkeypatch):
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    default = _resource()
    assert default["service.name"] == "mlobs-inference"
    assert default["deployment.environment.name"] == "local"
    assert default["service.instance.id"].endswith(f"-{os.getpid()}")

    monkeypatch.setenv("OTEL_SERVICE_NAME", "my-model")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=staging,team=ml")
    custom = _resource()
    assert custom["service.name"] == "my-model"
    assert custom["deployment.environment.name"] == "staging"
    assert custom["team"] == "ml"


@pytest.mark.parametrize("histogram", EXEMPLAR_HISTOGRAMS)
def test_an_exemplar_histogram_keeps_ids_out_of_its_series_and_in_its_exemplars(histogram):
    reader = InMemoryMetricReader()
    spans = InMemorySpanExporter()
    telemetry = setup_telemetry(SERVICE_INFERENCE, span_exporter=spans, metric_readers=[reader], set_global=False)
    try:
        with telemetry.tracer.start_as_current_span("work"):
            telemetry.meter.create_histogram(histogram, unit="s").record(
                0.2, {ATTR_STAGE: "inference", ATTR_REQUEST_ID: "r-1", "anything.else": "x"}
            )
        [point] = [
            p
            for rm in reader.get_metrics_data().resource_metrics
            for sm in rm.scope_metrics
            for m in sm.metrics
            if m.name == histogram
            for p in m.data.data_points
        ]
    finally:
        telemetry.shutdown()
    assert dict(point.attributes) == {ATTR_STAGE: "inference"}
    [exemplar] = [e for e in point.exemplars if e.value == 0.2]
    assert exemplar.filtered_attributes[ATTR_REQUEST_ID] == "r-1"
    assert exemplar.trace_id == spans.get_finished_spans()[0].context.trace_id


def test_sdk_disabled_turns_every_signal_off_and_the_service_still_works(monkeypatch, model_dir, full_row):
    from fastapi.testclient import TestClient

    from generator.service import create_app

    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    telemetry = setup_telemetry(SERVICE_INFERENCE, set_global=False, system_metrics=False)
    try:
        assert telemetry.enabled is False
        assert not telemetry.get_tracer("t").start_span("x").is_recording()
        with TestClient(create_app(telemetry, directory=model_dir, poll_seconds=0)) as client:
            response = client.post("/predict", json=full_row(0), headers={"X-Request-ID": "off-1"})
        assert response.status_code == 200
        assert response.headers["x-request-id"] == "off-1"
    finally:
        telemetry.shutdown()


def test_the_load_generator_instruments_requests_until_shutdown():
    from opentelemetry.instrumentation.requests import RequestsInstrumentor

    telemetry = setup_telemetry(SERVICE_LOADGEN, span_exporter=InMemorySpanExporter(), set_global=False)
    instrumentor = RequestsInstrumentor()
    telemetry.instrument(instrumentor)
    assert instrumentor.is_instrumented_by_opentelemetry
    telemetry.shutdown()
    assert not instrumentor.is_instrumented_by_opentelemetry


def test_event_name_stays_an_attribute_of_the_otlp_log_record(captured):
    logging.getLogger("generator.test").info("deployed", extra={"event.name": "model.deployed"})
    (record,) = [r.log_record for r in captured.logs.get_finished_logs() if r.log_record.body == "deployed"]
    assert record.attributes["event.name"] == "model.deployed"
    assert record.event_name == "model.deployed"


def test_the_request_id_in_baggage_reaches_every_log_record(captured):
    from opentelemetry import context

    from generator.telemetry import attach_baggage

    token = attach_baggage([(ATTR_REQUEST_ID, "bag-7")])
    try:
        logging.getLogger("generator.test").info("in the request")
    finally:
        context.detach(token)
    logging.getLogger("generator.test").info("after the request")
    records = {r.log_record.body: r.log_record.attributes for r in captured.logs.get_finished_logs()}
    assert records["in the request"][ATTR_REQUEST_ID] == "bag-7"
    assert ATTR_REQUEST_ID not in records["after the request"]


def test_sdk_records_never_loop_back_into_the_otlp_pipeline(captured):
    logging.getLogger("opentelemetry.exporter.otlp.proto.http").error("Failed to export span batch")
    assert not [r for r in captured.logs.get_finished_logs() if "Failed to export" in str(r.log_record.body)]


def test_in_memory_setup_does_not_touch_the_global_providers():
    from opentelemetry import trace

    before = trace.get_tracer_provider()
    telemetry = setup_telemetry(
        SERVICE_INFERENCE, log_exporter=InMemoryLogRecordExporter(), set_global=False, system_metrics=False
    )
    telemetry.shutdown()
    assert trace.get_tracer_provider() is before


@pytest.mark.parametrize("path", ["/openapi.json"])
def test_openapi_documents_the_endpoints_and_resolves_every_reference(client, path):
    document = client.get(path).json()
    assert {"/predict", "/feedback", "/healthz", "/readyz", "/admin/faults"} <= set(document["paths"])
    body = document["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    schemas = document["components"]["schemas"]
    # one row or a batch (generator/service.py _predict_schema)
    assert [r["$ref"].rsplit("/", 1)[-1] for r in body["oneOf"]] == ["PredictRow", "PredictBatch"]
    assert "instances" in schemas["PredictBatch"]["properties"]

    def refs(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "$ref":
                    yield value
                else:
                    yield from refs(value)
        elif isinstance(node, list):
            for item in node:
                yield from refs(item)

    for ref in refs(document):
        assert ref.removeprefix("#/components/schemas/") in schemas, ref
    assert "mean_radius" in schemas["Features"]["properties"]


def test_health_and_readiness(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready" and ready["model_version"] == "1"

"""Telemetry is configured by the standard OTEL_* variables only, and can be switched off."""

from __future__ import annotations

import logging
import os

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HttpLogExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter

from generator import telemetry as tel
from generator.telemetry import SERVICE_INFERENCE, build_resource, setup_telemetry


def test_otlp_over_http_protobuf_is_the_default(monkeypatch):
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_PROTOCOL", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", raising=False)
    assert isinstance(tel._span_exporter(), HttpSpanExporter)
    assert isinstance(tel._log_exporter(), HttpLogExporter)


def test_protocol_comes_from_the_standard_variables(monkeypatch):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    assert isinstance(tel._span_exporter(), GrpcSpanExporter)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf")
    assert isinstance(tel._span_exporter(), HttpSpanExporter)


def test_an_exporter_can_be_switched_off(monkeypatch):
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    assert tel._span_exporter() is None


def test_resource_defaults_yield_to_otel_variables(monkeypatch):
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    default = build_resource(SERVICE_INFERENCE).attributes
    assert default["service.name"] == "mlobs-inference"
    assert default["deployment.environment.name"] == "local"
    assert default["service.instance.id"].endswith(f"-{os.getpid()}")

    monkeypatch.setenv("OTEL_SERVICE_NAME", "my-model")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=staging,team=ml")
    custom = build_resource(SERVICE_INFERENCE).attributes
    assert custom["service.name"] == "my-model"
    assert custom["deployment.environment.name"] == "staging"
    assert custom["team"] == "ml"


def test_sdk_disabled_turns_every_signal_off_and_the_service_still_works(monkeypatch, model_dir, full_row):
    from fastapi.testclient import TestClient

    from generator.service import create_app

    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    telemetry = setup_telemetry(SERVICE_INFERENCE, set_global=False, system_metrics=False)
    try:
        assert telemetry.enabled is False
        assert not telemetry.tracer("t").start_span("x").is_recording()
        with TestClient(create_app(telemetry, directory=model_dir, poll_seconds=0)) as client:
            response = client.post("/predict", json=full_row(0), headers={"X-Request-ID": "off-1"})
        assert response.status_code == 200
        assert response.headers["x-request-id"] == "off-1"
    finally:
        telemetry.shutdown()


def test_event_name_stays_an_attribute_of_the_otlp_log_record(captured):
    logging.getLogger("generator.test").info("deployed", extra={"event.name": "model.deployed"})
    (record,) = [r.log_record for r in captured.logs.get_finished_logs() if r.log_record.body == "deployed"]
    assert record.attributes["event.name"] == "model.deployed"
    assert record.event_name == "model.deployed"


def test_sdk_records_never_loop_back_into_the_otlp_pipeline(captured):
    logging.getLogger("opentelemetry.exporter.otlp.proto.http").error("Failed to export span batch")
    assert not [r for r in captured.logs.get_finished_logs() if "Failed to export" in str(r.log_record.body)]


def test_repeated_sdk_complaints_are_throttled_on_the_console():
    throttle = tel._ThrottleSdkErrors(every_seconds=60)
    record = logging.LogRecord("opentelemetry.exporter", logging.WARNING, "", 0, "Transient error %s", ("x",), None)
    assert throttle.filter(record) is True
    assert throttle.filter(record) is False
    ours = logging.LogRecord("generator.service", logging.WARNING, "", 0, "hello", None, None)
    assert throttle.filter(ours) and throttle.filter(ours)


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
    assert "instances" in body["properties"]
    schemas = document["components"]["schemas"]

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

"""Smoke test of the real native stack: OTLP in, read back from Prometheus and the collector."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.logging.handler import LoggingHandler
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

pytestmark = pytest.mark.native


def eventually(fetch: Callable[[], Any], what: str, timeout: float = 60, interval: float = 1.0) -> Any:
    """Retry fetch until it returns something truthy, or fail naming what never showed up."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = fetch()
        except httpx.HTTPError as e:
            last = e
        if last and not isinstance(last, Exception):
            return last
        time.sleep(interval)
    pytest.fail(f"{what} did not show up within {timeout:.0f}s (last answer: {last!r})")


def prom_query(base: str, expr: str) -> list[dict]:
    r = httpx.get(f"{base}/api/v1/query", params={"query": expr}, timeout=5)
    r.raise_for_status()
    return r.json()["data"]["result"]


def collector_counter(base: str, name: str) -> float:
    """Sum of a counter of the collector's own /metrics, with or without the _total suffix."""
    text = httpx.get(f"{base}/metrics", timeout=5).text
    total = 0.0
    for line in text.splitlines():
        metric = line.split("{", 1)[0].split(" ", 1)[0]
        if metric in (name, name + "_total"):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.fixture(scope="module")
def sent(native_stack) -> dict[str, str]:
    """Send one trace with a histogram recorded inside its span, plus log records, over OTLP/HTTP."""
    service = f"mlobs-smoke-{uuid.uuid4().hex[:8]}"
    otlp = native_stack.url("otlp_http")
    resource = Resource.create({"service.name": service, "deployment.environment.name": "test"})
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{otlp}/v1/traces")))
    reader = PeriodicExportingMetricReader(OTLPMetricExporter(endpoint=f"{otlp}/v1/metrics"),
                                           export_interval_millis=1000)
    meter_provider = MeterProvider(resource=resource, metric_readers=[reader])
    logger_provider = LoggerProvider(resource=resource)
    logger_provider.add_log_record_processor(BatchLogRecordProcessor(OTLPLogExporter(endpoint=f"{otlp}/v1/logs")))
    log = logging.getLogger(service)
    log.propagate = False
    log.setLevel(logging.INFO)
    log.addHandler(LoggingHandler(logger_provider=logger_provider))

    accepted_before = collector_counter(native_stack.url("collector_metrics"), "otelcol_receiver_accepted_spans")
    histogram = meter_provider.get_meter("smoke").create_histogram("smoke.latency", unit="s")
    tracer = tracer_provider.get_tracer("smoke")
    with tracer.start_as_current_span("smoke-request") as span:
        histogram.record(0.042, {"route": "/smoke"})
        log.warning("smoke log record inside the span")
        trace_id = format(span.get_span_context().trace_id, "032x")
    log.info("smoke log record outside any span")
    tracer_provider.force_flush()
    logger_provider.force_flush()
    meter_provider.force_flush()
    meter_provider.shutdown()
    tracer_provider.shutdown()
    logger_provider.shutdown()
    return {"service": service, "trace_id": trace_id, "accepted_before": str(accepted_before)}


def test_histogram_reaches_prometheus(native_stack, sent) -> None:
    base = native_stack.url("prometheus")
    result = eventually(lambda: prom_query(base, f'smoke_latency_seconds_count{{job="{sent["service"]}"}}'),
                        "smoke_latency_seconds_count")
    assert float(result[0]["value"][1]) >= 1
    assert result[0]["metric"].get("deployment_environment_name") == "test", "resource attribute promoted"


def test_exemplar_carries_the_trace_id(native_stack, sent) -> None:
    base = native_stack.url("prometheus")

    def exemplar_trace_ids() -> set[str]:
        r = httpx.get(f"{base}/api/v1/query_exemplars", timeout=5, params={
            "query": f'smoke_latency_seconds_bucket{{job="{sent["service"]}"}}',
            "start": time.time() - 600, "end": time.time() + 60})
        r.raise_for_status()
        return {e["labels"].get("trace_id") for s in r.json()["data"] for e in s["exemplars"]}

    ids = eventually(exemplar_trace_ids, "an exemplar on smoke_latency_seconds_bucket")
    assert sent["trace_id"] in ids


def test_collector_accepted_the_spans_and_made_span_metrics(native_stack, sent) -> None:
    col = native_stack.url("collector_metrics")
    eventually(lambda: collector_counter(col, "otelcol_receiver_accepted_spans")
               > float(sent["accepted_before"]), "otelcol_receiver_accepted_spans to grow")
    base = native_stack.url("prometheus")
    eventually(lambda: prom_query(
        base, f'traces_spanmetrics_calls_total{{service_name="{sent["service"]}", span_name="smoke-request"}} >= 1'),
        "span metrics counting the smoke span")


def test_collector_accepted_the_logs_and_counted_them_by_severity(native_stack, sent) -> None:
    col = native_stack.url("collector_metrics")
    eventually(lambda: collector_counter(col, "otelcol_receiver_accepted_log_records") >= 2,
               "otelcol_receiver_accepted_log_records")
    base = native_stack.url("prometheus")
    rows = eventually(lambda: prom_query(base, f'log_records_total{{job="{sent["service"]}"}}'),
                      "log_records_total of the smoke service")
    severities = {r["metric"].get("severity_text") for r in rows}
    assert {"WARN", "INFO"} <= severities or {"WARNING", "INFO"} <= severities, severities


def test_collector_scraped_by_prometheus(native_stack) -> None:
    up = eventually(lambda: prom_query(native_stack.url("prometheus"), 'up{job="otel-collector"} == 1'),
                    "up{job=otel-collector}")
    assert up

"""mlobs.telemetry: exporters chosen by the OTEL_* variables, log correlation, the JSON format, the shutdown order."""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Iterator
from unittest import mock

import pytest
from opentelemetry import baggage, context, trace
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter as GrpcLogExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HttpLogExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.trace.export import ConsoleSpanExporter
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from mlobs import telemetry as tel


@pytest.fixture(autouse=True)
def otel_env() -> Iterator[None]:
    """No OTEL_* variable from the caller's shell, and whatever a test (or setup's defaults) writes is undone."""
    with mock.patch.dict(os.environ):
        for name in [n for n in os.environ if n.startswith("OTEL_")]:
            del os.environ[name]
        yield


@pytest.fixture
def from_env() -> Iterator:
    """exporters_from_env, with everything it built shut down after the test (readers run a thread)."""
    built: list = []

    def build():
        spans, readers, logs = tel.exporters_from_env()
        built.extend([*spans, *readers, *logs])
        return spans, readers, logs

    yield build
    for item in built:
        item.shutdown()


def _types(items) -> list[type]:
    return [type(item) for item in items]


# --------------------------------------------------------------------------- exporters


def test_otlp_over_http_protobuf_is_the_default(from_env) -> None:
    spans, readers, logs = from_env()
    assert _types(spans) == [HttpSpanExporter]
    assert _types(logs) == [HttpLogExporter]
    [reader] = readers
    assert isinstance(reader, PeriodicExportingMetricReader)
    assert isinstance(reader._exporter, HttpMetricExporter)
    # written back like the distro does, so child processes agree
    assert os.environ["OTEL_EXPORTER_OTLP_PROTOCOL"] == "http/protobuf"
    assert os.environ["OTEL_TRACES_EXPORTER"] == "otlp"


def test_the_protocol_comes_from_the_standard_variables_per_signal_first(from_env, monkeypatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf")
    spans, _, logs = from_env()
    assert _types(spans) == [HttpSpanExporter]
    assert _types(logs) == [GrpcLogExporter]
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
    spans, _, _ = from_env()
    assert _types(spans) == [GrpcSpanExporter]


def test_exporters_can_be_switched_off_sent_to_the_console_or_both(from_env, monkeypatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "none")
    monkeypatch.setenv("OTEL_LOGS_EXPORTER", "console,otlp")
    spans, readers, logs = from_env()
    assert spans == [] and readers == []
    assert [t.__name__ for t in _types(logs)] == ["ConsoleLogRecordExporter", "OTLPLogExporter"]
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    assert _types(from_env()[0]) == [ConsoleSpanExporter]


def test_endpoint_and_export_interval_are_the_exporters_own_variables(from_env, monkeypatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "1234")
    [spans], [reader], [logs] = from_env()
    assert spans._endpoint == "http://collector:4318/v1/traces"
    assert logs._endpoint == "http://collector:4318/v1/logs"
    assert reader._export_interval_millis == 1234


def test_an_unknown_protocol_or_exporter_is_an_error_at_start_up(from_env, monkeypatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
    with pytest.raises(RuntimeError, match="http/json"):
        from_env()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "zipkin-ish")
    with pytest.raises(RuntimeError, match="zipkin-ish"):
        from_env()


def test_setup_without_in_memory_exporters_uses_the_variables(monkeypatch) -> None:
    for signal in ("TRACES", "METRICS", "LOGS"):
        monkeypatch.setenv(f"OTEL_{signal}_EXPORTER", "none")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "renamed")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "team=ml")
    handle = tel.setup("svc", set_global=False, resource_attributes={"team": "default", "extra": "yes"})
    try:
        [processor] = handle.tracer_provider._active_span_processor._span_processors
        assert isinstance(processor._batch_processor._exporter, ConsoleSpanExporter)
        attributes = handle.resource.attributes
        assert attributes["service.name"] == "renamed"
        assert attributes["team"] == "ml" and attributes["extra"] == "yes"
    finally:
        handle.shutdown()


def test_sdk_disabled_gives_no_op_providers_and_console_logging_only(monkeypatch) -> None:
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    handle = tel.setup("svc", set_global=False)
    try:
        assert not handle.enabled
        assert not handle.tracer.start_span("x").is_recording()
        assert [type(h) for h in handle.handlers] == [logging.StreamHandler]
    finally:
        handle.shutdown()
    assert not any(h in logging.getLogger().handlers for h in handle.handlers)


# --------------------------------------------------------------------------- logging


def _console(handle: tel.Telemetry) -> io.StringIO:
    """What the handle's console handler prints (to stderr, as the process runs)."""
    [console] = [h for h in handle.handlers if type(h) is logging.StreamHandler]
    stream = io.StringIO()
    console.setStream(stream)
    return stream


def _json_lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


@pytest.fixture
def captured() -> Iterator[tuple[tel.Telemetry, InMemorySpanExporter, InMemoryLogRecordExporter, io.StringIO]]:
    spans, logs = InMemorySpanExporter(), InMemoryLogRecordExporter()
    handle = tel.setup(
        "svc", scope="unit", span_exporter=spans, log_exporter=logs, set_global=False, baggage_keys=("request.id",)
    )
    yield handle, spans, logs, _console(handle)
    handle.shutdown()


def test_console_and_otlp_records_carry_the_ids_of_the_current_span(captured) -> None:
    handle, spans, logs, console = captured
    log = logging.getLogger("mlobs.unit")
    with handle.tracer.start_as_current_span("work"):
        log.info("inside %s", "work", extra={"ml.stage": "inference"})
    log.info("outside")
    [span] = spans.get_finished_spans()
    assert span.instrumentation_scope.name == "unit"

    inside, outside = _json_lines(console)
    assert inside["message"] == "inside work" and inside["logger"] == "mlobs.unit" and inside["level"] == "INFO"
    assert inside["trace_id"] == trace.format_trace_id(span.context.trace_id)
    assert inside["span_id"] == trace.format_span_id(span.context.span_id)
    assert inside["ml.stage"] == "inference"
    assert inside["time"].endswith("Z")
    assert "trace_id" not in outside and "span_id" not in outside

    records = {r.log_record.body: r.log_record for r in logs.get_finished_logs()}
    assert records["inside work"].trace_id == span.context.trace_id
    assert records["inside work"].span_id == span.context.span_id
    assert records["inside work"].attributes["ml.stage"] == "inference"


def test_baggage_keys_reach_both_handlers(captured) -> None:
    _, _, logs, console = captured
    token = context.attach(baggage.set_baggage("request.id", "req-9"))
    try:
        logging.getLogger("mlobs.unit").warning("with baggage")
    finally:
        context.detach(token)
    [line] = _json_lines(console)
    assert line["request.id"] == "req-9"
    [record] = [r.log_record for r in logs.get_finished_logs() if r.log_record.body == "with baggage"]
    assert record.attributes["request.id"] == "req-9"


def test_the_json_formatter_keeps_exceptions_and_drops_uvicorns_coloured_copy() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", None, sys.exc_info())
    record.color_message = "\x1b[31mfailed\x1b[0m"
    entry = json.loads(tel.JsonFormatter().format(record))
    assert "ValueError: boom" in entry["exception"]
    assert "color_message" not in entry


def test_repeated_sdk_complaints_are_throttled_on_the_console() -> None:
    throttle = tel._ThrottleSdkErrors(every_seconds=60)
    record = logging.LogRecord("opentelemetry.exporter", logging.WARNING, "", 0, "Transient error %s", ("x",), None)
    assert throttle.filter(record) is True
    assert throttle.filter(record) is False
    ours = logging.LogRecord("generator.service", logging.WARNING, "", 0, "hello", None, None)
    assert throttle.filter(ours) and throttle.filter(ours)


def test_a_second_setup_replaces_the_handlers_of_the_first() -> None:
    first = tel.setup("one", span_exporter=InMemorySpanExporter(), set_global=False)
    second = tel.setup("two", span_exporter=InMemorySpanExporter(), set_global=False)
    try:
        root = logging.getLogger().handlers
        assert not any(h in root for h in first.handlers)
        assert all(h in root for h in second.handlers)
    finally:
        first.shutdown()
        second.shutdown()


def test_system_metrics_are_opt_in_and_stop_at_shutdown() -> None:
    reader = InMemoryMetricReader()
    handle = tel.setup("svc", metric_readers=[reader], set_global=False, system_metrics=True)
    names = {m.name for rm in reader.get_metrics_data().resource_metrics for sm in rm.scope_metrics for m in sm.metrics}
    [instrumentor] = handle.instrumentors
    handle.shutdown()
    assert {"process.cpu.time", "process.memory.usage"} <= names
    assert not instrumentor.is_instrumented_by_opentelemetry


# --------------------------------------------------------------------------- shutdown


class _Recorder:
    """Where each exporter's shutdown stands, and what the process logs meanwhile."""

    def __init__(self) -> None:
        self.order: list[str] = []
        self.handlers_at: dict[str, int] = {}

    def saw(self, what: str) -> None:
        self.order.append(what)
        self.handlers_at[what] = sum(getattr(h, tel._HANDLER_MARK, False) for h in logging.getLogger().handlers)


def test_shutdown_stops_traces_then_metrics_then_logs_and_takes_the_handlers_off_last() -> None:
    seen = _Recorder()

    class Spans(InMemorySpanExporter):
        def shutdown(self) -> None:
            seen.saw("traces")
            logging.getLogger("app").warning("spans flushed")  # logged during the final span flush
            super().shutdown()

    class Reader(InMemoryMetricReader):
        def shutdown(self, timeout_millis: float = 30_000, **kwargs) -> None:
            seen.saw("metrics")
            logging.getLogger("app").warning("metrics flushed")

    class Logs(InMemoryLogRecordExporter):
        def shutdown(self) -> None:
            seen.saw("logs")
            logging.getLogger("opentelemetry.sdk._logs").error("final log export failed")
            super().shutdown()

    class Instrumentor:
        def instrument(self, **_) -> None:
            pass

        def uninstrument(self) -> None:
            seen.saw("uninstrument")

    logs = Logs()
    handle = tel.setup("svc", span_exporter=Spans(), metric_readers=[Reader()], log_exporter=logs, set_global=False)
    handle.instrument(Instrumentor())
    console = _console(handle)
    handle.shutdown()

    assert seen.order == ["uninstrument", "traces", "metrics", "logs"]
    assert set(seen.handlers_at.values()) == {2}, "console and OTLP handlers stay on until the logs are stopped"
    # what the final span and metric flushes logged was still exported...
    assert {"spans flushed", "metrics flushed"} <= {r.log_record.body for r in logs.get_finished_logs()}
    # ...and the failure of the last log export was still printed, as JSON
    [failure] = [e for e in _json_lines(console) if e["logger"] == "opentelemetry.sdk._logs"]
    assert failure["message"] == "final log export failed"
    assert not any(getattr(h, tel._HANDLER_MARK, False) for h in logging.getLogger().handlers)

    handle.shutdown()  # a second call does nothing
    assert seen.order == ["uninstrument", "traces", "metrics", "logs"]


def test_disabled_is_a_no_op_handle_that_touches_no_logger() -> None:
    before = list(logging.getLogger().handlers)
    handle = tel.disabled("svc", scope="s")
    assert not handle.enabled and handle.handlers == []
    assert not handle.tracer.start_span("x").is_recording()
    handle.meter.create_counter("c").add(1)
    handle.shutdown()
    assert logging.getLogger().handlers == before

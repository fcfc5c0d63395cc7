"""mlobs.telemetry: exporters chosen by the OTEL_* variables, log correlation, the JSON format, the shutdown order."""

from __future__ import annotations

import io
import json
import logging
import os
import random
import time
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

from mlobs import sampling
from mlobs import telemetry as tel


@pytest.fixture(autouse=True)
def otel_env() -> Iterator[None]:
    """No OTEL_* (or MLOBS_SAMPLING_*) variable from the caller's shell, and whatever a test (or setup's
    defaults) writes is undone."""
    with mock.patch.dict(os.environ):
        for name in [n for n in os.environ if n.startswith(("OTEL_", "MLOBS_SAMPLING_", "MLOBS_TRACE_DETAIL"))]:
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
        [mark, processor] = handle.tracer_provider._active_span_processor._span_processors
        assert isinstance(mark, tel.KeepMarkSpanProcessor)
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


# --------------------------------------------------------------------------- sampling: exemplars and the keep mark

PCT = 10
RULE = sampling.Rule(percentage=PCT, slow_threshold_s=1.0, keep_errors=True)
_rng = random.Random(11)


def _trace_id(kept: bool) -> int:
    """A random trace id that the 10 % share keeps (or drops) by chance."""
    while True:
        trace_id = _rng.getrandbits(128)
        if sampling.kept_by_chance(trace.format_trace_id(trace_id), PCT) is kept:
            return trace_id


def _in_trace(trace_id: int, ctx: context.Context | None = None) -> context.Context:
    """A context whose (remote, sampled) parent is on ``trace_id``: a span started in it joins that trace."""
    parent = trace.NonRecordingSpan(
        trace.SpanContext(trace_id, _rng.getrandbits(64) or 1, is_remote=True,
                          trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED))
    )
    return trace.set_span_in_context(parent, ctx)


def _exemplars(reader: InMemoryMetricReader) -> dict[str, list]:
    """Exemplars by metric name. The reservoirs empty at every collection."""
    data = reader.get_metrics_data()
    out: dict[str, list] = {}
    for rm in data.resource_metrics if data else []:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                out.setdefault(metric.name, []).extend(e for p in metric.data.data_points for e in p.exemplars)
    return out


@pytest.fixture
def metered() -> Iterator:
    """``make(rule)``: a handle with in-memory spans, metrics and logs, by default at 10 % (slow: 1 s,
    errors kept)."""
    made: list[tel.Telemetry] = []

    def make(rule: sampling.Rule = RULE, **options):
        spans, reader, logs = InMemorySpanExporter(), InMemoryMetricReader(), InMemoryLogRecordExporter()
        handle = tel.setup("svc", span_exporter=spans, metric_readers=[reader], log_exporter=logs,
                           set_global=False, keep_rule=rule, **options)
        made.append(handle)
        return handle, spans, reader, logs

    yield make
    for handle in made:
        handle.shutdown()


def test_below_100_percent_every_exemplar_names_a_trace_the_share_keeps(metered) -> None:
    handle, _, reader, _ = metered()
    duration = handle.meter.create_histogram("work.duration", unit="s")
    items = handle.meter.create_counter("work.items")
    recorded: list[int] = []
    seen: dict[str, set[int]] = {"work.duration": set(), "work.items": set()}
    for _ in range(20):
        # One series per slot and a collection per round: every measurement offered as an exemplar
        # is still in its reservoir when collected, so the exemplars are exactly the offered ones.
        for slot in range(100):
            with handle.tracer.start_as_current_span("work") as span:  # the SDK's random trace ids
                duration.record(0.01, {"slot": slot})
                items.add(1, {"slot": slot})
                recorded.append(span.get_span_context().trace_id)
        for name, exemplars in _exemplars(reader).items():
            seen[name] |= {e.trace_id for e in exemplars}
    kept = {t for t in recorded if sampling.kept_by_chance(trace.format_trace_id(t), PCT)}
    assert 120 < len(kept) < 280  # about 10 % of 2000
    for name, trace_ids in seen.items():
        assert trace_ids == kept, name
        assert all(RULE.kept(trace.format_trace_id(t)) for t in trace_ids)


def test_at_100_percent_or_unset_the_sdk_filter_is_unchanged(metered, monkeypatch) -> None:
    from opentelemetry.sdk.metrics import TraceBasedExemplarFilter

    assert sampling.Rule.from_env() == sampling.Rule()
    for rule in (sampling.Rule(), sampling.Rule(percentage=100, slow_threshold_s=1.0, keep_errors=True)):
        handle, _, reader, _ = metered(rule)
        assert isinstance(handle.meter_provider._sdk_config.exemplar_filter, TraceBasedExemplarFilter)
        duration = handle.meter.create_histogram("work.duration", unit="s")
        recorded = set()
        for slot in range(50):
            with handle.tracer.start_as_current_span("work", context=_in_trace(_trace_id(kept=False))) as span:
                duration.record(0.01, {"slot": slot})
                recorded.add(span.get_span_context().trace_id)
        assert {e.trace_id for e in _exemplars(reader)["work.duration"]} == recorded


def test_below_100_percent_always_off_still_means_no_exemplars(monkeypatch) -> None:
    monkeypatch.setenv("OTEL_METRICS_EXEMPLAR_FILTER", "always_off")
    assert isinstance(tel.exemplar_filter(RULE), tel.AlwaysOffExemplarFilter)
    monkeypatch.setenv("OTEL_METRICS_EXEMPLAR_FILTER", "always_on")
    assert isinstance(tel.exemplar_filter(RULE), tel.KeptTracesExemplarFilter)


def test_the_rule_comes_from_the_variables_the_stack_sets(monkeypatch) -> None:
    env = {sampling.ENV_PERCENTAGE: "10", sampling.ENV_SLOW_MS: "250", sampling.ENV_KEEP_ERRORS: "true"}
    assert sampling.Rule.from_env(env) == sampling.Rule(percentage=10, slow_threshold_s=0.25, keep_errors=True)
    assert sampling.Rule.from_env({sampling.ENV_PERCENTAGE: "100"}).keeps_all
    for bad in ({sampling.ENV_PERCENTAGE: "ten"}, {sampling.ENV_PERCENTAGE: "120"},
                {sampling.ENV_KEEP_ERRORS: "yes"}, {sampling.ENV_SLOW_MS: "1s"}):
        with pytest.raises(ValueError):
            sampling.Rule.from_env(bad)
    for name, value in {**env, sampling.ENV_TRACE_DETAIL: "true"}.items():
        monkeypatch.setenv(name, value)
    handle = tel.setup("svc", span_exporter=InMemorySpanExporter(), metric_readers=[InMemoryMetricReader()],
                       set_global=False)
    try:
        assert handle.keep_rule == sampling.Rule.from_env(env) and handle.trace_detail
        assert isinstance(handle.meter_provider._sdk_config.exemplar_filter, tel.KeptTracesExemplarFilter)
    finally:
        handle.shutdown()


def _one(handle, reader, ctx, *, attributes=None, status=None, start_time=None, value=0.01) -> bool:
    """Record one duration and one count in a span of ``ctx``: did they get exemplars?"""
    duration = handle.meter.create_histogram("work.duration", unit="s")
    items = handle.meter.create_counter("work.items")
    with handle.tracer.start_as_current_span("work", context=ctx, start_time=start_time) as span:
        if status is not None:
            span.set_status(status)
        duration.record(value, attributes)
        items.add(1, attributes)
    found = {name: [e.trace_id for e in es] for name, es in _exemplars(reader).items()}
    trace_id = span.get_span_context().trace_id
    assert found.get("work.duration", []) == found.get("work.items", []), "one judgement for every instrument"
    return found.get("work.duration", []) == [trace_id]


def test_a_failure_known_at_record_time_keeps_the_exemplar_where_errors_are_kept(metered) -> None:
    handle, _, reader, _ = metered()
    dropped = lambda: _in_trace(_trace_id(kept=False))  # noqa: E731
    assert not _one(handle, reader, dropped())
    assert _one(handle, reader, dropped(), status=trace.Status(trace.StatusCode.ERROR, "failed"))
    assert _one(handle, reader, dropped(), attributes={"outcome": "error"})
    assert _one(handle, reader, dropped(), attributes={"error.type": "500"})
    assert not _one(handle, reader, dropped(), attributes={"outcome": "invalid"})  # a 422 fails no server span
    assert _one(handle, reader, _in_trace(_trace_id(kept=True)))

    no_errors, _, reader2, _ = metered(sampling.Rule(percentage=PCT, slow_threshold_s=1.0, keep_errors=False))
    assert not _one(no_errors, reader2, dropped(), status=trace.Status(trace.StatusCode.ERROR, "failed"))
    assert not _one(no_errors, reader2, dropped(), attributes={"outcome": "error", "error.type": "500"})


def test_a_span_already_slower_than_the_threshold_keeps_the_exemplar_whatever_the_value(metered) -> None:
    handle, _, reader, _ = metered()
    dropped = lambda: _in_trace(_trace_id(kept=False))  # noqa: E731
    two_seconds_ago = time.time_ns() - 2_000_000_000
    assert _one(handle, reader, dropped(), start_time=two_seconds_ago)
    # a large value in a fast span proves nothing: the filter cannot tell seconds from anything else
    assert not _one(handle, reader, dropped(), value=5.0)
    half_a_second_ago = time.time_ns() - 500_000_000
    assert not _one(handle, reader, dropped(), start_time=half_a_second_ago)


def test_no_exemplar_without_a_sampled_span_of_this_process(metered) -> None:
    handle, _, reader, _ = metered()
    items = handle.meter.create_counter("work.items")
    kept_id = _trace_id(kept=True)
    items.add(1)  # no span at all
    items.add(1, context=_in_trace(kept_id))  # a remote parent only: nothing proves its trace reaches us
    assert _exemplars(reader).get("work.items", []) == []
    unsampled = trace.NonRecordingSpan(trace.SpanContext(kept_id, 1, is_remote=False))
    items.add(1, context=trace.set_span_in_context(unsampled))
    assert _exemplars(reader).get("work.items", []) == []


def _marked_context(trace_id: int) -> context.Context:
    return _in_trace(trace_id, baggage.set_baggage(sampling.DEBUG_BAGGAGE, "1"))


def test_the_keep_mark_reaches_every_span_log_record_and_exemplar_of_the_request(metered) -> None:
    handle, spans, reader, logs = metered()
    console = _console(handle)
    log = logging.getLogger("mlobs.unit")
    trace_id = _trace_id(kept=False)
    assert not handle.wants_detail()
    token = context.attach(_marked_context(trace_id))
    try:
        assert tel.keep_marked() and handle.wants_detail()
        assert _one(handle, reader, None)
        with handle.tracer.start_as_current_span("outer"), handle.tracer.start_as_current_span("inner"):
            log.info("marked")
    finally:
        context.detach(token)
    with handle.tracer.start_as_current_span("unmarked", context=_in_trace(trace_id)):
        log.info("not marked")
        assert not tel.keep_marked() and not handle.wants_detail()

    marks = {s.name: s.attributes.get(sampling.KEEP_ATTRIBUTE) for s in spans.get_finished_spans()}
    assert marks == {"work": True, "outer": True, "inner": True, "unmarked": None}
    records = {r.log_record.body: r.log_record.attributes for r in logs.get_finished_logs()}
    assert records["marked"][sampling.KEEP_ATTRIBUTE] is True
    assert sampling.KEEP_ATTRIBUTE not in records["not marked"]
    lines = {line["message"]: line for line in _json_lines(console)}
    assert lines["marked"][sampling.KEEP_ATTRIBUTE] is True
    assert sampling.KEEP_ATTRIBUTE not in lines["not marked"]
    # only "1" and "true" ask
    assert not tel.keep_marked(baggage.set_baggage(sampling.DEBUG_BAGGAGE, "0"))


def test_the_debug_profile_wants_detail_for_every_request(metered) -> None:
    handle, *_ = metered(trace_detail=True)
    assert handle.trace_detail and handle.wants_detail()
    assert not tel.disabled("svc").wants_detail()


def _keep_app(handle: tel.Telemetry):
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/work")
    def work() -> dict[str, bool]:
        with handle.tracer.start_as_current_span("inside"):
            logging.getLogger("mlobs.unit").info("working")
            return {"detail": handle.wants_detail()}

    handle.instrument_fastapi(app, exclude_spans=["receive", "send"])
    return app


def test_any_fastapi_service_takes_the_header_or_the_baggage_entry_as_the_keep_mark(metered) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Using `httpx` with")
        from fastapi.testclient import TestClient

    handle, spans, _, logs = metered()
    with TestClient(_keep_app(handle)) as client:
        for headers, asked in (
            ({sampling.DEBUG_HEADER: "1"}, True),
            ({"baggage": f"{sampling.DEBUG_BAGGAGE}=1"}, True),
            ({sampling.DEBUG_HEADER: "true"}, True),
            ({}, False),
            ({sampling.DEBUG_HEADER: "0"}, False),
        ):
            spans.clear()
            logs.clear()
            assert client.get("/work", headers=headers).json() == {"detail": asked}, headers
            finished = spans.get_finished_spans()
            assert {s.name for s in finished} == {"GET /work", "inside"}
            mark = True if asked else None
            assert all(s.attributes.get(sampling.KEEP_ATTRIBUTE) is mark for s in finished), headers
            [record] = [r.log_record for r in logs.get_finished_logs() if r.log_record.body == "working"]
            assert record.attributes.get(sampling.KEEP_ATTRIBUTE) is mark, headers

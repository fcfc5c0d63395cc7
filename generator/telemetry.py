"""OpenTelemetry setup shared by the service, the training job and the load generator.

Configuration comes only from the standard ``OTEL_*`` variables: endpoint, headers,
protocol (``OTEL_EXPORTER_OTLP_PROTOCOL``, ``http/protobuf`` by default), sampler,
resource attributes, export interval. ``OTEL_SDK_DISABLED=true`` turns every signal off.
Tests call :func:`setup_telemetry` with in-memory exporters and readers instead.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterable, Sequence
from contextvars import Token
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from opentelemetry import _logs, baggage, context, metrics, trace
from opentelemetry.context import Context
from opentelemetry.instrumentation.logging.handler import LoggingHandler
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import (
    BatchLogRecordProcessor,
    ConsoleLogRecordExporter,
    LogRecordExporter,
    SimpleLogRecordProcessor,
)
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.metrics.view import View
from opentelemetry.sdk.resources import OTELResourceDetector, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)

SERVICE_INFERENCE = "mlobs-inference"
SERVICE_LOADGEN = "mlobs-loadgen"
SERVICE_TRAINING = "mlobs-training"

# Ids that belong in exemplars, spans and logs but never in a metric series.
REQUEST_ID = "request.id"
BATCH_ID = "ml.batch.id"
TRAINING_RUN_ID = "ml.training.run_id"
CORRELATION_KEYS = (REQUEST_ID, BATCH_ID, TRAINING_RUN_ID)

# Attributes the exemplar-carrying histograms keep as series labels; anything else recorded on
# them (the ids above) is dropped from the series by a view and survives only as an exemplar's
# filtered attribute, which Prometheus stores as an exemplar label.
_DURATION_SERIES_ATTRIBUTES = {"outcome", "ml.stage", "ml.model.name", "ml.model.version"}
_EXEMPLAR_HISTOGRAMS = ("ml.request.duration", "ml.stage.duration", "ml.training.duration")

_HANDLER_MARK = "_mlobs_handler"
_log = logging.getLogger(__name__)


def package_version() -> str:
    try:
        return version("mlobs")
    except PackageNotFoundError:
        return "0.0.0"


def sdk_disabled() -> bool:
    return os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"


def build_resource(service_name: str) -> Resource:
    """Our defaults, overridden by ``OTEL_RESOURCE_ATTRIBUTES`` and ``OTEL_SERVICE_NAME``."""
    defaults = Resource.create(
        {
            "service.name": service_name,
            "service.version": package_version(),
            "service.instance.id": f"{socket.gethostname()}-{os.getpid()}",
            "deployment.environment.name": "local",
        }
    )
    return defaults.merge(OTELResourceDetector().detect())


def _protocol(signal: str) -> str:
    value = os.environ.get(f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL") or os.environ.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
    )
    value = value.strip().lower()
    if value not in ("grpc", "http/protobuf"):
        _log.warning("OTLP protocol %r is not supported by the Python SDK; using http/protobuf", value)
        return "http/protobuf"
    return value


def _exporter_choice(signal: str) -> str:
    """``OTEL_{TRACES,METRICS,LOGS}_EXPORTER``: ``otlp`` (default), ``console`` or ``none``."""
    return os.environ.get(f"OTEL_{signal}_EXPORTER", "otlp").split(",")[0].strip().lower() or "otlp"


def _span_exporter() -> SpanExporter | None:
    choice = _exporter_choice("TRACES")
    if choice == "none":
        return None
    if choice == "console":
        return ConsoleSpanExporter()
    if _protocol("TRACES") == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


def _metric_reader() -> MetricReader | None:
    choice = _exporter_choice("METRICS")
    if choice == "none":
        return None
    if choice == "console":
        return PeriodicExportingMetricReader(ConsoleMetricExporter())
    if _protocol("METRICS") == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
            OTLPMetricExporter as GrpcExporter,
        )

        return PeriodicExportingMetricReader(GrpcExporter())
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

    # The interval comes from OTEL_METRIC_EXPORT_INTERVAL (the stack sets 5000 ms).
    return PeriodicExportingMetricReader(OTLPMetricExporter())


def _log_exporter() -> LogRecordExporter | None:
    choice = _exporter_choice("LOGS")
    if choice == "none":
        return None
    if choice == "console":
        return ConsoleLogRecordExporter()
    if _protocol("LOGS") == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter as GrpcExporter

        return GrpcExporter()
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter

    return OTLPLogExporter()


def _views() -> list[View]:
    return [View(instrument_name=name, attribute_keys=_DURATION_SERIES_ATTRIBUTES) for name in _EXEMPLAR_HISTOGRAMS]


@dataclass
class Telemetry:
    """The three providers of one process, or no-op ones when telemetry is off."""

    service_name: str
    enabled: bool
    tracer_provider: trace.TracerProvider
    meter_provider: metrics.MeterProvider
    logger_provider: _logs.LoggerProvider
    resource: Resource | None = None
    handlers: list[logging.Handler] = field(default_factory=list)
    instrumentors: list[Any] = field(default_factory=list)

    def tracer(self, name: str) -> trace.Tracer:
        return self.tracer_provider.get_tracer(name, package_version())

    def meter(self, name: str) -> metrics.Meter:
        return self.meter_provider.get_meter(name, package_version())

    def force_flush(self) -> None:
        for provider in (self.tracer_provider, self.meter_provider, self.logger_provider):
            flush = getattr(provider, "force_flush", None)
            if flush is not None:
                flush()

    def shutdown(self) -> None:
        """Flush and stop every signal, then take our log handlers off the root logger
        (last, so that a failed final export is still reported through them)."""
        for instrumentor in self.instrumentors:
            instrumentor.uninstrument()
        self.instrumentors.clear()
        for provider in (self.tracer_provider, self.meter_provider, self.logger_provider):
            shutdown = getattr(provider, "shutdown", None)
            if shutdown is not None:
                shutdown()
        root = logging.getLogger()
        for handler in self.handlers:
            root.removeHandler(handler)
        self.handlers.clear()


def disabled_telemetry(service_name: str) -> Telemetry:
    """No-op providers: every span, metric and log record costs (almost) nothing and goes nowhere."""
    return Telemetry(
        service_name=service_name,
        enabled=False,
        tracer_provider=trace.NoOpTracerProvider(),
        meter_provider=metrics.NoOpMeterProvider(),
        logger_provider=_logs.NoOpLoggerProvider(),
    )


def setup_telemetry(
    service_name: str,
    *,
    span_exporter: SpanExporter | None = None,
    metric_readers: Sequence[MetricReader] | None = None,
    log_exporter: LogRecordExporter | None = None,
    set_global: bool = True,
    system_metrics: bool = True,
    log_level: int = logging.INFO,
) -> Telemetry:
    """Build the providers for ``service_name`` and hook Python logging into them.

    With no exporters given, OTLP exporters are built from the ``OTEL_*`` variables and
    batched. Given exporters (tests) are used synchronously, so a test sees every signal
    as soon as the request returns.
    """
    in_memory = span_exporter is not None or metric_readers is not None or log_exporter is not None
    if sdk_disabled() and not in_memory:
        telemetry = disabled_telemetry(service_name)
        configure_logging(telemetry, log_level)
        return telemetry

    resource = build_resource(service_name)
    tracer_provider = TracerProvider(resource=resource)
    if in_memory:
        if span_exporter is not None:
            tracer_provider.add_span_processor(SimpleSpanProcessor(span_exporter))
        readers = list(metric_readers or [])
    else:
        exporter = _span_exporter()
        if exporter is not None:
            tracer_provider.add_span_processor(BatchSpanProcessor(exporter))
        reader = _metric_reader()
        readers = [reader] if reader is not None else []

    meter_provider = MeterProvider(resource=resource, metric_readers=readers, views=_views())

    logger_provider = LoggerProvider(resource=resource)
    if in_memory:
        if log_exporter is not None:
            logger_provider.add_log_record_processor(SimpleLogRecordProcessor(log_exporter))
    else:
        exporter_for_logs = _log_exporter()
        if exporter_for_logs is not None:
            logger_provider.add_log_record_processor(BatchLogRecordProcessor(exporter_for_logs))

    if set_global:
        trace.set_tracer_provider(tracer_provider)
        metrics.set_meter_provider(meter_provider)
        _logs.set_logger_provider(logger_provider)

    telemetry = Telemetry(
        service_name=service_name,
        enabled=True,
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
        logger_provider=logger_provider,
        resource=resource,
    )
    if system_metrics:
        from opentelemetry.instrumentation.system_metrics import SystemMetricsInstrumentor

        instrumentor = SystemMetricsInstrumentor(
            config={"process.cpu.time": ["user", "system"], "process.memory.usage": None}
        )
        instrumentor.instrument(meter_provider=meter_provider)
        telemetry.instrumentors.append(instrumentor)
    configure_logging(telemetry, log_level)
    return telemetry


# --------------------------------------------------------------------------- logging


class CorrelationFilter(logging.Filter):
    """Copy the request, batch and training-run ids from the current baggage onto the record."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key in CORRELATION_KEYS:
            if key not in record.__dict__:
                value = baggage.get_baggage(key)
                if value is not None:
                    record.__dict__[key] = str(value)
        return True


class _NotFromTheSdk(logging.Filter):
    """Keep the SDK's own records (export failures) out of the OTLP pipeline: no feedback loop."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.name.startswith("opentelemetry")


class _ThrottleSdkErrors(logging.Filter):
    """Let the SDK repeat one complaint (a collector that is down) at most once a minute."""

    def __init__(self, every_seconds: float = 60.0) -> None:
        super().__init__()
        self._every = every_seconds
        self._last: dict[tuple[str, object], float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("opentelemetry"):
            return True
        key = (record.name, record.msg)
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self._every:
            return False
        self._last[key] = now
        return True


class OtlpLoggingHandler(LoggingHandler):
    """The handler of ``opentelemetry-instrumentation-logging``, keeping ``event.name``.

    The upstream handler moves ``event.name`` into the OTLP ``event_name`` field only; our
    contract also keeps it as an attribute, which Loki stores as structured metadata
    (``event_name``) for the dashboards' annotation queries.
    """

    def _get_attributes(self, record: logging.LogRecord) -> tuple[dict[str, Any], str | None]:
        attributes, event_name = super()._get_attributes(record)
        if event_name is not None:
            attributes["event.name"] = event_name
        return attributes, event_name


_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, trace/span ids, attributes."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            entry["trace_id"] = trace.format_trace_id(context.trace_id)
            entry["span_id"] = trace.format_span_id(context.span_id)
        for key, value in record.__dict__.items():
            if key not in _RECORD_FIELDS and not key.startswith("_") and key != "color_message":
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(telemetry: Telemetry, level: int = logging.INFO) -> None:
    """Structured console output plus, when telemetry is on, OTLP log records."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, _HANDLER_MARK, False):
            root.removeHandler(handler)
    root.setLevel(level)

    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(JsonFormatter())
    console.addFilter(CorrelationFilter())
    console.addFilter(_ThrottleSdkErrors())
    handlers: list[logging.Handler] = [console]

    if telemetry.enabled:
        otlp = OtlpLoggingHandler(logger_provider=telemetry.logger_provider)
        otlp.addFilter(_NotFromTheSdk())
        otlp.addFilter(CorrelationFilter())
        handlers.append(otlp)

    for handler in handlers:
        setattr(handler, _HANDLER_MARK, True)
        root.addHandler(handler)
    telemetry.handlers.extend(handlers)


def attach_baggage(items: Iterable[tuple[str, str]]) -> Token[Context]:
    """Put ``items`` in the current context's baggage; returns the token for ``context.detach``."""
    ctx = context.get_current()
    for key, value in items:
        ctx = baggage.set_baggage(key, value, context=ctx)
    return context.attach(ctx)


def links_to_current() -> list[trace.Link]:
    """A link to the current span, for work that starts a trace of its own (deploy, training)."""
    span_context = trace.get_current_span().get_span_context()
    return [trace.Link(span_context)] if span_context.is_valid else []

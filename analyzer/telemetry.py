"""The analyzer's own telemetry: a span per analysis, a log per analysis, an incident counter.

Configured only by the standard ``OTEL_*`` variables (endpoint, headers, protocol,
``OTEL_{TRACES,METRICS,LOGS}_EXPORTER`` = ``otlp`` | ``console`` | ``none``, resource attributes).
``OTEL_SDK_DISABLED=true`` gives no-op providers. Tests pass in-memory exporters instead.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from opentelemetry import _logs, metrics, trace
from opentelemetry.instrumentation.logging.handler import LoggingHandler
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import (
    BatchLogRecordProcessor,
    ConsoleLogRecordExporter,
    LogRecordExporter,
    SimpleLogRecordProcessor,
)
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import OTELResourceDetector, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor, SpanExporter

SERVICE_NAME = "mlobs-analyzer"
SCOPE = "analyzer"
INCIDENTS_COUNTER = "mlobs.analyzer.incidents"


def package_version() -> str:
    try:
        return version("mlobs")
    except PackageNotFoundError:
        return "0.0.0"


def sdk_disabled() -> bool:
    return os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"


def _choice(signal: str) -> str:
    return os.environ.get(f"OTEL_{signal}_EXPORTER", "otlp").split(",")[0].strip().lower() or "otlp"


def _grpc(signal: str) -> bool:
    protocol = os.environ.get(f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL") or os.environ.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
    )
    return protocol.strip().lower() == "grpc"


def _span_exporter() -> SpanExporter | None:
    choice = _choice("TRACES")
    if choice != "otlp":
        return ConsoleSpanExporter() if choice == "console" else None
    if _grpc("TRACES"):
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    return OTLPSpanExporter()


def _metric_reader() -> MetricReader | None:
    choice = _choice("METRICS")
    if choice != "otlp":
        return PeriodicExportingMetricReader(ConsoleMetricExporter()) if choice == "console" else None
    if _grpc("METRICS"):
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
    else:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    return PeriodicExportingMetricReader(OTLPMetricExporter())


def _log_exporter() -> LogRecordExporter | None:
    choice = _choice("LOGS")
    if choice != "otlp":
        return ConsoleLogRecordExporter() if choice == "console" else None
    if _grpc("LOGS"):
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
    else:
        from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    return OTLPLogExporter()


@dataclass
class Telemetry:
    enabled: bool
    tracer_provider: trace.TracerProvider
    meter_provider: metrics.MeterProvider
    logger_provider: _logs.LoggerProvider
    handlers: list[logging.Handler] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.tracer = self.tracer_provider.get_tracer(SCOPE, package_version())
        meter = self.meter_provider.get_meter(SCOPE, package_version())
        self.incidents = meter.create_counter(
            INCIDENTS_COUNTER, unit="{incident}", description="Alerts analysed, by alertname and top-suspect kind"
        )

    def shutdown(self) -> None:
        root = logging.getLogger()
        for handler in self.handlers:
            root.removeHandler(handler)
        self.handlers.clear()
        for provider in (self.tracer_provider, self.meter_provider, self.logger_provider):
            stop = getattr(provider, "shutdown", None)
            if stop is not None:
                stop()


def disabled() -> Telemetry:
    return Telemetry(False, trace.NoOpTracerProvider(), metrics.NoOpMeterProvider(), _logs.NoOpLoggerProvider())


def setup_telemetry(
    *,
    span_exporter: SpanExporter | None = None,
    metric_reader: MetricReader | None = None,
    log_exporter: LogRecordExporter | None = None,
) -> Telemetry:
    """Providers for ``mlobs-analyzer``: OTLP from ``OTEL_*`` by default, the given exporters in tests.

    The providers are not made global, so tests never leak into each other; logging is wired
    by :func:`configure_logging`.
    """
    in_memory = span_exporter is not None or metric_reader is not None or log_exporter is not None
    if sdk_disabled() and not in_memory:
        return disabled()
    defaults = Resource.create(
        {
            "service.name": SERVICE_NAME,
            "service.version": package_version(),
            "service.instance.id": f"{socket.gethostname()}-{os.getpid()}",
        }
    )
    resource = defaults.merge(OTELResourceDetector().detect())

    tracer_provider = TracerProvider(resource=resource)
    logger_provider = LoggerProvider(resource=resource)
    if in_memory:
        readers = [metric_reader] if metric_reader is not None else []
        if span_exporter is not None:
            tracer_provider.add_span_processor(SimpleSpanProcessor(span_exporter))
        if log_exporter is not None:
            logger_provider.add_log_record_processor(SimpleLogRecordProcessor(log_exporter))
    else:
        reader = _metric_reader()
        readers = [reader] if reader is not None else []
        if (spans := _span_exporter()) is not None:
            tracer_provider.add_span_processor(BatchSpanProcessor(spans))
        if (logs := _log_exporter()) is not None:
            logger_provider.add_log_record_processor(BatchLogRecordProcessor(logs))
    meter_provider = MeterProvider(resource=resource, metric_readers=readers)
    return Telemetry(True, tracer_provider, meter_provider, logger_provider)


_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, trace ids, extra attributes."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            entry["trace_id"] = trace.format_trace_id(span_context.trace_id)
            entry["span_id"] = trace.format_span_id(span_context.span_id)
        entry |= {k: v for k, v in record.__dict__.items() if k not in _RECORD_FIELDS and not k.startswith("_")}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class _NotFromTheSdk(logging.Filter):
    """The SDK's own complaints (an unreachable collector) stay off the OTLP pipeline: no feedback loop."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.name.startswith("opentelemetry")


def configure_logging(telemetry: Telemetry, level: int = logging.INFO) -> None:
    """JSON lines on stderr and, when telemetry is on, OTLP log records carrying the trace ids."""
    root = logging.getLogger()
    root.setLevel(level)
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(JsonFormatter())
    handlers: list[logging.Handler] = [console]
    if telemetry.enabled:
        otlp = LoggingHandler(logger_provider=telemetry.logger_provider)
        otlp.addFilter(_NotFromTheSdk())
        handlers.append(otlp)
    for handler in handlers:
        root.addHandler(handler)
    telemetry.handlers.extend(handlers)

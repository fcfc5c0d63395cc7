"""One OpenTelemetry setup for every process of mlobs: the sample service, its training job and load
generator, the analyzer, and the examples.

    from mlobs import telemetry

    tel = telemetry.setup(service_name="my-service")
    try:
        with tel.tracer.start_as_current_span("work"):
            logging.getLogger(__name__).info("done")  # JSON on stderr + an OTLP record, both with the trace ids
        tel.meter.create_counter("my.work").add(1)
    finally:
        tel.shutdown()

API
    ``setup(service_name, ...) -> Telemetry``  providers, exporters and logging of one process.
    ``disabled(service_name) -> Telemetry``    no-op providers, logging untouched (where no handle is given).
    ``Telemetry``   ``.tracer`` / ``.meter`` (the handle's scope), ``.get_tracer(name)`` / ``.get_meter(name)``,
                    ``.instrument(instrumentor)``, ``.force_flush()``, ``.shutdown()``; ``.enabled`` and the
                    three providers, for instrumentations that take them.
    ``JsonFormatter``   the console's one-JSON-object-per-line format.
    ``exporters_from_env()``   the exporters the ``OTEL_*`` variables ask for.

Exporters
    Chosen by the SDK from the standard variables, exactly as ``opentelemetry-instrument`` chooses them:
    ``OTEL_{TRACES,METRICS,LOGS}_EXPORTER`` (``otlp``, ``console``, ``none``, or a comma-separated list),
    ``OTEL_EXPORTER_OTLP[_{signal}]_PROTOCOL``, ``OTEL_EXPORTER_OTLP[_{signal}]_ENDPOINT``, ``..._HEADERS``,
    ``..._TIMEOUT``; ``OTEL_METRIC_EXPORT_INTERVAL``, ``OTEL_TRACES_SAMPLER[_ARG]``,
    ``OTEL_METRICS_EXEMPLAR_FILTER``, the ``OTEL_BSP_*`` and ``OTEL_BLRP_*`` batch settings.
    The defaults are opentelemetry-distro's (``otlp`` for every signal) except the protocol, which
    defaults to ``http/protobuf`` rather than the distro's ``grpc``. Like the distro, :func:`setup`
    writes these defaults into ``os.environ`` where they are unset, so child processes agree.
    An unknown exporter or protocol is the SDK's error at start-up.

Resource
    ``service.name`` (``service_name``), ``service.version`` (the mlobs package's),
    ``service.instance.id`` (host and pid), ``deployment.environment.name=local``, plus
    ``resource_attributes``; ``OTEL_RESOURCE_ATTRIBUTES`` and ``OTEL_SERVICE_NAME`` override them all.

Logging (log correlation)
    The root logger gets two handlers: JSON lines on stderr (:class:`JsonFormatter`, with the
    ``trace_id`` and ``span_id`` of the current span), and OTLP log records (the SDK puts the trace
    context in the record's own fields). ``baggage_keys`` are copied from the current baggage onto
    every record, so a request id set once reaches every log line. The SDK's own records (an
    unreachable collector) are kept off the OTLP pipeline, and printed at most once a minute.

Shutdown order (:meth:`Telemetry.shutdown`)
    Instrumentors off; traces; metrics; logs; then our handlers off the root logger. Traces and
    metrics flush before logs because flushing may log (an exporter, an observable instrument's
    callback): those records are still exported. Logs stop last among the providers, so they export
    everything logged until then. The handlers come off last, so that a failure of any final export
    (which the SDK logs) is still printed on stderr.

``OTEL_SDK_DISABLED=true``
    No-op providers and JSON console logging only: every span and metric costs (almost) nothing.

Tests pass in-memory exporters (``span_exporter``, ``metric_readers``, ``log_exporter``) and
``set_global=False``: then nothing is read from the environment for exporters, and spans and log
records are exported synchronously, so a test sees them as soon as the code under test returns.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from opentelemetry import _logs, baggage, metrics, trace
from opentelemetry.instrumentation.logging.handler import LoggingHandler
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, LogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.environment_variables import OTEL_EXPORTER_OTLP_PROTOCOL, OTEL_SDK_DISABLED
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.metrics.view import View
from opentelemetry.sdk.resources import OTELResourceDetector, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter

#: Our default OTLP protocol, where neither OTEL_EXPORTER_OTLP_PROTOCOL nor a per-signal one is set.
DEFAULT_PROTOCOL = "http/protobuf"

_HANDLER_MARK = "_mlobs_handler"
# The process metrics the sample service has always exported (the instrumentor's default is everything).
_SYSTEM_METRICS = {"process.cpu.time": ["user", "system"], "process.memory.usage": None}


def package_version() -> str:
    try:
        return version("mlobs")
    except PackageNotFoundError:
        return "0.0.0"


def sdk_disabled() -> bool:
    return os.environ.get(OTEL_SDK_DISABLED, "").strip().lower() == "true"


def build_resource(
    service_name: str, attributes: Mapping[str, str] | None = None, *, service_version: str | None = None
) -> Resource:
    """Our defaults and ``attributes``, overridden by ``OTEL_RESOURCE_ATTRIBUTES`` and ``OTEL_SERVICE_NAME``."""
    defaults = Resource.create(
        {
            "service.name": service_name,
            "service.version": service_version or package_version(),
            "service.instance.id": f"{socket.gethostname()}-{os.getpid()}",
            "deployment.environment.name": "local",
            **(attributes or {}),
        }
    )
    return defaults.merge(OTELResourceDetector().detect())


# --------------------------------------------------------------------------- exporters


def _apply_defaults() -> None:
    """The distro's defaults in ``os.environ`` (every signal ``otlp``), with our protocol first."""
    from opentelemetry.distro import OpenTelemetryDistro

    os.environ.setdefault(OTEL_EXPORTER_OTLP_PROTOCOL, DEFAULT_PROTOCOL)
    OpenTelemetryDistro().configure()


def exporters_from_env() -> tuple[list[SpanExporter], list[MetricReader], list[LogRecordExporter]]:
    """The span exporters, metric readers and log exporters the ``OTEL_*`` variables ask for.

    The SDK's own configurator resolves the names (``otlp`` to ``otlp_proto_http`` or
    ``otlp_proto_grpc`` by protocol, ``none`` to nothing) and loads them from their entry points;
    each exporter reads its endpoint, headers and timeout itself. A push metric exporter gets a
    :class:`PeriodicExportingMetricReader` (``OTEL_METRIC_EXPORT_INTERVAL``), as the SDK gives it.
    """
    # The configurator's helpers are private but pinned with the SDK (pyproject.toml); the public
    # entry point, _initialize_components, builds global providers without views, which we need.
    from opentelemetry.sdk._configuration import _get_exporter_names, _import_exporters

    _apply_defaults()
    spans, readers, logs = _import_exporters(
        _get_exporter_names("traces"), _get_exporter_names("metrics"), _get_exporter_names("logs")
    )
    return (
        [exporter() for exporter in spans.values()],
        [cls() if issubclass(cls, MetricReader) else PeriodicExportingMetricReader(cls()) for cls in readers.values()],
        [exporter() for exporter in logs.values()],
    )


# --------------------------------------------------------------------------- the handle


@dataclass
class Telemetry:
    """The three providers of one process (no-op ones when telemetry is off), and what to undo at the end."""

    service_name: str
    enabled: bool
    tracer_provider: trace.TracerProvider
    meter_provider: metrics.MeterProvider
    logger_provider: _logs.LoggerProvider
    scope: str = ""
    resource: Resource | None = None
    handlers: list[logging.Handler] = field(default_factory=list)
    instrumentors: list[Any] = field(default_factory=list)
    stopped: bool = field(default=False, init=False)

    @cached_property
    def tracer(self) -> trace.Tracer:
        """The tracer of the handle's instrumentation scope (``scope``, by default the service name)."""
        return self.get_tracer(self.scope or self.service_name)

    @cached_property
    def meter(self) -> metrics.Meter:
        """The meter of the handle's instrumentation scope."""
        return self.get_meter(self.scope or self.service_name)

    def get_tracer(self, name: str) -> trace.Tracer:
        return self.tracer_provider.get_tracer(name, package_version())

    def get_meter(self, name: str) -> metrics.Meter:
        return self.meter_provider.get_meter(name, package_version())

    def instrument(self, instrumentor: Any, **options: Any) -> None:
        """Instrument a library with this handle's providers; :meth:`shutdown` uninstruments it."""
        instrumentor.instrument(tracer_provider=self.tracer_provider, meter_provider=self.meter_provider, **options)
        self.instrumentors.append(instrumentor)

    def force_flush(self) -> None:
        for provider in (self.tracer_provider, self.meter_provider, self.logger_provider):
            flush = getattr(provider, "force_flush", None)
            if flush is not None:
                flush()

    def shutdown(self) -> None:
        """Flush and stop every signal, in the order the module's docstring explains. Safe to call twice."""
        if self.stopped:
            return
        self.stopped = True
        for instrumentor in self.instrumentors:
            instrumentor.uninstrument()
        self.instrumentors.clear()
        for provider in (self.tracer_provider, self.meter_provider, self.logger_provider):
            stop = getattr(provider, "shutdown", None)
            if stop is not None:
                stop()
        root = logging.getLogger()
        for handler in self.handlers:
            root.removeHandler(handler)
        self.handlers.clear()


def disabled(service_name: str, *, scope: str = "") -> Telemetry:
    """No-op providers: every span, metric and log record costs (almost) nothing and goes nowhere."""
    return Telemetry(
        service_name=service_name,
        enabled=False,
        tracer_provider=trace.NoOpTracerProvider(),
        meter_provider=metrics.NoOpMeterProvider(),
        logger_provider=_logs.NoOpLoggerProvider(),
        scope=scope,
    )


def setup(
    service_name: str,
    *,
    scope: str = "",
    views: Sequence[View] = (),
    baggage_keys: Sequence[str] = (),
    resource_attributes: Mapping[str, str] | None = None,
    service_version: str | None = None,
    system_metrics: bool = False,
    set_global: bool = True,
    log_level: int = logging.INFO,
    span_exporter: SpanExporter | None = None,
    metric_readers: Sequence[MetricReader] | None = None,
    log_exporter: LogRecordExporter | None = None,
) -> Telemetry:
    """Providers for ``service_name``, their exporters, and the root logger's handlers.

    ``scope`` names the instrumentation scope of ``.tracer`` and ``.meter`` (default: the service
    name). ``views`` go to the meter provider (say, to keep ids out of a histogram's series).
    ``baggage_keys`` are copied from the current baggage onto every log record. ``system_metrics``
    adds the process's CPU time and memory. ``set_global`` makes the providers the global ones, for
    libraries that use the global API. With none of ``span_exporter``, ``metric_readers`` and
    ``log_exporter``, the exporters come from the ``OTEL_*`` variables and are batched; given ones
    (tests) are used synchronously, and the signals not given export nowhere.
    """
    in_memory = span_exporter is not None or metric_readers is not None or log_exporter is not None
    if sdk_disabled() and not in_memory:
        telemetry = disabled(service_name, scope=scope)
        _configure_logging(telemetry, log_level, baggage_keys)
        return telemetry

    resource = build_resource(service_name, resource_attributes, service_version=service_version)
    tracer_provider = TracerProvider(resource=resource)
    logger_provider = LoggerProvider(resource=resource)
    if in_memory:
        if span_exporter is not None:
            tracer_provider.add_span_processor(SimpleSpanProcessor(span_exporter))
        if log_exporter is not None:
            logger_provider.add_log_record_processor(SimpleLogRecordProcessor(log_exporter))
        readers = list(metric_readers or [])
    else:
        span_exporters, readers, log_exporters = exporters_from_env()
        for exporter in span_exporters:
            tracer_provider.add_span_processor(BatchSpanProcessor(exporter))
        for exporter in log_exporters:
            logger_provider.add_log_record_processor(BatchLogRecordProcessor(exporter))
    meter_provider = MeterProvider(resource=resource, metric_readers=readers, views=list(views))

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
        scope=scope,
        resource=resource,
    )
    if system_metrics:
        from opentelemetry.instrumentation.system_metrics import SystemMetricsInstrumentor

        telemetry.instrument(SystemMetricsInstrumentor(config=_SYSTEM_METRICS))
    _configure_logging(telemetry, log_level, baggage_keys)
    return telemetry


# --------------------------------------------------------------------------- logging


class BaggageFilter(logging.Filter):
    """Copy ``keys`` from the current baggage onto each record (unless the record sets them itself)."""

    def __init__(self, keys: Iterable[str]) -> None:
        super().__init__()
        self.keys = tuple(keys)

    def filter(self, record: logging.LogRecord) -> bool:
        for key in self.keys:
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


# What every LogRecord has; anything else on a record is an attribute (``extra=``, a filter's).
_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "color_message",  # uvicorn's coloured copy of the message
}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, trace/span ids, attributes, exception."""

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
        for key, value in record.__dict__.items():
            if key not in _RECORD_FIELDS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def _configure_logging(telemetry: Telemetry, level: int, baggage_keys: Sequence[str]) -> None:
    """JSON on stderr and, when telemetry is on, OTLP log records; replaces the handlers of an earlier setup."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, _HANDLER_MARK, False):
            root.removeHandler(handler)
    root.setLevel(level)

    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(JsonFormatter())
    console.addFilter(_ThrottleSdkErrors())
    handlers: list[logging.Handler] = [console]
    if telemetry.enabled:
        otlp = OtlpLoggingHandler(logger_provider=telemetry.logger_provider)
        otlp.addFilter(_NotFromTheSdk())
        handlers.append(otlp)
    for handler in handlers:
        if baggage_keys:
            handler.addFilter(BaggageFilter(baggage_keys))
        setattr(handler, _HANDLER_MARK, True)
        root.addHandler(handler)
    telemetry.handlers.extend(handlers)

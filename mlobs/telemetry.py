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
                    ``.instrument(instrumentor)``, ``.instrument_fastapi(app)``, ``.wants_detail()``,
                    ``.force_flush()``, ``.shutdown()``; ``.enabled``, ``.keep_rule``, ``.trace_detail`` and
                    the three providers, for instrumentations that take them.
    ``keep_marked()``   has the current request asked to be kept (see Sampling)?
    ``KeptTracesExemplarFilter``, ``KeepMarkSpanProcessor``, ``KeepMarkMiddleware``   the pieces of Sampling.
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

Sampling (links to kept traces only; the rule is :mod:`mlobs.sampling`'s)
    The collector tail-samples traces. ``MLOBS_SAMPLING_PERCENTAGE`` (and ``..._SLOW_MS``,
    ``..._KEEP_ERRORS``) tell the process the rule (:class:`mlobs.sampling.Rule`). Below 100 %, the
    meter provider's exemplar filter is :class:`KeptTracesExemplarFilter`: a measurement becomes an
    exemplar only when the span it is recorded in proves its trace kept, from what is known then:
    the trace id's randomness, the keep mark on the span, a failure (the span's status, or the
    measurement's ``error.type`` or ``outcome=error``), or the span having already run longer than
    the slow threshold (a lower bound of the trace's duration, whatever the instrument measures).
    A measurement outside a recording, sampled span of this process gets no exemplar. At 100 % (or
    unset) the SDK's filter applies (``OTEL_METRICS_EXEMPLAR_FILTER``, by default ``trace_based``);
    below, ``always_off`` is still honoured.

    The keep mark: a request with the baggage entry ``mlobs.debug=1`` (or, through
    :meth:`Telemetry.instrument_fastapi`, the header ``X-Mlobs-Debug: 1``) gets the boolean attribute
    ``mlobs.sampling.keep=true`` on every span started in its context (:class:`KeepMarkSpanProcessor`),
    so the tail sampler keeps its trace; every log record written in such a span carries the same
    attribute, so the collector keeps its trace link; its exemplars are kept by the filter; and
    :meth:`Telemetry.wants_detail` is true, for a service's detail spans (also true for every
    request with ``MLOBS_TRACE_DETAIL=true``, the debug profile).

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

from opentelemetry import _logs, baggage, context, metrics, trace
from opentelemetry.context import Context
from opentelemetry.instrumentation.logging.handler import LoggingHandler
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, LogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.environment_variables import (
    OTEL_EXPORTER_OTLP_PROTOCOL,
    OTEL_METRICS_EXEMPLAR_FILTER,
    OTEL_SDK_DISABLED,
)
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, ExemplarFilter, MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.metrics.view import View
from opentelemetry.sdk.resources import OTELResourceDetector, Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.semconv.attributes.error_attributes import ERROR_TYPE
from opentelemetry.trace import StatusCode
from opentelemetry.util.types import Attributes

from mlobs import contract, sampling
from mlobs.contract import ATTR_OUTCOME

#: Our default OTLP protocol, where neither OTEL_EXPORTER_OTLP_PROTOCOL nor a per-signal one is set.
DEFAULT_PROTOCOL = "http/protobuf"

_HANDLER_MARK = "_mlobs_handler"
# The process metrics the sample service has always exported (the instrumentor's default is everything).
_SYSTEM_METRICS: dict[str, list[str] | None] = {
    contract.PROCESS_CPU_TIME: ["user", "system"],
    contract.PROCESS_MEMORY_USAGE: None,
}
# ... and, for the analyzer's resource candidates: threads, collections, and the host's CPU by state.
_SYSTEM_METRICS |= {
    contract.PROCESS_THREAD_COUNT: None,
    contract.CPYTHON_GC_COLLECTIONS: None,
    contract.SYSTEM_CPU_UTILIZATION: list(contract.SYSTEM_CPU_STATES),
}


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
    #: The keep rule of tail sampling, as this process's exemplar filter applies it.
    keep_rule: sampling.Rule = field(default_factory=sampling.Rule)
    #: Detail spans for every request (``MLOBS_TRACE_DETAIL=true``, the debug profile).
    trace_detail: bool = False
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

    def instrument_fastapi(self, app: Any, **options: Any) -> None:
        """Server spans for a FastAPI ``app`` (``options`` go to ``FastAPIInstrumentor.instrument_app``),
        and inside them the per-request keep marker (:class:`KeepMarkMiddleware`). Call it before the
        app starts; with telemetry off it does nothing."""
        if not self.enabled:
            return
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        # The instrumentation wraps the whole middleware stack: this one runs inside the server span.
        app.add_middleware(KeepMarkMiddleware)
        FastAPIInstrumentor.instrument_app(
            app, tracer_provider=self.tracer_provider, meter_provider=self.meter_provider, **options
        )

    def wants_detail(self) -> bool:
        """Should the current request get detail spans: the debug profile, or a request that asked
        to be kept (:func:`keep_marked`)? Never with telemetry off."""
        return self.enabled and (self.trace_detail or keep_marked())

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
    keep_rule: sampling.Rule | None = None,
    trace_detail: bool | None = None,
) -> Telemetry:
    """Providers for ``service_name``, their exporters, and the root logger's handlers.

    ``scope`` names the instrumentation scope of ``.tracer`` and ``.meter`` (default: the service
    name). ``views`` go to the meter provider (say, to keep ids out of a histogram's series).
    ``baggage_keys`` are copied from the current baggage onto every log record. ``system_metrics``
    adds the process's CPU time and memory. ``set_global`` makes the providers the global ones, for
    libraries that use the global API. With none of ``span_exporter``, ``metric_readers`` and
    ``log_exporter``, the exporters come from the ``OTEL_*`` variables and are batched; given ones
    (tests) are used synchronously, and the signals not given export nowhere. ``keep_rule`` and
    ``trace_detail`` default to the ``MLOBS_SAMPLING_*`` and ``MLOBS_TRACE_DETAIL`` variables
    (module docstring, Sampling).
    """
    rule = keep_rule if keep_rule is not None else sampling.Rule.from_env()
    detail = trace_detail if trace_detail is not None else sampling.trace_detail_from_env()
    in_memory = span_exporter is not None or metric_readers is not None or log_exporter is not None
    if sdk_disabled() and not in_memory:
        telemetry = disabled(service_name, scope=scope)
        _configure_logging(telemetry, log_level, baggage_keys)
        return telemetry

    resource = build_resource(service_name, resource_attributes, service_version=service_version)
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(KeepMarkSpanProcessor())
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
    meter_provider = MeterProvider(
        resource=resource, metric_readers=readers, views=list(views), exemplar_filter=exemplar_filter(rule)
    )

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
        keep_rule=rule,
        trace_detail=detail,
    )
    if system_metrics:
        from opentelemetry.instrumentation.system_metrics import SystemMetricsInstrumentor

        telemetry.instrument(SystemMetricsInstrumentor(config=_SYSTEM_METRICS))
    _configure_logging(telemetry, log_level, baggage_keys)
    return telemetry


# --------------------------------------------------------------------------- sampling: links to kept traces only


def _marked(span: trace.Span) -> bool:
    """Does this span of ours carry the keep mark (what the tail sampler's policy reads)?"""
    attributes = span.attributes if isinstance(span, ReadableSpan) else None
    return bool(attributes) and attributes.get(sampling.KEEP_ATTRIBUTE) is True


def keep_marked(ctx: Context | None = None) -> bool:
    """Has the request of ``ctx`` (default: the current context) asked to be kept: the keep mark on
    its span, or the debug baggage entry?"""
    if _marked(trace.get_current_span(ctx)):
        return True
    return sampling.asks_to_keep(baggage.get_baggage(sampling.DEBUG_BAGGAGE, ctx))


class KeepMarkSpanProcessor(SpanProcessor):
    """Mark every span started in a context whose baggage asks to keep (``mlobs.debug=1``) with
    ``mlobs.sampling.keep=true``: the tail sampler keeps the trace, and each span proves it to the
    collector's exemplar transform, to our exemplar filter and to our log records."""

    def on_start(self, span: Any, parent_context: Context | None = None) -> None:
        ctx = parent_context if parent_context is not None else context.get_current()
        if sampling.asks_to_keep(baggage.get_baggage(sampling.DEBUG_BAGGAGE, ctx)):
            span.set_attribute(sampling.KEEP_ATTRIBUTE, True)


def _failed(span: ReadableSpan, attributes: Attributes) -> bool:
    """Is a failure known at record time? The span's status already ERROR (the tail sampler's
    errors policy reads it), or the measurement's attributes: semantic conventions set
    ``error.type`` on a metric exactly when the operation failed (and its span then has status
    ERROR), and the contract's ``outcome=error`` is recorded only with a failed server span."""
    if span.status.status_code is StatusCode.ERROR:
        return True
    return bool(attributes) and (ERROR_TYPE in attributes or attributes.get(ATTR_OUTCOME) == "error")


class KeptTracesExemplarFilter(ExemplarFilter):
    """An exemplar only for a measurement whose trace the tail sampler surely keeps
    (:meth:`mlobs.sampling.Rule.kept`), judged from the span it is recorded in.

    The filter does not know the instrument, so the slow clause reads the span, not the value: a
    span that has run longer than the slow threshold when the measurement is taken belongs to a
    trace at least that long, whatever the value means (seconds, milliseconds, a count). A
    measurement outside a recording, sampled span of this process (no span; a remote parent only;
    a span a head sampler dropped) gets none: nothing proves its trace reaches the collector.
    """

    def __init__(self, rule: sampling.Rule) -> None:
        self.rule = rule

    def should_sample(self, value: float, time_unix_nano: int, attributes: Attributes, context: Context) -> bool:
        span = trace.get_current_span(context)
        if not isinstance(span, ReadableSpan):
            return False
        span_context = span.get_span_context()
        if not span_context.is_valid or not span_context.trace_flags.sampled:
            return False
        start = span.start_time
        end = span.end_time or time_unix_nano
        elapsed_s = max(end - start, 0) / 1e9 if start else 0.0
        return self.rule.kept(
            trace.format_trace_id(span_context.trace_id),
            error=_failed(span, attributes),
            duration_s=elapsed_s,
            keep_mark=_marked(span),
        )


def exemplar_filter(rule: sampling.Rule) -> ExemplarFilter | None:
    """The exemplar filter for ``rule``: None (the SDK's, from ``OTEL_METRICS_EXEMPLAR_FILTER``) when
    every trace is kept; below 100 %, :class:`KeptTracesExemplarFilter`, or none at all if
    ``OTEL_METRICS_EXEMPLAR_FILTER=always_off`` asks for no exemplars."""
    if rule.keeps_all:
        return None
    if os.environ.get(OTEL_METRICS_EXEMPLAR_FILTER, "").strip().lower() == "always_off":
        return AlwaysOffExemplarFilter()
    return KeptTracesExemplarFilter(rule)


class KeepMarkMiddleware:
    """ASGI middleware, inside the server span: a request with the header ``X-Mlobs-Debug: 1`` or
    the baggage entry ``mlobs.debug=1`` gets ``mlobs.sampling.keep=true`` on its server span, and
    the baggage entry in its context (so its other spans, logs and exemplars, and the calls it
    makes downstream, are kept too)."""

    _HEADER = sampling.DEBUG_HEADER.lower().encode("latin-1")

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not self._asks(scope):
            await self.app(scope, receive, send)
            return
        span = trace.get_current_span()
        if span.is_recording():
            span.set_attribute(sampling.KEEP_ATTRIBUTE, True)
        token = context.attach(baggage.set_baggage(sampling.DEBUG_BAGGAGE, "1"))
        try:
            await self.app(scope, receive, send)
        finally:
            context.detach(token)

    def _asks(self, scope: Any) -> bool:
        if sampling.asks_to_keep(baggage.get_baggage(sampling.DEBUG_BAGGAGE)):
            return True
        return any(
            name == self._HEADER and sampling.asks_to_keep(value.decode("latin-1"))
            for name, value in scope.get("headers", ())
        )


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


class _KeepMarkFilter(logging.Filter):
    """``mlobs.sampling.keep=true`` on a record written in a span that carries the keep mark: the
    collector then keeps the record's trace link (the trace is kept for the span's mark)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if sampling.KEEP_ATTRIBUTE not in record.__dict__ and _marked(trace.get_current_span()):
            record.__dict__[sampling.KEEP_ATTRIBUTE] = True
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
        handler.addFilter(_KeepMarkFilter())
        if baggage_keys:
            handler.addFilter(BaggageFilter(baggage_keys))
        setattr(handler, _HANDLER_MARK, True)
        root.addHandler(handler)
    telemetry.handlers.extend(handlers)

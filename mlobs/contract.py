"""The names of the telemetry contract, defined once (generator/TELEMETRY.md documents them).

The sample service emits them, the dashboards, rules, analyzer, `mlobs verify` and the tests read
them: import from here, never restate a name.
"""

from __future__ import annotations

#: The stages of one prediction, in order: each is a span and an ``ml.stage.duration`` sample.
STAGES: tuple[str, ...] = ("validation", "feature_extraction", "inference", "postprocessing")

#: The CLIENT span to the feature store, inside ``feature_extraction`` (not a stage of its own).
FEATURE_LOOKUP_SPAN = "feature_lookup"

# ---- services: the ``service.name`` of each process (OTEL_SERVICE_NAME overrides it)

SERVICE_INFERENCE = "mlobs-inference"
SERVICE_TRAINING = "mlobs-training"
SERVICE_LOADGEN = "mlobs-loadgen"
SERVICE_ANALYZER = "mlobs-analyzer"

# ---- attribute keys (Prometheus turns the dots into underscores: see prometheus_label)

ATTR_STAGE = "ml.stage"
ATTR_MODEL_NAME = "ml.model.name"
ATTR_MODEL_VERSION = "ml.model.version"
ATTR_OUTCOME = "outcome"

#: Ids that belong in exemplars, spans, logs and baggage, but never in a metric series.
ATTR_REQUEST_ID = "request.id"
ATTR_BATCH_ID = "ml.batch.id"
ATTR_TRAINING_RUN_ID = "ml.training.run_id"
CORRELATION_KEYS: tuple[str, ...] = (ATTR_REQUEST_ID, ATTR_BATCH_ID, ATTR_TRAINING_RUN_ID)

# ---- instruments (OpenTelemetry names; prometheus_name gives the series name)

REQUEST_DURATION = "ml.request.duration"
STAGE_DURATION = "ml.stage.duration"
TRAINING_DURATION = "ml.training.duration"
ANALYZER_INCIDENTS = "mlobs.analyzer.incidents"

#: The histograms that carry exemplars: their series keep only these attributes, the ids above
#: survive as the exemplars' filtered attributes (Prometheus stores them as exemplar labels).
EXEMPLAR_HISTOGRAMS: tuple[str, ...] = (REQUEST_DURATION, STAGE_DURATION, TRAINING_DURATION)
DURATION_SERIES_ATTRIBUTES: frozenset[str] = frozenset({ATTR_OUTCOME, ATTR_STAGE, ATTR_MODEL_NAME, ATTR_MODEL_VERSION})

_UNIT_SUFFIXES = {"s": "seconds", "ms": "milliseconds", "By": "bytes"}


def prometheus_label(key: str) -> str:
    """The label Prometheus's OTLP receiver makes of an attribute key: ``ml.stage`` -> ``ml_stage``."""
    return key.replace(".", "_")


def prometheus_name(instrument: str, unit: str = "", *, counter: bool = False) -> str:
    """The series name Prometheus's OTLP receiver gives an instrument (underscores, unit and ``_total``
    suffixes): ``prometheus_name(REQUEST_DURATION, "s")`` is ``ml_request_duration_seconds``; a
    histogram's series add ``_bucket``, ``_sum`` and ``_count`` to it. Annotations (``{incident}``)
    add nothing; a gauge of unit ``1`` (a share) gets ``_ratio``, a counter of unit ``1`` nothing."""
    name = prometheus_label(instrument)
    if unit == "1":
        return name + "_total" if counter else name + "_ratio"
    if unit and not unit.startswith("{"):
        if unit not in _UNIT_SUFFIXES:
            raise ValueError(f"no Prometheus suffix known for unit {unit!r}; known: {', '.join(_UNIT_SUFFIXES)}")
        name += "_" + _UNIT_SUFFIXES[unit]
    return name + "_total" if counter else name


#: The Prometheus names of the exemplar histograms (the dashboards, rules, analyzer and verify read them).
REQUEST_DURATION_SECONDS = prometheus_name(REQUEST_DURATION, "s")
STAGE_DURATION_SECONDS = prometheus_name(STAGE_DURATION, "s")
TRAINING_DURATION_SECONDS = prometheus_name(TRAINING_DURATION, "s")

# ---- OpenTelemetry semantic conventions that any service emits (no mlobs code needed)

#: The collector's span-metrics connector (otel-collector/config.yaml, namespace traces.spanmetrics):
#: calls and durations of every span, labelled service_name, span_name, span_kind and status_code.
SPANMETRICS_NAMESPACE = "traces.spanmetrics"
SPANMETRICS_CALLS_TOTAL = prometheus_name(f"{SPANMETRICS_NAMESPACE}.calls", counter=True)
SPANMETRICS_DURATION_SECONDS = prometheus_name(f"{SPANMETRICS_NAMESPACE}.duration", "s")
SPAN_STATUS_ERROR = "STATUS_CODE_ERROR"
#: The span kinds of the operations a service serves (requests in, messages consumed).
SERVED_SPAN_KINDS: tuple[str, ...] = ("SPAN_KIND_SERVER", "SPAN_KIND_CONSUMER")
#: The OpenTelemetry ASGI instrumentation (FastAPI, Starlette zero-code) makes an INTERNAL span
#: per message of a request, named "<operation> http receive" / "<operation> http send"; the send
#: span takes the response's error status. They are the operation itself, not work under it.
ASGI_MESSAGE_SPAN_SUFFIXES: tuple[str, ...] = (" http receive", " http send")
#: The collector's count connector (log.records): log records per job and severity_text.
LOG_RECORDS_TOTAL = prometheus_name("log.records", counter=True)
LOG_SEVERITY = "severity_text"

#: The series prometheus/rules/services.yml records from the span metrics per job, service_name,
#: span_name and span_kind (the Service overview dashboard reads them).
SPAN_CALLS_RATE = "mlobs:span_calls:rate"
SPAN_ERRORS_RATIO = "mlobs:span_errors:ratio_rate"
SPAN_QUANTILES: tuple[int, ...] = (50, 95, 99)


def span_duration_quantile(q: int) -> str:
    """The recorded quantile ``q`` (50, 95, 99) of the span durations."""
    return f"mlobs:span_duration_seconds:p{q}_rate"


#: Process metrics of the semantic conventions (the Python system-metrics instrumentation emits
#: them with its default configuration, as do other SDKs' process instrumentations).
PROCESS_CPU_TIME = "process.cpu.time"
PROCESS_MEMORY_USAGE = "process.memory.usage"
PROCESS_CPU_TIME_SECONDS_TOTAL = prometheus_name(PROCESS_CPU_TIME, "s", counter=True)
PROCESS_MEMORY_USAGE_BYTES = prometheus_name(PROCESS_MEMORY_USAGE, "By")
#: Also emitted by opentelemetry-instrumentation-system-metrics 0.66b2 when configured (the sample
#: service's mlobs.telemetry configuration does): threads of the process, and CPython's collections
#: per generation (attribute cpython.gc.generation).
PROCESS_THREAD_COUNT = "process.thread.count"
CPYTHON_GC_COLLECTIONS = "cpython.gc.collections"
PROCESS_THREAD_COUNT_SERIES = prometheus_name(PROCESS_THREAD_COUNT)
CPYTHON_GC_COLLECTIONS_TOTAL = prometheus_name(CPYTHON_GC_COLLECTIONS, "{collection}", counter=True)
#: The host's CPU, as a process on it sees it (the system-metrics instrumentation, configured by
#: mlobs.telemetry for the sample service; the collector's hostmetrics receiver is not in our build):
#: a gauge per logical CPU (attribute ``cpu``: 1, 2, ...) and ``state``, the share of the time since
#: the previous export spent in that state. Busy is everything but ``idle``.
SYSTEM_CPU_UTILIZATION = "system.cpu.utilization"
SYSTEM_CPU_UTILIZATION_UNIT = "1"
SYSTEM_CPU_STATES: tuple[str, ...] = ("idle", "user", "system")
SYSTEM_CPU_IDLE = "idle"
SYSTEM_CPU_UTILIZATION_RATIO = prometheus_name(SYSTEM_CPU_UTILIZATION, SYSTEM_CPU_UTILIZATION_UNIT)

#: Events the analyzer looks for near a change point (generator/TELEMETRY.md).
MODEL_DEPLOYMENTS_TOTAL = "ml_model_deployments_total"
TRAINING_RUNS_TOTAL = "ml_training_runs_total"
#: The ground truth of an injected fault: for the tests and `make eval-rca` only, never the analyzer.
FAULT_ACTIVE = "ml_fault_active"

# ---- GenAI semantic conventions (LLM services)
#
# The names of the latest experimental GenAI conventions (semconv 1.37.0 and later; these are the
# names of 1.44.0, the schema of the pinned opentelemetry-semantic-conventions 0.66b2, where they
# have status Development and now live in the semantic-conventions-genai repository). Current
# instrumentations emit them with OTEL_SEMCONV_STABILITY_OPT_IN=gen_ai_latest_experimental; by
# default they stay on 1.36.0 or earlier, where gen_ai.provider.name was gen_ai.system.

#: The environment that has an instrumentation emit those latest experimental names.
GENAI_SEMCONV_OPT_IN: dict[str, str] = {"OTEL_SEMCONV_STABILITY_OPT_IN": "gen_ai_latest_experimental"}

GENAI_CLIENT_OPERATION_DURATION = "gen_ai.client.operation.duration"  # s
GENAI_CLIENT_TOKEN_USAGE = "gen_ai.client.token.usage"  # {token}
GENAI_SERVER_REQUEST_DURATION = "gen_ai.server.request.duration"  # s
GENAI_SERVER_TIME_TO_FIRST_TOKEN = "gen_ai.server.time_to_first_token"  # s
GENAI_SERVER_TIME_PER_OUTPUT_TOKEN = "gen_ai.server.time_per_output_token"  # s
#: instrument -> its unit, as the conventions define it
GENAI_UNITS: dict[str, str] = {
    GENAI_CLIENT_OPERATION_DURATION: "s",
    GENAI_CLIENT_TOKEN_USAGE: "{token}",
    GENAI_SERVER_REQUEST_DURATION: "s",
    GENAI_SERVER_TIME_TO_FIRST_TOKEN: "s",
    GENAI_SERVER_TIME_PER_OUTPUT_TOKEN: "s",
}

ATTR_GENAI_OPERATION_NAME = "gen_ai.operation.name"
ATTR_GENAI_REQUEST_MODEL = "gen_ai.request.model"
ATTR_GENAI_RESPONSE_MODEL = "gen_ai.response.model"
ATTR_GENAI_PROVIDER_NAME = "gen_ai.provider.name"
ATTR_GENAI_TOKEN_TYPE = "gen_ai.token.type"
ATTR_ERROR_TYPE = "error.type"
GENAI_TOKEN_INPUT = "input"
GENAI_TOKEN_OUTPUT = "output"

#: The Prometheus names (histograms: add _bucket, _sum, _count).
GENAI_CLIENT_OPERATION_DURATION_SECONDS = prometheus_name(GENAI_CLIENT_OPERATION_DURATION, "s")
GENAI_CLIENT_TOKEN_USAGE_TOKENS = prometheus_name(GENAI_CLIENT_TOKEN_USAGE, "{token}")
GENAI_SERVER_REQUEST_DURATION_SECONDS = prometheus_name(GENAI_SERVER_REQUEST_DURATION, "s")
GENAI_SERVER_TIME_TO_FIRST_TOKEN_SECONDS = prometheus_name(GENAI_SERVER_TIME_TO_FIRST_TOKEN, "s")
GENAI_SERVER_TIME_PER_OUTPUT_TOKEN_SECONDS = prometheus_name(GENAI_SERVER_TIME_PER_OUTPUT_TOKEN, "s")

#: The series prometheus/rules/genai.yml records (its template reads these names) and the GenAI
#: dashboard reads; per job, gen_ai_provider_name, gen_ai_operation_name, gen_ai_request_model.
GENAI_TOKENS_RATE = "mlobs:gen_ai_client_token_usage:rate"  # tokens/s, also by gen_ai_token_type
GENAI_CLIENT_OPERATIONS_RATE = "mlobs:gen_ai_client_operations:rate"
GENAI_CLIENT_ERRORS_RATE = "mlobs:gen_ai_client_operation_errors:rate"  # also by error_type
GENAI_CLIENT_ERRORS_RATIO = "mlobs:gen_ai_client_operation_errors:ratio_rate"
GENAI_SERVER_REQUESTS_RATE = "mlobs:gen_ai_server_requests:rate"
GENAI_SERVER_ERRORS_RATE = "mlobs:gen_ai_server_request_errors:rate"  # also by error_type
GENAI_SERVER_ERRORS_RATIO = "mlobs:gen_ai_server_request_errors:ratio_rate"
#: p50 and p95 of each duration histogram: f"mlobs:{histogram}:p{q}_rate"
GENAI_QUANTILE_HISTOGRAMS: tuple[str, ...] = (
    GENAI_CLIENT_OPERATION_DURATION_SECONDS,
    GENAI_SERVER_REQUEST_DURATION_SECONDS,
    GENAI_SERVER_TIME_TO_FIRST_TOKEN_SECONDS,
    GENAI_SERVER_TIME_PER_OUTPUT_TOKEN_SECONDS,
)
GENAI_QUANTILES: tuple[int, ...] = (50, 95)
#: stack.yaml genai.prices, one series per model and token type (labels gen_ai_request_model, gen_ai_token_type)
GENAI_PRICE_PER_1K = "mlobs:gen_ai_price_per_1k_tokens"
GENAI_COST_RATE = "mlobs:gen_ai_cost:rate"  # price units (stack.yaml genai.prices) per second


def genai_quantile(histogram: str, q: int) -> str:
    """The recorded quantile ``q`` (50, 95) of a GenAI duration histogram."""
    return f"mlobs:{histogram}:p{q}_rate"

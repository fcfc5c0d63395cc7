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
    add nothing."""
    name = prometheus_label(instrument)
    if unit and not unit.startswith("{"):
        if unit not in _UNIT_SUFFIXES:
            raise ValueError(f"no Prometheus suffix known for unit {unit!r}; known: {', '.join(_UNIT_SUFFIXES)}")
        name += "_" + _UNIT_SUFFIXES[unit]
    return name + "_total" if counter else name


#: The Prometheus names of the exemplar histograms (the dashboards, rules, analyzer and verify read them).
REQUEST_DURATION_SECONDS = prometheus_name(REQUEST_DURATION, "s")
STAGE_DURATION_SECONDS = prometheus_name(STAGE_DURATION, "s")
TRAINING_DURATION_SECONDS = prometheus_name(TRAINING_DURATION, "s")

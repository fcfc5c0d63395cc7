"""The generator's telemetry (the service, the training job, the load generator): :mod:`mlobs.telemetry`
with the views and the correlation ids of the contract (TELEMETRY.md).

Configuration comes from the standard ``OTEL_*`` variables (see :mod:`mlobs.telemetry`), and the
keep rule of tail sampling from ``MLOBS_SAMPLING_*`` and ``MLOBS_TRACE_DETAIL`` (its Sampling
section: exemplars only of kept traces, the per-request keep marker, detail spans);
``OTEL_SDK_DISABLED=true`` turns every signal off. Tests pass in-memory exporters instead.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextvars import Token
from typing import Any

from opentelemetry import baggage, context, trace
from opentelemetry.context import Context
from opentelemetry.sdk.metrics.view import View

from mlobs import telemetry as _telemetry
from mlobs.contract import CORRELATION_KEYS, DURATION_SERIES_ATTRIBUTES, EXEMPLAR_HISTOGRAMS
from mlobs.contract import SERVICE_INFERENCE as SERVICE_INFERENCE  # generator/bench.py imports it from here
from mlobs.telemetry import Telemetry

# generator/bench.py imports it from here (its rewrite can take mlobs.telemetry.disabled).
disabled_telemetry = _telemetry.disabled

# The exemplar-carrying histograms keep only the series attributes of the contract; anything else
# recorded on them (the correlation ids) is dropped from the series by a view and survives only as
# an exemplar's filtered attribute, which Prometheus stores as an exemplar label.
VIEWS: tuple[View, ...] = tuple(
    View(instrument_name=name, attribute_keys=set(DURATION_SERIES_ATTRIBUTES)) for name in EXEMPLAR_HISTOGRAMS
)


def setup_telemetry(service_name: str, **options: Any) -> Telemetry:
    """:func:`mlobs.telemetry.setup` with the contract's views, and its ids copied from baggage onto logs."""
    return _telemetry.setup(service_name, views=VIEWS, baggage_keys=CORRELATION_KEYS, **options)


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

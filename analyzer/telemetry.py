"""The analyzer's own telemetry: a span per analysis, a log per analysis, an incident counter.

Set up by :mod:`mlobs.telemetry` (exporters from the standard ``OTEL_*`` variables,
``OTEL_SDK_DISABLED=true`` for none). Tests pass in-memory exporters instead.
"""

from __future__ import annotations

from typing import Any

from opentelemetry.metrics import Counter

from mlobs import telemetry
from mlobs.contract import ANALYZER_INCIDENTS, SERVICE_ANALYZER
from mlobs.telemetry import Telemetry

SCOPE = "analyzer"


def setup_telemetry(**options: Any) -> Telemetry:
    """:func:`mlobs.telemetry.setup` for ``mlobs-analyzer``.

    The providers are not made global (the analyzer hands them to its instrumentations), so
    tests never leak into each other.
    """
    return telemetry.setup(SERVICE_ANALYZER, scope=SCOPE, set_global=False, **options)


def disabled() -> Telemetry:
    return telemetry.disabled(SERVICE_ANALYZER, scope=SCOPE)


def incidents_counter(handle: Telemetry) -> Counter:
    return handle.meter.create_counter(
        ANALYZER_INCIDENTS, unit="{incident}", description="Alerts analysed, by alertname and top-suspect kind"
    )

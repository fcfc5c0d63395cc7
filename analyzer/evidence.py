"""Evidence around a change point: events (deployments, training runs) and exemplar traces.

* Events: ``ml_model_deployments_total`` and ``ml_training_runs_total`` that went up between a
  few minutes before the change point and now (instant ``increase()`` queries).
* Exemplars: ``/api/v1/query_exemplars`` over the same stretch, of the histogram behind the top
  suspect (its span's span-metric buckets, its stage's ``ml_stage_duration_seconds``, else the
  service's requests), the slowest first; each links to Grafana's Explore by trace id (and to
  the trace UI when ``MLOBS_TRACE_UI_URL`` is set: Jaeger's ``/trace/<id>``).
"""

from __future__ import annotations

import logging
import math
from datetime import UTC, datetime
from typing import Any

from analyzer.links import quote_value
from analyzer.models import Event, Exemplar, Finding
from analyzer.rca import Target, selector
from mlobs import contract, explore

_log = logging.getLogger("analyzer.evidence")

EVENT_LEAD_SECONDS = 300  # events up to this long before the change point count
MAX_EXEMPLARS = 5


def event_queries(target: Target, seconds: int) -> dict[str, str]:
    ml = selector(job=target.job, ml_model_name=target.model_name)
    model = selector(ml_model_name=target.model_name)  # training runs are another job's
    return {
        "deployment": f"sum by (ml_model_version) (increase({contract.MODEL_DEPLOYMENTS_TOTAL}{ml}[{seconds}s])) > 0",
        "training_run": f"sum by (job, outcome) (increase({contract.TRAINING_RUNS_TOTAL}{model}[{seconds}s])) > 0",
    }


def events(prometheus: Any, target: Target, change_point: float, now: float) -> list[Event]:
    seconds = max(60, int(now - change_point + EVENT_LEAD_SECONDS))
    out: list[Event] = []
    for kind, expr in event_queries(target, seconds).items():
        try:
            samples = prometheus.query(expr, now)
        except Exception as exc:
            _log.debug("event query %s failed: %s", kind, exc)
            continue
        for s in samples:
            if not math.isfinite(s.value) or s.value <= 0:
                continue
            labels = ", ".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            what = "model deployment" if kind == "deployment" else "training run"
            out.append(
                Event(
                    kind=kind,
                    summary=f"{s.value:.0f} {what}(s) ({labels}) from {seconds // 60}m before now, "
                    f"the change point {max(0, int(now - change_point))}s ago",
                    promql=expr,
                )
            )
    return out


def exemplar_selector(finding: Finding, target: Target) -> str:
    subject = finding.subject
    if finding.kind in ("operation_latency", "downstream_latency", "errors") or (
        finding.kind == "stage_latency" and not target.model_name
    ):
        spans = selector(service_name=target.service_name, span_name=subject)
        return contract.SPANMETRICS_DURATION_SECONDS + "_bucket" + spans
    if finding.kind == "stage_latency":
        return contract.STAGE_DURATION_SECONDS + "_bucket" + selector(job=target.job, ml_stage=subject)
    return contract.REQUEST_DURATION_SECONDS + "_bucket" + selector(job=target.job)


def exemplars(
    prometheus: Any,
    finding: Finding,
    target: Target,
    start: float,
    end: float,
    *,
    grafana: str,
    traces_uid: str = "tempo",
    trace_ui: str = "",
) -> list[Exemplar]:
    fetch = getattr(prometheus, "query_exemplars", None)
    if fetch is None:
        return []
    query = exemplar_selector(finding, target)
    try:
        rows = fetch(query, start, end)
    except Exception as exc:
        _log.debug("exemplars of %s failed: %s", query, exc)
        return []
    found: dict[str, Exemplar] = {}
    for series_labels, items in rows:
        series = series_labels.get("span_name") or series_labels.get("ml_stage") or series_labels.get("job", "")
        for item in items:
            labels = item.get("labels", {})
            trace_id = labels.get("trace_id") or labels.get("traceID") or labels.get("trace.id")
            if not trace_id:
                continue
            value = float(item.get("value", "nan"))
            at = datetime.fromtimestamp(float(item.get("timestamp", end)), UTC)
            url = (
                f"{trace_ui}/trace/{trace_id}"
                if trace_ui
                else explore.url(
                    traces_uid,
                    explore.trace_id(traces_uid, trace_id),
                    grafana=grafana,
                    start=int(start * 1000),
                    end=int(end * 1000),
                    pane="trace",
                )
            )
            if trace_id not in found or value > found[trace_id].value:
                found[trace_id] = Exemplar(trace_id=trace_id, at=at, value=value, series=series, url=url)
    ranked = sorted(found.values(), key=lambda e: -e.value if math.isfinite(e.value) else 0.0)
    return ranked[:MAX_EXEMPLARS]


def exemplar_query_text(finding: Finding, target: Target) -> str:
    return quote_value(exemplar_selector(finding, target))

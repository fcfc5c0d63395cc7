"""TraceQL, LogQL and Grafana Explore URLs (mlobs.explore) for a finding. Built as text; the
analyzer never runs them.

Datasource uids are fixed by the stack (``prometheus``, ``loki``, ``tempo``), so the URLs work in
any mlobs Grafana.
"""

from __future__ import annotations

from analyzer.models import Finding, Links
from analyzer.settings import Settings
from mlobs import explore

DEFAULT_SLOW = Settings.slow_seconds
# The severity texts of log records worth a look: OpenTelemetry's short names (WARN, ERROR, FATAL;
# Python's SDK writes CRITICAL as FATAL) and the level names other bridges pass through as they are.
ALERTING_SEVERITIES = ("WARN", "WARNING", "ERROR", "FATAL", "CRITICAL")


def quote_value(value: str) -> str:
    """A double-quoted string literal, valid in PromQL, LogQL and TraceQL alike."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _ms(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"


def slow_threshold(finding: Finding, slow: float = DEFAULT_SLOW) -> float:
    """Halfway between the baseline and the current latency: only the traces that got slower; else
    ``slow``, the tail sampler's slow threshold (those traces are all kept)."""
    if finding.baseline is not None and finding.current is not None and finding.current > finding.baseline:
        return (finding.baseline + finding.current) / 2
    return slow


def traceql(
    finding: Finding, service_name: str | None, model_version: str | None = None, slow: float = DEFAULT_SLOW
) -> str:
    service = [f"resource.service.name = {quote_value(service_name)}"] if service_name else []
    if finding.kind in ("operation_latency", "stage_latency", "downstream_latency"):
        terms = [*service, f"name = {quote_value(finding.subject)}", f"duration > {_ms(slow_threshold(finding, slow))}"]
    elif finding.kind == "errors":
        terms = [*service, f"name = {quote_value(finding.subject)}", "status = error"]
    elif finding.kind == "model_regression" and model_version:
        terms = [*service, f"span.ml.model.version = {quote_value(model_version)}"]
    else:
        terms = [*service, f"(status = error || duration > {_ms(slow)})"]
    return "{ " + " && ".join(terms) + " }"


def logql(finding: Finding, service_name: str | None) -> str:
    stream = f"{{service_name={quote_value(service_name)}}}" if service_name else '{service_name=~".+"}'
    if finding.kind == "model_regression":
        return f'{stream} | event_name=~"model.deployed|training.finished"'
    if finding.kind == "logs":
        return f"{stream} | severity_text={quote_value(finding.subject)}"
    return f"{stream} | severity_text=~{quote_value('|'.join(ALERTING_SEVERITIES))}"


def build_links(
    finding: Finding,
    *,
    promql: str,
    grafana: str,
    service: str | None,
    model_version: str | None,
    start_ms: int,
    end_ms: int,
    slow: float = DEFAULT_SLOW,
) -> Links:
    trace_query = traceql(finding, service, model_version, slow)
    log_query = logql(finding, service)

    def url(uid: str, query: dict[str, object]) -> str:
        return explore.url(uid, query, grafana=grafana, start=start_ms, end=end_ms, pane="rca")

    return Links(
        promql=promql,
        prometheus_explore=url("prometheus", explore.promql(promql)),
        traceql=trace_query,
        tempo_explore=url("tempo", explore.traceql(trace_query)),
        logql=log_query,
        loki_explore=url("loki", explore.logs("loki", log_query)),
    )

"""Pipeline and service graph: where is the request that went wrong."""

from __future__ import annotations

from typing import Any

from grafana_foundation_sdk.models.common import StackingMode

from mlobs.config import Stack
from mlobs.dashboards import common as c

UID = "mlobs-pipeline"
FILE = "ml-pipeline-service-graph.json"
ANSWERS = (
    "Where is the request that went wrong? The service graph, span metrics per stage, a TraceQL search "
    "and the logs, filtered by the same service, model, version and request id."
)

SPANS = 'service_name="$service"'
TRACES_OF_MODEL = (
    '{ resource.service.name = "$service" && span.ml.model.name = "$model" && span.ml.model.version =~ "$version" }'
)
LOGS = '{service_name="$service"} | request_id=~"$request_id"'
LOGS_ERRORS = f"{LOGS} | {c.SEVERITY_ERROR}"

SERVICE_GRAPH = (
    "needs the collector's servicegraph connector: the Docker stack has it, the native build does not "
    "(the Go module proxy refuses that module)"
)
NO_DATA: dict[str, str] = {
    "Service graph": SERVICE_GRAPH,
    "Calls per edge": SERVICE_GRAPH,
    "Failed share per edge": SERVICE_GRAPH,
    "Server p95 per edge": SERVICE_GRAPH,
}
# The end-to-end suite checks the first version of the sample model.
E2E_VALUES = {"version": "1"}


def _edges(expr: str) -> str:
    return f"sum by (client, server) ({expr})"


def service_graph(lim: c.Limits) -> c.Section:
    requests = "rate(traces_service_graph_request_total[$__rate_interval])"
    failed = "rate(traces_service_graph_request_failed_total[$__rate_interval])"
    return (
        "Service graph",
        [
            c.node_graph_panel(
                "Service graph",
                "Services and the calls between them, from the collector's service-graph connector "
                "(made before sampling, so every request counts). Red arcs are failed calls; click a "
                "node for its traces. mlobs-feature-store is a virtual node: the downstream lookup.",
                height=12,
            ),
            c.timeseries_panel(
                "Calls per edge",
                "Request rate of each client → server edge of the graph.",
                "reqps",
                [c.promql(_edges(requests), "{{client}} → {{server}}")],
                width=8,
            ),
            c.timeseries_panel(
                "Failed share per edge",
                "Share of the calls of each edge that failed (zero when none did). An edge that fails "
                "while its server reports no errors is the network or a timeout.",
                "percentunit",
                [
                    c.promql(
                        f"({_edges(failed)} or {_edges(requests)} * 0) / {_edges(requests)}",
                        "{{client}} → {{server}}",
                    )
                ],
                steps=lim.error_ratio.steps,
                draw_thresholds=True,
                min_value=0,
                width=8,
            ),
            c.timeseries_panel(
                "Server p95 per edge",
                "95th percentile of the time the server side of each edge took. A slow feature-store "
                "edge (slow_lookup) shows here before it shows in the model's latency.",
                "s",
                [
                    c.promql(
                        "histogram_quantile(0.95, sum by (le, client, server) "
                        "(rate(traces_service_graph_request_server_seconds_bucket[$__rate_interval])))",
                        "{{client}} → {{server}}",
                    )
                ],
                steps=lim.latency.steps,
                width=8,
            ),
        ],
    )


def span_metrics(lim: c.Limits) -> c.Section:
    calls = f"rate(traces_spanmetrics_calls_total{{{SPANS}}}[$__rate_interval])"
    return (
        "Span metrics per stage",
        [
            c.timeseries_panel(
                "Span rate by name",
                "Spans per second of each operation of the service: the request, each stage, the "
                "feature lookup. From the collector's span metrics, before sampling.",
                "ops",
                [c.promql(f"sum by (span_name) ({calls})", "{{span_name}}")],
                width=8,
            ),
            c.timeseries_panel(
                "Span error ratio by name",
                "Share of spans of each operation that ended with an error status; "
                f"{c.percent(lim.error_ratio.warn)} and {c.percent(lim.error_ratio.red)} drawn. The "
                "innermost failing operation is where to look first.",
                "percentunit",
                [
                    c.promql(
                        f"1 - (sum by (span_name) (rate(traces_spanmetrics_calls_total{{{SPANS}, "
                        f'status_code!="STATUS_CODE_ERROR"}}[$__rate_interval])) / sum by (span_name) ({calls}))',
                        "{{span_name}}",
                    )
                ],
                steps=lim.error_ratio.steps,
                draw_thresholds=True,
                min_value=0,
                width=8,
            ),
            c.timeseries_panel(
                "Span p95 duration by name (exemplars)",
                "95th percentile duration of each operation; exemplars open a trace of that operation.",
                "s",
                [
                    c.promql(
                        "histogram_quantile(0.95, sum by (le, span_name) "
                        f"(rate(traces_spanmetrics_duration_seconds_bucket{{{SPANS}}}[$__rate_interval])))",
                        "{{span_name}}",
                        exemplar=True,
                    )
                ],
                steps=lim.latency.steps,
                width=8,
            ),
        ],
    )


def traces_and_logs(lim: c.Limits) -> c.Section:
    return (
        "Traces and logs",
        [
            c.trace_search_panel(
                "Traces of $model $version",
                "Recent traces of the selected service, model and versions (TraceQL on the server span's "
                "ml.model.* attributes). Click a trace id to open it with its spans and logs.",
                TRACES_OF_MODEL,
            ),
            c.trace_search_panel(
                "Slow or failed requests",
                f"Server spans of the service that failed or took longer than {c.duration(lim.slow_ms / 1000)}: "
                "the requests that went wrong. Open one to see which stage failed or was slow.",
                lim.traces_slow_or_failed(),
            ),
            c.timeseries_panel(
                "Log volume by severity",
                "Log records per second by severity for the service and request id filter (LogQL, "
                "structured metadata). Error bursts line up with failing traces.",
                "cps",
                [
                    c.logql(
                        'sum by (severity_text) (rate({service_name="$service"} | request_id=~"$request_id" '
                        "[$__auto]))",
                        legend="{{severity_text}}",
                    )
                ],
                stack=StackingMode.NORMAL,
                width=24,
                height=6,
                datasource=c.LOKI,
            ),
            c.logs_panel(
                "Error logs",
                "Error records of the service (severity ERROR and above). Each carries trace_id: expand "
                "a line and follow the link to its trace.",
                LOGS_ERRORS,
                height=8,
            ),
            c.logs_panel(
                "Logs",
                "All records of the service; put a request id (X-Request-ID) in the Request id box to "
                "see one request's records only.",
                LOGS,
            ),
        ],
    )


def build(stack: Stack) -> dict[str, Any]:
    lim = c.Limits.of(stack)
    return c.assemble(
        UID,
        "ML pipeline and service graph",
        ANSWERS,
        [
            c.service_variable("label_values(traces_spanmetrics_calls_total, service_name)"),
            c.model_variable("ml_model_info"),
            c.version_variable("ml_model_info"),
            c.textbox_variable(
                "request_id",
                "Request id",
                ".*",
                "A request id (X-Request-ID, log attribute request.id) to filter the logs on; .* for all.",
            ),
        ],
        [service_graph(lim), span_metrics(lim), traces_and_logs(lim)],
        time_from="now-30m",
        links=[c.service_overview_link()],
    )

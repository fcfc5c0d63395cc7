"""Service overview: how is this service doing, from OpenTelemetry alone.

Works for any OpenTelemetry service, ML or not: the panels read the span metrics the collector
makes of every service's traces (recorded by prometheus/rules/services.yml, over
alerts.rate_window), the semantic-convention process metrics, and the service's logs and traces.
No ml_* metric is needed. The thresholds are those of the span-metric alerts: the service's own
limits of stack.yaml, else the global alerts.error_ratio and alerts.latency_p99_seconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from grafana_foundation_sdk.builders import dashboard, prometheus
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.models import dashboard as models
from grafana_foundation_sdk.models.common import StackingMode

from mlobs import contract
from mlobs.config import Stack
from mlobs.dashboards import common as c

UID = c.SERVICE_OVERVIEW_UID
FILE = "service-overview.json"
ANSWERS = (
    "How is this service doing? Calls, error ratio and duration per operation from the span metrics, "
    "CPU and memory from the process metrics, its logs and links to its slowest and failed traces: "
    "for any OpenTelemetry service, ML or not."
)

#: The service and the operations selected (span metrics).
SPANS = f'{c.SPAN_SERVICE}="$service", {c.SPAN_NAME}=~"$operation"'
#: The same service as a Prometheus job (its own metrics: process, log counts).
JOB = 'job="$service"'
BY_OPERATION = f"by ({c.SPAN_NAME}, {c.SPAN_KIND})"
OPERATION_LEGEND = f"{{{{{c.SPAN_NAME}}}}} ({{{{{c.SPAN_KIND}}}}})"

# Panels that stay empty in a plain run of the sample service, and why (read by the end-to-end suite).
NO_DATA: dict[str, str] = {}
E2E_VALUES: dict[str, str] = {}


def _links(stores: c.Stores, lim: c.Limits) -> list[dashboard.DashboardLink]:
    """Slow and failed traces of the service (the slow ones: those the tail sampler always keeps), its error logs."""
    return [
        stores.trace_search(
            f"Slow traces of $service (over {c.duration(lim.slow_ms / 1000)})",
            f'{{ resource.service.name = "$service" && duration > {lim.slow} }}',
            min_duration=lim.slow,
        ),
        stores.trace_search(
            "Failed traces of $service",
            '{ resource.service.name = "$service" && status = error }',
            tags="error=true",
        ),
        stores.logs_link("Error logs of $service", stores.service_logs(errors=True)),
    ]


def _recorded(series: str, matchers: str = "", aggregate: str = f"max {BY_OPERATION}") -> str:
    return f"{aggregate} ({series}{{{SPANS}{matchers}}})"


def served(errors: c.ServiceLimit, latency: c.ServiceLimit, links: Sequence[dashboard.DashboardLink]) -> c.Section:
    def worst_errors(matchers: str, suffix: str) -> list[prometheus.Dataquery]:
        expr = _recorded(c.SPAN_ERRORS_RATIO, f", {c.SERVED_SPANS}{matchers}", "max")
        return [c.promql(expr, "worst", ref="A" + suffix)]

    def worst_p99(matchers: str, suffix: str) -> list[prometheus.Dataquery]:
        expr = _recorded(c.span_duration_quantile(99), f", {c.SERVED_SPANS}{matchers}", "max")
        return [c.promql(expr, "worst p99", ref="A" + suffix)]

    error_targets, error_overrides = errors.targets(worst_errors)
    p99_targets, p99_overrides = latency.targets(worst_p99)
    return (
        "Served operations (what the alerts judge)",
        [
            c.stat_panel(
                "Served calls per second",
                "Calls per second of the operations the service serves (SERVER and CONSUMER spans: requests "
                "in, messages consumed), from the span metrics, before sampling. Zero means the service is "
                "down or receives nothing.",
                "reqps",
                [c.promql(_recorded(c.SPAN_CALLS_RATE, f", {c.SERVED_SPANS}", "sum"), "calls/s")],
                steps=c.NONE_IS_BAD,
                width=8,
                links=links,
            ),
            c.ServiceLimit.apply(
                c.stat_panel(
                    "Worst error ratio of a served operation",
                    "The highest share of failed spans among the served operations, as ServiceErrorRatioHigh "
                    f"judges it (limit {c.percent(errors.default.red)}, or the service's own in stack.yaml). "
                    "Follow the failed traces and error logs from the panel links.",
                    "percentunit",
                    error_targets,
                    steps=errors.default.steps,
                    decimals=2,
                    width=8,
                    links=links,
                ),
                error_overrides,
            ),
            c.ServiceLimit.apply(
                c.stat_panel(
                    "Worst p99 of a served operation",
                    "The highest p99 duration among the served operations, as ServiceLatencyHigh judges it "
                    f"(limit {c.duration(latency.default.red)}, or the service's own in stack.yaml). Open the "
                    "slowest traces from the panel links.",
                    "s",
                    p99_targets,
                    steps=latency.default.steps,
                    width=8,
                    links=links,
                ),
                p99_overrides,
            ),
        ],
    )


def operations(
    lim: c.Limits, errors: c.ServiceLimit, latency: c.ServiceLimit, links: Sequence[dashboard.DashboardLink]
) -> c.Section:
    def error_ratio(matchers: str, suffix: str) -> list[prometheus.Dataquery]:
        return [c.promql(_recorded(c.SPAN_ERRORS_RATIO, matchers), OPERATION_LEGEND, ref="A" + suffix)]

    def durations(matchers: str, suffix: str) -> list[prometheus.Dataquery]:
        return [
            c.promql(
                _recorded(c.span_duration_quantile(q), matchers),
                f"p{q} {OPERATION_LEGEND}",
                ref=ref + suffix,
            )
            for ref, q in zip("ABC", c.SPAN_QUANTILES, strict=True)
        ]

    error_targets, error_overrides = errors.targets(error_ratio)
    duration_targets, duration_overrides = latency.targets(durations)
    raw = f"rate({contract.SPANMETRICS_DURATION_SECONDS}_bucket{{{SPANS}}}[$__rate_interval])"
    return (
        "Per operation (span metrics)",
        [
            c.timeseries_panel(
                "Calls per second by operation",
                "Spans per second of each selected operation of the service, every span kind (server, "
                "client, internal, producer, consumer), from the span metrics before sampling.",
                "ops",
                [c.promql(_recorded(c.SPAN_CALLS_RATE, aggregate=f"sum {BY_OPERATION}"), OPERATION_LEGEND)],
                width=12,
                links=links,
            ),
            c.ServiceLimit.apply(
                c.timeseries_panel(
                    "Error ratio by operation",
                    "Share of the spans of each operation that ended with an error status (zero while none "
                    f"failed). The line is the alert's limit: {c.percent(errors.default.red)}, or the "
                    "service's own in stack.yaml. A CLIENT span that fails is the called service's error.",
                    "percentunit",
                    error_targets,
                    steps=errors.default.steps,
                    draw_thresholds=True,
                    min_value=0,
                    width=12,
                    links=links,
                ),
                error_overrides,
            ),
            c.ServiceLimit.apply(
                c.timeseries_panel(
                    "Duration p50, p95, p99 by operation",
                    "Duration percentiles of each operation, recorded over alerts.rate_window. The line is "
                    f"the p99 alert's limit: {c.duration(latency.default.red)}, or the service's own in "
                    "stack.yaml.",
                    "s",
                    duration_targets,
                    steps=latency.default.steps,
                    draw_thresholds=True,
                    min_value=0,
                    width=12,
                    links=links,
                ),
                duration_overrides,
            ),
            c.heatmap_panel(
                "Duration distribution (exemplars)",
                "Span duration histogram of the selected operations over time, straight from the span "
                "metrics; brighter cells hold more spans. Exemplar dots open the trace of that very span "
                f"(traces slower than {c.duration(lim.slow_ms / 1000)} are always kept by the tail sampler).",
                "s",
                [c.promql(f"sum by (le) ({raw})", "{{le}}", exemplar=True, heatmap_format=True)],
                cell_unit="ops",
            ),
        ],
    )


def saturation(stores: c.Stores) -> c.Section:
    panels: list[cogbuilder.Builder[models.Panel]] = [
        c.cpu_panel(JOB),
        c.memory_panel(JOB),
        c.timeseries_panel(
            "Log records by severity",
            "Log records per second by severity, counted by the collector. A rise of ERROR records goes "
            "with the error ratio; open them with the panel link.",
            "cps",
            [
                c.promql(
                    f"sum by ({c.LOG_SEVERITY}) (rate({c.LOG_RECORDS_TOTAL}{{{JOB}}}[$__rate_interval]))",
                    f"{{{{{c.LOG_SEVERITY}}}}}",
                )
            ],
            stack=StackingMode.NORMAL,
            width=8,
            links=[stores.logs_link("Error logs of $service", stores.service_logs(errors=True))],
        ),
    ]
    return ("Process and logs", panels)


def logs(stores: c.Stores) -> c.Section:
    return (
        "Logs",
        [
            stores.logs_panel(
                "Error logs of $service",
                "Records of the service of severity ERROR and above. Each carries trace_id: expand a line "
                "and follow the link to its trace.",
                stores.service_logs(errors=True),
                height=8,
            ),
            stores.logs_panel(
                "Logs of $service",
                "All records of the service, newest first.",
                stores.service_logs(),
            ),
        ],
    )


def build(stack: Stack) -> dict[str, Any]:
    lim = c.Limits.of(stack)
    stores = c.Stores.of(stack)
    errors = c.ServiceLimit.of(stack, "error_ratio")
    latency = c.ServiceLimit.of(stack, "latency_p99_seconds")
    links = _links(stores, lim)
    spans = contract.SPANMETRICS_CALLS_TOTAL
    return c.assemble(
        UID,
        "Service overview",
        ANSWERS,
        [
            c.query_variable(
                "service",
                "Service",
                f"label_values({spans}, {c.SPAN_SERVICE})",
                c.SAMPLE_SERVICE,
                "The service.name of any service that sends traces (span metrics).",
            ),
            c.query_variable(
                "operation",
                "Operation",
                f'label_values({spans}{{{c.SPAN_SERVICE}="$service"}}, {c.SPAN_NAME})',
                ["$__all"],
                "Span names (operations) of the service: one, several or all.",
                multi=True,
            ),
        ],
        [
            served(errors, latency, links),
            operations(lim, errors, latency, links),
            saturation(stores),
            logs(stores),
        ],
    )

"""Stack health: is the telemetry itself flowing (collector, Prometheus, alerting)."""

from __future__ import annotations

from typing import Any

from grafana_foundation_sdk.models.dashboard import DynamicConfigValue

from mlobs.config import Stack
from mlobs.dashboards import common as c

UID = "mlobs-stack"
FILE = "stack-health.json"
ANSWERS = (
    "Is the telemetry itself healthy? Collector items accepted, refused, dropped and queued per signal, "
    "Prometheus ingestion and rule evaluation, and alert states in Prometheus and Alertmanager."
)

# The collector's own metrics (receiverhelper, exporterhelper, processorhelper), scraped from its
# Prometheus endpoint. Collector 0.165 exposes them without type or unit suffixes (counters have no
# _total, otelcol_process_memory_rss no _bytes): checked by scraping the native build with Prometheus 3.16.
SIGNALS = (("spans", "spans"), ("metric_points", "metric points"), ("log_records", "log records"))
RATE = "[$__rate_interval]"

NO_DATA: dict[str, str] = {
    "Alert states over time": "needs a pending or firing alert",
}
E2E_VALUES: dict[str, str] = {}


def _per_signal(template: str, legend: str) -> list[Any]:
    return [
        c.promql(template.format(signal=signal), legend.format(name=name), ref=ref)
        for ref, (signal, name) in zip("ABC", SIGNALS, strict=True)
    ]


def _dropped(signal: str) -> str:
    # Items an exporter gave up on: failed sends plus items refused by a full queue. Both series
    # appear only once it happened, so each falls back to zero for every exporter that tried to send.
    def per_exporter(metric: str) -> str:
        return f"sum by (exporter) (rate({metric}{RATE}))"

    failed = per_exporter(f"otelcol_exporter_send_failed_{signal}")
    zero = f"({per_exporter(f'otelcol_exporter_sent_{signal}')} or {failed}) * 0"
    enqueue_failed = per_exporter(f"otelcol_exporter_enqueue_failed_{signal}")
    return f"({failed} or {zero}) + ({enqueue_failed} or {zero})"


def collector() -> c.Section:
    return (
        "OpenTelemetry Collector",
        [
            c.timeseries_panel(
                "Accepted items per signal",
                "Spans, metric points and log records the receivers accepted per second. This is the "
                "load entering the stack; a drop to zero means the services stopped sending.",
                "cps",
                _per_signal(f"sum(rate(otelcol_receiver_accepted_{{signal}}{RATE}))", "{name}"),
                width=8,
            ),
            c.timeseries_panel(
                "Refused items per signal",
                "Items the receivers refused (back-pressure from the memory limiter or a full pipeline). "
                "Anything above zero is data the services could not deliver.",
                "cps",
                _per_signal(f"sum(rate(otelcol_receiver_refused_{{signal}}{RATE}))", "{name}"),
                steps=c.ANY_IS_BAD,
                draw_thresholds=True,
                width=8,
            ),
            c.timeseries_panel(
                "Receiver failures per signal",
                "Items the receivers failed to process because of internal errors. Above zero: read the "
                "collector's own logs.",
                "cps",
                _per_signal(f"sum(rate(otelcol_receiver_failed_{{signal}}{RATE}))", "{name}"),
                steps=c.ANY_IS_BAD,
                draw_thresholds=True,
                width=8,
            ),
            c.timeseries_panel(
                "Sent items per exporter",
                "Items each exporter delivered per second, per signal: to Prometheus, Loki and Tempo.",
                "cps",
                _per_signal(
                    f"sum by (exporter) (rate(otelcol_exporter_sent_{{signal}}{RATE}))", "{{{{exporter}}}} {name}"
                ),
                width=8,
            ),
            c.timeseries_panel(
                "Dropped items per exporter",
                "Items an exporter failed to send or could not queue, per signal. Above zero the backend "
                "is down or too slow: that data is lost once retries run out.",
                "cps",
                [
                    c.promql(_dropped(signal), f"{{{{exporter}}}} {name}", ref=ref)
                    for ref, (signal, name) in zip("ABC", SIGNALS, strict=True)
                ],
                steps=c.ANY_IS_BAD,
                draw_thresholds=True,
                width=8,
            ),
            c.timeseries_panel(
                "Items removed by processors",
                "Items in minus items out of each processor, per signal. Tail sampling removes traces "
                "on purpose; any other processor removing items is dropping data.",
                "cps",
                [
                    c.promql(
                        f"sum by (processor, otel_signal) (rate(otelcol_processor_incoming_items{RATE}))"
                        f" - sum by (processor, otel_signal) (rate(otelcol_processor_outgoing_items{RATE}))",
                        "{{processor}} {{otel_signal}}",
                    )
                ],
                width=8,
            ),
            c.timeseries_panel(
                "Exporter queue fill",
                "Share of each exporter's sending queue in use, per signal; orange above 70%, red above 90%. A full "
                "queue refuses new items: the backend is not keeping up.",
                "percentunit",
                [
                    c.promql(
                        "max by (exporter, data_type) (otelcol_exporter_queue_size / otelcol_exporter_queue_capacity)",
                        "{{exporter}} {{data_type}}",
                    )
                ],
                steps=((None, c.GREEN), (0.7, c.ORANGE), (0.9, c.RED)),
                draw_thresholds=True,
                min_value=0,
                max_value=1,
                width=8,
            ),
            c.timeseries_panel(
                "Queued batches per exporter and signal",
                "Batches waiting in each exporter's sending queue, per signal. It should hover near zero; a queue "
                "that only grows is a backend outage being buffered.",
                "short",
                [c.promql("sum by (exporter, data_type) (otelcol_exporter_queue_size)", "{{exporter}} {{data_type}}")],
                width=8,
            ),
            c.timeseries_panel(
                "Collector memory and CPU",
                "Resident memory (left) and CPU use of the collector process. Memory close to the memory "
                "limiter's limit makes the receivers refuse data.",
                "bytes",
                [
                    c.promql("sum by (instance) (otelcol_process_memory_rss)", "RSS {{instance}}", ref="A"),
                    c.promql(
                        f"sum by (instance) (rate(otelcol_process_cpu_seconds{RATE}))",
                        "CPU {{instance}}",
                        ref="B",
                    ),
                ],
                width=8,
            ).override_by_query(
                "B",
                [
                    DynamicConfigValue(id_val="unit", value="percentunit"),
                    DynamicConfigValue(id_val="custom.axisPlacement", value="right"),
                ],
            ),
        ],
    )


def prometheus() -> c.Section:
    return (
        "Prometheus",
        [
            c.timeseries_panel(
                "Samples appended",
                "Samples written to Prometheus' head block per second, all sources (OTLP pushes and "
                "scrapes). It follows the metric points the collector sends.",
                "cps",
                [c.promql(f"sum(rate(prometheus_tsdb_head_samples_appended_total{RATE}))", "samples/s")],
                steps=c.NONE_IS_BAD,
                width=8,
            ),
            c.timeseries_panel(
                "OTLP write requests by status",
                "Requests on Prometheus' OTLP receiver by HTTP status. 4xx means rejected metrics "
                "(names, out-of-order samples); 5xx means Prometheus is failing.",
                "reqps",
                [
                    c.promql(
                        f'sum by (code) (rate(prometheus_http_requests_total{{handler=~"/api/v1/otlp/.*"}}{RATE}))',
                        "{{code}}",
                    )
                ],
                width=8,
            ),
            c.timeseries_panel(
                "Rejected samples",
                "Samples Prometheus refused: out of order, out of bounds, or older than the out-of-order "
                "window. Above zero some OTLP data points are lost.",
                "cps",
                [
                    c.promql(f"sum(rate(prometheus_tsdb_out_of_order_samples_total{RATE}))", "out of order", ref="A"),
                    c.promql(f"sum(rate(prometheus_tsdb_out_of_bound_samples_total{RATE}))", "out of bounds", ref="B"),
                    c.promql(
                        f"sum(rate(prometheus_tsdb_too_old_samples_total{RATE}))",
                        "older than the out-of-order window",
                        ref="C",
                    ),
                ],
                steps=c.ANY_IS_BAD,
                draw_thresholds=True,
                width=8,
            ),
            c.stat_panel(
                "Head series",
                "Active series in Prometheus' head block. A sudden jump means a new label with many values "
                "(high cardinality): ids must never be labels.",
                "short",
                [c.promql("sum(prometheus_tsdb_head_series)", "series")],
                width=6,
            ),
            c.stat_panel(
                "Scrape targets up",
                "Each scraped target: up or down.",
                "none",
                [c.promql("max by (job) (up)", "{{job}}")],
                steps=((None, c.RED), (1, c.GREEN)),
                mappings=c.value_text({"0": ("down", c.RED), "1": ("up", c.GREEN)}),
                width=6,
            ),
            c.stat_panel(
                "Rule evaluation failures",
                "Recording and alerting rule evaluations that failed per second. Above zero some alerts "
                "cannot fire: check the rule expressions.",
                "ops",
                [c.promql(f"sum(rate(prometheus_rule_evaluation_failures_total{RATE}))", "failures/s")],
                steps=c.ANY_IS_BAD,
                width=6,
            ),
            c.stat_panel(
                "Alertmanagers discovered",
                "Alertmanagers Prometheus sends alerts to. Zero means alerts fire but nobody is notified.",
                "none",
                [c.promql("max(prometheus_notifications_alertmanagers_discovered)", "alertmanagers")],
                steps=c.NONE_IS_BAD,
                width=6,
            ),
        ],
    )


def alerts() -> c.Section:
    return (
        "Alerts",
        [
            c.alert_list_panel(
                "Alert rules firing or pending",
                "Current state of the alert rules, firing first, as Grafana reads them from Prometheus. "
                "Silences and notification routing live in Alerting, on the Alertmanager datasource.",
                width=8,
                height=8,
            ),
            c.stat_panel(
                "Firing alerts",
                "Alerts firing now (Prometheus' ALERTS series). Zero is green.",
                "none",
                [c.promql('count(ALERTS{alertstate="firing"}) or vector(0)', "firing")],
                steps=c.ANY_IS_BAD,
                width=4,
                height=8,
            ),
            c.statetimeline_panel(
                "Alert states over time",
                "When each alert was pending (orange) and firing (red). Line them up with the deployment "
                "and fault annotations.",
                "none",
                [
                    c.promql(
                        'max by (alertname) (ALERTS{alertstate="firing"}) * 2'
                        ' or max by (alertname) (ALERTS{alertstate="pending"})',
                        "{{alertname}}",
                    )
                ],
                steps=((None, c.GREEN), (1, c.ORANGE), (2, c.RED)),
                mappings=c.value_text({"1": ("pending", c.ORANGE), "2": ("firing", c.RED)}),
                width=12,
                height=8,
            ),
            c.timeseries_panel(
                "Alerts in Alertmanager by state",
                "Alerts Alertmanager holds: active ones are notified, suppressed ones are silenced or "
                "inhibited. Active alerts that Prometheus does not show as firing are stale.",
                "short",
                [c.promql("sum by (state) (alertmanager_alerts)", "{{state}}")],
                width=12,
            ),
            c.timeseries_panel(
                "Failed notifications",
                "Notifications Alertmanager could not deliver, per integration (the analyzer's webhook "
                "among them). Above zero nobody hears about the alerts.",
                "cps",
                [
                    c.promql(
                        f"sum by (integration) (rate(alertmanager_notifications_failed_total{RATE}))",
                        "{{integration}}",
                    )
                ],
                steps=c.ANY_IS_BAD,
                draw_thresholds=True,
                width=12,
            ),
        ],
    )


def build(stack: Stack) -> dict[str, Any]:
    """The stack's own health; none of its thresholds is a setting of stack.yaml (any failure is red)."""
    return c.assemble(
        UID,
        "mlobs stack health",
        ANSWERS,
        [],
        [collector(), prometheus(), alerts()],
    )

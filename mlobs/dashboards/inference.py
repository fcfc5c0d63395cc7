"""ML inference overview: is the model service up and fast, per model, version and stage."""

from __future__ import annotations

from typing import Any

from grafana_foundation_sdk.models.common import BigValueTextMode, StackingMode

from mlobs.config import Stack
from mlobs.dashboards import common as c

UID = "mlobs-inference"
FILE = "ml-inference-overview.json"
ANSWERS = (
    "Is the model service up and fast? Rate, errors and latency per model, version and stage, with "
    "exemplars, saturation and links to traces and logs."
)

MODEL = 'job="$service", ml_model_name="$model", ml_model_version=~"$version"'
REQUESTS = f"ml_request_duration_seconds_count{{{MODEL}}}"
BY_VERSION = "sum by (ml_model_version)"

LOGS_OF_SERVICE = '{service_name="$service"}'
LOGS_ERRORS = f"{LOGS_OF_SERVICE} | {c.SEVERITY_ERROR}"

# Panels that stay empty in a plain run of the sample service, and why (read by the end-to-end suite).
NO_DATA: dict[str, str] = {}
# The end-to-end suite checks the first version of the sample model.
E2E_VALUES = {"version": "1"}


def _links(lim: c.Limits) -> list[Any]:
    return [
        c.traces_link("Slow or failed requests (traces)", lim.traces_slow_or_failed()),
        c.logs_link("Error logs of $service", LOGS_ERRORS),
        c.logs_link("All logs of $service", LOGS_OF_SERVICE),
    ]


def _rate(metric: str, selector: str, by: str = BY_VERSION) -> str:
    return f"{by} (rate({metric}{{{selector}}}[$__rate_interval]))"


def _quantile(q: float, metric: str, selector: str, by: str) -> str:
    return f"histogram_quantile({q}, sum by (le, {by}) (rate({metric}{{{selector}}}[$__rate_interval])))"


def _server_error_ratio(by: str) -> str:
    # 1 - (success + invalid input) / all: server errors only, and a value even when nothing failed.
    ok = f'{MODEL}, outcome=~"success|invalid"'
    return (
        f"1 - ({by} (rate(ml_request_duration_seconds_count{{{ok}}}[$__rate_interval]))"
        f" / {by} (rate({REQUESTS}[$__rate_interval])))"
    )


def golden_signals(lim: c.Limits) -> c.Section:
    return (
        "Requests, errors, latency",
        [
            c.stat_panel(
                "Request rate",
                "Predictions served per second, all selected versions. A drop to zero means the service "
                "is down or receives no traffic.",
                "reqps",
                [c.promql(f"sum(rate({REQUESTS}[$__rate_interval]))", "requests/s")],
                steps=c.NONE_IS_BAD,
                links=_links(lim),
            ),
            c.stat_panel(
                "Server error ratio",
                "Share of requests that failed with a server error (outcome=error); invalid input is not "
                f"counted. Above {c.percent(lim.error_ratio.warn)} look at the error traces and logs (panel links).",
                "percentunit",
                [c.promql(_server_error_ratio("sum"), "errors")],
                steps=lim.error_ratio.steps,
                decimals=2,
                links=_links(lim),
            ),
            c.stat_panel(
                "p95 latency",
                "95th percentile of the request duration over all selected versions. Above "
                f"{c.duration(lim.latency.warn)} look at the stage breakdown below, then at slow traces.",
                "s",
                [c.promql(_quantile(0.95, "ml_request_duration_seconds_bucket", MODEL, "job"), "p95")],
                steps=lim.latency.steps,
                links=_links(lim),
            ),
            c.stat_panel(
                "Versions live",
                "Model versions that reported ml_model_info in the last sample. More than one means "
                "two versions are serving (a rollout, or a regression being compared).",
                "none",
                [
                    c.promql(
                        'max by (ml_model_version) (ml_model_info{job="$service", ml_model_name="$model"})',
                        "{{ml_model_version}}",
                        instant=True,
                    )
                ],
                steps=c.NEUTRAL,
                text_mode=BigValueTextMode.NAME,
            ),
            c.timeseries_panel(
                "Requests by outcome and version",
                "Request rate split by outcome (success, error, invalid) and model version. Errors "
                "that appear with a new version point at the deployment.",
                "reqps",
                [
                    c.promql(
                        f"sum by (ml_model_version, outcome) (rate({REQUESTS}[$__rate_interval]))",
                        "v{{ml_model_version}} {{outcome}}",
                    )
                ],
                stack=StackingMode.NORMAL,
                links=_links(lim),
            ),
            c.timeseries_panel(
                "Server error ratio by version",
                f"Server error ratio per model version, with the {c.percent(lim.error_ratio.warn)} and "
                f"{c.percent(lim.error_ratio.red)} thresholds drawn. Compare "
                "the versions after a deployment.",
                "percentunit",
                [c.promql(_server_error_ratio(BY_VERSION), "v{{ml_model_version}}")],
                steps=lim.error_ratio.steps,
                draw_thresholds=True,
                min_value=0,
                links=_links(lim),
            ),
            c.timeseries_panel(
                "Latency percentiles by version (exemplars)",
                "p50, p95 and p99 request duration per version. Exemplar dots link each sample to the "
                "trace of that very request: click one on a spike.",
                "s",
                [
                    c.promql(
                        _quantile(q, "ml_request_duration_seconds_bucket", MODEL, "ml_model_version"),
                        f"p{int(q * 100)} v{{{{ml_model_version}}}}",
                        ref=ref,
                        exemplar=True,
                    )
                    for ref, q in (("A", 0.5), ("B", 0.95), ("C", 0.99))
                ],
                steps=lim.latency.steps,
                draw_thresholds=True,
                links=_links(lim),
            ),
            c.heatmap_panel(
                "Latency distribution (exemplars)",
                "Request duration histogram over time, all selected versions; brighter cells hold more "
                "requests. A second band means a slow path; exemplars open the trace of a request.",
                "s",
                [
                    c.promql(
                        f"sum by (le) (rate(ml_request_duration_seconds_bucket{{{MODEL}}}[$__rate_interval]))",
                        "{{le}}",
                        exemplar=True,
                        heatmap_format=True,
                    )
                ],
            ),
        ],
    )


def stages(lim: c.Limits) -> c.Section:
    stage = MODEL
    spans = f'service_name="$service", span_name=~"{c.SERVING_SPAN_REGEX}"'
    return (
        "Pipeline stages",
        [
            c.timeseries_panel(
                "Stage p95 duration (exemplars)",
                "95th percentile duration of each serving stage (validation, feature extraction, "
                "inference, postprocessing). The stage that rises with the request latency is the cause.",
                "s",
                [
                    c.promql(
                        _quantile(0.95, "ml_stage_duration_seconds_bucket", stage, "ml_stage"),
                        "{{ml_stage}}",
                        exemplar=True,
                    )
                ],
                steps=lim.latency.steps,
                width=8,
            ),
            c.timeseries_panel(
                "Stage rate",
                "Executions per second of each stage. A stage that runs less often than validation "
                "means requests stop early (rejected input, errors).",
                "ops",
                [c.promql(_rate("ml_stage_duration_seconds_count", stage, "sum by (ml_stage)"), "{{ml_stage}}")],
                width=8,
            ),
            c.timeseries_panel(
                "Stage error ratio (span metrics)",
                "Share of spans of each stage, including the downstream feature lookup, that ended in "
                "error, from the collector's span metrics. Validation errors are bad input; others are faults.",
                "percentunit",
                [
                    c.promql(
                        f"1 - (sum by (span_name) (rate(traces_spanmetrics_calls_total{{{spans}, "
                        f'status_code!="STATUS_CODE_ERROR"}}[$__rate_interval]))'
                        f" / sum by (span_name) (rate(traces_spanmetrics_calls_total{{{spans}}}[$__rate_interval])))",
                        "{{span_name}}",
                    )
                ],
                steps=lim.error_ratio.steps,
                draw_thresholds=True,
                min_value=0,
                width=8,
            ),
        ],
    )


def saturation(lim: c.Limits) -> c.Section:
    return (
        "Saturation and logs",
        [
            c.timeseries_panel(
                "CPU per instance",
                "CPU seconds used per second by each process of the service (1 = one core). A Python "
                "worker that stays near 100% is saturated: latency will follow.",
                "percentunit",
                [
                    c.promql(
                        'sum by (instance) (rate(process_cpu_time_seconds_total{job="$service"}[$__rate_interval]))',
                        "{{instance}}",
                    )
                ],
                steps=((None, c.GREEN), (0.8, c.ORANGE), (1.0, c.RED)),
                draw_thresholds=True,
                min_value=0,
                width=8,
            ),
            c.timeseries_panel(
                "Memory per instance",
                "Resident memory of each process of the service. Steady growth across requests is a leak; "
                "a step at a deployment is the new model's size.",
                "bytes",
                [c.promql('sum by (instance) (process_memory_usage_bytes{job="$service"})', "{{instance}}")],
                steps=((None, c.GREEN), (1024**3, c.ORANGE), (2 * 1024**3, c.RED)),
                min_value=0,
                width=8,
            ),
            c.timeseries_panel(
                "Log records by severity",
                "Log records per second by severity, counted by the collector. A rise of ERROR records "
                "goes with the error ratio; open them with the panel link.",
                "cps",
                [
                    c.promql(
                        'sum by (severity_text) (rate(log_records_total{job="$service"}[$__rate_interval]))',
                        "{{severity_text}}",
                    )
                ],
                stack=StackingMode.NORMAL,
                width=8,
                links=_links(lim),
            ),
        ],
    )


def build(stack: Stack) -> dict[str, Any]:
    lim = c.Limits.of(stack)
    return c.assemble(
        UID,
        "ML inference overview",
        ANSWERS,
        [
            c.service_variable("label_values(ml_request_duration_seconds_count, job)"),
            c.model_variable("ml_request_duration_seconds_count"),
            c.version_variable("ml_request_duration_seconds_count"),
        ],
        [golden_signals(lim), stages(lim), saturation(lim)],
        links=[c.service_overview_link()],
    )

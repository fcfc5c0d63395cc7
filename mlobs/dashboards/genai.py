"""GenAI: tokens, cost, latency and errors of LLM services (OpenTelemetry GenAI conventions).

Every metric panel reads a series that prometheus/rules/genai.yml records from the GenAI
semantic-convention metrics (names in mlobs/contract.py), per job, gen_ai_provider_name,
gen_ai_operation_name and gen_ai_request_model over alerts.rate_window. The time-to-first-token
line is alerts.genai_ttft_p95_seconds, the error-ratio line alerts.error_ratio (the limits of
GenAITimeToFirstTokenHigh and GenAIErrorRatioHigh); the cost comes from stack.yaml genai.prices.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from grafana_foundation_sdk.models.common import StackingMode

from mlobs import contract as k
from mlobs.config import Stack
from mlobs.dashboards import common as c

UID = "mlobs-genai"
FILE = "genai-overview.json"
ANSWERS = (
    "How do the LLM services do? Tokens in and out, cost, time to first token, time per output token, "
    "request durations and errors per model, from the OpenTelemetry GenAI conventions."
)

MODEL = k.prometheus_label(k.ATTR_GENAI_REQUEST_MODEL)
OPERATION = k.prometheus_label(k.ATTR_GENAI_OPERATION_NAME)
TOKEN_TYPE = k.prometheus_label(k.ATTR_GENAI_TOKEN_TYPE)
ERROR_TYPE = k.prometheus_label(k.ATTR_ERROR_TYPE)
SELECTOR = f'job=~"$service", {MODEL}=~"$model"'
#: The recorded series a GenAI service has one of at least: a client's tokens or calls, a server's requests.
SOURCES = (k.GENAI_TOKENS_RATE, k.GENAI_CLIENT_OPERATIONS_RATE, k.GENAI_SERVER_REQUESTS_RATE)
ANY_SOURCE = '__name__=~"' + "|".join(SOURCES) + '"'
TTFT = k.GENAI_SERVER_TIME_TO_FIRST_TOKEN_SECONDS
TPOT = k.GENAI_SERVER_TIME_PER_OUTPUT_TOKEN_SECONDS
SIDES = (
    ("server", k.GENAI_SERVER_REQUEST_DURATION_SECONDS, k.GENAI_SERVER_REQUESTS_RATE,
     k.GENAI_SERVER_ERRORS_RATE, k.GENAI_SERVER_ERRORS_RATIO),
    ("client", k.GENAI_CLIENT_OPERATION_DURATION_SECONDS, k.GENAI_CLIENT_OPERATIONS_RATE,
     k.GENAI_CLIENT_ERRORS_RATE, k.GENAI_CLIENT_ERRORS_RATIO),
)
SECONDS_PER_HOUR = 3600
# Grafana's custom units: a number and this text.
TOKENS_PER_SECOND = "suffix: tokens/s"
PER_HOUR = "suffix: per hour"

#: The selected services in a link: their values joined by | (All: .*), unescaped, as a regex.
SERVICES_IN_LINK = "${service:pipe}"
#: TraceQL for the GenAI spans of the services (a span with gen_ai.operation.name is a GenAI call).
GENAI_SPANS = f'resource.service.name =~ "{SERVICES_IN_LINK}" && span.{k.ATTR_GENAI_OPERATION_NAME} != nil'

NO_DATA: dict[str, str] = {}
#: Every query of this dashboard can be empty in a plain run: the sample service is no LLM service.
NO_DATA_DEFAULT = (
    "needs an LLM service that sends the OpenTelemetry GenAI metrics (semconv 1.37+ names), which the "
    "sample service is not; tests/e2e/test_genai.py runs these queries with examples/llm-chat"
)
E2E_VALUES: dict[str, str] = {}


def _sel(extra: str = "") -> str:
    return f"{{{SELECTOR}{extra}}}"


def _matcher(label: str, value: str) -> str:
    return f', {label}="{value}"'


def _quantiles(histogram: str, legend: str, by: str = f"{MODEL}, {OPERATION}") -> list[Any]:
    return [
        c.promql(f"max by ({by}) ({k.genai_quantile(histogram, q)}{_sel()})", f"p{q} {legend}", ref=f"P{q}")
        for q in k.GENAI_QUANTILES
    ]


def _cost_description(stack: Stack) -> str:
    prices = stack.genai.prices
    if prices:
        table = "; ".join(
            f"{model}: {price.input_per_1k:g} in, {price.output_per_1k:g} out"
            for model, price in sorted(prices.items())
        )
        priced = f"Priced per 1000 tokens (stack.yaml genai.prices): {table}."
    else:
        priced = "stack.yaml has no genai.prices yet."
    return (
        "What the tokens cost per hour, per model, in the currency of the price table. Empty without a "
        "price table: add the model's input_per_1k and output_per_1k under genai.prices in stack.yaml; "
        f"a model without a price has no cost. {priced}"
    )


def _links(stores: c.Stores) -> list[Any]:
    """Traces and error logs of the selected services (Jaeger's search takes one service: pick one)."""
    return [
        stores.trace_search("GenAI traces", f"{{ {GENAI_SPANS} }}"),
        stores.trace_search("Failed GenAI traces", f"{{ {GENAI_SPANS} && status = error }}", tags="error=true"),
        stores.logs_link("Error logs", stores.service_logs(SERVICES_IN_LINK, errors=True, regex=True)),
    ]


def overview(stack: Stack, lim: c.Limits, links: Sequence[Any]) -> c.Section:
    return (
        "Now",
        [
            c.stat_panel(
                "Tokens per second",
                "Input and output tokens per second of the selected models together "
                f"({k.GENAI_CLIENT_TOKEN_USAGE}, as the client side records it).",
                TOKENS_PER_SECOND,
                [c.promql(f"sum({k.GENAI_TOKENS_RATE}{_sel()})", "tokens/s")],
                decimals=1,
            ),
            c.stat_panel(
                "Cost per hour",
                _cost_description(stack),
                PER_HOUR,
                [c.promql(f"sum({k.GENAI_COST_RATE}{_sel()}) * {SECONDS_PER_HOUR}", "per hour")],
                decimals=2,
            ),
            c.stat_panel(
                "Worst p95 time to first token",
                "The highest p95 time to the first output token among the selected models, as "
                f"GenAITimeToFirstTokenHigh judges it (limit {c.duration(lim.ttft.red)}, "
                "alerts.genai_ttft_p95_seconds).",
                "s",
                [c.promql(f"max({k.genai_quantile(TTFT, 95)}{_sel()})", "p95")],
                steps=lim.ttft.steps,
                links=links,
            ),
            c.stat_panel(
                "Worst error ratio",
                "The highest share of failed GenAI calls among the selected models, on the server and the "
                f"client side, as GenAIErrorRatioHigh judges it (limit {c.percent(lim.error_ratio.red)}).",
                "percentunit",
                [
                    c.promql(f"max({ratio}{_sel()})", side, ref=ref)
                    for ref, (side, *_, ratio) in zip("AB", SIDES, strict=True)
                ],
                steps=lim.error_ratio.steps,
                decimals=2,
                links=links,
            ),
        ],
    )


def tokens_and_cost(stack: Stack) -> c.Section:
    legend = f"{{{{{MODEL}}}}}"
    return (
        "Tokens and cost",
        [
            c.timeseries_panel(
                "Tokens per second by model, in and out",
                "Input (prompt) and output (completion) tokens per second of each model, by "
                f"{k.ATTR_GENAI_TOKEN_TYPE}. Input that grows without more calls is a prompt that grew.",
                TOKENS_PER_SECOND,
                [
                    c.promql(
                        f"sum by ({MODEL}) ({k.GENAI_TOKENS_RATE}{_sel(_matcher(TOKEN_TYPE, kind))})",
                        f"{legend} {label}",
                        ref=ref,
                    )
                    for ref, kind, label in (("A", k.GENAI_TOKEN_INPUT, "in"), ("B", k.GENAI_TOKEN_OUTPUT, "out"))
                ],
                decimals=1,
            ),
            c.timeseries_panel(
                "Cost per hour by model",
                _cost_description(stack),
                PER_HOUR,
                [c.promql(f"sum by ({MODEL}) ({k.GENAI_COST_RATE}{_sel()}) * {SECONDS_PER_HOUR}", legend)],
                stack=StackingMode.NORMAL,
                min_value=0,
                decimals=2,
            ),
        ],
    )


def latency(lim: c.Limits, links: Sequence[Any]) -> c.Section:
    by_model = f"{{{{{MODEL}}}}} {{{{{OPERATION}}}}}"
    return (
        "Latency",
        [
            c.timeseries_panel(
                "Time to first token p50 and p95",
                "How long a request waits for its first output token (server side), per model and operation. "
                f"The line is the alert's limit for the p95: {c.duration(lim.ttft.red)} "
                "(alerts.genai_ttft_p95_seconds).",
                "s",
                _quantiles(TTFT, by_model),
                steps=lim.ttft.steps,
                draw_thresholds=True,
                min_value=0,
                links=links,
            ),
            c.timeseries_panel(
                "Time per output token p50 and p95",
                "Time between output tokens once the first has come (server side), per model and operation: "
                "the decoding speed. A rise under the same load is a saturated model server.",
                "s",
                _quantiles(TPOT, by_model),
                min_value=0,
                links=links,
            ),
            c.timeseries_panel(
                "Request duration p50 and p95 (server and client)",
                "Whole GenAI requests per model: as the model server measures them "
                f"({k.GENAI_SERVER_REQUEST_DURATION}) and as the calling client does "
                f"({k.GENAI_CLIENT_OPERATION_DURATION}); the gap is the network and the provider's queue.",
                "s",
                [
                    c.promql(
                        f"max by ({MODEL}) ({k.genai_quantile(histogram, q)}{_sel()})",
                        f"{side} p{q} {{{{{MODEL}}}}}",
                        ref=f"{side[0].upper()}{q}",
                    )
                    for side, histogram, *_ in SIDES
                    for q in k.GENAI_QUANTILES
                ],
                min_value=0,
                links=links,
            ),
            c.timeseries_panel(
                "Calls per second by model (server and client)",
                "GenAI requests per second each model served (server side) and GenAI operations per second "
                "the service called (client side).",
                "reqps",
                [
                    c.promql(f"sum by ({MODEL}) ({calls}{_sel()})", f"{side} {{{{{MODEL}}}}}", ref=ref)
                    for ref, (side, _, calls, *_) in zip("AB", SIDES, strict=True)
                ],
                min_value=0,
            ),
        ],
    )


def errors(lim: c.Limits, links: Sequence[Any]) -> c.Section:
    return (
        "Errors",
        [
            c.timeseries_panel(
                f"Errors per second by {k.ATTR_ERROR_TYPE}",
                f"Failed GenAI calls per second by {k.ATTR_ERROR_TYPE} (the exception's class, an HTTP "
                "status, timeout, ...), server and client side. A new type after a deployment or a provider "
                "change points at the cause.",
                "reqps",
                [
                    c.promql(f"sum by ({ERROR_TYPE}) ({failed}{_sel()})", f"{side} {{{{{ERROR_TYPE}}}}}", ref=ref)
                    for ref, (side, _, _, failed, _) in zip("AB", SIDES, strict=True)
                ],
                stack=StackingMode.NORMAL,
                links=links,
            ),
            c.timeseries_panel(
                "Error ratio by model (server and client)",
                "Share of the GenAI calls of each model that failed (zero while none did). The line is "
                f"GenAIErrorRatioHigh's limit, {c.percent(lim.error_ratio.red)} (alerts.error_ratio).",
                "percentunit",
                [
                    c.promql(f"max by ({MODEL}) ({ratio}{_sel()})", f"{side} {{{{{MODEL}}}}}", ref=ref)
                    for ref, (side, *_, ratio) in zip("AB", SIDES, strict=True)
                ],
                steps=lim.error_ratio.steps,
                draw_thresholds=True,
                min_value=0,
                links=links,
            ),
        ],
    )


def logs(stores: c.Stores) -> c.Section:
    return (
        "Logs",
        [
            stores.logs_panel(
                "Logs",
                "All log records of the selected services, newest first; a record written inside a GenAI "
                "call carries its trace_id: expand a line and follow the link to the trace.",
                stores.service_logs(regex=True),
            )
        ],
    )


def build(stack: Stack) -> dict[str, Any]:
    lim = c.Limits.of(stack)
    stores = c.Stores.of(stack)
    links = _links(stores)
    return c.assemble(
        UID,
        "GenAI overview",
        ANSWERS,
        [
            c.query_variable(
                "service",
                "Service",
                f"label_values({{{ANY_SOURCE}}}, job)",
                ["$__all"],
                "The service.name (Prometheus job) of services that call LLMs (the client side: tokens, "
                "cost) or serve them (the server side: time to first token, per output token): one, "
                "several or all.",
                multi=True,
            ),
            c.query_variable(
                "model",
                "Model",
                f'label_values({{{ANY_SOURCE}, job=~"$service"}}, {MODEL})',
                ["$__all"],
                f"{k.ATTR_GENAI_REQUEST_MODEL}: one, several or all models the selected services asked for "
                "or served.",
                multi=True,
            ),
        ],
        [overview(stack, lim, links), tokens_and_cost(stack), latency(lim, links), errors(lim, links), logs(stores)],
    )

"""What the chat server and its client share: the model's identity, the GenAI semantic-convention
names (from mlobs/contract.py, and the pinned opentelemetry-semantic-conventions package for the
span attributes the contract does not list), and the SDK views with the bucket boundaries the
conventions recommend for each GenAI histogram.

The names are those of the latest experimental GenAI conventions (semconv 1.37 and later), as
instrumentations emit them with ``OTEL_SEMCONV_STABILITY_OPT_IN=gen_ai_latest_experimental``:
``gen_ai.provider.name``, not the older ``gen_ai.system``.
"""

from __future__ import annotations

import os

from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as _genai

from mlobs.contract import (
    GENAI_CLIENT_OPERATION_DURATION,
    GENAI_CLIENT_TOKEN_USAGE,
    GENAI_SERVER_REQUEST_DURATION,
    GENAI_SERVER_TIME_PER_OUTPUT_TOKEN,
    GENAI_SERVER_TIME_TO_FIRST_TOKEN,
)

#: The model: a word-level trigram model over the project's docs (ngram.py).
NGRAM_ORDER = 3
MODEL = f"ngram-docs-{NGRAM_ORDER}"
#: gen_ai.provider.name: not one of the conventions' well-known providers, so our own value.
PROVIDER = "mlobs"
#: gen_ai.operation.name of a chat completion (the conventions' well-known value ``chat``).
OPERATION = "chat"

SERVICE_SERVER = "mlobs-llm-chat"
SERVICE_CLIENT = "mlobs-llm-client"

# Span attributes of the conventions that mlobs/contract.py does not list (it lists what the rules
# and dashboards read); the constants of the pinned semantic-conventions package, not restated.
ATTR_USAGE_INPUT_TOKENS = _genai.GEN_AI_USAGE_INPUT_TOKENS
ATTR_USAGE_OUTPUT_TOKENS = _genai.GEN_AI_USAGE_OUTPUT_TOKENS
ATTR_RESPONSE_ID = _genai.GEN_AI_RESPONSE_ID
ATTR_RESPONSE_FINISH_REASONS = _genai.GEN_AI_RESPONSE_FINISH_REASONS
ATTR_REQUEST_MAX_TOKENS = _genai.GEN_AI_REQUEST_MAX_TOKENS
ATTR_REQUEST_TEMPERATURE = _genai.GEN_AI_REQUEST_TEMPERATURE
ATTR_REQUEST_SEED = _genai.GEN_AI_REQUEST_SEED
ATTR_REQUEST_STREAM = _genai.GEN_AI_REQUEST_STREAM

# The explicit bucket boundaries the GenAI metric conventions recommend (ExplicitBucketBoundaries).
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
TIME_TO_FIRST_TOKEN_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                               5.0, 7.5, 10.0)
TIME_PER_OUTPUT_TOKEN_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
TOKEN_BUCKETS = tuple(4 ** i for i in range(14))  # 1, 4, 16, ... 67108864

BUCKETS: dict[str, tuple[float, ...]] = {
    GENAI_CLIENT_OPERATION_DURATION: DURATION_BUCKETS,
    GENAI_CLIENT_TOKEN_USAGE: TOKEN_BUCKETS,
    GENAI_SERVER_REQUEST_DURATION: DURATION_BUCKETS,
    GENAI_SERVER_TIME_TO_FIRST_TOKEN: TIME_TO_FIRST_TOKEN_BUCKETS,
    GENAI_SERVER_TIME_PER_OUTPUT_TOKEN: TIME_PER_OUTPUT_TOKEN_BUCKETS,
}

VIEWS: tuple[View, ...] = tuple(
    View(instrument_name=name, aggregation=ExplicitBucketHistogramAggregation(boundaries))
    for name, boundaries in BUCKETS.items()
)

#: The metric export interval where OTEL_METRIC_EXPORT_INTERVAL is unset: 5 s rather than the SDK's
#: 60 s, so the dashboard and the alerts follow the demo within seconds.
DEMO_EXPORT_INTERVAL_MS = "5000"

OPT_IN_ENV = "OTEL_SEMCONV_STABILITY_OPT_IN"
OPT_IN_GENAI = "gen_ai_latest_experimental"


def opt_in_latest_genai() -> None:
    """Add ``gen_ai_latest_experimental`` to OTEL_SEMCONV_STABILITY_OPT_IN (keeping what is there), so
    any GenAI instrumentation in the process emits the names this example emits by hand."""
    current = [v.strip() for v in os.environ.get(OPT_IN_ENV, "").split(",") if v.strip()]
    if OPT_IN_GENAI not in current:
        os.environ[OPT_IN_ENV] = ",".join([*current, OPT_IN_GENAI])

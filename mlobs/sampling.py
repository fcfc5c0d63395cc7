"""The keep rule of tail sampling, defined once, so every link can be checked against it.

The collector keeps a trace when any span failed, when it ran longer than the slow threshold, when
a request asked to be kept (the ``mlobs.sampling.keep`` attribute, set from the ``mlobs.debug``
baggage entry or header), and otherwise by **consistent probability sampling** on the trace id's
randomness: the rightmost 56 bits of a W3C random trace id, kept when at least the threshold
``T = (1 - p) * 2**56`` (OpenTelemetry's consistent-probability sampling, the ``th`` of tracestate).

Every place that attaches a trace id to another signal decides with the same rule *before* the
trace is complete, from what it knows then: the span (error, duration, keep mark), or just the id.
Whatever it cannot prove kept, it does not link:

* the collector's span-metrics exemplars (a transform on the spans that feed the connector),
* the collector's log records (a transform on the logs pipeline),
* the exemplars of the SDK histograms (``mlobs.telemetry``'s exemplar filter).

So an exemplar or a log line's trace id always names a trace the tail sampler keeps; at 100% the
rule keeps everything and the transforms are not rendered at all.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass

RANDOMNESS_BITS = 56
RANDOMNESS_HEX = RANDOMNESS_BITS // 4  # the rightmost 14 hex digits of the trace id
#: Trace ids the tail sampler remembers the decision of (each of kept and dropped; an LRU, about
#: 100 B an id): a span that arrives after its trace's decision follows it, instead of being
#: judged alone as a trace of its own. 100,000 is 30 s of 3,300 traces/s, past the throughput goal.
DECISION_CACHE_SIZE = 100_000
#: Span and log attribute that forces "keep" for one request, and the baggage entry / header
#: that sets it (``mlobs.telemetry`` copies one to the other).
KEEP_ATTRIBUTE = "mlobs.sampling.keep"
DEBUG_BAGGAGE = "mlobs.debug"
DEBUG_HEADER = "X-Mlobs-Debug"
#: The values of DEBUG_BAGGAGE or DEBUG_HEADER that ask to keep (compared lowercased).
DEBUG_VALUES = frozenset({"1", "true"})

#: The variables that carry the keep rule to every process the stack starts (``mlobs.telemetry``
#: reads them): the share in percent, the slow threshold, whether errors are kept, and the debug
#: profile's detail spans.
ENV_PERCENTAGE = "MLOBS_SAMPLING_PERCENTAGE"
ENV_SLOW_MS = "MLOBS_SAMPLING_SLOW_MS"
ENV_KEEP_ERRORS = "MLOBS_SAMPLING_KEEP_ERRORS"
ENV_TRACE_DETAIL = "MLOBS_TRACE_DETAIL"


def threshold(percentage: float) -> int:
    """The rejection threshold for keeping ``percentage`` % of traces: keep when randomness >= T."""
    if not 0 <= percentage <= 100:
        raise ValueError(f"percentage must be within 0..100, got {percentage}")
    return round((1 - percentage / 100) * (1 << RANDOMNESS_BITS))


def threshold_hex(percentage: float) -> str:
    """T as the 14 lowercase hex digits that OTTL compares ``Substring(trace_id.string, 18, 14)`` with.
    Only defined below 100% (T > 0) and above 0% (T < 2**56)."""
    t = threshold(percentage)
    if not 0 < t < (1 << RANDOMNESS_BITS):
        raise ValueError(f"no threshold digits for {percentage}%: it keeps all or nothing")
    return f"{t:0{RANDOMNESS_HEX}x}"


def randomness(trace_id: str) -> int:
    """The randomness R of a hex trace id: its rightmost 56 bits."""
    if len(trace_id) != 32:
        raise ValueError(f"a trace id has 32 hex digits, got {trace_id!r}")
    return int(trace_id[-RANDOMNESS_HEX:], 16)


def kept_by_chance(trace_id: str, percentage: float) -> bool:
    """Does the probabilistic part of the rule keep this trace?"""
    if percentage >= 100:
        return True
    if percentage <= 0:
        return False
    return randomness(trace_id) >= threshold(percentage)


def kept(trace_id: str, percentage: float, *, error: bool = False, duration_s: float = 0.0,
         slow_threshold_s: float = float("inf"), keep_mark: bool = False) -> bool:
    """Is this trace surely kept, from what one span (or measurement) of it shows?"""
    return error or keep_mark or duration_s > slow_threshold_s or kept_by_chance(trace_id, percentage)


def asks_to_keep(value: object) -> bool:
    """Does this DEBUG_BAGGAGE entry or DEBUG_HEADER value ask to keep the request (``1``, ``true``)?"""
    return value is not None and str(value).strip().lower() in DEBUG_VALUES


def _flag(environ: Mapping[str, str], name: str) -> bool:
    value = environ.get(name, "").strip().lower()
    if value not in ("", "true", "false"):
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return value == "true"


@dataclass(frozen=True)
class Rule:
    """The keep rule as one process knows it. The defaults claim nothing: everything kept by
    chance (100%), and no slow or error clause, so a process without the variables links as the
    SDK does."""

    percentage: float = 100.0
    slow_threshold_s: float = math.inf
    keep_errors: bool = False

    def __post_init__(self) -> None:
        threshold(self.percentage)  # refuses a share outside 0..100

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Rule:
        """From ``MLOBS_SAMPLING_PERCENTAGE``, ``..._SLOW_MS`` and ``..._KEEP_ERRORS``; unset ones keep the defaults."""
        env = os.environ if environ is None else environ
        try:
            pct = float(env.get(ENV_PERCENTAGE, "").strip() or 100)
            slow_ms = env.get(ENV_SLOW_MS, "").strip()
            slow = float(slow_ms) / 1000 if slow_ms else math.inf
        except ValueError as exc:
            raise ValueError(f"{ENV_PERCENTAGE} and {ENV_SLOW_MS} must be numbers: {exc}") from None
        return cls(percentage=pct, slow_threshold_s=slow, keep_errors=_flag(env, ENV_KEEP_ERRORS))

    @property
    def keeps_all(self) -> bool:
        return self.percentage >= 100

    def kept(self, trace_id: str, *, error: bool = False, duration_s: float = 0.0, keep_mark: bool = False) -> bool:
        """:func:`kept` under this rule (an error counts only where errors are kept)."""
        return kept(trace_id, self.percentage, error=error and self.keep_errors, duration_s=duration_s,
                    slow_threshold_s=self.slow_threshold_s, keep_mark=keep_mark)


def trace_detail_from_env(environ: Mapping[str, str] | None = None) -> bool:
    """``MLOBS_TRACE_DETAIL=true`` (the debug profile): detail spans for every request."""
    return _flag(os.environ if environ is None else environ, ENV_TRACE_DETAIL)

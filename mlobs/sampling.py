"""The keep rule of tail sampling, defined once, so every link can be checked against it.

The collector keeps a trace when any span failed, when it ran longer than the slow threshold, when
a request asked to be kept (the ``mlobs.sampling.keep`` attribute, set from the ``mlobs-debug``
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

RANDOMNESS_BITS = 56
RANDOMNESS_HEX = RANDOMNESS_BITS // 4  # the rightmost 14 hex digits of the trace id
#: Span and log attribute that forces "keep" for one request, and the baggage entry / header
#: that sets it (``mlobs.telemetry`` copies one to the other).
KEEP_ATTRIBUTE = "mlobs.sampling.keep"
DEBUG_BAGGAGE = "mlobs.debug"
DEBUG_HEADER = "X-Mlobs-Debug"


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

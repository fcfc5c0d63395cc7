"""Root-cause analysis of one alert over the Prometheus HTTP API.

For the service the alert is about (its ``job`` or ``service_name`` label) and, where the alert
names one, its model (``ml_model_name``), it asks Prometheus for each candidate signal over the
last 65 minutes, scores how far the latest point moved from the hour before the last 5 minutes
(:mod:`analyzer.detect`), and ranks the candidates. Span metrics and log counts exist for every
service that sends OTLP; the ``ml_*`` signals of ``generator/TELEMETRY.md`` only for services that
emit them, and without them those candidates are simply absent.

============================  ===================  =========================================
signal                        finding kind         subject
============================  ===================  =========================================
span p95 / p99 (span metrics) operation_latency,   ``span_name``: SERVER / CONSUMER spans are
                              stage_latency,       the operations, INTERNAL spans stages,
                              downstream_latency   CLIENT / PRODUCER spans downstream calls
stage p95 / p99               stage_latency        ``ml_stage``
span error ratio              errors               ``span_name`` (any span kind)
log records by severity       logs                 ``severity_text`` (WARN, ERROR, ...)
PSI, KS by feature            drift                ``ml_feature``
accuracy, F1 (worst version)  model_regression     the model version; full weight only after a
                                                   deployment in the last 15m, else half
request rate                  traffic              the job (weighs 0.6: usually a symptom)
process CPU, memory, threads, resource             ``cpu``, ``memory``, ``threads``, ``gc``
GC                                                 (weigh 0.7; CPU in full when it saturates)
idle CPU of the host          resource             ``host cpu`` (weighs 0.7; in full when the
                                                   host saturates, half when the process's own
                                                   CPU explains it; scored in doublings)
============================  ===================  =========================================

A score is ``weight · significance · effect``: significance grows with the z-score beyond 3,
effect with the size of the change against what counts as a lot for that signal (100 ms, the
error-ratio alert threshold of 5 points, 0.1 of PSI or KS, 5 points of accuracy, a doubling of
traffic or of a log rate); both saturate below 1.

Spans nest: an operation (SERVER) runs stages (INTERNAL) that call downstream services (CLIENT).
Span metrics do not say which span is whose parent, so within the service a deeper span that
moved explains a shallower one: an operation or stage whose added latency is mostly that of a
deeper span, or whose errors come with errors of a deeper span, is a symptom and weighs half.
Log counts weigh 0.6: they say something is wrong, not where. Nothing moved → one ``unknown``
finding.

The ground-truth series ``ml_fault_active`` is never read: it exists only so tests can judge
this analysis against the injected fault.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
from opentelemetry import context as otel_context
from opentelemetry import trace

from analyzer.detect import ROBUST_THRESHOLD, SIGMA_THRESHOLD, Anomaly, detect
from analyzer.links import ALERTING_SEVERITIES, build_links, quote_value
from analyzer.models import Finding, FindingKind, Incident, Links, WebhookAlert
from analyzer.prometheus import PrometheusAPI, RangeSeries, Sample
from analyzer.settings import Settings
from mlobs import contract
from mlobs.config import Alerts

# The defaults of the windows: stack.yaml's, through the analyzer's settings.
RECENT_SECONDS = Settings.recent_seconds
BASELINE_SECONDS = Settings.baseline_seconds
STEP_SECONDS = Settings.step_seconds
RATE_WINDOW = Settings.rate_window
SLOW_SECONDS = Settings.slow_seconds
DEPLOY_WINDOW = "15m"
# An alert analysed long after it started (a repeated notification) is still judged at its start.
ANCHOR_SECONDS = 600
MIN_SCORE = 0.05
MAX_FINDINGS = 10

# Significance: 0 at a z-score of SIGNIFICANCE_FROM_Z, one half SIGNIFICANCE_SCALE_Z beyond it.
SIGNIFICANCE_FROM_Z = 3.0
SIGNIFICANCE_SCALE_Z = 4.0
# Effect: what counts as a lot of change (an effect of 1, scored one half) for each signal.
LATENCY_EFFECT = 0.1  # seconds of p95 / p99
ERROR_RATIO_EFFECT = Alerts().error_ratio  # the error-ratio alert's threshold (alerts.error_ratio)
DRIFT_EFFECT = 0.1  # PSI or KS: the rule of thumb's "moderate" (alerts.drift_psi, 0.2, is "significant")
QUALITY_EFFECT = 0.05  # points of accuracy or F1
RATE_EFFECT = 1.0  # doublings of a rate (traffic, log records)

# Weights: a candidate that is more likely a symptom than a cause.
EXPLAINED_WEIGHT = 0.5  # an operation or stage explained by a deeper span that moved
EXPLAINED_SHARE = 0.5  # the share of the added latency a deeper span must account for
TRAFFIC_WEIGHT = 0.6
LOG_WEIGHT = 0.6
# Resource use of the process: a cause when it saturates (a CPU-bound Python process tops out near
# one core: the GIL), else as likely a symptom (more work, or a leak that has not hurt yet).
RESOURCE_WEIGHT = 0.7
CPU_SATURATED_CORES = 0.85
CPU_EFFECT = 0.25  # cores
PROCESS_CPU_SUBJECT = "cpu"
# The host's CPUs, as the service's process reports them (contract.SYSTEM_CPU_UTILIZATION): its idle
# cores, the headroom every process on it shares. A cause when the host saturates (resource
# saturation: the host), unless the process's own CPU explains the fall; else not what slows
# anything down. The headroom is scored in doublings (log2, idle floored at HOST_IDLE_FLOOR): a host
# whose neighbours come and go has a noisy busy share, but going from some idle CPU to none is many
# halvings however noisy the baseline was, and the wait for CPU grows as the headroom shrinks.
HOST_CPU_SUBJECT = "host cpu"
HOST_CPU_SATURATED_SHARE = 0.9  # of the host's CPUs busy: at most a tenth of them idle
HOST_IDLE_FLOOR = 0.05  # cores: less idle than this counts as none
HOST_IDLE_NOISE = 0.25  # doublings of the headroom: its least expected noise
HOST_IDLE_EFFECT = 2.0  # doublings lost (three quarters of the headroom gone)
# Below saturation the host has CPU to spare: its fall weighs so little (0.7 × 0.25 < the detector's
# 0.2) that it never opens an incident by itself, and only ranks as context.
HOST_UNSATURATED_WEIGHT = 0.25
THREAD_EFFECT = 10.0  # threads
# The second suspect is reported when it is strong too: at least this score, and this share of the first's.
SECOND_SUSPECT_SCORE = 0.25
SECOND_SUSPECT_SHARE = 0.5
UNDEPLOYED_REGRESSION_WEIGHT = 0.5
KIND_ORDER: tuple[FindingKind, ...] = (
    "downstream_latency",
    "errors",
    "model_regression",
    "drift",
    "resource",
    "stage_latency",
    "operation_latency",
    "log_template",
    "logs",
    "traffic",
    "unknown",
)

# How deep a span sits in its service: the operation it serves, a stage of it, a call out of it.
OPERATION, STAGE, DOWNSTREAM = 0, 1, 2
SPAN_LEVELS = {
    "SPAN_KIND_SERVER": OPERATION,
    "SPAN_KIND_CONSUMER": OPERATION,
    "SPAN_KIND_INTERNAL": STAGE,
    "SPAN_KIND_CLIENT": DOWNSTREAM,
    "SPAN_KIND_PRODUCER": DOWNSTREAM,
}
LATENCY_KINDS: dict[int, FindingKind] = {
    OPERATION: "operation_latency",
    STAGE: "stage_latency",
    DOWNSTREAM: "downstream_latency",
}


@dataclass(frozen=True)
class Target:
    """What the alert is about, from its labels; absent labels widen the queries.

    ``job`` is the label of the metrics a service sends (``ml_*``, the collector's log counts):
    Prometheus makes it of ``service.name`` (``service.namespace/service.name`` when there is a
    namespace). ``service`` is ``service.name`` itself, the ``service_name`` label of span metrics
    and Loki streams; without it, the job stands for it.
    """

    job: str | None
    model_name: str | None
    model_version: str | None
    service: str | None = None
    operation: str | None = None  # the span_name an alert on span metrics is about

    @classmethod
    def from_labels(cls, labels: dict[str, str]) -> Target:
        """From the labels of the ML alerts (``job``, ``ml_model_*``) or of span-metric ones (``service_name``,
        ``span_name``): either names the service."""

        def label(name: str) -> str | None:
            return labels.get(name) or None

        return cls(
            job=label("job") or label("service_name"),
            model_name=label("ml_model_name"),
            model_version=label("ml_model_version"),
            service=label("service_name"),
            operation=label("span_name"),
        )

    @property
    def service_name(self) -> str | None:
        return self.service or self.job


def selector(*regex: tuple[str, str], **matchers: str | None) -> str:
    """``{name="value", ...}`` of the matchers that have a value, then the ``(name, regex)`` pairs as ``=~``."""
    terms = [f"{name}={quote_value(value)}" for name, value in matchers.items() if value]
    terms += [f"{name}=~{quote_value(pattern)}" for name, pattern in regex]
    return "{" + ", ".join(terms) + "}" if terms else ""


def duration(seconds: float) -> str:
    """A PromQL duration of whole seconds (at least one): ``15`` -> ``15s``."""
    return f"{max(1, round(seconds))}s"


def promql(
    target: Target,
    focus: dict[str, str] | None = None,
    rate_window: str = RATE_WINDOW,
    step_window: str = duration(STEP_SECONDS),
) -> dict[str, str]:
    """Every query the analysis runs, by name. The first group is ranged, the last three instant.

    ``focus`` adds matchers (such as ``span_name="feature_lookup"``) to every selector: the
    one-series version of a query, for the Grafana link of a finding. Counters are rated over
    ``rate_window``; the host's CPU gauge (already a share of each export interval) is averaged
    over ``step_window``, the query step, so that each point holds the readings of its own step.
    """
    focus = focus or {}
    ml = selector(job=target.job, ml_model_name=target.model_name, **focus)
    spans = selector(service_name=target.service_name, **focus)
    errors = selector(service_name=target.service_name, status_code=contract.SPAN_STATUS_ERROR, **focus)
    logs = selector(("severity_text", "|".join(ALERTING_SEVERITIES)), job=target.job, **focus)
    calls = f"sum by (span_name, span_kind) (rate({contract.SPANMETRICS_CALLS_TOTAL}{spans}[{rate_window}]))"

    def quantile(q: str, metric: str, by: str, matchers: str) -> str:
        return f"histogram_quantile({q}, sum by ({by}, le) (rate({metric}{matchers}[{rate_window}])))"

    info = f"max by (ml_model_version) (ml_model_info{ml})"
    proc = selector(job=target.job, **focus)
    idle = selector(job=target.job, state=contract.SYSTEM_CPU_IDLE, **focus)
    host_idle = f"avg_over_time({contract.SYSTEM_CPU_UTILIZATION_RATIO}{idle}[{step_window}])"
    return {
        "stage_p95": quantile("0.95", "ml_stage_duration_seconds_bucket", "ml_stage", ml),
        "stage_p99": quantile("0.99", "ml_stage_duration_seconds_bucket", "ml_stage", ml),
        "span_p95": quantile("0.95", contract.SPANMETRICS_DURATION_SECONDS + "_bucket", "span_name, span_kind", spans),
        "span_p99": quantile("0.99", contract.SPANMETRICS_DURATION_SECONDS + "_bucket", "span_name, span_kind", spans),
        # `or 0 * calls` gives 0 rather than no series while a span has not failed yet.
        "span_error_ratio": (
            f"(sum by (span_name, span_kind) (rate({contract.SPANMETRICS_CALLS_TOTAL}{errors}[{rate_window}]))"
            f" or 0 * {calls}) / ({calls} > 0)"
        ),
        # The collector's count connector: log records by service (job) and severity.
        "log_rate": f"sum by (severity_text) (rate({contract.LOG_RECORDS_TOTAL}{logs}[{rate_window}]))",
        "drift_psi": f"max by (ml_feature) (ml_feature_drift_psi{ml})",
        "drift_ks": f"max by (ml_feature) (ml_feature_drift_ks{ml})",
        # The worst version serving: a freshly deployed bad version shows at once.
        "accuracy": f"min(ml_model_accuracy{ml})",
        "f1": f"min(ml_model_f1{ml})",
        "request_rate": f"sum(rate(ml_request_duration_seconds_count{ml}[{rate_window}]))",
        # The process's resource use (system-metrics instrumentation; any SDK's process metrics).
        "cpu": f"sum(rate({contract.PROCESS_CPU_TIME_SECONDS_TOTAL}{proc}[{rate_window}]))",
        "memory": f"sum({contract.PROCESS_MEMORY_USAGE_BYTES}{proc})",
        "threads": f"sum({contract.PROCESS_THREAD_COUNT_SERIES}{proc})",
        "gc": f"sum(rate({contract.CPYTHON_GC_COLLECTIONS_TOTAL}{proc}[{rate_window}]))",
        # The host's idle CPUs (cores), as the job's processes see it (one host each, averaged per CPU),
        # and how many CPUs it has: the host saturates when next to none of them is idle.
        "host_idle": f"sum(avg by (cpu) ({host_idle}))",
        "host_cpus": f"count(count by (cpu) ({contract.SYSTEM_CPU_UTILIZATION_RATIO}{idle}))",
        "deployments": f"sum by (ml_model_version) (changes(ml_model_deployments_total{ml}[{DEPLOY_WINDOW}]))",
        # A version's counter starts at 1, which changes() does not see: new info series do.
        "new_versions": f"{info} unless max by (ml_model_version) (ml_model_info{ml} offset {DEPLOY_WINDOW})",
        "previous_versions": f"max by (ml_model_version) (ml_model_info{ml} offset {DEPLOY_WINDOW})",
    }


INSTANT_QUERIES = ("deployments", "new_versions", "previous_versions")
UNKNOWN_LINK_QUERIES = ("request_rate", "span_error_ratio", "log_rate")


@dataclass(frozen=True)
class Signal:
    """How to read one ranged query: which finding it feeds and what counts as a big move."""

    query: str
    kind: FindingKind
    label: str | None  # the label naming the subject; None: one series about the model or job
    what: str
    unit: str
    direction: int  # +1: bad when it rises, -1: when it falls, 0: either way
    min_scale: float
    relative_floor: float
    effect_unit: float
    subject: str | None = None  # a fixed subject (resource signals), else the label's or the model's
    # Scored in doublings: the z-scores, change point and effect are of log2(max(value, log_floor));
    # min_scale and effect_unit are then in doublings too. 0: scored as it is.
    log_floor: float = 0.0

    def scored(self, values: Any) -> Any:
        """The series as it is scored (log2 for a signal with a ``log_floor``; NaNs stay NaN)."""
        if not self.log_floor or values is None:
            return values
        return np.log2(np.maximum(np.asarray(values, dtype=float), self.log_floor))


# The kind of a span signal's finding follows the span's level (LATENCY_KINDS); min_scale and
# relative_floor are the noise each signal is expected to have (detect()).
SIGNALS: tuple[Signal, ...] = (
    Signal("stage_p95", "stage_latency", "ml_stage", "p95 of stage", "s", 1, 0.001, 0.05, LATENCY_EFFECT),
    Signal("stage_p99", "stage_latency", "ml_stage", "p99 of stage", "s", 1, 0.001, 0.05, LATENCY_EFFECT),
    Signal("span_p95", "stage_latency", "span_name", "p95 of span", "s", 1, 0.001, 0.05, LATENCY_EFFECT),
    Signal("span_p99", "stage_latency", "span_name", "p99 of span", "s", 1, 0.001, 0.05, LATENCY_EFFECT),
    Signal(
        "span_error_ratio", "errors", "span_name", "error ratio of span", "ratio", 1, 0.005, 0.0, ERROR_RATIO_EFFECT
    ),
    Signal("log_rate", "logs", "severity_text", "rate of log records at severity", "rec/s", 1, 0.01, 0.1, RATE_EFFECT),
    Signal("drift_psi", "drift", "ml_feature", "PSI of feature", "", 1, 0.01, 0.0, DRIFT_EFFECT),
    Signal("drift_ks", "drift", "ml_feature", "KS statistic of feature", "", 1, 0.01, 0.0, DRIFT_EFFECT),
    Signal("accuracy", "model_regression", None, "rolling accuracy of", "", -1, 0.005, 0.0, QUALITY_EFFECT),
    Signal("f1", "model_regression", None, "rolling F1 of", "", -1, 0.005, 0.0, QUALITY_EFFECT),
    Signal("request_rate", "traffic", None, "request rate of", "req/s", 0, 0.01, 0.05, RATE_EFFECT),
    Signal(
        "cpu", "resource", None, "CPU use of the process:", "cores", 1, 0.02, 0.05, CPU_EFFECT, PROCESS_CPU_SUBJECT
    ),
    Signal("memory", "resource", None, "memory of the process:", "By", 1, 2**20, 0.02, RATE_EFFECT, "memory"),
    Signal("threads", "resource", None, "threads of the process:", "threads", 1, 1.0, 0.0, THREAD_EFFECT, "threads"),
    Signal("gc", "resource", None, "garbage collections of the process:", "gc/s", 1, 0.05, 0.1, RATE_EFFECT, "gc"),
    Signal(
        "host_idle", "resource", None, "idle CPU of the host:", "cores", -1, HOST_IDLE_NOISE, 0.0, HOST_IDLE_EFFECT,
        HOST_CPU_SUBJECT, log_floor=HOST_IDLE_FLOOR,
    ),
    # Not PromQL: the analyzer's own log-template counts (analyzer/logtemplates.py).
    Signal("log_template", "log_template", None, "rate of log template", "rec/s", 1, 0.01, 0.1, RATE_EFFECT),
)
TEMPLATE_SIGNAL = SIGNALS[-1]
TEMPLATE_SUBJECT_CHARS = 120
RATE_UNITS = {"req/s": "req/s", "rec/s": "records/s", "gc/s": "collections/s"}
# Signals whose effect counts in doublings rather than in absolute units.
RELATIVE_UNITS = {*RATE_UNITS, "By"}


def _seconds(window: str) -> float:
    """A Prometheus duration such as ``1m`` or ``90s``, in seconds."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)", window):
        total += float(number) * units[unit]
    return total or 60.0


def _sat(x: float) -> float:
    return x / (1.0 + x) if x > 0 else 0.0


def fmt(value: float, unit: str) -> str:
    if not math.isfinite(value):
        return "n/a"
    if unit == "s":
        return f"{value * 1000:.1f}ms" if abs(value) < 1 else f"{value:.2f}s"
    if unit == "ratio":
        return f"{value * 100:.1f}%"
    if unit in RATE_UNITS:
        return f"{value:.2f} {RATE_UNITS[unit]}"
    if unit == "By":
        return f"{value / 2**20:.1f}MiB"
    if unit in ("cores", "threads"):
        return f"{value:.2f} {unit}" if unit == "cores" else f"{value:.0f} threads"
    return f"{value:.3f}"


def _z(value: float) -> str:
    return f"{value:+.1f}" if abs(value) < 1000 else f"{value:+.2g}"


def _version(label: str) -> tuple[int, int, str]:
    """Numeric versions in numeric order (2 before 10), anything else after them."""
    return (0, int(label), "") if label.isdigit() else (1, 0, label)


def _asgi_message_span(span_name: str, span_kind: str) -> bool:
    """An ASGI instrumentation's per-message span: part of its operation, not deeper than it (else a
    failing request would make its own "http send" span the cause and the operation its symptom)."""
    return span_kind == "SPAN_KIND_INTERNAL" and span_name.endswith(contract.ASGI_MESSAGE_SPAN_SUFFIXES)


def _span_kind_name(span_kind: str) -> str:
    """SPAN_KIND_CLIENT -> CLIENT."""
    return span_kind.removeprefix("SPAN_KIND_") or "UNSPECIFIED"


def _finite(value: float) -> float | None:
    return round(value, 6) if math.isfinite(value) else None


@dataclass
class _Evidence:
    signal: Signal
    subject: str
    anomaly: Anomaly
    expr: str
    weight: float = 1.0
    values: Any = None  # the series on the query grid (numpy), for change points and plots
    labels: dict[str, str] = field(default_factory=dict)
    scored_anomaly: Anomaly | None = None  # of the scored series, for a signal scored in doublings

    @property
    def z(self) -> Anomaly:
        """What the z-scores are of: the scored series (log2) when it differs from the values."""
        return self.scored_anomaly or self.anomaly

    @property
    def scored_values(self) -> Any:
        return self.signal.scored(self.values)

    @property
    def bad_delta(self) -> float:
        """The change in the signal's bad direction (its size for two-sided signals)."""
        delta = self.anomaly.delta
        if not math.isfinite(delta):
            return 0.0
        return abs(delta) if self.signal.direction == 0 else delta * self.signal.direction

    @property
    def effect(self) -> float:
        a = self.anomaly
        if self.scored_anomaly is not None:  # doublings in the bad direction
            z = self.scored_anomaly
            direction = self.signal.direction or (1 if z.delta >= 0 else -1)
            return max(z.delta * direction, 0.0) / self.signal.effect_unit if math.isfinite(z.delta) else 0.0
        if self.signal.unit in RELATIVE_UNITS:
            # Doublings, with the signal's noise floor for a rate at 0 (none before, or none now).
            low = max(self.signal.min_scale, 1e-9)
            return abs(math.log2(max(a.latest, low) / max(a.median, low))) / self.signal.effect_unit
        return max(self.bad_delta, 0.0) / self.signal.effect_unit

    @property
    def score(self) -> float:
        a = self.z
        if not a.enough_history:
            return 0.0
        sign = self.signal.direction
        robust, sigma = (abs(a.robust_z), abs(a.sigma_z)) if sign == 0 else (a.robust_z * sign, a.sigma_z * sign)
        if robust <= ROBUST_THRESHOLD and sigma <= SIGMA_THRESHOLD:
            return 0.0
        significance = _sat((max(robust, sigma) - SIGNIFICANCE_FROM_Z) / SIGNIFICANCE_SCALE_Z)
        return self.weight * significance * _sat(self.effect)

    def sentence(self) -> str:
        a, unit = self.anomaly, self.signal.unit
        name = f"{self.signal.what} {self.subject}"
        if not a.enough_history:
            return f"{name}: {fmt(a.latest, unit)} now, too little history for a baseline"
        verb = "rose" if a.delta > 0 else "fell" if a.delta < 0 else "stayed"
        z = self.z
        of = f" (of log2, floored at {fmt(self.signal.log_floor, unit)})" if self.scored_anomaly else ""
        return (
            f"{name} {verb} from {fmt(a.median, unit)} (median of the baseline, MAD {fmt(a.mad, unit)}) "
            f"to {fmt(a.latest, unit)}: robust z {_z(z.robust_z)}, σ-z {_z(z.sigma_z)}{of}"
        )


@dataclass
class _Candidate:
    kind: FindingKind
    subject: str
    level: int | None = None  # OPERATION, STAGE or DOWNSTREAM for span and stage signals
    span_kind: str = ""
    evidence: list[_Evidence] = field(default_factory=list)
    weight: float = 1.0
    notes: list[str] = field(default_factory=list)
    more_promql: list[str] = field(default_factory=list)

    @property
    def best(self) -> _Evidence:
        """The strongest evidence; within 10% of it, the signal listed first (p95 before p99, accuracy before F1)."""
        top = max(e.score for e in self.evidence)
        close = [e for e in self.evidence if e.score >= 0.9 * top]
        return min(close, key=lambda e: (SIGNALS.index(e.signal), -e.score))

    @property
    def score(self) -> float:
        return round(self.weight * self.best.score, 4)

    def added_seconds(self) -> float:
        """The latency this candidate added (p95 when it moved, else p99)."""
        moved = [e for e in self.evidence if e.signal.unit == "s" and e.score > 0]
        moved.sort(key=lambda e: ("p95" not in e.signal.query, -e.bad_delta))
        return moved[0].bad_delta if moved else 0.0

    def finding(self) -> Finding:
        best = self.best
        ordered = [best, *sorted((e for e in self.evidence if e is not best), key=lambda e: -e.score)]
        exprs = [x for x in dict.fromkeys([*(e.expr for e in ordered), *self.more_promql]) if x]
        text = "\n".join([*(e.sentence() for e in ordered), *self.notes, *(f"PromQL: {x}" for x in exprs)])
        return Finding(
            kind=self.kind,
            subject=self.subject,
            score=self.score,
            summary=best.sentence(),
            evidence=text,
            promql=exprs,
            baseline=_finite(best.anomaly.median),
            current=_finite(best.anomaly.latest),
            robust_z=_finite(best.z.robust_z),
            sigma_z=_finite(best.z.sigma_z),
        )


@dataclass
class _Deployment:
    happened: bool
    new_versions: list[str]
    previous_versions: list[str]
    changes: dict[str, float]
    exprs: list[str]

    def note(self) -> str:
        if not self.happened:
            return f"no model version change in the last {DEPLOY_WINDOW}: a quality drop without one is a symptom"
        parts = [f"model version change in the last {DEPLOY_WINDOW}"]
        if self.new_versions:
            before = ", ".join(self.previous_versions) or "none"
            parts.append(f"version {', '.join(self.new_versions)} is new (before: {before})")
        moved = {v: n for v, n in self.changes.items() if n > 0}
        if moved:
            parts.append(
                f"changes(ml_model_deployments_total[{DEPLOY_WINDOW}]) = "
                + ", ".join(f"{n:g} for version {v}" for v, n in sorted(moved.items()))
            )
        return "; ".join(parts)


@dataclass
class Assessment:
    """One ranking of a target's candidate causes at one time."""

    target: Target
    ranked: list[_Candidate]  # scored above 0, best first (empty when nothing moved)
    findings: list[Finding]
    deployment: _Deployment
    errors: list[str]
    link_promql: str
    start: float  # the queried grid: start, end, step
    end: float
    step: float

    @property
    def top(self) -> _Candidate | None:
        return self.ranked[0] if self.ranked else None


class RootCauseAnalyzer:
    """Ranks the candidate causes of an alert; stateless apart from its clients."""

    def __init__(
        self,
        prometheus: PrometheusAPI,
        *,
        grafana_url: str,
        tracer: trace.Tracer | None = None,
        recent_seconds: float = RECENT_SECONDS,
        baseline_seconds: float = BASELINE_SECONDS,
        step_seconds: float = STEP_SECONDS,
        rate_window: str = RATE_WINDOW,
        slow_seconds: float = SLOW_SECONDS,
        clock: Callable[[], float] = time.time,
        templates: Any = None,
    ) -> None:
        self.prometheus = prometheus
        self.templates = templates  # a logtemplates.TemplateBook, or None
        self.grafana_url = grafana_url
        self.tracer = tracer or trace.NoOpTracer()
        self.recent_seconds = recent_seconds
        self.baseline_seconds = baseline_seconds
        self.step_seconds = step_seconds
        self.rate_window = rate_window
        self.slow_seconds = slow_seconds
        self.clock = clock

    @property
    def window(self) -> str:
        return (
            f"the latest point against the {self.baseline_seconds / 60:g}m before the last "
            f"{self.recent_seconds / 60:g}m (step {self.step_seconds:g}s)"
        )

    # ---- querying

    def _queries(self, target: Target, focus: dict[str, str] | None = None) -> dict[str, str]:
        return promql(target, focus, rate_window=self.rate_window, step_window=duration(self.step_seconds))

    def grid_end(self, at: float, fresh: bool = False) -> float:
        """The last point of the query grid for ``at``: the step before it (an alert's analysis, on
        the same grid whenever it is asked), or ``at`` itself when ``fresh`` (the detector: every
        sample up to now, instead of up to a step older)."""
        return at if fresh else math.floor(at / self.step_seconds) * self.step_seconds

    def _run(
        self, target: Target, at: float, recent_seconds: float | None = None, fresh: bool = False
    ) -> tuple[dict[str, list[RangeSeries]], dict[str, list[Sample]], list[str]]:
        queries = self._queries(target)
        end = self.grid_end(at, fresh)
        start = end - self.baseline_seconds - (self.recent_seconds if recent_seconds is None else recent_seconds)
        parent = otel_context.get_current()
        errors: list[str] = []

        def one(name: str) -> tuple[str, list]:
            expr = queries[name]
            instant = name in INSTANT_QUERIES
            attributes = {"db.system.name": "prometheus", "db.query.text": expr, "mlobs.query.name": name}
            with self.tracer.start_as_current_span(
                "prometheus query" if instant else "prometheus query_range", context=parent, attributes=attributes
            ) as span:
                try:
                    if instant:
                        return name, self.prometheus.query(expr, end)
                    return name, self.prometheus.query_range(expr, start, end, self.step_seconds)
                except Exception as exc:  # one failed query costs its signal, never the analysis
                    span.set_status(trace.Status(trace.StatusCode.ERROR, str(exc)))
                    errors.append(f"{name}: {exc}")
                    return name, []

        with ThreadPoolExecutor(max_workers=8, thread_name_prefix="promql") as pool:
            results = dict(pool.map(one, queries))
        ranged = {k: v for k, v in results.items() if k not in INSTANT_QUERIES}
        instant = {k: v for k, v in results.items() if k in INSTANT_QUERIES}
        return ranged, instant, sorted(errors)

    # ---- scoring

    def _candidates(
        self,
        target: Target,
        ranged: dict[str, list[RangeSeries]],
        recent_seconds: float | None = None,
        end: float | None = None,
    ) -> dict[tuple[str, str, int | None], _Candidate]:
        queries = self._queries(target)
        recent = self.recent_seconds if recent_seconds is None else recent_seconds
        recent_points = max(1, round(recent / self.step_seconds))
        model = target.model_name or target.job or "model"
        candidates: dict[tuple[str, str, int | None], _Candidate] = {}
        for signal in SIGNALS:
            for series in ranged.get(signal.query, []):
                kind, level, weight = signal.kind, None, 1.0
                span_kind = series.labels.get("span_kind", "")
                if signal.label == "span_name" and _asgi_message_span(series.labels.get("span_name", ""), span_kind):
                    continue  # its operation's own span is the candidate (contract.ASGI_MESSAGE_SPAN_SUFFIXES)
                if signal.label == "span_name":
                    level = SPAN_LEVELS.get(span_kind, STAGE)
                    if signal.kind == "stage_latency":
                        kind = LATENCY_KINDS[level]
                elif signal.kind == "stage_latency":
                    level = STAGE  # an ml_stage: the same candidate as its INTERNAL span
                if signal.kind == "traffic":
                    weight = TRAFFIC_WEIGHT
                if signal.kind == "logs":
                    weight = LOG_WEIGHT
                if signal.kind == "resource":
                    weight = RESOURCE_WEIGHT
                subject = (
                    signal.subject
                    or series.labels.get(signal.label or "", "")
                    if signal.label or signal.subject
                    else (target.job or "" if signal.kind == "traffic" else model)
                )
                if not subject:
                    continue
                if signal.log_floor:  # shown as it is, scored in doublings
                    anomaly = detect(series.values, recent=recent_points)
                    scored = detect(
                        signal.scored(series.values),
                        recent=recent_points,
                        min_scale=signal.min_scale,
                        relative_floor=signal.relative_floor,
                    )
                else:
                    scored = None
                    anomaly = detect(
                        series.values,
                        recent=recent_points,
                        min_scale=signal.min_scale,
                        relative_floor=signal.relative_floor,
                    )
                evidence = _Evidence(
                    signal, subject, anomaly, queries[signal.query], weight, series.values, dict(series.labels),
                    scored,
                )
                candidate = candidates.setdefault((kind, subject, level), _Candidate(kind, subject, level))
                candidate.span_kind = candidate.span_kind or span_kind
                candidate.evidence.append(evidence)
        if self.templates is not None and target.service_name:
            self._template_candidates(target.service_name, ranged, recent, candidates, end)
        return candidates

    def _template_candidates(
        self, service: str, ranged: dict[str, list[RangeSeries]], recent: float, candidates: dict, end: float | None
    ) -> None:
        """A WARN-or-worse template whose rate moved, or a template first seen in the recent window."""
        grid = round((self.baseline_seconds + recent) / self.step_seconds) + 1
        if end is None:
            end = math.floor(self.clock() / self.step_seconds) * self.step_seconds
        start = end - (grid - 1) * self.step_seconds
        recent_start = end - recent
        recent_points = max(1, round(recent / self.step_seconds))
        window = _seconds(self.rate_window)
        for template, values, first in self.templates.series(service, start, end, self.step_seconds, window):
            new = template.first_seen >= recent_start and first < recent_start - self.baseline_seconds / 2
            if template.severity not in ALERTING_SEVERITIES and not new:
                continue
            subject = template.text if len(template.text) <= TEMPLATE_SUBJECT_CHARS else (
                template.text[: TEMPLATE_SUBJECT_CHARS - 1] + "…"
            )
            anomaly = detect(
                values, recent=recent_points, min_scale=TEMPLATE_SIGNAL.min_scale,
                relative_floor=TEMPLATE_SIGNAL.relative_floor,
            )
            labels = {"severity": template.severity}
            evidence = _Evidence(TEMPLATE_SIGNAL, subject, anomaly, "", LOG_WEIGHT, values, labels)
            candidate = _Candidate("log_template", subject, None)
            candidate.evidence.append(evidence)
            when = datetime.fromtimestamp(template.first_seen, UTC).strftime("%H:%M:%S")
            candidate.notes.append(
                f"log template #{template.id} ({template.severity}): {template.text}"
                + (f"; new: first seen at {when} UTC" if new else f"; first seen at {when} UTC")
            )
            for ex in list(template.examples)[-3:]:
                at = datetime.fromtimestamp(ex.at, UTC).strftime("%H:%M:%S")
                trace = f" trace_id={ex.trace_id}" if ex.trace_id else ""
                candidate.notes.append(f"example {at} {ex.severity}{trace}: {ex.body}")
            candidates[("log_template", subject, None)] = candidate

    @staticmethod
    def _deployment(target: Target, instant: dict[str, list[Sample]]) -> _Deployment:
        queries = promql(target)  # the deployment queries use no rate window
        changes = {s.labels.get("ml_model_version", "?"): s.value for s in instant.get("deployments", [])}
        new = sorted({s.labels.get("ml_model_version", "?") for s in instant.get("new_versions", [])}, key=_version)
        before = sorted(
            {s.labels.get("ml_model_version", "?") for s in instant.get("previous_versions", [])}, key=_version
        )
        happened = bool(new) or any(v > 0 for v in changes.values() if math.isfinite(v))
        return _Deployment(happened, new, before, changes, [queries[k] for k in INSTANT_QUERIES])

    @staticmethod
    def _explain_latency(candidate: _Candidate, moved: list[_Candidate]) -> None:
        """An operation or stage whose added latency is mostly that of a deeper span is its symptom."""
        added = candidate.added_seconds()
        if added <= 0 or candidate.level is None:
            return
        for level in (DOWNSTREAM, STAGE):  # the deepest explanation first: it is the cause of the rest
            deeper = [c for c in moved if c.kind == LATENCY_KINDS[level] and level > candidate.level]
            if not deeper:
                continue
            cause = max(deeper, key=lambda c: c.added_seconds())
            if cause.added_seconds() >= EXPLAINED_SHARE * added:
                where = "the downstream" if level == DOWNSTREAM else "the stage"
                candidate.weight = EXPLAINED_WEIGHT
                candidate.notes.append(
                    f"most of the added time is {where} {cause.subject} "
                    f"(+{fmt(cause.added_seconds(), 's')} of +{fmt(added, 's')}): a symptom of it"
                )
                return

    @staticmethod
    def _explain_errors(candidate: _Candidate, moved: list[_Candidate]) -> None:
        """Errors of an operation or stage that come with errors of a deeper span are their symptom."""
        if candidate.level is None:
            return
        deeper = [c for c in moved if c.kind == "errors" and c.level is not None and c.level > candidate.level]
        if deeper:
            cause = max(deeper, key=lambda c: (c.level, c.score))
            candidate.weight = EXPLAINED_WEIGHT
            candidate.notes.append(
                f"the error ratio of the {_span_kind_name(cause.span_kind)} span {cause.subject} "
                "rose too: a symptom of it"
            )

    @staticmethod
    def _explain_host(candidate: _Candidate, moved: list[_Candidate], cpus: float | None) -> None:
        """The host's CPUs all busy: every process on it waits (a cause, at full weight), unless the
        process's own CPU use accounts for most of the idle CPU lost (then its symptom)."""
        best = candidate.best
        idle, lost = best.anomaly.latest, best.bad_delta  # cores idle now, and fewer than before
        process = next((c for c in moved if c.kind == "resource" and c.subject == PROCESS_CPU_SUBJECT), None)
        if process is not None and lost > 0 and process.best.bad_delta >= EXPLAINED_SHARE * lost:
            candidate.weight = EXPLAINED_WEIGHT
            candidate.notes.append(
                f"the process's own CPU use rose by {fmt(process.best.bad_delta, 'cores')} of the "
                f"{fmt(lost, 'cores')} the host no longer has idle: a symptom of it"
            )
            return
        if cpus and math.isfinite(idle) and idle <= (1 - HOST_CPU_SATURATED_SHARE) * cpus:
            candidate.weight = 1.0 / RESOURCE_WEIGHT  # undoes the evidence's resource weight
            busy = min(max(1 - idle / cpus, 0.0), 1.0)
            candidate.notes.append(
                f"resource saturation: the host: {fmt(max(idle, 0.0), 'cores')} of its {cpus:g} CPUs idle "
                f"({busy:.0%} busy), not taken by this process: every process on it waits for CPU"
            )
            return
        size = f"{cpus:g} CPUs" if cpus else "CPUs (their number unknown)"
        candidate.weight = HOST_UNSATURATED_WEIGHT
        candidate.notes.append(
            f"the host's {size} are not saturated (a cause from {HOST_CPU_SATURATED_SHARE:.0%} busy): "
            "CPU to spare, so nothing waits for it"
        )

    @classmethod
    def _explain_resource(cls, candidate: _Candidate, moved: list[_Candidate], cpus: float | None) -> None:
        """CPU near one core saturates a Python process: then a cause, at full weight."""
        if candidate.subject == HOST_CPU_SUBJECT:
            cls._explain_host(candidate, moved, cpus)
            return
        if candidate.subject == PROCESS_CPU_SUBJECT:
            latest = candidate.best.anomaly.latest
            if math.isfinite(latest) and latest >= CPU_SATURATED_CORES:
                candidate.weight = 1.0 / RESOURCE_WEIGHT  # undoes the evidence's resource weight
                candidate.notes.append(
                    f"the process uses {latest:.2f} cores: a Python process saturates near one (the GIL), "
                    "so every operation waits for CPU"
                )
                return
        candidate.notes.append("resource use of the process: a cause when it saturates, else maybe a symptom")

    @staticmethod
    def _host_cpus(ranged: dict[str, list[RangeSeries]]) -> float | None:
        """The host's number of CPUs: the latest finite point of ``host_cpus``."""
        for series in ranged.get("host_cpus", []):
            finite = [float(v) for v in series.values if math.isfinite(v)]
            if finite and finite[-1] > 0:
                return finite[-1]
        return None

    @classmethod
    def _adjust(
        cls,
        candidates: dict[tuple[str, str, int | None], _Candidate],
        deployment: _Deployment,
        target: Target,
        cpus: float | None = None,
    ) -> None:
        moved = [c for c in candidates.values() if c.score >= MIN_SCORE]  # judged before any is adjusted
        for candidate in candidates.values():
            if candidate.kind in ("operation_latency", "stage_latency"):
                cls._explain_latency(candidate, moved)
            if candidate.kind == "errors":
                cls._explain_errors(candidate, moved)
            if candidate.kind == "downstream_latency":
                if candidate.span_kind == "SPAN_KIND_PRODUCER":
                    candidate.notes.append("a PRODUCER span: the time is spent handing messages to the broker")
                else:
                    candidate.notes.append("a CLIENT span: the time is spent in the downstream service it calls")
            if candidate.kind == "operation_latency":
                candidate.notes.append(
                    f"a {_span_kind_name(candidate.span_kind)} span: an operation the service serves"
                )
            if candidate.kind == "resource":
                cls._explain_resource(candidate, moved, cpus)
            if candidate.kind == "model_regression":
                candidate.notes.append(deployment.note())
                candidate.more_promql.extend(deployment.exprs)
                version = deployment.new_versions[-1] if deployment.new_versions else target.model_version
                if version:
                    candidate.subject = f"{candidate.subject} v{version}"
                if not deployment.happened:
                    candidate.weight = UNDEPLOYED_REGRESSION_WEIGHT

    def _unknown(self, target: Target, ranged: dict[str, list[RangeSeries]], errors: list[str]) -> Finding:
        checked = sum(len(v) for v in ranged.values())
        job = target.job or "any job"
        if checked:
            text = (
                f"No signal of {job} moved beyond its baseline: {checked} series checked (stage and span "
                "latency, span errors, log counts, drift, model quality, traffic, process and host resources), "
                f"each scored as {self.window}."
            )
        else:
            text = f"Prometheus has no ml_* or span-metric series of {job} in the window: is it running and exporting?"
        if errors:
            text += f"\n{len(errors)} queries failed: " + "; ".join(errors)
        # The link shows the service's traffic: of its ml_* metrics if it has them, else of its spans.
        shown = next((q for q in UNKNOWN_LINK_QUERIES if ranged.get(q)), UNKNOWN_LINK_QUERIES[0])
        return Finding(
            kind="unknown",
            subject=target.job or "unknown",
            score=0.0,
            summary="no candidate cause moved beyond its baseline",
            evidence=text,
            promql=[self._queries(target)[shown]],
        )

    # ---- the analysis

    def assess(
        self, target: Target, when: float, *, recent_seconds: float | None = None, fresh: bool = False
    ) -> Assessment:
        """Rank the candidate causes of ``target`` at ``when``: the latest point against the baseline
        before the last ``recent_seconds`` (the analyzer's recent window unless told), on a grid that
        ends at ``grid_end(when, fresh)``."""
        recent = self.recent_seconds if recent_seconds is None else recent_seconds
        ranged, instant, errors = self._run(target, when, recent, fresh)
        end = self.grid_end(when, fresh)
        candidates = self._candidates(target, ranged, recent, end)
        deployment = self._deployment(target, instant)
        self._adjust(candidates, deployment, target, self._host_cpus(ranged))

        def rank(c: _Candidate) -> tuple[float, int, str]:
            return (-c.score, KIND_ORDER.index(c.kind), c.subject)

        ranked = [c for c in sorted(candidates.values(), key=rank) if c.score > 0]
        findings = [c.finding() for c in ranked[:MAX_FINDINGS]]
        if not findings or findings[0].score < MIN_SCORE:
            findings = [self._unknown(target, ranged, errors), *findings][:MAX_FINDINGS]
            link_promql = findings[0].promql[0]
            ranked = []
        else:
            best = ranked[0].best
            focus = {best.signal.label: best.subject} if best.signal.label else None
            queries = self._queries(target, focus)
            # A log template is no PromQL series: its link is the service's log rate by severity.
            link_promql = queries.get(best.signal.query) or queries["log_rate"]
        start = end - self.baseline_seconds - recent
        return Assessment(target, ranked, findings, deployment, errors, link_promql, start, end, self.step_seconds)

    def suspects(self, assessment: Assessment) -> list[Finding]:
        """The top suspect, and the second when it is strong too and not a symptom of the first."""
        ranked = assessment.ranked
        if not ranked:
            return assessment.findings[:1]
        out = [ranked[0].finding()]
        for c in ranked[1:3]:
            if (
                c.score >= SECOND_SUSPECT_SCORE
                and c.score >= SECOND_SUSPECT_SHARE * ranked[0].score
                and c.weight >= 1.0
                and c.kind not in ("logs", "traffic")
            ):
                out.append(c.finding())
                break
        return out

    def links_for(self, assessment: Assessment, *, extra_seconds: float | None = None) -> Links:
        deployment = assessment.deployment
        target = assessment.target
        new_version = deployment.new_versions[-1] if deployment.new_versions else None
        return build_links(
            assessment.findings[0],
            promql=assessment.link_promql,
            grafana=self.grafana_url,
            service=target.service_name,
            model_version=new_version or target.model_version,
            start_ms=int(assessment.start * 1000),
            end_ms=int((assessment.end + (self.recent_seconds if extra_seconds is None else extra_seconds)) * 1000),
            slow=self.slow_seconds,
        )

    def analyze(self, alert: WebhookAlert, *, at: float | None = None) -> Incident:
        now = self.clock() if at is None else at
        when = min(now, alert.starts_at.timestamp() + ANCHOR_SECONDS)
        target = Target.from_labels(alert.labels)
        assessment = self.assess(target, when)
        findings = assessment.findings
        return Incident(
            fingerprint=alert.fingerprint,
            alertname=alert.alertname,
            status=alert.status,
            service=target.service_name,
            labels=alert.labels,
            annotations=alert.annotations,
            starts_at=alert.starts_at,
            ends_at=alert.ended,
            analyzed_at=datetime.fromtimestamp(now, UTC),
            evaluated_at=datetime.fromtimestamp(assessment.end, UTC),
            window=self.window,
            top_suspect=findings[0],
            findings=findings,
            suspects=self.suspects(assessment),
            links=self.links_for(assessment),
            errors=assessment.errors,
        )

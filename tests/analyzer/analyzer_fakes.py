"""Canned Prometheus answers for the analyzer tests: a healthy hour of the sample service, its five
injected faults and a CPU-bound neighbour on its host, a healthy hour of a generic service (shop-api)
and its faults, fakes.

Imported by name from the tests (a module name no other test folder uses: pytest puts each test
folder on sys.path, and every folder has its own conftest).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import numpy as np

from analyzer import rca
from analyzer.detector import DISCOVERY
from analyzer.grafana import GrafanaAnnotator
from analyzer.prometheus import RangeSeries, Sample, grid_size
from mlobs.contract import FEATURE_LOOKUP_SPAN, STAGES

JOB = "mlobs-inference"
MODEL = "breast-cancer-classifier"
LABELS = {"job": JOB, "ml_model_name": MODEL, "ml_model_version": "1"}
TARGET = rca.Target(JOB, MODEL, "1")
# 1h of baseline plus 5m of recent points at a 60s step, as the analyzer asks.
POINTS = grid_size(0, rca.BASELINE_SECONDS + rca.RECENT_SECONDS, rca.STEP_SECONDS)
FAULT_POINTS = 6  # the fault began 6 minutes ago: the whole recent window, plus one point
NOW = 1_800_000_000.0
HOST_CPUS = 2

# The healthy p95 of each stage, in seconds.
STAGE_P95 = dict(zip(STAGES, (0.002, 0.008, 0.004, 0.001), strict=True))
FEATURES = ("mean_radius", "mean_texture", "mean_perimeter", "mean_area", "mean_smoothness")
SERVER, INTERNAL, CLIENT = "SPAN_KIND_SERVER", "SPAN_KIND_INTERNAL", "SPAN_KIND_CLIENT"

# A generic service, instrumented by OpenTelemetry alone: span metrics and log counts, no ml_* metric.
SHOP = "shop-api"
ITEMS, CHECKOUT, PAYMENTS, ITEMS_DB = "GET /items", "POST /checkout", "payments", "SELECT shop.items"
# A span-metric alert (prometheus/rules/services.yml) carries service_name and span_name, no job.
SHOP_LABELS = {"service_name": SHOP, "span_name": CHECKOUT}
SHOP_TARGET = rca.Target.from_labels(SHOP_LABELS)


@dataclass
class World:
    """Per query name: label set → series of POINTS values; instant queries: label set → value."""

    ranged: dict[str, dict[tuple, np.ndarray]] = field(default_factory=dict)
    instant: dict[str, dict[tuple, float]] = field(default_factory=dict)
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(7))

    def steady(self, query: str, labels: dict[str, str], level: float, noise: float) -> None:
        values = level + self.rng.normal(0.0, noise, POINTS) if noise else np.full(POINTS, level)
        self.ranged.setdefault(query, {})[tuple(sorted(labels.items()))] = values

    def shift(self, query: str, labels: dict[str, str], to: float, noise: float = 0.0) -> None:
        """The injected change: the last FAULT_POINTS points move to ``to``."""
        series = self.ranged[query][tuple(sorted(labels.items()))]
        series[-FAULT_POINTS:] = to + (self.rng.normal(0.0, noise, FAULT_POINTS) if noise else 0.0)

    def set_instant(self, query: str, rows: dict[tuple, float]) -> None:
        self.instant[query] = rows


def healthy(noise: bool = True) -> World:
    """An hour of a healthy sample service: small noise around plausible levels (none when ``noise`` is off)."""
    w = World()
    k = 1.0 if noise else 0.0
    for stage, p95 in STAGE_P95.items():
        w.steady("stage_p95", {"ml_stage": stage}, p95, 0.05 * p95 * k)
        w.steady("stage_p99", {"ml_stage": stage}, 1.5 * p95, 0.08 * p95 * k)
        w.steady("span_p95", {"span_name": stage, "span_kind": INTERNAL}, p95, 0.05 * p95 * k)
        w.steady("span_p99", {"span_name": stage, "span_kind": INTERNAL}, 1.5 * p95, 0.08 * p95 * k)
        w.steady("span_error_ratio", {"span_name": stage, "span_kind": INTERNAL}, 0.0, 0.0)
    for query, level in (("span_p95", 1.0), ("span_p99", 1.6)):
        w.steady(query, {"span_name": "POST /predict", "span_kind": SERVER}, 0.02 * level, 0.001 * k)
        w.steady(query, {"span_name": FEATURE_LOOKUP_SPAN, "span_kind": CLIENT}, 0.005 * level, 0.0003 * k)
    # Invalid requests from the load generator fail validation: a steady, non-zero error ratio.
    w.steady("span_error_ratio", {"span_name": "validation", "span_kind": INTERNAL}, 0.03, 0.004 * k)
    w.steady("span_error_ratio", {"span_name": "POST /predict", "span_kind": SERVER}, 0.0, 0.0)
    w.steady("span_error_ratio", {"span_name": FEATURE_LOOKUP_SPAN, "span_kind": CLIENT}, 0.0, 0.0)
    for feature in FEATURES:
        w.steady("drift_psi", {"ml_feature": feature}, 0.03, 0.008 * k)
        w.steady("drift_ks", {"ml_feature": feature}, 0.05, 0.01 * k)
    w.steady("accuracy", {}, 0.95, 0.004 * k)
    w.steady("f1", {}, 0.94, 0.004 * k)
    w.steady("request_rate", {}, 10.0, 0.3 * k)
    # Log records by severity: the invalid requests log warnings; nothing logs errors.
    w.steady("log_rate", {"severity_text": "WARN"}, 0.3, 0.04 * k)
    w.steady("log_rate", {"severity_text": "ERROR"}, 0.0, 0.0)
    w.set_instant("deployments", {(("ml_model_version", "1"),): 0.0})
    w.set_instant("new_versions", {})
    w.set_instant("previous_versions", {(("ml_model_version", "1"),): 1.0})
    # The process and its host (2 CPUs): a fifth of a core, and 1.4 of the two idle.
    w.steady("cpu", {}, 0.2, 0.01 * k)
    w.steady("host_idle", {}, 1.4, 0.03 * k)
    w.steady("host_cpus", {}, float(HOST_CPUS), 0.0)
    return w


# The busy cores of a 2-CPU host shared with another test stack, every 15 s for ten minutes before a
# neighbour saturated it (the eval stack of 2026-12-02, 20:56:42 to 21:06:42): 0.1 to 1.7 busy.
SHARED_HOST_BUSY = (
    0.57, 0.56, 0.53, 0.56, 0.55, 0.51, 0.57, 0.46, 0.72, 0.56, 0.62, 0.33, 0.37, 0.60, 0.72, 1.15, 1.45,
    1.57, 1.73, 1.50, 1.48, 1.40, 1.38, 1.37, 1.22, 1.59, 1.59, 1.54, 1.58, 1.55, 1.99, 1.68, 1.57, 1.58,
    0.85, 0.59, 0.57, 0.58, 0.51, 0.59, 0.70,
)


def shared_host(world: World) -> World:
    """The host's idle CPU as noisy as on a machine shared with other stacks (SHARED_HOST_BUSY)."""
    idle = [HOST_CPUS - b for b in SHARED_HOST_BUSY]
    world.ranged["host_idle"][()] = np.array([idle[i % len(idle)] for i in range(POINTS)])
    return world


def fault_latency_inference() -> World:
    w = healthy()
    for query, extra in (("stage_p95", 0.5), ("stage_p99", 0.52)):
        w.shift(query, {"ml_stage": "inference"}, extra, 0.01)
    for query, extra in (("span_p95", 0.5), ("span_p99", 0.52)):
        w.shift(query, {"span_name": "inference", "span_kind": INTERNAL}, extra, 0.01)
        w.shift(query, {"span_name": "POST /predict", "span_kind": SERVER}, extra + 0.02, 0.01)
    w.shift("request_rate", {}, 7.5, 0.2)  # a closed-loop load generator slows down with the service
    return w


def fault_slow_lookup() -> World:
    w = healthy()
    for query, base in (("stage_p95", 0.3), ("stage_p99", 0.32)):
        w.shift(query, {"ml_stage": "feature_extraction"}, base + 0.008, 0.005)
    for query, base in (("span_p95", 0.3), ("span_p99", 0.32)):
        w.shift(query, {"span_name": FEATURE_LOOKUP_SPAN, "span_kind": CLIENT}, base + 0.005, 0.005)
        w.shift(query, {"span_name": "feature_extraction", "span_kind": INTERNAL}, base + 0.008, 0.005)
        w.shift(query, {"span_name": "POST /predict", "span_kind": SERVER}, base + 0.02, 0.005)
    return w


def fault_errors_inference() -> World:
    w = healthy()
    w.shift("span_error_ratio", {"span_name": "inference", "span_kind": INTERNAL}, 0.2, 0.01)
    w.shift("span_error_ratio", {"span_name": "POST /predict", "span_kind": SERVER}, 0.19, 0.01)
    w.shift("log_rate", {"severity_text": "ERROR"}, 2.0, 0.1)  # each failed request logs an error: a symptom
    # Failing requests skip post-processing: it gets a little faster, which is no cause.
    w.shift("stage_p95", {"ml_stage": "postprocessing"}, 0.0009)
    return w


def fault_drift_mean_radius() -> World:
    w = healthy()
    w.shift("drift_psi", {"ml_feature": "mean_radius"}, 0.45, 0.02)
    w.shift("drift_ks", {"ml_feature": "mean_radius"}, 0.35, 0.02)
    # Drifted inputs cost accuracy too, without any deployment: a symptom.
    w.shift("accuracy", {}, 0.88, 0.005)
    w.shift("f1", {}, 0.86, 0.005)
    return w


def fault_regression() -> World:
    w = healthy()
    w.shift("accuracy", {}, 0.80, 0.005)
    w.shift("f1", {}, 0.78, 0.005)
    w.shift("stage_p95", {"ml_stage": "inference"}, 0.0045)  # the new model is a touch slower: no cause
    w.set_instant("deployments", {(("ml_model_version", "1"),): 0.0, (("ml_model_version", "2"),): 0.0})
    w.set_instant("new_versions", {(("ml_model_version", "2"),): 1.0})
    return w


def fault_cpu_neighbour() -> World:
    """Another process on the host burns both CPUs: the host saturates; the service, starved, serves
    less (its own CPU use falls) and a little slower in every stage."""
    w = healthy()
    w.shift("host_idle", {}, 0.03, 0.005)
    w.shift("cpu", {}, 0.12, 0.01)
    for stage, p95 in STAGE_P95.items():
        w.shift("stage_p95", {"ml_stage": stage}, 2 * p95, 0.05 * p95)
        w.shift("span_p95", {"span_name": stage, "span_kind": INTERNAL}, 2 * p95, 0.05 * p95)
    w.shift("request_rate", {}, 7.0, 0.2)
    return w


def fault_process_cpu(cores: float = 1.0) -> World:
    """The service's own process burns ``cores`` more: the host's busy CPUs rise by as much."""
    w = healthy()
    w.shift("cpu", {}, 0.2 + cores, 0.01)
    w.shift("host_idle", {}, max(0.002, 1.4 - cores), 0.001)
    return w


def busy_neighbour() -> World:
    """A neighbour takes 0.8 of a CPU more, but the host (2 CPUs) keeps some idle: nothing waits for CPU."""
    w = healthy()
    w.shift("host_idle", {}, 0.6, 0.02)
    return w


SCENARIOS: dict[str, tuple[Callable[[], World], str, str]] = {
    "latency in inference": (fault_latency_inference, "stage_latency", "inference"),
    "slow feature lookup": (fault_slow_lookup, "downstream_latency", FEATURE_LOOKUP_SPAN),
    "error burst in inference": (fault_errors_inference, "errors", "inference"),
    "drift on mean_radius": (fault_drift_mean_radius, "drift", "mean_radius"),
    "regression after a deployment": (fault_regression, "model_regression", f"{MODEL} v2"),
    "CPU-bound neighbour": (fault_cpu_neighbour, "resource", rca.HOST_CPU_SUBJECT),
}


def shop_healthy(noise: bool = True) -> World:
    """An hour of shop-api: two operations (SERVER spans), a database call under one and the payments
    service (CLIENT spans) under the other, log counts; no ml_* series and no deployment data at all."""
    w = World()
    k = 1.0 if noise else 0.0
    spans = (
        (ITEMS, SERVER, 0.030, 0.002),
        (ITEMS_DB, CLIENT, 0.004, 0.001),
        (CHECKOUT, SERVER, 0.120, 0.01),
        (PAYMENTS, CLIENT, 0.080, 0.005),
    )
    for name, kind, p95, errors in spans:
        labels = {"span_name": name, "span_kind": kind}
        w.steady("span_p95", labels, p95, 0.05 * p95 * k)
        w.steady("span_p99", labels, 1.6 * p95, 0.08 * p95 * k)
        w.steady("span_error_ratio", labels, errors, 0.2 * errors * k)
    w.steady("log_rate", {"severity_text": "WARN"}, 0.2, 0.03 * k)
    w.steady("log_rate", {"severity_text": "ERROR"}, 0.02, 0.005 * k)
    return w


def _shift_span(w: World, name: str, kind: str, p95: float | None = None, errors: float | None = None) -> None:
    labels = {"span_name": name, "span_kind": kind}
    if p95 is not None:
        w.shift("span_p95", labels, p95, 0.01 * p95)
        w.shift("span_p99", labels, 1.2 * p95, 0.01 * p95)
    if errors is not None:
        w.shift("span_error_ratio", labels, errors, 0.01)


def shop_checkout_errors() -> World:
    """The checkout handler itself fails a quarter of its calls; payments answer as before."""
    w = shop_healthy()
    _shift_span(w, CHECKOUT, SERVER, errors=0.25)
    w.shift("log_rate", {"severity_text": "ERROR"}, 1.5, 0.1)  # and logs each failure
    return w


def shop_payments_errors() -> World:
    """The payments service fails: its CLIENT span errors, and so does the checkout that called it (a
    little more: its own checks fail too). Unexplained, the checkout would rank first."""
    w = shop_healthy()
    _shift_span(w, PAYMENTS, CLIENT, errors=0.3)
    _shift_span(w, CHECKOUT, SERVER, errors=0.32)
    return w


def shop_slow_payments() -> World:
    """The payments service takes 800 ms more: the checkout that waits for it too (a little more, with its
    retries). Unexplained, the checkout would rank first."""
    w = shop_healthy()
    _shift_span(w, PAYMENTS, CLIENT, p95=0.88)
    _shift_span(w, CHECKOUT, SERVER, p95=1.0)
    return w


def shop_slow_checkout() -> World:
    """The checkout handler's own code slows down by 400 ms; payments answer as fast as before."""
    w = shop_healthy()
    _shift_span(w, CHECKOUT, SERVER, p95=0.52)
    return w


def shop_error_logs() -> World:
    """Only the ERROR log count jumps: no span failed (a background task, a swallowed exception)."""
    w = shop_healthy()
    w.shift("log_rate", {"severity_text": "ERROR"}, 1.0, 0.05)
    return w


SHOP_SCENARIOS: dict[str, tuple[Callable[[], World], str, str]] = {
    "checkout fails": (shop_checkout_errors, "errors", CHECKOUT),
    "payments fail": (shop_payments_errors, "errors", PAYMENTS),
    "payments slow": (shop_slow_payments, "downstream_latency", PAYMENTS),
    "checkout slow": (shop_slow_checkout, "operation_latency", CHECKOUT),
    "error logs": (shop_error_logs, "logs", "ERROR"),
}


class FakePrometheus:
    """Answers exactly the analyzer's PromQL for TARGET from a World; anything else gets no data."""

    def __init__(self, world: World, target: rca.Target = TARGET, ready: bool = True) -> None:
        names = {expr: name for name, expr in rca.promql(target).items()}
        self.world = world
        self.names = names
        self.asked: list[str] = []
        self.ends: set[float] = set()
        self.is_ready = ready

    def _name(self, expr: str) -> str | None:
        assert "ml_fault_active" not in expr, "the RCA must not read the ground truth"
        self.asked.append(expr)
        return self.names.get(expr)

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[RangeSeries]:
        assert grid_size(start, end, step) == POINTS
        self.ends.add(end)
        name = self._name(expr)
        rows = self.world.ranged.get(name or "", {})
        return [RangeSeries(dict(labels), values.copy()) for labels, values in rows.items()]

    def query(self, expr: str, at: float) -> list[Sample]:
        name = self._name(expr)
        return [Sample(dict(labels), value) for labels, value in self.world.instant.get(name or "", {}).items()]

    def ready(self) -> bool:
        return self.is_ready


SERVICE_TARGET = rca.Target(job=JOB, model_name=None, model_version=None, service=JOB)


class ServicePrometheus(FakePrometheus):
    """Answers the alert analysis's PromQL and the detector's (per service, no model), and discovery."""

    def __init__(self, world: World, services: tuple[tuple[str, str], ...] = ((JOB, JOB),)) -> None:
        super().__init__(world, TARGET)
        self.names.update({expr: name for name, expr in rca.promql(SERVICE_TARGET).items()})
        self.services = services

    def query(self, expr: str, at: float) -> list[Sample]:
        if expr == DISCOVERY["spans"]:
            self.asked.append(expr)
            return [Sample({"job": job, "service_name": name}, 1.0) for job, name in self.services]
        if expr in DISCOVERY.values():
            self.asked.append(expr)
            return []
        return super().query(expr, at)


class BrokenPrometheus(FakePrometheus):
    """Every query fails, as when Prometheus is down."""

    def __init__(self) -> None:
        super().__init__(World(), ready=False)

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[RangeSeries]:
        raise ConnectionError("connection refused")

    def query(self, expr: str, at: float) -> list[Sample]:
        raise ConnectionError("connection refused")


def alert(
    alertname: str = "MLLatencyAnomaly",
    status: str = "firing",
    fingerprint: str = "a1b2c3d4e5f60718",
    labels: dict[str, str] | None = None,
    starts_at: str = "2027-01-15T08:00:00Z",
    ends_at: str = "0001-01-01T00:00:00Z",
    service: dict[str, str] = LABELS,
) -> dict:
    """An alert about ``service`` (its labels: the sample service's unless told; SHOP_LABELS for shop-api)."""
    return {
        "status": status,
        "labels": {"alertname": alertname, "severity": "warning", **service, **(labels or {})},
        "annotations": {"summary": f"{alertname} test"},
        "startsAt": starts_at,
        "endsAt": ends_at,
        "generatorURL": "http://prometheus:9090/graph",
        "fingerprint": fingerprint,
    }


def payload(*alerts: dict, status: str | None = None) -> dict:
    return {
        "version": "4",
        "groupKey": '{}:{alertname="MLLatencyAnomaly"}',
        "truncatedAlerts": 0,
        "status": status or alerts[0]["status"],
        "receiver": "analyzer",
        "groupLabels": {"alertname": alerts[0]["labels"]["alertname"]},
        "commonLabels": alerts[0]["labels"],
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "alerts": list(alerts),
    }


@dataclass
class FakeGrafana:
    """Records the annotation calls; answers like Grafana's HTTP API."""

    requests: list[httpx.Request] = field(default_factory=list)
    down: bool = False

    def handler(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            raise httpx.ConnectError("connection refused", request=request)
        self.requests.append(request)
        if request.method == "POST" and request.url.path == "/api/annotations":
            return httpx.Response(200, json={"message": "Annotation added", "id": 40 + len(self.requests)})
        if request.method == "PATCH" and request.url.path.startswith("/api/annotations/"):
            return httpx.Response(200, json={"message": "Annotation patched"})
        return httpx.Response(404, json={"message": "not found"})

    def annotator(self, **credentials: str) -> GrafanaAnnotator:
        credentials = credentials or {"password": "secret"}
        return GrafanaAnnotator("http://grafana:3000", transport=httpx.MockTransport(self.handler), **credentials)

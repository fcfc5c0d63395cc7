"""The analyzer's own cost: CPU time of its ranking code per incident and per scan, on SYNTHETIC series.

``SERVICES`` services with ``OPERATIONS`` operations each (span names: a fifth SERVER, half INTERNAL,
the rest CLIENT spans), each with the ML signals too (4 stages, 5 features, accuracy, F1, request
rate) and log counts at two severities: every query the analyzer runs (``analyzer.rca.promql``) has
data. In each service one downstream call slows down over the last minutes, and the operation above
it with it. A fake Prometheus answers the analyzer's PromQL from these series (the way
``tests/analyzer/analyzer_fakes.py`` does), so what is timed is the analyzer's ranking alone:
Prometheus' own work on real series is not in it.

An *incident* is ``RootCauseAnalyzer.analyze`` of one alert; a *scan* is one incident per service.
CPU is the process' CPU time (``time.process_time``, every thread: the analyzer queries from a pool).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import numpy as np

from analyzer import rca
from analyzer.models import WebhookAlert
from analyzer.prometheus import RangeSeries, Sample, grid_size

SERVICES = 10
OPERATIONS = 20
STAGES = ("validation", "feature_extraction", "inference", "postprocessing")
FEATURES = ("f1", "f2", "f3", "f4", "f5")
KINDS = ("SPAN_KIND_SERVER", "SPAN_KIND_INTERNAL", "SPAN_KIND_CLIENT")
LABEL = "SYNTHETIC series (mlobs/bench_analyzer.py), not a real Prometheus"


def operations(n: int = OPERATIONS) -> list[tuple[str, str]]:
    """(span name, span kind) of one service."""
    servers, internals = max(1, n // 5), n // 2
    out = []
    for i in range(n):
        kind = KINDS[0] if i < servers else KINDS[1] if i < servers + internals else KINDS[2]
        out.append((f"op-{i:02d}", kind))
    return out


class SyntheticPrometheus:
    """Answers every query of ``rca.promql`` for each service; series are made once per grid size."""

    def __init__(self, services: list[str], ops: int = OPERATIONS, seed: int = 11, fault_points: int = 6) -> None:
        self.rng = np.random.default_rng(seed)
        self.ops = operations(ops)
        self.fault_points = fault_points
        self.by_expr: dict[str, tuple[str, str]] = {}
        for s in services:
            for name, expr in rca.promql(target(s)).items():
                self.by_expr[expr] = (s, name)
        self._cache: dict[tuple[str, int], list[RangeSeries]] = {}
        self.queries = 0

    def _series(self, name: str, points: int) -> list[tuple[dict[str, str], np.ndarray]]:
        rng = self.rng

        def steady(level: float, noise: float) -> np.ndarray:
            return level + rng.normal(0.0, noise, points)

        rows: list[tuple[dict[str, str], np.ndarray]] = []
        slow_client = next(i for i, (_, k) in enumerate(self.ops) if k == KINDS[2])
        if name in ("span_p95", "span_p99", "span_error_ratio"):
            for i, (op, kind) in enumerate(self.ops):
                if name == "span_error_ratio":
                    values = np.abs(steady(0.002, 0.0005))
                else:
                    base = 0.01 * (1 + i % 5) * (1.5 if name == "span_p99" else 1.0)
                    values = steady(base, 0.05 * base)
                    if i in (0, slow_client):  # the slow downstream call and the operation above it
                        values[-self.fault_points:] += 0.4 + (0.02 if i == 0 else 0.0)
                rows.append(({"span_name": op, "span_kind": kind}, values))
        elif name in ("stage_p95", "stage_p99"):
            rows = [({"ml_stage": st}, steady(0.004, 0.0002)) for st in STAGES]
        elif name in ("drift_psi", "drift_ks"):
            rows = [({"ml_feature": f}, np.abs(steady(0.03, 0.008))) for f in FEATURES]
        elif name in ("accuracy", "f1"):
            rows = [({}, steady(0.95, 0.004))]
        elif name == "request_rate":
            rows = [({}, steady(10.0, 0.3))]
        elif name == "log_rate":
            rows = [({"severity_text": "WARN"}, np.abs(steady(0.3, 0.04))),
                    ({"severity_text": "ERROR"}, np.abs(steady(0.01, 0.003)))]
        return rows

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[RangeSeries]:
        self.queries += 1
        known = self.by_expr.get(expr)
        if known is None:
            return []
        points = grid_size(start, end, step)
        key = (expr, points)
        if key not in self._cache:
            self._cache[key] = [RangeSeries(labels, values) for labels, values in self._series(known[1], points)]
        return [RangeSeries(dict(s.labels), s.values.copy()) for s in self._cache[key]]

    def query(self, expr: str, at: float) -> list[Sample]:
        self.queries += 1
        known = self.by_expr.get(expr)
        if known is None:
            return []
        if known[1] in ("deployments",):
            return [Sample({"ml_model_version": "1"}, 0.0)]
        if known[1] == "previous_versions":
            return [Sample({"ml_model_version": "1"}, 1.0)]
        return []

    def ready(self) -> bool:
        return True


def injected_cause(ops: int = OPERATIONS) -> str:
    """The span name of the downstream call that slows down in every service."""
    return next(op for op, kind in operations(ops) if kind == KINDS[2])


def service_names(n: int = SERVICES) -> list[str]:
    return [f"svc-{i:02d}" for i in range(n)]


def alert_labels(service: str) -> dict[str, str]:
    return {"alertname": "ServiceLatencyHigh", "severity": "warning", "job": service, "service_name": service,
            "ml_model_name": "model"}


def target(service: str) -> rca.Target:
    return rca.Target.from_labels(alert_labels(service))


def measure(services: int = SERVICES, ops: int = OPERATIONS, scans: int = 5) -> dict:
    """One warm-up scan, then ``scans`` timed scans; CPU and wall milliseconds per incident and per scan."""
    names = service_names(services)
    prom = SyntheticPrometheus(names, ops)
    analyzer = rca.RootCauseAnalyzer(prom, grafana_url="http://127.0.0.1:3000")
    now = time.time()
    alerts = [WebhookAlert.model_validate({"status": "firing", "labels": alert_labels(s),
                                           "startsAt": datetime.fromtimestamp(now - 120, UTC).isoformat()})
              for s in names]
    tops: dict[str, str] = {}
    for a in alerts:  # warm-up: the fake's series, imports, caches
        incident = analyzer.analyze(a, at=now)
        tops[a.labels["service_name"]] = f"{incident.top_suspect.kind} {incident.top_suspect.subject}"
    per_incident_cpu, per_incident_wall, per_scan_cpu, per_scan_wall = [], [], [], []
    queries_before = prom.queries
    for _ in range(scans):
        scan_cpu, scan_wall = time.process_time(), time.perf_counter()
        for a in alerts:
            c0, w0 = time.process_time(), time.perf_counter()
            analyzer.analyze(a, at=now)
            per_incident_cpu.append(time.process_time() - c0)
            per_incident_wall.append(time.perf_counter() - w0)
        per_scan_cpu.append(time.process_time() - scan_cpu)
        per_scan_wall.append(time.perf_counter() - scan_wall)

    def ms(values: list[float]) -> dict[str, float]:
        a = np.array(values) * 1000
        return {"mean": round(float(a.mean()), 2), "p95": round(float(np.percentile(a, 95)), 2)}

    series = sum(len(v) for (expr, _), v in prom._cache.items() if prom.by_expr[expr][0] == names[0])
    return {
        "label": LABEL,
        "services": services,
        "operations_per_service": ops,
        "series_per_incident": series,
        "queries_per_incident": (prom.queries - queries_before) // (scans * services),
        "scans": scans,
        "cpu_ms_per_incident": ms(per_incident_cpu),
        "wall_ms_per_incident": ms(per_incident_wall),
        "cpu_ms_per_scan": ms(per_scan_cpu),
        "wall_ms_per_scan": ms(per_scan_wall),
        "step_seconds": rca.STEP_SECONDS,
        "top_suspects": tops,
        "injected_first": sum(t == f"downstream_latency {injected_cause(ops)}" for t in tops.values()),
    }

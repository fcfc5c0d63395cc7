"""The host's CPU as a candidate cause: resource saturation of the host (a CPU-bound neighbour), told
apart from the service's own CPU use and from a host that still has CPU to spare."""

from __future__ import annotations

import numpy as np
import pytest
from analyzer_fakes import (
    HOST_CPUS,
    JOB,
    NOW,
    SHARED_HOST_BUSY,
    FakePrometheus,
    ServicePrometheus,
    World,
    alert,
    busy_neighbour,
    fault_cpu_neighbour,
    fault_process_cpu,
    healthy,
    shared_host,
)

from analyzer import rca
from analyzer.changepoint import find_change
from analyzer.detect import detect
from analyzer.detector import DETECT_SCORE
from analyzer.models import Finding, Incident, WebhookAlert
from mlobs import contract
from mlobs import telemetry as mlobs_telemetry


def analyse(world: World, **options: float) -> Incident:
    analyzer = rca.RootCauseAnalyzer(FakePrometheus(world), grafana_url="http://grafana:3000", **options)
    return analyzer.analyze(WebhookAlert.model_validate(alert()), at=NOW)


def host_finding(incident: Incident) -> Finding:
    [finding] = [f for f in incident.findings if (f.kind, f.subject) == ("resource", rca.HOST_CPU_SUBJECT)]
    return finding


def test_a_cpu_bound_neighbour_makes_the_saturated_host_the_suspect() -> None:
    incident = analyse(fault_cpu_neighbour())
    top = incident.top_suspect
    ranking = [(f.kind, f.subject) for f in incident.findings]
    assert (top.kind, top.subject) == ("resource", rca.HOST_CPU_SUBJECT), ranking
    assert [(s.kind, s.subject) for s in incident.suspects] == [("resource", rca.HOST_CPU_SUBJECT)]
    assert "resource saturation: the host" in top.evidence
    assert f"of its {HOST_CPUS} CPUs idle (99% busy)" in top.evidence
    assert "idle CPU of the host: host cpu fell from 1.39 cores" in top.summary
    assert top.baseline == pytest.approx(1.4, abs=0.05) and top.current == pytest.approx(0.03, abs=0.02)
    assert top.robust_z is not None and top.robust_z < -10, "scored in doublings of the headroom"
    # The starved process uses less CPU, not more: it is no candidate.
    assert ("resource", rca.PROCESS_CPU_SUBJECT) not in ranking
    assert contract.SYSTEM_CPU_UTILIZATION_RATIO in top.evidence and top.promql[0] in incident.links.promql
    # Full weight: at least what the same evidence scores with the resource weight alone.
    assert top.score > 0.5


def test_the_host_is_a_symptom_when_the_process_itself_burns_the_cpu() -> None:
    for cores in (1.0, 1.8):  # one core (the GIL's limit), and a process that saturates the host
        incident = analyse(fault_process_cpu(cores))
        top, host = incident.top_suspect, host_finding(incident)
        assert (top.kind, top.subject) == ("resource", rca.PROCESS_CPU_SUBJECT)
        assert "a symptom of it" in host.evidence and "saturation" not in host.evidence
        assert host.score < top.score / 2
        assert [s.subject for s in incident.suspects] == [rca.PROCESS_CPU_SUBJECT]


def test_a_busier_host_with_cpu_to_spare_never_opens_an_incident() -> None:
    host = host_finding(analyse(busy_neighbour()))
    assert "not saturated" in host.evidence
    assert 0 < host.score < DETECT_SCORE
    assert rca.RESOURCE_WEIGHT * rca.HOST_UNSATURATED_WEIGHT < DETECT_SCORE, "whatever the evidence"


def test_without_the_number_of_cpus_the_host_is_not_judged_saturated() -> None:
    world = fault_cpu_neighbour()
    del world.ranged["host_cpus"]
    host = host_finding(analyse(world))
    assert "number unknown" in host.evidence and "saturation" not in host.evidence
    assert host.score < DETECT_SCORE


def saturated(world: World) -> World:
    world.shift("host_idle", {}, 0.001)
    return world


def test_a_saturated_host_stands_out_of_a_noisy_baseline() -> None:
    """On a host shared with stacks that come and go (0.1 to 1.7 of 2 CPUs busy), the busy share alone
    is no anomaly (robust z -2.5 on the eval's data); none idle is many halvings of the headroom."""
    idle = np.array([HOST_CPUS - b for b in SHARED_HOST_BUSY] + [0.0007] * 6)
    [signal] = [s for s in rca.SIGNALS if s.subject == rca.HOST_CPU_SUBJECT]
    assert abs(detect(idle, recent=6).robust_z) < 3.5
    assert detect(signal.scored(idle), recent=6, min_scale=signal.min_scale).robust_z < -8
    change = find_change(signal.scored(idle), min_scale=signal.min_scale)
    assert change is not None and change.index == len(SHARED_HOST_BUSY) and change.robust_z < -3.5
    # The analysis: the host first when it saturates, nothing at all while it is only noisy.
    top = analyse(saturated(shared_host(healthy()))).top_suspect
    assert (top.kind, top.subject) == ("resource", rca.HOST_CPU_SUBJECT) and top.score > 0.5
    assert analyse(shared_host(healthy())).top_suspect.kind == "unknown"


def test_the_detector_sees_the_saturation_of_a_noisy_host(make_client) -> None:
    client = make_client(prometheus=ServicePrometheus(saturated(shared_host(healthy()))))
    detector = client.app.state.detector
    detector.tick(NOW)
    [incident] = detector.tick(NOW + rca.STEP_SECONDS)
    assert (incident.top_suspect.kind, incident.top_suspect.subject) == ("resource", rca.HOST_CPU_SUBJECT)
    quiet = make_client(prometheus=ServicePrometheus(shared_host(healthy()))).app.state.detector
    assert [quiet.tick(NOW + i * rca.STEP_SECONDS) for i in range(3)] == [[], [], []]


def test_the_detector_opens_an_incident_for_the_neighbour(make_client) -> None:
    client = make_client(prometheus=ServicePrometheus(fault_cpu_neighbour()))
    detector = client.app.state.detector
    assert detector.tick(NOW) == []
    [incident] = detector.tick(NOW + rca.STEP_SECONDS)
    assert incident.source == "detector" and incident.service == JOB
    assert (incident.top_suspect.kind, incident.top_suspect.subject) == ("resource", rca.HOST_CPU_SUBJECT)
    assert f"resource {rca.HOST_CPU_SUBJECT}" in incident.annotations["summary"]


def test_the_detector_leaves_a_busier_unsaturated_host_alone(make_client) -> None:
    client = make_client(prometheus=ServicePrometheus(busy_neighbour()))
    detector = client.app.state.detector
    assert [detector.tick(NOW + i * rca.STEP_SECONDS) for i in range(3)] == [[], [], []]


def test_the_host_queries_average_the_gauge_over_the_step() -> None:
    target = rca.Target(JOB, None, None)
    queries = rca.promql(target, rate_window="1m", step_window="15s")
    assert queries["host_idle"] == (
        'sum(avg by (cpu) (avg_over_time(system_cpu_utilization_ratio{job="mlobs-inference", state="idle"}[15s])))'
    )
    assert queries["host_cpus"] == (
        'count(count by (cpu) (system_cpu_utilization_ratio{job="mlobs-inference", state="idle"}))'
    )
    assert rca.duration(15) == "15s" and rca.duration(0.25) == "1s" and rca.duration(60) == "60s"
    # The analyzer asks with its own step.
    asked: list[str] = []

    class Recorder:
        def query_range(self, expr: str, start: float, end: float, step: float) -> list:
            asked.append(expr)
            return []

        def query(self, expr: str, at: float) -> list:
            return []

    analyzer = rca.RootCauseAnalyzer(Recorder(), grafana_url="http://grafana:3000", step_seconds=15)
    analyzer._run(target, NOW)
    assert rca.promql(target, step_window="15s")["host_idle"] in asked
    assert rca.promql(target)["host_idle"] not in asked, "the default step is 60s, not the analyzer's"


def test_prometheus_names_a_share_gauge_with_ratio() -> None:
    assert contract.prometheus_name("system.cpu.utilization", "1") == "system_cpu_utilization_ratio"
    assert contract.prometheus_name("x.shares", "1", counter=True) == "x_shares_total"
    assert contract.SYSTEM_CPU_UTILIZATION_RATIO == "system_cpu_utilization_ratio"


def test_the_sample_service_reports_the_host_cpu_by_state() -> None:
    """mlobs.telemetry's system-metrics configuration emits the gauge the analyzer reads, under the name
    and attributes the contract gives."""
    from opentelemetry.instrumentation.system_metrics import SystemMetricsInstrumentor
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import Gauge, InMemoryMetricReader

    config = mlobs_telemetry._SYSTEM_METRICS
    assert config[contract.SYSTEM_CPU_UTILIZATION] == list(contract.SYSTEM_CPU_STATES)
    assert contract.SYSTEM_CPU_IDLE in contract.SYSTEM_CPU_STATES
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    instrumentor = SystemMetricsInstrumentor(config=config)
    instrumentor.instrument(meter_provider=provider)
    try:
        data = reader.get_metrics_data()
    finally:
        instrumentor.uninstrument()
        provider.shutdown()
    metrics = {m.name: m for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}
    metric = metrics[contract.SYSTEM_CPU_UTILIZATION]
    assert isinstance(metric.data, Gauge) and metric.unit == contract.SYSTEM_CPU_UTILIZATION_UNIT
    assert contract.prometheus_name(metric.name, metric.unit) == contract.SYSTEM_CPU_UTILIZATION_RATIO
    points = metric.data.data_points
    assert {p.attributes["state"] for p in points} == set(contract.SYSTEM_CPU_STATES)
    cpus = {p.attributes["cpu"] for p in points}
    assert cpus == set(range(1, len(cpus) + 1))
    assert all(0.0 <= p.value <= 1.0 for p in points)

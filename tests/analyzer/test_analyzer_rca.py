"""The RCA puts the injected cause first, from canned Prometheus answers, and says why."""

from __future__ import annotations

import json
import shutil
import urllib.parse
from datetime import UTC, datetime
from pathlib import Path

import pytest
from analyzer_fakes import (
    NOW,
    SCENARIOS,
    SHOP_LABELS,
    SHOP_SCENARIOS,
    SHOP_TARGET,
    BrokenPrometheus,
    FakePrometheus,
    World,
    alert,
    fault_drift_mean_radius,
    fault_latency_inference,
    fault_regression,
    fault_slow_lookup,
    healthy,
    shop_healthy,
)

from analyzer import rca
from analyzer.models import Incident, WebhookAlert


def analyse(world, prometheus=None) -> Incident:
    analyzer = rca.RootCauseAnalyzer(prometheus or FakePrometheus(world), grafana_url="http://grafana:3000")
    return analyzer.analyze(WebhookAlert.model_validate(alert()), at=NOW)


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_the_injected_cause_ranks_first(scenario: str) -> None:
    make_world, kind, subject = SCENARIOS[scenario]
    incident = analyse(make_world())
    top = incident.top_suspect
    ranking = [(f.kind, f.subject, f.score) for f in incident.findings]
    assert (top.kind, top.subject) == (kind, subject), ranking
    assert incident.findings[0] == top
    assert top.score >= rca.MIN_SCORE
    assert [f.score for f in incident.findings] == sorted((f.score for f in incident.findings), reverse=True)
    assert top.promql and all(q in top.evidence for q in top.promql), "the evidence names the PromQL it used"


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_the_ground_truth_is_never_read(scenario: str) -> None:
    prometheus = FakePrometheus(SCENARIOS[scenario][0]())
    analyse(None, prometheus)
    assert prometheus.asked, "the analysis asked Prometheus nothing"
    assert set(prometheus.asked) == set(
        rca.promql(rca.Target("mlobs-inference", "breast-cancer-classifier", "1")).values()
    )
    assert not any("ml_fault_active" in q for q in prometheus.asked)


def test_a_late_notification_is_judged_when_the_alert_started() -> None:
    prometheus = FakePrometheus(fault_latency_inference())
    analyzer = rca.RootCauseAnalyzer(prometheus, grafana_url="http://grafana:3000")
    started = datetime(2027, 1, 15, 4, 0, 30, tzinfo=UTC)  # four hours before NOW
    incident = analyzer.analyze(WebhookAlert.model_validate(alert(starts_at=started.isoformat())), at=NOW)
    assert incident.evaluated_at == datetime(2027, 1, 15, 4, 10, tzinfo=UTC), "10m after the start, on the step"
    assert prometheus.ends == {incident.evaluated_at.timestamp()}
    assert incident.analyzed_at == datetime.fromtimestamp(NOW, UTC)


def test_latency_evidence_gives_the_numbers() -> None:
    top = analyse(fault_latency_inference()).top_suspect
    assert top.baseline is not None and top.baseline < 0.01
    assert top.current == pytest.approx(0.5, rel=0.1)
    assert "p95 of stage inference rose from 4.0ms" in top.evidence
    assert "histogram_quantile(0.95, sum by (ml_stage, le) (rate(ml_stage_duration_seconds_bucket" in top.evidence
    assert top.robust_z is not None and top.robust_z > 100


def test_a_stage_slowed_by_its_downstream_lookup_is_called_a_symptom() -> None:
    incident = analyse(fault_slow_lookup())
    stage = next(f for f in incident.findings if (f.kind, f.subject) == ("stage_latency", "feature_extraction"))
    assert stage.score < incident.top_suspect.score
    assert "downstream feature_lookup" in stage.evidence


def test_drift_outranks_the_accuracy_it_costs() -> None:
    incident = analyse(fault_drift_mean_radius())
    kinds = [f.kind for f in incident.findings]
    assert kinds.index("drift") < kinds.index("model_regression")
    drift = incident.top_suspect
    assert "PSI of feature mean_radius rose from 0.02" in drift.evidence
    assert "KS statistic of feature mean_radius" in drift.evidence
    regression = incident.findings[kinds.index("model_regression")]
    assert "no model version change" in regression.evidence


def test_a_regression_names_the_deployment() -> None:
    top = analyse(fault_regression()).top_suspect
    assert "version 2 is new (before: 1)" in top.evidence
    assert "changes(ml_model_deployments_total" in top.evidence
    assert top.current == pytest.approx(0.80, abs=0.03)


@pytest.mark.parametrize("noise", [True, False], ids=["steady-noisy", "perfectly-flat"])
def test_nothing_moved_means_unknown(noise: bool) -> None:
    incident = analyse(healthy(noise=noise))
    assert incident.top_suspect.kind == "unknown"
    assert incident.top_suspect.score == 0.0
    assert "No signal of mlobs-inference moved" in incident.top_suspect.evidence
    json.loads(incident.model_dump_json())  # finite numbers only


def test_a_service_without_any_series_is_unknown_and_says_so() -> None:
    top = analyse(World()).top_suspect
    assert top.kind == "unknown"
    assert "no ml_* or span-metric series of mlobs-inference" in top.evidence


def test_prometheus_down_gives_unknown_and_lists_the_failures() -> None:
    incident = analyse(None, BrokenPrometheus())
    assert incident.top_suspect.kind == "unknown"
    assert len(incident.errors) == len(rca.promql(rca.Target("j", "m", None)))
    assert "connection refused" in incident.top_suspect.evidence


def test_alert_without_model_labels_widens_the_queries() -> None:
    queries = rca.promql(rca.Target("mlobs-inference", None, None))
    assert queries["accuracy"] == 'min(ml_model_accuracy{job="mlobs-inference"})'
    everything = rca.promql(rca.Target(None, None, None))
    assert everything["accuracy"] == "min(ml_model_accuracy)"
    quoted = rca.promql(rca.Target('we"ird\\job', None, None))
    assert 'job="we\\"ird\\\\job"' in quoted["accuracy"]


def test_links_open_the_top_suspect_in_grafana() -> None:
    links = analyse(fault_latency_inference()).links
    assert links.traceql.startswith('{ resource.service.name = "mlobs-inference" && name = "inference" && duration > ')
    threshold_ms = int(links.traceql.rsplit("> ", 1)[1].removesuffix("ms }"))
    assert 100 < threshold_ms < 500, "between the baseline and the current p95: only the slow traces"
    assert links.logql == '{service_name="mlobs-inference"} | severity_text=~"WARN|WARNING|ERROR|FATAL|CRITICAL"'
    assert links.promql == (
        "histogram_quantile(0.95, sum by (ml_stage, le) (rate(ml_stage_duration_seconds_bucket"
        '{job="mlobs-inference", ml_model_name="breast-cancer-classifier", ml_stage="inference"}[5m])))'
    ), "the link shows the suspect's own series"
    for url, uid, key, query in (
        (links.prometheus_explore, "prometheus", "expr", links.promql),
        (links.tempo_explore, "tempo", "query", links.traceql),
        (links.loki_explore, "loki", "expr", links.logql),
    ):
        assert url.startswith("http://grafana:3000/explore?schemaVersion=1&orgId=1&panes=")
        pane = json.loads(urllib.parse.unquote(url.split("panes=", 1)[1]))["rca"]
        assert pane["datasource"] == uid
        assert pane["queries"][0]["datasource"]["uid"] == uid
        assert pane["queries"][0][key] == query
        assert int(pane["range"]["from"]) < NOW * 1000 <= int(pane["range"]["to"])


def test_error_links_look_for_error_traces() -> None:
    links = analyse(SCENARIOS["error burst in inference"][0]()).links
    assert links.traceql == '{ resource.service.name = "mlobs-inference" && name = "inference" && status = error }'
    assert 'status_code="STATUS_CODE_ERROR", span_name="inference"' in links.promql
    assert 'traces_spanmetrics_calls_total{service_name="mlobs-inference", span_name="inference"}' in links.promql


def test_regression_links_look_at_the_new_version() -> None:
    links = analyse(fault_regression()).links
    assert 'span.ml.model.version = "2"' in links.traceql
    assert "model.deployed" in links.logql


def _every_generated_query() -> list[tuple[str, str]]:
    items: list[tuple[str, str]] = []
    for target in (rca.Target("mlobs-inference", "breast-cancer-classifier", "1"), rca.Target(None, None, None)):
        items += [("promql", q) for q in rca.promql(target).values()]
    for make_world, _, _ in [*SCENARIOS.values(), (healthy, "unknown", "")]:
        links = analyse(make_world()).links
        items += [("promql", links.promql), ("traceql", links.traceql), ("logql", links.logql)]
    # A generic service: its queries and the links of each of its findings.
    items += [("promql", q) for q in rca.promql(SHOP_TARGET).values()]
    for make_world, _, _ in [*SHOP_SCENARIOS.values(), (shop_healthy, "unknown", "")]:
        prometheus = FakePrometheus(make_world(), SHOP_TARGET)
        analyzer = rca.RootCauseAnalyzer(prometheus, grafana_url="http://grafana:3000")
        links = analyzer.analyze(WebhookAlert.model_validate(alert(service=SHOP_LABELS)), at=NOW).links
        items += [("promql", links.promql), ("traceql", links.traceql), ("logql", links.logql)]
    return items


@pytest.mark.skipif(shutil.which("node") is None or shutil.which("npm") is None, reason="the grammars run under Node")
def test_every_query_parses_with_the_upstream_grammars() -> None:
    from mlobs.dashboards.querycheck import parse

    items = _every_generated_query()
    problems = [(lang, expr, error) for (lang, expr), error in zip(items, parse(items), strict=True) if error]
    assert not problems, problems


def test_the_readme_lists_the_exact_promql() -> None:
    readme = (Path(__file__).resolve().parents[2] / "analyzer" / "README.md").read_text()
    missing = [
        q
        for q in rca.promql(rca.Target("mlobs-inference", "breast-cancer-classifier", None)).values()
        if q not in readme
    ]
    assert not missing, "analyzer/README.md is behind rca.promql()"

"""The RCA on a service it has never seen (shop-api): span metrics per operation and log counts, no ml_*."""

from __future__ import annotations

import json

import pytest
from analyzer_fakes import (
    CHECKOUT,
    ITEMS,
    NOW,
    PAYMENTS,
    SHOP,
    SHOP_LABELS,
    SHOP_SCENARIOS,
    SHOP_TARGET,
    FakePrometheus,
    alert,
    payload,
    shop_checkout_errors,
    shop_error_logs,
    shop_healthy,
    shop_payments_errors,
    shop_slow_checkout,
    shop_slow_payments,
)

from analyzer import rca
from analyzer.models import Finding, Incident, WebhookAlert

SPAN_KINDS = {"operation_latency", "stage_latency", "downstream_latency", "errors", "logs"}


def analyse(world, labels: dict[str, str] = SHOP_LABELS) -> Incident:
    analyzer = rca.RootCauseAnalyzer(FakePrometheus(world, SHOP_TARGET), grafana_url="http://grafana:3000")
    return analyzer.analyze(WebhookAlert.model_validate(alert("ServiceErrorRatioHigh", service=labels)), at=NOW)


def find(incident: Incident, kind: str, subject: str) -> Finding:
    found = [f for f in incident.findings if (f.kind, f.subject) == (kind, subject)]
    assert found, [(f.kind, f.subject, f.score) for f in incident.findings]
    return found[0]


@pytest.mark.parametrize("scenario", list(SHOP_SCENARIOS))
def test_the_changed_operation_ranks_first_without_any_ml_metric(scenario: str) -> None:
    make_world, kind, subject = SHOP_SCENARIOS[scenario]
    incident = analyse(make_world())
    top = incident.top_suspect
    ranking = [(f.kind, f.subject, f.score) for f in incident.findings]
    assert (top.kind, top.subject) == (kind, subject), ranking
    assert top.score >= rca.MIN_SCORE
    assert {f.kind for f in incident.findings} <= SPAN_KINDS, "no ML candidate without ml_* series"
    assert not incident.errors, "absent ml_* series are no failure"
    assert ITEMS not in {f.subject for f in incident.findings}, "the operation that did not move is no suspect"
    assert top.promql and all(q in top.evidence for q in top.promql)


def test_the_failing_operation_outranks_the_error_logs_it_writes() -> None:
    incident = analyse(shop_checkout_errors())
    top = incident.top_suspect
    assert (top.kind, top.subject) == ("errors", CHECKOUT)
    assert "error ratio of span POST /checkout rose from 1.0%" in top.summary
    assert "symptom" not in top.evidence, "no deeper span failed: the operation is the cause"
    logs = find(incident, "logs", "ERROR")
    assert 0 < logs.score < top.score
    assert 'status_code="STATUS_CODE_ERROR", span_name="POST /checkout"' in incident.links.promql
    assert incident.links.traceql == (
        '{ resource.service.name = "shop-api" && name = "POST /checkout" && status = error }'
    )


def test_a_failing_downstream_call_explains_the_errors_of_its_operation() -> None:
    incident = analyse(shop_payments_errors())
    assert (incident.top_suspect.kind, incident.top_suspect.subject) == ("errors", PAYMENTS)
    checkout = find(incident, "errors", CHECKOUT)
    assert checkout.score < 0.6 * incident.top_suspect.score, "a symptom weighs half"
    assert "the error ratio of the CLIENT span payments rose too: a symptom of it" in checkout.evidence


def test_a_slow_downstream_call_ranks_above_the_operation_it_slows() -> None:
    incident = analyse(shop_slow_payments())
    top = incident.top_suspect
    assert (top.kind, top.subject) == ("downstream_latency", PAYMENTS)
    assert "a CLIENT span: the time is spent in the downstream service it calls" in top.evidence
    checkout = find(incident, "operation_latency", CHECKOUT)
    assert rca.MIN_SCORE <= checkout.score < 0.6 * top.score, "a symptom weighs half"
    assert "most of the added time is the downstream payments" in checkout.evidence
    kinds = [(f.kind, f.subject) for f in incident.findings]
    assert kinds.index(("downstream_latency", PAYMENTS)) < kinds.index(("operation_latency", CHECKOUT))
    assert incident.links.traceql.startswith('{ resource.service.name = "shop-api" && name = "payments" && duration > ')


def test_an_operation_slow_in_its_own_code_is_named_at_full_weight() -> None:
    incident = analyse(shop_slow_checkout())
    top = incident.top_suspect
    assert (top.kind, top.subject) == ("operation_latency", CHECKOUT)
    assert "symptom" not in top.evidence
    assert "a SERVER span: an operation the service serves" in top.evidence
    assert top.current == pytest.approx(0.52, rel=0.05)
    assert 'traces_spanmetrics_duration_seconds_bucket{service_name="shop-api", span_name="POST /checkout"}' in (
        incident.links.promql
    )


def test_an_error_log_jump_alone_is_found() -> None:
    incident = analyse(shop_error_logs())
    top = incident.top_suspect
    assert (top.kind, top.subject) == ("logs", "ERROR")
    assert "rate of log records at severity ERROR rose from 0.02 records/s" in top.summary
    assert top.current == pytest.approx(1.0, rel=0.2)
    assert [f.kind for f in incident.findings] == ["logs"], "the steady WARN count and the spans are no suspects"
    assert incident.links.promql == (
        'sum by (severity_text) (rate(log_records_total{job="shop-api", severity_text="ERROR", '
        'severity_text=~"WARN|WARNING|ERROR|FATAL|CRITICAL"}[5m]))'
    )
    assert incident.links.logql == '{service_name="shop-api"} | severity_text="ERROR"'


@pytest.mark.parametrize("noise", [True, False], ids=["steady-noisy", "perfectly-flat"])
def test_a_healthy_service_is_unknown_with_a_link_to_its_spans(noise: bool) -> None:
    incident = analyse(shop_healthy(noise=noise))
    top = incident.top_suspect
    assert top.kind == "unknown"
    assert "No signal of shop-api moved" in top.evidence
    assert top.promql == [rca.promql(SHOP_TARGET)["span_error_ratio"]], "its spans, not ml_* metrics it has none of"
    json.loads(incident.model_dump_json())


def test_a_service_name_or_a_job_label_names_the_service() -> None:
    by_service = rca.Target.from_labels({"service_name": SHOP, "span_name": CHECKOUT})
    by_job = rca.Target.from_labels({"job": SHOP})
    assert (by_service.job, by_service.service_name, by_service.operation) == (SHOP, SHOP, CHECKOUT)
    assert (by_job.job, by_job.service_name, by_job.operation) == (SHOP, SHOP, None)
    assert rca.promql(by_service) == rca.promql(by_job)
    assert rca.promql(by_job)["span_p95"] == (
        "histogram_quantile(0.95, sum by (span_name, span_kind, le) (rate("
        'traces_spanmetrics_duration_seconds_bucket{service_name="shop-api"}[5m])))'
    )
    # With a service.namespace, Prometheus's job is namespace/name; span metrics keep service_name.
    namespaced = rca.promql(rca.Target.from_labels({"job": "shop/shop-api", "service_name": SHOP}))
    assert '{service_name="shop-api"}' in namespaced["span_p95"]
    assert 'log_records_total{job="shop/shop-api", ' in namespaced["log_rate"]


def test_a_job_labelled_alert_gets_the_same_analysis() -> None:
    by_job = analyse(shop_slow_payments(), labels={"job": SHOP})
    assert (by_job.top_suspect.kind, by_job.top_suspect.subject) == ("downstream_latency", PAYMENTS)


def test_the_webhook_analyses_and_annotates_an_alert_on_shop_api(make_client, grafana) -> None:
    client = make_client(prometheus=FakePrometheus(shop_checkout_errors(), SHOP_TARGET))
    body = payload(alert("ServiceErrorRatioHigh", fingerprint="5e0a", service=SHOP_LABELS))
    result = client.post("/alerts", json=body).json()["results"][0]
    assert (result["top_suspect"]["kind"], result["top_suspect"]["subject"]) == ("errors", CHECKOUT)
    text = json.loads(grafana.requests[0].content)["text"]
    assert text.startswith("ServiceErrorRatioHigh (shop-api POST /checkout): top suspect errors POST /checkout")
    assert client.get("/incidents/5e0a").json()["links"]["logql"].startswith('{service_name="shop-api"}')


def test_the_asgi_send_span_of_a_failing_operation_is_not_its_cause() -> None:
    """Zero-code FastAPI: the INTERNAL "POST /checkout http send" span takes the 500 of its request.
    It is the operation itself, so the operation stays the top suspect and is no symptom of it."""
    w = shop_checkout_errors()
    send = {"span_name": f"{CHECKOUT} http send", "span_kind": "SPAN_KIND_INTERNAL"}
    w.steady("span_p95", send, 0.0001, 0.00001)
    w.steady("span_error_ratio", send, 0.01, 0.002)
    w.shift("span_error_ratio", send, 0.25, 0.01)
    incident = analyse(w)
    assert (incident.top_suspect.kind, incident.top_suspect.subject) == ("errors", CHECKOUT)
    assert "symptom" not in incident.top_suspect.evidence
    assert f"{CHECKOUT} http send" not in {f.subject for f in incident.findings}

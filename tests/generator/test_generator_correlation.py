"""One request, three signals, one trace id: the correlation contract of DESIGN.md."""

from __future__ import annotations

from opentelemetry.trace import SpanKind

from mlobs.contract import CORRELATION_KEYS, FEATURE_LOOKUP_SPAN, STAGES

IDS = {*CORRELATION_KEYS, "trace_id", "span_id", "trace.id", "span.id"}


def test_one_request_yields_every_stage_logs_and_exemplars_on_one_trace(client, captured, online_row):
    response = client.post("/predict", json=online_row(0), headers={"X-Request-ID": "corr-42"})
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "corr-42"
    assert response.json()["request_id"] == "corr-42"

    server = captured.span("POST /predict")
    trace_id = server.context.trace_id
    assert server.kind is SpanKind.SERVER
    assert server.attributes["request.id"] == "corr-42"
    assert server.attributes["ml.model.name"] == "breast-cancer-classifier"
    assert server.attributes["ml.model.version"] == "1"

    # every stage, as a child of the server span, on the same trace
    for name in STAGES:
        stage = captured.span(name)
        assert stage.context.trace_id == trace_id, name
        assert stage.parent.span_id == server.context.span_id, name
        assert stage.kind is SpanKind.INTERNAL
    lookup = captured.span(FEATURE_LOOKUP_SPAN)
    assert lookup.kind is SpanKind.CLIENT
    assert lookup.attributes["peer.service"] == "mlobs-feature-store"
    assert lookup.parent.span_id == captured.span("feature_extraction").context.span_id

    # logs written during the request carry the trace, a span of it and the request id
    records = [r.log_record for r in captured.logs.get_finished_logs() if r.log_record.trace_id == trace_id]
    assert records, "no log record on the request's trace"
    span_ids = {s.context.span_id for s in captured.spans.get_finished_spans()}
    for record in records:
        assert record.span_id in span_ids
        assert record.attributes["request.id"] == "corr-42"

    # the latency histograms carry exemplars pointing at this trace, with the request id
    collected = captured.collect()
    for metric in ("ml.request.duration", "ml.stage.duration"):
        exemplars = [e for p in collected[metric] for e in p.exemplars]
        ours = [e for e in exemplars if e.trace_id == trace_id]
        assert ours, f"{metric} has no exemplar on the request's trace"
        assert all(e.filtered_attributes.get("request.id") == "corr-42" for e in ours)
        assert {e.span_id for e in ours} <= span_ids
    stage_exemplar_spans = {
        e.span_id for p in collected["ml.stage.duration"] for e in p.exemplars if e.trace_id == trace_id
    }
    assert captured.span("inference").context.span_id in stage_exemplar_spans


def test_no_id_ever_becomes_a_metric_label(client, captured, online_row):
    client.post("/predict", json=online_row(1), headers={"X-Request-ID": "no-label-1"})
    client.post("/predict", json={"batch_id": "batch-no-label", "instances": [online_row(2), online_row(3)]})
    client.post("/feedback", json={"request_id": "no-label-1", "label": "malignant"})
    for name, points in captured.collect().items():
        for point in points:
            assert not IDS & set(point.attributes), f"{name} has an id label: {dict(point.attributes)}"
            assert "no-label-1" not in point.attributes.values(), name


def test_every_ml_metric_names_the_model(client, captured, online_row):
    client.post("/predict", json=online_row(1))
    ml_metrics = {n: p for n, p in captured.collect().items() if n.startswith("ml.")}
    assert {"ml.request.duration", "ml.stage.duration", "ml.predictions", "ml.model.info"} <= set(ml_metrics)
    for name, points in ml_metrics.items():
        for point in points:
            assert point.attributes["ml.model.name"] == "breast-cancer-classifier", name
            assert point.attributes["ml.model.version"] == "1", name


def test_a_batch_has_one_server_span_carrying_the_batch_id_in_spans_logs_and_exemplars(client, captured, online_row):
    body = {"batch_id": "batch-0007", "instances": [online_row(i) for i in range(5)]}
    response = client.post("/predict", json=body)
    assert response.status_code == 200
    assert [p["index"] for p in response.json()["predictions"]] == [0, 1, 2, 3, 4]

    roots = [s for s in captured.spans.get_finished_spans() if s.parent is None]
    assert [s.name for s in roots] == ["POST /predict"]
    root = roots[0]
    assert root.attributes["ml.batch.id"] == "batch-0007"
    assert root.attributes["ml.batch.size"] == 5
    assert len([s for s in captured.spans.get_finished_spans() if s.name == FEATURE_LOOKUP_SPAN]) == 1

    info = [r.log_record for r in captured.logs.get_finished_logs() if r.log_record.trace_id == root.context.trace_id]
    assert info and all(r.attributes.get("ml.batch.id") == "batch-0007" for r in info if r.severity_text == "INFO")

    exemplars = [
        e for p in captured.collect()["ml.request.duration"] for e in p.exemplars if e.trace_id == root.context.trace_id
    ]
    assert exemplars and exemplars[0].filtered_attributes["ml.batch.id"] == "batch-0007"


def test_request_id_is_generated_when_absent_or_unsafe(client, captured, full_row):
    generated = client.post("/predict", json=full_row(0)).headers["x-request-id"]
    assert len(generated) == 36
    unsafe = client.post("/predict", json=full_row(0), headers={"X-Request-ID": "a b\nc"}).headers["x-request-id"]
    assert unsafe != "a b\nc" and len(unsafe) == 36


def test_resource_carries_the_service_identity(client, captured, online_row):
    client.post("/predict", json=online_row(0))
    resource = captured.span("POST /predict").resource.attributes
    assert resource["service.name"] == "mlobs-inference"
    assert resource["deployment.environment.name"] == "local"
    assert resource["service.version"]
    assert resource["service.instance.id"]

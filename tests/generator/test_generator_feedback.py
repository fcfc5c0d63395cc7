"""Feedback labels turn into rolling accuracy, precision, recall and F1, label counts and delays."""

from __future__ import annotations

from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

from generator.model import CLASS_NAMES, load_dataset


def _gauge(collected: dict, name: str) -> float:
    (point,) = collected[name]
    assert point.attributes["ml.model.version"] == "1"
    return point.value


def test_feedback_labels_become_rolling_quality_metrics(client, captured, full_row):
    target = load_dataset().target
    # Rows with both classes; a few are borderline so the metrics are not all 1.0.
    rows = list(range(0, 40))
    truths, predicted = [], []
    for row in rows:
        response = client.post("/predict", json=full_row(row), headers={"X-Request-ID": f"fb-{row}"})
        predicted.append(response.json()["predictions"][0]["class"])
    for row in rows:
        truth = CLASS_NAMES[target[row]]
        truths.append(truth)
        answer = client.post("/feedback", json={"request_id": f"fb-{row}", "label": truth})
        assert answer.status_code == 200
        assert answer.json()["correct"] == (truth == answer.json()["predicted"])

    collected = captured.collect()
    assert _gauge(collected, "ml.model.accuracy") == accuracy_score(truths, predicted)
    assert _gauge(collected, "ml.model.precision") == precision_score(truths, predicted, pos_label="malignant")
    assert _gauge(collected, "ml.model.recall") == recall_score(truths, predicted, pos_label="malignant")
    assert abs(_gauge(collected, "ml.model.f1") - f1_score(truths, predicted, pos_label="malignant")) < 1e-12
    (labels,) = collected["ml.feedback.labels"]
    assert labels.value == len(rows)
    (delay,) = collected["ml.feedback.delay"]
    assert delay.count == len(rows)
    assert 0 <= delay.sum < 60


def test_quality_gauges_stay_silent_until_enough_labels(client, captured, full_row):
    client.post("/predict", json=full_row(0), headers={"X-Request-ID": "few-1"})
    client.post("/feedback", json={"request_id": "few-1", "label": "malignant"})
    assert "ml.model.accuracy" not in captured.collect()


def test_feedback_span_and_logs_carry_the_labelled_request_id(client, captured, full_row):
    client.post("/predict", json=full_row(3), headers={"X-Request-ID": "labelled-3"})
    captured.spans.clear()
    captured.logs.clear()
    client.post(
        "/feedback", json={"request_id": "labelled-3", "label": "malignant"}, headers={"X-Request-ID": "fb-call"}
    )
    span = captured.span("POST /feedback")
    assert span.attributes["request.id"] == "labelled-3"
    records = [
        r.log_record for r in captured.logs.get_finished_logs() if r.log_record.trace_id == span.context.trace_id
    ]
    assert records and all(r.attributes["request.id"] == "labelled-3" for r in records)


def test_feedback_for_a_batch_row_uses_its_index(client, online_row):
    client.post("/predict", json={"instances": [online_row(0), online_row(1)]}, headers={"X-Request-ID": "bt-1"})
    answer = client.post("/feedback", json={"request_id": "bt-1", "index": 1, "label": "benign"})
    assert answer.status_code == 200 and answer.json()["index"] == 1


def test_unknown_or_repeated_feedback_is_404(client, full_row):
    assert client.post("/feedback", json={"request_id": "never-seen", "label": "benign"}).status_code == 404
    client.post("/predict", json=full_row(0), headers={"X-Request-ID": "once"})
    assert client.post("/feedback", json={"request_id": "once", "label": "benign"}).status_code == 200
    assert client.post("/feedback", json={"request_id": "once", "label": "benign"}).status_code == 404

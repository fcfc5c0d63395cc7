"""Input validation: every bad input is a 422 naming the field, an error span and a warning log."""

from __future__ import annotations

import json

import pytest
from opentelemetry.trace import StatusCode

from generator.service import InvalidInput, parse_predict_request


def _fields(raw: bytes) -> list[str]:
    with pytest.raises(InvalidInput) as caught:
        parse_predict_request(raw)
    return caught.value.fields


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"features": {"mean_radius": -1.0}}, "features.mean_radius"),
        ({"features": {"mean_radius": "large"}}, "features.mean_radius"),
        ({"features": {"not_a_feature": 1.0}}, "features.not_a_feature"),
        ({"patient_id": "P 1; drop table"}, "patient_id"),
        ({"instances": []}, "instances"),
        ({"instances": [{"features": {"mean_area": -3}}]}, "instances.0.features.mean_area"),
        ({"features": {"mean_radius": 1.0}, "instances": [{"patient_id": "P00001"}]}, "instances"),
        ({"features": {"mean_radius": 1.0}, "batch_id": "b-1"}, "batch_id"),
        ({}, "features"),
        ({"unexpected": 1}, "unexpected"),
    ],
)
def test_invalid_bodies_name_the_offending_field(body, field):
    assert field in _fields(json.dumps(body).encode())


def test_nan_and_infinity_are_refused():
    assert _fields(b'{"features": {"mean_radius": NaN}}') == ["features.mean_radius"]
    assert _fields(b'{"features": {"mean_texture": 1e999}}') == ["features.mean_texture"]


def test_malformed_json_and_non_objects_are_refused():
    assert _fields(b'{"features": ') == [""]
    assert _fields(b"[1, 2, 3]") == [""]


def test_a_valid_single_row_and_a_valid_batch_parse():
    single = parse_predict_request(b'{"patient_id": "P00001", "features": {"mean_radius": 12.5}}')
    assert single.features.mean_radius == 12.5 and single.instances is None
    batch = parse_predict_request(b'{"batch_id": "b-7", "instances": [{"patient_id": "P00001"}]}')
    assert batch.batch_id == "b-7" and len(batch.instances) == 1


def test_bad_request_is_422_with_an_error_span_and_a_warning_log(client, captured):
    response = client.post("/predict", json={"features": {"mean_radius": -1.0}}, headers={"X-Request-ID": "bad-req-1"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "features", "mean_radius"]
    assert response.headers["x-request-id"] == "bad-req-1"

    validation = captured.span("validation")
    assert validation.status.status_code is StatusCode.ERROR
    assert any(event.name == "exception" for event in validation.events)
    server = captured.span("POST /predict")
    assert validation.context.trace_id == server.context.trace_id
    assert server.attributes["http.status_code"] == 422

    warnings = [r.log_record for r in captured.logs.get_finished_logs() if r.log_record.severity_text == "WARN"]
    assert warnings, "no warning log for the invalid input"
    record = warnings[-1]
    assert record.trace_id == validation.context.trace_id
    assert record.span_id == validation.context.span_id
    assert record.attributes["request.id"] == "bad-req-1"
    assert "features.mean_radius" in record.attributes["error.fields"]

    outcomes = {p.attributes["outcome"] for p in captured.collect()["ml.request.duration"]}
    assert outcomes == {"invalid"}


def test_missing_features_without_a_patient_are_422_from_feature_extraction(client, captured):
    response = client.post("/predict", json={"features": {"mean_radius": 12.0}})
    assert response.status_code == 422
    locs = [tuple(d["loc"]) for d in response.json()["detail"]]
    assert ("body", "features", "worst_area") in locs
    assert captured.span("feature_extraction").status.status_code is StatusCode.ERROR


def test_an_unknown_patient_leaves_the_stored_features_missing(client, online_row):
    body = online_row(5) | {"patient_id": "P99999"}
    response = client.post("/predict", json=body)
    assert response.status_code == 422
    assert "feature store for patient P99999" in response.json()["detail"][0]["msg"]


@pytest.mark.parametrize(
    "raw",
    [b"", b"null", b'"text"', b'{"instances": "many"}', b'{"features": {"mean_radius": [1, 2]}}', b"\xff\xfe"],
)
def test_garbage_never_becomes_a_500(client, raw):
    response = client.post("/predict", content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 422


def test_feedback_with_a_bad_label_is_422_with_an_error_span(client, captured):
    response = client.post("/feedback", json={"request_id": "r-1", "label": "maybe"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "label"]
    validation = captured.span("validation")
    assert validation.status.status_code is StatusCode.ERROR
    assert validation.parent.span_id == captured.span("POST /feedback").context.span_id


def test_a_patient_alone_is_enough_and_request_values_win_over_stored_ones(client, captured):
    assert client.post("/predict", json={"patient_id": "P00042"}).status_code == 200
    response = client.post("/predict", json={"patient_id": "P00042", "features": {"mean_radius": 99.5}})
    assert response.status_code == 200
    radius = next(p for p in captured.collect()["ml.feature.value"] if p.attributes["ml.feature"] == "mean_radius")
    assert radius.max == 99.5 and radius.count == 2

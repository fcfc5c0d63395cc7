"""Sampling that keeps the links, in the sample service: below 100 % an exemplar names only a trace
the tail sampler keeps (mlobs/sampling.py); a request that asks to be kept is kept whole, with its
detail spans."""

from __future__ import annotations

import random

import pytest
from opentelemetry import trace

from generator.service import ATTR_ROW_INDEX, DETAIL_SPANS, ROW_FEATURES_SPAN, ROW_PREDICTION_SPAN
from mlobs import sampling
from mlobs.contract import FEATURE_LOOKUP_SPAN, REQUEST_DURATION, STAGE_DURATION, STAGES

PCT = 10
TEN = {sampling.ENV_PERCENTAGE: str(PCT), sampling.ENV_SLOW_MS: "1000", sampling.ENV_KEEP_ERRORS: "true"}
at_10_percent = pytest.mark.parametrize("sampling_env", [TEN], indirect=True)
_rng = random.Random(5)


def _trace_id(kept: bool) -> int:
    while True:
        trace_id = _rng.getrandbits(128)
        if sampling.kept_by_chance(trace.format_trace_id(trace_id), PCT) is kept:
            return trace_id


def _on(trace_id: int, **headers: str) -> dict[str, str]:
    """Headers that put the request on ``trace_id`` (a sampled remote parent)."""
    return {"traceparent": f"00-{trace.format_trace_id(trace_id)}-{_rng.getrandbits(63) + 1:016x}-01", **headers}


def _exemplars(captured) -> dict[str, list]:
    """Exemplars by metric (one collection: the reservoirs empty at each)."""
    collected = captured.collect()
    return {name: [e for p in points for e in getattr(p, "exemplars", ())] for name, points in collected.items()}


def _linked(exemplars: dict[str, list]) -> set[int]:
    return {e.trace_id for es in exemplars.values() for e in es}


def _spans_of(captured, trace_id: int) -> list:
    return [s for s in captured.spans.get_finished_spans() if s.context.trace_id == trace_id]


@at_10_percent
def test_exemplars_name_only_the_requests_the_share_keeps(client, captured, online_row) -> None:
    requests = [(_trace_id(kept), kept) for kept in [False, True] * 15]
    for trace_id, kept in requests:
        assert client.post("/predict", json=online_row(trace_id % 500), headers=_on(trace_id)).status_code == 200
        exemplars = _exemplars(captured)  # after each request: nothing of another request can hide it
        if kept:
            for metric in (REQUEST_DURATION, STAGE_DURATION):
                assert trace_id in {e.trace_id for e in exemplars[metric]}, metric
            stages = {e.span_id for e in exemplars[STAGE_DURATION] if e.trace_id == trace_id}
            assert stages == {captured.span(name).context.span_id for name in STAGES}
        assert _linked(exemplars) == ({trace_id} if kept else set()), (kept, exemplars)


@pytest.mark.parametrize("sampling_env", [{}, {sampling.ENV_PERCENTAGE: "100", sampling.ENV_SLOW_MS: "1000"}],
                         indirect=True)
def test_at_100_percent_every_request_links_as_before(client, captured, online_row) -> None:
    trace_id = _trace_id(kept=False)
    assert client.post("/predict", json=online_row(3), headers=_on(trace_id)).status_code == 200
    exemplars = _exemplars(captured)
    for metric in (REQUEST_DURATION, STAGE_DURATION):
        assert trace_id in {e.trace_id for e in exemplars[metric]}, metric
    assert captured.telemetry.keep_rule.keeps_all


@at_10_percent
def test_a_failed_request_keeps_the_exemplars_of_its_failed_spans(client, captured, online_row, admin) -> None:
    change = {"fault": "errors", "stage": "inference", "rate": 1.0}
    assert client.post("/admin/faults", json=change, headers=admin).status_code == 200
    captured.collect()
    trace_id = _trace_id(kept=False)
    assert client.post("/predict", json=online_row(4), headers=_on(trace_id)).status_code == 500
    exemplars = _exemplars(captured)
    [request] = [e for e in exemplars[REQUEST_DURATION] if e.trace_id == trace_id]
    assert request.span_id == captured.span("POST /predict").context.span_id
    # the stage that failed links; the stages that had succeeded showed nothing that proves a keep
    stages = {e.span_id for e in exemplars[STAGE_DURATION] if e.trace_id == trace_id}
    assert stages == {captured.span("inference").context.span_id}


@pytest.mark.parametrize("sampling_env", [{**TEN, sampling.ENV_SLOW_MS: "50"}], indirect=True)
def test_a_slow_request_keeps_the_exemplars_of_its_slow_spans(client, captured, online_row, admin) -> None:
    change = {"fault": "latency", "stage": "inference", "seconds": 0.1}
    assert client.post("/admin/faults", json=change, headers=admin).status_code == 200
    captured.collect()
    trace_id = _trace_id(kept=False)
    assert client.post("/predict", json=online_row(5), headers=_on(trace_id)).status_code == 200
    exemplars = _exemplars(captured)
    assert trace_id in {e.trace_id for e in exemplars[REQUEST_DURATION]}
    stages = {e.span_id for e in exemplars[STAGE_DURATION] if e.trace_id == trace_id}
    assert captured.span("inference").context.span_id in stages
    assert captured.span("validation").context.span_id not in stages  # fast: proves nothing


def _assert_kept_whole(captured, trace_id: int) -> list:
    spans = _spans_of(captured, trace_id)
    assert spans and all(s.attributes.get(sampling.KEEP_ATTRIBUTE) is True for s in spans), [
        (s.name, s.attributes.get(sampling.KEEP_ATTRIBUTE)) for s in spans
    ]
    records = [r.log_record for r in captured.logs.get_finished_logs() if r.log_record.trace_id == trace_id]
    assert records and all(r.attributes.get(sampling.KEEP_ATTRIBUTE) is True for r in records)
    exemplars = _exemplars(captured)
    for metric in (REQUEST_DURATION, STAGE_DURATION):
        assert trace_id in {e.trace_id for e in exemplars[metric]}, metric
    return spans


@at_10_percent
def test_the_debug_header_keeps_the_request_whole_with_its_detail_spans(client, captured, online_row) -> None:
    trace_id = _trace_id(kept=False)
    headers = _on(trace_id, **{sampling.DEBUG_HEADER: "1"})
    assert client.post("/predict", json=online_row(6), headers=headers).status_code == 200
    spans = _assert_kept_whole(captured, trace_id)
    names = [s.name for s in spans]
    assert {"POST /predict", *STAGES, FEATURE_LOOKUP_SPAN} <= set(names)
    assert names.count(ROW_FEATURES_SPAN) == names.count(ROW_PREDICTION_SPAN) == 1
    row = captured.span(ROW_FEATURES_SPAN)
    assert row.parent.span_id == captured.span("feature_extraction").context.span_id
    assert row.attributes[ATTR_ROW_INDEX] == 0 and row.attributes["ml.feature_store.hit"] is True
    assert row.attributes["ml.features.from_store"] > 0 and row.attributes["ml.features.missing"] == 0
    prediction = captured.span(ROW_PREDICTION_SPAN)
    assert prediction.parent.span_id == captured.span("postprocessing").context.span_id
    assert prediction.attributes["ml.prediction.class"] in ("malignant", "benign")


@at_10_percent
def test_the_debug_baggage_entry_gives_a_batch_one_detail_span_per_row(client, captured, online_row) -> None:
    trace_id = _trace_id(kept=False)
    headers = _on(trace_id, baggage=f"{sampling.DEBUG_BAGGAGE}=1")
    body = {"batch_id": "detail-batch", "instances": [online_row(7), online_row(8), {"features": {}}]}
    assert client.post("/predict", json=body, headers=headers).status_code == 422  # the third row has nothing
    spans = _spans_of(captured, trace_id)
    assert all(s.attributes.get(sampling.KEEP_ATTRIBUTE) is True for s in spans)
    rows = sorted((s for s in spans if s.name == ROW_FEATURES_SPAN), key=lambda s: s.attributes[ATTR_ROW_INDEX])
    assert [r.attributes[ATTR_ROW_INDEX] for r in rows] == [0, 1, 2]
    assert [r.attributes["ml.features.missing"] for r in rows][2] > 0
    assert "ml.feature_store.hit" not in rows[2].attributes  # no patient to look up

    trace_id = _trace_id(kept=False)
    body = {"batch_id": "detail-batch-2", "instances": [online_row(7), online_row(8), online_row(9)]}
    headers = _on(trace_id, baggage=f"{sampling.DEBUG_BAGGAGE}=1")
    assert client.post("/predict", json=body, headers=headers).status_code == 200
    spans = _assert_kept_whole(captured, trace_id)
    for name in DETAIL_SPANS:
        assert sorted(s.attributes[ATTR_ROW_INDEX] for s in spans if s.name == name) == [0, 1, 2], name


def test_without_the_marker_or_the_debug_profile_there_are_no_detail_spans(client, captured, online_row) -> None:
    body = {"instances": [online_row(10), online_row(11)]}
    assert client.post("/predict", json=body, headers={sampling.DEBUG_HEADER: "0"}).status_code == 200
    spans = captured.spans.get_finished_spans()
    assert not [s for s in spans if s.name in DETAIL_SPANS]
    assert not [s for s in spans if sampling.KEEP_ATTRIBUTE in s.attributes]
    assert not [r for r in captured.logs.get_finished_logs() if sampling.KEEP_ATTRIBUTE in r.log_record.attributes]


@pytest.mark.parametrize("sampling_env", [{sampling.ENV_TRACE_DETAIL: "true"}], indirect=True)
def test_the_debug_profile_gives_every_request_detail_spans(client, captured, online_row) -> None:
    assert client.post("/predict", json={"instances": [online_row(12), online_row(13)]}).status_code == 200
    spans = captured.spans.get_finished_spans()
    for name in DETAIL_SPANS:
        assert len([s for s in spans if s.name == name]) == 2, name
    assert not [s for s in spans if sampling.KEEP_ATTRIBUTE in s.attributes]  # kept by the profile's 100 %

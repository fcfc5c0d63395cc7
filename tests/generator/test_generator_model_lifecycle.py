"""Training telemetry, versioned files, and hot-swapping a new version without a restart."""

from __future__ import annotations

import json
import time

import numpy as np
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from generator.model import (
    MODEL_NAME,
    latest_version,
    load_version,
    mark_rolled_back,
    metadata_file,
    model_file,
    reserve_version,
    servable_versions,
)
from generator.telemetry import setup_telemetry
from generator.train import train_version
from mlobs.contract import SERVICE_TRAINING


def test_a_training_run_is_one_trace_with_a_span_per_epoch_and_metrics_and_logs(tmp_path):
    spans, reader, logs = InMemorySpanExporter(), InMemoryMetricReader(), InMemoryLogRecordExporter()
    telemetry = setup_telemetry(
        SERVICE_TRAINING,
        span_exporter=spans,
        metric_readers=[reader],
        log_exporter=logs,
        set_global=False,
        system_metrics=False,
    )
    try:
        result = train_version(tmp_path, telemetry, epochs=5, seed=3)
        data = reader.get_metrics_data()
    finally:
        telemetry.shutdown()

    finished = spans.get_finished_spans()
    (run,) = [s for s in finished if s.name == "training.run"]
    epochs = [s for s in finished if s.name == "training.epoch"]
    assert run.parent is None
    assert run.attributes["ml.training.run_id"] == result.run_id
    assert run.attributes["ml.model.version"] == str(result.version)
    assert [s.attributes["ml.training.epoch"] for s in epochs] == [1, 2, 3, 4, 5]
    assert all(s.parent.span_id == run.context.span_id for s in epochs)
    assert {s.context.trace_id for s in finished} == {run.context.trace_id}
    assert run.resource.attributes["service.name"] == "mlobs-training"

    points = {m.name: m.data.data_points for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}
    loss = {p.attributes["ml.training.epoch"]: p.value for p in points["ml.training.loss"]}
    assert sorted(loss) == ["1", "2", "3", "4", "5"]
    assert loss["5"] < loss["1"]  # it learns
    assert {p.attributes["outcome"] for p in points["ml.training.runs"]} == {"success"}
    (duration,) = points["ml.training.duration"]
    assert duration.exemplars[0].trace_id == run.context.trace_id
    assert duration.exemplars[0].filtered_attributes["ml.training.run_id"] == result.run_id
    assert "ml.training.run_id" not in duration.attributes

    records = [r.log_record for r in logs.get_finished_logs()]
    assert records and all(r.attributes["ml.training.run_id"] == result.run_id for r in records)
    assert any(r.attributes.get("event.name") == "training.finished" for r in records)


def test_versions_are_saved_with_metadata_and_the_training_reference(tmp_path, captured):
    first = train_version(tmp_path, captured.telemetry, epochs=2, seed=1)
    second = train_version(tmp_path, captured.telemetry, epochs=2, seed=2)
    assert (first.version, second.version) == (1, 2)
    assert model_file(tmp_path, 2).name == f"{MODEL_NAME}-v2.joblib"
    meta = json.loads(metadata_file(tmp_path, 2).read_text())
    assert meta["version"] == "2" and 0.8 < meta["metrics"]["accuracy"] <= 1
    reference = meta["reference"]["mean_radius"]
    assert len(reference["edges"]) == 9 and abs(sum(reference["proportions"]) - 1) < 1e-9
    probabilities = load_version(tmp_path, 2).predict_proba(np.ones((3, 30)))
    assert probabilities.shape == (3, 2) and np.allclose(probabilities.sum(axis=1), 1)


def test_a_reserved_number_without_metadata_is_not_served(tmp_path, captured):
    train_version(tmp_path, captured.telemetry, epochs=1, seed=1)
    assert reserve_version(tmp_path) == 2  # training of v2 in progress
    assert latest_version(tmp_path) == 1
    mark_rolled_back(tmp_path, 1)
    assert servable_versions(tmp_path) == []


def test_the_service_hot_swaps_a_new_version_and_records_the_deployment(make_client, captured, model_dir, full_row):
    with make_client(poll_seconds=0.1) as client:
        assert client.post("/predict", json=full_row(0)).json()["model_version"] == "1"
        train_version(model_dir, captured.telemetry, epochs=3, seed=9)
        deadline = time.monotonic() + 10
        while client.get("/readyz").json()["model_version"] != "2":
            assert time.monotonic() < deadline, "version 2 was not picked up"
            time.sleep(0.05)
        assert client.post("/predict", json=full_row(0)).json()["model_version"] == "2"

    deploy = [s for s in captured.spans.get_finished_spans() if s.name == "model.deploy"]
    assert [s.attributes["ml.model.version"] for s in deploy] == ["2"]
    assert deploy[0].attributes["ml.model.previous_version"] == "1"
    assert deploy[0].parent is None
    (log,) = [
        r.log_record
        for r in captured.logs.get_finished_logs()
        if r.log_record.attributes.get("event.name") == "model.deployed"
    ]
    assert log.attributes["ml.model.version"] == "2"
    assert log.trace_id == deploy[0].context.trace_id
    counts = {p.attributes["ml.model.version"]: p.value for p in captured.collect()["ml.model.deployments"]}
    assert counts == {"1": 1, "2": 1}
    info = captured.collect()["ml.model.info"]
    assert [p.attributes["ml.model.version"] for p in info] == ["2"]


def test_a_fresh_clone_trains_version_1_at_start(make_client, model_dir, full_row):
    for path in model_dir.iterdir():
        path.unlink()
    with make_client() as client:
        assert client.get("/readyz").json() == {
            "status": "ready",
            "model_name": MODEL_NAME,
            "model_version": "1",
        }
        assert client.post("/predict", json=full_row(0)).status_code == 200

"""The load generator against a real service process, both exporting OTLP to a local sink."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections import Counter

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from generator.bench import OtlpSink, Service, start_service, wait_ready
from generator.faults import parse_fault
from generator.workload import Workload, parse_duration


@pytest.mark.parametrize(("text", "seconds"), [("500ms", 0.5), ("30s", 30), ("5m", 300), ("1h", 3600), ("2.5", 2.5)])
def test_durations_parse(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "5 minutes", "-3s"])
def test_bad_durations_are_refused(text):
    with pytest.raises(argparse.ArgumentTypeError):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("latency:feature_extraction:0.4", {"fault": "latency", "stage": "feature_extraction", "seconds": 0.4}),
        ("latency:0.4", {"fault": "latency", "seconds": 0.4}),
        ("errors:0.1", {"fault": "errors", "rate": 0.1}),
        ("drift:mean_radius,mean_texture", {"fault": "drift", "features": ["mean_radius", "mean_texture"]}),
        ("drift:mean_area:2", {"fault": "drift", "features": ["mean_area"], "scale": 2.0}),
        ("regression", {"fault": "regression"}),
        ("slow_lookup:0.25", {"fault": "slow_lookup", "seconds": 0.25}),
    ],
)
def test_fault_flags_parse_into_admin_changes(text, expected):
    assert parse_fault(text).model_dump(exclude_none=True) == expected | {"enabled": True}


@pytest.mark.parametrize("text", ["fire", "drift:colour", "errors:2", "latency:inference:0.1:extra"])
def test_bad_fault_flags_are_refused(text):
    with pytest.raises(argparse.ArgumentTypeError):
        parse_fault(text)


def test_workload_sends_real_patients_with_labels_reproducibly():
    first = [Workload(seed=5).next() for _ in range(3)]
    again = [Workload(seed=5).next() for _ in range(3)]
    assert first == again
    batch = Workload(seed=1).batch(7)
    assert len(batch.body["instances"]) == len(batch.labels) == 7
    assert set(batch.labels) <= {"malignant", "benign"}
    sample = Workload(seed=2).single()
    assert sample.body["patient_id"].startswith("P")
    assert len(sample.body["features"]) == 20 and all(v >= 0 for v in sample.body["features"].values())


def _spans(sink: OtlpSink) -> list[tuple[str, Span]]:
    found = []
    for payload in sink.payloads.get("/v1/traces", []):
        for resource_spans in ExportTraceServiceRequest.FromString(payload).resource_spans:
            attrs = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            found += [(attrs["service.name"], s) for scope in resource_spans.scope_spans for s in scope.spans]
    return found


def test_loadgen_drives_the_service_with_feedback_and_a_fault_on_one_trace_graph(tmp_path):
    env = {
        "OTEL_METRIC_EXPORT_INTERVAL": "1000",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        "OTEL_BLRP_SCHEDULE_DELAY": "200",
        "MLOBS_MODEL_DIR": str(tmp_path / "models"),
        "MLOBS_ADMIN_TOKEN": "loadgen-test",
    }
    with OtlpSink(keep=True) as sink:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = sink.endpoint
        service: Service = start_service("service", env, tmp_path)
        try:
            wait_ready(service, timeout=60)
            result = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "generator.loadgen",
                    "--host",
                    service.url,
                    "--rate",
                    "20",
                    "--duration",
                    "3s",
                    "--feedback-share",
                    "1",
                    "--feedback-delay",
                    "0.3s",
                    "--fault",
                    "slow_lookup:0.05",
                    "--seed",
                    "3",
                ],
                env={**os.environ, **env},
                capture_output=True,
                text=True,
                timeout=90,
            )
            time.sleep(1.5)  # the last batches of spans and logs
        finally:
            service.stop()
    assert result.returncode == 0, result.stderr[-2000:]
    assert "/predict" in result.stdout and "/feedback" in result.stdout

    spans = _spans(sink)
    by_id = {s.span_id: (name, s) for name, s in spans}
    edges = Counter(
        (by_id[s.parent_span_id][0], name, s.name)
        for name, s in spans
        if s.parent_span_id in by_id and by_id[s.parent_span_id][0] != name
    )
    assert edges[("mlobs-loadgen", "mlobs-inference", "POST /predict")] > 20
    assert edges[("mlobs-loadgen", "mlobs-inference", "POST /feedback")] > 0
    lookups = [s for name, s in spans if s.name == "feature_lookup"]
    assert lookups and min(s.end_time_unix_nano - s.start_time_unix_nano for s in lookups) >= 50e6

    events = [
        a.value.string_value
        for payload in sink.payloads.get("/v1/logs", [])
        for rl in ExportLogsServiceRequest.FromString(payload).resource_logs
        for sl in rl.scope_logs
        for r in sl.log_records
        for a in r.attributes
        if a.key == "event.name"
    ]
    assert events.count("fault.changed") == 2  # on at the start, off at the end
    assert "model.deployed" in events and "training.finished" in events

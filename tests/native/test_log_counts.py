"""The log counts on the real collector and Prometheus: many concurrent export requests of one service,
whose records' times overlap (as those of a service's workers do), are counted exactly in
log_records_total, and Prometheus refuses none of the derived points.

Before the count branch compacted each batch and counted at the collector's time, the count connector
made a point per request in each batch, stamped with the records' own times: Prometheus'
delta-to-cumulative dropped those that ended before the last one (telemetrygen at 10,000 log records/s:
31% of the records missing from log_records_total) and answered 400 ("duplicate sample for timestamp")
for two that ended in one millisecond (otlp_http/prometheus send_failed)."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from test_smoke import collector_counter, eventually, prom_query

pytestmark = pytest.mark.native

WORKERS = 8
REQUESTS_PER_WORKER = 40
RECORDS_PER_REQUEST = 25
SEND_FAILED = "otelcol_exporter_send_failed_metric_points"


def request(service: str, worker: int, start_ns: int) -> bytes:
    """One export request of RECORDS_PER_REQUEST records whose times spread over the same 50 ms as every
    other worker's: the records of concurrent requests overlap in time."""
    req = ExportLogsServiceRequest()
    rl = req.resource_logs.add()
    rl.resource.attributes.append(KeyValue(key="service.name", value=AnyValue(string_value=service)))
    sl = rl.scope_logs.add()
    sl.scope.name = "mlobs-log-counts"
    for i in range(RECORDS_PER_REQUEST):
        rec = sl.log_records.add()
        rec.time_unix_nano = start_ns + (i * 2_000_000 + worker * 250_000) % 50_000_000
        rec.severity_text = "INFO"
        rec.severity_number = 9
        rec.body.string_value = f"worker {worker} record {i}"
    return req.SerializeToString()


def test_concurrent_log_requests_are_counted_exactly_and_none_is_refused(native_stack) -> None:
    service = f"mlobs-log-counts-{uuid.uuid4().hex[:8]}"
    otlp, metrics = native_stack.url("otlp_http"), native_stack.url("collector_metrics")
    failed_before = collector_counter(metrics, SEND_FAILED)

    def work(worker: int) -> int:
        sent = 0
        with httpx.Client(timeout=10) as client:
            for _ in range(REQUESTS_PER_WORKER):
                r = client.post(f"{otlp}/v1/logs", content=request(service, worker, time.time_ns()),
                                headers={"Content-Type": "application/x-protobuf"})
                r.raise_for_status()
                sent += RECORDS_PER_REQUEST
        return sent

    with ThreadPoolExecutor(WORKERS) as pool:
        sent = sum(pool.map(work, range(WORKERS)))
    assert sent == WORKERS * REQUESTS_PER_WORKER * RECORDS_PER_REQUEST

    def counted() -> float:
        result = prom_query(native_stack.url("prometheus"), f'sum(log_records_total{{job="{service}"}})')
        return float(result[0]["value"][1]) if result else 0.0

    # the last batch reaches Prometheus a batch timeout and an export later: wait for it, on slow cores too
    deadline, got = time.monotonic() + 30, 0.0
    while time.monotonic() < deadline and (got := counted()) < sent:
        time.sleep(1)
    assert got == sent, f"log_records_total counted {got:.0f} of {sent} records"
    failed = eventually(lambda: [collector_counter(metrics, SEND_FAILED)], "the collector's counters")[0]
    assert failed - failed_before == 0, f"Prometheus refused {failed - failed_before:.0f} derived metric points"

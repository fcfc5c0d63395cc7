"""Cardinality: 10,000 distinct request ids, patient ids and batch ids must not become series.

The ids belong on exemplars, spans and log lines, never on a metric label: one label value per
request is one series per request, and Prometheus' memory grows without bound. This test sends
N_IDS requests (concurrent, with httpx), each with its own X-Request-ID and its own patient_id,
every BATCH_EVERY-th as a batch of two with its own batch_id, labels some with feedback, and then
checks Prometheus' head: the series count barely moves, and no label value is one of the ids.

The bound: after a warm-up that has sent every kind of request once (so every series the fixed
label set makes exists already), a leak of any one id kind would add at least N_IDS/BATCH_EVERY
= 1,000 series (batch ids), and 10,000 for request or patient ids (more with histogram buckets).
MAX_NEW_SERIES = 300 is under a third of the smallest leak, and over the churn of a quiet stack
(the components' own runtime metrics, ALERTS, rule results) that the warm-up wait measures.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from harness import StackUnderTest, require

from generator.model import CLASS_NAMES, FEATURE_NAMES, load_dataset

pytestmark = pytest.mark.e2e

N_IDS = 10_000
BATCH_EVERY = 10
FEEDBACK_EVERY = 20
CONCURRENCY = 12
MAX_NEW_SERIES = 300
SETTLE_SECONDS = 25  # a few metric exports (5 s) and span-metric flushes, and a Prometheus head append


def _rows() -> list[dict[str, float]]:
    data = load_dataset()
    return [{n: float(v) for n, v in zip(FEATURE_NAMES, row, strict=True)} for row in data.features]


def _bodies(prefix: str, n: int) -> list[tuple[str, dict, str]]:
    """(request id, body, the true class of its first row): every id distinct; full features, so an
    unknown patient id needs no lookup hit. The feedback sends the true class: a wrong one would
    drag the served version's quality down for the suites that run after this one."""
    rows = _rows()
    truth = load_dataset().target
    out = []
    for i in range(n):
        rid = f"{prefix}-req-{i:05d}"
        if i % BATCH_EVERY == BATCH_EVERY - 1:
            body = {"batch_id": f"{prefix}-batch-{i:05d}", "instances": [
                {"patient_id": f"{prefix}-pat-{i:05d}", "features": rows[i % len(rows)]},
                {"patient_id": f"{prefix}-pat-{i:05d}b", "features": rows[(i + 1) % len(rows)]}]}
        else:
            body = {"patient_id": f"{prefix}-pat-{i:05d}", "features": rows[i % len(rows)]}
        out.append((rid, body, CLASS_NAMES[int(truth[i % len(rows)])]))
    return out


async def _send(base: str, bodies: list[tuple[str, dict, str]]) -> dict[int, int]:
    codes: dict[int, int] = {}
    queue: asyncio.Queue[tuple[int, str, dict, str]] = asyncio.Queue()
    for i, (rid, body, label) in enumerate(bodies):
        queue.put_nowait((i, rid, body, label))

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            i, rid, body, label = queue.get_nowait()
            try:
                r = await client.post("/predict", json=body, headers={"X-Request-ID": rid})
                codes[r.status_code] = codes.get(r.status_code, 0) + 1
                if r.status_code == 200 and i % FEEDBACK_EVERY == 0:
                    await client.post("/feedback", json={"request_id": rid, "index": 0, "label": label})
            except httpx.HTTPError:
                codes[-1] = codes.get(-1, 0) + 1

    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as client:
        await asyncio.gather(*(worker(client) for _ in range(CONCURRENCY)))
    return codes


def head_series(sut: StackUnderTest) -> tuple[int, int]:
    """(series in the TSDB head, series with a sample in the last 5 minutes)."""
    r = httpx.get(f"{sut.url('prometheus')}/api/v1/status/tsdb", timeout=20)
    r.raise_for_status()
    head = int(r.json()["data"]["headStats"]["numSeries"])
    live = sut.promql('count({__name__=~".+"})')
    return head, int(float(live[0]["value"][1])) if live else 0


def label_values(sut: StackUnderTest) -> dict[str, list[str]]:
    base = sut.url("prometheus")
    names = httpx.get(f"{base}/api/v1/labels", timeout=20).json()["data"]
    return {n: httpx.get(f"{base}/api/v1/label/{n}/values", timeout=20).json()["data"] for n in names}


def test_ten_thousand_ids_do_not_become_series(sut: StackUnderTest) -> None:
    require(sut, ("prometheus", sut.service_name))
    prefix = f"card{int(time.time()) % 100000}"
    base = sut.url("inference")

    # warm-up: every kind of request once, so the series of the fixed label set exist before counting
    warm = asyncio.run(_send(base, _bodies(f"{prefix}w", 200)))
    assert warm.get(200, 0) >= 190, f"warm-up requests failed: {warm}"
    time.sleep(SETTLE_SECONDS)
    quiet0 = head_series(sut)
    time.sleep(SETTLE_SECONDS)
    before = head_series(sut)
    print(f"cardinality: quiet churn over {SETTLE_SECONDS}s: head {quiet0[0]} -> {before[0]}, "
          f"live {quiet0[1]} -> {before[1]}")

    bodies = _bodies(prefix, N_IDS)
    started = time.monotonic()
    codes = asyncio.run(_send(base, bodies))
    took = time.monotonic() - started
    print(f"cardinality: {N_IDS} requests ({N_IDS // BATCH_EVERY} batches of 2, {N_IDS // FEEDBACK_EVERY} "
          f"feedback labels) in {took:.0f}s, {N_IDS / took:.0f}/s, answers {codes}")
    assert codes.get(200, 0) >= 0.99 * N_IDS, f"too many requests failed: {codes}"

    time.sleep(SETTLE_SECONDS)
    after = head_series(sut)
    print(f"cardinality: Prometheus head series before {before[0]}, after {after[0]} "
          f"(+{after[0] - before[0]}); live series (count({{__name__=~\".+\"}})) before {before[1]}, "
          f"after {after[1]} (+{after[1] - before[1]}); bound +{MAX_NEW_SERIES}")

    ids = {rid for rid, _, _ in bodies}
    for _, body, _ in bodies:
        ids.update(i["patient_id"] for i in body.get("instances", [body]))
        if "batch_id" in body:
            ids.add(body["batch_id"])
    leaked = {name: sorted(set(values) & ids)[:5] for name, values in label_values(sut).items() if set(values) & ids}
    partial = {name: [v for v in values if prefix in v][:5] for name, values in label_values(sut).items()
               if any(prefix in v for v in values)}
    assert not leaked, f"ids became label values: {leaked}"
    assert not partial, f"label values carry the ids: {partial}"
    assert after[0] - before[0] < MAX_NEW_SERIES, f"head series grew by {after[0] - before[0]}"
    assert after[1] - before[1] < MAX_NEW_SERIES, f"live series grew by {after[1] - before[1]}"

"""The examples on the real stack.

examples/fastapi-model is attached by `opentelemetry-instrument` and the OTEL_* variables alone: its
traces reach the trace store and its logs the log store under the same trace id; a fault of one of
its operations fires the span-metric alert of that operation (prometheus/rules/services.yml), the
analyzer names that operation, and the alert resolves once the fault stops; the queries of the
Service overview dashboard return its data. examples/batch-scoring carries each batch's id on the
spans, log lines and exemplars of that batch, and its exemplars point at stored traces of that batch.

Runs on the fast profile of tests/stack.test.yaml (1m rate window, `for: 15s`, analyzer windows of
90s and 10m). The examples are not in tests/stack.test.yaml `services:`, so no ServiceDown watches
them while the rest of the suite runs.
"""

from __future__ import annotations

import json
import math
import random
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness import ServiceProcess, StackUnderTest, exemplars, free_port, require, require_fast_profile

from mlobs import render, sampling, stores
from mlobs.contract import ATTR_BATCH_ID, prometheus_label

pytestmark = pytest.mark.e2e

EXAMPLES = render.ROOT / "examples"
FASTAPI_MODEL = "fastapi-model"
SCORE = "POST /score"  # the server span the FastAPI instrumentation names after the route
HEALTH = "GET /healthz"
BATCH_SCORING = "batch-scoring"
BATCH_SIZE = 25
BATCH_SPANS = {"prepare features", "predict", "write predictions"}  # the children of `score batch`
BATCH_DURATION_BUCKETS = 'ml_batch_duration_seconds_bucket{job="batch-scoring"}'
# Clean traffic before a fault: the analyzer scores against a baseline of at least 5 points at
# its 15 s step before its 90 s recent window, and the alert needs its 1m rate window.
WARM_UP_SECONDS = 180


def wait_for(predicate: Callable[[], Any], what: str, timeout: float, interval: float = 3) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = predicate()
        except httpx.HTTPError as err:
            last = err
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f}s (last: {last!r})")
        time.sleep(interval)


def kept_trace_id(rule: sampling.Rule) -> str:
    """A trace id the tail sampler keeps by chance (any id at 100%), so its trace is stored."""
    while True:
        trace_id = secrets.token_hex(16)
        if rule.kept(trace_id):
            return trace_id


# ---- fastapi-model ----------------------------------------------------------------------------


def iris_rows(rnd: random.Random, n: int) -> list[list[float]]:
    """Plausible flowers: sepal length, sepal width, petal length, petal width (cm)."""
    ranges = ((4.3, 7.9), (2.0, 4.4), (1.0, 6.9), (0.1, 2.5))
    return [[round(rnd.uniform(lo, hi), 1) for lo, hi in ranges] for _ in range(n)]


class FastapiModel:
    """The example service, started with opentelemetry-instrument, and steady traffic on it."""

    def __init__(self, base: str, token: str, env: dict[str, str], process: ServiceProcess) -> None:
        self.base, self.token, self.env, self.process = base, token, env, process
        self.sent: dict[str, int] = {}
        self.started = time.monotonic()
        self._rnd = random.Random(11)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._traffic, name="fastapi-model traffic", daemon=True)

    def score(self, rows: list[list[float]], trace_id: str | None = None) -> tuple[httpx.Response, str, str]:
        """One call with a traceparent of ours: (response, trace id, the caller's span id)."""
        trace_id = trace_id or secrets.token_hex(16)
        parent = secrets.token_hex(8)
        r = httpx.post(f"{self.base}/score", json={"rows": rows}, timeout=30,
                       headers={"traceparent": f"00-{trace_id}-{parent}-01"})
        return r, trace_id, parent

    def _traffic(self) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            try:
                if n % 5 == 0:
                    r = httpx.get(f"{self.base}/healthz", timeout=30)
                else:
                    r, _, _ = self.score(iris_rows(self._rnd, self._rnd.randint(1, 3)))
                key = f"{'health' if n % 5 == 0 else 'score'} {r.status_code}"
            except httpx.HTTPError as err:
                key = type(err).__name__
            self.sent[key] = self.sent.get(key, 0) + 1
            self._stop.wait(0.03)

    def start_traffic(self) -> None:
        self.started = time.monotonic()
        self._thread.start()

    def stop_traffic(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    @contextmanager
    def fault(self, **change: float) -> Iterator[None]:
        headers = {"X-Admin-Token": self.token}
        httpx.post(f"{self.base}/admin/fault", json=change, headers=headers, timeout=10).raise_for_status()
        try:
            yield
        finally:
            httpx.delete(f"{self.base}/admin/fault", headers=headers, timeout=10).raise_for_status()


@pytest.fixture(scope="module")
def fastapi_model(sut: StackUnderTest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FastapiModel]:
    """examples/fastapi-model on a free port, attached by OTEL_* alone, under steady traffic
    from the start (the tests that need no baseline run during the warm-up)."""
    require(sut, ("otel-collector", "prometheus"))
    tool = Path(sys.executable).parent / "opentelemetry-instrument"
    if not tool.exists():
        reason = f"{tool} is not installed (opentelemetry-distro, pinned in pyproject.toml)"
        print(f"SKIP reason: {reason}")
        pytest.skip(reason)
    port, token = free_port(), secrets.token_hex(16)
    env = {
        **sut.otel_env(FASTAPI_MODEL),
        "OTEL_PYTHON_LOG_CORRELATION": "true",
        "EXAMPLE_HOST": "127.0.0.1",
        "EXAMPLE_PORT": str(port),
        "EXAMPLE_ADMIN_TOKEN": token,
        "EXAMPLE_FAIL_RATE": "0",
        "EXAMPLE_DELAY_SECONDS": "0",
    }
    log_path = tmp_path_factory.mktemp("fastapi-model") / "service.log"
    base = f"http://127.0.0.1:{port}"
    command = [str(tool), sys.executable, str(EXAMPLES / "fastapi-model" / "app.py")]
    with ServiceProcess(FASTAPI_MODEL, command, env, f"{base}/healthz", log_path) as process:
        service = FastapiModel(base, token, env, process)
        service.start_traffic()
        try:
            yield service
        finally:
            service.stop_traffic()
            print(f"fastapi-model: requests by outcome {service.sent}; its log: {log_path}")


def test_fastapi_model_traces_and_logs_share_its_trace_id(sut: StackUnderTest, fastapi_model: FastapiModel) -> None:
    """Zero-code telemetry reaches both stores: the server span of each call (a child of the
    caller's span: W3C propagation), and its log line with that trace id and a span id of it."""
    require(sut, ("traces", "logs"))
    rule = sampling.Rule.from_env(fastapi_model.env)
    calls = []
    for n in range(3):
        r, trace_id, parent = fastapi_model.score(iris_rows(random.Random(n), 2), kept_trace_id(rule))
        assert r.status_code == 200, r.text
        assert len(r.json()["predictions"]) == 2
        calls.append((trace_id, parent))
    for trace_id, parent in calls:
        spans: list[stores.Span] = wait_for(lambda t=trace_id: sut.trace(t), f"trace {trace_id} stored", 90)
        server = [s for s in spans if s.name == SCORE and s.kind == "SERVER"]
        assert server, f"no SERVER span {SCORE} in {[(s.name, s.kind) for s in spans]}"
        assert {s.service for s in spans} == {FASTAPI_MODEL}, spans
        assert server[0].parent_span_id == parent, "the server span is not a child of the caller's span"
        assert not server[0].error
        store = sut.logs
        assert store is not None
        lines = wait_for(lambda t=trace_id, logs=store: logs.lines(FASTAPI_MODEL, trace_id=t),
                         f"log lines of trace {trace_id} in {store.name}", 90)
        span_ids = {s.span_id for s in spans}
        for line in lines:
            assert line.trace_id == trace_id, line
            assert line.span_id in span_ids, f"log line's span {line.span_id} is not in its trace: {line}"
        assert any("scored 2 rows" in line.body for line in lines), [line.body for line in lines]


# ---- batch-scoring (runs during the fastapi-model warm-up) -----------------------------------------


@dataclass(frozen=True)
class BatchRun:
    run_id: str
    batches: list[dict[str, Any]]  # the job's stdout: batch_id, trace_id, rows, outcome

    @property
    def by_trace(self) -> dict[str, str]:
        return {b["trace_id"]: b["batch_id"] for b in self.batches}


@pytest.fixture(scope="module")
def batch_run(sut: StackUnderTest) -> BatchRun:
    """examples/batch-scoring run once, in batches of BATCH_SIZE rows, with its OTEL_* pointed at the stack."""
    require(sut, ("otel-collector",))
    run_id = f"e2e-{secrets.token_hex(4)}"
    job = subprocess.run(
        [sys.executable, str(EXAMPLES / "batch-scoring" / "score.py"), "--batch-size", str(BATCH_SIZE),
         "--run-id", run_id],
        env=sut.otel_env(BATCH_SCORING), cwd=render.ROOT, capture_output=True, text=True, timeout=300,
    )
    assert job.returncode == 0, f"batch-scoring exited with {job.returncode}:\n{job.stderr[-4000:]}"
    batches = [json.loads(line) for line in job.stdout.splitlines() if line.startswith("{")]
    total = sum(b["rows"] for b in batches)
    assert total > BATCH_SIZE and len(batches) == math.ceil(total / BATCH_SIZE), batches
    assert [b["batch_id"] for b in batches] == [f"{run_id}-{i:04d}" for i in range(len(batches))]
    assert all(b["outcome"] == "ok" and 0 < b["rows"] <= BATCH_SIZE for b in batches), batches
    assert len({b["trace_id"] for b in batches}) == len(batches), "batches share a trace"
    print(f"batch-scoring run {run_id}: {len(batches)} batches, {total} rows")
    return BatchRun(run_id, batches)


def batch_id_in(fields: dict[str, Any]) -> str | None:
    """The batch id among a record's fields, under its attribute key or Prometheus's label form:
    VictoriaLogs fields and Prometheus exemplar labels keep `ml.batch.id`, Loki's structured
    metadata say `ml_batch_id`."""
    return fields.get(ATTR_BATCH_ID) or fields.get(prometheus_label(ATTR_BATCH_ID))


def batch_id_of(line: stores.LogLine) -> str | None:
    return batch_id_in(line.attributes)


def test_batch_id_on_its_spans(sut: StackUnderTest, batch_run: BatchRun) -> None:
    """Each batch is one trace: a root `score batch` with its children, every span with its batch id."""
    require(sut, ("traces",))
    for batch in batch_run.batches:
        spans: list[stores.Span] = wait_for(lambda b=batch: sut.trace(b["trace_id"]),
                                            f"trace of batch {batch['batch_id']} stored", 90)
        roots = [s for s in spans if not s.parent_span_id]
        assert [r.name for r in roots] == ["score batch"], [(s.name, s.parent_span_id) for s in spans]
        children = {s.name for s in spans if s.parent_span_id == roots[0].span_id}
        assert children == BATCH_SPANS, children
        assert {s.service for s in spans} == {BATCH_SCORING}
        wrong = [(s.name, s.attributes.get(ATTR_BATCH_ID)) for s in spans
                 if s.attributes.get(ATTR_BATCH_ID) != batch["batch_id"]]
        assert not wrong, f"spans without batch id {batch['batch_id']}: {wrong}"


def test_batch_id_on_its_log_lines(sut: StackUnderTest, batch_run: BatchRun) -> None:
    """The log lines of each batch's trace carry that batch's id (and a span id of that trace)."""
    require(sut, ("logs",))
    store = sut.logs
    assert store is not None
    for batch in batch_run.batches:
        lines = wait_for(lambda b=batch: store.lines(BATCH_SCORING, trace_id=b["trace_id"]),
                         f"log lines of batch {batch['batch_id']} in {store.name}", 90)
        assert all(batch_id_of(line) == batch["batch_id"] for line in lines), [
            (line.body, batch_id_of(line)) for line in lines]
        assert any(f"batch {batch['batch_id']} scored" in line.body for line in lines), [line.body for line in lines]
        if sut.traces is not None:
            span_ids = {s.span_id for s in sut.trace(batch["trace_id"]) or []}
            assert all(line.span_id in span_ids for line in lines), (span_ids, lines)


def test_batch_exemplars_point_at_stored_traces_of_their_batch(sut: StackUnderTest, batch_run: BatchRun) -> None:
    """The batch-duration histogram's exemplars of this run: labelled with a batch id, the trace id
    of that batch, and that trace is stored with the same batch id on its root span."""
    require(sut, ("prometheus",))

    def ours() -> list[dict[str, Any]]:
        return [e for e in exemplars(sut, BATCH_DURATION_BUCKETS)
                if (batch_id_in(e["labels"]) or "").startswith(f"{batch_run.run_id}-")]

    try:
        found = wait_for(ours, f"exemplars of run {batch_run.run_id} on {BATCH_DURATION_BUCKETS}", 90)
    except AssertionError as err:
        seen = [e["labels"] for e in exemplars(sut, BATCH_DURATION_BUCKETS)][-5:]
        names = sorted({r["metric"].get("__name__", "") for r in sut.promql(f'{{job="{BATCH_SCORING}"}}')})
        raise AssertionError(f"{err}\nexemplars of the selector (last 5): {seen}\nseries of job "
                             f"{BATCH_SCORING}: {names}") from None
    batch_of_trace = batch_run.by_trace
    assert set(sut.exemplar_trace_ids(BATCH_DURATION_BUCKETS)) >= {e["labels"]["trace_id"] for e in found}
    for e in found:
        trace_id, batch_id = e["labels"].get("trace_id", ""), batch_id_in(e["labels"])
        assert batch_of_trace.get(trace_id) == batch_id, f"exemplar {e['labels']}: not the trace of its batch"
        assert e["series"].get("ml_model_name") and not batch_id_in(e["series"]), f"id in the series: {e['series']}"
    if sut.traces is None:
        print(f"SKIP reason (stored-trace half): no traces store runs; {len(found)} exemplars checked in Prometheus")
        return
    for e in found:
        trace_id = e["labels"]["trace_id"]
        spans = wait_for(lambda t=trace_id: sut.trace(t), f"exemplar trace {trace_id} stored", 60)
        root = next(s for s in spans if not s.parent_span_id)
        assert root.attributes.get(ATTR_BATCH_ID) == batch_id_in(e["labels"]), (root, e["labels"])
    print(f"batch exemplars: {len(found)} of run {batch_run.run_id}, each the stored trace of its batch")


# ---- fastapi-model: a fault of one operation, its alert, the analyzer, the resolution ----------------


#: The INTERNAL span the zero-code ASGI instrumentation makes for sending a response's start takes
#: the response's status, so it fails with every 500 of the operation. The analyzer folds it into
#: its operation (mlobs.contract.ASGI_MESSAGE_SPAN_SUFFIXES): it must never be the suspect.
ASGI_SEND = f"{SCORE} http send"


@dataclass(frozen=True)
class FaultCase:
    name: str
    change: dict[str, float]
    alert: str
    suspect: str  # the analyzer's top finding kind
    subjects: tuple[str, ...] = (SCORE,)  # what its subject may be: the operation


CASES = [
    FaultCase("errors", {"fail_rate": 0.5}, "ServiceErrorRatioHigh", "errors"),
    FaultCase("latency", {"delay_seconds": 0.8}, "ServiceLatencyHigh", "operation_latency"),
]


def ours(alert: dict[str, Any], case: FaultCase) -> bool:
    labels = alert["labels"]
    return labels.get("alertname") == case.alert and labels.get("service_name") == FASTAPI_MODEL


def incident_of(sut: StackUnderTest, case: FaultCase, status: str) -> dict[str, Any] | None:
    r = httpx.get(f"{sut.url('analyzer')}/incidents", timeout=10)
    r.raise_for_status()
    for incident in r.json():
        labels = incident.get("labels", {})
        if (incident.get("alertname") == case.alert and incident.get("status") == status
                and labels.get("service_name") == FASTAPI_MODEL and labels.get("span_name") == SCORE):
            return incident
    return None


@pytest.fixture(scope="module")
def warmed(sut: StackUnderTest, fastapi_model: FastapiModel) -> FastapiModel:
    require(sut, ("prometheus", "alertmanager"))
    require_fast_profile(sut)
    left = WARM_UP_SECONDS - (time.monotonic() - fastapi_model.started)
    if left > 0:
        time.sleep(left)
    return fastapi_model


@pytest.mark.timeout(900)
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_fault_of_one_operation_fires_its_alert(sut: StackUnderTest, warmed: FastapiModel, case: FaultCase) -> None:
    started = time.monotonic()
    try:
        with warmed.fault(**case.change):
            alert = wait_for(lambda: next((a for a in sut.alerts() if a["state"] == "firing" and ours(a, case)
                                           and a["labels"].get("span_name") == SCORE), None),
                             f"{case.alert} {{service_name={FASTAPI_MODEL}, span_name={SCORE}}} firing", 240)
            print(f"{case.name}: {case.alert} fired {time.monotonic() - started:.0f}s after the fault: "
                  f"{alert['labels']}")
            assert alert["labels"].get("span_kind") == "SPAN_KIND_SERVER", alert["labels"]
            others = [a["labels"] for a in sut.alerts() if ours(a, case) and a["labels"].get("span_name") != SCORE]
            assert not others, f"the fault of {SCORE} also fired {case.alert} for {others}"
            if sut.has("analyzer"):
                incident = wait_for(lambda: incident_of(sut, case, "firing"),
                                    f"the analyzer's incident for {case.alert}", 120)
                top = incident["top_suspect"]
                print(f"{case.name}: analyzer top suspect {top['kind']} {top['subject']} ({top['score']}): "
                      f"{top['summary']}; then {[(f['kind'], f['subject'], f['score']) for f in incident['findings']]}")
                assert top["kind"] == case.suspect and top["subject"] in case.subjects, incident["findings"]
                assert ASGI_SEND not in {f["subject"] for f in incident["findings"]}, incident["findings"]
            else:
                print(f"SKIP reason (analyzer half): {sut.why_missing('analyzer')}")
    finally:
        stopped = time.monotonic()
        # Also after a failure: the next case starts with no alert of this one left.
        wait_for(lambda: not any(ours(a, case) for a in sut.alerts()), f"{case.alert} of {FASTAPI_MODEL} resolved",
                 300)
        print(f"{case.name}: {case.alert} resolved {time.monotonic() - stopped:.0f}s after the fault stopped")
    if sut.has("analyzer"):
        wait_for(lambda: incident_of(sut, case, "resolved"), f"the analyzer's incident for {case.alert} resolved", 120)


# ---- the Service overview dashboard (after the faults: its error and latency panels have data) ------


def test_service_overview_queries_return_fastapi_model_data(sut: StackUnderTest, fastapi_model: FastapiModel) -> None:
    """Every PromQL query of the Service overview dashboard, with service=fastapi-model and
    operation=POST /score, returns data from the real Prometheus."""
    require(sut, ("prometheus",))
    try:
        from mlobs.dashboards import service as overview
    except ModuleNotFoundError as err:
        if err.name != "mlobs.dashboards.service":
            raise
        reason = "mlobs/dashboards/service.py (the Service overview dashboard) does not exist yet"
        print(f"SKIP reason: {reason}")
        pytest.skip(reason)
    from mlobs.dashboards import ANNOTATION_NO_DATA, iter_queries, substitute_variables, variable_defaults

    dashboard = overview.build(sut.stack)
    values = {**variable_defaults(dashboard), "service": FASTAPI_MODEL, "operation": SCORE, "__rate_interval": "2m"}
    # Panels allowed to stay empty (the ML annotations need a sample-service fault or deployment).
    no_data: dict[str, str] = {**ANNOTATION_NO_DATA, **getattr(overview, "NO_DATA", {})}
    queries = [(q.panel, substitute_variables(q.expr, values))
               for q in iter_queries(dashboard) if q.language == "promql"]
    assert queries, "the Service overview dashboard has no PromQL query"
    skipped = [(panel, no_data[panel]) for panel, _ in queries if panel in no_data]
    pending = {(panel, expr) for panel, expr in queries if panel not in no_data}
    deadline = time.monotonic() + 90
    while pending and time.monotonic() < deadline:
        for panel, expr in sorted(pending):
            try:
                rows = sut.promql(expr)
            except httpx.HTTPStatusError as e:
                pytest.fail(f"Service overview / {panel}: Prometheus refused {expr}: {e.response.text}")
            if rows:
                pending.discard((panel, expr))
        if pending:
            time.sleep(3)
    print(f"Service overview: {len(queries) - len(pending) - len(skipped)} of {len(queries)} queries returned "
          f"data for {FASTAPI_MODEL}; allowed empty by the dashboard's NO_DATA: {skipped}")
    assert not pending, "no data for service=fastapi-model:\n" + "\n".join(f"{p}: {e}" for p, e in sorted(pending))

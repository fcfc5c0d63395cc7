"""The end-to-end cases, one table: an input, and the metrics, traces and logs that must follow."""

from __future__ import annotations

import tempfile
import time
from typing import Any

from harness import STAGES, Case, Expect, StackUnderTest

from generator.workload import Workload
from mlobs.contract import FEATURE_LOOKUP_SPAN

SVC = "mlobs-inference"


def _send(sut: StackUnderTest, n: int, seed: int, feedback_share: float = 0.0, gap: float = 0.0) -> dict[str, Any]:
    work = Workload(seed=seed, batch_share=0.0)
    trace_ids, request_ids, codes, versions = [], [], [], []
    for i in range(n):
        if gap and i:
            time.sleep(gap)
        sample = work.single()
        r, tid, rid = sut.predict(sample.body)
        codes.append(r.status_code)
        if r.status_code == 200:
            versions.append(r.json()["model_version"])
        trace_ids.append(tid)
        request_ids.append(rid)
        if r.status_code == 200 and work.chance(feedback_share):
            sut.feedback(rid, sample.labels[0])
    return {"trace_ids": set(trace_ids), "request_ids": request_ids, "codes": codes, "first": trace_ids[0],
            "version": versions[-1] if versions else None}


def requests(n: int, seed: int = 1, feedback_share: float = 0.0, gap: float = 0.0):
    return lambda sut: _send(sut, n, seed, feedback_share, gap)


def value(rows: list[dict[str, Any]]) -> float | None:
    return float(rows[0]["value"][1]) if rows else None


def prom_above(expr: str, threshold: float, what: str, timeout: float = 90) -> Expect:
    def probe(sut: StackUnderTest, facts: dict[str, Any]) -> tuple[bool, Any]:
        v = value(sut.promql(expr))
        return v is not None and v > threshold, v
    return Expect("prometheus", f"{what}: {expr} > {threshold}", probe, timeout)


def prom_below(expr: str, threshold: float, what: str, timeout: float = 90) -> Expect:
    def probe(sut: StackUnderTest, facts: dict[str, Any]) -> tuple[bool, Any]:
        v = value(sut.promql(expr))
        return v is not None and v < threshold, v
    return Expect("prometheus", f"{what}: {expr} < {threshold}", probe, timeout)


def f1_of_served_version(above: float | None = None, below: float | None = None, what: str = "") -> Expect:
    """F1 of the version that answered the last requests (gauges of a replaced version linger in
    Prometheus for the 5-minute lookback, so the version is named)."""
    def probe(sut: StackUnderTest, facts: dict[str, Any]) -> tuple[bool, Any]:
        v = value(sut.promql(f'ml_model_f1{{job="{SVC}", ml_model_version="{facts["version"]}"}}'))
        ok = v is not None and (above is None or v > above) and (below is None or v < below)
        return ok, {"version": facts["version"], "f1": v}
    return Expect("prometheus", what, probe)


def prom_labels(expr: str, label: str, wanted: set[str], what: str) -> Expect:
    def probe(sut: StackUnderTest, facts: dict[str, Any]) -> tuple[bool, Any]:
        got = {r["metric"].get(label) for r in sut.promql(expr)}
        return wanted <= got, sorted(map(str, got))
    return Expect("prometheus", f"{what}: {label} of {expr} include {sorted(wanted)}", probe)


def exemplars_of_sent(selector: str, what: str) -> Expect:
    def probe(sut: StackUnderTest, facts: dict[str, Any]) -> tuple[bool, Any]:
        ids = sut.exemplar_trace_ids(selector) & facts["trace_ids"]
        facts.setdefault("exemplars", {})[selector] = ids
        return bool(ids), len(ids)
    return Expect("prometheus", f"{what}: exemplars of {selector} name sent trace ids", probe)


def same_trace_ids(a: str, b: str) -> Expect:
    """The service's own histogram and the collector's span metrics point at the same requests."""
    def probe(sut: StackUnderTest, facts: dict[str, Any]) -> tuple[bool, Any]:
        ids_a = sut.exemplar_trace_ids(a) & facts["trace_ids"]
        ids_b = sut.exemplar_trace_ids(b) & facts["trace_ids"]
        return bool(ids_a & ids_b), {"service": len(ids_a), "span_metrics": len(ids_b), "both": len(ids_a & ids_b)}
    return Expect("prometheus", f"exemplars of {a} and {b} share trace ids", probe)


def trace_has_stages() -> Expect:
    """Every sent trace is stored, with a span per stage and the CLIENT span to the feature store
    (the default sampling keeps every trace, and the links must resolve at any share)."""
    def probe(sut: StackUnderTest, facts: dict[str, Any]) -> tuple[bool, Any]:
        seen = {}
        for tid in sorted(facts["trace_ids"]):
            spans = sut.trace(tid)
            if not spans:
                return False, f"trace {tid} not (yet) in {sut.traces.name}"
            names = {s.name for s in spans}
            client = [s for s in spans if s.name == FEATURE_LOOKUP_SPAN and s.kind == "CLIENT"]
            if not (names >= STAGE_SET and client):
                return False, {"trace": tid, "spans": sorted(names)}
            seen[tid] = len(spans)
        return True, seen
    return Expect("traces", "every sent trace holds a span per stage and the CLIENT lookup span", probe)


def logs_by_trace_and_request() -> Expect:
    def probe(sut: StackUnderTest, facts: dict[str, Any]) -> tuple[bool, Any]:
        tid, rid = facts["first"], facts["request_ids"][0]
        by_trace = sut.log_lines(trace_id=tid)
        by_request = sut.log_lines(request_id=rid)
        ok = (bool(by_trace) and bool(by_request) and all(line.trace_id == tid for line in by_request)
              and any(line.request_id == rid for line in by_trace) and all(line.severity for line in by_trace))
        return ok, {"by_trace": [(ln.severity, ln.request_id, ln.body[:60]) for ln in by_trace][:5],
                    "by_request": len(by_request)}
    return Expect("logs", "log lines found by trace id and by request id, each with its severity", probe)


def failed_request(sut: StackUnderTest) -> dict[str, Any]:
    """Requests with the errors fault at rate 1 on inference: each fails with a 500."""
    with sut.fault(fault="errors", stage="inference", rate=1.0):
        facts = _send(sut, 3, seed=61)
    assert set(facts["codes"]) == {500}, facts["codes"]
    return facts


def error_span_and_log() -> Expect:
    def probe(sut: StackUnderTest, facts: dict[str, Any]) -> tuple[bool, Any]:
        tid = facts["first"]
        spans = sut.trace(tid) or []
        errors = sorted(s.name for s in spans if s.error)
        logs = sut.log_lines(trace_id=tid, severity="ERROR")
        return "inference" in errors and bool(logs), {"error spans": errors, "error logs": len(logs)}
    return Expect("traces", "a failed request: an error span on inference and an ERROR log of its trace", probe)


def traceql_finds(query: str, what: str) -> Expect:
    def probe(sut: StackUnderTest, facts: dict[str, Any]) -> tuple[bool, Any]:
        found = {t["traceID"].rjust(32, "0") for t in sut.traceql(query)}
        return bool(found & facts["trace_ids"]), len(found)
    return Expect("tempo", f"{what}: TraceQL {query}", probe)


def logs_carry_ids() -> Expect:
    def probe(sut: StackUnderTest, facts: dict[str, Any]) -> tuple[bool, Any]:
        tid = facts["first"]
        streams = sut.logql(f'{{service_name="{SVC}"}} | trace_id="{tid}"')
        rids = {s["stream"].get("request_id") for s in streams}
        return facts["request_ids"][0] in rids, sorted(map(str, rids))
    return Expect("loki", "log lines of one request carry its trace id and request id", probe)


def train_run(sut: StackUnderTest) -> dict[str, Any]:
    # A model directory of its own: the running service keeps serving its version.
    r = sut.train(tempfile.mkdtemp(prefix="mlobs-train-"))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return {"trace_ids": set(), "train_output": r.stdout[-500:]}


STAGE_SET = set(STAGES)

CASES: list[Case] = [
    Case(
        "requests: exemplars of the service and of the span metrics name the same traces",
        needs=("prometheus",),
        # A histogram keeps one exemplar per bucket and export interval (5 s): requests spaced
        # wider than that are each their own exemplar in both the service's and the collector's.
        run=requests(4, seed=11, gap=6.0),
        expect=[
            exemplars_of_sent(f'ml_request_duration_seconds_bucket{{job="{SVC}"}}', "request latency"),
            exemplars_of_sent(f'ml_stage_duration_seconds_bucket{{job="{SVC}", ml_stage="inference"}}',
                              "stage latency"),
            exemplars_of_sent(f'traces_spanmetrics_duration_seconds_bucket{{service_name="{SVC}"}}', "span metrics"),
            same_trace_ids(f'ml_request_duration_seconds_bucket{{job="{SVC}"}}',
                           f'traces_spanmetrics_duration_seconds_bucket{{service_name="{SVC}"}}'),
        ],
    ),
    Case(
        "requests: span metrics exist for every pipeline stage and the downstream lookup",
        needs=("prometheus",),
        run=requests(10, seed=12),
        expect=[prom_labels(f'traces_spanmetrics_calls_total{{service_name="{SVC}"}}', "span_name",
                            STAGE_SET | {"feature_lookup"}, "span metrics per stage")],
    ),
    Case(
        "requests: service-graph series for the sample service and its feature store",
        needs=("prometheus", "servicegraph"),
        run=requests(10, seed=13),
        expect=[prom_labels(f'traces_service_graph_request_total{{client="{SVC}"}}', "server",
                            {"mlobs-feature-store"}, "service graph edge to the feature store")],
    ),
    Case(
        "invalid input: 422, an error span on validation and warning logs counted by severity",
        needs=("prometheus",),
        run=lambda sut: {"codes": [sut.predict({"features": {"mean_radius": "big"}})[0].status_code
                                   for _ in range(3)], "trace_ids": set()},
        expect=[
            prom_above(f'sum(traces_spanmetrics_calls_total{{service_name="{SVC}", span_name="validation", '
                       f'status_code="STATUS_CODE_ERROR"}})', 0, "error spans on validation"),
            prom_labels(f'log_records_total{{job="{SVC}"}}', "severity_text", {"INFO", "WARN"},
                        "log counts by severity"),
        ],
    ),
    Case(
        "drift fault: PSI of the shifted feature rises above 0.2, and settles once the fault is off",
        needs=("prometheus",),
        run=lambda sut: _with_fault(sut, {"fault": "drift", "features": ["mean_radius"], "scale": 1.6}, 150, 21),
        expect=[prom_above(f'max(ml_feature_drift_psi{{job="{SVC}", ml_feature="mean_radius"}})', 0.2,
                           "drift of mean_radius")],
        # The drift window holds the last 500 rows: 520 clean requests replace every shifted one.
        then=lambda sut, facts: facts.update(_send(sut, 520, 22)),
        expect_after=[prom_below(f'max(ml_feature_drift_psi{{job="{SVC}", ml_feature="mean_radius"}})', 0.1,
                                 "drift settled")],
    ),
    Case(
        "regression fault: F1 from feedback falls, and recovers once the fault is off",
        needs=("prometheus",),
        run=lambda sut: _with_fault(sut, {"fault": "regression"}, 150, 31, feedback_share=1.0),
        expect=[f1_of_served_version(below=0.85, what="F1 of the regressed version falls below 0.85")],
        then=lambda sut, facts: facts.update(_send(sut, 150, 32, feedback_share=1.0)),
        expect_after=[f1_of_served_version(above=0.85, what="F1 of the restored version is above 0.85")],
    ),
    Case(
        "training run: one trace, loss per epoch, a counted run",
        needs=("prometheus",),
        run=train_run,
        expect=[
            prom_above('sum(ml_training_runs_total{job="mlobs-training"})', 0, "training runs"),
            prom_labels('ml_training_loss{job="mlobs-training"}', "ml_training_epoch", {"1", "2"}, "loss per epoch"),
            prom_above('sum(traces_spanmetrics_calls_total{service_name="mlobs-training", span_name="training.epoch"})',
                       0, "epoch spans"),
        ],
    ),
    Case(
        "requests: every trace is stored with its stage spans and the CLIENT span (trace store)",
        needs=("traces",),
        run=requests(10, seed=41),
        expect=[trace_has_stages()],
    ),
    Case(
        "requests: log lines by trace id and by request id, with severity (log store)",
        needs=("logs",),
        run=requests(5, seed=52),
        expect=[logs_by_trace_and_request()],
    ),
    Case(
        "failed request: the error span and the error log of its trace (trace and log store)",
        needs=("traces", "logs"),
        run=failed_request,
        expect=[error_span_and_log()],
    ),
    Case(
        "requests: TraceQL finds the inference spans (Tempo)",
        needs=("tempo",),
        run=requests(10, seed=41),
        expect=[traceql_finds(f'{{ resource.service.name = "{SVC}" && name = "inference" }}', "inference spans")],
    ),
    Case(
        "requests: log lines carry the trace id and the request id (Loki)",
        needs=("loki",),
        run=requests(5, seed=51),
        expect=[logs_carry_ids()],
    ),
]


def _with_fault(sut: StackUnderTest, change: dict[str, Any], n: int, seed: int,
                feedback_share: float = 0.0) -> dict[str, Any]:
    with sut.fault(**change):
        facts = _send(sut, n, seed, feedback_share)
        facts["fault_on"] = True
    return facts

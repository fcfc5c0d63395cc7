"""Freshness: how long after a request its telemetry can be found.

``REQUESTS`` requests go to the bench stack's sample service, ``SPACING`` seconds apart, each with a
trace id of our own in a ``traceparent`` header. Every other one comes from an instrumented caller:
a client span of the OpenTelemetry SDK (service ``CALLER``, exported to the collector with the
stack's span export delay), which is then the trace's root span, as it is when one of your services
calls another. The others carry the header alone, as ``mlobs verify`` sends it: the service's span
has a remote parent that never arrives, so the trace has no root span. Tail sampling decides a
trace ``decision_wait_after_root`` after its root span, and ``decision_wait`` after its first span
when none comes, so the two are reported apart. From the moment its response arrived, each
request is looked for, every ``POLL`` seconds, until ``TIMEOUT``:

* its exemplar in Prometheus: an exemplar carrying its trace id on the span-metric histogram of the
  service (``traces_spanmetrics_duration_seconds_bucket``: the collector's span-metrics connector
  keeps one per span), and on the service's own request histogram
  (``ml_request_duration_seconds_bucket``: the SDK keeps one exemplar per bucket and series per
  export interval, so only some requests get one there; their count is reported);
* its trace in the trace store (``mlobs/stores.py``: Jaeger or Tempo, by trace id): ``TRACE`` for
  the instrumented caller's, ``TRACE_NO_ROOT`` for the others.

The resolution is the poll interval. What sets the delays is read from the rendered configs, with
what lowering each would cost (``levers``).
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import numpy as np
import yaml

from mlobs import components, config, contract, render, sampling, stores, verify

REQUESTS = 50
SPACING = 0.4
POLL = 0.25
TIMEOUT = 60.0
SPAN_EXEMPLAR = "span-metric exemplar"
REQUEST_EXEMPLAR = "request-metric exemplar"
TRACE = "trace"
TRACE_NO_ROOT = "trace, caller not instrumented"
KINDS = (SPAN_EXEMPLAR, REQUEST_EXEMPLAR, TRACE, TRACE_NO_ROOT)
CALLER = "mlobs-bench-caller"


def percentiles(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"n": 0, "p50": None, "p95": None, "max": None}
    a = np.array(values)
    return {"n": len(values), "p50": round(float(np.percentile(a, 50)), 3),
            "p95": round(float(np.percentile(a, 95)), 3), "max": round(float(a.max()), 3)}


@dataclass
class Sent:
    trace_id: str
    done_at: float  # time.time() when the response arrived
    found: dict[str, float] = field(default_factory=dict)  # kind -> seconds after done_at
    rooted: bool = False  # from the instrumented caller: its client span is the trace's root

    @property
    def trace_kind(self) -> str:
        return TRACE if self.rooted else TRACE_NO_ROOT

    @property
    def complete(self) -> bool:
        return len(self.found) == 3  # both exemplars and its trace


def _exemplar_trace_ids(prometheus: str, query: str, since: float) -> dict[str, float]:
    """trace id -> the exemplar's timestamp, of every exemplar of ``query`` since ``since``."""
    r = httpx.get(f"{prometheus}/api/v1/query_exemplars",
                  params={"query": query, "start": since, "end": time.time() + 60}, timeout=5)
    r.raise_for_status()
    out = {}
    for series in r.json()["data"]:
        for e in series["exemplars"]:
            tid = e["labels"].get("trace_id")
            if tid:
                out[tid] = float(e["timestamp"])
    return out


class Caller:
    """An instrumented caller: the OpenTelemetry SDK's tracer with a batch span processor that
    exports to the collector with the stack's span export delay (components.BSP_SCHEDULE_DELAY_MS)."""

    def __init__(self, otlp_http: str) -> None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        self.provider = TracerProvider(resource=Resource({"service.name": CALLER}))
        self.provider.add_span_processor(BatchSpanProcessor(
            OTLPSpanExporter(endpoint=f"{otlp_http}/v1/traces"),
            schedule_delay_millis=components.BSP_SCHEDULE_DELAY_MS))
        self.tracer = self.provider.get_tracer("mlobs.bench_freshness")

    def post(self, client: httpx.Client, path: str, headers: dict[str, str], **kw) -> tuple[httpx.Response, str]:
        """POST inside a client span, its context in the traceparent header: (response, trace id)."""
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        with self.tracer.start_as_current_span(f"POST {path}", kind=trace.SpanKind.CLIENT) as span:
            carrier: dict[str, str] = {}
            TraceContextTextMapPropagator().inject(carrier)
            r = client.post(path, headers={**headers, **carrier}, **kw)
            span.set_attribute("http.response.status_code", r.status_code)
        return r, format(span.get_span_context().trace_id, "032x")

    def close(self) -> None:
        self.provider.shutdown()


def measure(service: str, prometheus: str, traces: stores.TraceStore, job: str, *, requests: int = REQUESTS,
            spacing: float = SPACING, poll: float = POLL, timeout: float = TIMEOUT,
            clock: Callable[[], float] = time.time, caller_otlp: str | None = None) -> dict:
    """``caller_otlp``: the collector's OTLP/HTTP endpoint for the instrumented caller's spans (every
    other request); without it, every request carries a bare traceparent."""
    sent: list[Sent] = []
    lock = threading.Lock()
    stop = threading.Event()
    since = clock() - 5
    span_query = f'{contract.SPANMETRICS_DURATION_SECONDS}_bucket{{service_name="{job}"}}'
    request_query = f'ml_request_duration_seconds_bucket{{job="{job}"}}'
    errors: list[str] = []

    caller = Caller(caller_otlp) if caller_otlp else None

    def send_all() -> None:
        with httpx.Client(base_url=service, timeout=10) as client:
            for i in range(requests):
                headers = {"X-Request-ID": f"bench-fresh-{i}",
                           "baggage": f"{sampling.DEBUG_BAGGAGE}=1", sampling.DEBUG_HEADER: "1"}
                rooted = caller is not None and i % 2 == 0
                if rooted:
                    r, tid = caller.post(client, "/predict", headers, json=verify.SAMPLE_PAYLOAD)
                else:
                    tid = secrets.token_hex(16)
                    headers["traceparent"] = f"00-{tid}-{secrets.token_hex(8)}-01"
                    r = client.post("/predict", json=verify.SAMPLE_PAYLOAD, headers=headers)
                r.raise_for_status()
                with lock:
                    sent.append(Sent(tid, clock(), rooted=rooted))
                time.sleep(spacing)

    sender = threading.Thread(target=send_all, daemon=True)
    sender.start()
    deadline = time.monotonic() + requests * spacing + timeout
    while time.monotonic() < deadline and not stop.is_set():
        with lock:
            pending = [s for s in sent if not s.complete and clock() - s.done_at < timeout]
            finished = not sender.is_alive() and all(s.complete or clock() - s.done_at >= timeout for s in sent)
        if finished:
            break
        try:
            now = clock()
            for kind, query in ((SPAN_EXEMPLAR, span_query), (REQUEST_EXEMPLAR, request_query)):
                ids = _exemplar_trace_ids(prometheus, query, since)
                for s in pending:
                    if kind not in s.found and s.trace_id in ids:
                        s.found[kind] = now - s.done_at
            for s in pending:
                if s.trace_kind not in s.found and traces.trace(s.trace_id):
                    s.found[s.trace_kind] = clock() - s.done_at
        except (httpx.HTTPError, KeyError, ValueError) as e:
            errors.append(f"{type(e).__name__}: {e}")
        time.sleep(poll)
    sender.join(timeout=5)
    if caller is not None:
        caller.close()
    result = {kind: percentiles([s.found[kind] for s in sent if kind in s.found]) for kind in KINDS}
    return {"requests": len(sent), "spacing_s": spacing, "poll_s": poll, "timeout_s": timeout,
            "by_kind": result, "poll_errors": errors[:5]}


def levers(stack: config.Stack) -> list[dict[str, str]]:
    """What sets each delay, its value here, and what lowering it costs."""
    cfg = yaml.safe_load(render.render(render.compose_target(stack))["otel-collector/config.yaml"])
    batch = cfg["processors"]["batch"]["timeout"]
    flush = cfg["connectors"]["span_metrics"]["metrics_flush_interval"]
    export = int(components.otlp_env_to("", "")["OTEL_METRIC_EXPORT_INTERVAL"]) / 1000
    bsp = components.BSP_SCHEDULE_DELAY_MS / 1000
    wait = stack.sampling.decision_wait
    after_root = stack.sampling.decision_wait_after_root
    return [
        {"lever": "SDK metric export interval (OTEL_METRIC_EXPORT_INTERVAL)", "value": f"{export:g}s",
         "delays": "the request-metric exemplar: up to one interval",
         "cost": "each halving doubles the SDK's export requests and the samples Prometheus stores "
                 "(sizing: points/s = series / interval); one exemplar per bucket per interval"},
        {"lever": "SDK span export delay (OTEL_BSP_SCHEDULE_DELAY)", "value": f"{bsp:g}s",
         "delays": "spans reach the collector: up to one delay",
         "cost": "smaller batches, more export requests; it must stay well below decision_wait"},
        {"lever": "span-metrics flush (metrics_flush_interval)", "value": str(flush),
         "delays": "the span-metric exemplar: up to one interval",
         "cost": "each halving doubles the span-metric points sent to Prometheus (every series, every flush)"},
        {"lever": "batch processor timeout", "value": str(batch),
         "delays": "every signal to its store: up to one timeout when the batch does not fill",
         "cost": "smaller batches at low load: more requests to each store; at high load batches fill first"},
        {"lever": "tail sampling decision_wait_after_root (stack.yaml sampling.decision_wait_after_root)",
         "value": str(after_root),
         "delays": "the trace: this long (and up to the sampler's 1 s tick) after its root span arrives; "
                   "no trace is written before its decision",
         "cost": "a span of another service exported after the decision follows it (the decision cache) "
                 "but was not judged: an error span then is kept only if its trace was; it must be at "
                 "least twice the SDK delay; 0s always waits decision_wait"},
        {"lever": "tail sampling decision_wait (stack.yaml sampling.decision_wait)", "value": str(wait),
         "delays": "a trace whose root span never arrives (or arrives later than this after its first span)",
         "cost": "memory holds traces/s x wait of such traces; it must exceed the SDK delay and the "
                 "longest request, else the root comes after the decision"},
    ]

"""Follow one request across metrics, traces and logs on a running stack (docker or native).

One request with a known trace id (our own `traceparent`) and request id goes to the sample
service; each link of the correlation chain is then looked up in the backend that holds it,
retried until a deadline, with the Grafana Explore URL a person can open.
"""

from __future__ import annotations

import secrets
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from mlobs import components, explore, render, sampling, stores
from mlobs.config import Stack
from mlobs.contract import STAGE_DURATION_SECONDS, STAGES

SAMPLE_PAYLOAD = {"patient_id": "P00042", "features": {"mean_radius": 17.99, "mean_texture": 10.38}}

OK, MISSING, NOT_RUNNING, UNAVAILABLE = "ok", "missing", "not running", "unavailable"


@dataclass
class Endpoints:
    """Base URLs of a running stack as seen from this host, and the stores that answer."""

    service: str
    prometheus: str
    collector_metrics: str
    grafana: str
    traces: stores.TraceStore | None
    logs: stores.LogStore | None
    grafana_up: bool = False
    service_name: str = "mlobs-inference"
    health: dict[str, str] = field(default_factory=dict)  # component -> health URL (the registry's)

    @classmethod
    def from_stack(cls, stack: Stack) -> Endpoints:
        """Probe each store's health endpoint (docker and native both publish on 127.0.0.1 at
        stack.yaml's ports): the stores that answer are the ones the links are looked up in."""
        everything = render.native_target(stack, render.BACKENDS)
        answering = {c.name for c in components.REGISTRY if c.name in render.BACKENDS
                     and answers(components.health_url(everything, c, stack))}
        target = render.native_target(stack, answering)
        sample = stack.sample_service
        return cls(
            service=f"http://{target.connect('inference')}",
            prometheus=f"http://{target.connect('prometheus')}",
            collector_metrics=f"http://{target.connect('collector_metrics')}",
            grafana=f"http://{target.connect('grafana')}",
            traces=stores.trace_store(target),
            logs=stores.log_store(target),
            grafana_up="grafana" in answering,
            service_name=sample.name if sample else "mlobs-inference",
            health={c.name: components.health_url(target, c, stack) for c in components.REGISTRY},
        )


@dataclass
class Link:
    name: str
    status: str
    detail: str = ""
    explore: str = ""


@dataclass
class Request:
    trace_id: str
    request_id: str
    response: dict[str, Any] = field(default_factory=dict)


def answers(url: str, timeout: float = 2.0) -> bool:
    try:
        return httpx.get(url, timeout=timeout).status_code < 500
    except httpx.HTTPError:
        return False


def send_request(ep: Endpoints) -> Request:
    trace_id = secrets.token_hex(16)
    request_id = f"verify-{secrets.token_hex(6)}"
    # The keep marker: whatever the sampling share, this request's trace is kept, with detail spans.
    headers = {"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01", "X-Request-ID": request_id,
               "baggage": f"{sampling.DEBUG_BAGGAGE}=1", sampling.DEBUG_HEADER: "1"}
    r = httpx.post(f"{ep.service}/predict", json=SAMPLE_PAYLOAD, headers=headers, timeout=10)
    r.raise_for_status()
    if r.headers.get("X-Request-ID") != request_id:
        raise RuntimeError(f"the service did not echo X-Request-ID (got {r.headers.get('X-Request-ID')!r})")
    return Request(trace_id, request_id, r.json())


def _exemplar_series(ep: Endpoints, query: str, trace_id: str) -> list[dict[str, str]]:
    now = time.time()
    r = httpx.get(f"{ep.prometheus}/api/v1/query_exemplars",
                  params={"query": query, "start": now - 900, "end": now + 60}, timeout=5)
    r.raise_for_status()
    return [s["seriesLabels"] for s in r.json()["data"]
            if any(e["labels"].get("trace_id") == trace_id for e in s["exemplars"])]


def _series(ep: Endpoints, expr: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{ep.prometheus}/api/v1/query", params={"query": expr}, timeout=5)
    r.raise_for_status()
    return r.json()["data"]["result"]


def _collector_components(ep: Endpoints) -> set[str]:
    """Component ids the running collector reports in its own metrics (best effort)."""
    try:
        text = httpx.get(f"{ep.collector_metrics}/metrics", timeout=3).text
    except httpx.HTTPError:
        return set()
    found = set()
    for key in ('connector="', 'exporter="', 'receiver="', 'processor="'):
        for part in text.split(key)[1:]:
            found.add(part.split('"', 1)[0])
    return found


def checks(ep: Endpoints, req: Request) -> list[tuple[str, Callable[[], Link | None]]]:
    """Each link: a name and a probe that returns a final Link, or None to retry."""
    name, tid, rid = ep.service_name, req.trace_id, req.request_id
    prom_up = answers(ep.health["prometheus"])
    out: list[tuple[str, Callable[[], Link | None]]] = []
    trace_label = f"trace in {ep.traces.name}" if ep.traces else "trace"
    stored: dict[str, list[stores.Span]] = {}

    def trace() -> Link | None:
        if ep.traces is None:
            return Link(trace_label, NOT_RUNNING, "no trace store answers (Tempo or Jaeger)")
        spans = ep.traces.trace(tid)
        if not spans:
            return None
        names = {sp.name for sp in spans}
        if not set(STAGES) <= names:
            return None
        stored["spans"] = spans
        return Link(trace_label, OK, f"trace {tid} with spans {', '.join(STAGES)}", trace_link(ep, tid))

    out.append((trace_label, trace))

    def exemplar(metric: str, label: str) -> Callable[[], Link | None]:
        def probe() -> Link | None:
            if not prom_up:
                return Link(label, NOT_RUNNING, f"Prometheus does not answer at {ep.prometheus}")
            series = _exemplar_series(ep, f'{metric}{{job="{name}"}}', tid)
            if not series:
                return None
            return Link(label, OK, f"{metric} exemplar trace_id={tid}",
                        metric_link(ep, f'{metric}{{job="{name}"}}'))
        return probe

    out.append(("request latency exemplar", exemplar("ml_request_duration_seconds_bucket", "request latency exemplar")))

    for stage in STAGES:
        def stage_probe(stage: str = stage) -> Link | None:
            label = f"span metrics: {stage}"
            if not prom_up:
                return Link(label, NOT_RUNNING, "Prometheus does not answer")
            q = f'traces_spanmetrics_duration_seconds_bucket{{service_name="{name}", span_name="{stage}"}}'
            if not _exemplar_series(ep, q, tid):
                return None
            return Link(label, OK, f"series with an exemplar of trace {tid}",
                        metric_link(ep, q))
        out.append((f"span metrics: {stage}", stage_probe))

    def stage_exemplars() -> Link | None:
        label = "stage latency exemplars"
        if not prom_up:
            return Link(label, NOT_RUNNING, "Prometheus does not answer")
        series = _exemplar_series(ep, f'{STAGE_DURATION_SECONDS}_bucket{{job="{name}"}}', tid)
        stages = {s.get("ml_stage") for s in series}
        if not set(STAGES) <= stages:
            return None
        return Link(label, OK, f"{STAGE_DURATION_SECONDS} exemplars for {', '.join(STAGES)}",
                    metric_link(ep, f'{STAGE_DURATION_SECONDS}_bucket{{job="{name}"}}'))

    out.append(("stage latency exemplars", stage_exemplars))

    def graph() -> Link | None:
        label = "service graph"
        if not prom_up:
            return Link(label, NOT_RUNNING, "Prometheus does not answer")
        rows = _series(ep, f'traces_service_graph_request_total{{client="{name}"}} '
                           f'or traces_service_graph_request_total{{server="{name}"}}')
        if rows:
            edges = sorted({f'{r["metric"].get("client")} -> {r["metric"].get("server")}' for r in rows})
            uid = ep.traces.name if ep.traces else "tempo"
            return Link(label, OK, "; ".join(edges), explore.url(uid, explore.service_map(uid), grafana=ep.grafana))
        if "servicegraph" not in _collector_components(ep):
            # No connector (the native build): the edges of this request, from its stored trace.
            edges = sorted(stores.service_edges(stored.get("spans", [])))
            if edges:
                return Link(label, OK, "from the stored trace (no servicegraph connector here): "
                            + "; ".join(f"{a} -> {b}" for a, b in edges), trace_link(ep, tid))
            if ep.traces is None:
                return Link(label, UNAVAILABLE, "no servicegraph connector and no trace store to read edges from")
            return None
        return None

    out.append(("service graph", graph))

    def logs() -> Link | None:
        label = "logs with the trace id"
        if ep.logs is None:
            return Link(label, NOT_RUNNING, "no log store answers (Loki or VictoriaLogs)")
        lines = ep.logs.lines(name, trace_id=tid, limit=100)
        if not lines:
            return None
        with_rid = [ln for ln in lines if ln.request_id == rid]
        if not with_rid:
            return Link(label, MISSING, f"{len(lines)} log lines carry the trace id but none request_id={rid}")
        return Link(label, OK, f"{len(lines)} log lines in {ep.logs.name} with trace_id and request_id={rid}",
                    log_link(ep, name, tid))

    out.append(("logs with the trace id", logs))
    return out


def verify(ep: Endpoints, timeout: float = 90,
           progress: Callable[[str, float], None] | None = None) -> tuple[Request | None, list[Link]]:
    if not answers(ep.health["inference"]):
        return None, [Link("sample service", NOT_RUNNING, f"no answer at {ep.health['inference']}: `make up` first")]
    req = send_request(ep)
    pending = checks(ep, req)
    done: dict[str, Link] = {}
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        still = []
        for label, probe in pending:
            try:
                link = probe()
            except httpx.HTTPError:
                link = None
            if link is None:
                still.append((label, probe))
            else:
                done[label] = link
        pending = still
        if progress:
            progress(", ".join(label for label, _ in pending), deadline - time.monotonic())
        if pending:
            time.sleep(2)
    for label, _ in pending:
        done[label] = Link(label, MISSING, f"not found within {timeout:.0f}s")
    order = link_order()
    links = [Link("request", OK, f"request_id={req.request_id} trace_id={req.trace_id}")]
    links += sorted(done.values(), key=lambda link: order.index(link.name) if link.name in order else 99)
    return req, links


def metric_link(ep: Endpoints, expr: str) -> str:
    """Grafana Explore with exemplars, or Prometheus' exemplar API without Grafana."""
    if ep.grafana_up:
        return explore.url("prometheus", explore.promql(expr, exemplar=True), grafana=ep.grafana)
    return f"{ep.prometheus}/api/v1/query_exemplars?query=" + urllib.parse.quote(expr)


def trace_link(ep: Endpoints, trace_id: str) -> str:
    """Where a person opens the trace: Grafana Explore, or the store's own UI/API without Grafana."""
    assert ep.traces is not None
    if ep.grafana_up:
        return explore.url(ep.traces.name, explore.trace_id(ep.traces.name, trace_id), grafana=ep.grafana)
    if ep.traces.name == "jaeger":
        return f"{ep.traces.base}/api/v3/traces/{trace_id}"
    return f"{ep.traces.base}/api/v2/traces/{trace_id}"


def log_link(ep: Endpoints, service: str, trace_id: str) -> str:
    assert ep.logs is not None
    query = ep.logs.query(service, trace_id=trace_id)
    if ep.grafana_up:
        return explore.url(ep.logs.name, explore.logs(ep.logs.name, query), grafana=ep.grafana)
    if ep.logs.name == "victorialogs":
        return f"{ep.logs.base}/select/vmui/#/?query=" + urllib.parse.quote(query)
    return f"{ep.logs.base}/loki/api/v1/query_range?query=" + urllib.parse.quote(query)


def link_order() -> list[str]:
    return ["trace", "trace in tempo", "trace in jaeger", "request latency exemplar",
            *[f"span metrics: {s}" for s in STAGES],
            "stage latency exemplars", "service graph", "logs with the trace id"]

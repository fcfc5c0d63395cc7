"""Follow one request across metrics, traces and logs on a running stack (docker or native).

One request with a known trace id (our own `traceparent`) and request id goes to the sample
service; each link of the correlation chain is then looked up in the backend that holds it,
retried until a deadline, with the Grafana Explore URL a person can open.
"""

from __future__ import annotations

import json
import secrets
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from mlobs.config import Stack

STAGES = ("validation", "feature_extraction", "inference", "postprocessing")
SAMPLE_PAYLOAD = {"patient_id": "P00042", "features": {"mean_radius": 17.99, "mean_texture": 10.38}}

OK, MISSING, NOT_RUNNING, UNAVAILABLE = "ok", "missing", "not running", "unavailable"


@dataclass
class Endpoints:
    """Base URLs of a running stack as seen from this host."""

    service: str
    prometheus: str
    collector_metrics: str
    loki: str
    tempo: str
    grafana: str
    service_name: str = "mlobs-inference"

    @classmethod
    def from_stack(cls, stack: Stack) -> Endpoints:
        p = stack.ports
        sample = stack.sample_service
        return cls(
            service=f"http://127.0.0.1:{p.inference}",
            prometheus=f"http://127.0.0.1:{p.prometheus}",
            collector_metrics=f"http://127.0.0.1:{p.collector_metrics}",
            loki=f"http://127.0.0.1:{p.loki}",
            tempo=f"http://127.0.0.1:{p.tempo}",
            grafana=f"http://127.0.0.1:{p.grafana}",
            service_name=sample.name if sample else "mlobs-inference",
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


def explore_url(grafana: str, uid: str, query: dict[str, Any]) -> str:
    pane = {"datasource": uid, "queries": [{"refId": "A", "datasource": {"uid": uid}, **query}],
            "range": {"from": "now-1h", "to": "now"}}
    panes = json.dumps({"a": pane}, separators=(",", ":"))
    return f"{grafana}/explore?schemaVersion=1&panes=" + urllib.parse.quote(panes)


def send_request(ep: Endpoints) -> Request:
    trace_id = secrets.token_hex(16)
    request_id = f"verify-{secrets.token_hex(6)}"
    headers = {"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01", "X-Request-ID": request_id}
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
    prom_up = answers(f"{ep.prometheus}/-/ready")
    tempo_up = answers(f"{ep.tempo}/ready")
    loki_up = answers(f"{ep.loki}/ready")
    out: list[tuple[str, Callable[[], Link | None]]] = []

    def trace() -> Link | None:
        if not tempo_up:
            return Link("trace in Tempo", NOT_RUNNING, f"Tempo does not answer at {ep.tempo}")
        r = httpx.get(f"{ep.tempo}/api/v2/traces/{tid}", timeout=5)
        if r.status_code != 200:
            return None
        text = r.text
        missing = [s for s in STAGES if f'"{s}"' not in text]
        if missing:
            return None
        return Link("trace in Tempo", OK, f"trace {tid} with spans {', '.join(STAGES)}",
                    explore_url(ep.grafana, "tempo", {"queryType": "traceql", "query": tid}))

    out.append(("trace in Tempo", trace))

    def exemplar(metric: str, label: str) -> Callable[[], Link | None]:
        def probe() -> Link | None:
            if not prom_up:
                return Link(label, NOT_RUNNING, f"Prometheus does not answer at {ep.prometheus}")
            series = _exemplar_series(ep, f'{metric}{{job="{name}"}}', tid)
            if not series:
                return None
            return Link(label, OK, f"{metric} exemplar trace_id={tid}",
                        explore_url(ep.grafana, "prometheus", {"expr": f'{metric}{{job="{name}"}}', "exemplar": True}))
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
                        explore_url(ep.grafana, "prometheus", {"expr": q, "exemplar": True}))
        out.append((f"span metrics: {stage}", stage_probe))

    def stage_exemplars() -> Link | None:
        label = "stage latency exemplars"
        if not prom_up:
            return Link(label, NOT_RUNNING, "Prometheus does not answer")
        series = _exemplar_series(ep, f'ml_stage_duration_seconds_bucket{{job="{name}"}}', tid)
        stages = {s.get("ml_stage") for s in series}
        if not set(STAGES) <= stages:
            return None
        return Link(label, OK, f"ml_stage_duration_seconds exemplars for {', '.join(STAGES)}",
                    explore_url(ep.grafana, "prometheus",
                                {"expr": f'ml_stage_duration_seconds_bucket{{job="{name}"}}', "exemplar": True}))

    out.append(("stage latency exemplars", stage_exemplars))

    def graph() -> Link | None:
        label = "service graph"
        if not prom_up:
            return Link(label, NOT_RUNNING, "Prometheus does not answer")
        rows = _series(ep, f'traces_service_graph_request_total{{client="{name}"}} '
                           f'or traces_service_graph_request_total{{server="{name}"}}')
        if rows:
            edges = sorted({f'{r["metric"].get("client")} -> {r["metric"].get("server")}' for r in rows})
            return Link(label, OK, "; ".join(edges),
                        explore_url(ep.grafana, "tempo", {"queryType": "serviceMap"}))
        if "servicegraph" not in _collector_components(ep):
            return Link(label, UNAVAILABLE, "this collector has no servicegraph connector "
                        "(the native build lacks it: see README, 'What is verified where')")
        return None

    out.append(("service graph", graph))

    def logs() -> Link | None:
        label = "logs with the trace id"
        if not loki_up:
            return Link(label, NOT_RUNNING, f"Loki does not answer at {ep.loki}")
        q = f'{{service_name="{name}"}} | trace_id="{tid}"'
        now = time.time_ns()
        r = httpx.get(f"{ep.loki}/loki/api/v1/query_range", timeout=5,
                      params={"query": q, "start": now - 900 * 10**9, "end": now + 60 * 10**9, "limit": 100})
        if r.status_code != 200:
            return None
        streams = r.json()["data"]["result"]
        lines = [v for s in streams for v in s["values"]]
        if not lines:
            return None
        with_rid = [s for s in streams if s["stream"].get("request_id") == rid]
        if not with_rid:
            return Link(label, MISSING, f"{len(lines)} log lines carry the trace id but none request_id={rid}")
        return Link(label, OK, f"{len(lines)} log lines with trace_id and request_id={rid}",
                    explore_url(ep.grafana, "loki", {"expr": q}))

    out.append(("logs with the trace id", logs))
    return out


def verify(ep: Endpoints, timeout: float = 90,
           progress: Callable[[str, float], None] | None = None) -> tuple[Request | None, list[Link]]:
    if not answers(f"{ep.service}/healthz"):
        return None, [Link("sample service", NOT_RUNNING, f"no answer at {ep.service}/healthz: `make up` first")]
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


def link_order() -> list[str]:
    return ["trace in Tempo", "request latency exemplar", *[f"span metrics: {s}" for s in STAGES],
            "stage latency exemplars", "service graph", "logs with the trace id"]

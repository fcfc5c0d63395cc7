"""Read a trace and log lines back from whichever store holds them: one neutral form.

The correlation checks (``mlobs verify``, the e2e cases, the link-integrity test) ask the same
questions of every store: the trace of this id with its spans, and the log lines of this trace or
request with their severity. Tempo and Jaeger answer the first, Loki and VictoriaLogs the second,
each in its own API; this module turns their answers into ``Span`` and ``LogLine``.

* Tempo: ``GET /api/v2/traces/<id>`` (OTLP JSON under ``trace``).
* Jaeger v2: ``GET /api/v3/traces/<id>`` (OTLP JSON under ``result``), ``/api/services``,
  ``/api/dependencies`` (the service graph Jaeger builds from stored spans).
* Loki: ``GET /loki/api/v1/query_range`` with LogQL; structured metadata arrive as stream labels.
* VictoriaLogs: ``GET /select/logsql/query`` with LogsQL; one JSON object per line.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

#: OTLP span kinds by number (OTLP JSON may give the number or the enum name).
_KINDS = {0: "UNSPECIFIED", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}


@dataclass(frozen=True)
class Span:
    name: str
    service: str
    kind: str  # SERVER, CLIENT, INTERNAL, ...
    error: bool
    span_id: str
    parent_span_id: str
    attributes: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


@dataclass(frozen=True)
class LogLine:
    body: str
    severity: str
    service: str
    trace_id: str
    span_id: str
    request_id: str
    attributes: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


def _hex_id(value: str) -> str:
    """OTLP JSON ids are hex; some encoders give the protobuf bytes as base64."""
    if not value:
        return ""
    v = value.lower()
    if all(c in "0123456789abcdef" for c in v) and len(v) in (16, 32):
        return v
    try:
        return base64.b64decode(value, validate=True).hex()
    except (binascii.Error, ValueError):
        return value


def _any_value(v: dict[str, Any]) -> Any:
    for key in ("stringValue", "intValue", "doubleValue", "boolValue"):
        if key in v:
            return v[key]
    if "arrayValue" in v:
        return [_any_value(x) for x in v["arrayValue"].get("values", [])]
    return None


def _attrs(items: list[dict[str, Any]] | None) -> dict[str, Any]:
    return {a["key"]: _any_value(a.get("value", {})) for a in items or []}


def _kind(value: Any) -> str:
    if isinstance(value, int):
        return _KINDS.get(value, str(value))
    return str(value or "UNSPECIFIED").removeprefix("SPAN_KIND_")


def spans_from_otlp(resource_spans: list[dict[str, Any]]) -> list[Span]:
    out = []
    for rs in resource_spans:
        service = str(_attrs(rs.get("resource", {}).get("attributes")).get("service.name", ""))
        for ss in rs.get("scopeSpans", rs.get("instrumentationLibrarySpans", [])):
            for s in ss.get("spans", []):
                code = s.get("status", {}).get("code", 0)
                out.append(Span(
                    name=s.get("name", ""), service=service, kind=_kind(s.get("kind")),
                    error=code in (2, "STATUS_CODE_ERROR"), span_id=_hex_id(s.get("spanId", "")),
                    parent_span_id=_hex_id(s.get("parentSpanId", "")), attributes=_attrs(s.get("attributes")),
                ))
    return out


def service_edges(spans: list[Span]) -> set[tuple[str, str]]:
    """The calls between services that one trace shows: a CLIENT span's service to the service of
    its child SERVER span, or to its ``peer.service`` (an uninstrumented peer), as the collector's
    servicegraph connector pairs them."""
    by_id = {s.span_id: s for s in spans}
    edges = set()
    for s in spans:
        if s.kind == "SERVER" and s.parent_span_id in by_id:
            parent = by_id[s.parent_span_id]
            if parent.kind == "CLIENT" and parent.service != s.service:
                edges.add((parent.service, s.service))
    for s in spans:
        peer = s.attributes.get("peer.service")
        if s.kind == "CLIENT" and peer:
            edges.add((s.service, str(peer)))
    return edges


class TraceStore(Protocol):
    name: str
    base: str

    def ready(self) -> bool: ...

    def trace(self, trace_id: str) -> list[Span] | None:
        """The spans of one trace, or None while the store does not have it."""
        ...


class LogStore(Protocol):
    name: str
    base: str

    def ready(self) -> bool: ...

    def lines(self, service: str, *, trace_id: str | None = None, request_id: str | None = None,
              severity: str | None = None, window: float = 900, limit: int = 500) -> list[LogLine]: ...


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).is_success
    except httpx.HTTPError:
        return False


@dataclass
class Tempo:
    base: str
    name: str = "tempo"

    def ready(self) -> bool:
        return _answers(f"{self.base}/ready")

    def trace(self, trace_id: str) -> list[Span] | None:
        r = httpx.get(f"{self.base}/api/v2/traces/{trace_id}", timeout=10)
        if r.status_code == 404:
            return None
        r.raise_for_status()
        return spans_from_otlp(r.json().get("trace", {}).get("resourceSpans", [])) or None


@dataclass
class Jaeger:
    base: str
    health: str = ""
    name: str = "jaeger"

    def ready(self) -> bool:
        return _answers(self.health or f"{self.base}/")

    def trace(self, trace_id: str) -> list[Span] | None:
        r = httpx.get(f"{self.base}/api/v3/traces/{trace_id}", timeout=10)
        if r.status_code == 404:
            return None
        r.raise_for_status()
        body = r.json()
        result = body.get("result", body)
        return spans_from_otlp(result.get("resourceSpans", [])) or None

    def services(self) -> list[str]:
        r = httpx.get(f"{self.base}/api/services", timeout=10)
        r.raise_for_status()
        return list(r.json().get("data") or [])

    def dependencies(self, lookback: float = 3600) -> list[tuple[str, str, int]]:
        """(parent service, child service, calls) edges Jaeger derives from the stored spans."""
        now_ms = int(time.time() * 1000)
        r = httpx.get(f"{self.base}/api/dependencies", timeout=10,
                      params={"endTs": now_ms, "lookback": int(lookback * 1000)})
        r.raise_for_status()
        return [(d["parent"], d["child"], int(d.get("callCount", 0))) for d in r.json().get("data") or []]


@dataclass
class Loki:
    base: str
    name: str = "loki"

    def ready(self) -> bool:
        return _answers(f"{self.base}/ready")

    def query(self, service: str, *, trace_id: str | None = None, request_id: str | None = None,
              severity: str | None = None) -> str:
        q = f'{{service_name="{service}"}}'
        if trace_id:
            q += f' | trace_id="{trace_id}"'
        if request_id:
            q += f' | request_id="{request_id}"'
        if severity:
            q += f' | severity_text="{severity}"'
        return q

    def lines(self, service: str, *, trace_id: str | None = None, request_id: str | None = None,
              severity: str | None = None, window: float = 900, limit: int = 500) -> list[LogLine]:
        now = time.time_ns()
        r = httpx.get(f"{self.base}/loki/api/v1/query_range", timeout=10, params={
            "query": self.query(service, trace_id=trace_id, request_id=request_id, severity=severity),
            "start": now - int(window * 1e9), "end": now + int(60e9), "limit": limit})
        r.raise_for_status()
        out = []
        for stream in r.json()["data"]["result"]:
            labels = stream["stream"]
            for _, line in stream["values"]:
                out.append(LogLine(line, labels.get("severity_text", labels.get("detected_level", "")),
                                   labels.get("service_name", ""), labels.get("trace_id", ""),
                                   labels.get("span_id", ""), labels.get("request_id", ""), labels))
        return out


def _logsql_quote(value: str) -> str:
    return json.dumps(value)


@dataclass
class VictoriaLogs:
    base: str
    name: str = "victorialogs"

    def ready(self) -> bool:
        return _answers(f"{self.base}/health")

    def query(self, service: str, *, trace_id: str | None = None, request_id: str | None = None,
              severity: str | None = None) -> str:
        # LogsQL: `field:"value"` filters; field names with dots are quoted.
        parts = [f'"service.name":{_logsql_quote(service)}']
        if trace_id:
            parts.append(f"trace_id:{_logsql_quote(trace_id)}")
        if request_id:
            parts.append(f'"request.id":{_logsql_quote(request_id)}')
        if severity:
            parts.append(f"severity_text:{_logsql_quote(severity)}")
        return " ".join(parts)

    def lines(self, service: str, *, trace_id: str | None = None, request_id: str | None = None,
              severity: str | None = None, window: float = 900, limit: int = 500) -> list[LogLine]:
        q = self.query(service, trace_id=trace_id, request_id=request_id, severity=severity)
        r = httpx.get(f"{self.base}/select/logsql/query", timeout=10,
                      params={"query": q, "start": f"{time.time() - window:.3f}", "limit": limit})
        r.raise_for_status()
        out = []
        for raw in r.text.splitlines():
            if not raw.strip():
                continue
            rec = json.loads(raw)
            out.append(LogLine(rec.get("_msg", ""), rec.get("severity_text", ""), rec.get("service.name", ""),
                               rec.get("trace_id", ""), rec.get("span_id", ""), rec.get("request.id", ""), rec))
        return out


def trace_store(target: Any) -> TraceStore | None:
    """The trace store a rendered target exports to, as seen from this host."""
    name = target.store("traces")
    if name == "tempo":
        return Tempo(f"http://{target.connect('tempo')}")
    if name == "jaeger":
        return Jaeger(f"http://{target.connect('jaeger')}", f"http://{target.connect('jaeger_health')}/status")
    return None


def log_store(target: Any) -> LogStore | None:
    name = target.store("logs")
    if name == "loki":
        return Loki(f"http://{target.connect('loki')}")
    if name == "victorialogs":
        return VictoriaLogs(f"http://{target.connect('victorialogs')}")
    return None

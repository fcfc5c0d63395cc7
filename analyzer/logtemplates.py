"""Log templates: the collector's copy of every log record (OTLP/HTTP ``POST /v1/logs``), mined
with `Drain3 <https://github.com/logpai/Drain3>`_ into templates per service and counted in time.

Drain turns ``prediction failed for request r-81f2: InjectedError`` and its siblings into one
template (``prediction failed for request <*>: InjectedError``, ids and numbers masked). Per
service and template the book keeps counts per ``bucket_seconds`` over ``keep_seconds`` and a
few recent example lines with their trace ids. The RCA (:meth:`analyzer.rca.RootCauseAnalyzer.assess`)
asks it for the rate series of a service's templates on its query grid: a template of WARN or
above whose rate moved, or any template that is new (first seen in the recent window while the
service had logged before it), is a ``log_template`` candidate, with the template and its examples
as evidence.
"""

from __future__ import annotations

import gzip
import re
import threading
import time
import zlib
from collections import defaultdict, deque
from dataclasses import dataclass, field

import numpy as np
from drain3 import TemplateMiner
from drain3.masking import MaskingInstruction
from drain3.template_miner_config import TemplateMinerConfig
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from mlobs import contract

ALERTING = {"WARN", "WARNING", "ERROR", "FATAL", "CRITICAL"}
MAX_EXAMPLES = 3
MAX_TEMPLATES_PER_SERVICE = 500
_SEVERITY_BY_NUMBER = [(21, "FATAL"), (17, "ERROR"), (13, "WARN"), (9, "INFO"), (5, "DEBUG"), (1, "TRACE")]
_MASKS = [
    (r"\b[0-9a-f]{32}\b", "TRACE"),
    (r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b", "UUID"),
    (r"\b[A-Za-z]+-[0-9a-f]{6,}\b", "ID"),
    (r"\b0x[0-9a-fA-F]+\b", "HEX"),
    (r"(?<![\w.])[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?(?:ms|s|%)?(?![\w.])", "NUM"),
]


def _config() -> TemplateMinerConfig:
    c = TemplateMinerConfig()
    c.drain_sim_th = 0.4
    c.drain_depth = 4
    c.drain_max_clusters = MAX_TEMPLATES_PER_SERVICE
    c.profiling_enabled = False
    c.masking_instructions = [MaskingInstruction(pattern, name) for pattern, name in _MASKS]
    c.mask_prefix, c.mask_suffix = "<", ">"
    return c


@dataclass
class Example:
    at: float
    severity: str
    body: str
    trace_id: str


@dataclass
class Template:
    id: int
    text: str
    severity: str
    first_seen: float
    buckets: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    examples: deque = field(default_factory=lambda: deque(maxlen=MAX_EXAMPLES))
    total: int = 0


def severity_of(text: str, number: int) -> str:
    if text:
        return text.upper()
    for floor, name in _SEVERITY_BY_NUMBER:
        if number >= floor:
            return name
    return "UNSPECIFIED"


def _any_value(v) -> str:
    kind = v.WhichOneof("value")
    if kind is None:
        return ""
    if kind in ("kvlist_value", "array_value"):
        return str(getattr(v, kind)).replace("\n", " ")
    if kind == "bytes_value":
        return v.bytes_value.hex()
    return str(getattr(v, kind))


def decode(body: bytes, encoding: str = "") -> ExportLogsServiceRequest:
    encoding = (encoding or "").lower()
    if encoding == "gzip":
        body = gzip.decompress(body)
    elif encoding in ("deflate", "zlib"):
        body = zlib.decompress(body)
    request = ExportLogsServiceRequest()
    request.ParseFromString(body)
    return request


class TemplateBook:
    """Templates and counts per service; thread-safe (the receiver writes, the analyses read)."""

    def __init__(
        self,
        *,
        bucket_seconds: float = 15.0,
        keep_seconds: float = 7200.0,
        exclude: frozenset[str] = frozenset({contract.SERVICE_ANALYZER}),
        clock=time.time,
    ) -> None:
        self.bucket_seconds = bucket_seconds
        self.keep_seconds = keep_seconds
        self.exclude = exclude
        self.clock = clock
        self._miners: dict[str, TemplateMiner] = {}
        self._templates: dict[str, dict[int, Template]] = defaultdict(dict)
        self._first_record: dict[str, float] = {}
        self._lock = threading.Lock()
        self.records = 0

    def _miner(self, service: str) -> TemplateMiner:
        miner = self._miners.get(service)
        if miner is None:
            miner = self._miners[service] = TemplateMiner(config=_config())
        return miner

    def add(self, service: str, body: str, *, severity: str = "", at: float | None = None, trace_id: str = "") -> None:
        if not body or service in self.exclude:
            return
        at = self.clock() if at is None else at
        line = re.sub(r"\s+", " ", body.strip())[:2000]
        with self._lock:
            self.records += 1
            result = self._miner(service).add_log_message(line)
            cid = int(result["cluster_id"])
            text = result["template_mined"]
            templates = self._templates[service]
            t = templates.get(cid)
            if t is None:
                t = templates[cid] = Template(cid, text, severity, at)
            t.text = text
            if severity in ALERTING or t.severity not in ALERTING:
                t.severity = severity or t.severity
            t.buckets[int(at // self.bucket_seconds)] += 1
            t.total += 1
            if trace_id or not t.examples:
                t.examples.append(Example(at, severity, line[:300], trace_id))
            self._first_record.setdefault(service, at)
            self._prune(service, at)

    def _prune(self, service: str, now: float) -> None:
        oldest = int((now - self.keep_seconds) // self.bucket_seconds)
        for t in self._templates[service].values():
            if t.buckets and min(t.buckets) < oldest:
                for k in [k for k in t.buckets if k < oldest]:
                    del t.buckets[k]

    def ingest(self, request: ExportLogsServiceRequest) -> int:
        """Every record of an OTLP export; the number taken."""
        taken = 0
        now = self.clock()
        for resource_logs in request.resource_logs:
            attrs = {kv.key: _any_value(kv.value) for kv in resource_logs.resource.attributes}
            service = attrs.get("service.name", "")
            if not service:
                continue
            for scope_logs in resource_logs.scope_logs:
                for record in scope_logs.log_records:
                    ts = record.time_unix_nano or record.observed_time_unix_nano
                    at = ts / 1e9 if ts else now
                    if at > now + 60 or at < now - self.keep_seconds:
                        at = now
                    self.add(
                        service,
                        _any_value(record.body),
                        severity=severity_of(record.severity_text, record.severity_number),
                        at=at,
                        trace_id=record.trace_id.hex() if record.trace_id and any(record.trace_id) else "",
                    )
                    taken += 1
        return taken

    # ---- reading

    def services(self) -> list[str]:
        with self._lock:
            return sorted(self._templates)

    def series(
        self, service: str, start: float, end: float, step: float, window: float
    ) -> list[tuple[Template, np.ndarray, float]]:
        """Per template: its rate (records/s over ``window``) at each grid point, and since when the
        service has been logging (to tell a new template from a young history)."""
        grid = np.arange(start, end + step / 2, step)
        out = []
        with self._lock:
            first = self._first_record.get(service)
            if first is None:
                return []
            b = self.bucket_seconds
            span = max(1, round(max(window, step) / b))
            for t in self._templates.get(service, {}).values():
                counts = np.zeros(len(grid))
                for i, at in enumerate(grid):
                    last = int(at // b)
                    counts[i] = sum(t.buckets.get(k, 0) for k in range(last - span + 1, last + 1))
                rate = counts / (span * b)
                rate[grid < first] = np.nan  # no log of the service had arrived yet: no history
                out.append((t, rate, first))
        return out

    def snapshot(self, service: str) -> list[dict]:
        with self._lock:
            return [
                {
                    "id": t.id,
                    "template": t.text,
                    "severity": t.severity,
                    "first_seen": t.first_seen,
                    "count": t.total,
                    "examples": [e.__dict__ for e in t.examples],
                }
                for t in sorted(self._templates.get(service, {}).values(), key=lambda t: -t.total)
            ]

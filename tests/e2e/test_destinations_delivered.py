"""Destinations end to end: a native stack whose stack.yaml sends copies to an `otlp` destination
and (where the collector has the exporter) to an `elasticsearch` one, both local test doubles:

* OTLP: a second collector (the same otelcol-mlobs binary) receives OTLP/gRPC, as a vendor's
  endpoint would, and hands what it got as OTLP/JSON to a small HTTP recorder (test double);
  a second `otlp` destination over OTLP/HTTP with a secret header from .env goes to the recorder
  directly, which checks the header;
* Elasticsearch: a small HTTP server that answers like Elasticsearch and decodes `_bulk` requests
  (test double).

What arrives must carry the trace id and must be redacted (stack.yaml redaction masks
user.email): PII never leaves.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from harness import until

from mlobs import config
from mlobs.render import ROOT

pytestmark = pytest.mark.e2e

BIN = ROOT / ".bin" / "otelcol-mlobs"
OFFSET = 11000  # stack.yaml's ports + 11000: clear of the +10000 and +20000 test stacks, below 32768
STANDIN_GRPC, STANDIN_HEALTH, STANDIN_METRICS = 15517, 15533, 15588
TOKEN_VAR = "MLOBS_E2E_SINK_TOKEN"
EMAIL = "alice@example.com"


class Recorder:
    """Test double: an HTTP server that keeps every request (path, headers, body)."""

    def __init__(self, answer: Any = None) -> None:
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def _reply(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                # The Elasticsearch client refuses a server that does not say it is Elasticsearch.
                self.send_header("X-Elastic-Product", "Elasticsearch")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802 (the http.server API)
                self._reply(200, json.dumps({"version": {"number": "8.17.0", "build_flavor": "default"},
                                             "tagline": "You Know, for Search"}).encode(), "application/json")

            def do_HEAD(self) -> None:  # noqa: N802
                self._reply(200, b"", "application/json")

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.headers.get("Content-Encoding") == "gzip":
                    import gzip
                    body = gzip.decompress(body)
                recorder.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                if answer is not None:
                    code, out, ctype = answer(self.path, body)
                else:
                    code, out, ctype = 200, b"", self.headers.get("Content-Type") or "application/json"
                self._reply(code, out, ctype)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def _bulk_answer(path: str, body: bytes) -> tuple[int, bytes, str]:
    lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
    actions = lines[0::2]
    items = [{next(iter(a)): {"status": 201, "_index": a[next(iter(a))].get("_index", "")}} for a in actions]
    return 200, json.dumps({"took": 1, "errors": False, "items": items}).encode(), "application/json"


def bulk_documents(rec: Recorder) -> list[dict]:
    """The documents of every _bulk request: NDJSON, an action line then a document line."""
    docs = []
    for path, _, body in rec.requests:
        if path.split("?")[0].endswith("/_bulk"):
            lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
            docs += lines[1::2]
    return docs


def _exporters(binary: Path) -> set[str]:
    out = subprocess.run([str(binary), "components"], capture_output=True, text=True, timeout=60, check=True).stdout
    return {e["name"] for e in yaml.safe_load(out).get("exporters") or []}


def _wait(url: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).is_success:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} did not answer within {seconds}s")


@pytest.fixture(scope="module")
def doubles(tmp_path_factory: pytest.TempPathFactory):
    """The stand-in OTLP collector and the recorders it and the stack send to."""
    if not BIN.exists():
        pytest.skip(f"{BIN} is missing: `make native-deps` builds it")
    json_sink, direct_sink, es = Recorder(), Recorder(), Recorder(_bulk_answer)
    work = tmp_path_factory.mktemp("standin-collector")
    cfg = {
        "extensions": {"health_check": {"endpoint": f"127.0.0.1:{STANDIN_HEALTH}"}},
        "receivers": {"otlp": {"protocols": {"grpc": {"endpoint": f"127.0.0.1:{STANDIN_GRPC}"}}}},
        "exporters": {"otlp_http/recorder": {"endpoint": f"http://127.0.0.1:{json_sink.port}", "encoding": "json",
                                             "compression": "none"}},
        "service": {
            "extensions": ["health_check"],
            "telemetry": {"metrics": {"level": "none"}},
            "pipelines": {s: {"receivers": ["otlp"], "exporters": ["otlp_http/recorder"]} for s in ("traces", "logs")},
        },
    }
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))
    log = (work / "standin.log").open("w")
    proc = subprocess.Popen([str(BIN), f"--config={work / 'config.yaml'}"], stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait(f"http://127.0.0.1:{STANDIN_HEALTH}/")
        yield {"json": json_sink, "direct": direct_sink, "es": es, "es_ok": "elasticsearch" in _exporters(BIN),
               "log": work / "standin.log"}
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        for r in (json_sink, direct_sink, es):
            r.close()


@pytest.fixture(scope="module")
def stack_with_destinations(doubles, start_native_stack, tmp_path_factory):
    base = config._read(ROOT / "stack.yaml")
    data = config._merge(base, config._read(ROOT / "tests" / "stack.test.yaml"))
    test_ports = set(data["ports"].values()) | {v + 10000 for v in base["ports"].values()}
    data["ports"] = {k: v + OFFSET for k, v in base["ports"].items()}
    clash = {k: v for k, v in data["ports"].items() if v >= 32768 or v in test_ports
             or v in (STANDIN_GRPC, STANDIN_HEALTH, STANDIN_METRICS)}
    assert not clash, f"ports of the destinations stack clash: {clash}"
    data["destinations"] = {"otlp": [
        {"name": "standin", "protocol": "grpc", "endpoint": f"http://127.0.0.1:{STANDIN_GRPC}", "insecure": True,
         "signals": ["traces", "logs"]},
        {"name": "direct", "protocol": "http", "endpoint": f"http://127.0.0.1:{doubles['direct'].port}",
         "insecure": True, "secret_headers": {"x-sink-token": TOKEN_VAR}, "signals": ["logs"]},
    ]}
    if doubles["es_ok"]:
        data["destinations"]["elasticsearch"] = {"endpoint": f"http://127.0.0.1:{doubles['es'].port}",
                                                 "indices": {"logs": "mlobs-logs"}, "signals": ["logs"]}
    stack = config.parse(data, "stack.yaml + tests/stack.test.yaml + destinations")
    root = tmp_path_factory.mktemp("native-stack-destinations")
    token = secrets.token_urlsafe(16)
    (root / ".env").write_text(f"{TOKEN_VAR}={token}\n")
    with start_native_stack(stack, root) as running:
        rendered = (running.state.config_dir / "otel-collector" / "config.yaml").read_text()
        assert token not in rendered and "${env:" + TOKEN_VAR + "}" in rendered
        yield {"stack": stack, "token": token, "otlp_http": f"http://127.0.0.1:{stack.ports.otlp_http}"}


def _send(otlp_http: str, trace_id: str, span_id: str, marker: str) -> None:
    """One span and one log line of a service of ours, with a PII attribute the redaction masks."""
    now = time.time_ns()
    attrs = [{"key": "user.email", "value": {"stringValue": EMAIL}},
             {"key": "mlobs.e2e.marker", "value": {"stringValue": marker}}]
    resource = {"attributes": [{"key": "service.name", "value": {"stringValue": "destinations-e2e"}}]}
    spans = {"resourceSpans": [{"resource": resource, "scopeSpans": [{"spans": [{
        "traceId": trace_id, "spanId": span_id, "name": "POST /predict", "kind": 2,
        "startTimeUnixNano": str(now - 50_000_000), "endTimeUnixNano": str(now),
        "attributes": attrs, "status": {"code": 2}}]}]}]}
    logs = {"resourceLogs": [{"resource": resource, "scopeLogs": [{"logRecords": [{
        "timeUnixNano": str(now), "severityNumber": 17, "severityText": "ERROR",
        "body": {"stringValue": f"prediction failed {marker}"}, "traceId": trace_id, "spanId": span_id,
        "attributes": attrs}]}]}]}
    for path, body in (("/v1/traces", spans), ("/v1/logs", logs)):
        r = httpx.post(otlp_http + path, json=body, timeout=10)
        assert r.is_success, (path, r.status_code, r.text)


def _attrs(items: list[dict]) -> dict[str, str]:
    return {a["key"]: next(iter(a["value"].values())) for a in items}


def _received_json(rec: Recorder, marker: str) -> dict[str, list[dict]]:
    """Spans and log records of the marker that reached the recorder as OTLP/JSON."""
    out: dict[str, list[dict]] = {"spans": [], "logs": []}
    for _path, _, body in rec.requests:
        doc = json.loads(body)
        for rs in doc.get("resourceSpans", []):
            for ss in rs.get("scopeSpans", []):
                out["spans"] += [s for s in ss.get("spans", []) if _attrs(s.get("attributes", [])).get(
                    "mlobs.e2e.marker") == marker]
        for rl in doc.get("resourceLogs", []):
            for sl in rl.get("scopeLogs", []):
                out["logs"] += [lr for lr in sl.get("logRecords", []) if _attrs(lr.get("attributes", [])).get(
                    "mlobs.e2e.marker") == marker]
    return out


def test_otlp_destination_gets_redacted_spans_and_logs_with_their_trace_id(doubles, stack_with_destinations) -> None:
    trace_id, span_id, marker = secrets.token_hex(16), secrets.token_hex(8), secrets.token_hex(4)
    _send(stack_with_destinations["otlp_http"], trace_id, span_id, marker)
    got = until(lambda: (lambda r: r if r["spans"] and r["logs"] else None)(_received_json(doubles["json"], marker)),
                 90)
    assert got, (f"nothing of marker {marker} reached the stand-in collector's recorder "
                 f"({len(doubles['json'].requests)} requests); stand-in log:\n{doubles['log'].read_text()[-2000:]}")
    span, record = got["spans"][0], got["logs"][0]
    # OTLP/JSON writes the ids as hex
    assert span["traceId"].lower() == trace_id and record["traceId"].lower() == trace_id
    assert record["spanId"].lower() == span_id
    for what, item in (("span", span), ("log record", record)):
        value = _attrs(item["attributes"]).get("user.email")
        assert value is not None and value != EMAIL and set(value) == {"*"}, f"{what} left unredacted: {value!r}"
    raw = b"".join(body for _, _, body in doubles["json"].requests)
    assert EMAIL.encode() not in raw
    print(f"destinations e2e: otlp (gRPC to a second collector): span and log of trace {trace_id} arrived, "
          f"user.email={_attrs(record['attributes'])['user.email']}")


def test_otlp_http_destination_sends_the_secret_header_from_env(doubles, stack_with_destinations) -> None:
    from opentelemetry.proto.collector.logs.v1 import logs_service_pb2

    trace_id, span_id, marker = secrets.token_hex(16), secrets.token_hex(8), secrets.token_hex(4)
    _send(stack_with_destinations["otlp_http"], trace_id, span_id, marker)

    def found():
        for path, headers, body in doubles["direct"].requests:
            if path != "/v1/logs":
                continue
            req = logs_service_pb2.ExportLogsServiceRequest.FromString(body)
            for rl in req.resource_logs:
                for sl in rl.scope_logs:
                    for lr in sl.log_records:
                        attrs = {a.key: a.value.string_value for a in lr.attributes}
                        if attrs.get("mlobs.e2e.marker") == marker:
                            return headers, lr, attrs
        return None

    got = until(found, 90)
    assert got, f"no log of marker {marker} reached the direct recorder ({len(doubles['direct'].requests)} requests)"
    headers, record, attrs = got
    assert headers.get("x-sink-token") == stack_with_destinations["token"], "the secret header from .env"
    assert record.trace_id.hex() == trace_id
    assert attrs["user.email"] != EMAIL
    print(f"destinations e2e: otlp_http with a secret header: log of trace {trace_id} arrived, header matched")


def test_elasticsearch_destination_bulk_documents_are_redacted_with_trace_id(doubles, stack_with_destinations) -> None:
    if not doubles["es_ok"]:
        why = (f"{BIN} has no elasticsearch exporter: the Go module proxy refuses "
               "elasticsearchexporter v0.163.0 to v0.166.0 (403), so the native build cannot have it")
        print(f"SKIP: {why}")
        pytest.skip(why)
    trace_id, span_id, marker = secrets.token_hex(16), secrets.token_hex(8), secrets.token_hex(4)
    _send(stack_with_destinations["otlp_http"], trace_id, span_id, marker)

    def found():
        return [d for d in bulk_documents(doubles["es"]) if marker in json.dumps(d)]

    docs = until(found, 90)
    assert docs, f"no _bulk document of marker {marker} ({len(doubles['es'].requests)} requests)"
    doc = docs[0]
    assert doc.get("trace_id") == trace_id, doc
    assert EMAIL not in json.dumps(doc)
    print(f"destinations e2e: elasticsearch _bulk: document of trace {trace_id} arrived, redacted")


def test_the_doubles_decode_what_they_are_sent() -> None:
    """The _bulk decoder reads NDJSON action/document pairs; the recorder answers as Elasticsearch."""
    es = Recorder(_bulk_answer)
    try:
        body = b'{"create":{"_index":"mlobs-logs"}}\n{"trace_id":"ab","body":{"text":"x"}}\n'
        r = httpx.post(f"http://127.0.0.1:{es.port}/_bulk", content=body,
                       headers={"Content-Type": "application/x-ndjson"})
        assert r.json()["items"][0]["create"]["status"] == 201
        assert r.headers["x-elastic-product"] == "Elasticsearch"
        assert bulk_documents(es) == [{"trace_id": "ab", "body": {"text": "x"}}]
    finally:
        es.close()
    assert os.environ.get(TOKEN_VAR) is None, "the sink token must come from .env, not the test's environment"

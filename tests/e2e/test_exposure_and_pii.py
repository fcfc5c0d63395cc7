"""Exposure and PII on a real native stack of its own (stack.yaml's ports + 15500):

* ``otlp.expose.enabled``: the collector's second OTLP pair listens beyond loopback with TLS (a
  local CA and server certificate that mlobs made) and a bearer token. A client that trusts the CA
  and has the token is served, on gRPC and HTTP; one without the token, with a wrong one, without
  TLS or without the CA is refused. What the good client sent is in the trace store. Every other
  port stays on 127.0.0.1.
* PII by value (``redaction.blocked_value_patterns``): an email, a Luhn-valid card number and a
  bearer token, each sent through every signal (span attribute of an arbitrary key, span event,
  span status message, log body, log attribute, metric data point attribute) are read back from
  the real stores (Jaeger, VictoriaLogs, Prometheus), masked.
"""

from __future__ import annotations

import json
import secrets
import ssl
import time
from pathlib import Path

import httpx
import pytest
from harness import LOOPBACK, listening_sockets, until

from mlobs import config, exposure, stores
from mlobs.render import PII_MASK, ROOT

pytestmark = pytest.mark.e2e

OFFSET = 15500  # clear of the +10000 … +14000 and +20000 stacks, below 32768
EMAIL = "carol.pii@example.org"
CARD = "4111 1111 1111 1111"  # Luhn-valid test Visa number
BEARER = "Bearer eyJhbGciOiJIUzI1NiJ9.c2VjcmV0.Zm9v"
SECRET_BITS = (EMAIL, "4111 1111", "4111111111111111", "eyJhbGciOiJIUzI1NiJ9")
SERVICE = "pii-exposure-e2e"


def _luhn_ok(number: str) -> bool:
    digits = [int(c) for c in number if c.isdigit()][::-1]
    return sum(d if i % 2 == 0 else (d * 2 - 9 if d * 2 > 9 else d * 2) for i, d in enumerate(digits)) % 10 == 0


def _host_address() -> str:
    """A non-loopback IPv4 address of this host (what another host would dial), else 127.0.0.1."""
    return exposure.outgoing_address() or "127.0.0.1"


@pytest.fixture(scope="module")
def exposed(start_native_stack, tmp_path_factory):
    base = config._read(ROOT / "stack.yaml")
    data = config._merge(base, config._read(ROOT / "tests" / "stack.test.yaml"))
    others = {v + k for v in base["ports"].values() for k in (10000, 11000, 12000, 13000, 14000, 20000)}
    data["ports"] = {k: v + OFFSET for k, v in base["ports"].items()}
    clash = {k: v for k, v in data["ports"].items() if v >= 32768 or v in others}
    assert not clash, f"ports of the exposure stack clash: {clash}"
    data["otlp"] = {"expose": {"enabled": True, "address": "0.0.0.0"}}
    stack = config.parse(data, "stack.yaml + tests/stack.test.yaml + otlp.expose")
    root = tmp_path_factory.mktemp("native-stack-exposed")
    with start_native_stack(stack, root) as running:
        env = (root / ".env").read_text()
        token = next(line.split("=", 1)[1] for line in env.splitlines() if line.startswith(exposure.TOKEN_VAR + "="))
        certs = exposure.Certificates(running.state.root / "tls")
        rendered = (running.state.config_dir / "otel-collector" / "config.yaml").read_text()
        assert token not in rendered, "the token is written into the collector's config"
        yield {"stack": stack, "token": token, "certs": certs, "addr": _host_address(), "state": running.state}


def _span_body(trace_id: str, marker: str, status_message: str = "", event: dict | None = None,
               attrs: dict | None = None) -> dict:
    now = time.time_ns()
    span = {"traceId": trace_id, "spanId": secrets.token_hex(8), "name": "POST /exposed", "kind": 2,
            "startTimeUnixNano": str(now - 20_000_000), "endTimeUnixNano": str(now),
            "attributes": [{"key": k, "value": {"stringValue": v}} for k, v in {"mlobs.e2e.marker": marker,
                                                                                  **(attrs or {})}.items()]}
    if status_message:
        span["status"] = {"code": 2, "message": status_message}
    if event:
        span["events"] = [event]
    return {"resourceSpans": [{"resource": {"attributes": [
        {"key": "service.name", "value": {"stringValue": SERVICE}}]}, "scopeSpans": [{"spans": [span]}]}]}


def _tls_client(exp: dict, token: str | None, trust: bool = True) -> httpx.Client:
    ctx = ssl.create_default_context(cafile=str(exp["certs"].ca)) if trust else ssl.create_default_context()
    headers = {"authorization": f"Bearer {token}"} if token is not None else {}
    return httpx.Client(verify=ctx, headers=headers, timeout=10)


def test_exposed_http_receiver_serves_only_tls_clients_with_the_token(exposed) -> None:
    port = exposed["stack"].ports.otlp_http_tls
    url = f"https://{exposed['addr']}:{port}/v1/traces"
    trace_id, marker = secrets.token_hex(16), secrets.token_hex(4)
    outcomes = {}
    with _tls_client(exposed, exposed["token"]) as good:
        r = good.post(url, json=_span_body(trace_id, marker))
        outcomes["CA + token"] = r.status_code
        assert r.status_code == 200, r.text
    with _tls_client(exposed, None) as anonymous:
        outcomes["CA, no token"] = anonymous.post(url, json=_span_body(secrets.token_hex(16), marker)).status_code
    with _tls_client(exposed, "not-" + exposed["token"]) as wrong:
        outcomes["CA, wrong token"] = wrong.post(url, json=_span_body(secrets.token_hex(16), marker)).status_code
    assert outcomes["CA, no token"] == 401 and outcomes["CA, wrong token"] == 401, outcomes
    with _tls_client(exposed, exposed["token"], trust=False) as untrusting, pytest.raises(httpx.ConnectError):
        untrusting.post(url, json=_span_body(secrets.token_hex(16), marker))  # the CA is not in the system store
    outcomes["no CA"] = "TLS verify failed"
    with pytest.raises(httpx.HTTPError):  # plain HTTP to the TLS port: the server answers TLS only
        r = httpx.post(f"http://{exposed['addr']}:{port}/v1/traces", json=_span_body(secrets.token_hex(16), marker),
                       headers={"authorization": f"Bearer {exposed['token']}"}, timeout=5)
        r.raise_for_status()
    outcomes["plain HTTP"] = "refused"
    jaeger = stores.Jaeger(f"http://127.0.0.1:{exposed['stack'].ports.jaeger}")
    got = until(lambda: jaeger.trace(trace_id), 60)
    assert got and any(s.attributes.get("mlobs.e2e.marker") == marker for s in got), \
        f"the span sent with the token is not in Jaeger: {got}"
    print(f"exposed OTLP/HTTP at {exposed['addr']}:{port}: {outcomes}; the accepted span is in Jaeger")


def test_exposed_grpc_receiver_checks_the_token(exposed) -> None:
    import grpc
    from google.protobuf import json_format
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

    port = exposed["stack"].ports.otlp_grpc_tls
    creds = grpc.ssl_channel_credentials(root_certificates=exposed["certs"].ca.read_bytes())
    trace_id, marker = secrets.token_hex(16), secrets.token_hex(4)
    req = json_format.ParseDict(_span_body(trace_id, marker), trace_service_pb2.ExportTraceServiceRequest())
    # OTLP/JSON ids are hex, protobuf's are bytes
    span = req.resource_spans[0].scope_spans[0].spans[0]
    span.trace_id, span.span_id = bytes.fromhex(trace_id), bytes.fromhex(secrets.token_hex(8))
    with grpc.secure_channel(f"{exposed['addr']}:{port}", creds) as channel:
        stub = trace_service_pb2_grpc.TraceServiceStub(channel)
        stub.Export(req, metadata=[("authorization", f"Bearer {exposed['token']}")], timeout=10)
        with pytest.raises(grpc.RpcError) as refused:
            stub.Export(req, timeout=10)
        code = refused.value.code()
    assert code == grpc.StatusCode.UNAUTHENTICATED, code
    jaeger = stores.Jaeger(f"http://127.0.0.1:{exposed['stack'].ports.jaeger}")
    assert until(lambda: jaeger.trace(trace_id), 60), "the span sent over gRPC with the token is not in Jaeger"
    print(f"exposed OTLP/gRPC at {exposed['addr']}:{port}: token accepted, none -> {code.name}")


def test_only_the_exposed_pair_listens_beyond_loopback(exposed) -> None:
    listening = listening_sockets()
    ports = exposed["stack"].ports
    wide = {key: sorted(addrs) for key in type(ports).model_fields
            if (addrs := listening.get(getattr(ports, key))) and addrs - LOOPBACK}
    print(f"ports beyond loopback: {wide}")
    assert set(wide) == {"otlp_grpc_tls", "otlp_http_tls"}, wide
    # the loopback receiver is unchanged: no token, no TLS
    r = httpx.post(f"http://127.0.0.1:{ports.otlp_http}/v1/traces", json=_span_body(secrets.token_hex(16), "lo"),
                   timeout=10)
    assert r.status_code == 200, r.text


def _otlp_http(exposed: dict) -> str:
    return f"http://127.0.0.1:{exposed['stack'].ports.otlp_http}"


def test_pii_values_are_masked_on_every_signal(exposed) -> None:
    assert _luhn_ok(CARD), "the test card number must be Luhn-valid"
    base = _otlp_http(exposed)
    marker = secrets.token_hex(4)
    trace_id = secrets.token_hex(16)
    text = f"user {EMAIL} paid with {CARD}, header {BEARER}"
    event = {"timeUnixNano": str(time.time_ns()), "name": f"charge {CARD}",
             "attributes": [{"key": "exception.message", "value": {"stringValue": text}}]}
    spans = _span_body(trace_id, marker, status_message=f"refused for {EMAIL}", event=event,
                       attrs={"customer.note": text})  # a key no key pattern names
    assert httpx.post(base + "/v1/traces", json=spans, timeout=10).status_code == 200
    now = time.time_ns()
    logs = {"resourceLogs": [{"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": SERVICE}}]},
                              "scopeLogs": [{"logRecords": [{
                                  "timeUnixNano": str(now), "severityNumber": 9, "severityText": "INFO",
                                  "body": {"stringValue": f"{marker} {text}"}, "traceId": trace_id,
                                  "attributes": [{"key": "mlobs.e2e.marker", "value": {"stringValue": marker}},
                                                 {"key": "free.text", "value": {"stringValue": text}}]}]}]}]}
    assert httpx.post(base + "/v1/logs", json=logs, timeout=10).status_code == 200
    metrics = {"resourceMetrics": [{"resource": {"attributes": [
        {"key": "service.name", "value": {"stringValue": SERVICE}}]}, "scopeMetrics": [{"metrics": [{
            "name": "mlobs_e2e_pii_probe", "gauge": {"dataPoints": [{
                "timeUnixNano": str(now), "asDouble": 1.0,
                "attributes": [{"key": "marker", "value": {"stringValue": marker}},
                               {"key": "customer", "value": {"stringValue": EMAIL}}]}]}}]}]}]}
    assert httpx.post(base + "/v1/metrics", json=metrics, timeout=10).status_code == 200

    found: dict[str, str] = {}
    jaeger = stores.Jaeger(f"http://127.0.0.1:{exposed['stack'].ports.jaeger}")
    spans_got = until(lambda: jaeger.trace(trace_id), 60)
    assert spans_got, "the span is not in Jaeger"
    raw_trace = httpx.get(f"{jaeger.base}/api/v3/traces/{trace_id}", timeout=10).text
    found["trace (Jaeger)"] = raw_trace
    vl = stores.VictoriaLogs(f"http://127.0.0.1:{exposed['stack'].ports.victorialogs}")
    lines = until(lambda: [ln for ln in vl.lines(SERVICE) if marker in ln.body], 60)
    assert lines, "the log line is not in VictoriaLogs"
    found["log (VictoriaLogs)"] = json.dumps([[ln.body, ln.attributes] for ln in lines])
    prom = f"http://127.0.0.1:{exposed['stack'].ports.prometheus}"

    def series():
        r = httpx.get(f"{prom}/api/v1/series", params={"match[]": f'{{marker="{marker}"}}'}, timeout=10)
        return r.json().get("data") if r.is_success else None

    got_series = until(series, 60)
    assert got_series, "the metric point is not in Prometheus"
    found["metric (Prometheus)"] = json.dumps(got_series)
    leaks = {where: [b for b in SECRET_BITS if b in text_] for where, text_ in found.items()}
    masked = {where: text_.count(PII_MASK) for where, text_ in found.items()}
    print(f"PII e2e: leaks {leaks}; masks seen {masked}")
    assert not any(leaks.values()), f"PII reached a store: {leaks}"
    assert all(masked.values()), f"a store shows no mask at all (was the value dropped instead?): {masked}"
    # each place a value was sent is masked, not dropped
    span = next(s for s in spans_got if s.attributes.get("mlobs.e2e.marker") == marker)
    assert "****" in span.attributes["customer.note"], span.attributes
    assert "****" in lines[0].body, lines[0].body


def test_certificates_are_private_and_cover_this_host(exposed) -> None:
    from cryptography import x509

    certs = exposed["certs"]
    for key in (certs.key, certs.ca_key):
        assert (key.stat().st_mode & 0o777) == 0o600, f"{key} is {oct(key.stat().st_mode & 0o777)}"
    cert = x509.load_pem_x509_certificate(Path(certs.cert).read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    ips = {str(a) for a in san.get_values_for_type(x509.IPAddress)}
    assert "127.0.0.1" in ips and (exposed["addr"] in ips or exposed["addr"] == "127.0.0.1"), ips

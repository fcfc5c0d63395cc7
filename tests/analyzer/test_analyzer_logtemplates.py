"""Log templates (drain3) from OTLP/HTTP logs, as candidate causes; the HTML report; events and exemplars."""

from __future__ import annotations

import gzip

from analyzer_fakes import JOB, NOW, FakePrometheus, alert, fault_errors_inference, healthy, payload
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

from analyzer.logtemplates import TemplateBook

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def export(service: str, lines: list[tuple[float, str, str, str]]) -> bytes:
    req = ExportLogsServiceRequest()
    rl = req.resource_logs.add()
    rl.resource.attributes.append(KeyValue(key="service.name", value=AnyValue(string_value=service)))
    sl = rl.scope_logs.add()
    for at, severity, body, trace in lines:
        sl.log_records.append(
            LogRecord(
                time_unix_nano=int(at * 1e9),
                severity_text=severity,
                body=AnyValue(string_value=body),
                trace_id=bytes.fromhex(trace) if trace else b"",
            )
        )
    return req.SerializeToString()


def history(service: str = JOB) -> list[tuple[float, str, str, str]]:
    """An hour of ordinary lines, then 5 minutes of a new error."""
    lines = [(NOW - 3900 + 10 * i, "WARN", f"invalid request req-{i:06x}: 3 features missing", "") for i in range(390)]
    lines += [
        (NOW - 240 + 2 * i, "ERROR", f"prediction failed for request req-{i:06x}: InjectedError in stage inference",
         TRACE if i % 10 == 0 else "")
        for i in range(120)
    ]
    return lines


def test_drain_groups_lines_that_differ_only_in_ids_and_numbers() -> None:
    book = TemplateBook(clock=lambda: NOW)
    for i in range(20):
        book.add("svc", f"prediction failed for request req-{i:06x} after {i * 3}ms", severity="ERROR", at=NOW)
    book.add("svc", "model version 2 deployed", severity="INFO", at=NOW)
    snap = book.snapshot("svc")
    assert len(snap) == 2
    assert snap[0]["count"] == 20 and "<*>" in snap[0]["template"] or "<" in snap[0]["template"]


def test_otlp_logs_in_gzip_protobuf_become_templates(make_client) -> None:
    client = make_client(healthy())
    body = gzip.compress(export(JOB, history()))
    r = client.post("/v1/logs", content=body,
                    headers={"content-type": "application/x-protobuf", "content-encoding": "gzip"})
    assert r.status_code == 200
    templates = client.get("/templates", params={"service": JOB}).json()
    assert {t["severity"] for t in templates} == {"WARN", "ERROR"}
    error = next(t for t in templates if t["severity"] == "ERROR")
    assert error["count"] == 120 and any(e["trace_id"] == TRACE for e in error["examples"])
    assert client.post("/v1/logs", content=b"\xff\x00garbage").status_code == 400


def test_a_new_error_template_is_a_candidate_with_its_examples(make_client) -> None:
    client = make_client(fault_errors_inference())
    client.post("/v1/logs", content=export(JOB, history()), headers={"content-type": "application/x-protobuf"})
    client.post("/alerts", json=payload(alert("MLErrorRatioHigh")))
    incident = client.get("/incidents/a1b2c3d4e5f60718").json()
    assert incident["top_suspect"]["kind"] == "errors", "the span's errors stay the top suspect"
    found = [f for f in incident["findings"] if f["kind"] == "log_template"]
    assert found, [f["kind"] for f in incident["findings"]]
    assert "InjectedError" in found[0]["subject"]
    assert "new: first seen" in found[0]["evidence"] and f"trace_id={TRACE}" in found[0]["evidence"]


def test_a_template_alone_can_be_the_top_suspect_and_links_the_log_rate(make_client) -> None:
    """Nothing but a new error template moved (the detector once failed on this: no PromQL of its own)."""
    client = make_client(healthy())
    client.post("/v1/logs", content=export(JOB, history()), headers={"content-type": "application/x-protobuf"})
    client.post("/alerts", json=payload(alert("MLErrorRatioHigh")))
    incident = client.get("/incidents/a1b2c3d4e5f60718").json()
    assert incident["top_suspect"]["kind"] == "log_template", [f["kind"] for f in incident["findings"]]
    assert incident["links"]["promql"].startswith("sum by (severity_text) (rate(log_records_total{")


def test_no_template_finding_without_a_change(make_client) -> None:
    client = make_client(healthy())
    steady = [(NOW - 3900 + 10 * i, "WARN", f"invalid request req-{i:06x}: 3 features missing", "") for i in range(390)]
    client.post("/v1/logs", content=export(JOB, steady))
    client.post("/alerts", json=payload(alert()))
    incident = client.get("/incidents/a1b2c3d4e5f60718").json()
    assert not [f for f in incident["findings"] if f["kind"] == "log_template"]


class ExemplarPrometheus(FakePrometheus):
    def query_exemplars(self, expr: str, start: float, end: float):
        assert "ml_fault_active" not in expr
        self.asked.append(expr)
        return [({"span_name": "inference"}, [
            {"labels": {"trace_id": TRACE}, "value": "0.81", "timestamp": NOW - 30},
            {"labels": {"trace_id": "ab" * 16}, "value": "0.02", "timestamp": NOW - 20},
        ])]

    def query(self, expr: str, at: float):
        if "increase(ml_model_deployments_total" in expr:
            from analyzer.prometheus import Sample

            return [Sample({"ml_model_version": "2"}, 1.0)]
        return super().query(expr, at)


def test_events_and_exemplars_are_evidence_and_the_report_is_self_contained(make_client) -> None:
    client = make_client(prometheus=ExemplarPrometheus(fault_errors_inference()))
    client.post("/alerts", json=payload(alert("MLErrorRatioHigh")))
    incident = client.get("/incidents/a1b2c3d4e5f60718").json()
    assert [x["trace_id"] for x in incident["exemplars"]] == [TRACE, "ab" * 16], "the slowest first"
    assert TRACE in incident["exemplars"][0]["url"]
    assert incident["events"] and incident["events"][0]["kind"] == "deployment"
    r = client.get("/incidents/a1b2c3d4e5f60718/report.html")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    page = r.text
    assert "data:image/png;base64," in page, "a plot of the top signal"
    assert TRACE in page and "errors" in page
    assert "<script src=" not in page and "<link " not in page, "no external asset"
    assert client.get("/incidents/nope/report.html").status_code == 404


def test_the_incidents_command_prints_a_table(make_client, monkeypatch) -> None:
    from typer.testing import CliRunner

    from mlobs import cli

    client = make_client(fault_errors_inference())
    client.post("/alerts", json=payload(alert("MLErrorRatioHigh")))
    listed = client.get("/incidents").json()

    class Answer:
        def raise_for_status(self) -> None: ...

        def json(self):
            return listed

    monkeypatch.setattr(cli.httpx, "get", lambda *a, **k: Answer())
    result = CliRunner().invoke(cli.app, ["incidents", "--url", "http://analyzer:8010"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "a1b2c3d4e5f60718" in result.output and "errors" in result.output and "firing" in result.output

"""The Prometheus client against a fake HTTP API; the PromQL against the real promtool where it is built."""

from __future__ import annotations

import math
import subprocess
import urllib.parse
from pathlib import Path

import httpx
import pytest
import yaml
from support import need_binary

from analyzer import rca
from analyzer.prometheus import PrometheusClient, PrometheusError
from analyzer.settings import Settings


def _client(handler) -> PrometheusClient:
    return PrometheusClient("http://prometheus:9090/", transport=httpx.MockTransport(handler))


def _form(request: httpx.Request) -> dict[str, str]:
    return dict(urllib.parse.parse_qsl(request.content.decode()))


def test_query_range_lands_on_the_grid_with_gaps_as_nan() -> None:
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.method, request.url.path, _form(request)))
        result = [{"metric": {"ml_stage": "inference"}, "values": [[100, "0.5"], [160, "NaN"], [280, "+Inf"]]}]
        return httpx.Response(200, json={"status": "success", "data": {"resultType": "matrix", "result": result}})

    [series] = _client(handler).query_range("up", 100, 280, 60)
    assert seen == [
        ("POST", "/api/v1/query_range", {"query": "up", "start": "100.000", "end": "280.000", "step": "60"})
    ]
    assert series.labels == {"ml_stage": "inference"}
    assert series.values[0] == 0.5
    assert all(math.isnan(v) for v in series.values[1:3])
    assert series.values[3] == math.inf


def test_instant_query_reads_vectors_and_scalars() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if _form(request)["query"] == "1":
            data = {"resultType": "scalar", "result": [100, "1"]}
        else:
            data = {"resultType": "vector", "result": [{"metric": {"ml_model_version": "2"}, "value": [100, "3"]}]}
        return httpx.Response(200, json={"status": "success", "data": data})

    client = _client(handler)
    assert [(s.labels, s.value) for s in client.query("x", 100)] == [({"ml_model_version": "2"}, 3.0)]
    assert [(s.labels, s.value) for s in client.query("1", 100)] == [({}, 1.0)]


def test_a_refused_query_raises_with_prometheus_reason() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"status": "error", "errorType": "bad_data", "error": "parse error at char 3"})

    with pytest.raises(PrometheusError, match="bad_data: parse error at char 3"):
        _client(handler).query("sum(", 1)


def test_an_unreachable_prometheus_raises_and_is_not_ready() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    client = _client(handler)
    with pytest.raises(PrometheusError, match="did not answer"):
        client.query_range("up", 0, 60, 60)
    assert client.ready() is False


def test_settings_come_from_the_environment() -> None:
    assert Settings.from_env({}) == Settings()
    s = Settings.from_env(
        {
            "MLOBS_ANALYZER_HOST": "0.0.0.0",
            "MLOBS_ANALYZER_PORT": "18010",
            "MLOBS_PROMETHEUS_URL": "http://prometheus:9090",
            "MLOBS_GRAFANA_URL": "http://grafana:3000",
            "GRAFANA_ADMIN_PASSWORD": "pw",
            "MLOBS_GRAFANA_TOKEN": "",
            "MLOBS_GRAFANA_PUBLIC_URL": "http://127.0.0.1:3000",
        }
    )
    assert (s.host, s.port, s.prometheus_url, s.grafana_url) == (
        "0.0.0.0",
        18010,
        "http://prometheus:9090",
        "http://grafana:3000",
    )
    assert (s.grafana_user, s.grafana_password, s.grafana_token) == ("admin", "pw", None)
    assert s.grafana_public_url == "http://127.0.0.1:3000"
    with pytest.raises(ValueError, match="MLOBS_ANALYZER_PORT='eighty'"):
        Settings.from_env({"MLOBS_ANALYZER_PORT": "eighty"})


@pytest.mark.native
def test_every_query_parses_in_the_real_promtool(tmp_path: Path) -> None:
    promtool = need_binary("promtool")
    targets = [rca.Target("mlobs-inference", "breast-cancer-classifier", "1"), rca.Target(None, None, None)]
    rules = [
        {"record": f"analyzer:check_{name}:{i}", "expr": expr}
        for i, target in enumerate(targets)
        for name, expr in rca.promql(target).items()
    ]
    path = tmp_path / "analyzer-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "analyzer", "rules": rules}]}))
    r = subprocess.run([str(promtool), "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr

"""Grafana, where it runs: every provisioned datasource is healthy, every dashboard loads, and
every panel query returns data after load (through Grafana's own query API)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from cases import requests
from harness import StackUnderTest, require

from mlobs import render

pytestmark = pytest.mark.e2e
DASHBOARDS = sorted((render.ROOT / "grafana" / "dashboards").glob("*.json"))
UIDS = ("prometheus", "loki", "tempo", "alertmanager")


@pytest.fixture(scope="module")
def grafana(sut: StackUnderTest) -> httpx.Client:
    require(sut, ("grafana",))
    requests(20, seed=61)(sut)
    return httpx.Client(base_url=sut.url("grafana"), auth=("admin", sut.grafana_password), timeout=30)


@pytest.mark.parametrize("uid", UIDS)
def test_datasource_is_healthy(grafana: httpx.Client, uid: str) -> None:
    r = grafana.get(f"/api/datasources/uid/{uid}/health")
    assert r.status_code == 200 and r.json().get("status") == "OK", r.text


@pytest.mark.parametrize("path", DASHBOARDS, ids=[p.stem for p in DASHBOARDS])
def test_dashboard_loads_and_every_panel_returns_data(grafana: httpx.Client, path: Path) -> None:
    uid = json.loads(path.read_text())["uid"]
    r = grafana.get(f"/api/dashboards/uid/{uid}")
    assert r.status_code == 200, f"dashboard {uid} not provisioned: {r.text}"
    empty = []
    for panel in r.json()["dashboard"].get("panels", []):
        for target in panel.get("targets", []):
            ds = target.get("datasource") or panel.get("datasource") or {}
            if ds.get("uid") not in ("prometheus", "loki"):
                continue
            query = {**target, "datasource": ds, "refId": target.get("refId", "A")}
            body = {"queries": [query], "from": "now-30m", "to": "now"}
            resp = grafana.post("/api/ds/query", json=body)
            frames = resp.json().get("results", {}).get(query["refId"], {}).get("frames", [])
            if resp.status_code != 200 or not any(f.get("data", {}).get("values") for f in frames):
                empty.append(f"{panel.get('title')}: {target.get('expr')}")
    assert not empty, "panels without data: " + "; ".join(empty)

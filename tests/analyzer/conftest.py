"""Fixtures of the analyzer tests: a fake Grafana and a test client over a fake Prometheus."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator

import pytest
from analyzer_fakes import NOW, FakeGrafana, FakePrometheus, World, healthy

from analyzer.app import create_app
from analyzer.settings import Settings

with warnings.catch_warnings():
    # Starlette 1.x nudges TestClient users towards httpx2; the pinned stack has httpx.
    warnings.filterwarnings("ignore", message="Using `httpx` with")
    from fastapi.testclient import TestClient


@pytest.fixture
def grafana() -> FakeGrafana:
    return FakeGrafana()


@pytest.fixture
def make_client(grafana: FakeGrafana) -> Iterator[Callable[..., TestClient]]:
    clients: list[TestClient] = []

    def make(world: World | None = None, *, prometheus=None, annotator=None, telemetry=None, **settings) -> TestClient:
        app = create_app(
            Settings(grafana_url="http://grafana:3000", **settings),
            prometheus=prometheus or FakePrometheus(world or healthy()),
            grafana=annotator or grafana.annotator(),
            telemetry=telemetry,
            clock=lambda: NOW,
        )
        client = TestClient(app)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()

"""Shared fixtures: in-memory telemetry, a trained model directory, a test client."""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from generator.feature_store import SimulatedFeatureStore, patient_id
from generator.model import FEATURE_NAMES, ONLINE_FEATURES, load_dataset
from generator.service import create_app
from generator.telemetry import SERVICE_INFERENCE, Telemetry, setup_telemetry
from generator.train import train_version
from mlobs import sampling

with warnings.catch_warnings():
    # Starlette 1.x nudges TestClient users towards httpx2; the pinned stack has httpx.
    warnings.filterwarnings("ignore", message="Using `httpx` with")
    from fastapi.testclient import TestClient

ADMIN_TOKEN = "test-admin-token"
ADMIN = {"X-Admin-Token": ADMIN_TOKEN}


def _online_row(row: int) -> dict:
    values = load_dataset().features[row]
    features = {n: float(v) for n, v in zip(FEATURE_NAMES, values, strict=True) if n in ONLINE_FEATURES}
    return {"patient_id": patient_id(row), "features": features}


def _full_row(row: int) -> dict:
    values = load_dataset().features[row]
    return {"features": {n: float(v) for n, v in zip(FEATURE_NAMES, values, strict=True)}}


@pytest.fixture
def online_row():
    """A request body for dataset row N: its online features; the worst_* come from the store."""
    return _online_row


@pytest.fixture
def full_row():
    """A request body with all 30 features of dataset row N and no patient (no lookup)."""
    return _full_row


@dataclass
class Captured:
    telemetry: Telemetry
    spans: InMemorySpanExporter
    metrics: InMemoryMetricReader
    logs: InMemoryLogRecordExporter

    def span(self, name: str):
        found = [s for s in self.spans.get_finished_spans() if s.name == name]
        assert found, f"no span {name!r}; have {[s.name for s in self.spans.get_finished_spans()]}"
        return found[-1]

    def collect(self) -> dict[str, list]:
        """Data points by metric name. Collect once per check: exemplars reset at every collection."""
        data = self.metrics.get_metrics_data()
        out: dict[str, list] = {}
        for resource_metrics in data.resource_metrics if data else []:
            for scope in resource_metrics.scope_metrics:
                for metric in scope.metrics:
                    out.setdefault(metric.name, []).extend(metric.data.data_points)
        return out


@pytest.fixture
def sampling_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """The MLOBS_SAMPLING_* / MLOBS_TRACE_DETAIL variables the service starts with: none (every
    trace kept), unless a test parametrizes this fixture indirectly."""
    return getattr(request, "param", {})


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch, sampling_env: dict[str, str]) -> Iterator[Captured]:
    for var in ("OTEL_SDK_DISABLED", "OTEL_TRACES_SAMPLER", "OTEL_RESOURCE_ATTRIBUTES", "OTEL_SERVICE_NAME",
                sampling.ENV_PERCENTAGE, sampling.ENV_SLOW_MS, sampling.ENV_KEEP_ERRORS, sampling.ENV_TRACE_DETAIL):
        monkeypatch.delenv(var, raising=False)
    for var, value in sampling_env.items():
        monkeypatch.setenv(var, value)
    spans = InMemorySpanExporter()
    reader = InMemoryMetricReader()
    logs = InMemoryLogRecordExporter()
    telemetry = setup_telemetry(
        SERVICE_INFERENCE,
        span_exporter=spans,
        metric_readers=[reader],
        log_exporter=logs,
        set_global=False,
        system_metrics=False,
    )
    yield Captured(telemetry, spans, reader, logs)
    telemetry.shutdown()


@pytest.fixture(scope="session")
def trained_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Version 1, trained once per test session with telemetry off."""
    directory = tmp_path_factory.mktemp("models-template")
    quiet = setup_telemetry(
        SERVICE_INFERENCE, span_exporter=InMemorySpanExporter(), set_global=False, system_metrics=False
    )
    train_version(directory, quiet, seed=0)
    quiet.shutdown()
    return directory


@pytest.fixture
def model_dir(trained_models: Path, tmp_path: Path) -> Path:
    directory = tmp_path / "models"
    shutil.copytree(trained_models, directory)
    return directory


@pytest.fixture
def admin() -> dict[str, str]:
    """Headers that pass the admin endpoints' check."""
    return dict(ADMIN)


@pytest.fixture
def make_client(captured: Captured, model_dir: Path):
    """Start an app on ``model_dir`` with in-memory telemetry; the signals of start-up are cleared."""

    @contextmanager
    def start(admin_token: str | None = ADMIN_TOKEN, poll_seconds: float = 0) -> Iterator[TestClient]:
        app = create_app(
            captured.telemetry,
            directory=model_dir,
            poll_seconds=poll_seconds,
            admin_token=admin_token or "",
            store=SimulatedFeatureStore(latency_ms=0.5, seed=1),
        )
        with TestClient(app) as test_client:
            captured.spans.clear()
            captured.logs.clear()
            yield test_client

    return start


@pytest.fixture
def client(make_client) -> Iterator[TestClient]:
    with make_client() as test_client:
        yield test_client

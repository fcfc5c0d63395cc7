"""Issue 14, security defaults on the docker compose stack, where Grafana, Loki and Tempo run: every
published port is bound to 127.0.0.1, Grafana lets no anonymous visitor in and takes only the
generated password, and no container's log holds a generated secret.

These run in the users' CI workflow (.github/workflows/e2e.yml: `make up RUNTIME=docker`, then
`make e2e`, which sets MLOBS_E2E_EXISTING=1); elsewhere they are skipped with the reason printed.
The native stack's counterparts are in test_security_live.py.
"""

from __future__ import annotations

import json
import os

import httpx
import pytest
from harness import LOOPBACK, StackUnderTest

from mlobs.runtime import docker

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def compose_sut(request: pytest.FixtureRequest) -> StackUnderTest:
    if os.environ.get("MLOBS_E2E_EXISTING") != "1":
        reason = ("Grafana, Loki and Tempo run only in the docker compose stack: these cases run in "
                  ".github/workflows/e2e.yml (make up RUNTIME=docker; make e2e); natively see test_security_live.py")
        print(f"SKIP reason: {reason}")
        pytest.skip(reason)
    ok, why = docker.engine_answers()
    if not ok:
        print(f"SKIP reason: {why}")
        pytest.skip(why)
    return request.getfixturevalue("sut")


def containers() -> list[dict]:
    """`docker compose ps --format json`: one JSON object per line (or one array, by version)."""
    out = docker.compose_output("ps", "--all", "--format", "json").strip()
    if out.startswith("["):
        return json.loads(out)
    return [json.loads(line) for line in out.splitlines() if line.strip().startswith("{")]


def test_every_published_port_is_on_loopback(compose_sut: StackUnderTest) -> None:
    found = containers()
    assert found, "docker compose ps lists no container of the stack"
    published = [(c["Service"], p.get("URL", ""), p.get("PublishedPort", 0))
                 for c in found for p in c.get("Publishers") or [] if p.get("PublishedPort")]
    print(f"published ports: {published}")
    assert published, "no container publishes a port"
    beyond = [p for p in published if p[1] not in LOOPBACK]
    assert not beyond, f"ports published beyond loopback: {beyond}"


def test_grafana_refuses_anonymous_and_wrong_passwords(compose_sut: StackUnderTest) -> None:
    if not compose_sut.has("grafana"):
        pytest.fail(f"Grafana does not answer in the compose stack: {compose_sut.why_missing('grafana')}")
    base = compose_sut.url("grafana")
    assert len(compose_sut.grafana_password) >= 16, "the generated Grafana password is missing or short"
    anonymous = httpx.get(f"{base}/api/search", timeout=10)
    wrong = httpx.get(f"{base}/api/search", auth=("admin", "admin"), timeout=10)
    right = httpx.get(f"{base}/api/search", auth=("admin", compose_sut.grafana_password), timeout=10)
    print(f"grafana /api/search: anonymous {anonymous.status_code}, admin:admin {wrong.status_code}, "
          f"generated password {right.status_code}")
    assert anonymous.status_code == 401, anonymous.text[:200]
    assert wrong.status_code == 401, wrong.text[:200]
    assert right.status_code == 200, right.text[:200]


def test_no_container_log_holds_a_secret(compose_sut: StackUnderTest) -> None:
    for _ in range(3):
        compose_sut.predict({"patient_id": "P00001"})
    compose_sut.admin("GET")
    logs = docker.compose_output("logs", "--no-color", timeout=300)
    assert logs.strip(), "docker compose logs printed nothing"
    secrets = {"GRAFANA_ADMIN_PASSWORD": compose_sut.grafana_password, "MLOBS_ADMIN_TOKEN": compose_sut.admin_token}
    assert all(len(v) >= 16 for v in secrets.values()), "the .env secrets are missing or short"
    found = [name for name, value in secrets.items() if value in logs]
    print(f"secrets grep over docker compose logs ({len(logs) / 1e6:.1f} MB): {found or 'none found'}")
    assert not found, f"secrets in the container logs: {found}"

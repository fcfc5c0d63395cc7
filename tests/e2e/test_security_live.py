"""Security defaults on the running native stack: every listening socket of the stack is on
127.0.0.1 (so Prometheus' --web.enable-lifecycle and Alertmanager's API are unreachable from any
other host), and the generated secrets never appear in a log file."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import httpx
import pytest
from harness import LOOPBACK, StackUnderTest
from harness import listening_sockets as _listening

from mlobs import components

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def native_state(request: pytest.FixtureRequest):
    if os.environ.get("MLOBS_E2E_EXISTING") == "1":
        reason = "MLOBS_E2E_EXISTING=1: the stack's sockets and log files are not this session's to read"
        print(f"SKIP reason: {reason}")
        pytest.skip(reason)
    return request.getfixturevalue("native_stack").state


def test_every_port_of_the_stack_listens_on_loopback_only(sut: StackUnderTest, native_state) -> None:
    listening = _listening()
    if not listening:
        reason = "/proc/net/tcp is not readable here"
        print(f"SKIP reason: {reason}")
        pytest.skip(reason)
    ports = {key: getattr(sut.stack.ports, key) for key in type(sut.stack.ports).model_fields}
    checked, wide = {}, {}
    for key, port in ports.items():
        addrs = listening.get(port)
        if not addrs:
            continue  # that component does not run natively here (Tempo, Loki, Grafana without binaries)
        checked[key] = sorted(addrs)
        if addrs - LOOPBACK:
            wide[key] = sorted(addrs)
    print(f"listening stack ports: {checked}")
    assert {"prometheus", "alertmanager", "otlp_grpc", "otlp_http", "inference", "analyzer"} <= set(checked)
    assert not wide, f"ports listening beyond loopback: {wide}"


def test_prometheus_lifecycle_and_alertmanager_api_answer_on_loopback_only(sut: StackUnderTest, native_state) -> None:
    """They answer on 127.0.0.1 (so the test above is about the real sockets), and on no other
    address of this host."""
    import socket

    assert httpx.get(f"{sut.url('prometheus')}/-/ready", timeout=5).is_success
    assert httpx.get(f"{sut.url('alertmanager')}/api/v2/status", timeout=5).is_success
    others = set()
    with contextlib.suppress(OSError):
        others = {a[4][0] for a in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)} - {"127.0.0.1"}
    others = {a for a in others if not a.startswith("127.")}
    if not others:
        print("this host has no non-loopback IPv4 address: the socket check above is the proof")
    for addr in sorted(others):
        for key in ("prometheus", "alertmanager"):
            with pytest.raises(httpx.HTTPError):
                httpx.get(f"http://{addr}:{getattr(sut.stack.ports, key)}/-/ready", timeout=3)
        print(f"{addr}: Prometheus and Alertmanager refuse connections")


def test_the_secrets_never_appear_in_a_log_file(sut: StackUnderTest, native_state) -> None:
    # some traffic first, admin calls included, so the logs hold requests that carried the token
    for _ in range(3):
        sut.predict({"patient_id": "P00001"})
    sut.admin("GET")
    files = sorted(Path(native_state.log_dir).glob("*.log*"))
    assert files, f"no log files under {native_state.log_dir}"
    secrets = {"GRAFANA_ADMIN_PASSWORD": sut.grafana_password, "MLOBS_ADMIN_TOKEN": sut.admin_token}
    assert all(len(v) >= 16 for v in secrets.values()), "the .env secrets are missing or short"
    found = {name: [f.name for f in files if value.encode() in f.read_bytes()] for name, value in secrets.items()}
    print(f"secrets grep over {len(files)} log files ({sum(f.stat().st_size for f in files) / 1e6:.1f} MB): {found}")
    assert not any(found.values()), f"secrets in the logs: {found}"
    programs = [components.program_name(c, sut.stack) for c in components.REGISTRY]
    assert any(f.stem in programs for f in files), [f.name for f in files]

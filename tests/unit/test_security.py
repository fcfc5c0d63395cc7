"""Security defaults, proven on the rendered files: every port binds 127.0.0.1 in both rendered
targets (compose `ports:`, native flags and configs), Prometheus' lifecycle API and Alertmanager's
API listen on loopback only, the admin token is compared in constant time, and .env is 0600 from
the moment it holds a secret. (tests/e2e/test_security_live.py checks the running stack's sockets and logs.)"""

from __future__ import annotations

import ast
import inspect
import os
import re
import stat
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from mlobs import components, config, envfile, render
from mlobs.runtime import native

ROOT = Path(__file__).resolve().parents[2]
STACK = config.load(ROOT / "stack.yaml")
LOOPBACK = ("127.0.0.1", "localhost")
WIDE = re.compile(r"0\.0\.0\.0|\[::\]|(?<![\w.:])::(?![\w:])")


def _native() -> tuple[render.Target, dict[str, str], dict[str, dict]]:
    target = render.native_target(STACK, render.BACKENDS)
    files = render.render(target)
    plan = native.Plan(present={c.name: Path(f"/opt/bin/{c.binaries[0]}") for c in components.REGISTRY if c.binaries})
    secrets = dict.fromkeys(envfile.SECRETS, "x" * 32)
    progs = native.programs(STACK, native.State(root=Path("/tmp/mlobs-sec")), plan, target, secrets)
    return target, files, progs


def test_compose_publishes_every_port_on_loopback_only() -> None:
    compose = yaml.safe_load(render.render(render.compose_target(STACK))["compose/docker-compose.yml"])
    published = {name: svc.get("ports", []) for name, svc in compose["services"].items()}
    flat = [(name, p) for name, ports in published.items() for p in ports]
    assert len(flat) >= 8, published
    wide = [(name, p) for name, p in flat if not str(p).startswith("127.0.0.1:")]
    assert not wide, f"published beyond loopback: {wide}"
    for name, svc in compose["services"].items():
        assert svc.get("network_mode") != "host", f"{name} shares the host's network"


def test_every_stack_port_has_a_compose_mapping_on_loopback() -> None:
    compose = yaml.safe_load(render.render(render.compose_target(STACK))["compose/docker-compose.yml"])
    host_ports = {int(str(p).split(":")[1]) for svc in compose["services"].values() for p in svc.get("ports", [])}
    for key in ("prometheus", "alertmanager", "otlp_grpc", "otlp_http", "inference", "analyzer", "grafana"):
        assert getattr(STACK.ports, key) in host_ports, key


def _addresses(text: str, ports: set[int]) -> list[str]:
    """Every host:port in `text` whose port is one the stack uses."""
    return [m.group(0) for m in re.finditer(r"([\w.\-]+|\[[0-9a-f:]*\]):(\d{2,5})\b", text)
            if int(m.group(2)) in ports]


def test_native_flags_configs_and_env_bind_loopback_only() -> None:
    _, files, progs = _native()
    ports = {getattr(STACK.ports, k) for k in type(STACK.ports).model_fields} | {7946, 8889}
    seen = 0
    for name, text in files.items():
        assert not WIDE.search(text), f"{name} binds every interface: {WIDE.search(text).group(0)!r}"
        for address in _addresses(text, ports):
            seen += 1
            assert address.rsplit(":", 1)[0] in LOOPBACK, f"{name}: {address}"
    for name, prog in progs.items():
        text = " ".join(prog["command"]) + " " + " ".join(f"{k}={v}" for k, v in prog["environment"].items())
        assert not WIDE.search(text), f"program {name} binds every interface"
        for address in _addresses(text, ports):
            seen += 1
            assert address.rsplit(":", 1)[0] in LOOPBACK, f"program {name}: {address}"
        for key, value in prog["environment"].items():
            if key.endswith(("_HOST", "_ADDR")):
                assert value in LOOPBACK, f"program {name}: {key}={value}"
    assert seen >= 20, f"only {seen} addresses found: the scan is not looking"


def _walk(node: Any, path: str = "") -> list[tuple[str, Any]]:
    if isinstance(node, dict):
        return [kv for k, v in node.items() for kv in _walk(v, f"{path}.{k}")]
    if isinstance(node, list):
        return [kv for i, v in enumerate(node) for kv in _walk(v, f"{path}[{i}]")]
    return [(path, node)]


def test_every_listen_key_of_the_native_configs_is_loopback() -> None:
    _, files, _ = _native()
    keys = re.compile(r"(listen_address|bind_addr(\[\d+\])?|instance_addr|\.host|endpoint)$")
    found = []
    for name, text in files.items():
        for docs in yaml.safe_load_all(text):
            for path, value in _walk(docs):
                if keys.search(path) and isinstance(value, str) and not value.startswith(("http", "/", "$")):
                    found.append((name, path, value))
                    assert value.rsplit(":", 1)[0] in LOOPBACK or value in LOOPBACK, (name, path, value)
    assert any("loki" in f[0] for f in found) and any("otel-collector" in f[0] for f in found), found


def test_prometheus_lifecycle_and_alertmanager_api_listen_on_loopback_only() -> None:
    _, _, progs = _native()
    prom = progs["prometheus"]["command"]
    assert "--web.enable-lifecycle" in prom  # /-/reload, /-/quit: so its listener must be loopback
    assert f"--web.listen-address=127.0.0.1:{STACK.ports.prometheus}" in prom
    am = progs["alertmanager"]["command"]
    assert f"--web.listen-address=127.0.0.1:{STACK.ports.alertmanager}" in am
    assert "--cluster.listen-address=" in am, "Alertmanager's gossip port (9094 on every interface) is off"
    compose = yaml.safe_load(render.render(render.compose_target(STACK))["compose/docker-compose.yml"])
    for svc in ("prometheus", "alertmanager"):
        assert compose["services"][svc]["ports"] == [f"127.0.0.1:{getattr(STACK.ports, svc)}:"
                                                     f"{components.get(svc).ports[0].container}"]
    assert "--cluster.listen-address=" in compose["services"]["alertmanager"]["command"]


# ---- the admin token -------------------------------------------------------------------------------


def test_the_admin_token_is_compared_in_constant_time() -> None:
    from generator import service

    source = textwrap.dedent(inspect.getsource(service.create_app))
    tree = ast.parse(source)
    check = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "require_admin")
    calls = [ast.unparse(n.func) for n in ast.walk(check) if isinstance(n, ast.Call)]
    assert any(c in ("hmac.compare_digest", "secrets.compare_digest") for c in calls), calls
    compares = [ast.unparse(n) for n in ast.walk(check) if isinstance(n, ast.Compare)
                and any(isinstance(op, ast.Eq | ast.NotEq) for op in n.ops)]
    assert not [c for c in compares if "token" in c], f"a token compared with ==: {compares}"


@pytest.mark.parametrize(("header", "status"), [
    (None, 401), ("wrong", 401), ("test-admin-token-but-longer", 401), ("t\u00e9st", 401), ("test-admin-token", 200)])
def test_the_admin_check_answers_401_never_500(header: str | None, status: int, tmp_path: Path) -> None:
    import warnings

    from generator.feature_store import SimulatedFeatureStore
    from generator.service import create_app
    from mlobs.contract import SERVICE_INFERENCE
    from mlobs.telemetry import disabled

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Using `httpx` with")
        from fastapi.testclient import TestClient
    app = create_app(disabled(SERVICE_INFERENCE), directory=tmp_path, poll_seconds=0, admin_token="test-admin-token",
                     store=SimulatedFeatureStore(latency_ms=0))
    headers = {} if header is None else {"X-Admin-Token": header.encode("utf-8")}
    # non-ASCII: compare_digest on str raised TypeError, a 500
    response = TestClient(app, raise_server_exceptions=False).get("/admin/faults", headers=headers)
    assert response.status_code == status, response.text


# ---- .env ------------------------------------------------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_env_file_is_0600_from_the_first_byte(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = tmp_path / ".env"
    modes: list[int] = []
    real_open = os.open

    def spy_open(path: Any, flags: int, mode: int = 0o777, *args: Any, **kwargs: Any) -> int:
        fd = real_open(path, flags, mode, *args, **kwargs)
        if Path(path) == env:  # the file's mode at the moment it is opened for the secrets
            modes.append(stat.S_IMODE(os.fstat(fd).st_mode))
        return fd

    monkeypatch.setattr(os, "open", spy_open)
    old = os.umask(0o022)
    try:
        values, added = envfile.ensure(env)
    finally:
        os.umask(old)
    assert set(added) == set(envfile.SECRETS)
    assert _mode(env) == 0o600
    assert modes and set(modes) == {0o600}, f"modes when opened for writing: {[oct(m) for m in modes]}"
    assert all(f"{k}={v}" in env.read_text() for k, v in values.items())


def test_an_existing_env_file_is_narrowed_to_0600(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text("GRAFANA_ADMIN_PASSWORD=kept\n")
    env.chmod(0o644)
    values, added = envfile.ensure(env)
    assert added == ["MLOBS_ADMIN_TOKEN", "MLOBS_OTLP_TOKEN"] and values["GRAFANA_ADMIN_PASSWORD"] == "kept"
    assert _mode(env) == 0o600
    env.chmod(0o666)
    assert envfile.ensure(env)[1] == []
    assert _mode(env) == 0o600

"""Loki and Tempo configs: every key known to the pinned version, the settings OTLP logs and
the correlation contract need, retention from stack.yaml, and native ports that never clash.

Neither program runs here, so the keys are checked with ../shared/tools/check-config-keys
against the configuration reference of Loki 3.7.6 and Tempo 3.0.3 (both refuse unknown keys
at start). A clone without the shared folder skips those checks and says why.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from mlobs import config, render

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
CHECKER = SHARED / "tools" / "check-config-keys"
KEYS = {
    "loki": SHARED / "data" / "loki-3.7.6-config-keys.json",
    "tempo": SHARED / "data" / "tempo-3.0.3-config-keys.json",
}
TEMPLATES = {"loki": "loki/config.yaml.j2", "tempo": "tempo/config.yaml.j2"}
OUTPUTS = {"loki": "loki/config.yaml", "tempo": "tempo/config.yaml"}
BACKENDS = tuple(TEMPLATES)
# keys under which a config binds a port; `endpoint` is a receiver's host:port
BIND_PORT_KEYS = {"http_listen_port", "grpc_listen_port", "bind_port"}
BIND_ENDPOINT_KEYS = {"endpoint"}


def load_stack() -> config.Stack:
    return config.load(REPO / "stack.yaml")


def targets(stack: config.Stack, tmp: Path) -> dict[str, render.Target]:
    return {
        "compose": render.compose_target(stack),
        "native": render.native_target(stack, render.BACKENDS, out_dir=tmp / "native", data_dir=tmp / "data"),
    }


def render_text(target: render.Target, backend: str) -> str:
    tpl = TEMPLATES[backend]
    body = render.environment().get_template(tpl).render(render.context(target))
    return render.header_line(tpl) + body


def render_doc(target: render.Target, backend: str) -> dict[str, Any]:
    return yaml.safe_load(render_text(target, backend))


def run_checker(backend: str, path: Path) -> subprocess.CompletedProcess[str]:
    if not CHECKER.exists() or not KEYS[backend].exists():
        pytest.skip(f"{CHECKER} or {KEYS[backend].name} is absent (only CI has ../shared beside the clone)")
    return subprocess.run(
        [sys.executable, str(CHECKER), str(KEYS[backend]), str(path)],
        capture_output=True,
        text=True,
        check=False,
    )


def walk(node: Any, path: str = "") -> list[tuple[str, Any]]:
    """Every (dotted path, leaf value) of a parsed YAML document."""
    if isinstance(node, dict):
        return [item for k, v in node.items() for item in walk(v, f"{path}.{k}" if path else str(k))]
    if isinstance(node, list):
        return [item for i, v in enumerate(node) for item in walk(v, f"{path}[{i}]")]
    return [(path, node)]


def bound_ports(doc: dict[str, Any]) -> list[tuple[int, str]]:
    """The ports a config makes its program listen on, with the key that sets each."""
    found = []
    for path, value in walk(doc):
        key = re.sub(r"\[\d+\]$", "", path).rsplit(".", 1)[-1]
        if key in BIND_PORT_KEYS:
            found.append((int(value), path))
        elif key in BIND_ENDPOINT_KEYS:
            found.append((int(str(value).rsplit(":", 1)[1]), path))
    return found


@pytest.fixture(scope="module")
def stack() -> config.Stack:
    return load_stack()


@pytest.fixture(scope="module")
def docs(stack: config.Stack, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("backends")
    return {
        f"{name}/{backend}": render_doc(target, backend)
        for name, target in targets(stack, tmp).items()
        for backend in BACKENDS
    }


# --- every key known to the pinned version ---------------------------------------------------


@pytest.mark.parametrize("target_name", ["compose", "native"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_every_key_is_in_the_reference(backend: str, target_name: str, stack: config.Stack, tmp_path: Path) -> None:
    target = targets(stack, tmp_path)[target_name]
    path = tmp_path / f"{backend}.yaml"
    path.write_text(render_text(target, backend))
    result = run_checker(backend, path)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("backend", "section", "bad_key"),
    [("loki", "limits_config", "retention_peroid"), ("tempo", "backend_worker", "compactoin")],
)
def test_checker_catches_a_misspelt_key(
    backend: str, section: str, bad_key: str, stack: config.Stack, tmp_path: Path
) -> None:
    doc = render_doc(render.compose_target(stack), backend)
    doc[section][bad_key] = "1h"
    path = tmp_path / f"{backend}-bad.yaml"
    path.write_text(yaml.safe_dump(doc))
    result = run_checker(backend, path)
    assert result.returncode == 1
    assert f"{section}.{bad_key}" in result.stdout


# --- what OTLP logs and the correlation contract need from Loki ------------------------------


@pytest.mark.parametrize("target_name", ["compose", "native"])
def test_loki_stores_otlp_logs_with_structured_metadata(target_name: str, docs: dict[str, Any]) -> None:
    loki = docs[f"{target_name}/loki"]
    periods = loki["schema_config"]["configs"]
    assert periods[-1]["schema"] == "v13"
    assert periods[-1]["store"] == "tsdb"
    assert loki["limits_config"]["allow_structured_metadata"] is True


@pytest.mark.parametrize("target_name", ["compose", "native"])
def test_loki_indexes_service_name_and_no_instance_id(target_name: str, docs: dict[str, Any]) -> None:
    otlp = docs[f"{target_name}/loki"]["limits_config"]["otlp_config"]["resource_attributes"]
    indexed = {
        attr for rule in otlp["attributes_config"] if rule["action"] == "index_label" for attr in rule["attributes"]
    }
    assert "service.name" in indexed
    # with the defaults ignored, only the listed attributes become labels
    assert otlp["ignore_defaults"] is True
    assert "service.instance.id" not in indexed


def test_loki_retention_is_done_by_the_compactor(docs: dict[str, Any]) -> None:
    loki = docs["compose/loki"]
    assert loki["compactor"]["retention_enabled"] is True
    assert loki["compactor"]["delete_request_store"] == "filesystem"


def test_loki_is_single_tenant_with_reporting_off(docs: dict[str, Any]) -> None:
    loki = docs["compose/loki"]
    assert loki["auth_enabled"] is False
    assert loki["analytics"]["reporting_enabled"] is False


def test_tempo_receives_otlp_grpc_with_generator_and_reporting_off(docs: dict[str, Any]) -> None:
    tempo = docs["compose/tempo"]
    assert tempo["distributor"]["receivers"] == {"otlp": {"protocols": {"grpc": {"endpoint": "0.0.0.0:4317"}}}}
    assert "metrics_generator" not in tempo  # the collector makes span metrics
    assert tempo["usage_report"]["reporting_enabled"] is False
    # Tempo 3 removed these blocks and refuses to start with them
    assert not {"ingester", "compactor", "ingester_client", "metrics_generator_client"} & set(tempo)


# --- retention from stack.yaml ---------------------------------------------------------------


def retention(docs: dict[str, dict[str, Any]], target_name: str) -> dict[str, Any]:
    loki, tempo = docs[f"{target_name}/loki"], docs[f"{target_name}/tempo"]
    return {
        "loki": loki["limits_config"]["retention_period"],
        "tempo_worker": tempo["backend_worker"]["compaction"]["block_retention"],
        "tempo_scheduler": tempo["backend_scheduler"]["provider"]["compaction"]["compaction"]["block_retention"],
    }


def test_retention_comes_from_stack_yaml(stack: config.Stack, docs: dict[str, Any], tmp_path: Path) -> None:
    assert retention(docs, "compose") == {
        "loki": stack.retention.loki,
        "tempo_worker": stack.retention.tempo,
        "tempo_scheduler": stack.retention.tempo,
    }
    changed = stack.model_copy(update={"retention": config.Retention(loki="72h", tempo="12h")})
    for name, target in targets(changed, tmp_path).items():
        rendered = {f"{name}/{b}": render_doc(target, b) for b in BACKENDS}
        assert retention(rendered, name) == {"loki": "72h", "tempo_worker": "12h", "tempo_scheduler": "12h"}


# --- native: loopback only, and no two listeners on one port ----------------------------------


def test_native_ports_never_clash(stack: config.Stack, docs: dict[str, Any]) -> None:
    owners: dict[int, list[str]] = {}
    for backend in BACKENDS:
        for port, where in bound_ports(docs[f"native/{backend}"]):
            owners.setdefault(port, []).append(f"{backend}: {where}")
    # everything else on the host, from stack.yaml (the collector's four ports among them)
    for field, port in stack.ports.model_dump().items():
        if not field.startswith(BACKENDS):
            owners.setdefault(port, []).append(f"stack.ports.{field}")
    clashes = {port: who for port, who in owners.items() if len(who) > 1}
    assert not clashes, f"ports bound twice natively: {clashes}"
    for key in ("otlp_grpc", "otlp_http", "collector_health", "collector_metrics"):
        assert getattr(stack.ports, key) in owners


def test_native_ports_come_from_stack_yaml(stack: config.Stack, docs: dict[str, Any]) -> None:
    loki, tempo = docs["native/loki"], docs["native/tempo"]
    assert loki["server"]["http_listen_port"] == stack.ports.loki
    assert loki["server"]["grpc_listen_port"] == stack.ports.loki_grpc
    assert tempo["server"]["http_listen_port"] == stack.ports.tempo
    assert tempo["server"]["grpc_listen_port"] == stack.ports.tempo_grpc
    assert tempo["distributor"]["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"] == (
        f"127.0.0.1:{stack.ports.tempo_otlp_grpc}"
    )


def test_native_listens_on_loopback_only(docs: dict[str, Any]) -> None:
    for backend in BACKENDS:
        for path, value in walk(docs[f"native/{backend}"]):
            key = re.sub(r"\[\d+\]$", "", path).rsplit(".", 1)[-1]
            if key in {"http_listen_address", "grpc_listen_address", "bind_addr"}:
                assert value == "127.0.0.1", f"{backend}: {path} = {value}"
            elif key in BIND_ENDPOINT_KEYS:
                assert str(value).startswith("127.0.0.1:"), f"{backend}: {path} = {value}"


def test_only_tempo_gossips(docs: dict[str, Any]) -> None:
    """Loki's in-memory ring never starts memberlist, so 7946 natively belongs to Tempo alone."""
    loki = docs["native/loki"]
    assert loki["common"]["ring"]["kvstore"]["store"] == "inmemory"
    assert "memberlist" not in loki


# --- the committed defaults are what render produces -----------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_committed_config_matches_render(backend: str, stack: config.Stack) -> None:
    committed = REPO / OUTPUTS[backend]
    assert committed.read_text() == render_text(render.compose_target(stack), backend), (
        f"{OUTPUTS[backend]} is stale: run `mlobs render`"
    )

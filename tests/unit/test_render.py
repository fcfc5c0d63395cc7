"""Rendering: both targets, the committed defaults, and the collector's internal consistency."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mlobs import config, render
from mlobs.cli import SCHEMA, _schema_text
from mlobs.nativebuild import otelcol_manifest_components

ROOT = render.ROOT
STACK = config.load(ROOT / "stack.yaml")
KINDS = ("receivers", "processors", "connectors", "exporters", "extensions")


def compose_files() -> dict[str, str]:
    return render.render(render.compose_target(STACK))


def native_files(present: tuple[str, ...], tmp: Path) -> dict[str, str]:
    return render.render(render.native_target(STACK, present, tmp / "native", tmp / "data"))


def test_committed_defaults_equal_a_fresh_render() -> None:
    files = compose_files()
    files[str(SCHEMA.relative_to(ROOT))] = _schema_text()
    assert render.drift(files, ROOT) == [], "run `make render` and commit the result"


def test_drift_is_detected(tmp_path: Path) -> None:
    files = compose_files()
    render.write(files, tmp_path)
    assert render.drift(files, tmp_path) == []
    (tmp_path / "prometheus/prometheus.yml").write_text("edited by hand\n")
    assert render.drift(files, tmp_path) == ["prometheus/prometheus.yml"]


def test_render_is_deterministic_and_write_is_idempotent(tmp_path: Path) -> None:
    assert compose_files() == compose_files()
    assert render.write(compose_files(), tmp_path)
    assert render.write(compose_files(), tmp_path) == [], "a second render changes nothing"


@pytest.mark.parametrize("present", [render.BACKENDS, ("prometheus",), ("prometheus", "alertmanager")])
def test_every_rendered_yaml_parses(tmp_path: Path, present: tuple[str, ...]) -> None:
    for files in (compose_files(), native_files(present, tmp_path)):
        for rel, text in files.items():
            assert isinstance(yaml.safe_load(text), dict), rel


def test_native_target_binds_and_dials_loopback_only(tmp_path: Path) -> None:
    for rel, text in native_files(render.BACKENDS, tmp_path).items():
        assert "0.0.0.0" not in text, rel
        for host in ("otel-collector:", "prometheus:9090", "loki:3100", "tempo:3200", "alertmanager:9093"):
            assert f"//{host}" not in text and f" {host}" not in text, f"{rel} dials the compose name {host}"


def test_compose_validates_against_the_compose_specification() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
         str(ROOT / "compose" / "docker-compose.yml")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_compose_schema_check_catches_a_bad_file(tmp_path: Path) -> None:
    bad = tmp_path / "docker-compose.yml"
    bad.write_text("services:\n  x:\n    image: 3\n    ports: {a: b}\n")
    r = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
                        str(bad)], capture_output=True, text=True)
    assert r.returncode != 0


def test_compose_publishes_only_on_loopback_with_healthchecks_and_limits() -> None:
    doc = yaml.safe_load(compose_files()["compose/docker-compose.yml"])
    probed = {"otel-collector": "otel-collector-ready", "loki": "loki-ready", "tempo": "tempo-ready"}
    for name, svc in doc["services"].items():
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond this host"
        if name == "volume-init":
            continue
        assert "mem_limit" in svc and "logging" in svc, name
        assert "healthcheck" in svc or probed.get(name) in doc["services"], f"{name} has no healthcheck"
        for dep, cond in svc.get("depends_on", {}).items():
            assert dep in doc["services"], f"{name} depends on unknown {dep}"
            if dep != "volume-init" and not dep.endswith("-ready") or name.endswith("-ready"):
                assert cond["condition"] in ("service_healthy", "service_started"), (name, dep)
            if not name.endswith("-ready") and dep != "volume-init":
                assert cond["condition"] == "service_healthy", f"{name} must wait for {dep} to be healthy"
    assert set(doc["volumes"]) >= {"prometheus-data", "loki-data", "tempo-data", "grafana-data"}


def test_compose_has_no_secret_and_anonymous_access_is_viewer_at_most() -> None:
    text = compose_files()["compose/docker-compose.yml"]
    env = yaml.safe_load(text)["services"]["grafana"]["environment"]
    assert env["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD:?")
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert env["GF_PLUGINS_PREINSTALL_DISABLED"] == "true"


def _components(doc: dict) -> dict[str, set[str]]:
    return {kind: set(doc.get(kind) or {}) for kind in KINDS}


def _check_pipelines(doc: dict) -> list[str]:
    """Every pipeline names only defined components; every defined component is used."""
    problems = []
    defined = _components(doc)
    service = doc["service"]
    used: dict[str, set[str]] = {k: set() for k in KINDS}
    used["extensions"] = set(service.get("extensions", []))
    for name, p in service["pipelines"].items():
        for kind in ("receivers", "processors", "exporters"):
            for comp in p.get(kind, []):
                pool = "connectors" if comp in defined["connectors"] and kind != "processors" else kind
                if comp not in defined[pool]:
                    problems.append(f"pipeline {name} names undefined {kind[:-1]} {comp}")
                used[pool].add(comp)
    for kind in KINDS:
        for comp in defined[kind] - used[kind]:
            problems.append(f"{kind[:-1]} {comp} is defined but not used")
    return problems


@pytest.mark.parametrize("present", [render.BACKENDS, ("prometheus",), ("prometheus", "loki")])
def test_collector_pipelines_are_consistent(tmp_path: Path, present: tuple[str, ...]) -> None:
    for files in (compose_files(), native_files(present, tmp_path)):
        doc = yaml.safe_load(files["otel-collector/config.yaml"])
        assert _check_pipelines(doc) == []


def test_pipeline_check_catches_an_unused_and_an_undefined_component() -> None:
    doc = yaml.safe_load(compose_files()["otel-collector/config.yaml"])
    doc["processors"]["attributes/unused"] = {}
    doc["service"]["pipelines"]["logs"]["exporters"].append("otlp_http/nowhere")
    problems = _check_pipelines(doc)
    assert "processor attributes/unused is defined but not used" in problems
    assert any("otlp_http/nowhere" in p for p in problems)


def test_connectors_feed_metrics_before_tail_sampling() -> None:
    pipes = yaml.safe_load(compose_files()["otel-collector/config.yaml"])["service"]["pipelines"]
    assert "tail_sampling" not in pipes["traces"]["processors"]
    assert {"span_metrics", "servicegraph"} <= set(pipes["traces"]["exporters"])
    assert "tail_sampling" in pipes["traces/sampled"]["processors"]
    assert pipes["metrics"]["processors"][0] == "memory_limiter"


def test_native_exports_only_to_backends_that_run(tmp_path: Path) -> None:
    doc = yaml.safe_load(native_files(("prometheus",), tmp_path)["otel-collector/config.yaml"])
    # and the analyzer's copy of the logs (log templates): the analyzer always runs.
    assert set(doc["exporters"]) == {"otlp_http/prometheus", "otlp_http/analyzer"}
    assert "traces/sampled" not in doc["service"]["pipelines"]
    full = yaml.safe_load(native_files(render.BACKENDS, tmp_path)["otel-collector/config.yaml"])
    assert {"otlp_grpc/tempo", "otlp_http/loki"} <= set(full["exporters"])


def test_builder_manifest_lists_exactly_the_native_components(tmp_path: Path) -> None:
    manifest = otelcol_manifest_components(ROOT / "otel-collector" / "builder-config.yaml")
    # the default config, and the one with the exposed receivers (their bearer-token authenticator)
    exposed = config.parse(config._merge(config._read(ROOT / "stack.yaml"), {"otlp": {"expose": {"enabled": True}}}))
    in_config: dict[str, set[str]] = {k: set() for k in KINDS}
    for stack in (STACK, exposed):
        target = render.native_target(stack, render.BACKENDS, tmp_path / "native", tmp_path / "data")
        doc = yaml.safe_load(render.render(target)["otel-collector/config.yaml"])
        for k, v in _components(doc).items():
            in_config[k] |= {c.split("/")[0] for c in v}
    assert in_config == {k: set(manifest.get(k, set())) for k in KINDS}
    compose = yaml.safe_load(compose_files()["otel-collector/config.yaml"])
    compose_types = {c.split("/")[0] for v in _components(compose).values() for c in v}
    manifest_types = {c for v in manifest.values() for c in v}
    assert compose_types - manifest_types == set(render.NATIVE_MISSING), "only documented gaps"


def test_extra_exporters_join_their_pipelines(tmp_path: Path) -> None:
    data = yaml.safe_load((ROOT / "stack.yaml").read_text())
    data["extra_exporters"] = [{"name": "otlp_http/vendor", "signals": ["traces", "logs"],
                                "config": {"endpoint": "https://otlp.example.com"}}]
    target = render.compose_target(config.parse(data))
    doc = yaml.safe_load(render.render(target)["otel-collector/config.yaml"])
    pipes = doc["service"]["pipelines"]
    assert doc["exporters"]["otlp_http/vendor"] == {"endpoint": "https://otlp.example.com"}
    assert "otlp_http/vendor" in pipes["traces/sampled"]["exporters"]
    assert "otlp_http/vendor" in pipes["logs"]["exporters"]
    assert "otlp_http/vendor" not in pipes["metrics"]["exporters"]


def test_stack_values_reach_the_configs() -> None:
    data = yaml.safe_load((ROOT / "stack.yaml").read_text())
    data["sampling"]["percentage"] = 7
    data["retention"]["prometheus"] = "3d"
    data["ports"]["grafana"] = 3300
    files = render.render(render.compose_target(config.parse(data)))
    from mlobs import sampling

    assert f'>= \\"{sampling.threshold_hex(7)}\\"' in files["otel-collector/config.yaml"]
    assert "--storage.tsdb.retention.time=3d" in files["compose/docker-compose.yml"]
    assert "127.0.0.1:3300:3000" in yaml.safe_load(files["compose/docker-compose.yml"])["services"]["grafana"]["ports"]


def test_memory_limiter_comes_from_stack_yaml() -> None:
    from mlobs import kubernetes

    data = yaml.safe_load((ROOT / "stack.yaml").read_text())
    data["collector"] = {"memory_limiter": {"limit_mib": 96, "spike_limit_mib": 24}}
    stack = config.parse(data)
    doc = yaml.safe_load(render.render(render.compose_target(stack))["otel-collector/config.yaml"])
    assert doc["processors"]["memory_limiter"] == {"check_interval": "1s", "limit_mib": 96, "spike_limit_mib": 24}
    # the gateway of the Kubernetes renders derives from the same template
    gateway = kubernetes.render_files(stack)["otel-collector.yaml"]
    assert "limit_mib: 96" in gateway and "spike_limit_mib: 24" in gateway

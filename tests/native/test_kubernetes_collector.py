"""The collector configs of both Kubernetes tiers (mlobs/kubernetes.py), checked by the real collector.

The native collector (.bin/otelcol-mlobs) is built with the components of
otel-collector/builder-config.yaml only: it has neither the ``k8s_attributes`` processor of the agent
nor the ``load_balancing`` exporter that routes the agent's spans to the gateways. So:

* each tier is validated by ``otelcol validate`` with those two components taken out and nothing
  else changed: ``k8s_attributes`` is dropped from the processors and the pipelines, and
  ``load_balancing`` is replaced by an ``otlp_grpc`` exporter made of its own ``protocol.otlp``,
  queue, retry and timeout settings (the very keys its sub-exporters take), aimed at its resolver's
  host and port; the gateway is config.yaml with gateway.yaml merged over it, as the pod runs it,
  rendered without the servicegraph connector that the native build lacks (render.NATIVE_MISSING);
* the keys of those two components are checked against their config.schema.yaml in the contrib
  module of the newest version the Go module proxy serves (v0.162.0 to v0.166.0 answer 403 like
  servicegraph's: load_balancing v0.161.0, k8s_attributes v0.160.0); subtrees that refer to the
  collector core's configs (``protocol.otlp``, ``retry_on_failure``, ``sending_queue``) are the
  otlp exporter's and are checked by the real binary above.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from support import need_binary

from mlobs import config, kubernetes, render

pytestmark = pytest.mark.native
ROOT = render.ROOT
STACK = config.load(ROOT / "stack.yaml")
CONTRIB = "github.com/open-telemetry/opentelemetry-collector-contrib"
#: The newest versions the Go module proxy serves (v0.162.0 to v0.166.0: 403 "not available").
SCHEMAS = {
    "load_balancing": (f"{CONTRIB}/exporter/loadbalancingexporter", "v0.161.0"),
    "k8s_attributes": (f"{CONTRIB}/processor/k8sattributesprocessor", "v0.160.0"),
}
STRIPPED = ("k8s_attributes", "load_balancing")


def run(*cmd: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def tiers() -> dict[str, str]:
    return kubernetes.collector_configs(STACK, frozenset(render.NATIVE_MISSING))


def strip(agent: dict[str, Any]) -> dict[str, Any]:
    """The agent config without the two components the native build lacks (see the module doc)."""
    doc = json.loads(json.dumps(agent))
    del doc["processors"]["k8s_attributes"]
    lb = doc["exporters"].pop("load_balancing")
    dns = lb["resolver"]["dns"]
    rest = {k: v for k, v in lb.items() if k not in ("protocol", "resolver", "routing_key")}
    doc["exporters"]["otlp_grpc/standin"] = {**lb["protocol"]["otlp"], **rest,
                                                    "endpoint": f"{dns['hostname']}:{dns['port']}"}
    for p in doc["service"]["pipelines"].values():
        p["processors"] = [x for x in p["processors"] if x != "k8s_attributes"]
        p["exporters"] = ["otlp_grpc/standin" if x == "load_balancing" else x for x in p["exporters"]]
    return doc


def validate(tmp_path: Path, *docs: str) -> subprocess.CompletedProcess[str]:
    otelcol = need_binary("otelcol-mlobs")
    args = []
    for i, text in enumerate(docs):
        path = tmp_path / f"config-{i}.yaml"
        path.write_text(text)
        args.append(f"--config={path}")
    return run(otelcol, "validate", *args, env={kubernetes.POD_NAME_ENV: "otel-gateway-0"})


def test_the_stripped_agent_uses_no_other_component_the_native_build_lacks(tiers: dict[str, str]) -> None:
    agent = yaml.safe_load(tiers["agent.yaml"])
    stripped = strip(agent)
    assert not any(s in json.dumps(stripped) for s in STRIPPED)
    # the rest is untouched
    assert stripped["receivers"] == agent["receivers"] and stripped["extensions"] == agent["extensions"]
    assert {k: v for k, v in stripped["processors"].items()} == {
        k: v for k, v in agent["processors"].items() if k != "k8s_attributes"}


def test_the_agent_validates_with_the_real_collector(tiers: dict[str, str], tmp_path: Path) -> None:
    r = validate(tmp_path, yaml.safe_dump(strip(yaml.safe_load(tiers["agent.yaml"]))))
    assert r.returncode == 0, r.stderr


def test_the_gateway_validates_with_the_real_collector(tiers: dict[str, str], tmp_path: Path) -> None:
    r = validate(tmp_path, tiers["config.yaml"], tiers["gateway.yaml"])
    assert r.returncode == 0, r.stderr


def test_the_gateway_overlay_is_really_merged_and_checked(tiers: dict[str, str], tmp_path: Path) -> None:
    broken = tiers["gateway.yaml"].replace('"transform/gateway", "batch"', '"transform/gatewya", "batch"')
    assert broken != tiers["gateway.yaml"]
    r = validate(tmp_path, tiers["config.yaml"], broken)
    assert r.returncode != 0 and "transform/gatewya" in r.stderr


def test_a_broken_stand_in_is_refused(tiers: dict[str, str], tmp_path: Path) -> None:
    doc = strip(yaml.safe_load(tiers["agent.yaml"]))
    doc["exporters"]["otlp_grpc/standin"]["sending_queue"]["queue_sise"] = 1
    assert validate(tmp_path, yaml.safe_dump(doc)).returncode != 0


# --- the keys of the two components, against their config.schema.yaml -----------------------


def module_dir(module: str, version: str, tmp_path: Path) -> Path:
    go = shutil.which("go")
    if go is None:
        if os.environ.get("CI") == "true":
            pytest.fail("go is not on PATH (CI builds the native collector with it)")
        pytest.skip("go is not on PATH: it fetches the contrib modules whose config schemas are checked")
    r = run(go, "mod", "download", "-json", f"{module}@{version}")
    info = json.loads(r.stdout or "{}")
    if "Dir" not in info:
        pytest.fail(f"go mod download {module}@{version}: {info.get('Error', r.stderr)}")
    return Path(info["Dir"])


class Schemas:
    """config.schema.yaml of a contrib module and of the modules its $refs name. A subtree that is
    a collector core config (``protocol.otlp``, ``retry_on_failure``, ``sending_queue``) is not walked:
    it is the otlp exporter's, which the real binary checks; the keys a core config mixes in at the
    component's own level (``allOf``, e.g. ``timeout``) are known, from the core module's schema."""

    def __init__(self, module: str, version: str, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.dirs: dict[str, Path] = {module: module_dir(module, version, tmp_path)}
        self.requires = dict(re.findall(r"^\s+(\S+) (v\S+)", (self.dirs[module] / "go.mod").read_text(), re.M))
        self.requires[module] = version
        self.root = self.file(module, "")

    def file(self, module: str, package: str) -> dict[str, Any]:
        if module not in self.dirs:
            self.dirs[module] = module_dir(module, self.requires[module], self.tmp)
        return yaml.safe_load((self.dirs[module] / package / "config.schema.yaml").read_text())

    def resolve(self, ref: str, where: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """A $ref: a definition of the same file, of a contrib module (``/internal/k8sconfig.api_config``)
        or of a module the component requires (``go.opentelemetry.io/collector/...``)."""
        if "." not in ref.rpartition("/")[2]:
            return where["$defs"][ref], where
        package, _, name = ref.rpartition(".")
        if package.startswith("/"):
            package = CONTRIB + package
        module = max((m for m in self.requires if package == m or package.startswith(m + "/")), key=len)
        schema = self.file(module, package.removeprefix(module).lstrip("/"))
        return schema["$defs"][name], schema

    def properties(self, node: dict[str, Any], where: dict[str, Any]) -> dict[str, tuple[dict, dict, bool]]:
        """key -> (its node, the file it is in, whether to walk into it)."""
        props = {k: (v, where, True) for k, v in node.get("properties", {}).items()}
        for part in node.get("allOf", []):
            if "$ref" in part:
                core = part["$ref"].startswith("go.opentelemetry.io/collector/")
                sub, sub_where = self.resolve(part["$ref"], where)
                mixed = self.properties(sub, sub_where)
                props.update({k: (n, w, walk and not core) for k, (n, w, walk) in mixed.items()})
        return props

    def unknown(self, value: Any, node: dict[str, Any], path: str, where: dict[str, Any]) -> list[str]:
        if "$ref" in node:
            if node["$ref"].startswith("go.opentelemetry.io/collector/"):
                return []
            target, target_where = self.resolve(node["$ref"], where)
            return self.unknown(value, target, path, target_where)
        if isinstance(value, list) and "items" in node:
            return [u for i, v in enumerate(value) for u in self.unknown(v, node["items"], f"{path}[{i}]", where)]
        props = self.properties(node, where)
        if not isinstance(value, dict) or not props:
            return []  # a scalar, or a free-form map
        out = []
        for k, v in value.items():
            if k not in props:
                out.append(f"{path}.{k}")
            elif props[k][2]:
                out += self.unknown(v, props[k][0], f"{path}.{k}", props[k][1])
        return out


def component_config(tiers: dict[str, str], name: str) -> dict[str, Any]:
    agent = yaml.safe_load(tiers["agent.yaml"])
    return agent["processors" if name == "k8s_attributes" else "exporters"][name]


@pytest.mark.parametrize("name", STRIPPED)
def test_the_stripped_components_keys_are_in_their_schema(name: str, tiers: dict[str, str], tmp_path: Path) -> None:
    schemas = Schemas(*SCHEMAS[name], tmp_path)
    assert schemas.unknown(component_config(tiers, name), schemas.root, name, schemas.root) == []


@pytest.mark.parametrize(("name", "bad"), [("k8s_attributes", ("filter", "node_from_env")),
                                           ("load_balancing", ("resolver", "dns", "hostnames")),
                                           ("load_balancing", ("routing", ))])
def test_the_schema_check_catches_a_misspelt_key(name: str, bad: tuple[str, ...], tiers: dict[str, str],
                                                 tmp_path: Path) -> None:
    cfg = component_config(tiers, name)
    node = cfg
    for key in bad[:-1]:
        node = node[key]
    node[bad[-1]] = "x"
    schemas = Schemas(*SCHEMAS[name], tmp_path)
    assert schemas.unknown(cfg, schemas.root, name, schemas.root) == [".".join((name, *bad))]


def test_the_auth_type_comes_from_the_k8sconfig_schema(tiers: dict[str, str], tmp_path: Path) -> None:
    """auth_type is defined in internal/k8sconfig, which the processor's schema names by $ref."""
    schemas = Schemas(*SCHEMAS["k8s_attributes"], tmp_path)
    cfg = component_config(tiers, "k8s_attributes")
    assert cfg["auth_type"] == "serviceAccount"
    assert schemas.unknown({"auth_typ": "x"}, schemas.root, "k8s_attributes", schemas.root) == [
        "k8s_attributes.auth_typ"]

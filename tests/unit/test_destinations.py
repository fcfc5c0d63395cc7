"""Destinations (stack.yaml ``destinations``, mlobs/destinations.py): each preset renders its
exporter with that exporter's keys, joins the pipelines of its signals after redaction, names its
secrets only as ${env:VAR}, and refuses to start without them.

How each exporter's keys are checked here:

* otlp_http / otlp_grpc (New Relic, Splunk Observability, otlp): the real ``otelcol-mlobs validate``;
* datadog: the exporter's published config schema (pkg/datadog/config/config.schema.yaml of
  v0.165.0 and the core schemas it references, from the Go module proxy), every rendered key must
  be a property there, with the type it gives;
* elasticsearch, opensearch, splunk_hec: the Go module proxy refuses these modules (403), so no
  binary and no schema of v0.165.0 can be had here. Their rendered keys are compared with the keys
  of each exporter's Config struct (its mapstructure tags) in the upstream source, transcribed
  below with the version they are from.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from mlobs import components as registry
from mlobs import config, destinations, render
from mlobs.render import ROOT

BIN = ROOT / ".bin" / "otelcol-mlobs"

ALL = {
    "datadog": {"site": "datadoghq.eu"},
    "newrelic": {"region": "eu"},
    "splunk": {
        "hec": {"endpoint": "https://splunk.example.com:8088/services/collector", "index": "mlobs",
                "sourcetype": "otel"},
        "observability": {"realm": "us1"},
    },
    "elasticsearch": {"endpoint": "https://es.example.com:9200", "indices": {"logs": "logs-mlobs-default"},
                      "auth": {"api_key_env": "ELASTICSEARCH_API_KEY"}, "signals": ["logs", "traces"]},
    "opensearch": {"endpoint": "https://os.example.com:9200",
                   "auth": {"user": "mlobs", "password_env": "OPENSEARCH_PASSWORD"}},
    "otlp": [{"name": "vendor", "endpoint": "https://otlp.example.com:4317", "headers": {"x-team": "ml"},
              "secret_headers": {"authorization": "VENDOR_OTLP_AUTH"}},
             {"name": "sink", "protocol": "http", "endpoint": "http://127.0.0.1:15518", "insecure": True,
              "signals": ["logs"]}],
}
SECRETS = {"DD_API_KEY": "dd-secret-1", "NEW_RELIC_LICENSE_KEY": "nr-secret-2", "SPLUNK_HEC_TOKEN": "hec-secret-3",
           "SPLUNK_ACCESS_TOKEN": "sfx-secret-4", "ELASTICSEARCH_API_KEY": "es-secret-5",
           "OPENSEARCH_PASSWORD": "os-secret-6", "VENDOR_OTLP_AUTH": "otlp-secret-7"}


def stack_with(dests: dict[str, Any], **more: Any) -> config.Stack:
    data = config._read(ROOT / "stack.yaml")
    data["destinations"] = dests
    data.update(more)
    return config.parse(data)


def collector_config(stack: config.Stack, native: bool = False, tmp: Path | None = None) -> dict:
    if native:
        target = render.native_target(stack, render.BACKENDS, tmp / "out", tmp / "data")
    else:
        target = render.compose_target(stack)
    return yaml.safe_load(render.render(target)["otel-collector/config.yaml"])


DELIVERY = {"retry_on_failure": {"enabled": True, "max_elapsed_time": "300s"},
            "sending_queue": {"enabled": True, "queue_size": 5000, "storage": "file_storage"}}

EXPECTED = {
    "datadog": ("datadog", {"api": {"key": "${env:DD_API_KEY}", "site": "datadoghq.eu"}, **DELIVERY}),
    "newrelic": ("otlp_http/newrelic", {"endpoint": "https://otlp.eu01.nr-data.net",
                                        "headers": {"api-key": "${env:NEW_RELIC_LICENSE_KEY}"}, **DELIVERY}),
    "splunk_hec": ("splunk_hec", {"endpoint": "https://splunk.example.com:8088/services/collector",
                                  "token": "${env:SPLUNK_HEC_TOKEN}", "index": "mlobs", "sourcetype": "otel",
                                  **DELIVERY}),
    "splunk_observability": ("otlp_http/splunk_observability", {
        "traces_endpoint": "https://ingest.us1.signalfx.com/v2/trace/otlp",
        "metrics_endpoint": "https://ingest.us1.signalfx.com/v2/datapoint/otlp",
        "headers": {"X-SF-Token": "${env:SPLUNK_ACCESS_TOKEN}"}, **DELIVERY}),
    "elasticsearch": ("elasticsearch", {"endpoint": "https://es.example.com:9200", "logs_index": "logs-mlobs-default",
                                        "api_key": "${env:ELASTICSEARCH_API_KEY}", "retry": {"enabled": True},
                                        "sending_queue": DELIVERY["sending_queue"]}),
    "opensearch": ("opensearch", {"http": {"endpoint": "https://os.example.com:9200",
                                           "auth": {"authenticator": "basicauth/opensearch"}},
                                  "dataset": "mlobs", "namespace": "default", **DELIVERY}),
    "otlp_grpc": ("otlp_grpc/vendor", {"endpoint": "https://otlp.example.com:4317",
                                       "headers": {"authorization": "${env:VENDOR_OTLP_AUTH}", "x-team": "ml"},
                                       **DELIVERY}),
    "otlp_http": ("otlp_http/sink", {"endpoint": "http://127.0.0.1:15518", **DELIVERY}),
}


@pytest.mark.parametrize("preset", sorted(EXPECTED))
def test_each_preset_renders_the_exact_exporter_keys(preset: str) -> None:
    exporter_id, expected = EXPECTED[preset]
    got = collector_config(stack_with(ALL))["exporters"][exporter_id]
    assert got == expected


def test_opensearch_basic_auth_is_the_basicauth_extension_with_the_password_from_env() -> None:
    doc = collector_config(stack_with(ALL))
    assert doc["extensions"]["basicauth/opensearch"] == {
        "client_auth": {"username": "mlobs", "password": "${env:OPENSEARCH_PASSWORD}"}}
    assert "basicauth/opensearch" in doc["service"]["extensions"]


def test_no_destination_leaves_the_default_configs_as_they_were() -> None:
    stack = config.load(ROOT / "stack.yaml")
    assert not destinations.exporters(stack)
    doc = collector_config(stack)
    assert "forward/destinations" not in doc["connectors"]
    assert doc["service"]["extensions"] == ["health_check", "pprof", "file_storage"]


def _pipelines_with(doc: dict, exporter_id: str) -> set[str]:
    return {name for name, p in doc["service"]["pipelines"].items() if exporter_id in p["exporters"]}


SIGNAL_OF = {"traces": "traces/sampled", "metrics": "metrics/destinations", "logs": "logs"}


@pytest.mark.parametrize("signals", [["traces"], ["metrics"], ["logs"], ["traces", "logs"],
                                     ["traces", "metrics", "logs"]])
def test_signals_per_destination(signals: list[str]) -> None:
    doc = collector_config(stack_with({"datadog": {"signals": signals},
                                       "newrelic": {"signals": ["metrics"]}}))
    assert _pipelines_with(doc, "datadog") == {SIGNAL_OF[s] for s in signals}
    assert _pipelines_with(doc, "otlp_http/newrelic") == {"metrics/destinations"}


def test_splunk_observability_sends_only_the_endpoints_of_its_signals() -> None:
    doc = collector_config(stack_with({"splunk": {"observability": {"realm": "eu0", "signals": ["traces"]}}}))
    exp = doc["exporters"]["otlp_http/splunk_observability"]
    assert exp["traces_endpoint"] == "https://ingest.eu0.signalfx.com/v2/trace/otlp"
    assert "metrics_endpoint" not in exp
    assert _pipelines_with(doc, "otlp_http/splunk_observability") == {"traces/sampled"}


def _upstream_redacted(doc: dict, pipeline: str, seen: frozenset[str] = frozenset()) -> bool:
    """Does every path into ``pipeline`` pass the redaction processor? (Through connectors: a
    pipeline whose receiver is a connector is fed by the pipelines that export to it.)"""
    pipes = doc["service"]["pipelines"]
    p = pipes[pipeline]
    if "redaction" in p["processors"]:
        return True
    connectors = set(doc.get("connectors") or {})
    feeders = [n for n, q in pipes.items() for r in p["receivers"] if r in connectors and r in q["exporters"]]
    if any(r not in connectors for r in p["receivers"]) or not feeders or pipeline in seen:
        return False  # a receiver from outside, or no feeder: nothing redacted it
    return all(_upstream_redacted(doc, f, seen | {pipeline}) for f in feeders)


def test_every_destination_sits_after_redaction_in_every_pipeline() -> None:
    doc = collector_config(stack_with(ALL, redaction={"blocked_key_patterns": ["^user\\.email$"]}))
    ids = [e.id for e in destinations.exporters(stack_with(ALL))]
    checked = 0
    for exporter_id in ids:
        pipes = _pipelines_with(doc, exporter_id)
        assert pipes, f"{exporter_id} is in no pipeline"
        for name in pipes:
            assert _upstream_redacted(doc, name), f"{exporter_id} in {name} gets data that no redaction saw"
            checked += 1
    assert checked >= 15
    # Traces leave after the connectors and tail sampling too.
    assert doc["service"]["pipelines"]["traces/sampled"]["receivers"] == ["forward/sampling"]


def test_the_redaction_walk_catches_an_unredacted_path() -> None:
    doc = collector_config(stack_with(ALL))
    doc["service"]["pipelines"]["metrics/destinations"]["processors"] = []
    assert _upstream_redacted(doc, "metrics/destinations"), "the metrics pipeline that feeds it redacts"
    metrics = doc["service"]["pipelines"]["metrics"]
    metrics["processors"] = [p for p in metrics["processors"] if p != "redaction"]
    assert not _upstream_redacted(doc, "metrics/destinations")


def test_no_secret_value_reaches_a_rendered_file(monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in SECRETS.items():
        monkeypatch.setenv(k, v)
    stack = stack_with(ALL)
    files = render.render(render.compose_target(stack))
    for rel, text in files.items():
        for value in SECRETS.values():
            assert value not in text, f"{rel} holds a secret"
    compose = yaml.safe_load(files["compose/docker-compose.yml"])
    env = compose["services"]["otel-collector"]["environment"]
    assert env["DD_API_KEY"] == ("${DD_API_KEY:?set DD_API_KEY in .env: stack.yaml "
                                 "destinations.datadog.api_key_env names it}")
    assert set(env) == set(SECRETS)


def _native_place(stack: config.Stack, values: dict[str, str], tmp: Path) -> registry.Place:
    target = render.native_target(stack, render.BACKENDS, tmp / "out", tmp / "data")
    return registry.Place(target, values, tmp)


def test_a_missing_secret_is_refused_naming_the_variable_and_the_stack_path(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    for k in SECRETS:
        monkeypatch.delenv(k, raising=False)
    stack = stack_with(ALL)
    values = {k: v for k, v in SECRETS.items() if k != "SPLUNK_HEC_TOKEN"}
    with pytest.raises(destinations.DestinationError) as e:
        destinations.collector_env(_native_place(stack, values, tmp_path))
    msg = str(e.value)
    assert "SPLUNK_HEC_TOKEN" in msg and "destinations.splunk.hec.token_env" in msg
    assert "DD_API_KEY" not in msg, "only the missing one is named"
    # From the environment (CI, say) it is found too.
    monkeypatch.setenv("SPLUNK_HEC_TOKEN", "from-env")
    env = destinations.collector_env(_native_place(stack, values, tmp_path))
    assert env["SPLUNK_HEC_TOKEN"] == "from-env" and env["DD_API_KEY"] == SECRETS["DD_API_KEY"]


def test_the_native_runtime_refuses_before_anything_starts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """native.programs() builds every program's environment before supervisord is started."""
    from mlobs.runtime import native

    monkeypatch.delenv("DD_API_KEY", raising=False)
    stack = stack_with({"datadog": {}})
    state = native.State(root=tmp_path / ".stack", bin_dir=tmp_path / "bin", env_file=tmp_path / ".env")
    plan = native.Plan(present={"otel-collector": tmp_path / "otelcol-mlobs", "prometheus": tmp_path / "prometheus"})
    target = render.native_target(stack, {"prometheus"}, state.config_dir, state.data_dir)
    with pytest.raises(RuntimeError, match=r"destinations\.datadog\.api_key_env: the secret DD_API_KEY is not set"):
        native.programs(stack, state, plan, target, {"GRAFANA_ADMIN_PASSWORD": "x", "MLOBS_ADMIN_TOKEN": "y"})


@pytest.mark.parametrize("dests, path, allowed", [
    ({"datadog": {"site": "datadoghq.moon"}}, "destinations.datadog.site", "'datadoghq.eu'"),
    ({"newrelic": {"region": "mars"}}, "destinations.newrelic.region", "'us', 'eu' or 'fedramp'"),
    ({"opensearch": {"endpoint": "https://o:9200", "signals": ["metrics"]}}, "destinations.opensearch.signals.0",
     "'traces' or 'logs'"),
    ({"splunk": {"observability": {"realm": "us1", "signals": ["logs"]}}},
     "destinations.splunk.observability.signals.0", "'traces' or 'metrics'"),
    ({"otlp": [{"name": "x", "endpoint": "http://h:1", "protocol": "udp"}]}, "destinations.otlp.0.protocol",
     "'grpc' or 'http'"),
    ({"elasticsearch": {"endpoint": "es:9200"}}, "destinations.elasticsearch.endpoint", "http:// or https://"),
    ({"datadog": {"api_key_env": "dd-key"}}, "destinations.datadog.api_key_env", "[A-Z_]"),
    ({"otlp": [{"name": "tempo", "endpoint": "https://h:1"}]}, "destinations.otlp.0.name", "take another"),
    ({"otlp": [{"name": "a", "endpoint": "http://h:1"}]}, "destinations.otlp.0", "insecure: true"),
    ({"splunk": {}}, "destinations.splunk", "give hec, observability or both"),
    ({"elasticsearch": {"endpoint": "https://e:9200", "auth": {"user": "u"}}}, "destinations.elasticsearch.auth",
     "both user and password_env"),
    ({"kafka": {}}, "destinations.kafka", "unknown key"),
])
def test_bad_values_name_the_stack_path_and_what_is_allowed(dests: dict, path: str, allowed: str) -> None:
    data = config._read(ROOT / "stack.yaml")
    data["destinations"] = dests
    with pytest.raises(config.StackError) as e:
        config.parse(data)
    msg = str(e.value)
    assert f"stack.yaml: {path}:" in msg and allowed in msg, msg


# ---- the real collector -------------------------------------------------------------------


def _exporter_types(binary: Path) -> set[str]:
    out = subprocess.run([str(binary), "components"], capture_output=True, text=True, timeout=60, check=True).stdout
    return {e["name"] for e in yaml.safe_load(out).get("exporters") or []}


def _validate(binary: Path, doc: dict, tmp: Path) -> subprocess.CompletedProcess:
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return subprocess.run([str(binary), "validate", f"--config={path}"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **SECRETS})


def _need_binary() -> Path:
    if not BIN.exists():
        pytest.skip(f"{BIN} is missing: `make native-deps` builds it")
    return BIN


def _without(stack_dests: dict, types: set[str]) -> dict:
    """ALL less the presets whose exporter type is in ``types``."""
    out = json.loads(json.dumps(stack_dests))
    kinds = {"datadog": "datadog", "elasticsearch": "elasticsearch", "opensearch": "opensearch"}
    for key, t in kinds.items():
        if t in types:
            out.pop(key, None)
    if "splunk_hec" in types:
        out["splunk"].pop("hec", None)
    return out


def test_otelcol_validate_passes_on_the_native_config_with_every_preset_it_can_build(tmp_path: Path) -> None:
    binary = _need_binary()
    have = _exporter_types(binary)
    lacking = {t for t in destinations.SUPPORTED if t not in have}
    assert lacking <= set(destinations.NATIVE_MISSING), f"{binary} lacks undocumented exporters {lacking}"
    for t in sorted(lacking):
        print(f"otelcol validate: {t} left out, the native collector has no {t} exporter: "
              f"{destinations.NATIVE_MISSING[t]}")
    doc = collector_config(stack_with(_without(ALL, lacking)), native=True, tmp=tmp_path)
    if "basicauth/opensearch" in doc.get("extensions", {}):
        pytest.fail("the opensearch preset's basicauth extension in a config of a collector without opensearch")
    r = _validate(binary, doc, tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert {"otlp_http/newrelic", "otlp_http/splunk_observability", "otlp_grpc/vendor"} <= set(doc["exporters"])


def test_otelcol_validate_fails_on_a_wrong_key(tmp_path: Path) -> None:
    """The check above can fail: a key the exporter does not have is refused."""
    binary = _need_binary()
    doc = collector_config(stack_with({"newrelic": {}}), native=True, tmp=tmp_path)
    doc["exporters"]["otlp_http/newrelic"]["api_key"] = "x"
    r = _validate(binary, doc, tmp_path)
    assert r.returncode != 0 and "api_key" in r.stderr


def test_otelcol_validate_passes_with_all_presets(tmp_path: Path) -> None:
    binary = _need_binary()
    lacking = sorted(t for t in destinations.SUPPORTED if t not in _exporter_types(binary))
    if lacking:
        reasons = "; ".join(f"{t}: {destinations.NATIVE_MISSING.get(t, 'not in the build')}" for t in lacking)
        print(f"SKIP: {binary} has no {', '.join(lacking)} exporter ({reasons})")
        pytest.skip(f"{binary} has no {', '.join(lacking)} exporter: {reasons}")
    doc = collector_config(stack_with(ALL), native=True, tmp=tmp_path)
    r = _validate(binary, doc, tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]


def test_the_native_manifest_still_equals_the_components_of_a_native_config_with_destinations(tmp_path: Path) -> None:
    """The native build lists exactly what the default config uses; a destination the native
    collector can have adds no component type beyond it (forward and otlp_* are in it)."""
    from mlobs.nativebuild import otelcol_manifest_components

    manifest = otelcol_manifest_components(ROOT / "otel-collector" / "builder-config.yaml")
    doc = collector_config(stack_with(_without(ALL, set(destinations.NATIVE_MISSING))), native=True, tmp=tmp_path)
    for kind in ("receivers", "processors", "connectors", "exporters", "extensions"):
        types = {c.split("/")[0] for c in doc.get(kind) or {}}
        assert types <= manifest[kind], f"{kind}: {types - manifest[kind]} not in the native build"


# ---- datadog: the exporter's published schema ----------------------------------------------

DD_MODULE = "github.com/open-telemetry/opentelemetry-collector-contrib/pkg/datadog"
DD_VERSION = "v0.165.0"


def _go_download(module: str, version: str) -> Path:
    # pkg/datadog v0.165.0 asks for go >= 1.26.9: the approved newer toolchain is taken from the proxy.
    env = {**os.environ, "GOTOOLCHAIN": "go1.27.3", "GOFLAGS": "-mod=mod"}
    r = subprocess.run(["go", "mod", "download", "-json", f"{module}@{version}"], capture_output=True, text=True,
                       timeout=300, env=env, cwd=Path.home())
    info = json.loads(r.stdout or "{}")
    if info.get("Error") or not info.get("Dir"):
        pytest.skip(f"the Go module proxy gives no {module}@{version}: {info.get('Error') or r.stderr.strip()}")
    return Path(info["Dir"])


def _requires(mod_dir: Path) -> dict[str, str]:
    reqs = {}
    for line in (mod_dir / "go.mod").read_text().splitlines():
        parts = line.strip().split()
        if len(parts) >= 2 and parts[0].startswith("go.opentelemetry.io/"):
            reqs[parts[0]] = parts[1]
        elif len(parts) >= 3 and parts[0] == "require" and parts[1].startswith("go.opentelemetry.io/"):
            reqs[parts[1]] = parts[2]
    return reqs


class SchemaSet:
    """The mdatagen config schemas (config.schema.yaml) of a module and of those its $refs name."""

    def __init__(self, root: Path, requires: dict[str, str]):
        self.root, self.requires, self.files = root, requires, {}

    def _file(self, package: str) -> dict:
        if package not in self.files:
            if package in ("", DD_MODULE + "/config"):
                path = self.root
            else:
                module = max((m for m in self.requires if package == m or package.startswith(m + "/")), key=len)
                base = _go_download(module, self.requires[module])
                path = base / package[len(module):].lstrip("/") / "config.schema.yaml"
            self.files[package] = yaml.safe_load(path.read_text())
        return self.files[package]

    def resolve(self, ref: str, package: str) -> tuple[dict, str]:
        """``name`` (this file), ``./sub/pkg.name`` (relative to this package) or ``import/path.name``."""
        if "." not in ref.rsplit("/", 1)[-1]:
            return self._file(package)["$defs"][ref], package
        pkg, name = ref.rsplit(".", 1)
        if pkg.startswith("./"):
            pkg = posixpath.normpath(posixpath.join(package or DD_MODULE + "/config", pkg))
        return self._file(pkg)["$defs"][name], pkg

    def properties(self, schema: dict, package: str) -> dict[str, tuple[dict, str]]:
        """Every property of an object schema, with those of its allOf parts (squashed structs)."""
        if "$ref" in schema:
            schema, package = self.resolve(schema["$ref"], package)
        props = {k: (v, package) for k, v in (schema.get("properties") or {}).items()}
        for part in schema.get("allOf") or []:
            props.update(self.properties(part, package))
        return props


def _check_against(schemas: SchemaSet, value: Any, schema: dict, package: str, path: str) -> list[str]:
    if "$ref" in schema and "properties" not in schema:
        target, pkg = schemas.resolve(schema["$ref"], package)
        return _check_against(schemas, value, target, pkg, path)
    if isinstance(value, dict) and (schema.get("type") == "object" or "properties" in schema or "allOf" in schema):
        props = schemas.properties(schema, package)
        errors = []
        for k, v in value.items():
            if k not in props:
                errors.append(f"{path}.{k}: not a key of the exporter's config (keys: {sorted(props)})")
            else:
                errors += _check_against(schemas, v, props[k][0], props[k][1], f"{path}.{k}")
        return errors
    t = schema.get("type")
    ok = {"string": str, "boolean": bool, "integer": int, "object": dict, "array": list}.get(t)
    if ok and not isinstance(value, ok):
        return [f"{path}: {value!r} is not of type {t}"]
    return []


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _named_embeds(config_go: Path) -> dict[str, str]:
    """Embedded structs of ``type Config struct`` that carry a mapstructure name (not squash):
    mapstructure decodes them under that key, but the published schema lists them in ``allOf`` as if
    squashed (configretry.BackOffConfig `mapstructure:"retry_on_failure"`). The Go source decides:
    key -> the $ref of its type."""
    src = config_go.read_text()
    imports = dict((path.rsplit("/", 1)[-1], path) for path in re.findall(r'^\s+"([^"]+)"$', src, re.M))
    body = src[src.index("type Config struct {"):]
    body = body[: body.index("\n}\n")]
    out = {}
    for pkg, typ, key in re.findall(r'^\t(\w+)\.(\w+)\s+`mapstructure:"(\w+)"`', body, re.M):
        out[key] = f"{imports[pkg]}.{_snake(typ)}"
    return out


def _datadog_schemas() -> tuple[SchemaSet, dict]:
    if not shutil.which("go"):
        pytest.skip("no Go toolchain to take the datadog exporter's schema from the module proxy")
    root = _go_download(DD_MODULE, DD_VERSION)
    schemas = SchemaSet(root / "config" / "config.schema.yaml", _requires(root))
    top = json.loads(json.dumps(schemas._file("")["$defs"]["config"]))
    named = _named_embeds(root / "config" / "config.go")
    assert named == {"retry_on_failure": "go.opentelemetry.io/collector/config/configretry.back_off_config"}, named
    top["allOf"] = [part for part in top["allOf"] if part["$ref"] not in named.values()]
    top["properties"].update({key: {"$ref": ref} for key, ref in named.items()})
    return schemas, top


def test_datadog_config_matches_the_exporters_published_schema() -> None:
    schemas, top = _datadog_schemas()
    exp = collector_config(stack_with({"datadog": {"site": "datadoghq.eu"}}))["exporters"]["datadog"]
    errors = _check_against(schemas, exp, top, "", "exporters.datadog")
    assert not errors, errors


def test_the_datadog_schema_check_catches_a_wrong_key() -> None:
    schemas, top = _datadog_schemas()
    exp = collector_config(stack_with({"datadog": {}}))["exporters"]["datadog"]
    exp["api"]["apikey"] = "x"
    exp["sending_queue"]["queue_size"] = "big"
    errors = _check_against(schemas, exp, top, "", "exporters.datadog")
    assert any("api.apikey" in e for e in errors) and any("queue_size" in e for e in errors), errors


# ---- elasticsearch, opensearch, splunk_hec: keys of the upstream Config structs --------------

#: The mapstructure keys of each exporter's Config, transcribed from the upstream config.go (the Go
#: module proxy refuses v0.163.0 to v0.166.0 of all three). elasticsearch: a version at or after
#: v0.145.0 (its comments deprecate mapping.mode "[v0.145.0]"), with confighttp.ClientConfig squashed
#: (endpoint, headers, tls, timeout, compression...). opensearch: a version with
#: exporterhelper.QueueBatchConfig (>= v0.123), confighttp.ClientConfig under `http`.
#: splunk_hec: keys stable since its first releases (token, endpoint, index, source, sourcetype,
#: sending_queue, retry_on_failure).
UPSTREAM_KEYS = {
    "elasticsearch": {"sending_queue", "endpoints", "cloudid", "num_workers", "logs_index", "logs_dynamic_index",
                      "metrics_index", "metrics_dynamic_index", "traces_index", "traces_dynamic_index",
                      "logs_dynamic_id", "traces_dynamic_id", "logs_dynamic_pipeline", "pipeline", "user", "password",
                      "api_key", "discover", "retry", "flush", "mapping", "logstash_format",
                      "suppress_conflict_errors", "telemetry", "include_source_on_error", "metadata_keys",
                      "bulk_response_filter_path",
                      # confighttp.ClientConfig, squashed
                      "endpoint", "headers", "tls", "timeout", "compression", "auth", "proxy_url"},
    "opensearch": {"http", "retry_on_failure", "timeout", "mapping", "sending_queue", "dataset", "namespace",
                   "logs_index", "logs_index_fallback", "logs_index_time_format", "bulk_action"},
    "splunk_hec": {"timeout", "sending_queue", "retry_on_failure", "token", "endpoint", "source", "sourcetype",
                   "index", "max_connections", "disable_compression", "max_content_length_logs", "tls",
                   "splunk_app_name", "splunk_app_version", "hec_metadata_to_otel_attrs"},
}


@pytest.mark.parametrize("type_", sorted(UPSTREAM_KEYS))
def test_refused_exporters_render_only_keys_of_their_upstream_config(type_: str) -> None:
    exps = collector_config(stack_with(ALL))["exporters"]
    exp = exps[type_]
    assert set(exp) <= UPSTREAM_KEYS[type_], set(exp) - UPSTREAM_KEYS[type_]
    if type_ == "opensearch":
        assert set(exp["http"]) <= {"endpoint", "auth", "headers", "tls", "timeout", "compression"}


# ---- the elk compose profile ---------------------------------------------------------------

ELK = {"opensearch": {"endpoint": "http://opensearch:9200", "signals": ["logs"]}}


def test_elk_profile_services_are_profiled_local_limited_and_probed() -> None:
    doc = yaml.safe_load(render.render(render.compose_target(stack_with(ELK)))["compose/docker-compose.yml"])
    elk = {n: s for n, s in doc["services"].items() if "elk" in (s.get("profiles") or [])}
    assert set(elk) == {"opensearch", "opensearch-dashboards", "opensearch-init"}
    assert not [n for n, s in doc["services"].items() if n not in elk and s.get("profiles")]
    for name, svc in elk.items():
        assert svc["mem_limit"] and svc["logging"] and "healthcheck" in svc, name
        for port in svc.get("ports", []):
            assert port.startswith("127.0.0.1:"), (name, port)
        assert not any("PASSWORD" in k for k in (svc.get("environment") or {})), name
    assert elk["opensearch"]["environment"]["DISABLE_SECURITY_PLUGIN"] == "true"
    assert elk["opensearch-init"]["entrypoint"] == ["sh", "/elk/init.sh"]
    assert "opensearch-data" in doc["volumes"]
    assert (ROOT / "compose" / "elk" / "init.sh").is_file()


def test_the_compose_file_with_the_elk_profile_validates(tmp_path: Path) -> None:
    path = tmp_path / "docker-compose.yml"
    path.write_text(render.render(render.compose_target(stack_with(ELK)))["compose/docker-compose.yml"])
    r = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
                        str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_index_template_keeps_the_ids_as_keywords() -> None:
    tpl = json.loads((ROOT / "compose" / "elk" / "index-template.json").read_text())
    props = tpl["template"]["mappings"]["properties"]
    assert props["traceId"] == {"type": "keyword"} and props["spanId"] == {"type": "keyword"}
    assert props["attributes"]["properties"]["request"]["properties"]["id"] == {"type": "keyword"}
    # the index the exporter writes: ss4o_logs-<dataset>-<namespace>
    o = stack_with(ELK).destinations.opensearch
    index = f"ss4o_logs-{o.dataset}-{o.namespace}"
    assert any(index.startswith(p.rstrip("*")) for p in tpl["index_patterns"]), (index, tpl["index_patterns"])


def test_the_saved_search_names_the_index_pattern_it_ships_with() -> None:
    objs = [json.loads(line) for line in (ROOT / "compose" / "elk" / "saved-objects.ndjson").read_text().splitlines()]
    pattern = next(o for o in objs if o["type"] == "index-pattern")
    search = next(o for o in objs if o["type"] == "search")
    assert search["references"][0]["id"] == pattern["id"]
    assert pattern["attributes"]["title"] == json.loads(
        (ROOT / "compose" / "elk" / "index-template.json").read_text())["index_patterns"][0]
    assert {"traceId", "attributes.request.id"} <= set(search["attributes"]["columns"])


def test_grafana_gets_the_opensearch_datasource_only_with_the_elk_destination() -> None:
    rel = "grafana/provisioning/datasources/datasources.yaml"
    with_elk = yaml.safe_load(render.render(render.compose_target(stack_with(ELK)))[rel])
    without = yaml.safe_load(render.render(render.compose_target(config.load(ROOT / "stack.yaml")))[rel])
    ds = {d["uid"]: d for d in with_elk["datasources"]}
    assert "opensearch" not in {d["uid"] for d in without["datasources"]}
    os_ds = ds["opensearch"]
    assert os_ds["type"] == "elasticsearch", "Grafana's core datasource: no plugin install"
    link = os_ds["jsonData"]["dataLinks"][0]
    assert link["field"] == "traceId" and link["datasourceUid"] in ds and ds[link["datasourceUid"]]["type"] in (
        "tempo", "jaeger")

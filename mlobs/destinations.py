"""Destinations: a vendor or a store outside the stack gets a copy of the telemetry.

Each preset of stack.yaml ``destinations`` (the model: ``config.Destinations``) renders one
collector exporter (two for Splunk with both HEC and Observability) with that exporter's own keys
at the pinned collector release. ``render.collector_pipelines`` puts them where the stack's own
stores are: traces after tail sampling, logs after the log links, both after redaction; metrics on
a branch of their own that passes the redaction processor first (the local metrics pipeline has
none). So nothing leaves the host that the local stores would not see redacted.

Secrets are never written: a config names each one as ``${env:VAR}``, and the collector gets the
variable from .env (compose: ``${VAR:?...}`` interpolation, which refuses to start without it;
natively: :func:`collector_env`, which raises :class:`DestinationError` naming the variable and the
stack.yaml path before anything starts).

Where the keys come from (each checked against the exporter's source, see tests/unit/test_destinations.py):

* ``otlp_grpc``, ``otlp_http`` (New Relic, Splunk Observability, ``otlp``): core exporters of the
  native build; the rendered config is validated by the real ``otelcol-mlobs validate``.
* ``datadog``: ``pkg/datadog/config`` v0.165.0 (``api.key``, ``api.site``) from the Go module proxy;
  the exporter's dependencies are refused by the proxy (403), so it is not in the native build.
* ``elasticsearch``, ``opensearch``, ``splunk_hec``: the proxy refuses these modules at every
  version tried (403); their keys are those of the upstream config.go (see the test for which).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mlobs.config import DestinationAuth, Signal, Stack

#: Signals each exporter type can carry (its factory's pipelines).
SUPPORTED: dict[str, tuple[Signal, ...]] = {
    "datadog": ("traces", "metrics", "logs"),
    "otlp_http": ("traces", "metrics", "logs"),
    "otlp_grpc": ("traces", "metrics", "logs"),
    "splunk_hec": ("traces", "metrics", "logs"),
    "elasticsearch": ("traces", "metrics", "logs"),
    "opensearch": ("traces", "logs"),
}

#: Exporter types that the native collector (otel-collector/builder-config.yaml) cannot have: the
#: Go module proxy refuses the module or modules it needs. The compose image (collector-contrib)
#: has them all.
NATIVE_MISSING: dict[str, str] = {
    "datadog": "the Go module proxy refuses modules of the datadog exporter's dependency tree "
    "(github.com/DataDog/datadog-agent/pkg/... at v0.84.0-devel: 403)",
    "elasticsearch": "the Go module proxy refuses elasticsearchexporter v0.163.0 to v0.166.0 (403)",
    "opensearch": "the Go module proxy refuses opensearchexporter v0.163.0 to v0.166.0 (403)",
    "splunk_hec": "the Go module proxy refuses splunkhecexporter v0.163.0 to v0.166.0 (403)",
}

#: Exporter and connector names the stack's own pipelines use: an otlp destination may not take them.
RESERVED_NAMES = ("tempo", "jaeger", "prometheus", "loki", "victorialogs", "newrelic", "splunk_observability")

#: The branch that takes the metrics to the destinations through the redaction processor.
METRICS_FORWARD = "forward/destinations"

#: The compose service of the elk profile's OpenSearch (an opensearch destination that names it
#: gets the Grafana datasource).
ELK_HOST = "opensearch"

NEWRELIC_ENDPOINTS = {"us": "https://otlp.nr-data.net", "eu": "https://otlp.eu01.nr-data.net",
                      "fedramp": "https://gov-otlp.nr-data.net"}


class DestinationError(RuntimeError, ValueError):
    """A destination cannot be rendered or started; the message names the stack.yaml path. A
    RuntimeError, so `mlobs up` reports it as it reports a stack that cannot start."""


@dataclass(frozen=True)
class Secret:
    var: str  # the .env variable
    path: str  # where stack.yaml names it, e.g. destinations.datadog.api_key_env


@dataclass
class Exporter:
    id: str  # the collector component id, e.g. otlp_http/newrelic
    signals: list[Signal]
    config: dict[str, Any]
    path: str  # stack.yaml path of the preset
    secrets: list[Secret] = field(default_factory=list)
    extensions: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def type(self) -> str:
        return self.id.split("/", 1)[0]


def env_ref(var: str) -> str:
    """How a rendered config names a secret: the collector's env provider reads it at start."""
    return "${env:" + var + "}"


def _delivery(queue_storage: bool = True) -> dict[str, Any]:
    """Retry for 5 minutes and queue on disk, like the stack's own exporters."""
    queue: dict[str, Any] = {"enabled": True, "queue_size": 5000}
    if queue_storage:
        queue["storage"] = "file_storage"
    return {"retry_on_failure": {"enabled": True, "max_elapsed_time": "300s"}, "sending_queue": queue}


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


def _check_signals(type_: str, signals: list[Signal], path: str) -> None:
    bad = [s for s in signals if s not in SUPPORTED[type_]]
    if bad:
        raise DestinationError(f"stack.yaml: {path}.signals: {bad} not supported by the {type_} exporter; "
                               f"allowed values: {list(SUPPORTED[type_])}")


def _auth(auth: DestinationAuth, path: str) -> tuple[dict[str, Any], list[Secret]]:
    """Elasticsearch's own auth keys (user, password, api_key)."""
    if auth.api_key_env:
        return {"api_key": env_ref(auth.api_key_env)}, [Secret(auth.api_key_env, f"{path}.auth.api_key_env")]
    if auth.user and auth.password_env:
        return ({"user": auth.user, "password": env_ref(auth.password_env)},
                [Secret(auth.password_env, f"{path}.auth.password_env")])
    return {}, []


def exporters(stack: Stack) -> list[Exporter]:
    """Every destination's exporter, in a fixed order."""
    d = stack.destinations
    out: list[Exporter] = []
    if d.datadog:
        p = "destinations.datadog"
        out.append(Exporter("datadog", list(d.datadog.signals), {
            "api": {"key": env_ref(d.datadog.api_key_env), "site": d.datadog.site},
            **_delivery(),
        }, p, [Secret(d.datadog.api_key_env, f"{p}.api_key_env")]))
    if d.newrelic:
        p = "destinations.newrelic"
        nr = d.newrelic
        out.append(Exporter("otlp_http/newrelic", list(nr.signals), {
            "endpoint": nr.endpoint or NEWRELIC_ENDPOINTS[nr.region],
            "headers": {"api-key": env_ref(nr.license_key_env)},
            **_delivery(),
        }, p, [Secret(nr.license_key_env, f"{p}.license_key_env")]))
    if d.splunk and d.splunk.hec:
        p = "destinations.splunk.hec"
        hec = d.splunk.hec
        out.append(Exporter("splunk_hec", list(hec.signals), _drop_none({
            "endpoint": hec.endpoint,
            "token": env_ref(hec.token_env),
            "index": hec.index,
            "source": hec.source,
            "sourcetype": hec.sourcetype,
            **_delivery(),
        }), p, [Secret(hec.token_env, f"{p}.token_env")]))
    if d.splunk and d.splunk.observability:
        p = "destinations.splunk.observability"
        o = d.splunk.observability
        base = f"https://ingest.{o.realm}.signalfx.com"
        cfg: dict[str, Any] = {}
        if "traces" in o.signals:
            cfg["traces_endpoint"] = f"{base}/v2/trace/otlp"
        if "metrics" in o.signals:
            cfg["metrics_endpoint"] = f"{base}/v2/datapoint/otlp"
        cfg["headers"] = {"X-SF-Token": env_ref(o.token_env)}
        out.append(Exporter("otlp_http/splunk_observability", list(o.signals), {**cfg, **_delivery()},
                            p, [Secret(o.token_env, f"{p}.token_env")]))
    if d.elasticsearch:
        p = "destinations.elasticsearch"
        es = d.elasticsearch
        auth, secrets = _auth(es.auth, p)
        out.append(Exporter("elasticsearch", list(es.signals), _drop_none({
            "endpoint": es.endpoint,
            "logs_index": es.indices.logs,
            "traces_index": es.indices.traces,
            "metrics_index": es.indices.metrics,
            **auth,
            # The exporter retries by its own `retry` section (no retry_on_failure key).
            "retry": {"enabled": True},
            "sending_queue": _delivery()["sending_queue"],
        }), p, secrets))
    if d.opensearch:
        p = "destinations.opensearch"
        os_ = d.opensearch
        http: dict[str, Any] = {"endpoint": os_.endpoint}
        extensions: dict[str, dict[str, Any]] = {}
        secrets = []
        if os_.auth.user and os_.auth.password_env:
            http["auth"] = {"authenticator": "basicauth/opensearch"}
            extensions["basicauth/opensearch"] = {
                "client_auth": {"username": os_.auth.user, "password": env_ref(os_.auth.password_env)}}
            secrets.append(Secret(os_.auth.password_env, f"{p}.auth.password_env"))
        out.append(Exporter("opensearch", list(os_.signals), _drop_none({
            "http": http,
            "dataset": os_.dataset,
            "namespace": os_.namespace,
            "logs_index": os_.logs_index,
            **_delivery(),
        }), p, secrets, extensions))
    for i, o in enumerate(d.otlp):
        p = f"destinations.otlp.{i}"
        if o.name in RESERVED_NAMES:
            raise DestinationError(f"stack.yaml: {p}.name: {o.name!r} is taken by the stack; "
                                   f"use another than {', '.join(RESERVED_NAMES)}")
        type_ = "otlp_grpc" if o.protocol == "grpc" else "otlp_http"
        headers = {**o.headers, **{h: env_ref(v) for h, v in o.secret_headers.items()}}
        cfg = {"endpoint": o.endpoint}
        if headers:
            cfg["headers"] = dict(sorted(headers.items()))
        if o.insecure and type_ == "otlp_grpc":
            cfg["tls"] = {"insecure": True}
        out.append(Exporter(f"{type_}/{o.name}", list(o.signals), {**cfg, **_delivery()}, p,
                            [Secret(v, f"{p}.secret_headers.{h}") for h, v in o.secret_headers.items()]))
    for e in out:
        _check_signals(e.type, e.signals, e.path)
    taken = {x.name for x in stack.extra_exporters}
    for e in out:
        if e.id in taken:
            raise DestinationError(f"stack.yaml: extra_exporters: {e.id!r} is also the exporter of {e.path}: "
                                   "rename the extra exporter")
    return out


def by_signal(stack: Stack) -> dict[str, list[str]]:
    """Exporter ids per signal."""
    exps = exporters(stack)
    return {s: [e.id for e in exps if s in e.signals] for s in ("traces", "metrics", "logs")}


def extensions(stack: Stack) -> dict[str, dict[str, Any]]:
    return {k: v for e in exporters(stack) for k, v in e.extensions.items()}


def secrets(stack: Stack) -> list[Secret]:
    """Every secret the destinations need, each variable once (the first path that names it)."""
    seen: dict[str, Secret] = {}
    for e in exporters(stack):
        for s in e.secrets:
            seen.setdefault(s.var, s)
    return list(seen.values())


def missing_secrets(stack: Stack, values: Mapping[str, str], environ: Mapping[str, str] | None = None) -> list[Secret]:
    """The secrets set neither in ``values`` (.env) nor in the environment."""
    environ = os.environ if environ is None else environ
    return [s for s in secrets(stack) if not (values.get(s.var) or environ.get(s.var))]


def require_secrets(stack: Stack, values: Mapping[str, str], environ: Mapping[str, str] | None = None) -> None:
    """Raise DestinationError naming each missing variable and the stack.yaml path that names it."""
    missing = missing_secrets(stack, values, environ)
    if missing:
        raise DestinationError("\n".join(
            f"stack.yaml: {s.path}: the secret {s.var} is not set: add a line {s.var}=... to .env "
            "(or export it) before starting the stack" for s in missing))


def collector_env(place: Any) -> dict[str, str]:
    """The collector's environment: the destinations' secrets. Compose gets ``${VAR:?...}``, which
    `docker compose` fills from .env and refuses to start without; natively the values themselves
    (from .env, else the environment), or DestinationError before anything starts."""
    stack: Stack = place.stack
    needed = secrets(stack)
    if not needed:
        return {}
    if place.secrets is None:
        return {s.var: "${" + s.var + ":?set " + s.var + " in .env: stack.yaml " + s.path + " names it}"
                for s in needed}
    require_secrets(stack, place.secrets)
    return {s.var: place.secrets.get(s.var) or os.environ[s.var] for s in needed}


def native_gaps(stack: Stack) -> dict[str, str]:
    """Destinations whose exporter the native collector lacks: stack.yaml path -> why."""
    return {e.path: f"{e.type}: {NATIVE_MISSING[e.type]}" for e in exporters(stack) if e.type in NATIVE_MISSING}


# ---- the elk compose profile ---------------------------------------------------------------

#: OpenSearch and OpenSearch Dashboards (both Apache-2.0), one release. Not pulled here (no image
#: registry answers on this project's machines): the tag is the release line's, unverified by a pull.
OPENSEARCH_IMAGE = "opensearchproject/opensearch:3.0.0"
DASHBOARDS_IMAGE = "opensearchproject/opensearch-dashboards:3.0.0"


def elk_enabled(stack: Stack) -> bool:
    """stack.yaml sends to the elk profile's OpenSearch (http://opensearch:9200)."""
    from urllib.parse import urlsplit

    o = stack.destinations.opensearch
    return bool(o and urlsplit(o.endpoint).hostname == ELK_HOST)


def elk_services(logging: dict[str, Any], health_timing: dict[str, Any]) -> dict[str, Any]:
    """The compose services of the ``elk`` profile (``make up PROFILE=elk``): OpenSearch, OpenSearch
    Dashboards and a one-shot init container that loads the index template and the saved search."""
    profile = ["elk"]
    return {
        "opensearch": {
            "image": OPENSEARCH_IMAGE,
            "profiles": profile,
            "environment": {
                "discovery.type": "single-node",
                # Local only: no security plugin, so no password (default or not) exists to leak;
                # the port is published on 127.0.0.1 alone, like every port of the stack.
                "DISABLE_SECURITY_PLUGIN": "true",
                "DISABLE_INSTALL_DEMO_CONFIG": "true",
                "OPENSEARCH_JAVA_OPTS": "-Xms512m -Xmx512m",
                "bootstrap.memory_lock": "false",
            },
            "volumes": ["opensearch-data:/usr/share/opensearch/data"],
            "ports": ["127.0.0.1:9200:9200"],
            "healthcheck": {"test": ["CMD", "curl", "-fsS", "http://127.0.0.1:9200/_cluster/health?wait_for_status=yellow&timeout=2s"],
                            **health_timing},
            "restart": "unless-stopped",
            "mem_limit": "1536m",
            "logging": logging,
        },
        "opensearch-dashboards": {
            "image": DASHBOARDS_IMAGE,
            "profiles": profile,
            "environment": {
                "OPENSEARCH_HOSTS": '["http://opensearch:9200"]',
                "DISABLE_SECURITY_DASHBOARDS_PLUGIN": "true",
            },
            "ports": ["127.0.0.1:5601:5601"],
            "healthcheck": {"test": ["CMD", "curl", "-fsS", "http://127.0.0.1:5601/api/status"], **health_timing},
            "depends_on": {"opensearch": {"condition": "service_healthy"}},
            "restart": "unless-stopped",
            "mem_limit": "1g",
            "logging": logging,
        },
        "opensearch-init": {
            # The OpenSearch image has curl and a shell; the script only talks HTTP to the two.
            "image": OPENSEARCH_IMAGE,
            "profiles": profile,
            "entrypoint": ["sh", "/elk/init.sh"],
            "volumes": ["../compose/elk:/elk:ro"],
            "depends_on": {"opensearch": {"condition": "service_healthy"},
                           "opensearch-dashboards": {"condition": "service_healthy"}},
            # A one-shot: it exits 0 once both are loaded (`docker compose ps -a` shows it), so it
            # has no health to probe.
            "healthcheck": {"disable": True},
            "restart": "no",
            "mem_limit": "256m",
            "logging": logging,
        },
    }

"""The component registry: every component of the stack, defined once.

A definition says what a component is everywhere it runs: its image and native binary, its
arguments and environment, its ports, health endpoint, data directory, user, memory limit and
the signals it stores. Everything else is derived from here:

* the docker compose services (``compose_services``),
* the supervisord programs of the native runtime (``mlobs/runtime/native.py``),
* the addresses every config template dials (``render.Target.connect``),
* ``mlobs status``, the health waits of ``mlobs up``, ``mlobs verify`` and the e2e harness
  (``health_url``).

Adding a component is one ``Component(...)`` in ``REGISTRY`` plus its config template (listed in
``configs``). Arguments and environment are functions of a ``Place``: where the component runs
(compose or native) decides the paths and addresses, the definition decides the rest.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # the config model imports this module for the port defaults
    from mlobs.config import Stack

ROOT = Path(__file__).resolve().parent.parent
Signal = Literal["traces", "metrics", "logs"]
Probe = Literal["self", "sidecar", "python"]
SECRET_HINT = "run `make up` (or `mlobs env`) to generate .env"


@dataclass(frozen=True)
class Port:
    """One listening endpoint. ``key`` is the field of ``stack.yaml`` ``ports``; natively the
    component listens on 127.0.0.1 at that port, in a container at ``container``."""

    key: str
    container: int
    default: int
    publish: bool = True  # compose publishes it on 127.0.0.1:<ports.key>
    native_only: bool = False  # a port that only exists to keep native components apart
    #: bound to loopback in a container and a pod too; never published, in no Kubernetes Service
    loopback_only: bool = False
    in_cluster: bool = True  # a port of the component's Kubernetes Service


@dataclass(frozen=True)
class Health:
    port: str  # key of a Port of the component
    path: str
    probe: Probe = "self"  # compose: wget in the image, a busybox sidecar (distroless), or python


@dataclass(frozen=True)
class Data:
    """A data directory: a named volume in compose, ``<data dir>/<native>`` natively."""

    container: str
    native: str = ""  # defaults to the component name
    volume: str = ""  # compose named volume; defaults to <name>-data


@dataclass(frozen=True)
class Component:
    name: str
    role: str  # one line for `mlobs status` and the README
    ports: tuple[Port, ...]
    health: Health
    args: Callable[[Place], list[str]] = lambda p: []
    env: Callable[[Place], dict[str, str]] = lambda p: {}
    #: key of stack.yaml ``components`` (image and version); None for the images built here
    pin: str | None = None
    #: dockerfile for the images built from this repository (the Python services)
    build: str | None = None
    build_image: str | None = None
    #: native: binaries looked up in .bin/ then PATH (first found wins), or a Python module
    binaries: tuple[str, ...] = ()
    python_module: str | None = None
    how_to_get: str = "run `make native-deps` (builds it from the Go module proxy)"
    required: bool = False  # the native stack refuses to start without it
    #: rendered config files it reads: (path under the output root, path inside the container)
    configs: tuple[tuple[str, str], ...] = ()
    data: Data | None = None
    user: str | None = None
    mem_limit: str = "256m"
    signals: tuple[Signal, ...] = ()  # the signals it stores
    depends_on: tuple[str, ...] = ()  # compose start order (healthy, where it has a health check)
    scrape: str | None = None  # port key where Prometheus scrapes its own metrics (/metrics)
    compose: bool = True  # part of the compose stack

    def port(self, key: str) -> Port:
        return next(p for p in self.ports if p.key == key)


@dataclass(frozen=True)
class Place:
    """Where a component runs: decides paths, addresses and how secrets are given."""

    target: object  # render.Target (not imported: render imports this module)
    secrets: Mapping[str, str] | None = None  # native: the values; compose: ${VAR} references
    log_dir: Path | None = None

    @property
    def stack(self) -> Stack:
        return self.target.stack  # type: ignore[attr-defined]

    @property
    def native(self) -> bool:
        return self.target.name == "native"  # type: ignore[attr-defined]

    def listen(self, key: str) -> str:
        return self.target.listen(key)  # type: ignore[attr-defined]

    def host(self, key: str) -> str:
        return self.target.host(key)  # type: ignore[attr-defined]

    def port(self, key: str) -> int:
        return self.target.port(key)  # type: ignore[attr-defined]

    def url(self, key: str, path: str = "") -> str:
        return f"http://{self.target.connect(key)}{path}"  # type: ignore[attr-defined]

    def config(self, rel: str) -> str:
        """A rendered config file (or folder) as the component sees it."""
        if self.native:
            return str(Path(self.target.out_dir) / rel)  # type: ignore[attr-defined]
        for c in REGISTRY:
            for src, dst in c.configs:
                if src == rel:
                    return dst
        raise KeyError(f"no component mounts {rel}")

    def data(self, name: str) -> str:
        d = get(name).data
        assert d is not None, f"{name} has no data directory"
        if self.native:
            return str(Path(self.target.data_dir) / (d.native or name))  # type: ignore[attr-defined]
        return d.container

    def secret(self, name: str) -> str:
        if self.secrets is None:
            return f"${{{name}:?{SECRET_HINT}}}"
        return self.secrets[name]


def otlp_env(p: Place, service_name: str, export_interval_ms: int = 5000) -> dict[str, str]:
    """The OTEL_* variables that send a service's telemetry to this stack's collector, and the
    keep rule of tail sampling (mlobs/sampling.py) that mlobs.telemetry's exemplar filter applies."""
    return {**otlp_env_to(p.url("otlp_http"), service_name, export_interval_ms), **sampling_env(p.stack)}


#: The SDK's span export delay. Tail sampling decides a trace ``sampling.decision_wait`` after its
#: first span arrives: spans exported later follow a decision made without them (an error span
#: among them would be lost with its trace), so the delay must stay well below the wait.
BSP_SCHEDULE_DELAY_MS = 1000


def otlp_env_to(endpoint: str, service_name: str, export_interval_ms: int = 5000,
                environment: str = "local") -> dict[str, str]:
    """The OTEL_* variables for any OTLP/HTTP endpoint (the stack's collector, or a test sink)."""
    return {
        "OTEL_SERVICE_NAME": service_name,
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_BSP_SCHEDULE_DELAY": str(BSP_SCHEDULE_DELAY_MS),
        "OTEL_METRIC_EXPORT_INTERVAL": str(export_interval_ms),
        "OTEL_RESOURCE_ATTRIBUTES": f"deployment.environment.name={environment}",
    }


def sampling_env(stack: Stack) -> dict[str, str]:
    from mlobs import sampling

    s = stack.sampling
    return {
        sampling.ENV_PERCENTAGE: f"{s.effective_percentage:g}",
        sampling.ENV_SLOW_MS: str(s.slow_threshold_ms),
        sampling.ENV_KEEP_ERRORS: "true" if s.keep_errors else "false",
        sampling.ENV_TRACE_DETAIL: "true" if s.profile == "debug" else "false",
    }


# ---- the definitions ----------------------------------------------------------------------


def _prometheus_args(p: Place) -> list[str]:
    return [
        f"--config.file={p.config('prometheus/prometheus.yml')}",
        f"--storage.tsdb.path={p.data('prometheus')}",
        f"--storage.tsdb.retention.time={p.stack.retention.prometheus}",
        f"--web.listen-address={p.listen('prometheus')}",
        "--web.enable-otlp-receiver",
        # Exemplars on; the count connector sends delta sums, which Prometheus turns cumulative.
        "--enable-feature=exemplar-storage,otlp-deltatocumulative",
        "--web.enable-lifecycle",
    ]


def _alertmanager_args(p: Place) -> list[str]:
    return [
        f"--config.file={p.config('alertmanager/alertmanager.yml')}",
        f"--storage.path={p.data('alertmanager')}",
        f"--web.listen-address={p.listen('alertmanager')}",
        # One instance: no gossip port to bind or clash.
        "--cluster.listen-address=",
    ]


def _grafana_env(p: Place) -> dict[str, str]:
    s = p.stack
    env = {
        "GF_SECURITY_ADMIN_USER": "admin",
        "GF_SECURITY_ADMIN_PASSWORD": p.secret("GRAFANA_ADMIN_PASSWORD"),
        "GF_SERVER_HTTP_ADDR": p.host("grafana"),
        "GF_SERVER_HTTP_PORT": str(p.port("grafana")),
        "GF_PATHS_PROVISIONING": p.config("grafana/provisioning"),
        "GF_PATHS_DATA": p.data("grafana"),
        "GF_AUTH_ANONYMOUS_ENABLED": "true" if s.grafana.anonymous_viewer else "false",
        # Anonymous visitors, when allowed, may only look.
        "GF_AUTH_ANONYMOUS_ORG_ROLE": "Viewer",
        "GF_AUTH_DISABLE_LOGIN_FORM": "false",
        "GF_USERS_ALLOW_SIGN_UP": "false",
        # Offline-safe: Grafana would otherwise try to download plugins at start.
        "GF_PLUGINS_PREINSTALL_DISABLED": "true",
        "GF_ANALYTICS_REPORTING_ENABLED": "false",
        "GF_ANALYTICS_CHECK_FOR_UPDATES": "false",
        "GF_NEWS_NEWS_FEED_ENABLED": "false",
    }
    if p.native and p.log_dir is not None:
        env["GF_PATHS_LOGS"] = str(p.log_dir)
    return env


def _grafana_args(p: Place) -> list[str]:
    if not p.native:
        return []
    # The official release unpacks to <home>/bin/grafana; the binary finds its assets from home.
    return ["server", "--homepath={grafana_home}"]


def _analyzer_env(p: Place) -> dict[str, str]:
    from mlobs import render

    return {
        "MLOBS_ANALYZER_HOST": p.host("analyzer"),
        "MLOBS_ANALYZER_PORT": str(p.port("analyzer")),
        "MLOBS_PROMETHEUS_URL": p.url("prometheus"),
        "MLOBS_GRAFANA_URL": p.url("grafana"),
        "MLOBS_ANALYZER_STATE_FILE": f"{p.data('analyzer')}/incidents.json",
        **render.analyzer_env(p.stack),
        # Links in the analyses are opened by a browser on this host.
        "MLOBS_GRAFANA_PUBLIC_URL": f"http://127.0.0.1:{p.target.host_port('grafana')}",  # type: ignore[attr-defined]
        "GRAFANA_ADMIN_USER": "admin",
        "GRAFANA_ADMIN_PASSWORD": p.secret("GRAFANA_ADMIN_PASSWORD"),
        **otlp_env(p, "mlobs-analyzer"),
        "PYTHONUNBUFFERED": "1",
    }


def sample_env(p: Place) -> dict[str, str]:
    sample = p.stack.sample_service
    assert sample is not None
    return {
        "MLOBS_HOST": p.host("inference"),
        "MLOBS_PORT": str(p.port("inference")),
        "MLOBS_MODEL_DIR": p.data("inference"),
        "MLOBS_ADMIN_TOKEN": p.secret("MLOBS_ADMIN_TOKEN"),
        **otlp_env(p, sample.name),
        "PYTHONUNBUFFERED": "1",
        **sample.env,
    }


def _collector_env(p: Place) -> dict[str, str]:
    """The destinations' secrets (mlobs/destinations.py) and the exposed receivers' token
    (mlobs/exposure.py): never a value in a rendered file."""
    from mlobs import destinations, exposure

    return {**destinations.collector_env(p), **exposure.collector_env(p)}


def _victorialogs_args(p: Place) -> list[str]:
    return [
        f"-httpListenAddr={p.listen('victorialogs')}",
        f"-storageDataPath={p.data('victorialogs')}",
        f"-retentionPeriod={p.stack.retention.victorialogs}",
        # No request logging per insert: the stack's own logs stay readable.
        "-loggerLevel=WARN",
    ]


REGISTRY: tuple[Component, ...] = (
    Component(
        "prometheus", "stores metrics and exemplars, evaluates the alert rules",
        ports=(Port("prometheus", 9090, 9090),), health=Health("prometheus", "/-/ready"),
        args=_prometheus_args, scrape="prometheus", pin="prometheus", binaries=("prometheus",), required=True,
        configs=(("prometheus/prometheus.yml", "/etc/prometheus/prometheus.yml"),
                 ("prometheus/rules", "/etc/prometheus/rules")),
        data=Data("/prometheus"), mem_limit="1g", signals=("metrics",),
    ),
    Component(
        "otel-collector", "receives every signal over OTLP, derives span metrics, samples, routes",
        ports=(Port("otlp_grpc", 4317, 4317), Port("otlp_http", 4318, 4318),
               Port("collector_health", 13133, 13133), Port("collector_metrics", 8888, 8888),
               # otlp.expose (mlobs/exposure.py): TLS and a bearer token, published on otlp.expose.address
               Port("otlp_grpc_tls", 4319, 4319, publish=False, in_cluster=False),
               Port("otlp_http_tls", 4320, 4320, publish=False, in_cluster=False),
               # the pprof extension: Go profiles for `mlobs bench`, on loopback wherever it runs
               Port("collector_pprof", 1777, 1777, publish=False, loopback_only=True, in_cluster=False)),
        health=Health("collector_health", "/", "sidecar"),
        args=lambda p: [f"--config={p.config('otel-collector/config.yaml')}"],
        scrape="collector_metrics", pin="otel-collector", binaries=("otelcol-mlobs", "otelcol-contrib"), required=True,
        env=lambda p: _collector_env(p),
        configs=(("otel-collector/config.yaml", "/etc/otelcol-contrib/config.yaml"),),
        # The sending queues persist here.
        data=Data("/var/lib/otelcol/file_storage", volume="otelcol-data"), user="10001:10001", mem_limit="512m",
        depends_on=("prometheus", "loki", "tempo", "jaeger", "victorialogs"),
    ),
    Component(
        "alertmanager", "groups alerts and sends them to the analyzer",
        ports=(Port("alertmanager", 9093, 9093),), health=Health("alertmanager", "/-/ready"),
        args=_alertmanager_args, scrape="alertmanager", pin="alertmanager", binaries=("alertmanager",),
        configs=(("alertmanager/alertmanager.yml", "/etc/alertmanager/alertmanager.yml"),),
        data=Data("/alertmanager"),
    ),
    Component(
        "loki", "stores logs (traces: tempo | jaeger; logs: loki | victorialogs)",
        ports=(Port("loki", 3100, 3100), Port("loki_grpc", 9095, 9096, publish=False, native_only=True)),
        health=Health("loki", "/ready", "sidecar"),
        args=lambda p: [f"-config.file={p.config('loki/config.yaml')}"],
        scrape="loki", pin="loki", binaries=("loki",),
        how_to_get="install the official Loki release binary into .bin/loki or PATH (see README)",
        configs=(("loki/config.yaml", "/etc/loki/config.yaml"),),
        data=Data("/loki"), user="10001:10001", mem_limit="1g", signals=("logs",),
    ),
    Component(
        "victorialogs", "stores logs, answers LogsQL, serves its own web UI",
        ports=(Port("victorialogs", 9428, 9428),), health=Health("victorialogs", "/health", "sidecar"),
        args=_victorialogs_args, scrape="victorialogs", pin="victorialogs", binaries=("victoria-logs",),
        data=Data("/victoria-logs-data"), mem_limit="512m", signals=("logs",),
    ),
    Component(
        "tempo", "stores traces, answers TraceQL",
        ports=(Port("tempo", 3200, 3200),
               Port("tempo_otlp_grpc", 4317, 4417, publish=False, native_only=True),
               Port("tempo_grpc", 9095, 9097, publish=False, native_only=True)),
        health=Health("tempo", "/ready", "sidecar"),
        args=lambda p: [f"-config.file={p.config('tempo/config.yaml')}", "-target=all"],
        scrape="tempo", pin="tempo", binaries=("tempo",),
        how_to_get="install the official Tempo release binary into .bin/tempo or PATH (see README)",
        configs=(("tempo/config.yaml", "/etc/tempo/config.yaml"),),
        data=Data("/var/tempo"), user="10001:10001", mem_limit="1g", signals=("traces",),
    ),
    Component(
        "jaeger", "stores traces (Badger on disk), answers trace-by-id, search and dependencies",
        ports=(Port("jaeger", 16686, 16686),
               Port("jaeger_otlp_grpc", 4317, 4427, publish=False, native_only=True),
               Port("jaeger_grpc", 16685, 16685, publish=False, native_only=True),
               Port("jaeger_health", 13133, 13134, publish=False, native_only=True),
               Port("jaeger_metrics", 8888, 8889, publish=False, native_only=True)),
        health=Health("jaeger_health", "/status", "sidecar"),
        args=lambda p: [f"--config={p.config('jaeger/config.yaml')}"],
        scrape="jaeger_metrics", pin="jaeger", binaries=("jaeger",),
        configs=(("jaeger/config.yaml", "/etc/jaeger/config.yaml"),),
        data=Data("/var/lib/jaeger"), user="10001:10001", mem_limit="512m", signals=("traces",),
    ),
    Component(
        "grafana", "dashboards, Explore, the links between the signals",
        ports=(Port("grafana", 3000, 3000),), health=Health("grafana", "/api/health"),
        args=_grafana_args, env=_grafana_env, scrape="grafana", pin="grafana", binaries=("grafana",),
        how_to_get="unpack the official Grafana release and link its bin/grafana into .bin/ (see README)",
        configs=(("grafana/provisioning", "/etc/grafana/provisioning"),
                 ("grafana/dashboards", "/var/lib/grafana/dashboards")),
        data=Data("/var/lib/grafana"), mem_limit="512m",
        depends_on=("prometheus", "alertmanager", "loki", "tempo", "jaeger", "victorialogs"),
    ),
    Component(
        "analyzer", "root-cause analysis of each alert, Grafana annotations",
        ports=(Port("analyzer", 8010, 8010),), health=Health("analyzer", "/healthz", "python"),
        env=_analyzer_env, build="analyzer/Dockerfile", build_image="mlobs-analyzer:local",
        python_module="analyzer.app", depends_on=("prometheus", "otel-collector"),
        # its incidents, kept across restarts (analyzer/incidents.py)
        data=Data("/var/lib/mlobs-analyzer", native="analyzer", volume="analyzer-data"), user="10001:10001",
    ),
    Component(
        "inference", "the sample ML inference service (stack.yaml services: sample: true)",
        ports=(Port("inference", 8000, 8000),), health=Health("inference", "/healthz", "python"),
        env=sample_env, build="generator/Dockerfile", build_image="mlobs-inference:local",
        python_module="generator.service", data=Data("/var/lib/mlobs/models", native="models", volume="model-data"),
        mem_limit="512m", depends_on=("otel-collector",),
    ),
)

#: The busybox image that probes the distroless containers (a pin, not a component that runs alone).
PROBE_PIN = "probe"
#: Which store holds each signal, per choice in stack.yaml ``backends``.
STORES: dict[str, tuple[str, ...]] = {
    s: tuple(c.name for c in REGISTRY if s in c.signals) for s in ("traces", "metrics", "logs")
}


def get(name: str) -> Component:
    for c in REGISTRY:
        if c.name == name:
            return c
    raise KeyError(f"no component {name!r}; known: {', '.join(c.name for c in REGISTRY)}")


def names() -> tuple[str, ...]:
    return tuple(c.name for c in REGISTRY)


def pins() -> tuple[str, ...]:
    """The keys of stack.yaml ``components``: every pinned image and version."""
    return tuple(c.pin for c in REGISTRY if c.pin) + (PROBE_PIN,)


def all_ports() -> tuple[Port, ...]:
    return tuple(p for c in REGISTRY for p in c.ports)


def owner_of(port_key: str) -> Component:
    for c in REGISTRY:
        if any(p.key == port_key for p in c.ports):
            return c
    raise KeyError(f"no component has port {port_key!r}")


def program_name(c: Component, stack: Stack) -> str:
    """The compose service and supervisord program name: the sample service runs under its
    service.name from stack.yaml."""
    if c.name == "inference" and stack.sample_service:
        return stack.sample_service.name
    return c.name


def selected(stack: Stack, available: Iterable[str] | None = None) -> tuple[Component, ...]:
    """The components a stack runs. Each signal gets the store stack.yaml ``backends`` chooses;
    natively (``available`` = the components whose binaries exist) the other store of that
    signal stands in when the chosen one's binary is absent."""
    avail = set(names() if available is None else available)
    chosen: set[str] = set()
    for signal, choice in (("traces", stack.backends.traces), ("logs", stack.backends.logs)):
        if choice in avail:
            chosen.add(choice)
        else:
            chosen.update(n for n in STORES[signal] if n in avail)
    stores = {n for s in ("traces", "logs") for n in STORES[s]}
    out = []
    for c in REGISTRY:
        if c.name in stores and c.name not in chosen:
            continue
        if c.name == "inference" and not stack.sample_service:
            continue
        out.append(c)
    return tuple(out)


def volume(c: Component) -> str:
    assert c.data is not None
    return c.data.volume or f"{c.name}-data"


def scrape_jobs(target: object) -> list[tuple[str, str]]:
    """Prometheus' scrape jobs (job name, address) of the components that run on a target. The
    infrastructure alerts key on these job names."""
    present = target.present | {"otel-collector"}  # type: ignore[attr-defined]
    return [(c.name, target.connect(c.scrape))  # type: ignore[attr-defined]
            for c in REGISTRY if c.scrape and c.name in present]


def health_url(target: object, c: Component, stack: Stack) -> str:
    path = c.health.path
    if c.name == "inference" and stack.sample_service and stack.sample_service.health_path:
        path = stack.sample_service.health_path
    return f"http://{target.connect(c.health.port)}{path}"  # type: ignore[attr-defined]


# ---- compose ------------------------------------------------------------------------------

_LOGGING = {"driver": "json-file", "options": {"max-size": "10m", "max-file": "3"}}
_HEALTH_TIMING = {"interval": "5s", "timeout": "3s", "retries": 60}
LOGGING, HEALTH_TIMING = _LOGGING, _HEALTH_TIMING  # the elk profile's services use them too


def _healthcheck(c: Component, url: str) -> list[str]:
    if c.health.probe == "python":
        return ["CMD", "python", "-c", f"import urllib.request; urllib.request.urlopen('{url}', timeout=2)"]
    return ["CMD", "wget", "-q", "-T", "2", "-O", "/dev/null", url]


def compose_services(target: object) -> dict:
    """The compose file's content: services, probes and volumes, all from the registry."""
    from mlobs import exposure  # it reads the config model, which imports this module

    stack: Stack = target.stack  # type: ignore[attr-defined]
    place = Place(target)
    active = selected(stack)
    active_names = {c.name for c in active}
    services: dict[str, dict] = {}
    volumes: dict[str, dict] = {}
    owned = [c for c in active if c.data and c.user]
    if owned:
        # A new named volume belongs to root; these components run as another user.
        services["volume-init"] = {
            "image": stack.components.get(PROBE_PIN).image,
            "command": ["chown", "-R", owned[0].user, *(f"/{c.name}" for c in owned)],
            "volumes": [f"{volume(c)}:/{c.name}" for c in owned],
            "logging": _LOGGING,
        }

    def ready(dep: str) -> dict[str, dict[str, str]]:
        dc = get(dep)
        name = program_name(dc, stack)
        if dc.health.probe == "sidecar":
            return {f"{name}-ready": {"condition": "service_healthy"}}
        return {name: {"condition": "service_healthy"}}

    for c in active:
        name = program_name(c, stack)
        svc: dict = {}
        if c.build:
            svc["build"] = {"context": "..", "dockerfile": c.build}
            svc["image"] = c.build_image
        else:
            svc["image"] = stack.components.get(c.pin).image  # type: ignore[arg-type]
        args = c.args(place)
        if args:
            svc["command"] = args
        env = c.env(place)
        if env:
            svc["environment"] = env
        mounts = [f"../{src}:{dst}:ro" for src, dst in c.configs]
        if c.data:
            vol = volume(c)
            volumes[vol] = {}
            mounts.append(f"{vol}:{c.data.container}")
        if mounts:
            svc["volumes"] = mounts
        published = [p for p in c.ports if p.publish]
        if published:
            svc["ports"] = [f"127.0.0.1:{target.host_port(p.key)}:{p.container}" for p in published]  # type: ignore[attr-defined]
        if c.name == "otel-collector" and exposure.enabled(stack):
            svc["ports"] = svc.get("ports", []) + exposure.compose_ports(stack)
            mounts.append(f"../.stack/tls:{exposure.CONTAINER_DIR}:ro")
        if c.user:
            svc["user"] = c.user
        if c.health.probe != "sidecar":
            port = c.port(c.health.port).container
            svc["healthcheck"] = {"test": _healthcheck(c, f"http://127.0.0.1:{port}{c.health.path}"), **_HEALTH_TIMING}
        deps: dict[str, dict[str, str]] = {}
        if c in owned:
            deps["volume-init"] = {"condition": "service_completed_successfully"}
        for dep in c.depends_on:
            if dep in active_names:
                deps.update(ready(dep))
        if deps:
            svc["depends_on"] = deps
        svc["restart"] = "unless-stopped"
        svc["mem_limit"] = c.mem_limit
        svc["logging"] = _LOGGING
        services[name] = svc
        if c.health.probe == "sidecar":
            # Distroless image (no shell, no wget): a busybox container probes it over the network.
            url = f"http://{name}:{c.port(c.health.port).container}{c.health.path}"
            services[f"{name}-ready"] = {
                "image": stack.components.get(PROBE_PIN).image,
                "command": ["sleep", "2147483647"],
                "healthcheck": {"test": _healthcheck(c, url), **_HEALTH_TIMING},
                "depends_on": {name: {"condition": "service_started"}},
                "restart": "unless-stopped",
                "mem_limit": "16m",
                "logging": _LOGGING,
            }
    return {"name": "mlobs", "services": services, "volumes": volumes}


# ---- native -------------------------------------------------------------------------------


@dataclass
class Program:
    command: list[str]
    environment: dict[str, str] = field(default_factory=dict)
    directory: str | None = None


def native_program(c: Component, place: Place, binary: Path | None) -> Program:
    """A supervisord program for one component: its binary (or Python module) and its args."""
    if c.python_module:
        return Program([sys.executable, "-m", c.python_module, *c.args(place)], c.env(place), str(ROOT))
    assert binary is not None
    home = str(binary.resolve().parent.parent)
    args = [a.replace("{grafana_home}", home) for a in c.args(place)]
    return Program([str(binary), *args], c.env(place))

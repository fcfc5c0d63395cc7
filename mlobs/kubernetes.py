"""The Kubernetes target: plain manifests for ``kubectl apply -k``, from the component registry.

    mlobs render --target kubernetes [--out deploy/kubernetes]

Everything a component is (image, arguments, environment, ports, health endpoint, data directory,
user, memory limit) comes from ``mlobs/components.py``, and every config from the same templates as
compose (``render.render`` with the ``kubernetes`` target, whose addresses are in-cluster Service
names). This module holds only what is Kubernetes' own: which workloads (tiers) a component runs
as, their kinds and replicas, CPU, probes, security contexts, Services and disruption budgets, and
the scalable modes of Loki and Tempo on object storage.

The collector runs in two tiers: an agent DaemonSet (``otel-collector/agent.yaml.j2``: the
``k8s_attributes`` processor, then the ``load_balancing`` exporter routed by trace id) and a gateway
Deployment (``otel-collector/config.yaml`` with ``otel-collector/gateway.yaml.j2`` merged over it).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import yaml

from mlobs import components as registry
from mlobs import config, render

ROOT = render.ROOT
OUT = ROOT / "deploy" / "kubernetes"
#: The Kubernetes API version the manifests are validated against (kubernetes-validate ships 1.25 to 1.37).
KUBERNETES_VERSION = "1.35.0"
#: Every file this target writes starts with it (a compose render neither checks nor prunes them).
HEADER = "# Rendered by `mlobs render --target kubernetes` from "
PART_OF = "mlobs"
Kind = Literal["Deployment", "StatefulSet", "DaemonSet"]


class KubernetesError(ValueError):
    """stack.yaml asks for something the Kubernetes target does not run."""


@dataclass(frozen=True)
class Tier:
    """One workload of a component. ``name`` is also its Service's; the component's own name
    stands for its program name (the sample service runs under its service.name)."""

    name: str
    component: str
    kind: Kind
    replicas: int = 1
    cpu: tuple[str, str] = ("100m", "500m")  # request, limit
    target: str | None = None  # Loki's and Tempo's -target
    storage: str | None = None  # a PersistentVolumeClaim of this size for the data directory; else emptyDir


TIERS: tuple[Tier, ...] = (
    Tier("otel-agent", "otel-collector", "DaemonSet", cpu=("200m", "1")),
    Tier("otel-gateway", "otel-collector", "Deployment", 2, cpu=("500m", "2")),
    Tier("prometheus", "prometheus", "StatefulSet", 1, cpu=("500m", "2"), storage="50Gi"),
    Tier("alertmanager", "alertmanager", "StatefulSet", 2, cpu=("50m", "200m"), storage="1Gi"),
    # Loki's simple scalable mode: write (distributor, ingester), read (query frontend, querier),
    # backend (compactor, index gateway, query scheduler), on object storage.
    Tier("loki-write", "loki", "StatefulSet", 3, cpu=("500m", "2"), target="write", storage="10Gi"),
    Tier("loki-read", "loki", "Deployment", 2, cpu=("250m", "2"), target="read"),
    Tier("loki-backend", "loki", "StatefulSet", 1, cpu=("250m", "1"), target="backend", storage="10Gi"),
    # Tempo 3's microservices mode (its only scalable mode): distributors write to a Kafka-compatible
    # log; block-builders write blocks to object storage; live-stores answer for recent traces.
    Tier("tempo-distributor", "tempo", "Deployment", 2, cpu=("250m", "2"), target="distributor"),
    Tier("tempo-live-store", "tempo", "StatefulSet", 2, cpu=("250m", "2"), target="live-store", storage="10Gi"),
    Tier("tempo-block-builder", "tempo", "StatefulSet", 1, cpu=("250m", "2"), target="block-builder",
         storage="10Gi"),
    Tier("tempo-query-frontend", "tempo", "Deployment", 1, cpu=("100m", "1"), target="query-frontend"),
    Tier("tempo-querier", "tempo", "Deployment", 2, cpu=("250m", "2"), target="querier"),
    Tier("tempo-backend-scheduler", "tempo", "StatefulSet", 1, cpu=("50m", "500m"), target="backend-scheduler",
         storage="1Gi"),
    Tier("tempo-backend-worker", "tempo", "Deployment", 1, cpu=("100m", "1"), target="backend-worker"),
    Tier("grafana", "grafana", "StatefulSet", 1, cpu=("100m", "1"), storage="1Gi"),
    Tier("analyzer", "analyzer", "Deployment", 1, cpu=("100m", "1")),
    Tier("inference", "inference", "StatefulSet", 1, cpu=("250m", "2"), storage="1Gi"),
)

#: The tier whose Service answers a port key, where a component runs as several tiers. Services
#: send OTLP to the agent of their node; Grafana reads Loki's read tier and Tempo's query frontend.
SERVES: dict[str, str] = {
    "otlp_grpc": "otel-agent", "otlp_http": "otel-agent",
    "collector_health": "otel-agent", "collector_metrics": "otel-agent",
    "loki": "loki-read", "loki_grpc": "loki-read",
    "tempo": "tempo-query-frontend", "tempo_grpc": "tempo-query-frontend",
    "tempo_otlp_grpc": "tempo-distributor",
}
#: What the gateway dials differently: logs are pushed to Loki's write tier (the read tier only answers queries).
GATEWAY_SERVES: dict[str, str] = {"loki": "loki-write"}
#: The rendered configs whose readers are the query side (Grafana): rendered with SERVES alone.
READER_CONFIGS = ("grafana/provisioning/datasources/datasources.yaml",)

#: runAsUser of the images whose registry entry names no user: each image's own non-root user.
IMAGE_USER: dict[str, int] = {"prometheus": 65534, "alertmanager": 65534, "grafana": 472,
                              "analyzer": 10001, "inference": 10001}
#: readOnlyRootFilesystem: every image writes only to its data directory and /tmp (both volumes)...
READ_ONLY_ROOT: dict[str, bool] = {c.name: True for c in registry.REGISTRY}
#: ...but Grafana, which cannot run here, is not known to start read-only: left writable.
READ_ONLY_ROOT["grafana"] = False

GOSSIP_PORT = 7946  # memberlist of Loki and of Tempo (each its own headless Service)
ALERTMANAGER_CLUSTER_PORT = 9094
#: The gateway's label on the series it makes (transform/gateway), and where its pod name comes from.
GATEWAY_LABEL = "otelcol_gateway"
POD_NAME_ENV, POD_IP_ENV, NODE_NAME_ENV = "K8S_POD_NAME", "K8S_POD_IP", "K8S_NODE_NAME"
#: What k8s_attributes adds to every signal at the agent.
POD_METADATA = ("k8s.namespace.name", "k8s.pod.name", "k8s.pod.uid", "k8s.node.name", "k8s.deployment.name",
                "k8s.statefulset.name", "k8s.daemonset.name")
#: The object-storage Secret's keys (the S3 convention; Loki and Tempo read them with -config.expand-env).
S3_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
REMOTE_WRITE_DIR = "/etc/prometheus/remote-write"
PROBE_TIMING = {
    "startupProbe": {"periodSeconds": 5, "failureThreshold": 60},
    "readinessProbe": {"periodSeconds": 10, "failureThreshold": 3},
    "livenessProbe": {"periodSeconds": 20, "failureThreshold": 6},
}


def settings(stack: config.Stack) -> config.KubernetesSettings:
    return stack.kubernetes or config.KubernetesSettings()


def tier(name: str) -> Tier:
    return next(t for t in TIERS if t.name == name)


def tiers_of(component: str) -> tuple[Tier, ...]:
    return tuple(t for t in TIERS if t.component == component)


def workload_name(t: Tier, stack: config.Stack) -> str:
    if t.name == t.component:
        return registry.program_name(registry.get(t.component), stack)
    return t.name


def components(stack: config.Stack) -> tuple[registry.Component, ...]:
    """The components the cluster runs: compose's, with Tempo and Loki as the stores."""
    for signal, store in (("traces", "tempo"), ("logs", "loki")):
        choice = getattr(stack.backends, signal)
        if choice != store:
            raise KubernetesError(f"stack.yaml: backends.{signal}: {choice!r} is not run by the kubernetes "
                                  f"target, which runs {store} in its scalable mode; set backends.{signal}: {store}")
    return registry.selected(stack)


def dns(stack: config.Stack, overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """The Service DNS name that answers every port key of the registry."""
    ns = settings(stack).namespace
    out = {}
    for p in registry.all_ports():
        owner = registry.owner_of(p.key)
        own = tiers_of(owner.name)  # none for the stores the cluster does not run (Jaeger, VictoriaLogs)
        name = {**SERVES, **(overrides or {})}.get(p.key) or (workload_name(own[0], stack) if own else owner.name)
        out[p.key] = f"{name}.{ns}.svc"
    return out


def headless(name: str, stack: config.Stack) -> str:
    return f"{name}-headless.{settings(stack).namespace}.svc"


def target(stack: config.Stack, overrides: Mapping[str, str] | None = None,
           missing_components: frozenset[str] = frozenset()) -> render.Target:
    """The ``kubernetes`` render target: container ports, in-cluster Service names."""
    present = frozenset(c.name for c in components(stack) if c.name in render.BACKENDS)
    t = render.Target("kubernetes", stack, present, missing_components=missing_components,
                      dns=dns(stack, overrides))
    return replace(t, paths=render._paths(t))


class SecretRef(str):
    """An environment value that is a key of the stack's Secret: rendered as a secretKeyRef."""

    key: str

    def __new__(cls, key: str) -> SecretRef:
        ref = super().__new__(cls, f"<secret {key}>")
        ref.key = key
        return ref


class _SecretRefs(Mapping[str, str]):
    """Place.secrets for Kubernetes: every secret is a reference, never a value."""

    def __getitem__(self, name: str) -> str:
        return SecretRef(name)

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


# ---- the collector's two tiers ------------------------------------------------------------


def agent_context(t: render.Target) -> dict[str, Any]:
    stack = t.stack
    proc = ["memory_limiter", "k8s_attributes", "batch"]
    otlp = registry.get("otel-collector").port("otlp_grpc").container
    return {
        "node_env": NODE_NAME_ENV,
        "metadata": list(POD_METADATA),
        "routing_key": "traceID",
        "gateway_pods": headless("otel-gateway", stack),
        "gateway_port": otlp,
        "gateway": f"{dns(stack, {'otlp_grpc': 'otel-gateway'})['otlp_grpc']}:{otlp}",
        "pipelines": {
            "traces": {"receivers": ["otlp"], "processors": proc, "exporters": ["load_balancing"]},
            "metrics": {"receivers": ["otlp"], "processors": proc, "exporters": ["otlp_grpc/gateway"]},
            "logs": {"receivers": ["otlp"], "processors": proc, "exporters": ["otlp_grpc/gateway"]},
        },
    }


def gateway_context(t: render.Target) -> dict[str, Any]:
    """The gateway's pipelines: config.yaml's, with the series the connectors make (span metrics,
    service graph, log counts) in a pipeline of their own that labels them with the gateway."""
    pipelines = render.collector_pipelines(t)
    metrics = pipelines["metrics"]
    derived = [r for r in metrics["receivers"] if r != "otlp"]
    rest = [p for p in metrics["processors"] if p != "batch"]
    return {
        "label_statement": f'set(datapoint.attributes["{GATEWAY_LABEL}"], "${{env:{POD_NAME_ENV}}}")',
        "pipelines": {
            "metrics": {**metrics, "receivers": ["otlp"]},
            "metrics/derived": {"receivers": derived, "processors": [*rest, "transform/gateway", "batch"],
                                "exporters": metrics["exporters"]},
        },
    }


COLLECTOR_TEMPLATES = {"agent": "otel-collector/agent.yaml.j2", "gateway": "otel-collector/gateway.yaml.j2"}


def collector_configs(stack: config.Stack, missing_components: frozenset[str] = frozenset()) -> dict[str, str]:
    """The collector configs of both tiers: agent.yaml, and config.yaml + gateway.yaml for the gateway."""
    t = target(stack, GATEWAY_SERVES, missing_components)
    env = render.environment()
    ctx = {**render.context(t), "agent": agent_context(t), "gateway": gateway_context(t)}
    out = {"config.yaml": render.render(t)["otel-collector/config.yaml"]}
    for name, tpl in COLLECTOR_TEMPLATES.items():
        out[f"{name}.yaml"] = render.header_line(tpl) + env.get_template(tpl).render(ctx)
    return out


# ---- Loki, Tempo and Prometheus as the cluster runs them -----------------------------------


def _dump_config(doc: dict[str, Any], source: str, why: str) -> str:
    return (f"{HEADER}{source}, mlobs/kubernetes.py and stack.yaml. Do not edit: edit those.\n# {why}\n"
            + yaml.dump(doc, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=1000))


def _memberlist(doc: dict[str, Any], component: str, stack: config.Stack) -> None:
    """Gossip with every pod of the component (its memberlist Service), whatever their tier."""
    members = f"{component}-memberlist.{settings(stack).namespace}.svc:{GOSSIP_PORT}"
    doc["memberlist"] = {**doc.get("memberlist", {}), "bind_port": GOSSIP_PORT, "join_members": [members]}


def loki_config(doc: dict[str, Any], stack: config.Stack) -> dict[str, Any]:
    """Loki's rendered config, made scalable: rings over memberlist, chunks and index on S3,
    every stream on three write replicas."""
    s3 = settings(stack).object_storage
    doc = json.loads(json.dumps(doc))
    common = doc["common"]
    common["instance_addr"] = f"${{{POD_IP_ENV}}}"
    common["storage"] = {"s3": {
        "endpoint": s3.endpoint, "region": s3.region, "bucketnames": s3.buckets.loki_chunks,
        "access_key_id": f"${{{S3_KEYS[0]}}}", "secret_access_key": f"${{{S3_KEYS[1]}}}",
        "s3forcepathstyle": True, "insecure": s3.insecure}}
    common["replication_factor"] = tier("loki-write").replicas
    common["ring"] = {"kvstore": {"store": "memberlist"}}
    # why: deletes and retention are the backend tier's compactor; the other tiers find it here
    common["compactor_address"] = f"http://{dns(stack, {'loki': 'loki-backend'})['loki']}:" \
                                  f"{registry.get('loki').port('loki').container}"
    for period in doc["schema_config"]["configs"]:
        period["object_store"] = "s3"
    doc["compactor"]["delete_request_store"] = "s3"
    _memberlist(doc, "loki", stack)
    return doc


def tempo_config(doc: dict[str, Any], stack: config.Stack) -> dict[str, Any]:
    """Tempo's rendered config, made microservices: distributors write to Kafka, block-builders
    write blocks to S3, live-stores answer for recent traces; rings over memberlist."""
    k = settings(stack)
    doc = json.loads(json.dumps(doc))
    grpc = registry.get("tempo").port("tempo_grpc").container
    for ring_of in (doc["distributor"]["ring"], doc["live_store"]["ring"]):
        ring_of["instance_addr"] = f"${{{POD_IP_ENV}}}"
        ring_of["kvstore"] = {"store": "memberlist"}
    doc["ingest"] = {"kafka": {"address": k.kafka.address, "topic": k.kafka.topic}}
    doc["querier"] = {"frontend_worker": {"frontend_address": f"{headless('tempo-query-frontend', stack)}:{grpc}"}}
    scheduler = dns(stack, {"tempo_grpc": "tempo-backend-scheduler"})["tempo_grpc"]
    doc["backend_worker"]["backend_scheduler_addr"] = f"{scheduler}:{grpc}"
    s3 = k.object_storage
    trace = doc["storage"]["trace"]
    trace.pop("local", None)
    trace["backend"] = "s3"
    trace["s3"] = {"endpoint": s3.endpoint, "region": s3.region, "bucket": s3.buckets.tempo,
                   "access_key": f"${{{S3_KEYS[0]}}}", "secret_key": f"${{{S3_KEYS[1]}}}",
                   "forcepathstyle": True, "insecure": s3.insecure}
    doc["memberlist"].pop("bind_addr", None)
    _memberlist(doc, "tempo", stack)
    return doc


def prometheus_config(doc: dict[str, Any], stack: config.Stack) -> dict[str, Any]:
    """Prometheus' rendered config for the cluster: every pod of a component scraped under the
    component's job (DNS discovery on its headless Services), alerts to every Alertmanager, and
    remote_write to the long-term store of stack.yaml."""
    doc = json.loads(json.dumps(doc))
    for job in doc.get("scrape_configs", []):
        c = registry.get(job["job_name"])
        port = c.port(c.scrape).container  # type: ignore[arg-type]
        names = [headless(workload_name(t, stack), stack) for t in tiers_of(c.name)]
        job.pop("static_configs")
        job["dns_sd_configs"] = [{"names": names, "type": "A", "port": port}]
    if "alerting" in doc:
        am = registry.get("alertmanager").port("alertmanager").container
        doc["alerting"]["alertmanagers"] = [{"dns_sd_configs": [
            {"names": [headless("alertmanager", stack)], "type": "A", "port": am}]}]
    lts = settings(stack).long_term_store
    write: dict[str, Any] = {"url": lts.url, "name": lts.kind}
    if lts.tenant:
        write["headers"] = {"X-Scope-OrgID": lts.tenant}
    if lts.credentials_secret:
        write["basic_auth"] = {"username_file": f"{REMOTE_WRITE_DIR}/username",
                               "password_file": f"{REMOTE_WRITE_DIR}/password"}
    doc["remote_write"] = [write]
    return doc


SCALED = {
    "loki/config.yaml": (loki_config, "Loki's simple scalable mode (write, read, backend) on S3-compatible storage."),
    "tempo/config.yaml": (tempo_config, "Tempo's microservices mode: Kafka-compatible ingest, blocks on S3-compatible "
                                        "storage."),
    "prometheus/prometheus.yml": (prometheus_config, "Pods found by DNS on headless Services; remote_write to the "
                                                     "long-term store."),
}


def configs(stack: config.Stack) -> dict[str, str]:
    """Every config file the cluster reads (path as in the repository -> text)."""
    files = render.render(target(stack))
    reader = render.render(target(stack))
    for rel in READER_CONFIGS:
        files[rel] = reader[rel]
    for rel, (scale, why) in SCALED.items():
        src = next(tpl for tpl, dest, _ in render.template_list() if dest == rel)
        files[rel] = _dump_config(scale(yaml.safe_load(files[rel]), stack), src, why)
    collector = collector_configs(stack)
    files["otel-collector/config.yaml"] = collector["config.yaml"]
    for name in ("agent.yaml", "gateway.yaml"):
        files[f"otel-collector/{name}"] = collector[name]
    for dash in sorted((ROOT / "grafana" / "dashboards").glob("*.json")):
        files[str(dash.relative_to(ROOT))] = dash.read_text()
    return files


# ---- manifests ----------------------------------------------------------------------------


class _Dumper(render._NoAliases):
    """Multi-line strings (the configs inside ConfigMaps) as literal blocks."""


_Dumper.add_representer(
    str, lambda d, s: d.represent_scalar("tag:yaml.org,2002:str", s, style="|" if "\n" in s else None))


def labels(name: str, component: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": name, "app.kubernetes.io/component": component,
            "app.kubernetes.io/part-of": PART_OF}


def selector(name: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": PART_OF}


def meta(name: str, stack: config.Stack, component: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "namespace": settings(stack).namespace, "labels": labels(name, component), **extra}


def quantity(docker: str) -> str:
    """A compose memory limit (512m, 1g) as a Kubernetes quantity (512Mi, 1Gi)."""
    m = re.fullmatch(r"([0-9]+)([kmg])", docker.lower())
    if not m:
        raise ValueError(f"memory limit {docker!r}: expected a number and k, m or g")
    return f"{m[1]}{ {'k': 'Ki', 'm': 'Mi', 'g': 'Gi'}[m[2]] }"


def port_name(c: registry.Component, key: str) -> str:
    """An IANA-style port name (at most 15 characters): the key without its component prefix."""
    short = key.removeprefix(c.name.rsplit("-", 1)[-1] + "_")
    name = "http" if short in (c.name, c.name.rsplit("-", 1)[-1]) else short.replace("_", "-")
    assert len(name) <= 15, name
    return name


def config_key(rel: str) -> str:
    """A ConfigMap key for a file path (keys cannot hold '/')."""
    return rel.replace("/", "__")


def _config_files(t: Tier, c: registry.Component) -> list[tuple[str, str]]:
    """(rendered file, where the container reads it) for one tier."""
    if c.name != "otel-collector":
        return list(c.configs)
    folder = str(Path(c.configs[0][1]).parent)
    names = ["agent.yaml"] if t.name == "otel-agent" else ["config.yaml", "gateway.yaml"]
    return [(f"otel-collector/{n}", f"{folder}/{n}") for n in names]


def _args(t: Tier, c: registry.Component, place: registry.Place, stack: config.Stack) -> list[str]:
    args = c.args(place)
    if c.name == "otel-collector":
        return [f"--config={dst}" for _, dst in _config_files(t, c)]
    if t.target:
        args = [a for a in args if not a.startswith("-target=")] + [f"-target={t.target}", "-config.expand-env=true"]
    if c.name == "alertmanager":
        name = workload_name(t, stack)
        peers = [f"--cluster.peer={name}-{i}.{headless(name, stack)}:{ALERTMANAGER_CLUSTER_PORT}"
                 for i in range(t.replicas)]
        args = [a for a in args if not a.startswith("--cluster.")]
        args += [f"--cluster.listen-address=0.0.0.0:{ALERTMANAGER_CLUSTER_PORT}", *peers]
    return args


_FIELDS = {POD_NAME_ENV: "metadata.name", POD_IP_ENV: "status.podIP", NODE_NAME_ENV: "spec.nodeName"}


def _env(t: Tier, c: registry.Component, place: registry.Place, stack: config.Stack) -> list[dict[str, Any]]:
    k = settings(stack)
    env: list[dict[str, Any]] = []
    for name, value in c.env(place).items():
        if isinstance(value, SecretRef):
            env.append({"name": name, "valueFrom": {"secretKeyRef": {"name": k.secret, "key": value.key}}})
        else:
            env.append({"name": name, "value": value})
    downward = {"otel-agent": [NODE_NAME_ENV], "otel-gateway": [POD_NAME_ENV]}.get(t.name, [])
    if c.name in ("loki", "tempo"):
        downward = [POD_IP_ENV]
        env += [{"name": key, "valueFrom": {"secretKeyRef": {"name": k.object_storage.credentials_secret, "key": key}}}
                for key in S3_KEYS]
    env += [{"name": n, "valueFrom": {"fieldRef": {"fieldPath": _FIELDS[n]}}} for n in downward]
    return env


def _ports(c: registry.Component) -> list[tuple[str, int]]:
    ports = [(port_name(c, p.key), p.container) for p in c.ports if p.in_cluster]
    if c.name in ("loki", "tempo"):
        ports.append(("gossip", GOSSIP_PORT))
    if c.name == "alertmanager":
        ports.append(("cluster", ALERTMANAGER_CLUSTER_PORT))
    return ports


def _probes(c: registry.Component, stack: config.Stack) -> dict[str, Any]:
    """Startup, readiness and liveness, all on the registry's health endpoint."""
    path = c.health.path
    if c.name == "inference" and stack.sample_service and stack.sample_service.health_path:
        path = stack.sample_service.health_path
    get = {"httpGet": {"path": path, "port": port_name(c, c.health.port)}, "timeoutSeconds": 3}
    return {probe: {**get, **timing} for probe, timing in PROBE_TIMING.items()}


def _user(c: registry.Component) -> tuple[int, int]:
    if c.user:
        uid, _, gid = c.user.partition(":")
        return int(uid), int(gid or uid)
    uid = IMAGE_USER[c.name]
    return uid, uid


def _image(c: registry.Component, stack: config.Stack) -> str:
    if c.build_image:
        return settings(stack).image_registry + c.build_image
    return stack.components.get(c.pin).image  # type: ignore[arg-type]


def config_map_name(c: registry.Component, stack: config.Stack) -> str:
    return f"{registry.program_name(c, stack)}-config"


def _volumes(t: Tier, c: registry.Component, stack: config.Stack,
             files: Mapping[str, str]) -> tuple[list[dict], list[dict], list[dict]]:
    """(volumes, volumeMounts, volumeClaimTemplates): configs from the component's ConfigMap, the
    data directory (a claim per replica, or emptyDir), /tmp, and the long-term store's credentials."""
    volumes: list[dict] = []
    mounts: list[dict] = []
    claims: list[dict] = []
    cm = config_map_name(c, stack)
    for i, (src, dst) in enumerate(_config_files(t, c)):
        name = f"config-{i}"
        if src in files:  # one file: mounted alone, beside what the image keeps in that folder
            volumes.append({"name": name, "configMap": {"name": cm, "items": [{"key": config_key(src), "path": "f"}]}})
            mounts.append({"name": name, "mountPath": dst, "subPath": "f", "readOnly": True})
        else:
            items = [{"key": config_key(f), "path": f.removeprefix(src + "/")} for f in _under(src, files)]
            volumes.append({"name": name, "configMap": {"name": cm, "items": items}})
            mounts.append({"name": name, "mountPath": dst, "readOnly": True})
    if c.data:
        if t.storage:
            claim: dict[str, Any] = {"accessModes": ["ReadWriteOnce"],
                                     "resources": {"requests": {"storage": t.storage}}}
            if settings(stack).storage_class:
                claim["storageClassName"] = settings(stack).storage_class
            claims.append({"metadata": {"name": "data"}, "spec": claim})
        else:
            volumes.append({"name": "data", "emptyDir": {}})
        mounts.append({"name": "data", "mountPath": c.data.container})
    volumes.append({"name": "tmp", "emptyDir": {}})
    mounts.append({"name": "tmp", "mountPath": "/tmp"})
    lts = settings(stack).long_term_store
    if c.name == "prometheus" and lts.credentials_secret:
        volumes.append({"name": "remote-write", "secret": {"secretName": lts.credentials_secret}})
        mounts.append({"name": "remote-write", "mountPath": REMOTE_WRITE_DIR, "readOnly": True})
    return volumes, mounts, claims


def _under(src: str, files: Mapping[str, str]) -> list[str]:
    return sorted(f for f in files if f == src or f.startswith(src + "/"))


def config_map(c: registry.Component, stack: config.Stack, files: Mapping[str, str]) -> dict[str, Any] | None:
    wanted = sorted({f for t in tiers_of(c.name) for src, _ in _config_files(t, c) for f in _under(src, files)})
    if not wanted:
        return None
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta(config_map_name(c, stack), stack, c.name),
            "data": {config_key(f): files[f] for f in wanted}}


def workload(t: Tier, c: registry.Component, stack: config.Stack, files: Mapping[str, str],
             config_hash: str) -> dict[str, Any]:
    place = registry.Place(target(stack), secrets=_SecretRefs())
    name = workload_name(t, stack)
    uid, gid = _user(c)
    volumes, mounts, claims = _volumes(t, c, stack, files)
    mem = quantity(c.mem_limit)
    container: dict[str, Any] = {
        "name": c.name,
        "image": _image(c, stack),
        "args": _args(t, c, place, stack),
        "env": _env(t, c, place, stack),
        "ports": [{"name": n, "containerPort": p} for n, p in _ports(c)],
        **_probes(c, stack),
        "resources": {"requests": {"cpu": t.cpu[0], "memory": mem}, "limits": {"cpu": t.cpu[1], "memory": mem}},
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": READ_ONLY_ROOT[c.name],
                            "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": mounts,
    }
    if not container["args"]:
        del container["args"]
    pod: dict[str, Any] = {
        "serviceAccountName": name if t.name == "otel-agent" else "default",
        "automountServiceAccountToken": t.name == "otel-agent",
        "securityContext": {"runAsNonRoot": True, "runAsUser": uid, "runAsGroup": gid, "fsGroup": gid,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container],
        "volumes": volumes,
    }
    template = {"metadata": {"labels": labels(name, c.name), "annotations": {"mlobs/config-hash": config_hash}},
                "spec": pod}
    spec: dict[str, Any] = {"selector": {"matchLabels": selector(name)}, "template": template}
    if t.kind != "DaemonSet":
        spec = {"replicas": t.replicas, **spec}
    if t.kind == "StatefulSet":
        spec["serviceName"] = f"{name}-headless"
        # why: peers (ring members, Alertmanager's cluster) start together, not one after another
        spec["podManagementPolicy"] = "Parallel"
        if claims:
            spec["volumeClaimTemplates"] = claims
    return {"apiVersion": "apps/v1", "kind": t.kind, "metadata": meta(name, stack, c.name), "spec": spec}


def services(t: Tier, c: registry.Component, stack: config.Stack) -> list[dict[str, Any]]:
    """A Service for clients and a headless one that lists every pod (StatefulSet identities,
    Prometheus' discovery, the agents' gateway ring, Alertmanager's peers)."""
    name = workload_name(t, stack)
    ports = [{"name": n, "port": p, "targetPort": n} for n, p in _ports(c)]
    client: dict[str, Any] = {"selector": selector(name), "ports": ports}
    if t.kind == "DaemonSet":
        # why: a service's telemetry goes to the agent on its own node, which knows its pod
        client["internalTrafficPolicy"] = "Local"
    pods = {"clusterIP": "None", "selector": selector(name), "ports": ports,
            # why: the gateway ring must list only gateways that are ready; peers must find each other early
            "publishNotReadyAddresses": t.name != "otel-gateway"}
    return [{"apiVersion": "v1", "kind": "Service", "metadata": meta(name, stack, c.name), "spec": client},
            {"apiVersion": "v1", "kind": "Service", "metadata": meta(f"{name}-headless", stack, c.name), "spec": pods}]


def memberlist_service(component: str, stack: config.Stack) -> dict[str, Any]:
    """Every pod of Loki (or of Tempo), whatever its tier: the members its rings gossip with."""
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta(f"{component}-memberlist", stack, component),
            "spec": {"clusterIP": "None", "publishNotReadyAddresses": True,
                     "selector": {"app.kubernetes.io/component": component, "app.kubernetes.io/part-of": PART_OF},
                     "ports": [{"name": "gossip", "port": GOSSIP_PORT, "targetPort": "gossip"}]}}


def disruption_budget(t: Tier, stack: config.Stack) -> dict[str, Any]:
    name = workload_name(t, stack)
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": meta(name, stack, t.component),
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector(name)}}}


def agent_rbac(stack: config.Stack) -> list[dict[str, Any]]:
    """What k8s_attributes reads: pods, namespaces and nodes, and the owners that name a workload."""
    name = "otel-agent"
    ns = settings(stack).namespace
    cluster_name = f"{ns}-{name}"
    rules = [{"apiGroups": [""], "resources": ["pods", "namespaces", "nodes"], "verbs": ["get", "list", "watch"]},
             {"apiGroups": ["apps"], "resources": ["replicasets", "deployments", "statefulsets", "daemonsets"],
              "verbs": ["get", "list", "watch"]}]
    lab = labels(name, "otel-collector")
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta(name, stack, "otel-collector")},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": cluster_name, "labels": lab}, "rules": rules},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": cluster_name, "labels": lab},
         "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": ns}],
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": cluster_name}},
    ]


def manifests(stack: config.Stack) -> dict[str, list[dict[str, Any]]]:
    """Every manifest, by file: one file per component (its ConfigMap, workloads, Services, budgets)."""
    k = settings(stack)
    files = configs(stack)
    out: dict[str, list[dict[str, Any]]] = {
        "namespace.yaml": [{"apiVersion": "v1", "kind": "Namespace",
                            "metadata": {"name": k.namespace, "labels": {"app.kubernetes.io/part-of": PART_OF}}}],
    }
    for c in components(stack):
        docs: list[dict[str, Any]] = []
        cm = config_map(c, stack, files)
        digest = hashlib.sha256(json.dumps(cm, sort_keys=True).encode()).hexdigest()[:16]
        if cm:
            docs.append(cm)
        if c.name == "otel-collector":
            docs += agent_rbac(stack)
        if c.name in ("loki", "tempo"):
            docs.append(memberlist_service(c.name, stack))
        for t in tiers_of(c.name):
            docs.append(workload(t, c, stack, files, digest))
            docs += services(t, c, stack)
            if t.kind != "DaemonSet" and t.replicas > 1:
                docs.append(disruption_budget(t, stack))
        out[f"{registry.program_name(c, stack)}.yaml"] = docs
    return out


def kustomization(names: list[str], stack: config.Stack) -> dict[str, Any]:
    return {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
            "namespace": settings(stack).namespace, "resources": names}


def header(what: str) -> str:
    return (f"{HEADER}the component registry (mlobs/components.py), mlobs/kubernetes.py and stack.yaml. "
            f"Do not edit: edit those.\n# {what}\n")


def render_files(stack: config.Stack) -> dict[str, str]:
    """Every file of the Kubernetes target, relative to its output folder. Writes nothing."""
    out: dict[str, str] = {}
    for name, docs in manifests(stack).items():
        body = "---\n".join(yaml.dump(d, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=1000)
                            for d in docs)
        out[name] = header(f"{name}: apply the folder with `kubectl apply -k`.") + body
    secrets = ", ".join(sorted(_secret_names(stack)))
    out["kustomization.yaml"] = (header(f"The Secrets this folder references and never holds: {secrets}.")
                                 + yaml.dump(kustomization(sorted(out), stack), Dumper=_Dumper, sort_keys=False))
    return out


def _secret_names(stack: config.Stack) -> set[str]:
    k = settings(stack)
    names = {k.secret, k.object_storage.credentials_secret}
    if k.long_term_store.credentials_secret:
        names.add(k.long_term_store.credentials_secret)
    return names


def rendered_on_disk(out_dir: Path) -> list[str]:
    if not out_dir.is_dir():
        return []
    found = []
    for path in sorted(out_dir.rglob("*")):
        if path.is_file():
            with path.open("rb") as f:
                if f.read(len(HEADER)) == HEADER.encode():
                    found.append(str(path.relative_to(out_dir)))
    return found


def write(files: dict[str, str], out_dir: Path) -> list[Path]:
    """Write the files; delete the ones this target wrote before and renders no more."""
    changed = render.write(files, out_dir, prune=False)
    for rel in rendered_on_disk(out_dir):
        if rel not in files:
            (out_dir / rel).unlink()
            changed.append(out_dir / rel)
    return changed


def drift(files: dict[str, str], out_dir: Path) -> list[str]:
    stale = [rel for rel in render.drift(files, out_dir) if rel in files]
    return stale + [f"{rel} (nothing renders it any more)" for rel in rendered_on_disk(out_dir) if rel not in files]

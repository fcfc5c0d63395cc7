"""The Kubernetes target (mlobs/kubernetes.py): every manifest valid against the API schemas of a
pinned Kubernetes version, the conventions (resources, probes, security contexts, secrets by
reference), the two collector tiers and their trace-id routing, Loki and Tempo in their scalable
modes, and the committed render.

Nothing here runs a cluster: what only a cluster shows is listed in README "Running on Kubernetes".
"""

from __future__ import annotations

import bisect
import os
import random
import re
import subprocess
import sys
import tomllib
import zlib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import all_versions
from typer.testing import CliRunner

from mlobs import cli, components, config, kubernetes, render

ROOT = render.ROOT
STACK = config.load(ROOT / "stack.yaml")
SHARED = ROOT.parent / "shared"
CHECKER = SHARED / "tools" / "check-config-keys"
KEYS = {"loki": SHARED / "data" / "loki-3.7.6-config-keys.json",
        "tempo": SHARED / "data" / "tempo-3.0.3-config-keys.json"}


def docs(files: dict[str, str]) -> list[dict[str, Any]]:
    return [d for name, text in sorted(files.items()) for d in yaml.safe_load_all(text) if d]


@pytest.fixture(scope="module")
def files() -> dict[str, str]:
    return kubernetes.render_files(STACK)


@pytest.fixture(scope="module")
def manifests(files: dict[str, str]) -> list[dict[str, Any]]:
    return [d for d in docs(files) if d["kind"] != "Kustomization"]


def by(manifests: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(d for d in manifests if d["kind"] == kind and d["metadata"]["name"] == name)


def workloads(manifests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in manifests if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet")]


def container(w: dict[str, Any]) -> dict[str, Any]:
    return w["spec"]["template"]["spec"]["containers"][0]


def config_text(manifests: list[dict[str, Any]], rel: str) -> str:
    key = kubernetes.config_key(rel)
    return next(d["data"][key] for d in manifests if d["kind"] == "ConfigMap" and key in d["data"])


# --- the API schemas of a pinned Kubernetes version -----------------------------------------


def validate(doc: dict[str, Any]) -> str:
    return kubernetes_validate.validate(doc, kubernetes.KUBERNETES_VERSION, strict=True)


def test_the_pinned_validator_ships_the_pinned_kubernetes_version() -> None:
    dev = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["dev"]
    assert "kubernetes-validate==1.37.0" in dev
    shipped = all_versions()
    assert kubernetes.KUBERNETES_VERSION in shipped, shipped


def test_every_manifest_validates_against_the_api_schemas(manifests: list[dict[str, Any]]) -> None:
    kinds = set()
    for doc in manifests:
        # strict: an unknown field is an error; a kind without a schema raises SchemaNotFoundError
        assert validate(doc) == kubernetes.KUBERNETES_VERSION.rsplit(".", 1)[0], doc["metadata"]["name"]
        kinds.add(doc["kind"])
    assert {"Namespace", "ConfigMap", "Deployment", "StatefulSet", "DaemonSet", "Service",
            "PodDisruptionBudget", "ServiceAccount", "ClusterRole", "ClusterRoleBinding"} <= kinds


@pytest.mark.parametrize("breakage", ["unknown field", "wrong type", "no containers"])
def test_validation_catches_a_broken_manifest(manifests: list[dict[str, Any]], breakage: str) -> None:
    bad = yaml.safe_load(yaml.safe_dump(by(manifests, "Deployment", "otel-gateway")))
    if breakage == "unknown field":
        container(bad)["imagePullPolicyy"] = "Always"
    elif breakage == "wrong type":
        bad["spec"]["replicas"] = "two"
    else:
        del bad["spec"]["template"]["spec"]["containers"]
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(bad)


def test_the_kustomization_lists_every_manifest_file(files: dict[str, str]) -> None:
    kust = yaml.safe_load(files["kustomization.yaml"])
    assert kust["kind"] == "Kustomization"
    assert kust["resources"] == sorted(f for f in files if f != "kustomization.yaml")
    assert kust["namespace"] == kubernetes.settings(STACK).namespace


# --- the committed render, and a render twice ------------------------------------------------


def test_a_render_twice_is_identical() -> None:
    assert kubernetes.render_files(STACK) == kubernetes.render_files(STACK)


def test_committed_manifests_equal_a_fresh_render(files: dict[str, str]) -> None:
    assert kubernetes.drift(files, kubernetes.OUT) == [], "run `make render` and commit deploy/kubernetes/"


def test_drift_and_strays_are_found_and_a_write_prunes(tmp_path: Path, files: dict[str, str]) -> None:
    kubernetes.write(files, tmp_path)
    assert kubernetes.drift(files, tmp_path) == []
    (tmp_path / "loki.yaml").write_text(files["loki.yaml"].replace("replicas: 3", "replicas: 1"))
    (tmp_path / "old.yaml").write_text(kubernetes.HEADER + "something nothing renders\n")
    assert kubernetes.drift(files, tmp_path) == ["loki.yaml", "old.yaml (nothing renders it any more)"]
    kubernetes.write(files, tmp_path)
    assert not (tmp_path / "old.yaml").exists() and kubernetes.drift(files, tmp_path) == []


def test_a_compose_render_leaves_the_kubernetes_folder_alone(tmp_path: Path, files: dict[str, str]) -> None:
    kubernetes.write(files, tmp_path / "deploy" / "kubernetes")
    render.write(render.render(render.compose_target(STACK)), tmp_path)
    assert kubernetes.drift(files, tmp_path / "deploy" / "kubernetes") == []


def test_the_cli_refuses_an_unknown_target_naming_the_allowed_values() -> None:
    r = CliRunner().invoke(cli.app, ["render", "--target", "swarm"])
    assert r.exit_code == 2
    assert "allowed values: compose, kubernetes" in r.output


def test_the_cli_writes_the_kubernetes_target_into_out(tmp_path: Path, files: dict[str, str]) -> None:
    r = CliRunner().invoke(cli.app, ["render", "--target", "kubernetes", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert kubernetes.drift(files, tmp_path) == []
    r = CliRunner().invoke(cli.app, ["render", "--target", "kubernetes", "--out", str(tmp_path), "--check"])
    assert r.exit_code == 0, r.output


def test_a_store_the_cluster_does_not_run_is_refused() -> None:
    jaeger = STACK.model_copy(update={"backends": config.Backends(traces="jaeger")})
    with pytest.raises(kubernetes.KubernetesError, match="backends.traces: 'jaeger'.*set backends.traces: tempo"):
        kubernetes.render_files(jaeger)


# --- conventions ------------------------------------------------------------------------------


def test_every_container_has_requests_limits_and_the_registry_memory(manifests: list[dict[str, Any]]) -> None:
    for w in workloads(manifests):
        c = components.get(w["metadata"]["labels"]["app.kubernetes.io/component"])
        res = container(w)["resources"]
        assert res["requests"]["memory"] == res["limits"]["memory"] == kubernetes.quantity(c.mem_limit)
        assert res["requests"]["cpu"] and res["limits"]["cpu"], w["metadata"]["name"]


def test_probes_use_the_registry_health_endpoints(manifests: list[dict[str, Any]]) -> None:
    for w in workloads(manifests):
        c = components.get(w["metadata"]["labels"]["app.kubernetes.io/component"])
        ctr = container(w)
        ports = {p["name"]: p["containerPort"] for p in ctr["ports"]}
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            get = ctr[probe]["httpGet"]
            assert get["path"] == c.health.path and ports[get["port"]] == c.port(c.health.port).container


def test_every_pod_runs_as_non_root_without_privileges(manifests: list[dict[str, Any]]) -> None:
    for w in workloads(manifests):
        pod = w["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] > 0
        sc = container(w)["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {"drop": ["ALL"]}
        component = w["metadata"]["labels"]["app.kubernetes.io/component"]
        assert sc["readOnlyRootFilesystem"] is kubernetes.READ_ONLY_ROOT[component]
        if sc["readOnlyRootFilesystem"]:
            assert "/tmp" in {m["mountPath"] for m in container(w)["volumeMounts"]}


def test_secrets_are_references_never_values(files: dict[str, str], manifests: list[dict[str, Any]]) -> None:
    assert not any(d["kind"] == "Secret" for d in manifests)
    text = "".join(files.values())
    assert "<secret " not in text and "${GRAFANA_ADMIN_PASSWORD" not in text
    grafana = {e["name"]: e for e in container(by(manifests, "StatefulSet", "grafana"))["env"]}
    ref = grafana["GF_SECURITY_ADMIN_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": kubernetes.settings(STACK).secret, "key": "GRAFANA_ADMIN_PASSWORD"}
    loki = {e["name"]: e for e in container(by(manifests, "StatefulSet", "loki-write"))["env"]}
    assert loki["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == (
        kubernetes.settings(STACK).object_storage.credentials_secret)


def test_multi_replica_workloads_have_a_disruption_budget(manifests: list[dict[str, Any]]) -> None:
    budgets = {d["metadata"]["name"] for d in manifests if d["kind"] == "PodDisruptionBudget"}
    many = {w["metadata"]["name"] for w in workloads(manifests) if w["spec"].get("replicas", 1) > 1}
    assert many and budgets == many


def test_services_reach_the_agent_of_their_own_node(manifests: list[dict[str, Any]]) -> None:
    inference = {e["name"]: e.get("value") for e in container(by(manifests, "StatefulSet", "mlobs-inference"))["env"]}
    assert inference["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-agent.mlobs.svc:4318"
    assert by(manifests, "Service", "otel-agent")["spec"]["internalTrafficPolicy"] == "Local"


# --- the collector's two tiers and trace-id routing ------------------------------------------


def agent_config(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    return yaml.safe_load(config_text(manifests, "otel-collector/agent.yaml"))


def test_the_agent_adds_pod_namespace_and_node(manifests: list[dict[str, Any]]) -> None:
    agent = agent_config(manifests)
    k8s = agent["processors"]["k8s_attributes"]
    assert {"k8s.pod.name", "k8s.namespace.name", "k8s.node.name"} <= set(k8s["extract"]["metadata"])
    node_env = k8s["filter"]["node_from_env_var"]
    ds = by(manifests, "DaemonSet", "otel-agent")
    env = {e["name"]: e for e in container(ds)["env"]}
    assert env[node_env]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    for name, p in agent["service"]["pipelines"].items():
        assert p["processors"][:2] == ["memory_limiter", "k8s_attributes"], name
    role = by(manifests, "ClusterRole", "mlobs-otel-agent")
    assert {"pods", "namespaces", "nodes"} <= set(role["rules"][0]["resources"])
    assert ds["spec"]["template"]["spec"]["serviceAccountName"] == "otel-agent"


def test_the_agent_routes_traces_by_trace_id_to_the_gateway_pods(manifests: list[dict[str, Any]]) -> None:
    agent = agent_config(manifests)
    lb = agent["exporters"]["load_balancing"]
    assert lb["routing_key"] == "traceID"
    assert agent["service"]["pipelines"]["traces"]["exporters"] == ["load_balancing"]
    host = lb["resolver"]["dns"]["hostname"]
    service = by(manifests, "Service", host.split(".")[0])
    assert host == f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc"
    # headless: DNS answers with every gateway pod's address (ready ones only), not one virtual IP
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is False
    gateway = by(manifests, "Deployment", "otel-gateway")
    assert service["spec"]["selector"] == gateway["spec"]["selector"]["matchLabels"]
    assert gateway["spec"]["replicas"] >= 2
    ports = {p["port"] for p in service["spec"]["ports"]}
    assert int(lb["resolver"]["dns"]["port"]) in ports


def test_the_gateway_is_config_yaml_with_its_overlay(manifests: list[dict[str, Any]]) -> None:
    gateway = container(by(manifests, "Deployment", "otel-gateway"))
    assert gateway["args"] == [f"--config=/etc/otelcol-contrib/{f}" for f in ("config.yaml", "gateway.yaml")]
    base = yaml.safe_load(config_text(manifests, "otel-collector/config.yaml"))
    over = yaml.safe_load(config_text(manifests, "otel-collector/gateway.yaml"))
    assert "tail_sampling" in base["processors"]
    assert base["exporters"]["otlp_http/loki"]["logs_endpoint"] == "http://loki-write.mlobs.svc:3100/otlp/v1/logs"
    derived = over["service"]["pipelines"]["metrics/derived"]
    assert set(derived["receivers"]) == set(base["service"]["pipelines"]["metrics"]["receivers"]) - {"otlp"}
    assert "transform/gateway" in derived["processors"]
    assert over["service"]["pipelines"]["metrics"]["receivers"] == ["otlp"]


# A model of the load_balancing exporter's routing (contrib exporter/loadbalancingexporter,
# consistent_hashing.go and trace_exporter.go, read at v0.161.0, the newest the Go module proxy
# serves): each endpoint gets 200 ring positions, crc32-IEEE(endpoint + little-endian uint32 i)
# mod 131071, sorted by (position, hash, endpoint), a taken position probing ahead up to 10
# times; a span goes to the first position at or after crc32-IEEE(its 16 trace-id bytes) mod
# 131071, wrapping around. The resolver sorts the endpoints (pod IP:port) first.
MAX_POSITIONS, WEIGHT, PROBE_LIMIT = 131071, 200, 10


def ring(endpoints: list[str]) -> list[tuple[int, str]]:
    candidates = []
    for endpoint in endpoints:
        for i in range(WEIGHT):
            h = zlib.crc32(endpoint.encode() + i.to_bytes(4, "little"))
            candidates.append((h % MAX_POSITIONS, h, endpoint))
    taken: set[int] = set()
    items = []
    for pos, _, endpoint in sorted(candidates):
        probes = 0
        while pos in taken and probes < PROBE_LIMIT:
            pos, probes = (pos + 1) % MAX_POSITIONS, probes + 1
        if probes >= PROBE_LIMIT:
            continue
        taken.add(pos)
        items.append((pos, endpoint))
    return sorted(items)


def endpoint_for(items: list[tuple[int, str]], identifier: bytes) -> str:
    pos = zlib.crc32(identifier) % MAX_POSITIONS
    i = bisect.bisect_left(items, (pos, ""))
    return items[i % len(items)][1]


def test_the_ring_model_matches_the_upstream_cases() -> None:
    """TestEndpointFor of consistent_hashing_test.go (v0.161.0): these ids, these endpoints."""
    items = ring(["endpoint-1", "endpoint-2"])
    assert len(items) == 2 * WEIGHT
    assert endpoint_for(items, bytes([1, 2, 0, 0])) == "endpoint-2"
    assert endpoint_for(items, bytes([128, 128, 0, 0])) == "endpoint-1"
    assert endpoint_for(items, b"ad-service-7") == "endpoint-2"
    assert endpoint_for(items, b"get-recommendations-1") == "endpoint-2"


def test_the_spans_of_one_trace_reach_one_gateway(manifests: list[dict[str, Any]]) -> None:
    lb = agent_config(manifests)["exporters"]["load_balancing"]
    replicas = by(manifests, "Deployment", "otel-gateway")["spec"]["replicas"]
    for n in (replicas, 3, 5):
        gateways = sorted(f"10.0.{i}.7:{lb['resolver']['dns']['port']}" for i in range(n))
        items = ring(gateways)
        seen: dict[str, set[str]] = {}
        rng = random.Random(n)
        for _ in range(2000):
            trace_id = rng.randbytes(16)
            for _span in range(rng.randint(1, 12)):
                span_id = rng.randbytes(8)  # the span id is not part of the key
                key = trace_id if lb["routing_key"] == "traceID" else trace_id + span_id
                seen.setdefault(trace_id.hex(), set()).add(endpoint_for(items, key))
        assert all(len(g) == 1 for g in seen.values())
        used = [g for gs in seen.values() for g in gs]
        assert set(used) == set(gateways), "every gateway takes a share"
        assert max(used.count(g) for g in gateways) < 1.6 * len(used) / n


def test_routing_by_span_would_split_traces() -> None:
    """The check above can fail: keyed by span, the spans of a trace scatter over the gateways."""
    items = ring([f"10.0.{i}.7:4317" for i in range(3)])
    rng = random.Random(1)
    trace_id = rng.randbytes(16)
    assert len({endpoint_for(items, trace_id + rng.randbytes(8)) for _ in range(50)}) > 1


# --- Loki, Tempo, Prometheus and Alertmanager as the cluster runs them -----------------------


def run_checker(backend: str, text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    if not CHECKER.exists() or not KEYS[backend].exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{CHECKER} or {KEYS[backend].name} is absent in CI")
        pytest.skip(f"{CHECKER} or {KEYS[backend].name} is absent (only CI has ../shared beside the clone)")
    path = tmp_path / f"{backend}.yaml"
    path.write_text(text)
    return subprocess.run([sys.executable, str(CHECKER), str(KEYS[backend]), str(path)],
                          capture_output=True, text=True, check=False)


@pytest.mark.parametrize("backend", ["loki", "tempo"])
def test_loki_and_tempo_configs_pass_the_key_check(backend: str, manifests: list, tmp_path: Path) -> None:
    r = run_checker(backend, config_text(manifests, f"{backend}/config.yaml"), tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_key_check_catches_a_misplaced_key(manifests: list, tmp_path: Path) -> None:
    doc = yaml.safe_load(config_text(manifests, "tempo/config.yaml"))
    doc["storage"]["trace"]["s3"]["buckett"] = "x"
    r = run_checker("tempo", yaml.safe_dump(doc), tmp_path)
    assert r.returncode == 1 and "storage.trace.s3.buckett" in r.stdout


def test_loki_is_scalable_on_object_storage(manifests: list[dict[str, Any]]) -> None:
    loki = yaml.safe_load(config_text(manifests, "loki/config.yaml"))
    s3 = kubernetes.settings(STACK).object_storage
    assert loki["common"]["storage"] == {"s3": {
        "endpoint": s3.endpoint, "region": s3.region, "bucketnames": s3.buckets.loki_chunks,
        "access_key_id": "${AWS_ACCESS_KEY_ID}", "secret_access_key": "${AWS_SECRET_ACCESS_KEY}",
        "s3forcepathstyle": True, "insecure": s3.insecure}}
    assert {p["object_store"] for p in loki["schema_config"]["configs"]} == {"s3"}
    assert loki["common"]["ring"]["kvstore"]["store"] == "memberlist"
    assert loki["common"]["replication_factor"] == by(manifests, "StatefulSet", "loki-write")["spec"]["replicas"]
    targets = {container(w)["args"][-2] for w in workloads(manifests) if w["metadata"]["name"].startswith("loki-")}
    assert targets == {"-target=write", "-target=read", "-target=backend"}
    # the rest is the compose config: the OTLP settings and retention
    assert loki["limits_config"]["retention_period"] == STACK.retention.loki
    assert loki["limits_config"]["allow_structured_metadata"] is True


def test_tempo_is_microservices_on_object_storage(manifests: list[dict[str, Any]]) -> None:
    tempo = yaml.safe_load(config_text(manifests, "tempo/config.yaml"))
    k = kubernetes.settings(STACK)
    assert tempo["storage"]["trace"]["backend"] == "s3"
    assert tempo["storage"]["trace"]["s3"]["bucket"] == k.object_storage.buckets.tempo
    assert tempo["ingest"]["kafka"] == {"address": k.kafka.address, "topic": k.kafka.topic}
    targets = {container(w)["args"][-2].removeprefix("-target=") for w in workloads(manifests)
               if w["metadata"]["name"].startswith("tempo-")}
    assert targets == {"distributor", "live-store", "block-builder", "querier", "query-frontend",
                       "backend-scheduler", "backend-worker"}
    base = yaml.safe_load(config_text(manifests, "otel-collector/config.yaml"))
    assert base["exporters"]["otlp_grpc/tempo"]["endpoint"] == "tempo-distributor.mlobs.svc:4317"


def test_grafana_reads_the_query_tiers(manifests: list[dict[str, Any]]) -> None:
    ds = {d["uid"]: d["url"] for d in yaml.safe_load(config_text(
        manifests, "grafana/provisioning/datasources/datasources.yaml"))["datasources"]}
    assert ds["loki"] == "http://loki-read.mlobs.svc:3100"
    assert ds["tempo"] == "http://tempo-query-frontend.mlobs.svc:3200"
    assert ds["prometheus"] == "http://prometheus.mlobs.svc:9090"
    keys = set(by(manifests, "ConfigMap", "grafana-config")["data"])
    dashboards = {kubernetes.config_key(str(p.relative_to(ROOT))) for p in (ROOT / "grafana/dashboards").glob("*.json")}
    assert dashboards and dashboards <= keys


def test_prometheus_remote_writes_and_scrapes_every_pod(manifests: list[dict[str, Any]]) -> None:
    prom = yaml.safe_load(config_text(manifests, "prometheus/prometheus.yml"))
    lts = kubernetes.settings(STACK).long_term_store
    assert prom["remote_write"][0]["url"] == lts.url
    jobs = {j["job_name"]: j["dns_sd_configs"][0]["names"] for j in prom["scrape_configs"]}
    assert jobs["otel-collector"] == ["otel-agent-headless.mlobs.svc", "otel-gateway-headless.mlobs.svc"]
    assert len(jobs["loki"]) == 3 and all(not j.get("static_configs") for j in prom["scrape_configs"])
    assert prom["alerting"]["alertmanagers"][0]["dns_sd_configs"][0]["names"] == ["alertmanager-headless.mlobs.svc"]


def test_a_long_term_store_with_credentials_and_a_tenant(tmp_path: Path) -> None:
    data = config._merge(config._read(ROOT / "stack.yaml"), {"kubernetes": {"long_term_store": {
        "kind": "remote_write", "url": "https://metrics.example.com/push", "tenant": "team-a",
        "credentials_secret": "lts-auth"}}})
    stack = config.parse(data)
    ms = docs(kubernetes.render_files(stack))
    prom = yaml.safe_load(config_text(ms, "prometheus/prometheus.yml"))
    write = prom["remote_write"][0]
    assert write["url"] == "https://metrics.example.com/push" and write["headers"] == {"X-Scope-OrgID": "team-a"}
    assert write["basic_auth"]["password_file"].startswith(kubernetes.REMOTE_WRITE_DIR)
    sts = by(ms, "StatefulSet", "prometheus")
    assert {"secretName": "lts-auth"} in [v.get("secret") for v in sts["spec"]["template"]["spec"]["volumes"]]
    assert "lts-auth" in kubernetes.render_files(stack)["kustomization.yaml"]  # named in the header


def test_alertmanager_runs_two_replicas_in_a_cluster(manifests: list[dict[str, Any]]) -> None:
    sts = by(manifests, "StatefulSet", "alertmanager")
    assert sts["spec"]["replicas"] == 2
    args = container(sts)["args"]
    peers = [a for a in args if a.startswith("--cluster.peer=")]
    assert len(peers) == 2 and "--cluster.listen-address=" not in args
    assert all(re.fullmatch(r"--cluster\.peer=alertmanager-\d\.alertmanager-headless\.mlobs\.svc:9094", p)
               for p in peers)

"""Grafana provisioning: fixed datasource uids, every correlation link of the design pointing
at a datasource that exists, `$` escaped for Grafana's environment expansion, and
trace-to-metrics queries that only name metrics the telemetry contract promises."""

from __future__ import annotations

import copy
import json
import re
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import yaml

from mlobs import config, explore, render, stores

REPO = Path(__file__).resolve().parents[2]
TELEMETRY = REPO / "generator" / "TELEMETRY.md"
DATASOURCES = (
    "grafana/provisioning/datasources/datasources.yaml.j2",
    "grafana/provisioning/datasources/datasources.yaml",
)
DASHBOARDS = (
    "grafana/provisioning/dashboards/dashboards.yaml.j2",
    "grafana/provisioning/dashboards/dashboards.yaml",
)
UIDS = {"prometheus", "loki", "tempo", "alertmanager"}
# The correlation contract of DESIGN.md: (datasource, link) -> the datasource it opens.
CONTRACT = {
    ("prometheus", "exemplarTraceIdDestinations"): "tempo",
    ("loki", "derivedFields"): "tempo",
    ("tempo", "tracesToLogsV2"): "loki",
    ("tempo", "tracesToMetrics"): "prometheus",
    ("tempo", "serviceMap"): "prometheus",
    ("tempo", "lokiSearch"): "loki",
}
LIST_LINKS = {"exemplarTraceIdDestinations", "derivedFields"}
LINK_KEYS = {link for _, link in CONTRACT}
# An environment variable reference Grafana is meant to expand: $NAME or ${NAME}, upper case.
ENV_REF = re.compile(r"\$(?:[A-Z][A-Z0-9_]*|\{[A-Z][A-Z0-9_]*\})")


def render_file(target: render.Target, tpl_dest: tuple[str, str]) -> str:
    tpl, dest = tpl_dest
    return render.header_line(tpl) + render.environment().get_template(tpl).render(render.context(target))


def links(doc: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Every (source uid, link kind, target uid) in a datasources document."""
    found = []
    for ds in doc.get("datasources", []):
        data = ds.get("jsonData", {})
        for key in LINK_KEYS & set(data):
            entries = data[key] if key in LIST_LINKS else [data[key]]
            found.extend((ds.get("uid"), key, e.get("datasourceUid")) for e in entries)
    return found


def link_problems(doc: dict[str, Any]) -> list[str]:
    """What is wrong with the uids and links of a datasources document; empty when sound."""
    uids = [ds.get("uid") for ds in doc.get("datasources", [])]
    problems = [f"datasource {ds.get('name')!r} has no fixed uid" for ds in doc["datasources"] if not ds.get("uid")]
    problems += [f"uid {u!r} used twice" for u in sorted({u for u in uids if uids.count(u) > 1})]
    found = links(doc)
    problems += [f"{src}.{kind} -> {dst!r}: no datasource has that uid" for src, kind, dst in found if dst not in uids]
    present = {(src, kind) for src, kind, _ in found}
    problems += [f"{src}.{kind} is missing" for src, kind in CONTRACT if (src, kind) not in present]
    problems += [
        f"{src}.{kind} -> {dst!r}, the design says {CONTRACT[(src, kind)]!r}"
        for src, kind, dst in found
        if (src, kind) in CONTRACT and dst in uids and dst != CONTRACT[(src, kind)]
    ]
    return problems


def unescaped_dollars(node: Any, path: str = "") -> list[str]:
    """Each string value in which Grafana would expand a `$` as an environment variable by
    mistake. Grafana expands values, not comments: `$$` is a literal `$`, an upper-case
    `$NAME`/`${NAME}` a deliberate reference, and any other `$` a bug."""
    if isinstance(node, dict):
        return [bad for k, v in node.items() for bad in unescaped_dollars(v, f"{path}.{k}" if path else str(k))]
    if isinstance(node, list):
        return [bad for i, v in enumerate(node) for bad in unescaped_dollars(v, f"{path}[{i}]")]
    if isinstance(node, str) and "$" in ENV_REF.sub("", node.replace("$$", "")):
        return [f"{path}: {node}"]
    return []


def contract_metric_names(markdown: str) -> set[str]:
    """Prometheus names promised by TELEMETRY.md, expanding `x_bucket/_sum/_count`."""
    names = set()
    for token in re.findall(r"`([a-z_:][a-z0-9_:/]*)`", markdown):
        first, *suffixes = token.split("/")
        names.add(first)
        if suffixes:
            base = first.rsplit("_", 1)[0]
            names.update(base + s for s in suffixes if s.startswith("_"))
    return names


def query_metric_names(promql: str) -> set[str]:
    """Metric names selected in a PromQL query (a name directly before `{`)."""
    return set(re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{", promql))


@pytest.fixture(scope="module")
def stack() -> config.Stack:
    return config.load(REPO / "stack.yaml")


@pytest.fixture(scope="module", params=["compose", "native"])
def target(request: pytest.FixtureRequest, stack: config.Stack) -> render.Target:
    if request.param == "compose":
        return render.compose_target(stack)
    return render.native_target(stack, render.BACKENDS)


@pytest.fixture(scope="module")
def text(target: render.Target) -> str:
    return render_file(target, DATASOURCES)


@pytest.fixture(scope="module")
def doc(text: str) -> dict[str, Any]:
    return yaml.safe_load(text)


def by_uid(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {ds["uid"]: ds for ds in doc["datasources"]}


# --- uids and links --------------------------------------------------------------------------


def test_uids_are_the_fixed_ones(doc: dict[str, Any]) -> None:
    assert [ds["uid"] for ds in doc["datasources"]].count("prometheus") == 1
    assert set(by_uid(doc)) == UIDS


def test_every_link_names_an_existing_datasource(doc: dict[str, Any]) -> None:
    assert link_problems(doc) == []
    assert {(src, kind) for src, kind, _ in links(doc)} == set(CONTRACT)


@pytest.mark.parametrize(
    ("breakage", "expected"),
    [
        (lambda d: d["tempo"]["jsonData"]["tracesToLogsV2"].update(datasourceUid="lokii"), "no datasource"),
        (lambda d: d["loki"]["jsonData"]["derivedFields"][0].update(datasourceUid="jaeger"), "no datasource"),
        (lambda d: d["tempo"]["jsonData"].pop("serviceMap"), "tempo.serviceMap is missing"),
        (lambda d: d["tempo"]["jsonData"]["tracesToMetrics"].update(datasourceUid="loki"), "the design says"),
        (lambda d: d["alertmanager"].update(uid="prometheus"), "used twice"),
        (lambda d: d["loki"].pop("uid"), "has no fixed uid"),
    ],
)
def test_link_check_fails_on_a_broken_link(doc: dict[str, Any], breakage: Any, expected: str) -> None:
    broken = copy.deepcopy(doc)
    breakage(by_uid(broken))
    problems = link_problems(broken)
    assert any(expected in p for p in problems), problems


def test_prometheus_is_default_and_urls_are_http(doc: dict[str, Any]) -> None:
    assert [ds["uid"] for ds in doc["datasources"] if ds.get("isDefault")] == ["prometheus"]
    assert all(ds["url"].startswith("http://") for ds in doc["datasources"])


def test_urls_follow_the_target(doc: dict[str, Any], target: render.Target) -> None:
    for uid, ds in by_uid(doc).items():
        assert ds["url"] == f"http://{target.connect(uid)}"
        if target.name == "native":
            assert ds["url"].startswith("http://127.0.0.1:")


def test_loki_links_trace_id_label_to_tempo(doc: dict[str, Any]) -> None:
    (field,) = by_uid(doc)["loki"]["jsonData"]["derivedFields"]
    assert field["matcherType"] == "label"
    assert field["matcherRegex"] == "trace_id"
    assert field["url"] == "$${__value.raw}"


def test_exemplars_use_the_trace_id_label(doc: dict[str, Any]) -> None:
    (dest,) = by_uid(doc)["prometheus"]["jsonData"]["exemplarTraceIdDestinations"]
    assert dest["name"] == "trace_id"


def test_traces_to_logs_filters_by_trace_and_maps_service_name(doc: dict[str, Any]) -> None:
    t2l = by_uid(doc)["tempo"]["jsonData"]["tracesToLogsV2"]
    assert t2l["filterByTraceID"] is True
    assert {"key": "service.name", "value": "service_name"} in t2l["tags"]
    assert t2l["spanStartTimeShift"].startswith("-")


def test_alertmanager_shows_prometheus_alerts_only(doc: dict[str, Any]) -> None:
    data = by_uid(doc)["alertmanager"]["jsonData"]
    assert data == {"implementation": "prometheus", "handleGrafanaManagedAlerts": False}


def test_node_graph_on(doc: dict[str, Any]) -> None:
    assert by_uid(doc)["tempo"]["jsonData"]["nodeGraph"] == {"enabled": True}


# --- `$` and Grafana's environment expansion ------------------------------------------------


def test_every_literal_dollar_is_escaped(doc: dict[str, Any], target: render.Target) -> None:
    assert unescaped_dollars(doc) == []
    assert unescaped_dollars(yaml.safe_load(render_file(target, DASHBOARDS))) == []


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("$${__value.raw}", True),
        ("x{$$__tags}", True),
        ("${GF_SECURITY_ADMIN_PASSWORD}", True),
        ("$GF_SECURITY_ADMIN_PASSWORD", True),
        ("${__value.raw}", False),
        ("x{$__tags}", False),
        ("costs $ 5", False),
    ],
)
def test_dollar_check_tells_escaped_from_unescaped(value: str, ok: bool) -> None:
    doc = {"datasources": [{"jsonData": {"derivedFields": [{"url": value}]}}]}
    assert (unescaped_dollars(doc) == []) is ok


# --- trace to metrics names only promised metrics -------------------------------------------


def test_traces_to_metrics_queries_use_contract_metrics(doc: dict[str, Any]) -> None:
    known = contract_metric_names(TELEMETRY.read_text())
    queries = by_uid(doc)["tempo"]["jsonData"]["tracesToMetrics"]["queries"]
    assert queries
    for q in queries:
        names = query_metric_names(q["query"])
        assert names, f"{q['name']}: selects no metric"
        assert names <= known, f"{q['name']}: {sorted(names - known)} not in generator/TELEMETRY.md"


def test_metric_name_check_catches_an_unknown_metric() -> None:
    known = contract_metric_names(TELEMETRY.read_text())
    assert "traces_spanmetrics_calls_total" in known
    assert "ml_request_duration_seconds_count" in known  # expanded from `_bucket/_sum/_count`
    names = query_metric_names("sum(rate(traces_spanmetrics_latency_bucket{$$__tags}[5m]))")
    assert names == {"traces_spanmetrics_latency_bucket"}
    assert not names <= known


# --- dashboards provider and committed output -----------------------------------------------


def test_dashboards_provider(target: render.Target) -> None:
    (provider,) = yaml.safe_load(render_file(target, DASHBOARDS))["providers"]
    assert provider["folder"] == "mlobs"
    assert provider["options"] == {"path": target.paths["grafana_dashboards"], "foldersFromFilesStructure": False}
    assert provider["allowUiUpdates"] is False
    assert provider["updateIntervalSeconds"] == 30


@pytest.mark.parametrize("tpl_dest", [DATASOURCES, DASHBOARDS], ids=["datasources", "dashboards"])
def test_committed_provisioning_matches_render(tpl_dest: tuple[str, str], stack: config.Stack) -> None:
    committed = REPO / tpl_dest[1]
    assert committed.read_text() == render_file(render.compose_target(stack), tpl_dest), (
        f"{tpl_dest[1]} is stale: run `mlobs render`"
    )


# --- Explore URLs (mlobs/explore.py): the dashboards' links, `mlobs verify`, the analyzer ----


def panes_of(url: str) -> dict[str, Any]:
    assert "/explore?schemaVersion=1&orgId=1&panes=" in url
    return json.loads(urllib.parse.unquote(url.split("panes=", 1)[1]))


@pytest.mark.parametrize(
    "backends", [{"traces": "tempo", "logs": "loki"}, {"traces": "jaeger", "logs": "victorialogs"}],
    ids=["tempo-loki", "jaeger-victorialogs"],
)
def test_explore_knows_the_type_of_every_provisioned_datasource(backends: dict[str, str]) -> None:
    data = yaml.safe_load((REPO / "stack.yaml").read_text())
    stack = config.parse({**data, "backends": backends})
    doc = yaml.safe_load(render_file(render.compose_target(stack), DATASOURCES))
    provisioned = {ds["uid"]: ds["type"] for ds in doc["datasources"]}
    assert {uid: explore.DATASOURCE_TYPES[uid] for uid in provisioned} == provisioned


def test_explore_url_holds_one_pane_with_the_query_and_range() -> None:
    url = explore.url("loki", explore.logs("loki", '{service_name="a b"} |= "x/y#z"'),
                      grafana="http://grafana:3000/", start=1000, end=2000)
    assert url.startswith("http://grafana:3000/explore?")
    assert " " not in url and "#" not in url and "/y" not in url, "the query is percent-encoded"
    (pane,) = panes_of(url).values()
    assert pane == {
        "datasource": "loki",
        "queries": [{"refId": "A", "datasource": {"type": "loki", "uid": "loki"},
                     "expr": '{service_name="a b"} |= "x/y#z"', "queryType": "range"}],
        "range": {"from": "1000", "to": "2000"},
    }


def test_explore_link_inside_grafana_keeps_dashboard_variables() -> None:
    url = explore.url("tempo", explore.traceql('{ resource.service.name = "$service" }'), start="$__from", end="$__to")
    assert url.startswith("/explore?")
    assert "$service" in url and "$__from" in url and "$__to" in url


@pytest.mark.parametrize(
    ("uid", "query", "expected"),
    [
        ("tempo", explore.trace_id("tempo", "ab" * 16), {"queryType": "traceql", "query": "ab" * 16}),
        ("jaeger", explore.trace_id("jaeger", "ab" * 16), {"query": "ab" * 16}),
        ("victorialogs", explore.logs("victorialogs", "trace_id:x"), {"expr": "trace_id:x"}),
        ("prometheus", explore.promql("up", exemplar=True), {"expr": "up", "range": True, "exemplar": True}),
        ("tempo", explore.service_map("tempo"), {"queryType": "serviceMap"}),
        ("jaeger", explore.service_map("jaeger"), {"queryType": "dependencyGraph"}),
    ],
)
def test_explore_query_models_per_datasource(uid: str, query: dict[str, object], expected: dict[str, object]) -> None:
    (pane,) = panes_of(explore.url(uid, query)).values()
    (q,) = pane["queries"]
    assert {k: v for k, v in q.items() if k not in ("refId", "datasource")} == expected
    assert q["datasource"] == {"type": explore.DATASOURCE_TYPES[uid], "uid": uid}


def test_explore_refuses_an_unknown_datasource() -> None:
    with pytest.raises(ValueError, match="no datasource has uid 'lokii'"):
        explore.url("lokii", explore.logs("loki", "{}"))


def test_dashboards_analyzer_and_verify_build_explore_urls_alike() -> None:
    from analyzer.links import build_links
    from analyzer.models import Finding
    from mlobs import verify
    from mlobs.dashboards import STACK_FILE, build_all, iter_panels

    traceql = '{ resource.service.name = "$service" && kind = server && (status = error || duration > 500ms) }'
    built = build_all(config.load(STACK_FILE))
    links = [link["url"] for d in built.values() for p in iter_panels(d) for link in p.get("links", [])]
    assert explore.url("tempo", explore.traceql(traceql), start="$__from", end="$__to") in links

    finding = Finding(kind="errors", subject="inference", score=1.0, summary="", evidence="")
    incident = build_links(finding, promql="up", grafana="http://g", service="j", model_version=None,
                           start_ms=1, end_ms=2)
    assert incident.prometheus_explore == explore.url("prometheus", explore.promql("up"), grafana="http://g",
                                                      start=1, end=2, pane="rca")

    ep = verify.Endpoints(service="", prometheus="", collector_metrics="", grafana="http://g",
                          traces=stores.Jaeger("http://j"), logs=stores.VictoriaLogs("http://v"), grafana_up=True)
    assert verify.trace_link(ep, "ab" * 16) == explore.url("jaeger", {"query": "ab" * 16}, grafana="http://g")
    (pane,) = panes_of(verify.log_link(ep, "svc", "ab" * 16)).values()
    assert pane["datasource"] == "victorialogs"
    assert pane["queries"][0]["expr"] == ep.logs.query("svc", trace_id="ab" * 16)

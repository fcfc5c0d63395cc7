"""The prebuilt dashboards: generated, committed, and consistent with the telemetry contract."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import yaml

from mlobs import config, contract, dashboards
from mlobs import render as configs
from mlobs.dashboards import (
    DASHBOARD_DIR,
    STACK_FILE,
    build_all,
    common,
    drift,
    iter_panels,
    iter_queries,
    promql_queries_for_e2e,
    render,
    render_all,
    write_all,
)
from mlobs.dashboards.common import FIXED_DATASOURCE_UIDS, TAG
from mlobs.dashboards.queries import BUILTIN_VALUES, variable_defaults, variables_in

REPO = Path(__file__).resolve().parents[2]
CONTRACT = REPO / "generator" / "TELEMETRY.md"

ML_DASHBOARDS = {"mlobs-inference", "mlobs-quality", "mlobs-training", "mlobs-pipeline"}
EXPECTED_UIDS = ML_DASHBOARDS | {"mlobs-service", "mlobs-genai", "mlobs-stack"}
# Panels whose values are not numbers with a unit: log lines, alert rules, the node graph (its
# frames carry their own units) and trace search results (durations come in ms from Tempo).
NO_UNIT_TYPES = {"logs", "alertlist", "nodeGraph"}

STACK = config.load(STACK_FILE)
BUILT = build_all(STACK)


def panels_of(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield from iter_panels(dashboard)


def is_trace_search(panel: dict[str, Any]) -> bool:
    targets = panel.get("targets", [])
    return bool(targets) and all((t.get("datasource") or {}).get("uid") == "tempo" for t in targets)


def needs_unit(panel: dict[str, Any]) -> bool:
    return panel["type"] not in NO_UNIT_TYPES and not is_trace_search(panel)


def unit_of(panel: dict[str, Any]) -> str | None:
    unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit")
    if panel["type"] == "heatmap":
        unit = unit or panel.get("options", {}).get("yAxis", {}).get("unit")
    return unit


def datasource_refs(node: Any, path: str = "$") -> Iterator[tuple[str, Any]]:
    """Every value stored under a "datasource" key, anywhere in the JSON."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "datasource":
                yield f"{path}.datasource", value
            yield from datasource_refs(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from datasource_refs(item, f"{path}[{index}]")


def foreign_datasources(dashboard: dict[str, Any]) -> list[str]:
    return [
        f"{path} = {value!r}"
        for path, value in datasource_refs(dashboard)
        if not (isinstance(value, dict) and value.get("uid") in FIXED_DATASOURCE_UIDS)
    ]


def by_uid() -> dict[str, dict[str, Any]]:
    return {dashboard["uid"]: dashboard for dashboard in BUILT.values()}


# --- the set of dashboards and the committed JSON ----------------------------------------------


def test_all_seven_dashboards_are_built_with_stable_uids() -> None:
    assert set(by_uid()) == EXPECTED_UIDS
    assert len(BUILT) == 7


def test_committed_dashboards_match_the_generator() -> None:
    problems = drift(STACK, DASHBOARD_DIR)
    assert not problems, "run `mlobs dashboards`:\n" + "\n".join(problems)


def test_generation_is_deterministic() -> None:
    assert {name: render(d) for name, d in build_all(STACK).items()} == {name: render(d) for name, d in BUILT.items()}


def test_drift_check_reports_an_edited_a_missing_and_a_stray_file(tmp_path: Path) -> None:
    write_all(STACK, tmp_path)
    edited = tmp_path / "ml-inference-overview.json"
    edited.write_text(edited.read_text().replace("Request rate", "Requests"))
    (tmp_path / "stack-health.json").unlink()
    (tmp_path / "hand-made.json").write_text("{}\n")
    problems = "\n".join(drift(STACK, tmp_path))
    assert "ml-inference-overview.json: differs" in problems
    assert "stack-health.json: missing" in problems
    assert "hand-made.json: not generated" in problems


def main(args: list[str]) -> int:
    """`mlobs dashboards ARGS`, through the one CLI."""
    from typer.testing import CliRunner

    from mlobs.cli import app

    return CliRunner().invoke(app, ["dashboards", *args]).exit_code


def test_cli_check_exits_1_on_drift_and_0_once_regenerated(tmp_path: Path) -> None:
    write_all(STACK, tmp_path)
    assert main(["--check", "--out", str(tmp_path)]) == 0
    target = tmp_path / "ml-model-quality.json"
    data = json.loads(target.read_text())
    data["title"] = "edited by hand"
    target.write_text(json.dumps(data))
    assert main(["--check", "--out", str(tmp_path)]) == 1
    assert main(["--out", str(tmp_path)]) == 0
    assert main(["--check", "--out", str(tmp_path)]) == 0


def test_committed_files_are_pretty_sorted_and_end_with_a_newline() -> None:
    for name in BUILT:
        text = (DASHBOARD_DIR / name).read_text()
        assert text.endswith("}\n")
        assert text == json.dumps(json.loads(text), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


# --- datasources ----------------------------------------------------------------------------------


@pytest.mark.parametrize("uid", sorted(EXPECTED_UIDS))
def test_every_datasource_reference_uses_a_fixed_uid(uid: str) -> None:
    dashboard = by_uid()[uid]
    refs = list(datasource_refs(dashboard))
    assert refs, "no datasource reference found at all"
    assert not foreign_datasources(dashboard)


def test_a_datasource_by_name_or_foreign_uid_is_caught() -> None:
    broken = copy.deepcopy(by_uid()["mlobs-inference"])
    broken["templating"]["list"][0]["datasource"] = {"type": "prometheus", "uid": "P1809F7CD0C75ACF3"}
    next(iter_panels(broken))["targets"] = [{"datasource": "Prometheus", "expr": "up"}]
    found = foreign_datasources(broken)
    assert len(found) == 2, found


def test_panels_variables_and_annotations_all_name_their_datasource() -> None:
    for dashboard in BUILT.values():
        for panel in panels_of(dashboard):
            if panel["type"] == "alertlist":
                continue
            assert panel.get("datasource"), (dashboard["uid"], panel["title"])
            for target in panel.get("targets", []):
                assert target.get("datasource"), (dashboard["uid"], panel["title"], target)
        for variable in dashboard["templating"]["list"]:
            if variable["type"] == "query":
                assert variable.get("datasource"), (dashboard["uid"], variable["name"])
        for annotation in dashboard["annotations"]["list"]:
            assert annotation.get("datasource"), (dashboard["uid"], annotation["name"])


# --- panels ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("uid", sorted(EXPECTED_UIDS))
def test_every_panel_has_a_title_and_a_description(uid: str) -> None:
    missing = [
        panel.get("title", f"id {panel.get('id')}")
        for panel in panels_of(by_uid()[uid])
        if not panel.get("title") or len(panel.get("description", "")) < 30
    ]
    assert not missing


@pytest.mark.parametrize("uid", sorted(EXPECTED_UIDS))
def test_every_panel_has_a_unit(uid: str) -> None:
    missing = [panel["title"] for panel in panels_of(by_uid()[uid]) if needs_unit(panel) and not unit_of(panel)]
    assert not missing


@pytest.mark.parametrize("uid", sorted(EXPECTED_UIDS))
def test_every_panel_with_values_has_thresholds(uid: str) -> None:
    missing = [
        panel["title"]
        for panel in panels_of(by_uid()[uid])
        if needs_unit(panel) and not panel.get("fieldConfig", {}).get("defaults", {}).get("thresholds", {}).get("steps")
    ]
    assert not missing


def test_unit_check_catches_a_panel_without_unit() -> None:
    panel = copy.deepcopy(next(p for p in panels_of(by_uid()["mlobs-inference"]) if p["type"] == "timeseries"))
    del panel["fieldConfig"]["defaults"]["unit"]
    assert needs_unit(panel) and not unit_of(panel)


def test_psi_panels_draw_the_moderate_and_significant_thresholds() -> None:
    quality = panels_of(by_uid()["mlobs-quality"])
    psi_panels = [p for p in quality if "ml_feature_drift_psi" in json.dumps(p.get("targets"))]
    assert len(psi_panels) >= 2
    for panel in psi_panels:
        steps = [step["value"] for step in panel["fieldConfig"]["defaults"]["thresholds"]["steps"]]
        assert steps == [None, 0.1, 0.2], panel["title"]  # moderate (Evidently's default), significant
    timeseries = [p for p in psi_panels if p["type"] == "timeseries"]
    drawn = [p["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"] for p in timeseries]
    assert drawn and "off" not in drawn


@pytest.mark.parametrize("uid", sorted(EXPECTED_UIDS))
def test_panel_titles_are_unique_within_a_dashboard(uid: str) -> None:
    titles = [panel["title"] for panel in panels_of(by_uid()[uid])]
    assert len(titles) == len(set(titles))


def test_no_data_reasons_name_panels_and_variables_that_exist() -> None:
    for module in dashboards.DASHBOARDS:
        dashboard = module.build(STACK)
        names = {panel["title"] for panel in panels_of(dashboard)}
        names |= {f"variable ${variable['name']}" for variable in dashboard["templating"]["list"]}
        assert set(module.NO_DATA) <= names, set(module.NO_DATA) - names


def test_stage_span_panel_covers_the_contracts_stages_and_the_feature_lookup() -> None:
    (panel,) = [p for p in panels_of(by_uid()["mlobs-inference"]) if p["title"] == "Stage error ratio (span metrics)"]
    (regex,) = set(re.findall(r'span_name=~"([^"]+)"', panel["targets"][0]["expr"]))
    assert set(regex.split("|")) == {*contract.STAGES, contract.FEATURE_LOOKUP_SPAN}


def test_latency_panels_ask_for_exemplars() -> None:
    inference = by_uid()["mlobs-inference"]
    exemplar_panels = {p["title"] for p in panels_of(inference) if any(t.get("exemplar") for t in p.get("targets", []))}
    assert "Latency distribution (exemplars)" in exemplar_panels
    assert any(p["type"] == "heatmap" for p in panels_of(inference) if p["title"] in exemplar_panels)


def test_inference_overview_links_to_traces_and_logs() -> None:
    links = [link for p in panels_of(by_uid()["mlobs-inference"]) for link in p.get("links", [])]
    languages = {q.language for q in iter_queries(by_uid()["mlobs-inference"]) if "(link " in q.panel}
    assert links and languages == {"traceql", "logql"}


def test_pipeline_has_node_graph_trace_search_and_logs() -> None:
    panels = list(panels_of(by_uid()["mlobs-pipeline"]))
    assert any(p["type"] == "nodeGraph" and p["targets"][0]["queryType"] == "serviceMap" for p in panels)
    assert any(p["type"] == "table" and p["targets"][0].get("queryType") == "traceql" for p in panels)
    logs = [p for p in panels if p["type"] == "logs"]
    assert logs and all("$service" in p["targets"][0]["expr"] for p in logs)


def test_stack_health_covers_collector_prometheus_and_alerts() -> None:
    exprs = " ".join(q.expr for q in iter_queries(by_uid()["mlobs-stack"]))
    for needle in (
        "otelcol_receiver_accepted_",
        "otelcol_receiver_refused_",
        "otelcol_exporter_send_failed_",
        "otelcol_exporter_queue_size",
        "prometheus_tsdb_head_samples_appended_total",
        "ALERTS",
    ):
        assert needle in exprs, needle
    assert any(p["type"] == "alertlist" for p in panels_of(by_uid()["mlobs-stack"]))


# --- dashboard level --------------------------------------------------------------------------------


@pytest.mark.parametrize("uid", sorted(EXPECTED_UIDS))
def test_every_dashboard_is_tagged_and_shows_deployments_and_faults(uid: str) -> None:
    dashboard = by_uid()[uid]
    assert TAG in dashboard["tags"]
    names = {a["name"] for a in dashboard["annotations"]["list"] if a.get("enable")}
    assert {"Deployments", "Faults", "Events from logs"} <= names


def test_annotation_queries_are_the_same_in_both_places_grafana_reads() -> None:
    for dashboard in BUILT.values():
        for annotation in dashboard["annotations"]["list"]:
            assert annotation["expr"] == annotation["target"]["expr"], annotation["name"]


@pytest.mark.parametrize("uid", sorted(ML_DASHBOARDS))
def test_ml_dashboards_have_service_model_and_version_variables(uid: str) -> None:
    names = {variable["name"] for variable in by_uid()[uid]["templating"]["list"]}
    assert {"service", "model", "version"} <= names


@pytest.mark.parametrize("uid", sorted(EXPECTED_UIDS))
def test_every_variable_a_query_uses_is_defined(uid: str) -> None:
    dashboard = by_uid()[uid]
    defined = set(variable_defaults(dashboard)) | set(BUILTIN_VALUES)
    used = {name for query in iter_queries(dashboard) for name in variables_in(query.expr)}
    used |= {name for panel in panels_of(dashboard) for name in variables_in(panel["title"])}
    assert used <= defined, used - defined


# --- the telemetry contract ---------------------------------------------------------------------------

PROMQL_WORDS = {
    "sum",
    "max",
    "min",
    "avg",
    "count",
    "group",
    "rate",
    "increase",
    "changes",
    "histogram_quantile",
    "sort_desc",
    "last_over_time",
    "max_over_time",
    "vector",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "offset",
    "unless",
    "or",
    "and",
    "bool",
}
# The stack's own metrics, not part of the sample service's contract.
PLATFORM_METRICS = re.compile(r"^(otelcol_\w+|prometheus_\w+|alertmanager_\w+|up|ALERTS)$")


def contract_metrics() -> set[str]:
    names: set[str] = set()
    for token in re.findall(r"`([a-z_:][a-z0-9_:/]*)`", CONTRACT.read_text()):
        first, *suffixes = token.split("/")
        names.add(first)
        base = re.sub(r"_(bucket|sum|count)$", "", first)
        names.update(base + suffix for suffix in suffixes)
        if first.endswith("_bucket"):  # a classic histogram always comes with _sum and _count
            names.update({base + "_sum", base + "_count"})
    return names


def metric_names(expr: str) -> set[str]:
    cleaned = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # strings
    cleaned = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", cleaned)  # matchers, ranges
    cleaned = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", cleaned)
    cleaned = re.sub(r"\boffset\s+\w+", " ", cleaned)
    tokens = set(re.findall(r"\b[a-zA-Z_:][a-zA-Z0-9_:]*\b", cleaned))
    return {t for t in tokens if t not in PROMQL_WORDS and not re.fullmatch(r"\d+\w*", t)}


def recorded_series(stack: config.Stack) -> set[str]:
    """Every series the rendered rules of a stack record (prometheus/rules/*.yml)."""
    rendered = configs.render(configs.compose_target(stack))
    return {
        rule["record"]
        for path, text in rendered.items()
        if path.startswith("prometheus/rules/") and path.endswith(".yml")
        for group in (yaml.safe_load(text) or {}).get("groups", [])
        for rule in group["rules"]
        if "record" in rule
    }


RECORDED = recorded_series(STACK)


def test_metric_names_come_from_the_contract() -> None:
    if not CONTRACT.exists():
        pytest.skip(f"{CONTRACT} is absent")
    known = contract_metrics() | RECORDED
    unknown = {
        (query.dashboard, name)
        for dashboard in BUILT.values()
        for query in iter_queries(dashboard)
        if query.language == "promql"
        for name in metric_names(query.expr)
        if name not in known and not PLATFORM_METRICS.match(name)
    }
    assert not unknown, f"metric names missing from {CONTRACT.name}: {sorted(unknown)}"


def test_contract_check_catches_an_invented_metric() -> None:
    assert metric_names('sum by (le) (rate(ml_made_up_seconds_bucket{job="$service"}[5m])) > 0') == {
        "ml_made_up_seconds_bucket"
    }
    assert "ml_made_up_seconds_bucket" not in contract_metrics()


# --- thresholds from the loaded stack ----------------------------------------------------------


def stack_with(**alerts: object) -> config.Stack:
    """The repo's stack with some settings changed: ``alerts`` keys, or ``slow_threshold_ms``."""
    data = yaml.safe_load(STACK_FILE.read_text())
    slow = alerts.pop("slow_threshold_ms", None)
    data["alerts"] = {**data.get("alerts", {}), **alerts}
    if slow is not None:
        data["sampling"] = {**data.get("sampling", {}), "slow_threshold_ms": slow}
    return config.parse(data)


def steps_of(panel: dict[str, Any]) -> list[float | None]:
    steps = panel.get("fieldConfig", {}).get("defaults", {}).get("thresholds", {}).get("steps", [])
    return [step["value"] for step in steps]


def panels_by_title(stack: config.Stack) -> dict[str, dict[str, Any]]:
    return {f"{d['uid']}: {p['title']}": p for d in build_all(stack).values() for p in panels_of(d)}


def test_a_new_latency_limit_moves_the_dashboards_red_lines_and_the_alert_rule() -> None:
    stack = stack_with(latency_p99_seconds=1.25)
    panels = panels_by_title(stack)
    for title in ("mlobs-inference: p95 latency", "mlobs-inference: Stage p95 duration (exemplars)",
                  "mlobs-pipeline: Span p95 duration by name (exemplars)"):
        assert steps_of(panels[title]) == [None, 0.625, 1.25], title
    assert "Above 625 ms look" in panels["mlobs-inference: p95 latency"]["description"]
    rules = yaml.safe_load(configs.render(configs.compose_target(stack))["prometheus/rules/thresholds.yml"])
    (alert,) = [r for g in rules["groups"] for r in g["rules"] if r.get("alert") == "MLStageLatencyHigh"]
    assert alert["expr"] == "mlobs:ml_stage_duration_seconds:p99_rate > 1.25"


def test_every_latency_panel_follows_the_stack() -> None:
    default, moved = panels_by_title(STACK), panels_by_title(stack_with(latency_p99_seconds=2.0))
    latency = {title for title, panel in default.items() if steps_of(panel) == [None, 0.25, 0.5]}
    assert len(latency) >= 6
    assert {title: steps_of(moved[title]) for title in latency} == {title: [None, 1.0, 2.0] for title in latency}


def test_error_ratio_score_floors_and_drift_limit_follow_the_stack() -> None:
    panels = panels_by_title(stack_with(error_ratio=0.1, accuracy_floor=0.7, drift_psi=0.3))
    assert steps_of(panels["mlobs-inference: Server error ratio"]) == [None, 0.02, 0.1]
    by_version = panels["mlobs-inference: Server error ratio by version"]
    assert "with the 2% and 10% thresholds drawn" in by_version["description"]
    assert steps_of(panels["mlobs-quality: Scores over time"]) == [None, 0.7, 0.8]
    assert steps_of(panels["mlobs-training: Accuracy per epoch"]) == [None, 0.7, 0.8]
    assert steps_of(panels["mlobs-quality: PSI now, by feature"]) == [None, 0.15, 0.3]


def test_a_distinct_f1_floor_colours_the_f1_queries_only() -> None:
    overrides = [p.get("fieldConfig", {}).get("overrides", []) for p in panels_of(by_uid()["mlobs-quality"])]
    assert "thresholds" not in json.dumps(overrides), "equal floors: no override"
    panels = panels_by_title(stack_with(accuracy_floor=0.85, f1_floor=0.7))
    for title, ref in (("Scores over time", "D"), ("Accuracy and F1: $baseline vs $candidate", "B")):
        panel = panels[f"mlobs-quality: {title}"]
        assert steps_of(panel) == [None, 0.85, 0.9]
        (override,) = [o for o in panel["fieldConfig"]["overrides"] if o["matcher"]["id"] == "byFrameRefID"]
        assert override["matcher"]["options"] == ref
        assert [s["value"] for s in override["properties"][0]["value"]["steps"]] == [None, 0.7, 0.8]


def test_the_slow_traces_are_the_ones_the_tail_sampler_keeps() -> None:
    stack = stack_with(slow_threshold_ms=250)
    queries = [q.expr for d in build_all(stack).values() for q in iter_queries(d) if q.language == "traceql"]
    slow = [q for q in queries if "status = error ||" in q]
    assert len(slow) >= 2 and all("duration > 250ms" in q for q in slow)
    assert "threshold_ms: 250\n" in configs.render(configs.compose_target(stack))["otel-collector/config.yaml"]


def test_render_all_writes_then_checks(tmp_path: Path) -> None:
    assert len(render_all(STACK, check=True, out_dir=tmp_path)) == len(BUILT), "all missing"
    assert render_all(STACK, out_dir=tmp_path) == []
    assert render_all(STACK, check=True, out_dir=tmp_path) == []
    moved = stack_with(latency_p99_seconds=1.0)
    problems = render_all(moved, check=True, out_dir=tmp_path)
    assert problems and all("differs from the generated dashboard" in p for p in problems)
    (tmp_path / "hand-made.json").write_text("{}\n")
    assert [p for p in render_all(moved, out_dir=tmp_path) if "hand-made.json: not generated" in p]


# --- the Service overview: any OpenTelemetry service ------------------------------------------------

SPAN_RECORDS = {
    common.SPAN_CALLS_RATE,
    common.SPAN_ERRORS_RATIO,
    *(common.span_duration_quantile(q) for q in common.SPAN_QUANTILES),
}
GENAI_RECORDS = {
    contract.GENAI_TOKENS_RATE,
    contract.GENAI_CLIENT_OPERATIONS_RATE,
    contract.GENAI_CLIENT_ERRORS_RATE,
    contract.GENAI_CLIENT_ERRORS_RATIO,
    contract.GENAI_SERVER_REQUESTS_RATE,
    contract.GENAI_SERVER_ERRORS_RATE,
    contract.GENAI_SERVER_ERRORS_RATIO,
    contract.GENAI_COST_RATE,
    *(contract.genai_quantile(h, q) for h in contract.GENAI_QUANTILE_HISTOGRAMS for q in contract.GENAI_QUANTILES),
}


def panel_promql(dashboard: dict[str, Any]) -> list[str]:
    """The PromQL of the panels (not the variables, not the shared annotations)."""
    return [
        q.expr
        for q in iter_queries(dashboard)
        if q.language == "promql" and not q.panel.startswith(("variable ", "annotation "))
    ]


def panel_named(dashboard: dict[str, Any], title: str) -> dict[str, Any]:
    (panel,) = [p for p in panels_of(dashboard) if p["title"] == title]
    return panel


def test_every_recorded_series_a_dashboard_reads_is_recorded_by_the_rules() -> None:
    used = {
        (query.dashboard, name)
        for dashboard in BUILT.values()
        for query in iter_queries(dashboard)
        if query.language == "promql"
        for name in metric_names(query.expr)
        if ":" in name
    }
    assert {name for _, name in used} >= SPAN_RECORDS | GENAI_RECORDS
    missing = {(uid, name) for uid, name in used if name not in RECORDED}
    assert not missing, f"read by the dashboards, recorded by no rule of prometheus/rules/: {sorted(missing)}"
    assert "mlobs:span_made_up:rate" not in RECORDED


def test_service_overview_needs_no_ml_metric() -> None:
    allowed = SPAN_RECORDS | {
        f"{contract.SPANMETRICS_DURATION_SECONDS}_bucket",
        contract.PROCESS_CPU_TIME_SECONDS_TOTAL,
        contract.PROCESS_MEMORY_USAGE_BYTES,
        common.LOG_RECORDS_TOTAL,
    }
    exprs = panel_promql(by_uid()["mlobs-service"])
    used = {name for expr in exprs for name in metric_names(expr)}
    assert used == allowed
    assert not [e for e in exprs if "ml_" in e]


def test_service_overview_variables_are_service_and_operations_of_it() -> None:
    variables = {v["name"]: v for v in by_uid()["mlobs-service"]["templating"]["list"]}
    assert set(variables) == {"service", "operation"}
    assert variables["service"]["query"] == f"label_values({contract.SPANMETRICS_CALLS_TOTAL}, service_name)"
    operation = variables["operation"]
    spans = contract.SPANMETRICS_CALLS_TOTAL
    assert operation["query"] == f'label_values({spans}{{service_name="$service"}}, span_name)'
    assert operation["multi"] and operation["includeAll"] and operation["current"]["value"] == ["$__all"]
    span_queries = [e for e in panel_promql(by_uid()["mlobs-service"]) if "span" in e]
    assert len(span_queries) >= 7
    assert all('service_name="$service"' in e and 'span_name=~"$operation"' in e for e in span_queries)


def test_service_overview_shows_rate_errors_and_durations_per_operation() -> None:
    service = by_uid()["mlobs-service"]
    def exprs(title: str) -> list[str]:
        return [t["expr"] for t in panel_named(service, title)["targets"]]

    (calls,) = exprs("Calls per second by operation")
    assert common.SPAN_CALLS_RATE in calls and "by (span_name, span_kind)" in calls
    assert all(common.SPAN_ERRORS_RATIO in e for e in exprs("Error ratio by operation"))
    durations = exprs("Duration p50, p95, p99 by operation")
    quantiles = [q for e in durations for q in common.SPAN_QUANTILES if common.span_duration_quantile(q) in e]
    assert quantiles == [50, 95, 99]
    served = " ".join(exprs("Worst error ratio of a served operation") + exprs("Worst p99 of a served operation"))
    for kind in contract.SERVED_SPAN_KINDS:
        assert kind in served


def test_service_overview_reads_the_raw_span_histogram_with_exemplars() -> None:
    raw = [
        p for p in panels_of(by_uid()["mlobs-service"])
        for t in p.get("targets", [])
        if f"{contract.SPANMETRICS_DURATION_SECONDS}_bucket" in t["expr"]
    ]
    assert raw and all(t.get("exemplar") is True for p in raw for t in p["targets"])
    assert {p["type"] for p in raw} == {"heatmap"}


def test_service_overview_cpu_and_memory_are_the_process_metrics_of_the_job() -> None:
    service = by_uid()["mlobs-service"]
    (cpu,) = panel_named(service, "CPU per instance")["targets"]
    (memory,) = panel_named(service, "Memory per instance")["targets"]
    assert f'rate({contract.PROCESS_CPU_TIME_SECONDS_TOTAL}{{job="$service"}}' in cpu["expr"]
    assert f'{contract.PROCESS_MEMORY_USAGE_BYTES}{{job="$service"}}' in memory["expr"]


def test_the_process_metric_names_are_what_the_pinned_system_metrics_instrumentation_emits() -> None:
    """Instrument a meter with the system-metrics instrumentation as mlobs.telemetry does, then name
    its two process instruments as Prometheus' OTLP receiver does (unit suffix; _total on a monotonic sum)."""
    from opentelemetry.instrumentation.system_metrics import SystemMetricsInstrumentor
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader, Sum

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    instrumentor = SystemMetricsInstrumentor(
        config={contract.PROCESS_CPU_TIME: ["user", "system"], contract.PROCESS_MEMORY_USAGE: None}
    )
    instrumentor.instrument(meter_provider=provider)
    try:
        data = reader.get_metrics_data()
    finally:
        instrumentor.uninstrument()
        provider.shutdown()
    assert data is not None
    metrics = {m.name: m for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}
    names = {}
    for instrument in (contract.PROCESS_CPU_TIME, contract.PROCESS_MEMORY_USAGE):
        metric = metrics[instrument]
        assert isinstance(metric.data, Sum)
        names[instrument] = contract.prometheus_name(instrument, metric.unit, counter=metric.data.is_monotonic)
    assert names == {
        contract.PROCESS_CPU_TIME: contract.PROCESS_CPU_TIME_SECONDS_TOTAL,
        contract.PROCESS_MEMORY_USAGE: contract.PROCESS_MEMORY_USAGE_BYTES,
    }
    assert contract.PROCESS_CPU_TIME_SECONDS_TOTAL == "process_cpu_time_seconds_total"
    assert contract.PROCESS_MEMORY_USAGE_BYTES == "process_memory_usage_bytes"


# --- the Service overview's thresholds: the span-metric alerts' ----------------------------------


def stack_from(**changes: Any) -> config.Stack:
    """The repo's stack with top-level sections replaced (services, backends, genai, ...)."""
    data = yaml.safe_load(STACK_FILE.read_text())
    data.update(changes)
    return config.parse(data)


SERVICES_WITH_AN_OVERRIDE = [
    {"name": "mlobs-inference", "sample": True, "health_path": "/healthz",
     "alerts": {"error_ratio": 0.2, "latency_p99_seconds": 2.0}},
    {"name": "shop-api", "health_url": "http://127.0.0.1:9000/healthz", "alerts": {"latency_p99_seconds": 0.5}},
    {"name": "my-model", "health_url": "http://127.0.0.1:9001/healthz"},
]


def thresholds_seen(panel: dict[str, Any], service: str) -> set[tuple[float | None, ...]]:
    """The thresholds of the fields a panel shows for one value of $service: the queries whose
    service_name matchers that value satisfies, each with its ref's override, else the panel's own."""
    overrides = {
        o["matcher"]["options"]: [s["value"] for s in o["properties"][0]["value"]["steps"]]
        for o in panel.get("fieldConfig", {}).get("overrides", [])
        if o["matcher"]["id"] == "byFrameRefID"
    }
    seen = set()
    for target in panel["targets"]:
        matchers = re.findall(r'service_name(!?=)"([^"]*)"', target["expr"].replace("$service", service))
        if all((value == service) == (op == "=") for op, value in matchers):
            seen.add(tuple(overrides.get(target["refId"], steps_of(panel))))
    return seen


LIMITED = ("Worst error ratio of a served operation", "Error ratio by operation")
LIMITED_LATENCY = ("Worst p99 of a served operation", "Duration p50, p95, p99 by operation")


def test_service_overview_lines_follow_the_global_limits() -> None:
    service = build_all(stack_with(error_ratio=0.1, latency_p99_seconds=1.25))["service-overview.json"]
    for title in LIMITED:
        assert steps_of(panel_named(service, title)) == [None, 0.02, 0.1], title
    for title in LIMITED_LATENCY:
        assert steps_of(panel_named(service, title)) == [None, 0.625, 1.25], title
    assert "1.25 s" in panel_named(service, "Duration p50, p95, p99 by operation")["description"]
    for title in ("Error ratio by operation", "Duration p50, p95, p99 by operation"):
        panel = panel_named(service, title)
        assert panel["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"] == "dashed"
        assert not panel["fieldConfig"].get("overrides")


def test_service_overview_lines_follow_a_services_own_limits() -> None:
    service = build_all(stack_from(services=SERVICES_WITH_AN_OVERRIDE))["service-overview.json"]
    for title in LIMITED:
        panel = panel_named(service, title)
        assert thresholds_seen(panel, "mlobs-inference") == {(None, 0.04, 0.2)}, title
        for other in ("shop-api", "my-model", "not-in-stack-yaml"):
            assert thresholds_seen(panel, other) == {(None, 0.01, 0.05)}, (title, other)
    for title in LIMITED_LATENCY:
        panel = panel_named(service, title)
        assert thresholds_seen(panel, "mlobs-inference") == {(None, 1.0, 2.0)}, title
        # shop-api's own latency limit is the global one: no query group of its own
        assert "shop-api" not in json.dumps(panel["targets"])
        for other in ("shop-api", "my-model"):
            assert thresholds_seen(panel, other) == {(None, 0.25, 0.5)}, (title, other)


def test_thresholds_seen_tells_the_groups_apart() -> None:
    """The helper above must see a wrong line: drop the override and mlobs-inference sees the global one."""
    service = build_all(stack_from(services=SERVICES_WITH_AN_OVERRIDE))["service-overview.json"]
    panel = copy.deepcopy(panel_named(service, "Error ratio by operation"))
    panel["fieldConfig"]["overrides"] = []
    assert thresholds_seen(panel, "mlobs-inference") == {(None, 0.01, 0.05)}


# --- the Service overview's logs and traces: the stores that run --------------------------------------


def links_of(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [link for p in panels_of(dashboard) for link in p.get("links", [])]


def explore_queries(link: dict[str, Any]) -> list[dict[str, Any]]:
    (panes,) = parse_qs(urlsplit(link["url"]).query)["panes"]
    return [q for pane in json.loads(panes).values() for q in pane["queries"]]


def test_service_overview_on_tempo_and_loki() -> None:
    service = by_uid()["mlobs-service"]
    queries = {q.panel: q for q in iter_queries(service) if q.language in ("traceql", "logql")}
    slow = [q.expr for q in queries.values() if "duration >" in q.expr]
    failed = [q.expr for q in queries.values() if "status = error" in q.expr]
    assert slow and all(f"duration > {STACK.sampling.slow_threshold_ms}ms" in e for e in slow)
    assert failed and all('resource.service.name = "$service"' in e for e in failed + slow)
    logs = [p for p in panels_of(service) if p["type"] == "logs"]
    assert len(logs) == 2 and {p["datasource"]["uid"] for p in logs} == {"loki"}
    assert {p["targets"][0]["expr"] for p in logs} == {
        '{service_name="$service"}',
        '{service_name="$service"} | ' + common.SEVERITY_ERROR,
    }


def test_service_overview_on_jaeger_and_victorialogs() -> None:
    stack = stack_from(backends={"traces": "jaeger", "logs": "victorialogs"}, sampling={"slow_threshold_ms": 750})
    service = build_all(stack)["service-overview.json"]
    assert not foreign_datasources(service)
    searches = [q for link in links_of(service) for q in explore_queries(link) if q["datasource"]["uid"] == "jaeger"]
    assert searches and all(q["queryType"] == "search" and q["service"] == "$service" for q in searches)
    assert {q.get("minDuration") for q in searches} >= {"750ms"}
    assert {q.get("tags") for q in searches} >= {"error=true"}
    assert not [link for link in links_of(service) if '"tempo"' in unquote(link["url"])]
    logs = [p for p in panels_of(service) if p["type"] == "logs"]
    assert len(logs) == 2 and {p["datasource"]["uid"] for p in logs} == {"victorialogs"}
    for panel in logs:
        (target,) = panel["targets"]
        assert target["datasource"]["uid"] == "victorialogs" and target["queryType"] == "instant"
        assert target["expr"].startswith('"service.name":"$service"')
    assert "loki" not in json.dumps(logs)


# --- the GenAI dashboard ---------------------------------------------------------------------------------


def test_genai_reads_only_the_recorded_genai_series() -> None:
    genai = by_uid()["mlobs-genai"]
    exprs = panel_promql(genai)
    used = {name for expr in exprs for name in metric_names(expr)}
    assert used == GENAI_RECORDS
    assert all('job=~"$service"' in e and 'gen_ai_request_model=~"$model"' in e for e in exprs)


def test_genai_variables_are_services_and_models() -> None:
    """Both multi-value: an LLM client (tokens, cost) and the model server it calls (time to first
    token, per output token) are two services, and the dashboard shows both sides at once."""
    variables = {v["name"]: v for v in by_uid()["mlobs-genai"]["templating"]["list"]}
    assert set(variables) == {"service", "model"}
    assert variables["service"]["query"].endswith(", job)")
    assert variables["model"]["query"].endswith(", gen_ai_request_model)")
    assert 'job=~"$service"' in variables["model"]["query"]
    for variable in variables.values():
        assert variable["multi"] and variable["includeAll"] and variable["current"]["value"] == ["$__all"]
        sources = (contract.GENAI_TOKENS_RATE, contract.GENAI_CLIENT_OPERATIONS_RATE,
                   contract.GENAI_SERVER_REQUESTS_RATE)
        assert all(source in variable["query"] for source in sources)


def test_genai_panels_cover_tokens_latency_errors_and_cost() -> None:
    genai = by_uid()["mlobs-genai"]

    def exprs(title: str) -> list[str]:
        return [t["expr"] for t in panel_named(genai, title)["targets"]]

    tokens = exprs("Tokens per second by model, in and out")
    kinds = (contract.GENAI_TOKEN_INPUT, contract.GENAI_TOKEN_OUTPUT)
    assert len(tokens) == 2
    assert all(f'gen_ai_token_type="{kind}"' in e for e, kind in zip(tokens, kinds, strict=True))
    assert all("by (gen_ai_request_model)" in e for e in tokens)
    for title, histogram in (
        ("Time to first token p50 and p95", contract.GENAI_SERVER_TIME_TO_FIRST_TOKEN_SECONDS),
        ("Time per output token p50 and p95", contract.GENAI_SERVER_TIME_PER_OUTPUT_TOKEN_SECONDS),
    ):
        found = [q for e in exprs(title) for q in (50, 95) if contract.genai_quantile(histogram, q) in e]
        assert found == [50, 95], title
    durations = " ".join(exprs("Request duration p50 and p95 (server and client)"))
    for histogram in (contract.GENAI_SERVER_REQUEST_DURATION_SECONDS, contract.GENAI_CLIENT_OPERATION_DURATION_SECONDS):
        for q in (50, 95):
            assert contract.genai_quantile(histogram, q) in durations
    by_type = exprs("Errors per second by error.type")
    assert sorted(by_type) == sorted(
        f'sum by (error_type) ({rate}{{job=~"$service", gen_ai_request_model=~"$model"}})'
        for rate in (contract.GENAI_SERVER_ERRORS_RATE, contract.GENAI_CLIENT_ERRORS_RATE)
    )
    ratios = " ".join(exprs("Error ratio by model (server and client)"))
    assert contract.GENAI_SERVER_ERRORS_RATIO in ratios and contract.GENAI_CLIENT_ERRORS_RATIO in ratios
    assert all(contract.GENAI_COST_RATE in e and "3600" in e for e in exprs("Cost per hour by model"))


def test_genai_lines_follow_the_stack() -> None:
    default = by_uid()["mlobs-genai"]
    ttft = STACK.alerts.genai_ttft_p95_seconds
    assert steps_of(panel_named(default, "Time to first token p50 and p95")) == [None, ttft / 2, ttft]
    moved = build_all(stack_with(genai_ttft_p95_seconds=3.5, error_ratio=0.1))["genai-overview.json"]
    for title in ("Time to first token p50 and p95", "Worst p95 time to first token"):
        assert steps_of(panel_named(moved, title)) == [None, 1.75, 3.5], title
    assert "3.5 s" in panel_named(moved, "Time to first token p50 and p95")["description"]
    custom = panel_named(moved, "Time to first token p50 and p95")["fieldConfig"]["defaults"]["custom"]
    assert custom["thresholdsStyle"]["mode"] == "dashed"
    for title in ("Error ratio by model (server and client)", "Worst error ratio"):
        assert steps_of(panel_named(moved, title)) == [None, 0.02, 0.1], title


def test_genai_cost_says_it_needs_a_price_table() -> None:
    assert not STACK.genai.prices
    for title in ("Cost per hour", "Cost per hour by model"):
        assert "Empty without a price table" in panel_named(by_uid()["mlobs-genai"], title)["description"]
    priced = build_all(stack_from(genai={"prices": {"gpt-x": {"input_per_1k": 0.5, "output_per_1k": 1.5}}}))
    description = panel_named(priced["genai-overview.json"], "Cost per hour by model")["description"]
    assert "gpt-x: 0.5 in, 1.5 out" in description


def test_genai_links_to_its_traces_and_logs() -> None:
    languages = {q.language for q in iter_queries(by_uid()["mlobs-genai"]) if "(link " in q.panel}
    assert languages == {"traceql", "logql"}
    genai = by_uid()["mlobs-genai"]
    traceql = {q.expr for q in iter_queries(genai) if q.language == "traceql"}
    assert len(traceql) == 2
    assert all(f"span.{contract.ATTR_GENAI_OPERATION_NAME} != nil" in e for e in traceql)
    assert all('resource.service.name =~ "${service:pipe}"' in e for e in traceql)
    logs = {q.expr for q in iter_queries(genai) if q.language == "logql"} - {common.EVENTS_EXPR}
    assert logs == {'{service_name=~"$service"}', '{service_name=~"${service:pipe}"} | ' + common.SEVERITY_ERROR}


def test_genai_queries_say_why_a_plain_run_leaves_them_empty() -> None:
    queries = promql_queries_for_e2e()
    genai = [q for q in queries if q.dashboard == "mlobs-genai"]
    assert len(genai) >= 20 and all(q.reason for q in genai)
    service = [q for q in queries if q.dashboard == "mlobs-service" and not q.panel.startswith("annotation ")]
    assert len(service) >= 10 and not [q for q in service if q.reason]
    assert all('service_name="mlobs-inference"' in q.expr or 'job="mlobs-inference"' in q.expr
               for q in service if not q.panel.startswith("variable "))


# --- links to the Service overview -----------------------------------------------------------------------


@pytest.mark.parametrize("uid", sorted(ML_DASHBOARDS))
def test_the_ml_dashboards_link_to_the_service_overview(uid: str) -> None:
    dashboard = by_uid()[uid]
    target = f"/d/{common.SERVICE_OVERVIEW_UID}?"
    overview = [link for link in dashboard["links"] if link.get("url", "").startswith(target)]
    assert len(overview) == 1, dashboard["links"]
    (link,) = overview
    assert "${service:queryparam}" in link["url"] and link["keepTime"]
    assert "service" in variable_defaults(dashboard)
    assert common.SERVICE_OVERVIEW_UID in by_uid()


def test_e2e_skips_the_threshold_groups_of_other_services_only() -> None:
    """With mlobs-inference's own limits, its queries of the limited panels are the override group;
    the default group (for every other service) selects nothing once mlobs-inference is substituted."""
    from mlobs.dashboards import SELECTS_NOTHING, e2e_queries, selects_nothing, service

    dashboard = build_all(stack_from(services=SERVICES_WITH_AN_OVERRIDE))["service-overview.json"]
    queries = [q for q in e2e_queries(service, dashboard) if q.panel in LIMITED + LIMITED_LATENCY]
    live = [q for q in queries if q.reason is None]
    dead = [q for q in queries if q.reason == SELECTS_NOTHING]
    assert live and dead and len(live) + len(dead) == len(queries)
    assert all(q.expr.count('service_name="mlobs-inference"') == 2 for q in live)
    assert all('service_name!="mlobs-inference"' in q.expr for q in dead)
    plain = [q for q in e2e_queries(service, by_uid()["mlobs-service"]) if not q.panel.startswith("annotation ")]
    assert plain and not [q for q in plain if q.reason]
    assert selects_nothing('x{a="1", a="2"}') and not selects_nothing('x{a="1", a!="2", a=~"1|2"}')

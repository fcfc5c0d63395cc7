"""The prebuilt dashboards: generated, committed, and consistent with the telemetry contract."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from mlobs import config, contract, dashboards
from mlobs import render as configs
from mlobs.dashboards import (
    DASHBOARD_DIR,
    STACK_FILE,
    build_all,
    drift,
    iter_panels,
    iter_queries,
    render,
    render_all,
    write_all,
)
from mlobs.dashboards.common import FIXED_DATASOURCE_UIDS, TAG
from mlobs.dashboards.queries import BUILTIN_VALUES, variable_defaults, variables_in

REPO = Path(__file__).resolve().parents[2]
CONTRACT = REPO / "generator" / "TELEMETRY.md"

EXPECTED_UIDS = {"mlobs-inference", "mlobs-quality", "mlobs-training", "mlobs-pipeline", "mlobs-stack"}
ML_DASHBOARDS = EXPECTED_UIDS - {"mlobs-stack"}
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


def test_all_five_dashboards_are_built_with_stable_uids() -> None:
    assert set(by_uid()) == EXPECTED_UIDS
    assert len(BUILT) == 5


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


def test_metric_names_come_from_the_contract() -> None:
    if not CONTRACT.exists():
        pytest.skip(f"{CONTRACT} is absent")
    known = contract_metrics()
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

"""Every dashboard query parses with the upstream grammars, and a broken one is caught."""

from __future__ import annotations

import copy
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from mlobs import config
from mlobs.dashboards import (
    STACK_FILE,
    build_all,
    iter_panels,
    iter_queries,
    promql_queries_for_e2e,
    querycheck,
    substitute_variables,
)
from mlobs.dashboards.queries import Query, variable_defaults, variable_promql
from mlobs.dashboards.querycheck import (
    QUERYCHECK_DIR,
    QueryCheckError,
    check_promql_with_promtool,
    check_queries,
    find_promtool,
    parse,
)

DASHBOARDS = {dashboard["uid"]: dashboard for dashboard in build_all(config.load(STACK_FILE)).values()}

needs_node = pytest.mark.skipif(
    shutil.which("node") is None or shutil.which("npm") is None,
    reason="Node.js and npm are not installed: the LogQL/TraceQL/PromQL grammars run under Node",
)
PROMTOOL = find_promtool()
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is neither in .bin/ nor on PATH: build it with `make native-deps`"
)


def problems_of(dashboard: dict[str, Any], languages: tuple[str, ...]) -> list[str]:
    return [str(p) for p in check_queries(iter_queries(dashboard), variable_defaults(dashboard), languages)]


def with_broken_target(uid: str, panel_type: str, breakage: str) -> dict[str, Any]:
    """A copy of a dashboard whose first `panel_type` panel has `breakage` appended to its query."""
    broken = copy.deepcopy(DASHBOARDS[uid])
    panel = next(p for p in iter_panels(broken) if p["type"] == panel_type)
    target = panel["targets"][0]
    key = "query" if "query" in target else "expr"
    target[key] += breakage
    return broken


# --- variables ---------------------------------------------------------------------------------


def test_substitute_variables_handles_every_syntax_grafana_accepts() -> None:
    values = {"service": "mlobs-inference", "model": "m", "version": ["1", "2"], "feature": ["$__all"]}
    expr = 'rate(x{job="$service", m="${model}", v=~"${version:regex}", f=~"[[feature]]"}[$__rate_interval])'
    assert substitute_variables(expr, values) == 'rate(x{job="mlobs-inference", m="m", v=~"(1|2)", f=~".*"}[1m])'
    assert substitute_variables("[$__range] $__interval", {}) == "[1h] 30s"


def test_substitute_variables_refuses_an_unknown_variable() -> None:
    with pytest.raises(ValueError, match=r"\$nope"):
        substitute_variables('up{job="$nope"}', {"service": "x"})


def test_label_values_variables_become_the_promql_grafana_runs() -> None:
    assert variable_promql('label_values(ml_model_info{job="$service"}, ml_model_version)') == (
        'group by (ml_model_version) (ml_model_info{job="$service"})'
    )
    assert variable_promql("label_values(job)") == 'group by (job) ({job!=""})'


# --- the grammars --------------------------------------------------------------------------------


@needs_node
@pytest.mark.parametrize("uid", sorted(DASHBOARDS))
def test_every_logql_and_traceql_query_parses(uid: str) -> None:
    dashboard = DASHBOARDS[uid]
    if uid != "mlobs-stack":
        assert any(q.language in ("logql", "traceql") for q in iter_queries(dashboard))
    problems = problems_of(dashboard, ("logql", "traceql"))
    assert not problems, "\n".join(problems)


@needs_node
@pytest.mark.parametrize("uid", sorted(DASHBOARDS))
def test_every_promql_query_parses_with_the_prometheus_grammar(uid: str) -> None:
    problems = problems_of(DASHBOARDS[uid], ("promql",))
    assert not problems, "\n".join(problems)


@needs_node
@pytest.mark.parametrize(
    ("lang", "expr"),
    [
        ("logql", '{service_name="mlobs-inference"'),
        ("logql", '{service_name="mlobs-inference"} | request_id=~'),
        ("logql", 'sum by (x) (rate({a="b"} [1m])'),
        ("traceql", '{ resource.service.name = "mlobs-inference" &&  }'),
        ("traceql", "{ span.ml.model.version = }"),
        ("promql", "sum(rate(x[1m])"),
        ("promql", 'up{job="a",}}'),
        ("logql", ""),
    ],
)
def test_a_broken_query_fails_to_parse(lang: str, expr: str) -> None:
    [error] = parse([(lang, expr)])  # type: ignore[list-item]
    assert error is not None


@needs_node
def test_the_checker_reports_where_the_error_is() -> None:
    [error] = parse([("traceql", '{ resource.service.name = "x" && kind = }')])
    assert error is not None and re.search(r"position \d+", error)


@needs_node
@pytest.mark.parametrize(
    ("uid", "panel_type", "breakage", "language"),
    [
        ("mlobs-pipeline", "logs", " | json |", "logql"),
        ("mlobs-pipeline", "table", " && }", "traceql"),
        ("mlobs-quality", "timeseries", ") by (", "promql"),
    ],
)
def test_a_dashboard_with_a_broken_query_fails(uid: str, panel_type: str, breakage: str, language: str) -> None:
    broken = with_broken_target(uid, panel_type, breakage)
    problems = check_queries(iter_queries(broken), variable_defaults(broken), (language,))  # type: ignore[arg-type]
    assert len(problems) == 1
    assert problems[0].query.language == language


@needs_node
def test_a_query_with_an_undefined_variable_fails() -> None:
    query = Query("x", "p", "loki", "logql", '{service_name="$undefined"}')
    [problem] = check_queries([query], {})
    assert "$undefined" in problem.error


def test_a_missing_node_gives_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(querycheck.shutil, "which", lambda name: None)
    with pytest.raises(QueryCheckError, match="Node.js and npm"):
        parse([("logql", '{a="b"}')], folder=tmp_path)


# --- promtool ------------------------------------------------------------------------------------------


@needs_promtool
def test_every_promql_query_passes_promtool() -> None:
    assert PROMTOOL is not None
    problems = []
    for dashboard in DASHBOARDS.values():
        queries = [q for q in iter_queries(dashboard) if q.language == "promql"]
        problems += check_promql_with_promtool(queries, variable_defaults(dashboard), PROMTOOL)
    assert not problems, "\n".join(map(str, problems))


@needs_promtool
def test_promtool_catches_a_broken_and_an_ill_typed_query() -> None:
    assert PROMTOOL is not None
    good = Query("x", "good", "prometheus", "promql", "sum(rate(up[5m]))")
    broken = Query("x", "broken", "prometheus", "promql", "sum(rate(up[5m])")
    ill_typed = Query("x", "ill typed", "prometheus", "promql", "rate(sum(up))")
    problems = check_promql_with_promtool([good, broken, ill_typed], {}, PROMTOOL)
    assert {problem.query.panel for problem in problems} == {"broken", "ill typed"}


# --- the end-to-end helper --------------------------------------------------------------------------


def test_e2e_queries_are_concrete_and_use_the_sample_service() -> None:
    queries = promql_queries_for_e2e()
    assert len(queries) > 50
    for query in queries:
        assert "$" not in query.expr and "[[" not in query.expr, query
    by_dashboard = {q.dashboard for q in queries}
    assert by_dashboard == set(DASHBOARDS)
    inference = " ".join(q.expr for q in queries if q.dashboard == "mlobs-inference")
    assert 'job="mlobs-inference"' in inference
    assert 'ml_model_name="breast-cancer-classifier"' in inference
    assert 'ml_model_version=~"1"' in inference
    training = " ".join(q.expr for q in queries if q.dashboard == "mlobs-training" and q.reason)
    assert 'job="mlobs-training"' in training


def test_e2e_queries_say_why_some_can_stay_empty() -> None:
    reasons = {(q.dashboard, q.panel): q.reason for q in promql_queries_for_e2e()}
    assert reasons[("mlobs-training", "Loss per epoch")]
    assert reasons[("mlobs-stack", "Alert states over time")]
    assert reasons[("mlobs-inference", "annotation Faults")]
    assert reasons[("mlobs-inference", "Request rate")] is None


def test_e2e_values_can_be_overridden() -> None:
    queries = promql_queries_for_e2e({"service": "my-model-service"})
    assert all("mlobs-inference" not in q.expr for q in queries if q.dashboard == "mlobs-inference")


# --- the npm pins ----------------------------------------------------------------------------------------


def test_npm_dependencies_are_pinned_exactly_and_locked() -> None:
    package = json.loads((QUERYCHECK_DIR / "package.json").read_text())
    lock = json.loads((QUERYCHECK_DIR / "package-lock.json").read_text())
    dependencies = package["dependencies"]
    assert {"@grafana/lezer-logql", "@grafana/lezer-traceql", "@prometheus-io/lezer-promql"} <= set(dependencies)
    for name, version in dependencies.items():
        assert re.fullmatch(r"\d+\.\d+\.\d+", version), f"{name} must be pinned exactly, not {version}"
        assert lock["packages"][f"node_modules/{name}"]["version"] == version


def test_node_modules_are_not_committed() -> None:
    gitignore = Path(__file__).resolve().parents[2] / ".gitignore"
    assert "node_modules/" in gitignore.read_text().split()

"""Prometheus rules: promtool accepts them and their unit tests pass, and every alert keeps the
promises of the README (severity, a summary naming model and version, a runbook, a test)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml
from support import need_binary

from mlobs import config, render

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "prometheus" / "rules"
TESTS = ROOT / "prometheus" / "tests"
README = ROOT / "README.md"
RULE_FILES = sorted(RULES.glob("*.yml"))
TEST_FILES = sorted(TESTS.glob("*_test.yml"))
SEVERITIES = {"critical", "warning", "info"}


@pytest.fixture(scope="module")
def promtool() -> Path:
    return need_binary("promtool")


def run(cmd: list[str | Path]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300)


def alert_rules(path: Path) -> list[dict]:
    data = yaml.safe_load(path.read_text())
    return [r for g in data["groups"] for r in g["rules"] if "alert" in r]


def all_alerts() -> list[dict]:
    return [r for f in RULE_FILES for r in alert_rules(f)]


def rule_names(path: Path) -> list[str]:
    data = yaml.safe_load(path.read_text())
    return [r.get("alert") or r["record"] for g in data["groups"] for r in g["rules"]]


def alert_cases() -> list[tuple[str, list[dict]]]:
    """(alertname, expected alerts) of every alert_rule_test in the promtool test files."""
    cases = []
    for f in TEST_FILES:
        for group in yaml.safe_load(f.read_text())["tests"]:
            for case in group.get("alert_rule_test", []):
                cases.append((case["alertname"], case.get("exp_alerts") or []))
    return cases


# ---- promtool ------------------------------------------------------------------------------


def test_there_are_rules_and_tests() -> None:
    assert {f.name for f in RULE_FILES} >= {"recording.yml", "thresholds.yml", "anomalies.yml"}
    assert TEST_FILES, "no promtool unit tests in prometheus/tests/"


@pytest.mark.parametrize("rules", RULE_FILES, ids=lambda p: p.name)
def test_promtool_check_rules(promtool: Path, rules: Path) -> None:
    result = run([promtool, "check", "rules", rules])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("unit", TEST_FILES, ids=lambda p: p.name)
def test_promtool_test_rules(promtool: Path, unit: Path) -> None:
    result = run([promtool, "test", "rules", unit])
    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_render_for_the_native_target(promtool: Path, tmp_path: Path) -> None:
    """Rendered for a native stack with only Prometheus and Alertmanager, the rules are valid and
    hold the same alerts and recorded series as the committed (compose) ones."""
    stack = config.load(ROOT / "stack.yaml")
    target = render.native_target(stack, present=["prometheus", "alertmanager"], out_dir=tmp_path)
    env, ctx = render.environment(), render.context(target)
    rendered = [(tpl, dest) for tpl, dest, _ in render.template_list() if tpl.startswith(render.RULE_TEMPLATES)]
    assert sorted(dest for _, dest in rendered) == sorted(str(f.relative_to(ROOT)) for f in RULE_FILES)
    for tpl, dest in rendered:
        native = tmp_path / dest
        native.parent.mkdir(parents=True, exist_ok=True)
        native.write_text(env.get_template(tpl).render(ctx))
        result = run([promtool, "check", "rules", native])
        assert result.returncode == 0, result.stdout + result.stderr
        assert rule_names(native) == rule_names(ROOT / dest), dest


# ---- what every alert promises ---------------------------------------------------------------


@pytest.mark.parametrize("rule", all_alerts(), ids=lambda r: r["alert"])
def test_alert_has_severity_category_summary_and_runbook(rule: dict) -> None:
    name = rule["alert"]
    labels = rule.get("labels", {})
    annotations = rule.get("annotations", {})
    assert labels.get("severity") in SEVERITIES, f"{name}: severity must be one of {sorted(SEVERITIES)}"
    assert labels.get("category"), f"{name}: needs a category label (Alertmanager inhibits by it)"
    assert annotations.get("summary") and annotations.get("description"), f"{name}: summary and description"
    assert annotations.get("runbook_url") == f"README.md#alert-{name.lower()}", name


@pytest.mark.parametrize("rule", all_alerts(), ids=lambda r: r["alert"])
def test_summary_names_model_and_version_exactly_when_per_model(rule: dict) -> None:
    """An alert whose firing test cases carry the model labels is per model: its summary names
    both. Any other alert has no such labels, so its summary must not print them (they would be empty)."""
    name = rule["alert"]
    per_model = any(
        "ml_model_name" in (e.get("exp_labels") or {}) for n, exp in alert_cases() if n == name for e in exp
    )
    summary = rule["annotations"]["summary"]
    names_model = "{{ $labels.ml_model_name }}" in summary and "{{ $labels.ml_model_version }}" in summary
    assert names_model == per_model, f"{name}: per model: {per_model}; summary: {summary}"


def test_every_runbook_anchor_is_in_the_readme() -> None:
    text = README.read_text() if README.exists() else ""
    if 'id="alert-' not in text:
        pytest.skip("README.md has no alert runbook sections yet")
    for name in sorted({r["alert"] for r in all_alerts()}):
        anchor = f"alert-{name.lower()}"
        assert f'<a id="{anchor}"></a>' in text, f"README.md lacks the anchor {anchor}"
        assert re.search(rf"^### {name}$", text, re.M), f"README.md lacks the section ### {name}"


def test_every_alert_has_a_firing_and_a_quiet_test_case() -> None:
    cases = alert_cases()
    fired = {name for name, exp in cases if exp}
    quiet = {name for name, exp in cases if not exp}
    names = {r["alert"] for r in all_alerts()}
    assert names - fired == set(), "alerts no promtool test makes fire"
    assert names - quiet == set(), "alerts no promtool test shows quiet"
    assert {n for n, _ in cases} <= names, "test cases for alerts that do not exist"


def test_expected_alerts_carry_the_rule_labels() -> None:
    """The promtool cases expect the severity and category the rules set, so a change to either
    is a change to the tests too."""
    by_name: dict[str, dict] = {}
    for r in all_alerts():
        by_name.setdefault(r["alert"], r["labels"])
    for name, exp in alert_cases():
        for e in exp:
            got = {k: e["exp_labels"].get(k) for k in ("severity", "category")}
            assert got == {k: by_name[name][k] for k in ("severity", "category")}, name


# ---- rules rendered for a stack.yaml of a user's ---------------------------------------------

USER_STACK = TESTS / "user-stack"


def test_user_stack_rules_per_service_thresholds_and_service_down(promtool: Path, tmp_path: Path) -> None:
    """services.yml rendered from stack.yaml + prometheus/tests/user-stack/stack.overlay.yaml (a
    generic service with its own error limit, an ML service) passes the promtool tests beside it,
    and ServiceDown exists for the generic service only (MLServiceDown watches the ML ones)."""
    stack = config.load(ROOT / "stack.yaml", USER_STACK / "stack.overlay.yaml")
    target = render.native_target(stack, present=["prometheus", "alertmanager"], out_dir=tmp_path)
    env, ctx = render.environment(), render.context(target)
    rules = tmp_path / "services.yml"
    rules.write_text(env.get_template("prometheus/rules/services.yml.j2").render(ctx))
    down = [r for r in alert_rules(rules) if r["alert"] == "ServiceDown"]
    assert [r["annotations"]["summary"].split()[0] for r in down] == ["shop-api"]
    thresholds = tmp_path / "thresholds.yml"
    thresholds.write_text(env.get_template("prometheus/rules/thresholds.yml.j2").render(ctx))
    ml_down = [r for r in alert_rules(thresholds) if r["alert"] == "MLServiceDown"]
    assert ml_down and all("shop-api" not in r["expr"] for r in ml_down)
    assert any("fraud-model" in r["expr"] for r in ml_down)
    unit = tmp_path / "services_test.yml"
    unit.write_text((USER_STACK / "services_test.yml").read_text())
    result = run([promtool, "test", "rules", unit])
    assert result.returncode == 0, result.stdout + result.stderr

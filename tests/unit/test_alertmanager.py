"""Alertmanager: amtool accepts the rendered config, alerts route where the README says, and the
inhibitions name alerts and categories that the Prometheus rules really have."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml
from support import need_binary

from mlobs import config, render

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "alertmanager" / "alertmanager.yml"
TEMPLATE = "alertmanager/alertmanager.yml.j2"
RULE_FILES = sorted((ROOT / "prometheus" / "rules").glob("*.yml"))
SYMPTOMS = {"errors", "latency", "quality", "drift", "feedback", "anomaly"}


@pytest.fixture(scope="module")
def amtool() -> Path:
    return need_binary("amtool")


def run(cmd: list[str | Path]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=60)


def rendered(target: render.Target) -> str:
    return render.environment().get_template(TEMPLATE).render(render.context(target))


def alerts() -> dict[str, dict[str, str]]:
    """alertname -> labels of every alert rule."""
    out: dict[str, dict[str, str]] = {}
    for f in RULE_FILES:
        for g in yaml.safe_load(f.read_text())["groups"]:
            for r in g["rules"]:
                if "alert" in r:
                    out.setdefault(r["alert"], r.get("labels", {}))
    return out


def matcher_value(matchers: list[str], label: str) -> str:
    """The value of `label="v"` or the pattern of `label=~"re"` among Alertmanager matchers."""
    for m in matchers:
        found = re.fullmatch(rf'{label}=~?"(.*)"', m)
        if found:
            return found.group(1)
    raise AssertionError(f"no matcher on {label} in {matchers}")


# ---- amtool ----------------------------------------------------------------------------------


def test_amtool_check_config(amtool: Path) -> None:
    result = run([amtool, "check-config", CONFIG])
    assert result.returncode == 0, result.stdout + result.stderr


def test_native_render_passes_amtool(amtool: Path, tmp_path: Path) -> None:
    stack = config.load(ROOT / "stack.yaml")
    native = tmp_path / "alertmanager.yml"
    native.write_text(rendered(render.native_target(stack, present=["prometheus", "alertmanager"])))
    result = run([amtool, "check-config", native])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (["alertname=MLServiceDown", "severity=critical", "category=service", "job=mlobs-inference"], "analyzer"),
        (
            ["alertname=MLLatencyAnomaly", "severity=warning", "category=anomaly", "job=mlobs-inference",
             "ml_model_name=breast-cancer-classifier", "ml_model_version=1", "band=median_mad"],
            "analyzer",
        ),
        (["alertname=OTelCollectorDown", "severity=critical", "category=pipeline", "job=otel-collector"], "analyzer"),
        (["alertname=AnythingElse"], "analyzer"),
        (["alertname=ModelVersionChanged", "severity=info", "job=mlobs-inference"], "quiet"),
    ],
    ids=["service-down", "anomaly", "collector-down", "unlabelled", "info"],
)
def test_amtool_routes(amtool: Path, labels: list[str], receiver: str) -> None:
    result = run([amtool, "config", "routes", "test", f"--config.file={CONFIG}", f"--verify.receivers={receiver}",
                  *labels])
    assert result.returncode == 0, result.stdout + result.stderr


# ---- the config against the rules --------------------------------------------------------------


def test_webhook_dials_the_analyzer_on_both_targets() -> None:
    stack = config.load(ROOT / "stack.yaml")
    for target in (render.compose_target(stack), render.native_target(stack, present=["prometheus"])):
        cfg = yaml.safe_load(rendered(target))
        hooks = {r["name"]: r.get("webhook_configs", []) for r in cfg["receivers"]}
        assert hooks["analyzer"] == [{"url": f"http://{target.connect('analyzer')}/alerts", "send_resolved": True}]
        assert cfg["route"]["receiver"] == "analyzer"
        assert cfg["route"]["group_by"] == ["alertname", "job", "ml_model_name"]


def test_inhibitions_match_the_rules() -> None:
    """Each inhibition's source alert exists; the service-down rule silences exactly the symptom
    categories for the same job, and covers every symptom category the rules use."""
    rules = alerts()
    categories = {labels["category"] for labels in rules.values()}
    inhibit = yaml.safe_load(CONFIG.read_text())["inhibit_rules"]
    by_source = {}
    for rule in inhibit:
        source = rule["source_matchers"]
        if any(m.startswith("alertname=") for m in source):
            by_source[matcher_value(source, "alertname")] = rule
    assert set(by_source) <= set(rules), "inhibitions whose source alert does not exist"

    down = by_source["MLServiceDown"]
    assert down["equal"] == ["job"]
    silenced = set(matcher_value(down["target_matchers"], "category").split("|"))
    assert silenced == SYMPTOMS
    assert categories >= SYMPTOMS, "symptom categories that no rule uses"

    collector = by_source["OTelCollectorDown"]
    assert set(matcher_value(collector["target_matchers"], "category").split("|")) == SYMPTOMS | {"service"}


def test_every_category_is_known() -> None:
    """A new category must be placed: a symptom (inhibited), or service, pipeline or monitoring."""
    assert {labels["category"] for labels in alerts().values()} <= SYMPTOMS | {"service", "pipeline", "monitoring"}

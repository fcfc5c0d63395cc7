"""stack.yaml validation: every bad input gets a message naming the path, the value and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from analyzer.settings import Settings
from mlobs import config, render
from mlobs.cli import app

ROOT = Path(__file__).resolve().parents[2]
STACK = ROOT / "stack.yaml"
BAD = sorted((Path(__file__).parent / "bad_stacks").glob("*.yaml"))


def expected(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), f"{path.name} must start with '# expect: <message>'"
    return first.removeprefix("# expect: ")


def test_default_stack_is_valid() -> None:
    s = config.load(STACK)
    assert s.sample_service is not None and s.sample_service.name == "mlobs-inference"
    assert s.version("prometheus") == "3.16.0"


@pytest.mark.parametrize("bad", BAD, ids=[p.stem for p in BAD])
def test_bad_stack_file_names_path_and_allowed_values(bad: Path) -> None:
    with pytest.raises(config.StackError) as e:
        config.load(STACK, bad)
    assert expected(bad) in str(e.value)
    assert str(bad) in str(e.value), "the message names the file"


def test_bad_stack_cases_are_enough() -> None:
    assert len(BAD) >= 10


def test_unreadable_and_non_mapping_files(tmp_path: Path) -> None:
    with pytest.raises(config.StackError, match="cannot read"):
        config.load(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("components: [unclosed\n")
    with pytest.raises(config.StackError, match="not valid YAML"):
        config.load(broken)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just a string\n")
    with pytest.raises(config.StackError, match="must be a mapping"):
        config.load(scalar)


def test_cli_render_refuses_invalid_stack_and_writes_nothing(tmp_path: Path) -> None:
    data = yaml.safe_load(STACK.read_text())
    data["ports"]["grafana"] = "three thousand"
    bad = tmp_path / "stack.yaml"
    bad.write_text(yaml.safe_dump(data))
    before = {p: p.stat().st_mtime_ns for p in (ROOT / "otel-collector").glob("*.yaml")}
    result = CliRunner().invoke(app, ["render", "--stack", str(bad)])
    assert result.exit_code == 2
    assert "ports.grafana" in result.output and "nothing was written" in result.output
    after = {p: p.stat().st_mtime_ns for p in (ROOT / "otel-collector").glob("*.yaml")}
    assert before == after


def test_overlay_merges_deeply(tmp_path: Path) -> None:
    overlay = tmp_path / "fast.yaml"
    overlay.write_text("alerts:\n  anomaly:\n    window: 10m\n")
    s = config.load(STACK, overlay)
    assert s.alerts.anomaly.window == "10m"
    assert s.alerts.anomaly.k_mad == config.load(STACK).alerts.anomaly.k_mad, "siblings are kept"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("1ms", 0.001), ("90s", 90), ("5m", 300), ("1h30m", 5400), ("1h0m1s1ms", 3601.001),
     ("1d", 86400), ("2w", 1_209_600), ("1y", 31_536_000), ("0s", 0)],
)
def test_a_duration_is_its_text_and_its_seconds(text: str, seconds: float) -> None:
    duration = config.Duration(text)
    assert duration.seconds == seconds and config.seconds(text) == seconds
    assert str(duration) == f"{duration}" == text


@pytest.mark.parametrize("text", ["", "5", "1.5s", "5 m", "30m1h", "5m5m", "1msec", "-1s", "1H"])
def test_a_bad_duration_says_what_is_allowed(text: str) -> None:
    with pytest.raises(ValueError, match=r"is not a duration: write whole numbers with units in the order y, w, d"):
        config.Duration(text)


def test_every_duration_field_is_a_duration_default_or_not() -> None:
    s = config.load(STACK)
    durations = [s.retention.prometheus, s.sampling.decision_wait, s.alerts.for_, s.alerts.rate_window,
                 s.alerts.anomaly.season, s.alerts.routing.group_wait, s.analyzer.step,
                 config.Alerts().feedback_silence]
    assert all(type(d) is config.Duration for d in durations)


def _with(section: str, values: dict[str, object]) -> config.Stack:
    data = yaml.safe_load(STACK.read_text())
    data[section] = {**data.get(section, {}), **values}
    return config.parse(data)


def test_a_sub_second_analyzer_step_reaches_the_analyzer() -> None:
    env = render.analyzer_env(_with("analyzer", {"step": "500ms", "recent_window": "1m30s"}))
    assert env["MLOBS_ANALYZER_STEP_SECONDS"] == "0.5"
    assert env["MLOBS_ANALYZER_RECENT_SECONDS"] == "90"
    settings = Settings.from_env(env)
    assert (settings.step_seconds, settings.recent_seconds) == (0.5, 90)


def test_the_analyzer_defaults_are_the_stack_defaults() -> None:
    components = yaml.safe_load(STACK.read_text())["components"]
    defaults = config.parse({"components": components, "services": [{"name": "x"}]})
    assert Settings.from_env(render.analyzer_env(defaults)) == Settings()
    assert Settings().port == defaults.ports.analyzer


def test_durations_render_as_written() -> None:
    s = _with("alerts", {"for": "1m30s", "routing": {"group_wait": "1500ms"}})
    text = render.render(render.compose_target(s))
    assert "for: 1m30s\n" in text["prometheus/rules/thresholds.yml"]
    assert "group_wait: 1500ms\n" in text["alertmanager/alertmanager.yml"]


def test_the_slow_threshold_reaches_the_analyzers_trace_links() -> None:
    from analyzer.links import build_links
    from analyzer.models import Finding
    from mlobs import components

    settings = Settings.from_env(components.sampling_env(_with("sampling", {"slow_threshold_ms": 250})))
    assert settings.slow_seconds == 0.25
    finding = Finding(kind="traffic", subject="x", score=1.0, summary="", evidence="")
    links = build_links(finding, promql="up", grafana="", service="j", model_version=None, start_ms=0, end_ms=1,
                        slow=settings.slow_seconds)
    assert links.traceql == '{ resource.service.name = "j" && (status = error || duration > 250ms) }'

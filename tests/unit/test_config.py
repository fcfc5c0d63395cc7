"""stack.yaml validation: every bad input gets a message naming the path, the value and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from mlobs import config
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

"""`mlobs add-service`: the entry lands in stack.yaml with every other line kept, is validated by the
loader first (a bad one writes nothing), and the service is told its OTEL_* settings."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from mlobs import addservice, cli, config, kubernetes, render
from mlobs.cli import app

STACK = Path(__file__).resolve().parents[2] / "stack.yaml"
NEW_URL = "http://127.0.0.1:9000/healthz"
NAME_PATTERN = config.Service.model_json_schema()["properties"]["name"]["pattern"]


@pytest.fixture
def stack(tmp_path: Path) -> Path:
    copy = tmp_path / "stack.yaml"
    shutil.copyfile(STACK, copy)
    return copy


@pytest.fixture
def out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where the command's render writes: a temp root, never the repo's files."""
    root = tmp_path / "out"
    monkeypatch.setattr(cli, "ROOT", root)
    monkeypatch.setattr(cli, "SCHEMA", root / "mlobs" / "stack.schema.json")
    monkeypatch.setattr(kubernetes, "OUT", root / "deploy" / "kubernetes")
    write = render.write

    def guarded(files: dict[str, str], out_dir: Path, prune: bool = True) -> list[Path]:
        assert Path(out_dir).resolve().is_relative_to(tmp_path), f"a test rendered into {out_dir}"
        return write(files, out_dir, prune)

    monkeypatch.setattr(render, "write", guarded)
    return root


def run(stack: Path, *args: str):
    return CliRunner().invoke(app, ["add-service", *args, "--stack", str(stack)])


def inserted(before: str, after: str) -> tuple[int, list[str]]:
    """Where the new lines are and what they say; fails unless every old line is kept, in order."""
    old, new = before.splitlines(), after.splitlines()
    start = next((i for i, (a, b) in enumerate(zip(old, new, strict=False)) if a != b), len(old))
    block = new[start:start + len(new) - len(old)]
    assert new[:start] + new[start + len(block):] == old, "an existing line changed"
    return start, block


def test_adds_the_entry_after_the_last_one_keeping_every_other_line(stack: Path, out: Path) -> None:
    before = stack.read_text()
    r = run(stack, "shop-api", "--health-url", NEW_URL)
    assert r.exit_code == 0, r.output
    start, block = inserted(before, stack.read_text())
    assert block == ["  - name: shop-api", f"    health_url: {NEW_URL}"], "generic is the default: no kind line"
    old = before.splitlines()
    assert old[start - 1].strip() and not old[start - 1].lstrip().startswith("#"), "right after the last entry"
    next_key = next(i for i in range(start, len(old)) if re.match(r"^[a-z_]+:", old[i]))
    assert all(not line.strip() or line.lstrip().startswith("#") for line in old[start:next_key]), \
        "the comments after the last entry stay below the new one"
    svc = config.load(stack).services[-1]
    assert (svc.name, svc.health_url, svc.kind, svc.sample) == ("shop-api", NEW_URL, "generic", False)


def test_the_command_renders_as_mlobs_render_does(stack: Path, out: Path) -> None:
    assert run(stack, "shop-api", "--health-url", NEW_URL).exit_code == 0
    rules = (out / "prometheus" / "rules" / "services.yml").read_text()
    assert 'job="shop-api"' in rules, "ServiceDown of the new service is rendered"
    assert "shop-api" in (out / "deploy" / "kubernetes" / "prometheus.yaml").read_text()


@pytest.mark.parametrize("kind", ["ml", "llm"])
def test_a_kind_other_than_generic_is_written(stack: Path, out: Path, kind: str) -> None:
    before = stack.read_text()
    assert run(stack, "my-model", "--health-url", NEW_URL, "--kind", kind).exit_code == 0
    _, block = inserted(before, stack.read_text())
    assert block[-1] == f"    kind: {kind}"
    assert config.load(stack).services[-1].kind == kind


def test_adding_twice_keeps_the_order(stack: Path, out: Path) -> None:
    assert run(stack, "first", "--health-url", NEW_URL).exit_code == 0
    assert run(stack, "second", "--health-url", NEW_URL, "--kind", "ml").exit_code == 0
    assert [s.name for s in config.load(stack).services][-2:] == ["first", "second"]


@pytest.mark.parametrize(("args", "field", "allowed"), [
    (["Bad_Name", "--health-url", NEW_URL], "services.1.name", NAME_PATTERN),
    ([".dot-first", "--health-url", NEW_URL], "services.1.name", NAME_PATTERN),
    (["ok", "--health-url", "ftp://127.0.0.1/healthz"], "services.1.health_url", "an http:// or https:// URL"),
    (["ok", "--health-url", "http://127.0.0.1:99999/"], "services.1.health_url", "an http:// or https:// URL"),
    (["ok", "--health-url", "localhost:9000"], "services.1.health_url", "an http:// or https:// URL"),
    (["ok", "--health-url", NEW_URL, "--kind", "batch"], "services.1.kind", "'generic', 'ml' or 'llm'"),
    (["mlobs-inference", "--health-url", NEW_URL], "services", "mlobs-inference"),
], ids=["name-underscore", "name-dot", "url-scheme", "url-port", "url-no-scheme", "kind", "duplicate"])
def test_a_bad_entry_exits_2_says_why_and_writes_nothing(
    stack: Path, out: Path, args: list[str], field: str, allowed: str
) -> None:
    before = stack.read_bytes()
    r = run(stack, *args)
    assert r.exit_code == 2, r.output
    errors = r.stderr.splitlines()
    assert len(errors) == 1, f"one line: {r.stderr}"
    assert errors[0].startswith(f"Not added: {stack}: {field}:"), errors[0]
    assert allowed in errors[0]
    assert stack.read_bytes() == before
    assert sorted(p.name for p in stack.parent.iterdir()) == ["stack.yaml"], "no temp file left, nothing rendered"


def test_the_kinds_are_the_models() -> None:
    assert addservice.KINDS == ("generic", "ml", "llm")
    assert set(addservice.ALERT_GROUPS) == set(addservice.SERIES_PREFIX) == set(addservice.KINDS)


def test_an_invalid_stack_is_refused_before_adding(stack: Path, out: Path) -> None:
    stack.write_text(stack.read_text().replace("otlp_http: 4318", "otlp_http: 4317"))
    before = stack.read_bytes()
    r = run(stack, "shop-api", "--health-url", NEW_URL)
    assert r.exit_code == 2
    assert "invalid already" in r.stderr and "ports." in r.stderr
    assert stack.read_bytes() == before


def test_a_name_yaml_would_misread_is_quoted(stack: Path, out: Path) -> None:
    assert run(stack, "yes", "--health-url", NEW_URL).exit_code == 0
    assert "  - name: 'yes'" in stack.read_text()
    assert config.load(stack).services[-1].name == "yes"


def test_a_write_that_fails_leaves_the_file_as_it_was(stack: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = stack.read_bytes()

    def fail(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(addservice.os, "replace", fail)
    with pytest.raises(OSError):
        addservice.add(stack, "shop-api", NEW_URL)
    assert stack.read_bytes() == before
    assert sorted(p.name for p in stack.parent.iterdir()) == ["stack.yaml"], "the temp file is removed"


def test_the_file_keeps_its_mode(stack: Path, out: Path) -> None:
    stack.chmod(0o640)
    assert run(stack, "shop-api", "--health-url", NEW_URL).exit_code == 0
    assert stack.stat().st_mode & 0o777 == 0o640


def test_prints_the_otel_settings_for_the_stacks_collector_port(stack: Path, out: Path) -> None:
    stack.write_text(stack.read_text().replace("otlp_http: 4318", "otlp_http: 14318"))
    r = run(stack, "shop-api", "--health-url", NEW_URL)
    assert r.exit_code == 0, r.output
    lines = [line.strip() for line in r.stdout.splitlines()]
    assert "OTEL_SERVICE_NAME=shop-api" in lines
    assert "OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:14318" in lines
    assert "OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf" in lines
    assert any(line.startswith("OTEL_BSP_SCHEDULE_DELAY=") for line in lines), "tail sampling needs it"
    assert "OTEL_EXPORTER_OTLP_ENDPOINT=http://otel-collector:4318" in r.stdout, "the in-compose hint"
    assert "OTEL_SEMCONV_STABILITY_OPT_IN" not in r.stdout
    assert not any(line.startswith("MLOBS_") for line in lines), "only the OTEL_* variables"


def test_an_llm_service_is_told_the_genai_opt_in(stack: Path, out: Path) -> None:
    r = run(stack, "chat-bot", "--health-url", NEW_URL, "--kind", "llm")
    assert r.exit_code == 0, r.output
    assert "OTEL_SEMCONV_STABILITY_OPT_IN=gen_ai_latest_experimental" in [s.strip() for s in r.stdout.splitlines()]


def title(module: str) -> str:
    """A dashboard's title, as the dashboard module builds it for the default stack."""
    from mlobs import dashboards

    return dashboards.build_all(config.load(STACK))[getattr(dashboards, module).FILE]["title"]


def _said(output: str, what: str) -> list[str]:
    line = next(line for line in output.splitlines() if line.startswith(what))
    return line.split(": ", 1)[1].split(", ")


GENERIC_ALERTS = ["ServiceDown", "ServiceErrorRatioHigh", "ServiceLatencyHigh", "ServiceErrorRatioAnomaly",
                  "ServiceLatencyAnomaly"]


def test_a_generic_service_gets_the_service_alerts_only(stack: Path, out: Path) -> None:
    r = run(stack, "shop-api", "--health-url", NEW_URL)
    alerts = _said(r.stdout, "Alerts")
    assert alerts == GENERIC_ALERTS
    boards = _said(r.stdout, "Dashboards")
    assert title("service") in boards
    assert title("inference") not in boards and title("genai") not in boards


def test_an_ml_service_also_gets_the_ml_alerts_and_dashboards(stack: Path, out: Path) -> None:
    assert run(stack, "shop-api", "--health-url", NEW_URL).exit_code == 0  # has a ServiceDown of its own
    r = run(stack, "fraud-model", "--health-url", NEW_URL, "--kind", "ml")
    alerts = _said(r.stdout, "Alerts")
    assert "MLServiceDown" in alerts and "ServiceDown" not in alerts, "an ML service's down alert reads ml_*"
    assert {"MLErrorRatioHigh", "MLFeatureDriftHigh", "MLLatencyAnomaly", "ServiceLatencyHigh"} <= set(alerts)
    assert not any(a.startswith("GenAI") for a in alerts)
    boards = _said(r.stdout, "Dashboards")
    assert {title("service"), title("inference"), title("quality")} <= set(boards)
    assert title("genai") not in boards


def test_an_llm_service_also_gets_the_genai_alerts(stack: Path, out: Path) -> None:
    r = run(stack, "chat-bot", "--health-url", NEW_URL, "--kind", "llm")
    alerts = _said(r.stdout, "Alerts")
    assert alerts[:len(GENERIC_ALERTS)] == GENERIC_ALERTS
    assert {"GenAITimeToFirstTokenHigh", "GenAIErrorRatioHigh", "GenAITokenUsageAnomaly"} <= set(alerts)
    assert not any(a.startswith("ML") for a in alerts)
    boards = _said(r.stdout, "Dashboards")
    assert {title("service"), title("genai")} <= set(boards)
    assert title("inference") not in boards


def test_every_alert_of_the_service_and_genai_rules_is_reported() -> None:
    s = config.load(STACK)
    llm = set(addservice.alerts_for(s, "a-new-one", "llm"))
    for rel in ("services.yml", "genai.yml"):
        text = render.render(render.compose_target(s))[f"{render.RULE_TEMPLATES}/{rel}"]
        names = {r["alert"] for g in yaml.safe_load(text)["groups"] for r in g["rules"] if "alert" in r}
        assert names - {"ServiceDown"} <= llm, rel
    # ServiceDown is written per service: the one of the sample service is not the new one's.
    assert "ServiceDown" not in addservice.alerts_for(s, s.services[0].name, "llm")


def test_the_comment_after_the_last_value_moves_below_and_an_end_of_line_one_stays() -> None:
    text = ("services:\n"
            "  - name: a\n"
            "    alerts:\n"
            "      error_ratio: 0.1   # its own\n"
            "  # - name: example\n"
            "\n"
            "# next section\n"
            "other: 1\n")
    out = addservice.with_service(text, {"name": "b", "health_url": NEW_URL}, Path("stack.yaml"))
    assert out == ("services:\n"
                   "  - name: a\n"
                   "    alerts:\n"
                   "      error_ratio: 0.1   # its own\n"
                   "  - name: b\n"
                   f"    health_url: {NEW_URL}\n"
                   "  # - name: example\n"
                   "\n"
                   "# next section\n"
                   "other: 1\n")


def test_another_indentation_is_kept() -> None:
    text = "services:\n- name: a\n  sample: true\nother: 1\n"
    out = addservice.with_service(text, {"name": "b", "health_url": NEW_URL}, Path("stack.yaml"))
    assert out == f"services:\n- name: a\n  sample: true\n- name: b\n  health_url: {NEW_URL}\nother: 1\n"


def test_a_flow_list_is_not_rewritten() -> None:
    text = "services: [{name: a, sample: true}]\n"
    with pytest.raises(addservice.AddServiceError, match="by hand"):
        addservice.with_service(text, {"name": "b", "health_url": NEW_URL}, Path("stack.yaml"))

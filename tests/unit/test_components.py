"""The component registry is the one definition: a component registered there appears in the
compose file, in the native programs, in the health checks and in the status table."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml

from mlobs import components, config, render
from mlobs.runtime import native

ROOT = render.ROOT

TOY = components.Component(
    "toy-store", "a toy store, registered by a test only",
    ports=(components.Port("toy", 7777, 17777),),
    health=components.Health("toy", "/ready"),
    args=lambda p: [f"--listen={p.listen('toy')}", f"--data={p.data('toy-store')}"],
    pin="toy-store", binaries=("toy-store",), data=components.Data("/var/lib/toy"),
    mem_limit="64m", signals=("metrics",),
)


@pytest.fixture
def toy_config(monkeypatch: pytest.MonkeyPatch):
    """The config module rebuilt from a registry with the toy in it; restored afterwards."""
    monkeypatch.setattr(components, "REGISTRY", (*components.REGISTRY, TOY))
    try:
        yield importlib.reload(config)
    finally:
        monkeypatch.undo()
        importlib.reload(config)


def _toy_stack(cfg):
    data = yaml.safe_load((ROOT / "stack.yaml").read_text())
    data["components"]["toy-store"] = {"image": "example/toy-store:1.0.0", "version": "1.0.0"}
    return cfg.parse(data)


def test_a_registered_component_needs_its_pin(toy_config) -> None:
    data = yaml.safe_load((ROOT / "stack.yaml").read_text())
    with pytest.raises(toy_config.StackError, match=r"components\.toy-store: required but missing"):
        toy_config.parse(data)


def test_a_registered_component_appears_in_compose(toy_config) -> None:
    stack = _toy_stack(toy_config)
    assert stack.ports.toy == 17777, "its port default comes from the definition"
    compose = yaml.safe_load(render.render(render.compose_target(stack))["compose/docker-compose.yml"])
    svc = compose["services"]["toy-store"]
    assert svc["image"] == "example/toy-store:1.0.0"
    assert svc["command"] == ["--listen=0.0.0.0:7777", "--data=/var/lib/toy"]
    assert svc["ports"] == ["127.0.0.1:17777:7777"]
    assert svc["mem_limit"] == "64m"
    assert "toy-store-data:/var/lib/toy" in svc["volumes"]
    assert "toy-store-data" in compose["volumes"]
    assert svc["healthcheck"]["test"][-1] == "http://127.0.0.1:7777/ready"


def test_a_registered_component_appears_in_the_native_programs_and_status(toy_config, tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture) -> None:
    stack = _toy_stack(toy_config)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    toy_bin = bin_dir / "toy-store"
    toy_bin.write_text("#!/bin/sh\n")
    toy_bin.chmod(0o755)
    state = native.State(root=tmp_path / ".stack", bin_dir=bin_dir, env_file=tmp_path / ".env")
    plan = native.plan(state)
    assert plan.present["toy-store"] == toy_bin
    target = render.native_target(stack, set(plan.present) & set(render.BACKENDS), state.config_dir, state.data_dir)
    progs = native.programs(stack, state, plan, target, {"GRAFANA_ADMIN_PASSWORD": "p", "MLOBS_ADMIN_TOKEN": "t"})
    assert progs["toy-store"]["command"] == [
        str(toy_bin), "--listen=127.0.0.1:17777", f"--data={state.data_dir / 'toy-store'}"]
    assert "[program:toy-store]" in native.supervisor_conf(state, progs)
    urls = native.health_urls(stack, list(progs))
    assert urls["toy-store"] == "http://127.0.0.1:17777/ready"

    from mlobs import cli

    health = {"toy-store": native.Health("toy-store", urls["toy-store"], "RUNNING", True, "HTTP 200")}
    cli.console.width = 300  # no wrapped cells
    cli._print_table(stack, plan, health)
    out = capsys.readouterr().out
    assert "toy-store" in out and "http://127.0.0.1:17777/ready" in out


def test_every_pinned_component_has_a_stack_yaml_entry() -> None:
    stack = config.load(ROOT / "stack.yaml")
    for pin in components.pins():
        assert stack.components.get(pin).image


@pytest.mark.parametrize(("traces", "logs"), [("tempo", "loki"), ("jaeger", "victorialogs"),
                                              ("jaeger", "loki"), ("tempo", "victorialogs")])
def test_compose_runs_the_stores_stack_yaml_chooses(traces: str, logs: str) -> None:
    data = yaml.safe_load((ROOT / "stack.yaml").read_text())
    data["backends"] = {"traces": traces, "logs": logs}
    stack = config.parse(data)
    files = render.render(render.compose_target(stack))
    services = yaml.safe_load(files["compose/docker-compose.yml"])["services"]
    stores = {"tempo", "jaeger", "loki", "victorialogs"}
    assert {s for s in services if s in stores} == {traces, logs}
    collector = yaml.safe_load(files["otel-collector/config.yaml"])
    assert f"otlp_grpc/{traces}" in collector["service"]["pipelines"]["traces/sampled"]["exporters"]
    assert f"otlp_http/{logs}" in collector["service"]["pipelines"]["logs"]["exporters"]
    datasources = {d["uid"]: d for d in yaml.safe_load(files["grafana/provisioning/datasources/datasources.yaml"])
                   ["datasources"]}
    assert set(datasources) == {"prometheus", "alertmanager", traces, logs}
    exemplar = datasources["prometheus"]["jsonData"]["exemplarTraceIdDestinations"][0]
    assert exemplar["datasourceUid"] == traces, "exemplars open the trace store that runs"


def test_an_unknown_backend_is_refused_naming_the_allowed_values() -> None:
    data = yaml.safe_load((ROOT / "stack.yaml").read_text())
    data["backends"] = {"traces": "zipkin"}
    with pytest.raises(config.StackError, match=r"backends\.traces: 'zipkin' is not allowed; allowed values: "
                                                r"'tempo' or 'jaeger'"):
        config.parse(data)


@pytest.mark.parametrize(("present", "traces", "logs"), [
    ({"prometheus", "jaeger", "victorialogs"}, "jaeger", "victorialogs"),
    ({"prometheus", "tempo", "loki", "jaeger", "victorialogs"}, "tempo", "loki"),
    ({"prometheus"}, None, None),
])
def test_natively_the_built_stores_stand_in_for_absent_tempo_and_loki(present, traces, logs) -> None:
    stack = config.load(ROOT / "stack.yaml")
    target = render.native_target(stack, present)
    assert (target.store("traces"), target.store("logs")) == (traces, logs)


def test_a_rendered_file_that_nothing_renders_is_drift_and_a_render_removes_it(tmp_path: Path) -> None:
    stack = config.load(ROOT / "stack.yaml")
    files = render.render(render.compose_target(stack))
    render.write(files, tmp_path)
    stray = tmp_path / "prometheus" / "rules" / "deleted.yml"
    stray.write_text(render.header_line("prometheus/rules/deleted.yml.j2") + "groups: []\n")
    hand_written = tmp_path / "prometheus" / "notes.yml"
    hand_written.write_text("# my notes\n")
    assert render.drift(files, tmp_path) == ["prometheus/rules/deleted.yml (nothing renders it any more)"]
    render.write(files, tmp_path)
    assert not stray.exists(), "a render rewrites its output whole"
    assert hand_written.exists(), "files without the header are not the render's"
    assert render.drift(files, tmp_path) == []

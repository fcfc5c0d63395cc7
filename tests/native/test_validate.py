"""The rendered configs, checked by the real programs built from the pinned versions."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from support import need_binary

from mlobs import config, render

pytestmark = pytest.mark.native
ROOT = render.ROOT
STACK = config.load(ROOT / "stack.yaml")


def run(*cmd: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=120)


@pytest.fixture(params=[("prometheus",), ("prometheus", "alertmanager"), render.BACKENDS],
                ids=["prometheus-only", "with-alertmanager", "all-backends"])
def native_dir(request, tmp_path: Path) -> Path:
    target = render.native_target(STACK, request.param, tmp_path / "native", tmp_path / "data")
    render.write(render.render(target), tmp_path / "native")
    return tmp_path / "native"


def test_collector_validates_the_native_config(native_dir: Path) -> None:
    otelcol = need_binary("otelcol-mlobs")
    r = run(otelcol, "validate", f"--config={native_dir / 'otel-collector/config.yaml'}")
    assert r.returncode == 0, r.stderr


def test_collector_validate_rejects_a_broken_config(tmp_path: Path) -> None:
    otelcol = need_binary("otelcol-mlobs")
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "otel-collector/config.yaml").read_text().replace("limit_mib:", "limit_mb:"))
    assert run(otelcol, "validate", f"--config={bad}").returncode != 0


def test_promtool_checks_config_and_rules(native_dir: Path) -> None:
    promtool = need_binary("promtool")
    r = run(promtool, "check", "config", native_dir / "prometheus/prometheus.yml")
    assert r.returncode == 0, r.stdout + r.stderr
    rules = sorted((native_dir / "prometheus/rules").glob("*.yml"))
    if rules:
        r = run(promtool, "check", "rules", *rules)
        assert r.returncode == 0, r.stdout + r.stderr


def test_promtool_checks_the_committed_compose_config() -> None:
    promtool = need_binary("promtool")
    r = run(promtool, "check", "config", "--syntax-only", ROOT / "prometheus/prometheus.yml")
    assert r.returncode == 0, r.stdout + r.stderr


def test_amtool_checks_the_alertmanager_config(native_dir: Path) -> None:
    amtool = need_binary("amtool")
    for path in (native_dir / "alertmanager/alertmanager.yml", ROOT / "alertmanager/alertmanager.yml"):
        r = run(amtool, "check-config", path)
        assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("pct", [100, 10])
def test_collector_validates_the_keep_rule_below_100_percent(tmp_path: Path, pct: int) -> None:
    """The OTTL of the keep rule (tail policy, exemplar and log transforms) is parsed by the real
    collector at a share below 100% too."""
    otelcol = need_binary("otelcol-mlobs")
    data = config._merge(config._read(ROOT / "stack.yaml"), {"sampling": {"percentage": pct}})
    target = render.native_target(config.parse(data), render.BACKENDS, tmp_path / "native", tmp_path / "data")
    render.write(render.render(target), tmp_path / "native")
    r = run(otelcol, "validate", f"--config={tmp_path / 'native/otel-collector/config.yaml'}")
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("where", ["native", "compose"])
def test_jaeger_validates_its_config(tmp_path: Path, where: str) -> None:
    jaeger = need_binary("jaeger")
    if where == "native":
        text = render.render(render.native_target(STACK, render.BACKENDS, tmp_path / "n", tmp_path / "d"))
    else:
        text = render.render(render.compose_target(STACK))
    cfg = tmp_path / "jaeger.yaml"
    cfg.write_text(text["jaeger/config.yaml"])
    r = run(jaeger, "validate", f"--config={cfg}")
    assert r.returncode == 0, r.stdout + r.stderr


def test_jaeger_validate_rejects_a_broken_config(tmp_path: Path) -> None:
    jaeger = need_binary("jaeger")
    cfg = tmp_path / "jaeger.yaml"
    cfg.write_text((ROOT / "jaeger/config.yaml").read_text().replace("ephemeral:", "ephemerall:"))
    assert run(jaeger, "validate", f"--config={cfg}").returncode != 0


def test_collector_validates_the_exposed_receivers_and_pii_masks(tmp_path: Path) -> None:
    """otlp.expose: the TLS receivers with the bearer-token authenticator, and the PII value masks
    (transform/pii), parsed by the real collector; the token is a reference, never the value."""
    from mlobs import exposure

    otelcol = need_binary("otelcol-mlobs")
    data = config._merge(config._read(ROOT / "stack.yaml"), {"otlp": {"expose": {"enabled": True}}})
    stack = config.parse(data)
    target = render.native_target(stack, render.BACKENDS, tmp_path / "native", tmp_path / "data")
    exposure.ensure(stack, Path(exposure.tls_dir(target)))
    render.write(render.render(target), tmp_path / "native")
    cfg = tmp_path / "native/otel-collector/config.yaml"
    text = cfg.read_text()
    assert "${env:MLOBS_OTLP_TOKEN}" in text and "bearertokenauth/otlp" in text and "transform/pii" in text
    r = subprocess.run([str(otelcol), "validate", f"--config={cfg}"], capture_output=True, text=True, timeout=120,
                       env={"PATH": "/usr/bin:/bin", "MLOBS_OTLP_TOKEN": "t0ken"})
    assert r.returncode == 0, r.stderr

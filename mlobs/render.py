"""Render every component's config from the validated stack model.

Templates are Jinja2 with `[[ ... ]]` for values and `[% ... %]` for loops, so the `{{ }}` of
Prometheus, Alertmanager and Grafana templates pass through untouched. Templates hold loops
and lookups only; decisions live in the functions below.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from mlobs.config import Stack, seconds

ROOT = Path(__file__).resolve().parent.parent
TargetName = Literal["compose", "native"]
BACKENDS = ("prometheus", "alertmanager", "loki", "tempo", "grafana")

# endpoint key -> (compose service, container port, field of stack.ports)
ENDPOINTS: dict[str, tuple[str, int, str]] = {
    "otlp_grpc": ("otel-collector", 4317, "otlp_grpc"),
    "otlp_http": ("otel-collector", 4318, "otlp_http"),
    "collector_health": ("otel-collector", 13133, "collector_health"),
    "collector_metrics": ("otel-collector", 8888, "collector_metrics"),
    "prometheus": ("prometheus", 9090, "prometheus"),
    "alertmanager": ("alertmanager", 9093, "alertmanager"),
    "loki": ("loki", 3100, "loki"),
    "loki_grpc": ("loki", 9095, "loki_grpc"),
    "tempo": ("tempo", 3200, "tempo"),
    "tempo_otlp_grpc": ("tempo", 4317, "tempo_otlp_grpc"),
    "tempo_grpc": ("tempo", 9095, "tempo_grpc"),
    "grafana": ("grafana", 3000, "grafana"),
    "inference": ("mlobs-inference", 8000, "inference"),
    "analyzer": ("analyzer", 8010, "analyzer"),
}

# template (relative to the repo) -> output (relative to the output root), per target
TEMPLATES: list[tuple[str, str, tuple[TargetName, ...]]] = [
    ("otel-collector/config.yaml.j2", "otel-collector/config.yaml", ("compose", "native")),
    ("prometheus/prometheus.yml.j2", "prometheus/prometheus.yml", ("compose", "native")),
    ("alertmanager/alertmanager.yml.j2", "alertmanager/alertmanager.yml", ("compose", "native")),
    ("loki/config.yaml.j2", "loki/config.yaml", ("compose", "native")),
    ("tempo/config.yaml.j2", "tempo/config.yaml", ("compose", "native")),
    (
        "grafana/provisioning/datasources/datasources.yaml.j2",
        "grafana/provisioning/datasources/datasources.yaml",
        ("compose", "native"),
    ),
    (
        "grafana/provisioning/dashboards/dashboards.yaml.j2",
        "grafana/provisioning/dashboards/dashboards.yaml",
        ("compose", "native"),
    ),
    ("compose/docker-compose.yml.j2", "compose/docker-compose.yml", ("compose",)),
]
RULE_TEMPLATES = "prometheus/rules"

# Collector components the native build cannot include, with the reason. The contrib image
# that docker compose runs has them.
NATIVE_MISSING = {
    "servicegraph": "the Go module proxy refuses servicegraphconnector v0.162.0 to v0.166.0 (403: "
    "'This module version is not available'), so the native collector makes no service graph",
}  # every *.yml.j2 there renders to a *.yml beside it


@dataclass(frozen=True)
class Target:
    """Where the configs run: addresses, paths and which backends are there to export to."""

    name: TargetName
    stack: Stack
    present: frozenset[str] = frozenset(BACKENDS)
    out_dir: Path = ROOT
    data_dir: Path = ROOT / ".stack" / "data"
    paths: dict[str, str] = field(default_factory=dict)
    missing_components: frozenset[str] = frozenset()

    def listen(self, key: str) -> str:
        """Address a component binds: every interface inside a container, loopback natively."""
        _, container_port, port_field = ENDPOINTS[key]
        if self.name == "compose":
            return f"0.0.0.0:{container_port}"
        return f"127.0.0.1:{getattr(self.stack.ports, port_field)}"

    def host(self, key: str) -> str:
        """Interface a component binds, without the port."""
        return self.listen(key).rsplit(":", 1)[0]

    def connect(self, key: str) -> str:
        """Address another component dials."""
        service, container_port, port_field = ENDPOINTS[key]
        if self.name == "compose":
            return f"{service}:{container_port}"
        return f"127.0.0.1:{getattr(self.stack.ports, port_field)}"

    def port(self, key: str) -> int:
        _, container_port, port_field = ENDPOINTS[key]
        return container_port if self.name == "compose" else getattr(self.stack.ports, port_field)

    def host_port(self, key: str) -> int:
        return getattr(self.stack.ports, ENDPOINTS[key][2])

    def has(self, backend: str) -> bool:
        return backend in self.present


def compose_target(stack: Stack) -> Target:
    paths = {
        "prometheus_rules": "/etc/prometheus/rules",
        "collector_storage": "/var/lib/otelcol/file_storage",
        "loki_data": "/loki",
        "tempo_data": "/var/tempo",
        "grafana_dashboards": "/var/lib/grafana/dashboards",
    }
    return Target("compose", stack, frozenset(BACKENDS), ROOT, ROOT / ".stack" / "data", paths)


def native_target(
    stack: Stack, present: Iterable[str], out_dir: Path | None = None, data_dir: Path | None = None
) -> Target:
    out = (out_dir or ROOT / ".stack" / "native").resolve()
    data = (data_dir or ROOT / ".stack" / "data").resolve()
    paths = {
        "prometheus_rules": str(out / "prometheus" / "rules"),
        "collector_storage": str(data / "otel-collector"),
        "loki_data": str(data / "loki"),
        "tempo_data": str(data / "tempo"),
        "grafana_dashboards": str(ROOT / "grafana" / "dashboards"),
    }
    unknown = set(present) - set(BACKENDS)
    if unknown:
        raise ValueError(f"unknown backends {sorted(unknown)}; known: {BACKENDS}")
    return Target("native", stack, frozenset(present), out, data, paths, frozenset(NATIVE_MISSING))


# ---- decisions the collector template reads ----------------------------------------------


def collector_pipelines(target: Target) -> dict[str, dict[str, list[str]]]:
    """The collector's pipelines: traces feed span metrics and the service graph before tail
    sampling; only backends that run get an exporter, so nothing queues for an absent one."""
    stack = target.stack
    extras = {s: [e.name for e in stack.extra_exporters if s in e.signals] for s in ("traces", "metrics", "logs")}
    pipelines: dict[str, dict[str, list[str]]] = {}
    graph = [c for c in ("span_metrics", "servicegraph") if c not in target.missing_components]
    sampled = (["otlp_grpc/tempo"] if target.has("tempo") else []) + extras["traces"]
    pipelines["traces"] = {
        "receivers": ["otlp"],
        "processors": ["memory_limiter", "resource", "redaction"],
        "exporters": graph + (["forward/sampling"] if sampled else []),
    }
    if sampled:
        pipelines["traces/sampled"] = {
            "receivers": ["forward/sampling"],
            "processors": ["tail_sampling", "batch"],
            "exporters": sampled,
        }
    metric_exporters = (["otlp_http/prometheus"] if target.has("prometheus") else []) + extras["metrics"]
    if not metric_exporters:
        raise ValueError("the collector needs Prometheus (or an extra metrics exporter) to send metrics to")
    pipelines["metrics"] = {
        "receivers": ["otlp", *graph, "count"],
        "processors": ["memory_limiter", "resource", "batch"],
        "exporters": metric_exporters,
    }
    pipelines["logs"] = {
        "receivers": ["otlp"],
        "processors": ["memory_limiter", "resource", "redaction", "batch"],
        "exporters": (["otlp_http/loki"] if target.has("loki") else []) + extras["logs"] + ["forward/logcount"],
    }
    pipelines["logs/count"] = {
        "receivers": ["forward/logcount"],
        "processors": ["transform/severity"],
        "exporters": ["count"],
    }
    return pipelines


def used_components(pipelines: dict[str, dict[str, list[str]]]) -> set[str]:
    return {c for p in pipelines.values() for kind in p.values() for c in kind}


# ---- rendering ----------------------------------------------------------------------------


def environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(str(ROOT)),
        undefined=StrictUndefined,
        variable_start_string="[[",
        variable_end_string="]]",
        block_start_string="[%",
        block_end_string="%]",
        comment_start_string="[#",
        comment_end_string="#]",
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["yaml"] = _to_yaml
    env.filters["json"] = lambda v: json.dumps(v, sort_keys=True)
    return env


def _to_yaml(value: Any, indent: int = 0) -> str:
    text = yaml.safe_dump(value, sort_keys=False, default_flow_style=False, width=1000).rstrip("\n")
    pad = " " * indent
    return "\n".join((pad + line) if i else line for i, line in enumerate(text.splitlines()))


def context(target: Target) -> dict[str, Any]:
    pipelines = collector_pipelines(target)
    return {
        "stack": target.stack,
        "t": target,
        "paths": target.paths,
        "pipelines": pipelines,
        "used": used_components(pipelines),
        "analyzer_env": analyzer_env(target.stack),
    }


def analyzer_env(stack: Stack) -> dict[str, str]:
    """The analyzer's windows, from stack.yaml (analyzer, alerts.rate_window)."""
    a = stack.analyzer
    return {
        "MLOBS_ANALYZER_RECENT_SECONDS": str(seconds(a.recent_window)),
        "MLOBS_ANALYZER_BASELINE_SECONDS": str(seconds(a.baseline_window)),
        "MLOBS_ANALYZER_STEP_SECONDS": str(seconds(a.step)),
        "MLOBS_ANALYZER_RATE_WINDOW": stack.alerts.rate_window,
    }


def template_list() -> list[tuple[str, str, tuple[TargetName, ...]]]:
    rules = sorted((ROOT / RULE_TEMPLATES).glob("*.yml.j2"))
    extra = [
        (str(p.relative_to(ROOT)), str(p.relative_to(ROOT))[: -len(".j2")], ("compose", "native"))
        for p in rules
    ]
    return TEMPLATES + extra


def render(target: Target) -> dict[str, str]:
    """Render every template of a target: output path (relative) -> text. Writes nothing."""
    env = environment()
    ctx = context(target)
    out: dict[str, str] = {}
    for tpl, dest, targets in template_list():
        if target.name not in targets:
            continue
        text = env.get_template(tpl).render(ctx)
        header = header_line(tpl)
        out[dest] = header + text
    return out


def header_line(tpl: str) -> str:
    return f"# Rendered by `mlobs render` from {tpl} and stack.yaml. Do not edit: edit those.\n"


def write(files: dict[str, str], out_dir: Path) -> list[Path]:
    """Write rendered files; return those whose content changed."""
    changed = []
    for rel, text in files.items():
        path = out_dir / rel
        if path.exists() and path.read_text() == text:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        changed.append(path)
    return changed


def drift(files: dict[str, str], out_dir: Path) -> list[str]:
    """Rendered files that differ from what is on disk (missing counts as different)."""
    return [rel for rel, text in files.items() if not (out_dir / rel).exists() or (out_dir / rel).read_text() != text]

"""Render every component's config from the validated stack model.

Templates are Jinja2 with `[[ ... ]]` for values and `[% ... %]` for loops, so the `{{ }}` of
Prometheus, Alertmanager and Grafana templates pass through untouched. Templates hold loops
and lookups only; decisions live in the functions below.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import yaml
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from mlobs import components as registry
from mlobs import contract, destinations, exposure, sampling
from mlobs.config import Stack, seconds

ROOT = Path(__file__).resolve().parent.parent
TargetName = Literal["compose", "native", "kubernetes"]
#: Components the configs dial and export to: those with a binary of their own (mlobs/components.py).
BACKENDS = tuple(c.name for c in registry.REGISTRY if c.binaries and c.name != "otel-collector")

# template (relative to the repo) -> output (relative to the output root), per target
TEMPLATES: list[tuple[str, str, tuple[TargetName, ...]]] = [
    ("otel-collector/config.yaml.j2", "otel-collector/config.yaml", ("compose", "native")),
    ("prometheus/prometheus.yml.j2", "prometheus/prometheus.yml", ("compose", "native")),
    ("alertmanager/alertmanager.yml.j2", "alertmanager/alertmanager.yml", ("compose", "native")),
    ("loki/config.yaml.j2", "loki/config.yaml", ("compose", "native")),
    ("tempo/config.yaml.j2", "tempo/config.yaml", ("compose", "native")),
    ("jaeger/config.yaml.j2", "jaeger/config.yaml", ("compose", "native")),
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
]
RULE_TEMPLATES = "prometheus/rules"  # every *.yml.j2 there renders to a *.yml beside it
COMPOSE_FILE = "compose/docker-compose.yml"  # built from the registry, not from a template

# Collector components the native build cannot include, with the reason. The contrib image
# that docker compose runs has them.
NATIVE_MISSING = {
    "servicegraph": "the Go module proxy refuses servicegraphconnector v0.162.0 to v0.166.0 (403: "
    "'This module version is not available'), so the native collector makes no service graph",
}


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
    #: kubernetes: the in-cluster DNS name of the Service that answers each port key (mlobs/kubernetes.py)
    dns: dict[str, str] = field(default_factory=dict)

    def _port(self, key: str) -> tuple[str, int, int]:
        c = registry.owner_of(key)
        p = c.port(key)
        return registry.program_name(c, self.stack), p.container, getattr(self.stack.ports, key)

    def listen(self, key: str) -> str:
        """Address a component binds: every interface inside a container, loopback natively."""
        _, container_port, host_port = self._port(key)
        if self.name in ("compose", "kubernetes"):
            loopback = registry.owner_of(key).port(key).loopback_only
            return f"{'127.0.0.1' if loopback else '0.0.0.0'}:{container_port}"
        return f"127.0.0.1:{host_port}"

    def host(self, key: str) -> str:
        """Interface a component binds, without the port."""
        return self.listen(key).rsplit(":", 1)[0]

    def connect(self, key: str) -> str:
        """Address another component dials."""
        service, container_port, host_port = self._port(key)
        if self.name == "compose":
            return f"{service}:{container_port}"
        if self.name == "kubernetes":
            return f"{self.dns[key]}:{container_port}"
        return f"127.0.0.1:{host_port}"

    def port(self, key: str) -> int:
        _, container_port, host_port = self._port(key)
        return host_port if self.name == "native" else container_port

    def host_port(self, key: str) -> int:
        return getattr(self.stack.ports, key)

    def has(self, backend: str) -> bool:
        return backend in self.present

    def store(self, signal: str) -> str | None:
        """The store of a signal that this target exports to (None when none runs)."""
        return next((n for n in registry.STORES[signal] if n in self.present), None)


def _paths(target: Target) -> dict[str, str]:
    place = registry.Place(target)
    paths = {f"{c.name.replace('-', '_')}_data": place.data(c.name) for c in registry.REGISTRY if c.data}
    paths["collector_storage"] = paths["otel_collector_data"]
    paths["prometheus_rules"] = place.config("prometheus/rules")
    # The dashboards are committed JSON: natively Grafana reads them where they are.
    paths["grafana_dashboards"] = (str(ROOT / "grafana" / "dashboards") if target.name == "native"
                                   else place.config("grafana/dashboards"))
    return paths


def compose_target(stack: Stack) -> Target:
    present = frozenset(c.name for c in registry.selected(stack) if c.name in BACKENDS)
    t = Target("compose", stack, present, ROOT, ROOT / ".stack" / "data")
    return replace(t, paths=_paths(t))


def native_target(
    stack: Stack, present: Iterable[str], out_dir: Path | None = None, data_dir: Path | None = None
) -> Target:
    out = (out_dir or ROOT / ".stack" / "native").resolve()
    data = (data_dir or ROOT / ".stack" / "data").resolve()
    unknown = set(present) - set(BACKENDS)
    if unknown:
        raise ValueError(f"unknown backends {sorted(unknown)}; known: {BACKENDS}")
    chosen = frozenset(c.name for c in registry.selected(stack, present) if c.name in BACKENDS)
    t = Target("native", stack, chosen, out, data, {}, frozenset(NATIVE_MISSING))
    return replace(t, paths=_paths(t))


# ---- decisions the collector template reads ----------------------------------------------


def collector_pipelines(target: Target) -> dict[str, dict[str, list[str]]]:
    """The collector's pipelines: traces feed span metrics and the service graph before tail
    sampling; only backends that run get an exporter, so nothing queues for an absent one."""
    stack = target.stack
    extras = {s: [e.name for e in stack.extra_exporters if s in e.signals] for s in ("traces", "metrics", "logs")}
    # Destinations (mlobs/destinations.py) go where the stores go: after redaction and sampling.
    dest = destinations.by_signal(stack)
    for s in ("traces", "logs"):
        extras[s] = extras[s] + dest[s]
    pipelines: dict[str, dict[str, list[str]]] = {}
    otlp = ["otlp", exposure.RECEIVER] if exposure.receiver(target) else ["otlp"]
    # Masked by key (redaction) and by value (transform/pii) on every signal, before anything is derived.
    redact = ["redaction", *([PII_PROCESSOR] if pii_statements(stack) else [])]
    graph = [c for c in ("span_metrics", "servicegraph") if c not in target.missing_components]
    trace_store, log_store = target.store("traces"), target.store("logs")
    sampled = ([f"otlp_grpc/{trace_store}"] if trace_store else []) + extras["traces"]
    # Below 100%, the span-metrics connector reads a copy of the spans whose trace ids are
    # cleared where the trace may be dropped, so each exemplar names a kept trace.
    links = keep_rule(stack)["share_hex"] is not None
    span_metrics = (["forward/spanmetrics"] if links else []) + [c for c in graph if c != "span_metrics"]
    pipelines["traces"] = {
        "receivers": otlp,
        "processors": ["memory_limiter", "resource", *redact],
        "exporters": (span_metrics if links else graph) + (["forward/sampling"] if sampled else []),
    }
    if links:
        pipelines["traces/spanmetrics"] = {
            "receivers": ["forward/spanmetrics"],
            "processors": ["transform/exemplar_links"],
            "exporters": ["span_metrics"],
        }
    if sampled:
        pipelines["traces/sampled"] = {
            "receivers": ["forward/sampling"],
            "processors": ["tail_sampling", "batch"],
            "exporters": sampled,
        }
    metric_exporters = (["otlp_http/prometheus"] if target.has("prometheus") else []) + extras["metrics"]
    if dest["metrics"]:
        metric_exporters.append(destinations.METRICS_FORWARD)
    if not metric_exporters:
        raise ValueError("the collector needs Prometheus (or an extra metrics exporter) to send metrics to")
    pipelines["metrics"] = {
        "receivers": [*otlp, *graph, "count"],
        "processors": ["memory_limiter", "resource", *redact, "batch"],
        "exporters": metric_exporters,
    }
    if dest["metrics"]:
        pipelines["metrics/destinations"] = {
            "receivers": [destinations.METRICS_FORWARD],
            "processors": ["redaction"],
            "exporters": dest["metrics"],
        }
    pipelines["logs"] = {
        "receivers": otlp,
        "processors": ["memory_limiter", "resource", *redact,
                       *(["transform/log_links"] if links else []), "batch"],
        # otlp_http/analyzer: a copy for the analyzer's log templates (analyzer/logtemplates.py).
        "exporters": ([f"otlp_http/{log_store}"] if log_store else []) + extras["logs"]
        + ["forward/logcount", "otlp_http/analyzer"],
    }
    # One point per series per batch, at the collector's time (otel-collector/config.yaml.j2).
    pipelines["logs/count"] = {
        "receivers": ["forward/logcount"],
        "processors": ["transform/severity", "groupbyattrs/compact"],
        "exporters": ["count"],
    }
    return pipelines


#: How often the span-metrics (and service-graph) connector sends what it counted: a span's
#: exemplar is queryable in Prometheus up to this long after the span reaches the collector. Each
#: halving doubles the points these connectors send (every series, every flush); 2s (was 5s) took
#: the span-metric exemplar's freshness p95 under 5 s (bench/results.md).
CONNECTOR_FLUSH_INTERVAL = "2s"
PII_PROCESSOR = "transform/pii"
PII_MASK = "****"


def pii_statements(stack: Stack) -> dict[str, list[dict[str, Any]]]:
    """OTTL that masks every match of stack.yaml ``redaction.blocked_value_patterns`` wherever a
    value can hold text: attribute values of any key (resource, span, span event, data point, log
    record), log bodies (a string, or the values of a map), span event names and span status
    messages. One alternation of all patterns, so each value is scanned once. Empty when no pattern
    is set (then the processor is not in the pipelines)."""
    patterns = list(stack.redaction.blocked_value_patterns.values())
    if not patterns:
        return {}
    # An OTTL string literal takes Go's escapes: JSON's quoting of the pattern is one.
    p = json.dumps("|".join(f"(?:{x})" for x in patterns))
    mask = json.dumps(PII_MASK)

    def attrs(path: str) -> str:
        return f'replace_all_patterns({path}, "value", {p}, {mask})'

    def resource() -> dict[str, Any]:  # a new dict each time: YAML would write one shared as an anchor
        return {"context": "resource", "statements": [attrs("resource.attributes")]}

    return {
        "trace_statements": [
            resource(),
            {"context": "span", "statements": [attrs("span.attributes"),
                                               f"replace_pattern(span.status.message, {p}, {mask})"]},
            {"context": "spanevent", "statements": [attrs("spanevent.attributes"),
                                                    f"replace_pattern(spanevent.name, {p}, {mask})"]},
        ],
        "metric_statements": [resource(), {"context": "datapoint", "statements": [attrs("datapoint.attributes")]}],
        "log_statements": [
            resource(),
            {"context": "log", "statements": [
                attrs("log.attributes"),
                f"replace_pattern(log.body, {p}, {mask}) where IsString(log.body)",
                f'replace_all_patterns(log.body, "value", {p}, {mask}) where IsMap(log.body)',
            ]},
        ],
    }


_ZERO_TRACE_ID = "TraceID(0x" + "00" * 16 + ")"
_ZERO_SPAN_ID = "SpanID(0x" + "00" * 8 + ")"


def keep_rule(stack: Stack) -> dict[str, Any]:
    """The keep rule of mlobs/sampling.py as the collector's OTTL: the tail-sampling share, and
    the conditions under which an exemplar's or a log line's trace id is cleared."""
    s = stack.sampling
    pct = s.effective_percentage
    share_hex = sampling.threshold_hex(pct) if 0 < pct < 100 else None
    randomness = f"Substring({{ctx}}.trace_id.string, 18, {sampling.RANDOMNESS_HEX})"
    rule: dict[str, Any] = {"always": pct >= 100, "share_hex": share_hex, "attribute": sampling.KEEP_ATTRIBUTE}
    if share_hex is None:
        return rule
    span_keep = [f'{randomness.format(ctx="span")} >= "{share_hex}"',
                 f'span.end_time_unix_nano - span.start_time_unix_nano > {s.slow_threshold_ms * 1_000_000}',
                 f'span.attributes["{sampling.KEEP_ATTRIBUTE}"] == true']
    if s.keep_errors:
        span_keep.append("span.status.code == STATUS_CODE_ERROR")
    rule["span_share"] = span_keep[0]
    rule["clear_span"] = f"set(span.trace_id, {_ZERO_TRACE_ID}) where not ({' or '.join(span_keep)})"
    # An ERROR log line of the sample service comes with its failed span, so its trace is kept.
    log_keep = [f'{randomness.format(ctx="log")} >= "{share_hex}"',
                f'log.attributes["{sampling.KEEP_ATTRIBUTE}"] == true']
    if s.keep_errors:
        log_keep.append("log.severity_number >= SEVERITY_NUMBER_ERROR")
    cond = " or ".join(log_keep)
    rule["clear_log"] = [f"set(log.span_id, {_ZERO_SPAN_ID}) where not ({cond})",
                         f"set(log.trace_id, {_ZERO_TRACE_ID}) where not ({cond})"]
    return rule


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
        "scrape_jobs": registry.scrape_jobs(target),
        "keep": keep_rule(target.stack),
        "tail_decision_cache": sampling.DECISION_CACHE_SIZE,
        "connector_flush": CONNECTOR_FLUSH_INTERVAL,
        "destinations": destinations.exporters(target.stack),
        # extensions the config adds as stack.yaml asks: the destinations' auth, the exposed receivers' token check
        "extra_extensions": {**destinations.extensions(target.stack), **exposure.extension(target.stack)},
        "exposed_receiver": exposure.receiver(target),
        "pii": pii_statements(target.stack),
        "contract_pii": PII_PROCESSOR,
        "elk": destinations.elk_enabled(target.stack),
        # the datasource uids the links between the signals point at: the stores that run
        "traces_uid": target.store("traces") or target.stack.backends.traces,
        "logs_uid": target.store("logs") or target.stack.backends.logs,
        # the names of the telemetry contract (mlobs/contract.py), which rules share with dashboards
        "contract": contract,
    }


def analyzer_env(stack: Stack) -> dict[str, str]:
    """The analyzer's windows, from stack.yaml (analyzer, alerts.rate_window), as analyzer/settings.py
    reads them: seconds, fractional below a second (``300``, ``0.5``), and the rate window's text."""
    a = stack.analyzer

    def in_seconds(duration: str) -> str:
        return f"{seconds(duration):.3f}".rstrip("0").rstrip(".")

    return {
        "MLOBS_ANALYZER_RECENT_SECONDS": in_seconds(a.recent_window),
        "MLOBS_ANALYZER_BASELINE_SECONDS": in_seconds(a.baseline_window),
        "MLOBS_ANALYZER_STEP_SECONDS": in_seconds(a.step),
        "MLOBS_ANALYZER_RATE_WINDOW": str(stack.alerts.rate_window),
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
        # Kubernetes runs the images compose runs: it reads every config compose reads.
        if target.name not in targets and not (target.name == "kubernetes" and "compose" in targets):
            continue
        text = env.get_template(tpl).render(ctx)
        out[dest] = header_line(tpl) + text
    if target.name == "compose":
        out[COMPOSE_FILE] = compose_file(target)
    return out


HEADER = "# Rendered by `mlobs render` from "


def header_line(source: str) -> str:
    return f"{HEADER}{source} and stack.yaml. Do not edit: edit those.\n"


class _NoAliases(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


def compose_file(target: Target) -> str:
    doc = registry.compose_services(target)
    # The elk profile (mlobs/destinations.py): started only by `make up PROFILE=elk`.
    doc["services"].update(destinations.elk_services(registry.LOGGING, registry.HEALTH_TIMING))
    doc["volumes"]["opensearch-data"] = {}
    body = yaml.dump(doc, Dumper=_NoAliases, sort_keys=False, default_flow_style=False, width=1000)
    return (header_line("the component registry (mlobs/components.py)")
            + "# Every published port is bound to 127.0.0.1; secrets come from the gitignored .env that\n"
            + "# the first `make up` generates.\n" + body)


def write(files: dict[str, str], out_dir: Path, prune: bool = True) -> list[Path]:
    """Write rendered files; return those whose content changed. With ``prune``, a rendered file
    (one that carries the header) that nothing renders any more is deleted: the output is whole."""
    changed = []
    for rel, text in files.items():
        path = out_dir / rel
        if path.exists() and path.read_text() == text:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        changed.append(path)
    if prune:
        for rel in strays(files, out_dir):
            (out_dir / rel).unlink()
            changed.append(out_dir / rel)
    return changed


_SKIP_DIRS = {".git", ".venv", ".stack", ".bin", "node_modules", "__pycache__", ".ruff_cache", ".pytest_cache"}


def rendered_on_disk(out_dir: Path) -> list[str]:
    """Every file under ``out_dir`` that a render wrote (it starts with the header)."""
    found = []
    for path in sorted(out_dir.rglob("*")):
        rel = path.relative_to(out_dir)
        if any(part in _SKIP_DIRS for part in rel.parts) or not path.is_file() or path.suffix == ".j2":
            continue
        try:
            with path.open("rb") as f:
                head = f.read(len(HEADER))
        except OSError:
            continue
        if head == HEADER.encode():
            found.append(str(rel))
    return found


def strays(files: dict[str, str], out_dir: Path) -> list[str]:
    """Rendered files on disk that nothing renders any more (a deleted template's output)."""
    return [rel for rel in rendered_on_disk(out_dir) if rel not in files]


def drift(files: dict[str, str], out_dir: Path) -> list[str]:
    """Rendered files that differ from what is on disk (missing counts as different), and
    rendered files that nothing renders any more."""
    stale = [rel for rel, text in files.items()
             if not (out_dir / rel).exists() or (out_dir / rel).read_text() != text]
    return stale + [f"{rel} (nothing renders it any more)" for rel in strays(files, out_dir)]

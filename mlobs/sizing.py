"""A sizing model of the Kubernetes target: `mlobs size --rps N --services S`.

From the request rate and the telemetry per request it derives the ingest of each signal, the
collector agents and gateways with their cores and memory, the Prometheus active series, and the
storage per day of each store. Every per-core throughput and byte count is a ``Figure`` with its
source: the upstream projects' published sizing, a measured figure from ``bench/results.json``
where one exists (it replaces the published figure of the same name), or an assumption, said so.

``bench/results.json``, when present: ``{"figures": {"<name>": {"value": <number>, "source": "<how
it was measured>"}}}`` with names of ``FIGURES``, written by ``make bench``; it writes a figure only
when its throughput part held a rate (so far none did: see bench/results.md).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

import yaml

from mlobs import components, config, contract, kubernetes, render

BENCH_RESULTS = render.ROOT / "bench" / "results.json"
GIB = 2**30
DAY = 86_400


@dataclass(frozen=True)
class Figure:
    value: float
    unit: str
    source: str
    kind: str = "published"  # published | measured | assumed


FIGURES: dict[str, Figure] = {
    # The collector's own published sizing (opentelemetry-collector docs/performance.md): 1 CPU and
    # 2 GB sustain ~12k spans/s, 10k recommended. The gateway runs tail sampling and the connectors.
    "gateway_spans_per_core": Figure(10_000, "spans/s", "OpenTelemetry Collector docs/performance.md: "
                                     "10k spans/s recommended per CPU (~12k sustained), 2 GB"),
    # Splunk's distribution of the collector, sizing guide: one core ingests 15k spans/s, 20k data
    # points/s or 10k log records/s; one CPU to 2 GB of memory.
    "agent_spans_per_core": Figure(15_000, "spans/s", "Splunk OTel Collector sizing: 15k spans/s per core"),
    "points_per_core": Figure(20_000, "points/s", "Splunk OTel Collector sizing: 20k data points/s per core"),
    "logs_per_core": Figure(10_000, "records/s", "Splunk OTel Collector sizing: 10k log records/s per core"),
    "collector_memory_per_core": Figure(2 * GIB, "bytes", "both collector sizing guides: 2 GB per CPU"),
    # Prometheus' storage documentation: about 1-2 bytes per sample on disk.
    "prometheus_bytes_per_sample": Figure(2, "bytes", "Prometheus docs, storage: 1-2 bytes per sample (upper end)"),
    # Tempo's "Size the cluster" (3.0): a distributor per 10 MB/s received, a live-store per 6-10 MB/s.
    "tempo_distributor_bytes": Figure(10e6, "bytes/s", "Tempo docs, size the cluster: 1 distributor per 10 MB/s"),
    "tempo_live_store_bytes": Figure(6e6, "bytes/s", "Tempo docs, size the cluster: 1 live-store per 6-10 MB/s"),
    # Not published as one number, not measured here: assumptions, said so in the output.
    "span_bytes": Figure(500, "bytes", "assumed: an OTLP span with ~10 attributes", "assumed"),
    "log_record_bytes": Figure(400, "bytes", "assumed: an OTLP log record with trace context and ~8 attributes",
                               "assumed"),
    "block_compression": Figure(5, "x", "assumed: Tempo's parquet blocks and Loki's chunks, 5x smaller than "
                                        "received", "assumed"),
    "series_per_service": Figure(500, "series", "assumed: a model service's own metrics (request and stage "
                                                "histograms by model and version, process metrics)", "assumed"),
    "series_per_collector": Figure(400, "series", "assumed: a collector's own metrics at level detailed", "assumed"),
}

#: What a request of the sample service emits: its server span, one per stage, the feature lookup.
SAMPLE_SPANS_PER_REQUEST = 1 + len(contract.STAGES) + 1
#: The sample service writes one log line per served prediction.
SAMPLE_LOG_LINES_PER_REQUEST = 1
STATUSES = 2  # span-metrics series per span name: unset/ok and error
SEVERITIES = 4  # log-count series per service: info, warning, error, unspecified


def figures(results: Path = BENCH_RESULTS) -> tuple[dict[str, Figure], str]:
    """The figures in use, and where the measured ones come from (or why there are none)."""
    shown = results.relative_to(render.ROOT) if results.is_relative_to(render.ROOT) else results
    if not results.exists():
        return dict(FIGURES), f"no {shown}: run `make bench` to measure figures"
    measured = json.loads(results.read_text()).get("figures", {})
    out = dict(FIGURES)
    for name, m in measured.items():
        if name not in FIGURES:
            raise ValueError(f"{results}: unknown figure {name!r}; known: {', '.join(FIGURES)}")
        out[name] = replace(FIGURES[name], value=float(m["value"]), source=str(m["source"]), kind="measured")
    return out, (f"measured figures from {shown} (`make bench`): {', '.join(sorted(measured))}" if measured
                 else f"{shown} (`make bench`) holds no measured figure: its throughput part held no rate")


@dataclass(frozen=True)
class Load:
    rps: float
    services: int
    spans_per_request: float = SAMPLE_SPANS_PER_REQUEST
    log_lines_per_request: float = SAMPLE_LOG_LINES_PER_REQUEST
    sampled_share: float = 1.0  # of traces the tail sampler keeps


@dataclass(frozen=True)
class Tier:
    pods: int
    cores: float
    memory: float  # bytes


@dataclass(frozen=True)
class Size:
    spans_per_s: float
    logs_per_s: float
    points_per_s: float
    active_series: int
    agent: Tier
    gateway: Tier
    tempo_distributors: int
    tempo_live_stores: int
    bytes_per_day: dict[str, float]  # received by each store
    storage_per_day: dict[str, float]  # kept by each store
    retention_days: dict[str, float]


def collector_facts(stack: config.Stack) -> tuple[int, float, float]:
    """Histogram buckets of the span-metrics and service-graph connectors, their flush interval and
    the SDK's metric export interval, in seconds, as the rendered collector config and the registry say."""
    cfg = yaml.safe_load(render.render(render.compose_target(stack))["otel-collector/config.yaml"])
    buckets = len(cfg["connectors"]["span_metrics"]["histogram"]["explicit"]["buckets"])
    flush = config.seconds(cfg["connectors"]["span_metrics"]["metrics_flush_interval"])
    export = int(components.otlp_env_to("", "")["OTEL_METRIC_EXPORT_INTERVAL"]) / 1000
    return buckets, flush, export


def size(load: Load, stack: config.Stack, figs: dict[str, Figure] | None = None,
         retention: str | None = None, facts: tuple[int, float, float] | None = None) -> Size:
    """The sizes for a load (``facts``: collector_facts(stack), when sizing many loads of one stack)."""
    f = {k: v.value for k, v in (figs or FIGURES).items()}
    buckets, flush, export = facts or collector_facts(stack)
    histogram = buckets + 3  # the buckets, +Inf, _sum and _count
    spans = load.rps * load.spans_per_request
    logs = load.rps * load.log_lines_per_request
    agent_tier, gateway_tier = kubernetes.tier("otel-agent"), kubernetes.tier("otel-gateway")
    collector_mem = components.get("otel-collector").mem_limit
    pod_mem = float(kubernetes.quantity(collector_mem).removesuffix("Mi")) * 2**20

    def connector_series(gateways: int) -> int:
        # every gateway labels the connector series it makes (mlobs/kubernetes.py GATEWAY_LABEL)
        span_metrics = load.services * load.spans_per_request * STATUSES * (1 + histogram)
        graph = load.services * (2 + 2 * histogram)  # an edge per service: 2 counters, client and server histograms
        log_counts = load.services * SEVERITIES
        return math.ceil((span_metrics + graph + log_counts) * gateways)

    def collectors_own(gateways: int, agents: int) -> float:
        return (gateways + agents) * f["series_per_collector"]

    app_series = load.services * f["series_per_service"]
    app_points = app_series / export
    agent_cores = spans / f["agent_spans_per_core"] + app_points / f["points_per_core"] + logs / f["logs_per_core"]
    agents = max(1, math.ceil(agent_cores / _cores(agent_tier.cpu[1])))
    primary = spans / f["gateway_spans_per_core"] + app_points / f["points_per_core"] + logs / f["logs_per_core"]
    gateways = max(gateway_tier.replicas, math.ceil(primary / _cores(gateway_tier.cpu[1])))
    # the connectors' series every flush, the collectors' own every export interval
    derived = connector_series(gateways) / flush + collectors_own(gateways, agents) / export
    gateway_cores = primary + derived / f["points_per_core"]
    gateways = max(gateways, math.ceil(gateway_cores / _cores(gateway_tier.cpu[1])))
    own = app_series + collectors_own(gateways, agents)
    active = math.ceil(connector_series(gateways) + own)
    points = connector_series(gateways) / flush + own / export

    trace_bytes = spans * f["span_bytes"] * load.sampled_share
    log_bytes = logs * f["log_record_bytes"]
    received = {"tempo": trace_bytes * DAY, "loki": log_bytes * DAY,
                "prometheus": points * DAY * f["prometheus_bytes_per_sample"]}
    kept = {"tempo": received["tempo"] / f["block_compression"], "loki": received["loki"] / f["block_compression"],
            "prometheus": received["prometheus"]}
    days = {s: config.seconds(retention or str(getattr(stack.retention, s))) / DAY for s in received}
    return Size(
        spans_per_s=spans, logs_per_s=logs, points_per_s=points, active_series=active,
        agent=Tier(agents, agent_cores, max(agent_cores * f["collector_memory_per_core"], agents * pod_mem)),
        gateway=Tier(gateways, gateway_cores, max(gateway_cores * f["collector_memory_per_core"], gateways * pod_mem)),
        tempo_distributors=max(1, math.ceil(trace_bytes / f["tempo_distributor_bytes"])),
        tempo_live_stores=max(1, math.ceil(trace_bytes / f["tempo_live_store_bytes"])),
        bytes_per_day=received, storage_per_day=kept, retention_days=days,
    )


def _cores(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def human(n: float, unit: str = "B") -> str:
    for prefix in ("", "k", "M", "G", "T", "P"):
        if abs(n) < 1000:
            return f"{n:.3g} {prefix}{unit}"
        n /= 1000
    return f"{n:.3g} E{unit}"


def report(load: Load, s: Size, figs: dict[str, Figure], provenance: str) -> list[str]:
    lines = [
        f"mlobs size: {load.rps:g} requests/s over {load.services} services, {load.spans_per_request:g} spans and "
        f"{load.log_lines_per_request:g} log lines per request, {load.sampled_share:.0%} of traces kept",
        "",
        f"  {'tier':<26}{'pods':>6}{'cores':>8}{'memory':>11}",
        f"  {'collector agents':<26}{s.agent.pods:>6}{s.agent.cores:>8.2f}{s.agent.memory / GIB:>8.1f} GiB"
        "   (one per node: at least this many nodes at the agent's CPU limit)",
        f"  {'collector gateways':<26}{s.gateway.pods:>6}{s.gateway.cores:>8.2f}{s.gateway.memory / GIB:>8.1f} GiB",
        f"  {'tempo distributors':<26}{s.tempo_distributors:>6}",
        f"  {'tempo live-stores':<26}{s.tempo_live_stores:>6}",
        "",
        f"  ingest: traces {human(s.spans_per_s, 'spans/s')}, logs {human(s.logs_per_s, 'records/s')}, "
        f"metrics {human(s.points_per_s, 'samples/s')}",
        f"  Prometheus active series: {s.active_series:,}",
        "",
        f"  {'store':<12}{'received/day':>14}{'stored/day':>14}{'retention':>11}{'stored in all':>15}",
    ]
    for store in ("prometheus", "loki", "tempo"):
        kept, days = s.storage_per_day[store], s.retention_days[store]
        lines.append(f"  {store:<12}{human(s.bytes_per_day[store]):>14}{human(kept):>14}{days:>9.3g} d"
                     f"{human(kept * days):>15}")
    lines += ["", f"  figures ({provenance}):"]
    lines += [f"    {name}: {human(fig.value, fig.unit)} [{fig.kind}] {fig.source}" for name, fig in figs.items()]
    return lines

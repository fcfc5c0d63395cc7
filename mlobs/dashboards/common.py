"""Shared pieces of the mlobs dashboards: datasources, variables, annotations, panel factories.

Every dashboard module builds its panels from these factories, so units, descriptions, thresholds
and datasource references are set the same way everywhere; the thresholds that stack.yaml sets
come from the loaded stack (Limits). Names of metrics, labels, spans and log attributes follow
generator/TELEMETRY.md (mlobs/contract.py).
"""

from __future__ import annotations

import json
import typing
from collections.abc import Sequence
from dataclasses import dataclass

from grafana_foundation_sdk.builders import (
    barchart,
    bargauge,
    dashboard,
    heatmap,
    logs,
    loki,
    nodegraph,
    prometheus,
    stat,
    statetimeline,
    table,
    tempo,
    timeseries,
)
from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as common_models
from grafana_foundation_sdk.models import dashboard as models
from grafana_foundation_sdk.models import prometheus as prometheus_models

from mlobs import contract, explore, stores
from mlobs.config import Stack


def _datasource(uid: str) -> models.DataSourceRef:
    return models.DataSourceRef(type_val=explore.DATASOURCE_TYPES[uid], uid=uid)


# Datasource uids are fixed by the provisioning (grafana/provisioning/datasources) so that
# dashboards and the links between signals can name them.
PROMETHEUS = _datasource("prometheus")
LOKI = _datasource("loki")
TEMPO = _datasource("tempo")
FIXED_DATASOURCE_UIDS = frozenset(explore.DATASOURCE_TYPES)

TAG = "mlobs"
SAMPLE_SERVICE = contract.SERVICE_INFERENCE
SAMPLE_TRAINING_SERVICE = contract.SERVICE_TRAINING
SAMPLE_MODEL = "breast-cancer-classifier"

# The model-serving path as span names: the stages (the ml_stage values of ml_stage_duration_seconds)
# and, inside feature_extraction, the CLIENT span to the feature store, which is no stage of its own.
SERVING_SPANS = (*contract.STAGES[:2], contract.FEATURE_LOOKUP_SPAN, *contract.STAGES[2:])
SERVING_SPAN_REGEX = "|".join(SERVING_SPANS)

SEVERITY_ERROR = 'severity_text=~"(?i)error|fatal|critical"'
# The same filter in LogsQL (VictoriaLogs keeps the OTLP severity text as the field severity_text).
SEVERITY_ERROR_LOGSQL = 'severity_text:~"(?i)error|fatal|critical"'

# The dashboard every service has (mlobs/dashboards/service.py); the others link to it.
SERVICE_OVERVIEW_UID = "mlobs-service"

# ---- span metrics (the collector's span-metrics connector, any OpenTelemetry service)

#: Their labels: the resource's service.name, the span's name and kind.
SPAN_SERVICE = contract.prometheus_label("service.name")
SPAN_NAME = "span_name"
SPAN_KIND = "span_kind"
#: The recorded span series (mlobs/contract.py; prometheus/rules/services.yml records them).
SPAN_CALLS_RATE = contract.SPAN_CALLS_RATE
SPAN_ERRORS_RATIO = contract.SPAN_ERRORS_RATIO
SPAN_QUANTILES = contract.SPAN_QUANTILES
span_duration_quantile = contract.span_duration_quantile
#: A matcher for the operations a service serves (what the span-metric alerts judge).
SERVED_SPANS = f'{SPAN_KIND}=~"{"|".join(contract.SERVED_SPAN_KINDS)}"'
LOG_RECORDS_TOTAL = contract.LOG_RECORDS_TOTAL
LOG_SEVERITY = contract.LOG_SEVERITY


GREEN = "green"
ORANGE = "orange"
RED = "red"
BLUE = "blue"

Steps = Sequence[tuple[float | None, str]]

# Threshold sets that no setting of stack.yaml moves (the others: Limits, below).
NEUTRAL: Steps = ((None, BLUE),)
ANY_IS_BAD: Steps = ((None, GREEN), (0.000001, RED))
NONE_IS_BAD: Steps = ((None, RED), (0.000001, GREEN))


def _tidy(value: float) -> float:
    """A derived threshold without the float noise of its arithmetic (0.9, not 0.9000000000000001)."""
    return float(f"{value:.12g}")


def percent(ratio: float) -> str:
    return f"{ratio * 100:g}%"


def duration(seconds: float) -> str:
    return f"{seconds * 1000:g} ms" if seconds < 1 else f"{seconds:g} s"


@dataclass(frozen=True)
class Scale:
    """Green, orange from ``warn``, red from ``red``; downwards when higher is better."""

    warn: float
    red: float
    higher_is_better: bool = False

    @property
    def steps(self) -> Steps:
        if self.higher_is_better:
            return ((None, RED), (self.red, ORANGE), (self.warn, GREEN))
        return ((None, GREEN), (self.warn, ORANGE), (self.red, RED))


def error_ratio_scale(limit: float) -> Scale:
    """An error ratio: orange from a fifth of the limit, red at it."""
    return Scale(_tidy(limit / 5), limit)


def latency_scale(limit: float) -> Scale:
    """A latency: orange from half the limit, red at it."""
    return Scale(_tidy(limit / 2), limit)


@dataclass(frozen=True)
class Limits:
    """The dashboards' thresholds, from the loaded stack: a panel turns red where the alert on its
    signal fires (stack.yaml ``alerts``), orange on the way there, and a slow trace is one the tail
    sampler always keeps (``sampling.slow_threshold_ms``).

    Orange starts at a fifth of the error ratio limit, at half the latency and PSI limits (0.1 is
    Evidently's "moderate drift" at the default 0.2), and a third of the way from a score's floor
    to 1."""

    error_ratio: Scale
    latency: Scale
    accuracy: Scale
    f1: Scale
    psi: Scale
    slow_ms: int
    ttft: Scale

    @property
    def slow(self) -> str:
        """The slow threshold as TraceQL and Jaeger write a duration (``500ms``)."""
        return f"{self.slow_ms}ms"

    @classmethod
    def of(cls, stack: Stack) -> Limits:
        a = stack.alerts

        def floor(value: float) -> Scale:
            return Scale(_tidy(value + (1 - value) / 3), value, higher_is_better=True)

        return cls(
            error_ratio=error_ratio_scale(a.error_ratio),
            latency=latency_scale(a.latency_p99_seconds),
            accuracy=floor(a.accuracy_floor),
            f1=floor(a.f1_floor),
            psi=Scale(_tidy(a.drift_psi / 2), a.drift_psi),
            slow_ms=stack.sampling.slow_threshold_ms,
            ttft=latency_scale(a.genai_ttft_p95_seconds),
        )

    def traces_slow_or_failed(self) -> str:
        """TraceQL for the requests that went wrong: failed, or slow."""
        went_wrong = f"(status = error || duration > {self.slow})"
        return f'{{ resource.service.name = "$service" && kind = server && {went_wrong} }}'

    def f1_override(self, panel: PanelBuilder, ref: str) -> PanelBuilder:
        """The F1 query ``ref`` of a panel of scores turns red at the F1 floor, when it is not the accuracy's."""
        if self.f1 == self.accuracy:
            return panel
        return thresholds_override(panel, ref, self.f1.steps)


def thresholds_override(panel: PanelBuilder, ref: str, steps: Steps) -> PanelBuilder:
    """The fields of query ``ref`` of a panel get their own thresholds."""
    value = json.loads(JSONEncoder().encode(thresholds(steps).build()))
    override = [models.DynamicConfigValue(id_val="thresholds", value=value)]
    return typing.cast(PanelBuilder, typing.cast(typing.Any, panel).override_by_query(ref, override))


ServiceLimitKey = typing.Literal["error_ratio", "latency_p99_seconds"]
_SERVICE_SCALES: dict[str, typing.Callable[[float], Scale]] = {
    "error_ratio": error_ratio_scale,
    "latency_p99_seconds": latency_scale,
}


@dataclass(frozen=True)
class ServiceLimit:
    """One threshold of the span-metric alerts (prometheus/rules/services.yml) for whichever service a
    dashboard shows: the global limit of stack.yaml ``alerts``, and the services of stack.yaml with
    their own (``Service.limit``).

    Grafana's thresholds cannot follow a variable, so a panel gets one group of queries per
    threshold: the first for every service without its own limit (``service_name!="..."`` for each
    service that has one), then one per service with its own limit (``service_name="..."`` beside
    the ``$service`` matcher), whose fields get that service's thresholds by query. Only the group
    of the service selected has data, so the line drawn is that service's."""

    default: Scale
    own: tuple[tuple[str, Scale], ...]

    @classmethod
    def of(cls, stack: Stack, key: ServiceLimitKey) -> ServiceLimit:
        scale = _SERVICE_SCALES[key]
        limit: float = getattr(stack.alerts, key)
        own = tuple(
            (svc.name, scale(svc.limit(stack.alerts, key)))
            for svc in stack.services
            if svc.limit(stack.alerts, key) != limit
        )
        return cls(scale(limit), own)

    def groups(self) -> list[tuple[str, str, Scale]]:
        """(suffix of the query refs, extra span-metric matchers, thresholds) of each group of queries."""
        others = "".join(f', {SPAN_SERVICE}!="{name}"' for name, _ in self.own)
        return [("", others, self.default)] + [
            (str(index), f', {SPAN_SERVICE}="{name}"', scale)
            for index, (name, scale) in enumerate(self.own, start=1)
        ]

    def targets(
        self, make: typing.Callable[[str, str], Sequence[prometheus.Dataquery]]
    ) -> tuple[list[prometheus.Dataquery], list[tuple[str, Steps]]]:
        """``make(extra matchers, ref suffix)`` gives one group's queries; returns them all, and the
        (ref, thresholds) each query of a service with its own limit needs (``apply``)."""
        queries: list[prometheus.Dataquery] = []
        overrides: list[tuple[str, Steps]] = []
        for suffix, matchers, scale in self.groups():
            group = list(make(matchers, suffix))
            queries += group
            if suffix:
                overrides += [(query.build().ref_id, scale.steps) for query in group]
        return queries, overrides

    @staticmethod
    def apply(panel: PanelBuilder, overrides: Sequence[tuple[str, Steps]]) -> PanelBuilder:
        for ref, steps in overrides:
            panel = thresholds_override(panel, ref, steps)
        return panel


# --- queries -------------------------------------------------------------------------------


def promql(
    expr: str,
    legend: str = "__auto",
    *,
    ref: str = "A",
    instant: bool = False,
    exemplar: bool = False,
    as_table: bool = False,
    heatmap_format: bool = False,
) -> prometheus.Dataquery:
    query = (
        prometheus.Dataquery()
        .datasource(PROMETHEUS)
        .ref_id(ref)
        .expr(expr)
        .legend_format(legend)
        .editor_mode(prometheus_models.QueryEditorMode.CODE)
    )
    query = query.instant() if instant else query.range()
    if exemplar:
        query = query.exemplar(True)
    if as_table:
        query = query.format(prometheus_models.PromQueryFormat.TABLE)
    if heatmap_format:
        query = query.format(prometheus_models.PromQueryFormat.HEATMAP)
    return query


def logql(expr: str, *, ref: str = "A", legend: str | None = None, max_lines: int | None = None) -> loki.Dataquery:
    query = loki.Dataquery().datasource(LOKI).ref_id(ref).expr(expr).query_type("range")
    if legend is not None:
        query = query.legend_format(legend)
    if max_lines is not None:
        query = query.max_lines(max_lines)
    return query


def traceql(query: str, *, ref: str = "A", limit: int = 20) -> tempo.TempoQuery:
    return (
        tempo.TempoQuery()
        .datasource(TEMPO)
        .ref_id(ref)
        .query_type("traceql")
        .query(query)
        .limit(limit)
        .table_type("traces")
    )


def service_map(*, ref: str = "A") -> tempo.TempoQuery:
    """Tempo's "Service Graph" query: Grafana reads traces_service_graph_* from the Prometheus
    datasource linked in the Tempo datasource (serviceMap.datasourceUid) and draws nodes and edges."""
    return tempo.TempoQuery().datasource(TEMPO).ref_id(ref).query_type("serviceMap")


# --- field config ----------------------------------------------------------------------------


def thresholds(steps: Steps) -> dashboard.ThresholdsConfig:
    return (
        dashboard.ThresholdsConfig()
        .mode(models.ThresholdsMode.ABSOLUTE)
        .steps([models.Threshold(value=value, color=color) for value, color in steps])
    )


def value_text(mapping: dict[str, tuple[str, str]]) -> list[models.ValueMap]:
    """Value → (text, color), e.g. {"1": ("firing", "red")}."""
    return [
        models.ValueMap(
            options={
                value: models.ValueMappingResult(text=text, color=color, index=index)
                for index, (value, (text, color)) in enumerate(mapping.items())
            }
        )
    ]


PanelBuilder = typing.TypeVar("PanelBuilder", bound=cogbuilder.Builder[models.Panel])


def _common(
    panel: PanelBuilder,
    title: str,
    description: str,
    unit: str | None,
    targets: Sequence[cogbuilder.Builder[cogvariants.Dataquery]],
    steps: Steps | None,
    width: int,
    height: int,
    datasource: models.DataSourceRef | None = PROMETHEUS,
) -> PanelBuilder:
    built = panel.title(title).description(description).span(width).height(height)  # type: ignore[attr-defined]
    if datasource is not None:
        built = built.datasource(datasource)
    if unit is not None:
        built = built.unit(unit)
    if steps is not None:
        built = built.thresholds(thresholds(steps))
    for target in targets:
        built = built.with_target(target)
    return typing.cast(PanelBuilder, built)


def _field_options(
    panel: PanelBuilder,
    *,
    min_value: float | None = None,
    max_value: float | None = None,
    decimals: int | None = None,
    mappings: list[models.ValueMap] | None = None,
    links: Sequence[dashboard.DashboardLink] = (),
) -> PanelBuilder:
    """The optional standard options every panel kind shares: set only those given."""
    built = typing.cast(typing.Any, panel)
    if min_value is not None:
        built = built.min(min_value)
    if max_value is not None:
        built = built.max(max_value)
    if decimals is not None:
        built = built.decimals(decimals)
    if mappings is not None:
        built = built.mappings(list(mappings))
    if links:
        built = built.links(list(links))
    return typing.cast(PanelBuilder, built)


# --- panels ----------------------------------------------------------------------------------


def timeseries_panel(
    title: str,
    description: str,
    unit: str,
    targets: Sequence[cogbuilder.Builder[cogvariants.Dataquery]],
    *,
    steps: Steps = NEUTRAL,
    draw_thresholds: bool = False,
    width: int = 12,
    height: int = 8,
    stack: common_models.StackingMode | None = None,
    min_value: float | None = None,
    max_value: float | None = None,
    decimals: int | None = None,
    links: Sequence[dashboard.DashboardLink] = (),
    datasource: models.DataSourceRef = PROMETHEUS,
) -> timeseries.Panel:
    panel = _common(timeseries.Panel(), title, description, unit, targets, steps, width, height, datasource)
    panel = panel.legend(
        common_builders.VizLegendOptions()
        .display_mode(common_models.LegendDisplayMode.LIST)
        .placement(common_models.LegendPlacement.BOTTOM)
        .show_legend(True)
    ).fill_opacity(10)
    if draw_thresholds:
        panel = panel.thresholds_style(
            common_builders.GraphThresholdsStyleConfig().mode(common_models.GraphThresholdsStyleMode.DASHED)
        )
    if stack is not None:
        panel = panel.stacking(common_builders.StackingConfig().mode(stack)).fill_opacity(60)
    return _field_options(panel, min_value=min_value, max_value=max_value, decimals=decimals, links=links)


def stat_panel(
    title: str,
    description: str,
    unit: str,
    targets: Sequence[cogbuilder.Builder[cogvariants.Dataquery]],
    *,
    steps: Steps = NEUTRAL,
    width: int = 6,
    height: int = 5,
    decimals: int | None = None,
    text_mode: common_models.BigValueTextMode = common_models.BigValueTextMode.AUTO,
    mappings: list[models.ValueMap] | None = None,
    links: Sequence[dashboard.DashboardLink] = (),
) -> stat.Panel:
    panel = _common(stat.Panel(), title, description, unit, targets, steps, width, height)
    panel = (
        panel.color_mode(common_models.BigValueColorMode.BACKGROUND)
        .graph_mode(common_models.BigValueGraphMode.AREA)
        .text_mode(text_mode)
        .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    )
    return _field_options(panel, decimals=decimals, mappings=mappings, links=links)


def bargauge_panel(
    title: str,
    description: str,
    unit: str,
    targets: Sequence[cogbuilder.Builder[cogvariants.Dataquery]],
    *,
    steps: Steps = NEUTRAL,
    width: int = 12,
    height: int = 8,
    min_value: float | None = None,
    max_value: float | None = None,
    decimals: int | None = None,
) -> bargauge.Panel:
    panel = _common(bargauge.Panel(), title, description, unit, targets, steps, width, height)
    panel = (
        panel.orientation(common_models.VizOrientation.HORIZONTAL)
        .display_mode(common_models.BarGaugeDisplayMode.LCD)
        .show_unfilled(True)
        .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    )
    return _field_options(panel, min_value=min_value, max_value=max_value, decimals=decimals)


def heatmap_panel(
    title: str,
    description: str,
    unit: str,
    targets: Sequence[cogbuilder.Builder[cogvariants.Dataquery]],
    *,
    cell_unit: str = "reqps",
    width: int = 12,
    height: int = 8,
) -> heatmap.Panel:
    """A heatmap of pre-bucketed Prometheus histograms (queries in heatmap format), exemplars on top."""
    panel = _common(heatmap.Panel(), title, description, None, targets, NEUTRAL, width, height)
    return (
        panel.calculate(False)
        .y_axis(heatmap.YAxisConfig().unit(unit))
        .cell_values(heatmap.CellValues().unit(cell_unit))
        .color(
            heatmap.HeatmapColorOptions()
            .mode("scheme")
            .scheme("Oranges")
            .fill("dark-orange")
            .scale("exponential")
            .exponent(0.5)
            .steps(64)
        )
        .rows_frame(heatmap.RowsHeatmapOptions().layout("auto"))
        .exemplars_color("rgba(255,0,255,0.7)")
        .show_legend()
    )


def statetimeline_panel(
    title: str,
    description: str,
    unit: str,
    targets: Sequence[cogbuilder.Builder[cogvariants.Dataquery]],
    *,
    steps: Steps = NEUTRAL,
    mappings: list[models.ValueMap] | None = None,
    width: int = 12,
    height: int = 6,
) -> statetimeline.Panel:
    panel = _common(statetimeline.Panel(), title, description, unit, targets, steps, width, height)
    panel = panel.show_value(common_models.VisibilityMode.AUTO).merge_values(True).fill_opacity(70)
    panel = _field_options(panel, mappings=mappings)
    return panel.color_scheme(dashboard.FieldColor().mode(models.FieldColorModeId.THRESHOLDS))


def barchart_panel(
    title: str,
    description: str,
    unit: str,
    targets: Sequence[cogbuilder.Builder[cogvariants.Dataquery]],
    *,
    x_field: str,
    steps: Steps = NEUTRAL,
    transformations: Sequence[models.DataTransformerConfig] = (),
    width: int = 12,
    height: int = 8,
    decimals: int | None = None,
) -> barchart.Panel:
    panel = _common(barchart.Panel(), title, description, unit, targets, steps, width, height)
    panel = panel.x_field(x_field).show_value(common_models.VisibilityMode.AUTO).fill_opacity(80)
    for transformation in transformations:
        panel = panel.with_transformation(transformation)
    return _field_options(panel, decimals=decimals)


def table_panel(
    title: str,
    description: str,
    unit: str | None,
    targets: Sequence[cogbuilder.Builder[cogvariants.Dataquery]],
    *,
    steps: Steps = NEUTRAL,
    transformations: Sequence[models.DataTransformerConfig] = (),
    datasource: models.DataSourceRef = PROMETHEUS,
    width: int = 12,
    height: int = 8,
    decimals: int | None = None,
) -> table.Panel:
    panel = _common(table.Panel(), title, description, unit, targets, steps, width, height, datasource)
    for transformation in transformations:
        panel = panel.with_transformation(transformation)
    return _field_options(panel, decimals=decimals)


def trace_search_panel(title: str, description: str, query: str, *, width: int = 12, height: int = 9) -> table.Panel:
    """A TraceQL search: one row per matching trace, the trace id opens the trace view.
    The result frames carry their own units (durations in ms), so none is set on the panel."""
    return table_panel(title, description, None, [traceql(query)], datasource=TEMPO, width=width, height=height)


def node_graph_panel(title: str, description: str, *, width: int = 24, height: int = 12) -> nodegraph.Panel:
    panel = _common(nodegraph.Panel(), title, description, None, [service_map()], None, width, height, TEMPO)
    return panel.nodes(nodegraph.NodeOptions().main_stat_unit("ms").secondary_stat_unit("reqps")).edges(
        nodegraph.EdgeOptions().main_stat_unit("ms").secondary_stat_unit("reqps")
    )


LOG_LINES = 500


def logs_panel(
    title: str,
    description: str,
    expr: str,
    *,
    width: int = 24,
    height: int = 10,
    target: cogbuilder.Builder[cogvariants.Dataquery] | None = None,
    datasource: models.DataSourceRef = LOKI,
) -> logs.Panel:
    """The log lines of a LogQL query, or of ``target`` on ``datasource`` (another log store)."""
    query = target if target is not None else logql(expr, max_lines=LOG_LINES)
    panel = _common(logs.Panel(), title, description, None, [query], None, width, height, datasource)
    return (
        panel.show_time(True)
        .wrap_log_message(True)
        .enable_log_details(True)
        .prettify_log_message(False)
        .show_common_labels(False)
        .show_labels(False)
        .sort_order(common_models.LogsSortOrder.DESCENDING)
        .dedup_strategy(common_models.LogsDedupStrategy.NONE)
    )


def cpu_panel(selector: str, *, width: int = 8, height: int = 8) -> timeseries.Panel:
    """CPU of each process of a service, from the semantic-convention process.cpu.time."""
    return timeseries_panel(
        "CPU per instance",
        "CPU seconds used per second by each process of the service (1 = one core), from the "
        f"semantic-convention {contract.PROCESS_CPU_TIME} (user and system). A process that stays at "
        "the cores it may use is saturated: latency follows.",
        "percentunit",
        [
            promql(
                f"sum by (instance) (rate({contract.PROCESS_CPU_TIME_SECONDS_TOTAL}{{{selector}}}[$__rate_interval]))",
                "{{instance}}",
            )
        ],
        min_value=0,
        width=width,
        height=height,
    )


def memory_panel(selector: str, *, width: int = 8, height: int = 8) -> timeseries.Panel:
    """Resident memory of each process of a service, from the semantic-convention process.memory.usage."""
    return timeseries_panel(
        "Memory per instance",
        f"Resident memory of each process of the service ({contract.PROCESS_MEMORY_USAGE}). Steady growth "
        "under a steady load is a leak; a step at a deployment is the new version's size.",
        "bytes",
        [promql(f"sum by (instance) ({contract.PROCESS_MEMORY_USAGE_BYTES}{{{selector}}})", "{{instance}}")],
        min_value=0,
        width=width,
        height=height,
    )


def alert_list_panel(title: str, description: str, *, width: int = 12, height: int = 9) -> dashboard.Panel:
    """Grafana's alert list: current states of the alert rules Grafana sees, including the rules
    Prometheus evaluates (datasource-managed rules). The Alertmanager datasource cannot back a panel
    (its plugin has no query support), so the alert states come from here and from ALERTS."""
    return (
        dashboard.Panel()
        .type("alertlist")
        .title(title)
        .description(description)
        .span(width)
        .height(height)
        .links(
            [
                dashboard.DashboardLink("Alert groups and silences")
                .type(models.DashboardLinkType.LINK)
                .url("/alerting/groups")
            ]
        )
        .options(
            {
                "viewMode": "list",
                "groupMode": "default",
                "groupBy": [],
                "maxItems": 20,
                "sortOrder": 3,  # importance: firing first
                "dashboardAlerts": False,
                "alertName": "",
                "alertInstanceLabelFilter": "",
                "showInstances": True,
                "showInactiveAlerts": False,
                "stateFilter": {
                    "firing": True,
                    "pending": True,
                    "recovering": True,
                    "noData": True,
                    "normal": False,
                    "error": True,
                },
            }
        )
    )


# --- links -----------------------------------------------------------------------------------


def explore_link(title: str, datasource: models.DataSourceRef, query: dict[str, object]) -> dashboard.DashboardLink:
    """A link that opens Explore on one query, over the dashboard's time range; Grafana replaces
    $service and the like in the link before following it."""
    assert datasource.uid is not None
    return (
        dashboard.DashboardLink(title)
        .type(models.DashboardLinkType.LINK)
        .url(explore.url(datasource.uid, query, start="$__from", end="$__to"))
        .target_blank(True)
    )


def traces_link(title: str, query: str) -> dashboard.DashboardLink:
    return explore_link(title, TEMPO, explore.traceql(query))


def logs_link(title: str, expr: str) -> dashboard.DashboardLink:
    return explore_link(title, LOKI, explore.logs("loki", expr))


def service_overview_link() -> dashboard.DashboardLink:
    """A dashboard link to the Service overview of the service selected here (its $service)."""
    return (
        dashboard.DashboardLink("Service overview of $service")
        .type(models.DashboardLinkType.LINK)
        .url(f"/d/{SERVICE_OVERVIEW_UID}?${{service:queryparam}}")
        .tooltip("Span metrics, CPU, memory, logs and traces of the service, from OpenTelemetry alone")
        .icon("dashboard")
        .keep_time(True)
    )


def dashboards_link() -> dashboard.DashboardLink:
    return (
        dashboard.DashboardLink("mlobs dashboards")
        .type(models.DashboardLinkType.DASHBOARDS)
        .tags([TAG])
        .as_dropdown(True)
        .include_vars(True)
        .keep_time(True)
    )


# --- the trace and log stores ----------------------------------------------------------------


class _RawQuery(cogvariants.Dataquery):
    """A query of a datasource the SDK has no model for (the VictoriaLogs plugin): its JSON as given."""

    def __init__(self, payload: dict[str, object]) -> None:
        self.payload = payload

    def to_json(self) -> dict[str, object]:
        return dict(self.payload)


class RawQuery(cogbuilder.Builder[cogvariants.Dataquery]):
    def __init__(self, payload: dict[str, object]) -> None:
        self._internal = _RawQuery(payload)

    def build(self) -> cogvariants.Dataquery:
        return self._internal


@dataclass(frozen=True)
class Stores:
    """The trace and log stores a dashboard's trace links and log panels use: stack.yaml ``backends``
    (the stores the datasource provisioning links metrics and signals to, its traces_uid and
    logs_uid, where they run). A trace search is TraceQL on Tempo and the search form (service,
    tags, minimum duration) on Jaeger; logs are LogQL on Loki and LogsQL on VictoriaLogs, the
    service's selector as mlobs.stores writes it for each."""

    traces: str
    logs: str

    @classmethod
    def of(cls, stack: Stack) -> Stores:
        return cls(stack.backends.traces, stack.backends.logs)

    @property
    def traces_datasource(self) -> models.DataSourceRef:
        return _datasource(self.traces)

    @property
    def logs_datasource(self) -> models.DataSourceRef:
        return _datasource(self.logs)

    def trace_search(
        self, title: str, traceql: str, *, service: str = "$service", tags: str = "", min_duration: str = ""
    ) -> dashboard.DashboardLink:
        """Explore on the trace store: ``traceql`` on Tempo; on Jaeger the traces of ``service`` with
        the span ``tags`` (logfmt, e.g. ``error=true``) and ``min_duration`` (``500ms``)."""
        if self.traces == "tempo":
            query = explore.traceql(traceql)
        else:
            query = explore.jaeger_search(service, tags=tags, min_duration=min_duration)
        return explore_link(title, self.traces_datasource, query)

    def service_logs(self, service: str = "$service", *, errors: bool = False, regex: bool = False) -> str:
        """The log query of one service's records, or of its records of severity ERROR and above;
        with ``regex`` of the services ``service`` matches (a multi-value variable)."""
        if self.logs == "loki":
            query = stores.Loki("").query(service)
            if regex:
                query = query.replace(f'{SPAN_SERVICE}="', f'{SPAN_SERVICE}=~"', 1)
            return query + (f" | {SEVERITY_ERROR}" if errors else "")
        query = stores.VictoriaLogs("").query(service)
        if regex:
            query = query.replace('":"', '":~"', 1)
        return query + (f" {SEVERITY_ERROR_LOGSQL}" if errors else "")

    def logs_link(self, title: str, expr: str) -> dashboard.DashboardLink:
        return explore_link(title, self.logs_datasource, explore.logs(self.logs, expr))

    def logs_panel(self, title: str, description: str, expr: str, *, height: int = 10) -> logs.Panel:
        if self.logs == "loki":
            return logs_panel(title, description, expr, height=height)
        target = RawQuery(
            {
                "refId": "A",
                "datasource": self.logs_datasource,
                "expr": expr,
                "queryType": "instant",  # the plugin's log-lines query (/select/logsql/query)
                "editorMode": "code",
                "maxLines": LOG_LINES,
            }
        )
        return logs_panel(title, description, expr, height=height, target=target, datasource=self.logs_datasource)


# --- variables -------------------------------------------------------------------------------


def _current(value: str | list[str]) -> models.VariableOption:
    if isinstance(value, list):
        text = "All" if value == ["$__all"] else " + ".join(value)
        return models.VariableOption(selected=True, text=[text], value=value)
    return models.VariableOption(selected=True, text=value, value=value)


def query_variable(
    name: str,
    label: str,
    query: str,
    default: str | list[str],
    description: str,
    *,
    multi: bool = False,
) -> dashboard.QueryVariable:
    """A Prometheus `label_values(...)` variable. The default is the sample service's value,
    which the end-to-end suite also uses; Grafana falls back to the first option when it is absent."""
    variable = (
        dashboard.QueryVariable(name)
        .label(label)
        .description(description)
        .datasource(PROMETHEUS)
        .query(query)
        .refresh(models.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(models.VariableSort.NATURAL_ASC)
        .current(_current(default))
    )
    if multi:
        variable = variable.multi(True).include_all(True).all_value(".*")
    return variable


def textbox_variable(name: str, label: str, default: str, description: str) -> dashboard.TextBoxVariable:
    return (
        dashboard.TextBoxVariable(name)
        .label(label)
        .description(description)
        .default_value(default)
        .current(_current(default))
    )


def service_variable(query: str, default: str = SAMPLE_SERVICE) -> dashboard.QueryVariable:
    return query_variable(
        "service", "Service", query, default, "The service.name of the model service (Prometheus job)."
    )


def model_variable(source_metric: str) -> dashboard.QueryVariable:
    return query_variable(
        "model",
        "Model",
        f'label_values({source_metric}{{job="$service"}}, ml_model_name)',
        SAMPLE_MODEL,
        "ml.model.name of the model served or trained by the service.",
    )


def version_variable(source_metric: str) -> dashboard.QueryVariable:
    return query_variable(
        "version",
        "Version",
        f'label_values({source_metric}{{job="$service", ml_model_name="$model"}}, ml_model_version)',
        ["$__all"],
        "ml.model.version: one, several or all versions of the model.",
        multi=True,
    )


# --- annotations -----------------------------------------------------------------------------


class _AnnotationQuery(models.AnnotationQuery):
    """The SDK's annotation model lacks the per-datasource fields (step, titleFormat, tagKeys, ...)
    that Grafana's Prometheus and Loki annotation support read; they are added here. The query is
    written both at the top (what Grafana's legacy runner for Prometheus and Loki reads) and as
    `target` (the standard annotation model)."""

    def __init__(self, extra: dict[str, object], **kwargs: typing.Any) -> None:
        super().__init__(**kwargs)
        self.extra = extra

    def to_json(self) -> dict[str, object]:
        payload = super().to_json()
        payload.update(self.extra)
        return payload


class AnnotationBuilder(cogbuilder.Builder[models.AnnotationQuery]):
    def __init__(
        self,
        name: str,
        datasource: models.DataSourceRef,
        expr: str,
        color: str,
        extra: dict[str, object],
    ) -> None:
        target: dict[str, object] = {"refId": "Anno", "expr": expr}
        if datasource.type_val == "prometheus":
            target["interval"] = extra.get("step", "")
        else:
            target["queryType"] = "range"
        self._internal = _AnnotationQuery(
            {**extra, "target": target},
            name=name,
            datasource=datasource,
            enable=True,
            hide=False,
            icon_color=color,
            expr=expr,
        )

    def build(self) -> models.AnnotationQuery:
        return self._internal


# A deployment shows as a step of ml_model_deployments_total, or as a new series when a new version
# (or a restarted process) starts counting; both are caught, per model and version.
DEPLOYMENTS_EXPR = (
    "sum by (job, ml_model_name, ml_model_version) ("
    "changes(ml_model_deployments_total[1m]) > 0"
    " or (ml_model_deployments_total unless ml_model_deployments_total offset 1m))"
)
# A fault is drawn as a region for as long as it is active.
FAULTS_EXPR = "max by (ml_fault) (ml_fault_active) > 0"
# Log records with an event.name worth marking (OTLP attributes are structured metadata in Loki,
# dots replaced by underscores).
EVENTS_EXPR = '{service_name=~".+"} | event_name=~"model.deployed|fault.changed|training.finished"'


def annotations() -> list[AnnotationBuilder]:
    """The events drawn on every mlobs dashboard."""
    return [
        AnnotationBuilder(
            "Deployments",
            PROMETHEUS,
            DEPLOYMENTS_EXPR,
            "#3274D9",
            {
                "step": "30s",
                "titleFormat": "Deployed {{ml_model_name}} {{ml_model_version}}",
                "textFormat": "{{job}}",
                "tagKeys": "ml_model_name,ml_model_version",
                "useValueForTime": False,
            },
        ),
        AnnotationBuilder(
            "Faults",
            PROMETHEUS,
            FAULTS_EXPR,
            "#F2495C",
            {
                "step": "30s",
                "titleFormat": "Fault {{ml_fault}} active",
                "tagKeys": "ml_fault",
                "useValueForTime": False,
            },
        ),
        AnnotationBuilder(
            "Events from logs",
            LOKI,
            EVENTS_EXPR,
            "#FF9830",
            {
                "instant": False,
                "titleFormat": "{{event_name}}",
                # model.deployed carries ml.model.version, fault.changed ml.fault (TELEMETRY.md)
                "textFormat": "{{service_name}} {{ml_model_version}} {{ml_fault}}",
                "tagKeys": "event_name,service_name",
            },
        ),
    ]


def transformation(transformer: str, options: dict[str, object]) -> models.DataTransformerConfig:
    return models.DataTransformerConfig(id_val=transformer, options=options)


# --- assembling ------------------------------------------------------------------------------


Section = tuple[str, Sequence[cogbuilder.Builder[models.Panel]]]


def assemble(
    uid: str,
    title: str,
    description: str,
    variables: Sequence[cogbuilder.Builder[models.VariableModel]],
    sections: Sequence[Section],
    *,
    time_from: str = "now-1h",
    links: Sequence[dashboard.DashboardLink] = (),
) -> dict[str, typing.Any]:
    """Lays the sections out as rows, adds the shared annotations and links (and ``links``, after
    the mlobs dashboards menu), returns the JSON dict."""
    builder = (
        dashboard.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags([TAG])
        .editable()
        .tooltip(models.DashboardCursorSync.CROSSHAIR)
        .time(time_from, "now")
        .refresh("30s")
        .timezone("browser")
        .link(dashboards_link())
    )
    for link in links:
        builder = builder.link(link)
    for variable in variables:
        builder = builder.with_variable(variable)
    for annotation in annotations():
        builder = builder.annotation(annotation)
    for row_title, panels in sections:
        builder = builder.with_row(dashboard.Row(row_title))
        for panel in panels:
            builder = builder.with_panel(panel)
    result: dict[str, typing.Any] = json.loads(JSONEncoder().encode(builder.build()))
    result.setdefault("templating", {}).setdefault("list", [])
    for number, panel_json in enumerate(result["panels"], start=1):
        panel_json["id"] = number
    return result

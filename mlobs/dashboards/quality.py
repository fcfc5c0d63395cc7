"""Model quality and drift: are the predictions still good, and did the data drift."""

from __future__ import annotations

from typing import Any

from grafana_foundation_sdk.models.common import StackingMode
from grafana_foundation_sdk.models.dashboard import DynamicConfigValue

from mlobs.config import Stack
from mlobs.dashboards import common as c

UID = "mlobs-quality"
FILE = "ml-model-quality.json"


def _answers(lim: c.Limits) -> str:
    return (
        "Are the predictions still good, and did the data drift? Accuracy, precision, recall and F1 from "
        "feedback, label delay, prediction and confidence distributions, PSI and KS per feature against the "
        f"{lim.psi.warn:g}/{lim.psi.red:g} thresholds, and two versions side by side."
    )


MODEL = 'job="$service", ml_model_name="$model", ml_model_version=~"$version"'
FEATURE = f'{MODEL}, ml_feature=~"$feature"'
COMPARED = 'job="$service", ml_model_name="$model", ml_model_version=~"$baseline|$candidate"'
SCORES = (("accuracy", "Accuracy"), ("precision", "Precision"), ("recall", "Recall"), ("f1", "F1"))
F1_REF = "ABCD"[[score for score, _ in SCORES].index("f1")]  # the query of F1 in a panel of SCORES
LOW_CONFIDENCE: c.Steps = ((None, c.RED), (0.6, c.ORANGE), (0.75, c.GREEN))

NO_DATA: dict[str, str] = {}
# The end-to-end suite checks the first version of the sample model.
E2E_VALUES = {"version": "1"}


def _by_version(metric: str, selector: str = MODEL) -> str:
    return f"max by (ml_model_version) ({metric}{{{selector}}})"


def _last_by_version(metric: str, selector: str) -> str:
    # A quality gauge exists only while its version serves: keep its last value of the time range.
    return f"max by (ml_model_version) (last_over_time({metric}{{{selector}}}[$__range]))"


def _mean_confidence(selector: str, window: str = "$__rate_interval") -> str:
    return (
        f"sum by (ml_model_version) (rate(ml_prediction_confidence_sum{{{selector}}}[{window}]))"
        f" / sum by (ml_model_version) (rate(ml_prediction_confidence_count{{{selector}}}[{window}]))"
    )


def _server_error_ratio(selector: str, window: str) -> str:
    return (
        f"1 - (sum by (ml_model_version) (rate(ml_request_duration_seconds_count{{{selector}, "
        f'outcome=~"success|invalid"}}[{window}]))'
        f" / sum by (ml_model_version) (rate(ml_request_duration_seconds_count{{{selector}}}[{window}])))"
    )


def _p95(selector: str, window: str = "$__rate_interval") -> str:
    return (
        "histogram_quantile(0.95, sum by (le, ml_model_version) "
        f"(rate(ml_request_duration_seconds_bucket{{{selector}}}[{window}])))"
    )


def feedback(lim: c.Limits) -> c.Section:
    scores = lim.accuracy
    return (
        "Quality from feedback",
        [
            lim.f1_override(
                c.stat_panel(
                    "Accuracy, precision, recall, F1",
                    "Rolling scores computed from the labels sent back by /feedback, per version. Below "
                    f"{scores.warn:g} (orange) or {scores.red:g} (red): check drift below and the version comparison.",
                    "percentunit",
                    [
                        c.promql(_by_version(f"ml_model_{score}"), f"{name} v{{{{ml_model_version}}}}", ref=ref)
                        for ref, (score, name) in zip("ABCD", SCORES, strict=True)
                    ],
                    steps=scores.steps,
                    decimals=3,
                    width=12,
                ),
                F1_REF,
            ),
            lim.f1_override(
                c.timeseries_panel(
                    "Scores over time",
                    f"The same scores over time, thresholds drawn at {scores.red:g} and {scores.warn:g}. A fall "
                    "that starts at a deployment annotation is a regression; a slow slide with rising PSI is drift.",
                    "percentunit",
                    [
                        c.promql(_by_version(f"ml_model_{score}"), f"{name} v{{{{ml_model_version}}}}", ref=ref)
                        for ref, (score, name) in zip("ABCD", SCORES, strict=True)
                    ],
                    steps=scores.steps,
                    draw_thresholds=True,
                    decimals=3,
                ),
                F1_REF,
            ),
            c.stat_panel(
                "Labels received",
                "Ground-truth labels received per second. Zero means the scores above are not being "
                "updated: they describe the past.",
                "cps",
                [c.promql(f"sum(rate(ml_feedback_labels_total{{{MODEL}}}[$__rate_interval]))", "labels/s")],
                steps=c.NONE_IS_BAD,
                width=6,
            ),
            c.stat_panel(
                "Label coverage",
                "Labels received per prediction made. The lower it is, the fewer predictions the scores rest on.",
                "percentunit",
                [
                    c.promql(
                        f"sum(rate(ml_feedback_labels_total{{{MODEL}}}[$__rate_interval]))"
                        f" / sum(rate(ml_predictions_total{{{MODEL}}}[$__rate_interval]))",
                        "coverage",
                    )
                ],
                steps=c.NONE_IS_BAD,
                width=6,
            ),
            c.timeseries_panel(
                "Label delay",
                "Time from a prediction to its label (p50, p95). Scores lag reality by about this much: "
                "a problem shows in them only after the delay.",
                "s",
                [
                    c.promql(
                        f"histogram_quantile({q}, sum by (le) "
                        f"(rate(ml_feedback_delay_seconds_bucket{{{MODEL}}}[$__rate_interval])))",
                        f"p{int(q * 100)}",
                        ref=ref,
                    )
                    for ref, q in (("A", 0.5), ("B", 0.95))
                ],
            ),
        ],
    )


def predictions() -> c.Section:
    predictions_rate = f"rate(ml_predictions_total{{{MODEL}}}[$__rate_interval])"
    return (
        "Predictions",
        [
            c.timeseries_panel(
                "Predicted class share",
                "Share of predictions per class. A class share that moves without a change in traffic "
                "is a sign of input drift or of a broken model.",
                "percentunit",
                [
                    c.promql(
                        f"sum by (ml_prediction_class) ({predictions_rate})"
                        f" / ignoring (ml_prediction_class) group_left sum ({predictions_rate})",
                        "{{ml_prediction_class}}",
                    )
                ],
                stack=StackingMode.NORMAL,
                width=8,
            ),
            c.heatmap_panel(
                "Confidence distribution",
                "Histogram of the model's confidence in its predictions over time. Mass moving down "
                "towards 0.5 means the model is unsure: new kinds of input.",
                "percentunit",
                [
                    c.promql(
                        f"sum by (le) (rate(ml_prediction_confidence_bucket{{{MODEL}}}[$__rate_interval]))",
                        "{{le}}",
                        heatmap_format=True,
                    )
                ],
                cell_unit="cps",
                width=8,
            ),
            c.timeseries_panel(
                "Mean confidence by version",
                "Average confidence per version; below 0.75 (orange) or 0.6 (red) the model hesitates on "
                "much of its input.",
                "percentunit",
                [c.promql(_mean_confidence(MODEL), "v{{ml_model_version}}")],
                steps=LOW_CONFIDENCE,
                draw_thresholds=True,
                width=8,
            ),
        ],
    )


def drift(lim: c.Limits) -> c.Section:
    psi = f"max by (ml_feature) (ml_feature_drift_psi{{{FEATURE}}})"
    return (
        "Data drift",
        [
            c.timeseries_panel(
                "PSI per feature",
                "Population stability index of each feature against the training data. Above "
                f"{lim.psi.warn:g} the shift is moderate, above {lim.psi.red:g} significant (dashed lines): "
                "retrain or find the broken input.",
                "none",
                [c.promql(psi, "{{ml_feature}}")],
                steps=lim.psi.steps,
                draw_thresholds=True,
                decimals=3,
                min_value=0,
            ),
            c.bargauge_panel(
                "PSI now, by feature",
                f"Latest PSI per feature, most drifted first; orange above {lim.psi.warn:g}, red above "
                f"{lim.psi.red:g}.",
                "none",
                [c.promql(f"sort_desc({psi})", "{{ml_feature}}", instant=True)],
                steps=lim.psi.steps,
                min_value=0,
                max_value=0.5,
                decimals=3,
            ),
            c.timeseries_panel(
                "KS statistic per feature",
                "Two-sample Kolmogorov-Smirnov statistic of each numeric feature against the training "
                "data: the largest gap between the two distributions (0 = same, 1 = disjoint). Read it "
                "with PSI; both rising on one feature confirms drift.",
                "none",
                [c.promql(f"max by (ml_feature) (ml_feature_drift_ks{{{FEATURE}}})", "{{ml_feature}}")],
                decimals=3,
                min_value=0,
            ),
            c.timeseries_panel(
                "Feature median",
                "Median of each feature's recent values. The drifted feature's median walks away from "
                "its usual level; that tells which input changed, and by how much.",
                "none",
                [
                    c.promql(
                        "histogram_quantile(0.5, sum by (le, ml_feature) "
                        f"(rate(ml_feature_value_bucket{{{FEATURE}}}[$__rate_interval])))",
                        "{{ml_feature}}",
                    )
                ],
                decimals=3,
            ),
        ],
    )


def comparison(lim: c.Limits) -> c.Section:
    # Over the whole time range: a version that stopped serving keeps its row.
    columns = [
        ("A", "Accuracy", _last_by_version("ml_model_accuracy", COMPARED)),
        ("B", "Precision", _last_by_version("ml_model_precision", COMPARED)),
        ("C", "Recall", _last_by_version("ml_model_recall", COMPARED)),
        ("D", "F1", _last_by_version("ml_model_f1", COMPARED)),
        ("E", "Mean confidence", _mean_confidence(COMPARED, "$__range")),
        ("F", "Server error ratio", _server_error_ratio(COMPARED, "$__range")),
        ("G", "p95 latency", _p95(COMPARED, "$__range")),
    ]
    scorecard = lim.f1_override(c.table_panel(
        "Scorecard: $baseline vs $candidate",
        "One row per compared version over the time range: last scores from feedback, mean confidence, "
        "server error ratio and p95 latency while it served. The candidate should match or beat the "
        "baseline on every column before it takes all traffic.",
        "percentunit",
        [c.promql(expr, name, ref=ref, instant=True, as_table=True) for ref, name, expr in columns],
        steps=lim.accuracy.steps,
        transformations=[
            c.transformation("merge", {}),
            c.transformation(
                "organize",
                {
                    "excludeByName": {"Time": True},
                    "renameByName": {
                        "ml_model_version": "Version",
                        **{f"Value #{ref}": name for ref, name, _ in columns},
                    },
                },
            ),
        ],
        decimals=3,
        width=24,
        height=6,
    ).override_by_name("p95 latency", [DynamicConfigValue(id_val="unit", value="s")]), F1_REF)
    return (
        "Version comparison",
        [
            scorecard,
            lim.f1_override(
                c.timeseries_panel(
                    "Accuracy and F1: $baseline vs $candidate",
                    "Accuracy and F1 of the two compared versions over time; the gap between the lines is "
                    "what a switch would gain or lose.",
                    "percentunit",
                    [
                        c.promql(_by_version("ml_model_accuracy", COMPARED), "accuracy v{{ml_model_version}}", ref="A"),
                        c.promql(_by_version("ml_model_f1", COMPARED), "F1 v{{ml_model_version}}", ref="B"),
                    ],
                    steps=lim.accuracy.steps,
                    draw_thresholds=True,
                    decimals=3,
                    width=8,
                ),
                "B",
            ),
            c.timeseries_panel(
                "p95 latency: $baseline vs $candidate (exemplars)",
                "95th percentile request duration of the two versions; exemplars open a request's trace.",
                "s",
                [c.promql(_p95(COMPARED), "v{{ml_model_version}}", exemplar=True)],
                steps=lim.latency.steps,
                draw_thresholds=True,
                width=8,
            ),
            c.timeseries_panel(
                "Mean confidence: $baseline vs $candidate",
                "Average prediction confidence of the two versions; a candidate that is less sure of "
                "the same traffic is a warning even before labels arrive.",
                "percentunit",
                [c.promql(_mean_confidence(COMPARED), "v{{ml_model_version}}")],
                steps=LOW_CONFIDENCE,
                draw_thresholds=True,
                width=8,
            ),
        ],
    )


def build(stack: Stack) -> dict[str, Any]:
    lim = c.Limits.of(stack)
    versions = 'label_values(ml_model_info{job="$service", ml_model_name="$model"}, ml_model_version)'
    return c.assemble(
        UID,
        "ML model quality and drift",
        _answers(lim),
        [
            c.service_variable("label_values(ml_model_info, job)"),
            c.model_variable("ml_model_info"),
            c.version_variable("ml_model_info"),
            c.query_variable(
                "feature",
                "Feature",
                'label_values(ml_feature_drift_psi{job="$service", ml_model_name="$model"}, ml_feature)',
                ["$__all"],
                "Input features (ml.feature) shown in the drift panels.",
                multi=True,
            ),
            c.query_variable("baseline", "Baseline", versions, "1", "The version the candidate is compared against."),
            c.query_variable(
                "candidate", "Candidate", versions, "2", "The version under evaluation (e.g. just deployed)."
            ),
        ],
        [feedback(lim), predictions(), drift(lim), comparison(lim)],
        links=[c.service_overview_link()],
    )

"""Training and deployments: what was trained, how it learned, what went live and what broke."""

from __future__ import annotations

from typing import Any

from mlobs.config import Stack
from mlobs.dashboards import common as c

UID = "mlobs-training"
FILE = "ml-training-deployments.json"
ANSWERS = (
    "What changed? Training runs and their outcome, loss and accuracy per epoch, run and epoch durations,"
    " which version was live when, deployments and faults."
)

TRAIN = 'job="$service", ml_model_name="$model", ml_model_version=~"$version"'
TRAINING_RUN = "needs a training run (service mlobs-training) in the time range"

NO_DATA: dict[str, str] = {
    "variable $service": TRAINING_RUN,
    "variable $model": TRAINING_RUN,
    "variable $version": TRAINING_RUN,
    "Runs by outcome": TRAINING_RUN,
    "Failed runs": TRAINING_RUN,
    "Mean run duration": TRAINING_RUN,
    "Run duration (exemplars)": TRAINING_RUN,
    "Epoch duration (span metrics)": TRAINING_RUN,
    "Loss per epoch": TRAINING_RUN,
    "Accuracy per epoch": TRAINING_RUN,
}

# Every version: a training run produces a new one.
E2E_VALUES: dict[str, str] = {}

PER_EPOCH_TRANSFORMATIONS = [
    c.transformation(
        "convertFieldType",
        {"conversions": [{"targetField": "ml_training_epoch", "destinationType": "number"}], "fields": {}},
    ),
    c.transformation("sortBy", {"sort": [{"field": "ml_training_epoch"}]}),
    c.transformation("organize", {"excludeByName": {"Time": True}, "renameByName": {}}),
]


def runs() -> c.Section:
    return (
        "Training runs",
        [
            c.stat_panel(
                "Runs by outcome",
                "Training runs that finished in the time range, by outcome. Runs that never finish do "
                "not show here: look for training.run spans without an end.",
                "short",
                [
                    c.promql(
                        f"sum by (outcome) (increase(ml_training_runs_total{{{TRAIN}}}[$__range]))",
                        "{{outcome}}",
                        instant=True,
                    )
                ],
                decimals=0,
            ),
            c.stat_panel(
                "Failed runs",
                "Runs in the time range whose outcome was not success. Anything above zero: open the "
                "training logs and the training.run trace.",
                "short",
                [
                    c.promql(
                        f'sum(increase(ml_training_runs_total{{{TRAIN}, outcome!="success"}}[$__range])) or vector(0)',
                        "failed",
                        instant=True,
                    )
                ],
                steps=c.ANY_IS_BAD,
                decimals=0,
            ),
            c.stat_panel(
                "Mean run duration",
                "Average wall time of the runs that finished in the time range. A run much longer than "
                "usual points at data size or resource contention.",
                "s",
                [
                    c.promql(
                        f"sum(increase(ml_training_duration_seconds_sum{{{TRAIN}}}[$__range]))"
                        f" / sum(increase(ml_training_duration_seconds_count{{{TRAIN}}}[$__range]))",
                        "mean",
                        instant=True,
                    )
                ],
            ),
            c.timeseries_panel(
                "Run duration (exemplars)",
                "Median duration of the runs finishing around each point; the exemplar opens the "
                "training.run trace, epoch by epoch.",
                "s",
                [
                    c.promql(
                        "histogram_quantile(0.5, sum by (le) "
                        f"(increase(ml_training_duration_seconds_bucket{{{TRAIN}}}[$__rate_interval])))",
                        "median run duration",
                        exemplar=True,
                    )
                ],
                width=6,
            ),
            c.timeseries_panel(
                "Epoch duration (span metrics)",
                "95th percentile duration of training.epoch spans, from the collector's span metrics. "
                "Epochs that slow down during a run point at memory pressure or contention.",
                "s",
                [
                    c.promql(
                        "histogram_quantile(0.95, sum by (le) (rate(traces_spanmetrics_duration_seconds_bucket"
                        '{service_name="$service", span_name="training.epoch"}[$__rate_interval])))',
                        "p95 epoch",
                        exemplar=True,
                    )
                ],
                width=24,
            ),
        ],
    )


def learning_curves(lim: c.Limits) -> c.Section:
    def per_epoch(metric: str) -> str:
        return f"max by (ml_training_epoch) (last_over_time({metric}{{{TRAIN}}}[$__range]))"

    return (
        "Learning curves",
        [
            c.barchart_panel(
                "Loss per epoch",
                "Training loss at each epoch of the latest run in the time range. It should fall and "
                "flatten; a rise at the end is overfitting or a bad learning rate.",
                "none",
                [c.promql(per_epoch("ml_training_loss"), "loss", instant=True, as_table=True)],
                x_field="ml_training_epoch",
                transformations=PER_EPOCH_TRANSFORMATIONS,
                decimals=4,
            ),
            c.barchart_panel(
                "Accuracy per epoch",
                "Validation accuracy at each epoch of the latest run in the time range; orange below "
                f"{lim.accuracy.warn:g}, red below {lim.accuracy.red:g}. A final value below the live model's "
                "means: do not deploy.",
                "percentunit",
                [c.promql(per_epoch("ml_training_accuracy"), "accuracy", instant=True, as_table=True)],
                x_field="ml_training_epoch",
                steps=lim.accuracy.steps,
                transformations=PER_EPOCH_TRANSFORMATIONS,
                decimals=3,
            ),
        ],
    )


def deployments() -> c.Section:
    return (
        "Deployments and faults",
        [
            c.statetimeline_panel(
                "Live model version",
                "Which version of the model served when (from ml_model_info). Match the switches with "
                "the quality and latency dashboards: a change right after a switch is the new version's.",
                "none",
                [
                    c.promql(
                        'max by (ml_model_version) (ml_model_info{ml_model_name="$model"})',
                        "v{{ml_model_version}}",
                    )
                ],
                steps=((None, c.GREEN),),
                mappings=c.value_text({"1": ("live", c.GREEN)}),
                width=12,
            ),
            c.bargauge_panel(
                "Deployments per version",
                "Times each version was picked up by the serving processes (counted since each process "
                "started). A version deployed again and again is a rollback loop.",
                "short",
                [
                    c.promql(
                        "max by (ml_model_version) (max_over_time("
                        'ml_model_deployments_total{ml_model_name="$model"}[$__range]))',
                        "v{{ml_model_version}}",
                        instant=True,
                    )
                ],
                decimals=0,
                height=6,
            ),
            c.statetimeline_panel(
                "Faults",
                "Faults injected into the sample service (latency, errors, drift, regression, "
                "slow_lookup): red while active. Every symptom on the other dashboards should line up "
                "with one of these.",
                "none",
                [c.promql("max by (ml_fault) (ml_fault_active)", "{{ml_fault}}")],
                steps=((None, c.GREEN), (1, c.RED)),
                mappings=c.value_text({"0": ("off", c.GREEN), "1": ("active", c.RED)}),
                width=24,
            ),
        ],
    )


def build(stack: Stack) -> dict[str, Any]:
    lim = c.Limits.of(stack)
    return c.assemble(
        UID,
        "ML training and deployments",
        ANSWERS,
        [
            c.service_variable("label_values(ml_training_runs_total, job)", c.SAMPLE_TRAINING_SERVICE),
            c.model_variable("ml_training_runs_total"),
            c.version_variable("ml_training_runs_total"),
        ],
        [runs(), learning_curves(lim), deployments()],
        time_from="now-6h",
        links=[c.service_overview_link()],
    )

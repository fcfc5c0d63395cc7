"""The metric instruments of the inference service, named as in TELEMETRY.md.

Every ``ml.*`` metric carries ``ml.model.name`` and ``ml.model.version``. Ids (request,
trace, batch) are recorded on the exemplar histograms only, where a view keeps them out
of the series (``generator.telemetry.VIEWS``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
from opentelemetry.metrics import CallbackOptions, Meter, Observation

from generator.drift import DriftMonitor
from generator.faults import FAULT_KINDS, FaultState
from generator.model import MODEL_NAME, ModelVersion
from generator.quality import RollingQuality
from mlobs.contract import REQUEST_DURATION, STAGE_DURATION

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CONFIDENCE_BUCKETS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
LABEL_DELAY_BUCKETS = (1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 21600, 86400)
# Ten buckets per decade from 0.01 to 10 000: one set of boundaries fits features measured in
# hundredths (smoothness) and in thousands (area) alike, each to within about 25 %.
FEATURE_BUCKETS = tuple(float(f"{v:.3g}") for v in np.logspace(-2, 4, 61))


def model_attributes(model: ModelVersion | None) -> dict[str, str]:
    return {"ml.model.name": MODEL_NAME, "ml.model.version": model.version if model else "none"}


class InferenceMetrics:
    def __init__(
        self,
        meter: Meter,
        current_model: Callable[[], ModelVersion | None],
        drift: DriftMonitor,
        quality: RollingQuality,
        faults: FaultState,
    ) -> None:
        self._current_model = current_model
        self._drift = drift
        self._quality = quality
        self._faults = faults

        self.request_duration = meter.create_histogram(
            REQUEST_DURATION,
            unit="s",
            description="Duration of a prediction request, by outcome",
            explicit_bucket_boundaries_advisory=LATENCY_BUCKETS,
        )
        self.stage_duration = meter.create_histogram(
            STAGE_DURATION,
            unit="s",
            description="Duration of one stage of a prediction",
            explicit_bucket_boundaries_advisory=LATENCY_BUCKETS,
        )
        self.predictions = meter.create_counter("ml.predictions", description="Predictions by class")
        self.confidence = meter.create_histogram(
            "ml.prediction.confidence",
            description="Probability of the predicted class",
            explicit_bucket_boundaries_advisory=CONFIDENCE_BUCKETS,
        )
        self.feature_value = meter.create_histogram(
            "ml.feature.value",
            description="Values of the monitored features as the model receives them",
            explicit_bucket_boundaries_advisory=FEATURE_BUCKETS,
        )
        self.feedback_labels = meter.create_counter("ml.feedback.labels", description="Feedback labels received")
        self.feedback_delay = meter.create_histogram(
            "ml.feedback.delay",
            unit="s",
            description="Time from a prediction to its feedback label",
            explicit_bucket_boundaries_advisory=LABEL_DELAY_BUCKETS,
        )
        self.deployments = meter.create_counter("ml.model.deployments", description="Model versions deployed")

        meter.create_observable_gauge(
            "ml.feature.drift.psi",
            callbacks=[self._observe_psi],
            description="Population stability index of a feature: rolling window against training",
        )
        meter.create_observable_gauge(
            "ml.feature.drift.ks",
            callbacks=[self._observe_ks],
            description="Two-sample Kolmogorov-Smirnov statistic: rolling window against training",
        )
        for name, field in (
            ("ml.model.accuracy", "accuracy"),
            ("ml.model.precision", "precision"),
            ("ml.model.recall", "recall"),
            ("ml.model.f1", "f1"),
        ):
            meter.create_observable_gauge(
                name,
                callbacks=[self._quality_callback(field)],
                description=f"Rolling {field} of the served version, from feedback labels",
            )
        meter.create_observable_gauge(
            "ml.model.info", callbacks=[self._observe_info], description="The model version served (always 1)"
        )
        meter.create_observable_gauge(
            "ml.fault.active", callbacks=[self._observe_faults], description="1 while a fault is injected"
        )

    def _attrs(self) -> dict[str, str]:
        return model_attributes(self._current_model())

    def _observe_psi(self, _: CallbackOptions) -> Iterable[Observation]:
        attrs = self._attrs()
        return [Observation(s.psi, attrs | {"ml.feature": f}) for f, s in self._drift.scores().items()]

    def _observe_ks(self, _: CallbackOptions) -> Iterable[Observation]:
        attrs = self._attrs()
        return [Observation(s.ks, attrs | {"ml.feature": f}) for f, s in self._drift.scores().items()]

    def _quality_callback(self, field: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(_: CallbackOptions) -> Iterable[Observation]:
            model = self._current_model()
            snapshot = self._quality.snapshot(model.version) if model else None
            value = getattr(snapshot, field) if snapshot else None
            return [] if value is None else [Observation(value, model_attributes(model))]

        return observe

    def _observe_info(self, _: CallbackOptions) -> Iterable[Observation]:
        model = self._current_model()
        return [Observation(1, model_attributes(model))] if model else []

    def _observe_faults(self, _: CallbackOptions) -> Iterable[Observation]:
        attrs = self._attrs()
        return [
            Observation(1 if self._faults.is_active(kind) else 0, attrs | {"ml.fault": kind}) for kind in FAULT_KINDS
        ]

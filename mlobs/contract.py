"""The names of the telemetry contract, defined once (generator/TELEMETRY.md documents them).

The sample service emits them, the dashboards, rules, analyzer, `mlobs verify` and the tests read
them: import from here, never restate a name.
"""

from __future__ import annotations

#: The stages of one prediction, in order: each is a span and an ``ml.stage.duration`` sample.
STAGES: tuple[str, ...] = ("validation", "feature_extraction", "inference", "postprocessing")

#: The CLIENT span to the feature store, inside ``feature_extraction`` (not a stage of its own).
FEATURE_LOOKUP_SPAN = "feature_lookup"

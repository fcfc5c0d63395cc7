"""mlobs.contract: the Prometheus names of the contract's instruments and attributes."""

from __future__ import annotations

import pytest

from mlobs import contract as c


def test_prometheus_names_follow_the_otlp_receivers_translation() -> None:
    assert c.REQUEST_DURATION_SECONDS == "ml_request_duration_seconds"
    assert c.STAGE_DURATION_SECONDS == "ml_stage_duration_seconds"
    assert c.TRAINING_DURATION_SECONDS == "ml_training_duration_seconds"
    assert c.prometheus_name(c.ANALYZER_INCIDENTS, "{incident}", counter=True) == "mlobs_analyzer_incidents_total"
    assert c.prometheus_label(c.ATTR_MODEL_VERSION) == "ml_model_version"


def test_an_unknown_unit_is_refused_rather_than_guessed() -> None:
    with pytest.raises(ValueError, match="'furlong'"):
        c.prometheus_name("ml.distance", "furlong")


def test_the_ids_never_label_a_duration_series() -> None:
    assert not set(c.CORRELATION_KEYS) & c.DURATION_SERIES_ATTRIBUTES

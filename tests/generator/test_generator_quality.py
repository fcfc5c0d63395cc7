"""Rolling accuracy, precision, recall and F1 from feedback labels."""

from __future__ import annotations

import pytest
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

from generator.quality import Prediction, PredictionLog, RollingQuality, classification_metrics, label_delay

M, B = "malignant", "benign"


def test_classification_metrics_agree_with_scikit_learn():
    y_true = [M, M, M, B, B, B, B, M, B, M]
    y_pred = [M, B, M, B, M, B, B, M, B, B]
    got = classification_metrics(y_true, y_pred, positive=M)
    assert got is not None
    assert got.samples == 10
    assert got.accuracy == pytest.approx(accuracy_score(y_true, y_pred))
    assert got.precision == pytest.approx(precision_score(y_true, y_pred, pos_label=M))
    assert got.recall == pytest.approx(recall_score(y_true, y_pred, pos_label=M))
    assert got.f1 == pytest.approx(f1_score(y_true, y_pred, pos_label=M))


def test_empty_window_has_no_metrics():
    assert classification_metrics([], [], positive=M) is None


def test_precision_is_undefined_without_positive_predictions():
    got = classification_metrics([M, B], [B, B], positive=M)
    assert got is not None
    assert got.precision is None and got.f1 is None
    assert got.recall == 0.0
    assert got.accuracy == 0.5


def test_recall_is_undefined_without_positive_labels():
    got = classification_metrics([B, B], [M, B], positive=M)
    assert got is not None
    assert got.recall is None and got.precision == 0.0


def test_f1_is_zero_when_precision_and_recall_are_zero():
    got = classification_metrics([M, B], [B, M], positive=M)
    assert got is not None
    assert got.precision == 0.0 and got.recall == 0.0 and got.f1 == 0.0


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError, match="2 labels but 1 predictions"):
        classification_metrics([M, B], [M], positive=M)


def test_rolling_window_forgets_the_oldest_labels():
    quality = RollingQuality(M, window=4, min_samples=1)
    for _ in range(4):
        quality.add("1", M, B)  # all wrong
    assert quality.snapshot("1").accuracy == 0.0
    for _ in range(4):
        quality.add("1", M, M)  # now all right, and the wrong ones roll out
    assert quality.snapshot("1").accuracy == 1.0


def test_quality_is_kept_per_model_version_and_waits_for_min_samples():
    quality = RollingQuality(M, window=100, min_samples=3)
    for _ in range(3):
        quality.add("1", M, M)
    quality.add("2", M, B)
    assert quality.snapshot("1").accuracy == 1.0
    assert quality.snapshot("2") is None  # one label is not a score
    assert quality.snapshot("3") is None


def test_prediction_log_takes_each_prediction_once_and_stays_bounded():
    log = PredictionLog(capacity=2)
    log.remember("a", 0, Prediction(M, "1", 100.0))
    log.remember("b", 0, Prediction(B, "1", 101.0))
    log.remember("c", 0, Prediction(B, "1", 102.0))
    assert log.take("a", 0) is None  # evicted, oldest first
    assert log.take("b", 0) == Prediction(B, "1", 101.0)
    assert log.take("b", 0) is None  # already labelled


def test_label_delay_is_time_since_the_prediction():
    assert label_delay(Prediction(M, "1", 100.0), now=107.5) == 7.5
    assert label_delay(Prediction(M, "1", 100.0), now=90.0) == 0.0

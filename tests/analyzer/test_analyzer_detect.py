"""The latest point against its baseline: robust z (median/MAD) and classic z (mean/σ) on synthetic series."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from analyzer.detect import detect


@pytest.fixture
def noisy() -> np.ndarray:
    return np.random.default_rng(3).normal(10.0, 1.0, 120)


def test_a_spike_is_flagged_by_both_scores(noisy: np.ndarray) -> None:
    a = detect(np.append(noisy, 25.0))
    assert a.robust_anomalous and a.sigma_anomalous and a.anomalous
    assert a.robust_z == pytest.approx(15, abs=2.5)
    assert a.sigma_z == pytest.approx(15, abs=2.5)
    assert a.delta == pytest.approx(15, abs=0.5)


def test_an_ordinary_point_is_not_flagged(noisy: np.ndarray) -> None:
    a = detect(np.append(noisy, 10.8))
    assert not a.anomalous
    assert abs(a.robust_z) < 2 and abs(a.sigma_z) < 2


def test_a_drop_gives_a_negative_score(noisy: np.ndarray) -> None:
    a = detect(np.append(noisy, 2.0))
    assert a.anomalous and a.robust_z < -5 and a.sigma_z < -5


def test_outliers_in_the_baseline_blind_sigma_but_not_the_median(noisy: np.ndarray) -> None:
    baseline = noisy.copy()
    baseline[::10] = 60.0  # a tenth of the baseline is wild
    a = detect(np.append(baseline, 17.0))
    assert a.robust_anomalous, a
    assert not a.sigma_anomalous, a


def test_a_flat_series_that_stays_flat_scores_zero_without_dividing_by_zero() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a RuntimeWarning (0/0) fails the test
        a = detect(np.full(60, 0.25))
    assert a.mad == 0.0 and a.std == 0.0
    assert a.robust_z == 0.0 and a.sigma_z == 0.0
    assert not a.anomalous


def test_a_flat_series_that_jumps_is_flagged_with_finite_scores() -> None:
    values = np.append(np.zeros(60), 0.2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a = detect(values, min_scale=0.005)
    assert a.anomalous
    assert a.robust_z == pytest.approx(0.2 / 0.005)
    assert math.isfinite(a.sigma_z)


def test_mad_zero_falls_back_to_the_mean_absolute_deviation() -> None:
    baseline = np.array([1.0] * 40 + [1.5] * 10)  # more than half identical: MAD = 0, but not flat
    a = detect(np.append(baseline, 1.5))
    assert a.mad == 0.0
    assert 0 < a.robust_z < 10, "scaled by the mean absolute deviation, not by zero"


def test_the_relative_floor_keeps_tiny_wobbles_quiet() -> None:
    values = np.append(np.full(30, 0.004), 0.0041)
    assert detect(values).anomalous, "without a floor any change of a flat series is infinite news"
    assert not detect(values, relative_floor=0.05).anomalous


def test_the_recent_window_is_left_out_of_the_baseline() -> None:
    values = np.append(np.full(60, 1.0) + np.linspace(0, 0.01, 60), [5.0, 5.0, 5.0, 5.0, 5.0])
    a = detect(values, recent=5, min_scale=0.01)
    assert a.median == pytest.approx(1.005, abs=0.001)
    assert a.baseline_points == 60
    assert a.latest == 5.0 and a.anomalous


def test_nans_are_gaps_not_values() -> None:
    values = np.append(np.full(30, 2.0), [np.nan, 9.0, np.nan])
    values[::4] = np.nan
    a = detect(values, recent=3, min_scale=0.1)
    assert a.latest == 9.0
    assert a.median == 2.0
    assert a.anomalous


@pytest.mark.parametrize("values", [[], [1.0], [1.0, 2.0, 3.0], [np.nan] * 20, [1.0] * 10 + [np.nan]])
def test_too_little_data_is_never_anomalous(values: list[float]) -> None:
    a = detect(np.array(values), recent=1)
    assert not a.anomalous
    assert a.robust_z == 0.0 and a.sigma_z == 0.0

"""PSI and the KS statistic, and the rolling drift monitor."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from generator.drift import (
    PSI_EPSILON,
    DriftMonitor,
    FeatureReference,
    bin_proportions,
    ks_statistic,
    psi,
    quantile_edges,
)


def test_psi_of_identical_distributions_is_zero():
    assert psi([0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3, 0.4]) == pytest.approx(0.0, abs=1e-12)


def test_psi_matches_the_formula_by_hand():
    ref, cur = [0.5, 0.5], [0.8, 0.2]
    expected = (0.8 - 0.5) * math.log(0.8 / 0.5) + (0.2 - 0.5) * math.log(0.2 / 0.5)
    assert psi(ref, cur) == pytest.approx(expected, rel=1e-3)


def test_psi_stays_finite_when_a_bin_is_empty():
    value = psi([0.5, 0.5], [1.0, 0.0])
    assert math.isfinite(value)
    # The empty bin is treated as holding epsilon: large, but finite and the same every time.
    full, empty = (1 + PSI_EPSILON) / (1 + 2 * PSI_EPSILON), PSI_EPSILON / (1 + 2 * PSI_EPSILON)
    expected = (full - 0.5) * math.log(full / 0.5) + (empty - 0.5) * math.log(empty / 0.5)
    assert value == pytest.approx(expected)


def test_psi_is_symmetric_in_its_arguments():
    assert psi([0.2, 0.3, 0.5], [0.4, 0.4, 0.2]) == pytest.approx(psi([0.4, 0.4, 0.2], [0.2, 0.3, 0.5]))


def test_quantile_edges_split_the_reference_into_equal_bins():
    values = np.arange(1000, dtype=float)
    edges = quantile_edges(values, bins=10)
    assert len(edges) == 9
    assert np.allclose(bin_proportions(values, edges), 0.1, atol=0.002)


def test_bin_proportions_put_out_of_range_values_in_the_outer_bins():
    edges = np.array([1.0, 2.0])
    assert list(bin_proportions([-5, 0.5, 1.5, 99], edges)) == [0.5, 0.25, 0.25]


def test_reference_psi_grows_with_the_shift():
    rng = np.random.default_rng(0)
    reference = FeatureReference.from_values(rng.normal(10, 2, 2000))
    same = reference.psi(rng.normal(10, 2, 500))
    small = reference.psi(rng.normal(10.5, 2, 500))
    large = reference.psi(rng.normal(13, 2, 500))
    assert same < 0.1 < large
    assert same < small < large
    assert large > 0.2


def test_ks_statistic_matches_scipy_and_detects_a_shift():
    rng = np.random.default_rng(1)
    a, b = rng.normal(0, 1, 400), rng.normal(1, 1, 400)
    assert ks_statistic(a, b) == pytest.approx(stats.ks_2samp(a, b).statistic)
    assert ks_statistic(a, a) == 0.0
    assert ks_statistic(a, b) > 0.3


def test_ks_statistic_of_disjoint_samples_is_one():
    assert ks_statistic([1, 2, 3], [10, 11, 12]) == 1.0


def test_reference_round_trips_through_json_dict():
    reference = FeatureReference.from_values(np.linspace(0, 1, 101))
    again = FeatureReference.from_dict(reference.to_dict())
    assert np.array_equal(again.edges, reference.edges)
    assert np.array_equal(again.proportions, reference.proportions)
    assert np.array_equal(again.sample, reference.sample)


def test_monitor_reports_nothing_below_min_samples_then_scores_the_window():
    rng = np.random.default_rng(2)
    monitor = DriftMonitor(["x"], window=100, min_samples=20)
    monitor.set_references({"x": FeatureReference.from_values(rng.normal(0, 1, 1000))})
    for value in rng.normal(0, 1, 19):
        monitor.observe({"x": float(value)})
    assert monitor.scores() == {}
    monitor.observe({"x": 0.0})
    score = monitor.scores()["x"]
    assert score.samples == 20
    assert math.isfinite(score.psi) and 0 <= score.ks <= 1


def test_monitor_window_rolls_so_drift_shows_and_then_clears():
    rng = np.random.default_rng(3)
    monitor = DriftMonitor(["x"], window=200, min_samples=50)
    monitor.set_references({"x": FeatureReference.from_values(rng.normal(0, 1, 2000))})
    for value in rng.normal(0, 1, 200):
        monitor.observe({"x": float(value)})
    baseline = monitor.scores()["x"]
    for value in rng.normal(3, 1, 200):
        monitor.observe({"x": float(value)})
    drifted = monitor.scores()["x"]
    for value in rng.normal(0, 1, 200):
        monitor.observe({"x": float(value)})
    recovered = monitor.scores()["x"]
    assert baseline.psi < 0.1 and baseline.ks < 0.15
    assert drifted.psi > 0.2 and drifted.ks > 0.5
    assert recovered.psi < 0.1 and recovered.ks < 0.15


def test_monitor_ignores_features_it_does_not_watch():
    monitor = DriftMonitor(["x"], min_samples=1)
    monitor.set_references(
        {"x": FeatureReference.from_values([1.0, 2.0, 3.0]), "y": FeatureReference.from_values([1.0])}
    )
    monitor.observe({"x": 2.0, "y": 5.0})
    assert set(monitor.scores()) == {"x"}

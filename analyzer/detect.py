"""Is the latest point of a series out of line with the points before it?

Two scores, as in the anomaly bands of ``prometheus/rules/anomalies.yml``:

* the robust z-score, ``(x - median) / (1.4826 · MAD)``, which a few outliers in the baseline
  barely move;
* the classic z-score, ``(x - mean) / σ``.

A flat baseline has MAD = 0 (and often σ = 0). The scale then falls back to the mean absolute
deviation (× 1.2533, its consistency factor for a normal law), and is never below a floor: an
absolute one given by the caller (the noise a signal is expected to have, such as 1 ms of
latency) and a share of the median. A flat series that stays flat scores 0; one that jumps
scores high; nothing is ever divided by zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MAD_TO_SIGMA = 1.4826
MEAN_AD_TO_SIGMA = 1.2533
ROBUST_THRESHOLD = 3.5
SIGMA_THRESHOLD = 3.0
_TINY = 1e-12


@dataclass(frozen=True)
class Anomaly:
    """How far the latest point sits from its baseline, and whether that is anomalous."""

    latest: float
    median: float
    mad: float
    mean: float
    std: float
    robust_z: float
    sigma_z: float
    baseline_points: int
    robust_anomalous: bool
    sigma_anomalous: bool

    @property
    def anomalous(self) -> bool:
        return self.robust_anomalous or self.sigma_anomalous

    @property
    def enough_history(self) -> bool:
        return math.isfinite(self.median)

    @property
    def delta(self) -> float:
        return self.latest - self.median


def detect(
    values: np.ndarray | list[float],
    *,
    recent: int = 1,
    min_scale: float = 0.0,
    relative_floor: float = 0.0,
    min_baseline: int = 5,
    robust_threshold: float = ROBUST_THRESHOLD,
    sigma_threshold: float = SIGMA_THRESHOLD,
) -> Anomaly:
    """Score the latest finite point of ``values`` against the points before the last ``recent``.

    ``values[-recent:]`` is the recent window: its last finite value is the one scored; the
    points before it are the baseline (NaNs, such as the gaps of an idle service, are dropped).
    ``min_scale`` and ``relative_floor · |median|`` bound the scale from below. With fewer than
    ``min_baseline`` baseline points, or no finite recent point, both scores are 0.
    """
    series = np.asarray(values, dtype=float)
    recent = max(1, min(recent, len(series))) if len(series) else 1
    window = series[-recent:]
    finite_recent = window[np.isfinite(window)]
    baseline = series[:-recent] if len(series) > recent else series[:0]
    baseline = baseline[np.isfinite(baseline)]

    latest = float(finite_recent[-1]) if finite_recent.size else math.nan
    if baseline.size < min_baseline or not math.isfinite(latest):
        return Anomaly(latest, math.nan, math.nan, math.nan, math.nan, 0.0, 0.0, int(baseline.size), False, False)

    median = float(np.median(baseline))
    deviations = np.abs(baseline - median)
    mad = float(np.median(deviations))
    mean = float(np.mean(baseline))
    std = float(np.std(baseline))
    floor = max(min_scale, relative_floor * abs(median), _TINY)

    robust_scale = MAD_TO_SIGMA * mad
    if robust_scale <= 0.0:
        robust_scale = MEAN_AD_TO_SIGMA * float(np.mean(deviations))
    robust_scale = max(robust_scale, floor)
    sigma_scale = max(std, floor)

    robust_z = (latest - median) / robust_scale
    sigma_z = (latest - mean) / sigma_scale
    return Anomaly(
        latest=latest,
        median=median,
        mad=mad,
        mean=mean,
        std=std,
        robust_z=robust_z,
        sigma_z=sigma_z,
        baseline_points=int(baseline.size),
        robust_anomalous=abs(robust_z) > robust_threshold,
        sigma_anomalous=abs(sigma_z) > sigma_threshold,
    )

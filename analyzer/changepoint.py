"""Where did a series change, and how far did it move after the change?

The continuous detector (:mod:`analyzer.detector`) asks this of every signal of every service at
each step, without waiting for an alert. It follows BARO (Pham et al., FSE 2024; RCAEval's
strongest metric-based method): find the change point, fit a robust scaler (median and IQR) to the
points *before* it, and score the points *after* it in that scale.

* The change point comes from `ruptures <https://centre-borelli.github.io/ruptures-docs/>`_
  (binary segmentation with the least-squares cost, one breakpoint), a maintained library of
  offline change-point detection. BARO uses a multivariate Bayesian online change point detector
  (BOCPD) over all metrics; its package ``fse-baro`` needs pandas, tqdm, requests and pytest at run
  time and works on DataFrames of a whole incident. The analyzer runs on a sliding window of one
  series at a time, where one offline breakpoint per series is what matters, and ruptures gives it
  in well under a millisecond for the ~50 points of a window.
* The robust scaler is BARO's (``sklearn.preprocessing.RobustScaler``: median, interquartile
  range), computed here with numpy; a flat pre-change stretch (IQR = 0) falls back to the
  caller's noise floor, as in :mod:`analyzer.detect`.
* The score after the change is the *median* of the scaled post-change points (BARO takes their
  maximum), or with only two points after it the one nearer the old level: one spike after the
  change point does not make a change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import ruptures

IQR_TO_SIGMA = 1.349  # the IQR of a normal law, in σ
MIN_SEGMENT = 2
_TINY = 1e-12


@dataclass(frozen=True)
class ChangePoint:
    """``index`` is the first point of the new regime (an index into the series given)."""

    index: int
    before_median: float
    before_iqr: float
    after_median: float
    robust_z: float  # (after_median - before_median) / (IQR / 1.349), floored
    points_after: int

    @property
    def delta(self) -> float:
        return self.after_median - self.before_median


def find_change(
    values: np.ndarray | list[float],
    *,
    min_scale: float = 0.0,
    relative_floor: float = 0.0,
    min_before: int = 5,
) -> ChangePoint | None:
    """The single most likely change point of ``values`` (NaNs dropped, their positions kept), or
    None when there are too few points on either side of it."""
    series = np.asarray(values, dtype=float)
    where = np.flatnonzero(np.isfinite(series))
    if where.size < min_before + MIN_SEGMENT:
        return None
    x = series[where]
    if float(np.ptp(x)) <= _TINY:
        return None
    try:
        breaks = ruptures.Binseg(model="l2", min_size=MIN_SEGMENT, jump=1).fit(x.reshape(-1, 1)).predict(n_bkps=1)
    except ruptures.exceptions.BadSegmentationParameters:
        return None
    k = breaks[0] if breaks and breaks[0] < len(x) else None
    if k is None or k < min_before:
        return None
    before, after = x[:k], x[k:]
    median = float(np.median(before))
    q75, q25 = np.percentile(before, [75, 25])
    iqr = float(q75 - q25)
    scale = iqr / IQR_TO_SIGMA
    if scale <= 0.0:
        scale = float(np.mean(np.abs(before - median))) * 1.2533
    scale = max(scale, min_scale, relative_floor * abs(median), _TINY)
    # Two points after the change: both must have moved (the one nearer the old level counts).
    after_median = float(np.median(after)) if after.size >= 3 else float(after[np.argmin(np.abs(after - median))])
    z = (after_median - median) / scale
    return ChangePoint(
        index=int(where[k]),
        before_median=median,
        before_iqr=iqr,
        after_median=after_median,
        robust_z=z if math.isfinite(z) else 0.0,
        points_after=int(after.size),
    )

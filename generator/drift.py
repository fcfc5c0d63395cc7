"""Feature drift: PSI and the two-sample Kolmogorov-Smirnov statistic, over a rolling window.

The reference of a feature is taken from the training split when a model is trained and
stored in its metadata: quantile bin edges, the share of training rows in each bin (for
PSI) and the training values themselves (for KS).

Rules of thumb: PSI above 0.1 is moderate drift, above 0.2 significant.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

PSI_EPSILON = 1e-4
DEFAULT_BINS = 10


def quantile_edges(values: Sequence[float] | np.ndarray, bins: int = DEFAULT_BINS) -> np.ndarray:
    """Inner bin edges that split ``values`` into ``bins`` equally filled bins (duplicates merged)."""
    qs = np.linspace(0, 1, bins + 1)[1:-1]
    return np.unique(np.quantile(np.asarray(values, dtype=float), qs))


def bin_proportions(values: Sequence[float] | np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Share of ``values`` in each of the ``len(edges) + 1`` bins; the outer bins are open."""
    arr = np.asarray(values, dtype=float)
    counts = np.bincount(np.searchsorted(edges, arr, side="right"), minlength=len(edges) + 1)
    return counts / max(len(arr), 1)


def psi(reference: Sequence[float] | np.ndarray, current: Sequence[float] | np.ndarray) -> float:
    """Population stability index of two bin-share vectors.

    Empty bins are smoothed with ``PSI_EPSILON`` (and the shares renormalised) so that the
    logarithm stays finite.
    """
    ref = np.asarray(reference, dtype=float) + PSI_EPSILON
    cur = np.asarray(current, dtype=float) + PSI_EPSILON
    ref /= ref.sum()
    cur /= cur.sum()
    return float(np.sum((cur - ref) * np.log(cur / ref)))


def ks_statistic(reference: Sequence[float] | np.ndarray, current: Sequence[float] | np.ndarray) -> float:
    """The two-sample Kolmogorov-Smirnov statistic D (the largest gap between the two CDFs)."""
    return float(stats.ks_2samp(reference, current).statistic)


@dataclass(frozen=True)
class FeatureReference:
    edges: np.ndarray
    proportions: np.ndarray
    sample: np.ndarray

    @classmethod
    def from_values(cls, values: Sequence[float] | np.ndarray, bins: int = DEFAULT_BINS) -> FeatureReference:
        arr = np.asarray(values, dtype=float)
        edges = quantile_edges(arr, bins)
        return cls(edges=edges, proportions=bin_proportions(arr, edges), sample=arr)

    def to_dict(self) -> dict[str, list[float]]:
        return {
            "edges": [float(x) for x in self.edges],
            "proportions": [float(x) for x in self.proportions],
            "sample": [float(x) for x in self.sample],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Iterable[float]]) -> FeatureReference:
        return cls(
            edges=np.asarray(list(data["edges"]), dtype=float),
            proportions=np.asarray(list(data["proportions"]), dtype=float),
            sample=np.asarray(list(data["sample"]), dtype=float),
        )

    def psi(self, current: Sequence[float] | np.ndarray) -> float:
        return psi(self.proportions, bin_proportions(current, self.edges))

    def ks(self, current: Sequence[float] | np.ndarray) -> float:
        return ks_statistic(self.sample, current)


@dataclass(frozen=True)
class DriftScore:
    psi: float
    ks: float
    samples: int


class DriftMonitor:
    """Rolling windows of recent feature values, scored against the training reference.

    ``observe`` is on the request path and only appends; scoring happens when the metrics
    are collected and is cached until new values arrive.
    """

    def __init__(
        self,
        features: Sequence[str],
        window: int = 500,
        min_samples: int = 50,
    ) -> None:
        self.features = tuple(features)
        self.min_samples = min_samples
        self._windows: dict[str, deque[float]] = {f: deque(maxlen=window) for f in self.features}
        self._references: dict[str, FeatureReference] = {}
        self._lock = threading.Lock()
        self._generation = 0
        self._cached: tuple[int, dict[str, DriftScore]] = (-1, {})

    def set_references(self, references: Mapping[str, FeatureReference]) -> None:
        with self._lock:
            self._references = {f: references[f] for f in self.features if f in references}
            self._generation += 1

    def observe(self, row: Mapping[str, float]) -> None:
        with self._lock:
            for feature in self.features:
                value = row.get(feature)
                if value is not None:
                    self._windows[feature].append(value)
            self._generation += 1

    def scores(self) -> dict[str, DriftScore]:
        """PSI and KS per feature whose window holds at least ``min_samples`` values."""
        with self._lock:
            generation = self._generation
            if self._cached[0] == generation:
                return self._cached[1]
            windows = {f: np.fromiter(w, dtype=float) for f, w in self._windows.items()}
            references = dict(self._references)
        result = {
            feature: DriftScore(psi=ref.psi(values), ks=ref.ks(values), samples=len(values))
            for feature, ref in references.items()
            if len(values := windows[feature]) >= self.min_samples
        }
        with self._lock:
            self._cached = (generation, result)
        return result

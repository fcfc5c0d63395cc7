"""Model quality from feedback labels: accuracy, precision, recall and F1 over a rolling window.

Labels arrive after the prediction (``POST /feedback``). Each prediction is remembered
for a while (bounded), so a late label can be matched to what the model said and to the
model version that said it. Quality is kept per model version: a new version starts with
an empty window instead of inheriting its predecessor's score.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class QualitySnapshot:
    samples: int
    accuracy: float
    precision: float | None  # None when nothing was predicted positive
    recall: float | None  # None when no label was positive
    f1: float | None


def classification_metrics(y_true: Sequence[str], y_pred: Sequence[str], positive: str) -> QualitySnapshot | None:
    """Binary metrics of ``positive``; ``None`` for an empty window, ``None`` fields when undefined."""
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} labels but {len(y_pred)} predictions")
    n = len(y_true)
    if n == 0:
        return None
    tp = fp = fn = correct = 0
    for truth, pred in zip(y_true, y_pred, strict=True):
        correct += truth == pred
        if pred == positive:
            if truth == positive:
                tp += 1
            else:
                fp += 1
        elif truth == positive:
            fn += 1
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    if precision is None or recall is None:
        f1 = None
    elif precision + recall == 0:
        f1 = 0.0
    else:
        f1 = 2 * precision * recall / (precision + recall)
    return QualitySnapshot(samples=n, accuracy=correct / n, precision=precision, recall=recall, f1=f1)


@dataclass(frozen=True)
class Prediction:
    predicted: str
    model_version: str
    at: float  # time.time() of the prediction


class PredictionLog:
    """Recent predictions by (request id, row index), oldest forgotten first."""

    def __init__(self, capacity: int = 100_000) -> None:
        self._capacity = capacity
        self._items: OrderedDict[tuple[str, int], Prediction] = OrderedDict()
        self._lock = threading.Lock()

    def remember(self, request_id: str, index: int, prediction: Prediction) -> None:
        with self._lock:
            self._items[(request_id, index)] = prediction
            while len(self._items) > self._capacity:
                self._items.popitem(last=False)

    def take(self, request_id: str, index: int) -> Prediction | None:
        """The prediction a label belongs to; each prediction takes one label only."""
        with self._lock:
            return self._items.pop((request_id, index), None)


class RollingQuality:
    """The last ``window`` labelled predictions of each model version."""

    def __init__(self, positive: str, window: int = 500, min_samples: int = 10) -> None:
        self.positive = positive
        self.min_samples = min_samples
        self._window = window
        self._pairs: dict[str, deque[tuple[str, str]]] = {}
        self._lock = threading.Lock()

    def add(self, model_version: str, truth: str, predicted: str) -> None:
        with self._lock:
            self._pairs.setdefault(model_version, deque(maxlen=self._window)).append((truth, predicted))

    def snapshot(self, model_version: str) -> QualitySnapshot | None:
        """Metrics of ``model_version``, or ``None`` below ``min_samples`` labels."""
        with self._lock:
            pairs = list(self._pairs.get(model_version, ()))
        if len(pairs) < self.min_samples:
            return None
        return classification_metrics([t for t, _ in pairs], [p for _, p in pairs], self.positive)


def label_delay(prediction: Prediction, now: float | None = None) -> float:
    return max(0.0, (time.time() if now is None else now) - prediction.at)

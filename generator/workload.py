"""Realistic request bodies for the load generator and the benchmark.

Each request is a real patient of the dataset: the online features of that row (the
``mean_*`` and ``*_error`` measurements) with a little measurement noise, and its patient
id, so the service fetches the ``worst_*`` aggregates from the feature store. The true
label of the row is what the feedback later sends.
"""

from __future__ import annotations

import argparse
import random
import re
from dataclasses import dataclass
from typing import Any

from generator.feature_store import patient_id
from generator.model import CLASS_NAMES, FEATURE_NAMES, ONLINE_FEATURES, load_dataset

_DURATION_RE = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)?$")


@dataclass(frozen=True)
class Sample:
    body: dict[str, Any]
    labels: list[str]  # the true label of each row, in order

    @property
    def is_batch(self) -> bool:
        return "instances" in self.body


class Workload:
    """Draws patients at random (reproducibly for a seed) and makes request bodies."""

    def __init__(self, seed: int | None = None, noise: float = 0.03, batch_share: float = 0.05) -> None:
        self._rng = random.Random(seed)
        self.noise = noise
        self.batch_share = batch_share
        data = load_dataset()
        self._rows = data.features
        self._target = data.target
        self._online = [(FEATURE_NAMES.index(n), n) for n in ONLINE_FEATURES]

    def _instance(self) -> tuple[dict[str, Any], str]:
        row = self._rng.randrange(len(self._rows))
        values = self._rows[row]
        features = {
            name: round(max(0.0, float(values[i]) * (1 + self._rng.gauss(0, self.noise))), 6)
            for i, name in self._online
        }
        return {"patient_id": patient_id(row), "features": features}, CLASS_NAMES[self._target[row]]

    def single(self) -> Sample:
        instance, label = self._instance()
        return Sample(body=instance, labels=[label])

    def batch(self, size: int) -> Sample:
        pairs = [self._instance() for _ in range(size)]
        body = {"batch_id": f"batch-{self._rng.getrandbits(48):012x}", "instances": [p[0] for p in pairs]}
        return Sample(body=body, labels=[p[1] for p in pairs])

    def next(self) -> Sample:
        """Mostly single rows; ``batch_share`` of requests are batches of 5 to 20 rows."""
        if self._rng.random() < self.batch_share:
            return self.batch(self._rng.randint(5, 20))
        return self.single()

    def chance(self, share: float) -> bool:
        return self._rng.random() < share

    def jitter(self, seconds: float) -> float:
        """``seconds`` give or take half: labels do not all arrive at once."""
        return seconds * self._rng.uniform(0.5, 1.5)


def parse_duration(text: str) -> float:
    """``500ms``, ``30s``, ``5m``, ``1h`` or plain seconds."""
    match = _DURATION_RE.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 500ms, 30s, 5m or 1h")
    value, unit = float(match.group(1)), match.group(2) or "s"
    return value * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]

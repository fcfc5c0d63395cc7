"""A SIMULATED downstream feature store, in process.

Real model services fetch per-entity features from a feature store (Feast, Redis, a
database) over the network. To keep the sample self-contained this one lives in memory:
it serves the stored features of each patient of the dataset (``P00000`` to ``P00568``:
the last measurements and the ``worst_*`` per-patient aggregates) and waits a small,
realistic network latency per call. Values in the request take precedence over stored
ones. The service traces the call as a CLIENT span with ``peer.service=mlobs-feature-store``,
so the service graph shows it as a downstream node exactly as it would show a real one.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Iterable

from generator.model import load_dataset

PEER_SERVICE = "mlobs-feature-store"


def patient_id(row: int) -> str:
    return f"P{row:05d}"


class SimulatedFeatureStore:
    """Per-patient aggregates in memory, with a network-like delay per lookup.

    The delay is ``MLOBS_FEATURE_STORE_LATENCY_MS`` (default 1.5 ms) plus exponential
    jitter of a third of that, like a round trip to a nearby cache.
    """

    def __init__(self, latency_ms: float | None = None, seed: int | None = None) -> None:
        if latency_ms is None:
            latency_ms = float(os.environ.get("MLOBS_FEATURE_STORE_LATENCY_MS", "1.5"))
        self.latency_s = max(latency_ms, 0.0) / 1000
        self._rng = random.Random(seed)
        data = load_dataset()
        self._rows = {
            patient_id(i): dict(zip(data.feature_names, (float(v) for v in row), strict=True))
            for i, row in enumerate(data.features)
        }

    def __len__(self) -> int:
        return len(self._rows)

    async def lookup(self, ids: Iterable[str], extra_delay: float = 0.0) -> dict[str, dict[str, float]]:
        """The stored features of each known id (one round trip for the whole batch)."""
        delay = self.latency_s + self._rng.expovariate(3 / self.latency_s) if self.latency_s else 0.0
        await asyncio.sleep(delay + extra_delay)
        return {i: self._rows[i] for i in ids if i in self._rows}

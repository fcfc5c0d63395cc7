"""A small client for the Prometheus HTTP API: instant and range queries, readiness.

The RCA only needs the :class:`PrometheusAPI` protocol, so tests hand it a fake that answers
canned vectors instead of a server.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx
import numpy as np


class PrometheusError(RuntimeError):
    """A query that Prometheus refused or that never reached it."""


@dataclass(frozen=True)
class Sample:
    """One series of an instant vector."""

    labels: dict[str, str]
    value: float


@dataclass(frozen=True)
class RangeSeries:
    """One series of a range query, on the query's grid: ``values[i]`` is at ``start + i·step``, NaN where absent."""

    labels: dict[str, str]
    values: np.ndarray = field(repr=False)


class PrometheusAPI(Protocol):
    def query(self, expr: str, at: float) -> list[Sample]: ...

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[RangeSeries]: ...

    def ready(self) -> bool: ...


def grid_size(start: float, end: float, step: float) -> int:
    return int(round((end - start) / step)) + 1


class PrometheusClient:
    """``/api/v1/query`` and ``/api/v1/query_range`` over HTTP (POST, so long PromQL fits)."""

    def __init__(self, base_url: str, *, timeout: float = 5.0, transport: httpx.BaseTransport | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, transport=transport)

    def close(self) -> None:
        self._http.close()

    def _call(self, path: str, params: dict[str, str]) -> Any:
        try:
            response = self._http.post(path, data=params)
        except httpx.HTTPError as exc:
            raise PrometheusError(f"Prometheus at {self.base_url} did not answer: {exc}") from exc
        try:
            body = response.json()
        except ValueError as exc:
            raise PrometheusError(f"Prometheus answered HTTP {response.status_code} without JSON") from exc
        if response.status_code != 200 or body.get("status") != "success":
            raise PrometheusError(f"Prometheus refused the query: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str, at: float) -> list[Sample]:
        data = self._call("/api/v1/query", {"query": expr, "time": f"{at:.3f}"})
        if data.get("resultType") == "scalar":
            return [Sample({}, float(data["result"][1]))]
        return [Sample(dict(item["metric"]), float(item["value"][1])) for item in data.get("result", [])]

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[RangeSeries]:
        data = self._call(
            "/api/v1/query_range", {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"}
        )
        size = grid_size(start, end, step)
        out = []
        for item in data.get("result", []):
            values = np.full(size, np.nan)
            for ts, raw in item.get("values", []):
                index = int(round((float(ts) - start) / step))
                if 0 <= index < size:
                    values[index] = float(raw)
            out.append(RangeSeries(dict(item["metric"]), values))
        return out

    def query_exemplars(self, expr: str, start: float, end: float) -> list[tuple[dict[str, str], list[dict]]]:
        """``/api/v1/query_exemplars``: per series, its exemplars (``labels``, ``value``, ``timestamp``)."""
        data = self._call("/api/v1/query_exemplars", {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}"})
        return [(dict(item.get("seriesLabels", {})), list(item.get("exemplars", []))) for item in data or []]

    def ready(self) -> bool:
        try:
            return self._http.get("/-/ready").status_code == 200
        except httpx.HTTPError:
            return False

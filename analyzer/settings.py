"""The analyzer's settings, from environment variables (the stack sets them; defaults suit a native run)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8010
    prometheus_url: str = "http://127.0.0.1:9090"
    grafana_url: str = "http://127.0.0.1:3000"
    # Where a person's browser reaches Grafana, for the Explore links (in compose, not grafana:3000).
    grafana_public_url: str | None = None
    grafana_user: str = "admin"
    grafana_password: str | None = None
    grafana_token: str | None = None
    max_incidents: int = 200
    query_timeout: float = 5.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env

        def number(name: str, default: float, kind: type) -> float:
            raw = env.get(name, "").strip()
            if not raw:
                return default
            try:
                value = kind(raw)
            except ValueError:
                raise ValueError(f"{name}={raw!r} is not a valid {kind.__name__}") from None
            if value <= 0:
                raise ValueError(f"{name}={raw!r} must be greater than 0")
            return value

        return cls(
            host=env.get("MLOBS_ANALYZER_HOST") or cls.host,
            port=int(number("MLOBS_ANALYZER_PORT", cls.port, int)),
            prometheus_url=env.get("MLOBS_PROMETHEUS_URL") or cls.prometheus_url,
            grafana_url=env.get("MLOBS_GRAFANA_URL") or cls.grafana_url,
            grafana_public_url=env.get("MLOBS_GRAFANA_PUBLIC_URL") or None,
            grafana_user=env.get("GRAFANA_ADMIN_USER") or cls.grafana_user,
            grafana_password=env.get("GRAFANA_ADMIN_PASSWORD") or None,
            grafana_token=env.get("MLOBS_GRAFANA_TOKEN") or None,
            max_incidents=int(number("MLOBS_ANALYZER_MAX_INCIDENTS", cls.max_incidents, int)),
            query_timeout=number("MLOBS_ANALYZER_QUERY_TIMEOUT", cls.query_timeout, float),
        )

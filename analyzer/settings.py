"""The analyzer's settings, from environment variables (the stack sets them; defaults suit a native run)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from mlobs.config import Alerts, AnalyzerSettings, Ports, Sampling

# The defaults are stack.yaml's (mlobs/config.py); the stack passes the values it loaded.
_WINDOWS = AnalyzerSettings()
_PORTS = Ports()


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = _PORTS.analyzer
    prometheus_url: str = f"http://127.0.0.1:{_PORTS.prometheus}"
    grafana_url: str = f"http://127.0.0.1:{_PORTS.grafana}"
    # Where a person's browser reaches Grafana, for the Explore links (in compose, not grafana:3000).
    grafana_public_url: str | None = None
    grafana_user: str = "admin"
    grafana_password: str | None = None
    grafana_token: str | None = None
    max_incidents: int = 200
    # Where the incidents are kept across restarts (a JSON file, written atomically); empty: memory only.
    state_file: str = ""
    query_timeout: float = 5.0
    # The RCA compares the last `recent_seconds` with the `baseline_seconds` before them, at
    # `step_seconds` (fractional below a second), over rates of `rate_window` (stack.yaml:
    # analyzer, alerts.rate_window; mlobs/render.py analyzer_env sets the variables).
    recent_seconds: float = _WINDOWS.recent_window.seconds
    baseline_seconds: float = _WINDOWS.baseline_window.seconds
    step_seconds: float = _WINDOWS.step.seconds
    rate_window: str = str(Alerts().rate_window)
    # A slow trace, for the links of a finding: the tail sampler's threshold (sampling.slow_threshold_ms,
    # which the stack passes to every service as MLOBS_SAMPLING_SLOW_MS).
    slow_seconds: float = Sampling().slow_threshold_ms / 1000
    # Continuous detection (analyzer/detector.py): on unless MLOBS_ANALYZER_DETECT=false; the
    # services it leaves alone (MLOBS_ANALYZER_DETECT_EXCLUDE, comma-separated; its own by default).
    detect: bool = True
    detect_exclude: tuple[str, ...] = ("mlobs-analyzer",)
    # Where a browser opens a trace by id (the Jaeger UI natively); empty: Grafana's Explore only.
    trace_ui_url: str = ""

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
            state_file=env.get("MLOBS_ANALYZER_STATE_FILE", "").strip(),
            query_timeout=number("MLOBS_ANALYZER_QUERY_TIMEOUT", cls.query_timeout, float),
            recent_seconds=number("MLOBS_ANALYZER_RECENT_SECONDS", cls.recent_seconds, float),
            baseline_seconds=number("MLOBS_ANALYZER_BASELINE_SECONDS", cls.baseline_seconds, float),
            step_seconds=number("MLOBS_ANALYZER_STEP_SECONDS", cls.step_seconds, float),
            rate_window=env.get("MLOBS_ANALYZER_RATE_WINDOW") or cls.rate_window,
            slow_seconds=number("MLOBS_SAMPLING_SLOW_MS", cls.slow_seconds * 1000, float) / 1000,
            detect=env.get("MLOBS_ANALYZER_DETECT", "true").strip().lower() not in ("false", "0", "no", "off"),
            detect_exclude=tuple(
                x.strip() for x in env.get("MLOBS_ANALYZER_DETECT_EXCLUDE", ",".join(cls.detect_exclude)).split(",")
                if x.strip()
            ),
            trace_ui_url=(env.get("MLOBS_TRACE_UI_URL") or "").rstrip("/"),
        )

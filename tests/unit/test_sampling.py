"""The keep rule (mlobs/sampling.py): its threshold arithmetic, and the collector config that
renders it, so that an exemplar or log line only links to a trace that tail sampling keeps."""

from __future__ import annotations

import secrets

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from mlobs import config, render, sampling

ROOT = render.ROOT


@pytest.mark.parametrize(("pct", "expected"), [(50, 1 << 55), (25, 3 << 54), (75, 1 << 54), (100, 0)])
def test_threshold_is_the_otel_rejection_threshold(pct: float, expected: int) -> None:
    assert sampling.threshold(pct) == expected


def test_kept_share_matches_the_percentage() -> None:
    ids = [secrets.token_hex(16) for _ in range(20000)]
    for pct in (10, 25, 50):
        share = sum(sampling.kept_by_chance(t, pct) for t in ids) / len(ids)
        assert abs(share - pct / 100) < 0.02, (pct, share)


@given(st.integers(min_value=0, max_value=(1 << 128) - 1), st.floats(min_value=0.5, max_value=99.5))
def test_hex_comparison_equals_the_numeric_rule(tid: int, pct: float) -> None:
    """The collector compares the last 14 hex digits as strings; that must equal R >= T."""
    trace_id = f"{tid:032x}"
    assert (trace_id[18:] >= sampling.threshold_hex(pct)) == sampling.kept_by_chance(trace_id, pct)


def test_errors_slow_and_marked_requests_are_always_kept() -> None:
    dropped = next(t for t in (secrets.token_hex(16) for _ in range(1000)) if not sampling.kept_by_chance(t, 10))
    assert not sampling.kept(dropped, 10)
    assert sampling.kept(dropped, 10, error=True)
    assert sampling.kept(dropped, 10, duration_s=0.6, slow_threshold_s=0.5)
    assert sampling.kept(dropped, 10, keep_mark=True)
    assert sampling.kept(dropped, 100)


@pytest.mark.parametrize("bad", [-1, 101])
def test_out_of_range_percentages_are_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="0..100"):
        sampling.threshold(bad)


def _collector(pct: float, profile: str = "default") -> dict:
    data = yaml.safe_load((ROOT / "stack.yaml").read_text())
    data["sampling"].update(percentage=pct, profile=profile)
    files = render.render(render.compose_target(config.parse(data)))
    return yaml.safe_load(files["otel-collector/config.yaml"])


def test_at_100_percent_nothing_is_cleared_and_every_trace_is_kept() -> None:
    cfg = _collector(100)
    assert "transform/exemplar_links" not in cfg["processors"]
    assert "traces/spanmetrics" not in cfg["service"]["pipelines"]
    assert {"name": "share", "type": "always_sample"} in cfg["processors"]["tail_sampling"]["policies"]


def test_the_debug_profile_keeps_everything_whatever_the_percentage() -> None:
    assert "transform/exemplar_links" not in _collector(10, "debug")["processors"]


def test_below_100_percent_span_metrics_read_the_cleared_copy_and_logs_are_cleared() -> None:
    cfg = _collector(10)
    pipes = cfg["service"]["pipelines"]
    hexdigits = sampling.threshold_hex(10)
    assert pipes["traces/spanmetrics"] == {"receivers": ["forward/spanmetrics"],
                                          "processors": ["transform/exemplar_links"], "exporters": ["span_metrics"]}
    assert "span_metrics" not in pipes["traces"]["exporters"], "the connector must not see the uncleared spans"
    assert "forward/sampling" in pipes["traces"]["exporters"], "tail sampling sees the original trace ids"
    assert "transform/log_links" in pipes["logs"]["processors"]
    share = next(p for p in cfg["processors"]["tail_sampling"]["policies"] if p["name"] == "share")
    assert share["ottl_condition"]["span"] == [f'Substring(span.trace_id.string, 18, 14) >= "{hexdigits}"']
    clear = cfg["processors"]["transform/exemplar_links"]["trace_statements"][0]["statements"][0]
    for must in (hexdigits, "STATUS_CODE_ERROR", str(500 * 1_000_000), sampling.KEEP_ATTRIBUTE):
        assert must in clear

"""The sizing model (mlobs/sizing.py): monotone in the load, two cases worked by hand, measured
figures replacing published ones, and the `mlobs size` command."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mlobs import cli, config, sizing

STACK = config.load(Path(__file__).resolve().parents[2] / "stack.yaml")
GIB = 2**30
FACTS = sizing.collector_facts(STACK)


def outputs(s: sizing.Size) -> list[float]:
    return [s.spans_per_s, s.logs_per_s, s.points_per_s, s.active_series, s.agent.pods, s.agent.cores,
            s.agent.memory, s.gateway.pods, s.gateway.cores, s.gateway.memory, s.tempo_distributors,
            s.tempo_live_stores, *s.bytes_per_day.values(), *s.storage_per_day.values()]


def test_the_model_is_monotone_in_every_input() -> None:
    rates = [1, 100, 1_000, 5_000, 10_000, 50_000, 100_000, 400_000]
    for services, spans, logs in itertools.product((1, 3, 20), (1, 6, 30), (0, 1, 5)):
        previous = None
        for rps in rates:
            now = outputs(sizing.size(sizing.Load(rps, services, spans, logs), STACK, facts=FACTS))
            if previous is not None:
                assert all(b >= a for a, b in zip(previous, now, strict=True)), (rps, services, spans, logs)
            previous = now
    for rps in (1_000, 100_000):
        for field in ("services", "spans_per_request", "log_lines_per_request", "sampled_share"):
            steps = {"services": (1, 2, 10, 50), "spans_per_request": (1, 6, 20), "log_lines_per_request": (0, 1, 4),
                     "sampled_share": (0.01, 0.1, 1.0)}[field]
            loads = [sizing.Load(rps, **{"services": 5, field: v}) for v in steps]
            series = [outputs(sizing.size(load, STACK, facts=FACTS)) for load in loads]
            for a, b in itertools.pairwise(series):
                assert all(y >= x for x, y in zip(a, b, strict=True)), (rps, field)


def test_a_bigger_load_needs_more_gateways_and_a_smaller_one_keeps_the_minimum() -> None:
    small = sizing.size(sizing.Load(10, 1), STACK)
    big = sizing.size(sizing.Load(1_000_000, 1), STACK)
    assert small.gateway.pods == 2 and small.agent.pods == 1
    assert big.gateway.pods > 50 and big.agent.pods > 50


def test_the_collector_facts_come_from_the_rendered_config() -> None:
    assert FACTS == (11, 2.0, 5.0)  # the hand-worked cases below assume these


def test_hand_worked_case_1000_rps_one_service() -> None:
    """1000 req/s, 1 service, 6 spans and 1 log line a request, every trace kept.

    spans 6000/s, logs 1000/s; the service's own metrics 500 series / 5 s = 100 points/s
    agents: 6000/15000 + 100/20000 + 1000/10000 = 0.505 cores -> 1 agent (limit 1 core)
    gateways: 6000/10000 + 0.005 + 0.1 = 0.705 cores -> 2 (the minimum; limit 2 cores)
    connector series: span metrics 1*6*2*(1+11+3) = 180, service graph 2+2*14 = 30, log counts 4:
    214 per gateway, x2 = 428, flushed every 2 s; own 500 + (2+1)*400 = 1700, every 5 s
    -> 2128 active series, 428/2 + 1700/5 = 554 samples/s
    gateway cores: 0.705 + (428/2 + 1200/5)/20000 = 0.7277 -> still 2 gateways
    memory: agents max(0.505*2, 1*0.5) = 1.01 GiB; gateways max(0.7277*2, 2*0.5) = 1.4554 GiB
    Tempo: 6000*500 B = 3 MB/s -> 1 distributor, 1 live-store; 259.2 GB/day received, /5 stored
    Loki: 1000*400 B = 0.4 MB/s -> 34.56 GB/day, /5 stored; Prometheus 554*86400*2 B a day
    """
    s = sizing.size(sizing.Load(1000, 1, 6, 1, 1.0), STACK)
    assert (s.spans_per_s, s.logs_per_s, s.active_series) == (6000, 1000, 2128)
    assert s.points_per_s == pytest.approx(554)
    assert (s.agent.pods, s.gateway.pods, s.tempo_distributors, s.tempo_live_stores) == (1, 2, 1, 1)
    assert s.agent.cores == pytest.approx(0.505) and s.gateway.cores == pytest.approx(0.7277)
    assert s.agent.memory == pytest.approx(1.01 * GIB) and s.gateway.memory == pytest.approx(1.4554 * GIB)
    assert s.bytes_per_day == pytest.approx({"tempo": 2.592e11, "loki": 3.456e10, "prometheus": 95_731_200})
    assert s.storage_per_day == pytest.approx({"tempo": 5.184e10, "loki": 6.912e9, "prometheus": 95_731_200})
    assert s.retention_days == {"prometheus": 15, "loki": 7, "tempo": 2}


def test_hand_worked_case_100k_rps_four_services_10_percent_kept() -> None:
    """100000 req/s, 4 services, 10 spans and 2 log lines a request, 10% of traces kept.

    spans 1e6/s, logs 2e5/s; own metrics 4*500/5 = 400 points/s
    agents: 1e6/15000 + 400/20000 + 2e5/10000 = 86.68667 cores -> 87 agents
    gateways: 1e6/1e4 + 0.02 + 20 = 120.02 cores -> ceil(60.01) = 61
    connector series: 4*10*2*15 + 4*30 + 4*4 = 1336 per gateway, x61 = 81496 every 2 s;
    the collectors' own (61+87)*400 = 59200 every 5 s
    gateway cores: 120.02 + (81496/2 + 59200/5)/20000 = 122.6494 -> ceil(61.32) = 62 gateways
    series at 62: 1336*62 = 82832 + own 2000 + (62+87)*400 = 61600 -> 144432 active,
    82832/2 + 61600/5 = 53736 samples/s
    memory: agents 86.68667*2 = 173.37333 GiB; gateways 122.6494*2 = 245.2988 GiB
    Tempo: 1e6*500*0.1 = 50 MB/s -> 5 distributors, ceil(50/6) = 9 live-stores; 4.32 TB/day
    Loki: 2e5*400 = 80 MB/s -> 6.912 TB/day; Prometheus 53736*86400*2 = 9285580800 B/day
    """
    s = sizing.size(sizing.Load(100_000, 4, 10, 2, 0.1), STACK)
    assert (s.agent.pods, s.gateway.pods, s.active_series) == (87, 62, 144_432)
    assert (s.tempo_distributors, s.tempo_live_stores) == (5, 9)
    assert s.agent.cores == pytest.approx(86.68667, rel=1e-6) and s.gateway.cores == pytest.approx(122.6494)
    assert s.agent.memory == pytest.approx(173.37333 * GIB, rel=1e-6)
    assert s.gateway.memory == pytest.approx(245.2988 * GIB, rel=1e-6)
    assert s.bytes_per_day == pytest.approx({"tempo": 4.32e12, "loki": 6.912e12, "prometheus": 9_285_580_800})


def test_one_retention_for_every_store() -> None:
    s = sizing.size(sizing.Load(1000, 1), STACK, retention="30d")
    assert s.retention_days == {"prometheus": 30, "loki": 30, "tempo": 30}


def test_measured_figures_replace_the_published_ones(tmp_path: Path) -> None:
    figs, why = sizing.figures(tmp_path / "absent.json")
    assert "make bench" in why and all(f.kind != "measured" for f in figs.values())
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"figures": {"gateway_spans_per_core": {"value": 5000, "source": "bench, 2 cores"}}}))
    figs, why = sizing.figures(results)
    assert figs["gateway_spans_per_core"].kind == "measured" and figs["gateway_spans_per_core"].value == 5000
    slower = sizing.size(sizing.Load(100_000, 1), STACK, figs)
    assert slower.gateway.pods > sizing.size(sizing.Load(100_000, 1), STACK).gateway.pods
    results.write_text(json.dumps({"figures": {"spans_per_cor": {"value": 1, "source": "x"}}}))
    with pytest.raises(ValueError, match="unknown figure 'spans_per_cor'"):
        sizing.figures(results)


def test_every_figure_names_its_source() -> None:
    for name, fig in sizing.FIGURES.items():
        assert fig.source and fig.kind in ("published", "assumed"), name
        assert (fig.kind == "assumed") == fig.source.startswith("assumed"), name


def test_the_size_command_prints_the_tiers_and_the_sources() -> None:
    r = CliRunner().invoke(cli.app, ["size", "--rps", "10000", "--services", "3"])
    assert r.exit_code == 0, r.output
    for text in ("collector agents", "collector gateways", "Prometheus active series", "loki", "[published]",
                 "[assumed]", "make bench"):
        assert text in r.output
    assert CliRunner().invoke(cli.app, ["size", "--rps", "0", "--services", "3"]).exit_code == 2
    assert CliRunner().invoke(cli.app, ["size", "--rps", "5", "--services", "1", "--retention", "2x"]).exit_code == 2

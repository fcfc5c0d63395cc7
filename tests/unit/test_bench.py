"""`mlobs bench` without a stack: the throughput search on fakes, the collector counters it reads,
the outputs' shape (results.json, results.md with every figure, its anchor and goal), the bench
stack's ports, the profile summary, the telemetrygen build entry. No test asserts a time."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from generator import bench
from mlobs import bench_analyzer, bench_report, bench_stack, config, sizing
from mlobs import bench_throughput as tp
from mlobs.nativebuild import build, cache

ROOT = Path(__file__).resolve().parents[2]


# ---- the search


def fake_probe(capacity: float, calls: list[tuple[float, float]], fail_long_above: float | None = None):
    """A collector that holds any rate up to ``capacity`` (and, for long steps, up to ``fail_long_above``)."""

    def probe(rate: float, seconds: float) -> tp.Step:
        calls.append((rate, seconds))
        limit = capacity if fail_long_above is None or seconds < 60 else fail_long_above
        held = rate <= limit
        return tp.Step("traces", rate, seconds, held, "held" if held else "refused 10 spans",
                       accepted_per_s=min(rate, limit), collector_cores=1.0)

    return probe


def test_search_bisects_down_to_what_holds_then_confirms_it() -> None:
    calls: list[tuple[float, float]] = []
    found = tp.search("traces", fake_probe(12_000, calls), start=20_000, steps=4, step_seconds=15, confirm_seconds=60)
    assert [r for r, _ in calls[:4]] == [20_000, 10_000, 15_000, 12_500]
    assert all(s == 15 for _, s in calls[:4])
    assert calls[4] == (10_000, 60)  # 12,500 failed: the best that held is confirmed, for the full time
    assert found.held_rate == 10_000
    assert found.confirmed is not None and found.confirmed.rate == 10_000


def test_search_goes_up_while_it_holds() -> None:
    calls: list[tuple[float, float]] = []
    found = tp.search("traces", fake_probe(50_000, calls), start=20_000, steps=3)
    assert [r for r, _ in calls] == [20_000, 40_000, 80_000, 40_000]
    assert found.held_rate == 40_000


def test_a_failed_confirmation_falls_back_once() -> None:
    calls: list[tuple[float, float]] = []
    found = tp.search("logs", fake_probe(20_000, calls, fail_long_above=16_000), start=20_000, steps=2)
    assert calls[-2:] == [(20_000, 60), (15_000, 60)]
    assert found.held_rate == 15_000
    assert [c.held for c in found.confirmations] == [False, True]


def test_without_fallback_a_failed_confirmation_holds_nothing() -> None:
    calls: list[tuple[float, float]] = []
    found = tp.search("logs", fake_probe(20_000, calls, fail_long_above=0), start=20_000, steps=1, fallback=False)
    assert found.held_rate is None and len(found.confirmations) == 1


def test_nothing_holds_means_no_confirmation() -> None:
    calls: list[tuple[float, float]] = []
    found = tp.search("traces", fake_probe(100, calls), start=4_000, steps=10)
    assert found.held_rate is None and found.confirmations == []
    assert [r for r, _ in calls] == [4_000, 2_000, 1_000, 500]  # stops at the granularity


def test_rates_are_rounded() -> None:
    assert tp.round_rate(12_740) == 12_500
    assert tp.round_rate(10) == tp.GRANULARITY


# ---- the collector's counters and the verdict of a step

METRICS = """# HELP otelcol_receiver_accepted_spans_total Number of spans successfully pushed into the pipeline.
otelcol_receiver_accepted_spans_total{receiver="otlp",service_name="otelcol",transport="grpc"} 30000
otelcol_receiver_accepted_spans_total{receiver="forward/sampling",transport=""} 30000
otelcol_receiver_refused_spans_total{receiver="otlp",transport="grpc"} {refused}
otelcol_exporter_send_failed_metric_points_total{exporter="otlp_http/prometheus"} 0
otelcol_exporter_enqueue_failed_spans_total{exporter="otlp_grpc/jaeger"} 0
otelcol_exporter_sent_spans_total{exporter="otlp_grpc/jaeger"} 29000
otelcol_exporter_queue_size{data_type="traces",exporter="otlp_grpc/jaeger"} 3
otelcol_exporter_queue_capacity{data_type="traces",exporter="otlp_grpc/jaeger"} 5000
otelcol_processor_tail_sampling_sampling_trace_dropped_too_early_total{processor="tail_sampling"} 0
"""


def metrics(refused: int = 0) -> tp.Counters:
    return tp.counters(METRICS.replace("{refused}", str(refused)))


def test_counters_take_the_otlp_receiver_and_every_exporter() -> None:
    c = metrics()
    assert c.accepted == {"spans": 30000}  # the forward connector's receiver side is not counted twice
    assert c.sent == {"spans": 29000}
    assert c.queue_size == {"otlp_grpc/jaeger": 3} and c.queue_capacity == {"otlp_grpc/jaeger": 5000}


def test_a_step_holds_only_with_nothing_refused_and_the_queues_drained() -> None:
    before = tp.Counters()
    held, why, d = tp.judge("traces", 2000, 15, before, metrics(), queue_left=0)
    assert held and why == "held" and d["accepted_per_s"] == 2000 and not d["generator_limited"]
    held, why, _ = tp.judge("traces", 2000, 15, before, metrics(refused=5), queue_left=0)
    assert not held and "refused" in why
    held, why, _ = tp.judge("traces", 2000, 15, before, metrics(), queue_left=tp.QUEUE_SLACK + 1)
    assert not held and "queue" in why
    held, why, _ = tp.judge("traces", 2000, 15, before, metrics(), queue_left=0, export_failures=3)
    assert not held and "3 failed exports" in why


def test_the_generator_falling_short_is_not_the_collectors_failure() -> None:
    """2,000 spans/s accepted of 4,000 offered, nothing pushed back: it holds, at 2,000, generator-limited."""
    held, why, d = tp.judge("traces", 4000, 15, tp.Counters(), metrics(), queue_left=0)
    assert held and d["generator_limited"] and d["accepted_per_s"] == 2000
    assert "generator-limited" in why and "50% of 4000/s" in why
    # short of the rate while pushing back (nothing refused, but slow answers): the collector's limit
    slow = tp.counters(METRICS.replace("{refused}", "0") + RPC.format(count=100, sum_s=100 * 0.250))
    held, why, d = tp.judge("traces", 4000, 15, tp.Counters(), slow, queue_left=0)
    assert not held and not d["generator_limited"] and "250 ms per export call" in why
    fast = tp.counters(METRICS.replace("{refused}", "0") + RPC.format(count=100, sum_s=100 * 0.003))
    assert fast.export_calls == 100 and tp.judge("traces", 4000, 15, tp.Counters(), fast, 0)[0]


_EXPORT = 'rpc_method="opentelemetry.proto.collector.trace.v1.TraceService/Export",rpc_response_status_code="OK"'
RPC = (
    "rpc_server_call_duration_sum{{" + _EXPORT + ',rpc_system_name="grpc"}} {sum_s}\n'
    "rpc_server_call_duration_count{{" + _EXPORT + ',rpc_system_name="grpc"}} {count}\n'
    'rpc_server_call_duration_count{{rpc_method="grpc.health.v1.Health/Check",rpc_system_name="grpc"}} 7\n'
)


def test_search_reports_what_was_accepted_and_stops_when_the_generator_saturates() -> None:
    calls: list[tuple[float, float]] = []

    def probe(rate: float, seconds: float) -> tp.Step:  # a generator that delivers at most 16,000/s
        calls.append((rate, seconds))
        accepted = min(rate, 16_000)
        return tp.Step("traces", rate, seconds, True, "held", accepted_per_s=accepted,
                       generator_limited=accepted < tp.ACCEPT_SHARE * rate)

    found = tp.search("traces", probe, start=20_000, steps=4)
    assert [r for r, _ in calls] == [20_000, 40_000, 20_000]  # 40,000 offered delivered no more: stop, confirm
    assert found.held_rate == 16_000 and found.held_offered == 20_000  # the accepted rate, never the offered


def test_failed_exports_are_counted_from_telemetrygen_output() -> None:
    out = (b'2026-12-03T08:00:00Z\tINFO\tstarting the traces generator\n'
           b'2026-12-03T08:00:01Z\tERROR\tlogs/worker.go:100\texporter failed, continuing due to '
           b'--allow-export-failures\t{"error": "context deadline exceeded"}\n'
           b'2026/12/03 08:00:02 traces export: rpc error: code = Unavailable desc = connection refused\n')
    assert tp.count_export_failures(out) == 2
    closing = (b"2026-12-03T08:41:17.299Z\tINFO\tgrpclog/prefix_logger.go:42\t[transport] Closing: rpc error: "
               b"code = Canceled desc = grpc: the client connection is closing\n")
    assert tp.count_export_failures(closing + b"INFO generation of traces is not being throttled\n") == 0


def test_the_pprof_summary_is_parsed() -> None:
    text = """File: otelcol-mlobs
Type: cpu
Duration: 30s, Total samples = 9.50s (31.67%)
      flat  flat%   sum%        cum   cum%
     1.20s 12.63% 12.63%      1.20s 12.63%  runtime.memclrNoHeapPointers
     0.40s  4.21% 16.84%      2.10s 22.11%  go.opentelemetry.io/collector/pdata/ptrace.(*Span).CopyTo
"""
    rows = tp.parse_pprof_top(text)
    assert rows[0] == {"function": "runtime.memclrNoHeapPointers", "flat_pct": 12.63, "cum_pct": 12.63}
    assert rows[1]["function"].startswith(tp.COLLECTOR_PACKAGES) and rows[1]["cum_pct"] == 22.11
    assert tp.pprof_header(text).startswith("Duration: 30s")


def test_telemetrygen_rate_is_per_worker() -> None:
    args = tp.telemetrygen_args(Path("telemetrygen"), "traces", "127.0.0.1:16317", 24_000, 15, workers=4)
    assert args[1] == "traces"
    assert args[args.index("--rate") + 1] == "6000.000"  # spans, children included
    assert args[args.index("--child-spans") + 1] == str(tp.SPANS_PER_TRACE - 1)
    logs = tp.telemetrygen_args(Path("telemetrygen"), "logs", "127.0.0.1:16317", 8_000, 15, workers=4)
    assert logs[logs.index("--rate") + 1] == "2000.000" and "--child-spans" not in logs


# ---- the bench stack's ports


def test_the_bench_ports_clash_with_no_other_stack() -> None:
    ports = bench_stack.stack_ports(config.load(ROOT / "stack.yaml"))
    assert bench_stack.port_problems(ports) == []
    assert max(bench_stack.shifted_ports(ports).values()) < bench_stack.PORT_LIMIT


def test_a_clashing_or_too_high_offset_is_refused() -> None:
    ports = bench_stack.stack_ports(config.load(ROOT / "stack.yaml"))
    assert any("+10000" in p for p in bench_stack.port_problems(ports, offset=10000))
    assert any("not below 32768" in p for p in bench_stack.port_problems(ports, offset=19000))


# ---- the outputs


def step(signal: str, rate: float, held: bool, seconds: float = 15) -> dict:
    return tp.Step(signal, rate, seconds, held, "held" if held else "refused 3 spans", accepted_per_s=rate,
                   collector_cores=1.25, collector_rss_peak=150 * 2**20, generator_cores=0.3).to_dict()


def fake_results() -> dict:
    return {
        "schema": 1, "generated_at": "2026-01-01T00:00:00+0000", "command": "mlobs bench", "duration_seconds": 600,
        "host": {"cpus": 2, "python": "CPython 3.11", "load_before": 1.0, "load_after": 1.5},
        "skipped": {},
        "parts": {
            "overhead": {"off_ms": {"p50": 2.0, "p99": 4.0, "mean": 2.2},
                         "on_ms": {"p50": 2.6, "p99": 5.5, "mean": 2.9},
                         "added_ms": {"p50": 0.6, "p99": 1.5, "mean": 0.7},
                         "profile": {"on": {"samples": 900, "areas": {"opentelemetry": 0.3, "model": 0.2},
                                            "top_self": [], "file": "bench/profile-on.txt"}}},
            "throughput": {
                "traces": {"signal": "traces", "held_rate": 15_000,
                           "steps": [step("traces", 20_000, False), step("traces", 10_000, True),
                                     step("traces", 15_000, True)],
                           "confirmations": [step("traces", 15_000, True, 60)]},
                "logs": {"signal": "logs", "held_rate": None, "steps": [step("logs", 20_000, False)],
                         "confirmations": []},
                "notes": ["no pprof"],
            },
            "freshness": {"requests": 50, "spacing_s": 0.4, "poll_s": 0.25, "timeout_s": 60,
                          "by_kind": {"span-metric exemplar": {"n": 50, "p50": 4.0, "p95": 6.5, "max": 7.0},
                                      "request-metric exemplar": {"n": 9, "p50": 3.0, "p95": 4.5, "max": 5.0},
                                      "trace": {"n": 50, "p50": 7.0, "p95": 8.1, "max": 9.0}},
                          "levers": [{"lever": "batch", "value": "2s", "delays": "x", "cost": "y"}]},
            "startup": {"startup_seconds": 9.5, "healthy_after": {"prometheus": 3.0},
                        "rest_bytes": {"prometheus": 80 * 2**20, "otel-collector": 70 * 2**20},
                        "throughput_peak_bytes": {"otel-collector": 300 * 2**20}},
            "analyzer": {"label": bench_analyzer.LABEL, "services": 10, "operations_per_service": 20,
                         "series_per_incident": 83, "queries_per_incident": 18, "scans": 5,
                         "cpu_ms_per_incident": {"mean": 9.0, "p95": 11.0},
                         "wall_ms_per_incident": {"mean": 15.0, "p95": 30.0},
                         "cpu_ms_per_scan": {"mean": 90.0, "p95": 95.0},
                         "wall_ms_per_scan": {"mean": 150.0, "p95": 200.0}, "step_seconds": 60.0,
                         "injected_first": 10},
        },
    }


def test_every_part_has_rows_with_an_anchor_and_a_command() -> None:
    rows = bench_report.rows(fake_results())
    assert {r.part for r in rows} == set(bench.PARTS)
    assert all(r.anchor and r.command.startswith("mlobs bench") for r in rows)
    goals = {r.figure: r for r in rows if r.goal}
    traces = goals["traces: highest rate held 60 s, 0 refused/failed/dropped"]
    assert traces.met is False and traces.number == 15_000 and "20,000" in traces.goal
    assert goals["logs: highest rate held 60 s, 0 refused/failed/dropped"].value.startswith("none held")
    assert goals["start-up, `up` to all healthy (native, warm binaries)"].met is True


def test_results_json_has_its_shape_and_sizing_reads_its_figures(tmp_path: Path) -> None:
    json_path, md_path = bench_report.write(fake_results(), tmp_path)
    data = json.loads(json_path.read_text())
    assert {"schema", "generated_at", "command", "host", "parts", "rows", "figures", "skipped"} <= set(data)
    assert set(data["parts"]) == set(bench.PARTS)
    assert {"part", "figure", "value", "anchor", "goal", "met", "command", "number"} == set(data["rows"][0])
    # only confirmed rates become figures, per collector core
    assert set(data["figures"]) == {"gateway_spans_per_core"}
    assert data["figures"]["gateway_spans_per_core"]["value"] == 12_000
    figs, why = sizing.figures(json_path)
    assert figs["gateway_spans_per_core"].kind == "measured" and "gateway_spans_per_core" in why


def test_the_markdown_table_has_every_figure_with_its_anchor_and_goal(tmp_path: Path) -> None:
    results = fake_results()
    _, md_path = bench_report.write(results, tmp_path)
    md = md_path.read_text()
    table = [line for line in md.splitlines() if line.startswith("| ") and " | " in line]
    for row in bench_report.rows(results):
        line = next((x for x in table if f"| {bench_report._md_escape(row.figure)} |" in x), None)
        assert line is not None, row.figure
        assert bench_report._md_escape(row.anchor) in line and bench_report._md_escape(row.value) in line
        assert (row.goal or "-") in line
        assert ("**missed**" in line) == (row.met is False)
    assert "(results.json)" in md and "profile-on.txt" in md


def test_a_skipped_part_says_why() -> None:
    results = fake_results()
    del results["parts"]["freshness"]
    results["skipped"] = {"freshness": "not asked for (--parts)"}
    md = bench_report.markdown(results)
    assert "| freshness | not run | not asked for (--parts) |" in md


# ---- the profile summary


SP = "/venv/lib/python3.11/site-packages"
LIB = "/usr/lib/python3.11"
REPO = str(ROOT)
RAW = f"""<module> ({REPO}/generator/service.py:10);run ({SP}/uvicorn/server.py:60);predict ({REPO}/mlobs/s.py:3) 30
<module> ({REPO}/generator/service.py:10);_export ({SP}/opentelemetry/sdk/export.py:40);dumps ({LIB}/json/enc.py:2) 20
<module> ({REPO}/generator/service.py:10);predict_proba ({SP}/sklearn/linear_model/_base.py:400) 40
run ({SP}/opentelemetry/sdk/export.py:10);Condition.wait ({LIB}/threading.py:331) 5
<module> ({LIB}/threading.py:1000);_bootstrap ({LIB}/threading.py:300) 5
"""


def test_the_profile_counts_stdlib_frames_for_their_caller_and_sets_waits_apart() -> None:
    s = bench.summarize_profile(RAW)
    assert s["samples"] == 100 and s["busy_samples"] == 95
    assert s["areas"][bench.WAITING] == 0.05
    assert s["busy_areas"] == {"model": 40 / 95, "service code": 30 / 95, "opentelemetry": 20 / 95,
                               "python runtime and stdlib": 5 / 95}
    assert s["self"][0] == ("predict_proba (sklearn/linear_model/_base.py:400)", 40)
    text = bench.profile_text("on", s, 12, 300)
    assert "opentelemetry" in text and "top 25 by self samples" in text


def test_site_packages_paths_are_read_as_packages() -> None:
    assert bench.frame_area(["x (/venv/lib/python3.11/site-packages/opentelemetry/sdk/a.py:1)"]) == "opentelemetry"


# ---- the analyzer's synthetic world (its ranking, never its time)


def test_the_synthetic_analyzer_world_answers_every_query_and_the_cause_ranks_first() -> None:
    a = bench_analyzer.measure(services=2, ops=10, scans=1)
    assert a["label"].startswith("SYNTHETIC")
    assert a["injected_first"] == 2
    assert a["series_per_incident"] > 10
    assert {"cpu_ms_per_incident", "cpu_ms_per_scan", "wall_ms_per_scan"} <= set(a)


# ---- telemetrygen's build entry


def test_telemetrygen_is_built_only_when_asked_for() -> None:
    assert "telemetrygen" not in build.select_tools(None)
    assert build.select_tools(["telemetrygen"]) == ["telemetrygen"]
    assert build.select_tools(None, {"telemetrygen": "0.161.0"}) == ["telemetrygen"]
    assert cache.go_module_version("telemetrygen", "0.161.0") == "v0.161.0"
    assert cache.cache_entry_name("telemetrygen", "v0.161.0") == "telemetrygen-0.161.0"


def test_unknown_parts_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown part"):
        bench.run(parts=["speed"], out_dir=tmp_path)

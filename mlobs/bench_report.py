"""The bench's outputs: the rows of its table (each figure with its anchor and goal), bench/results.json,
bench/results.md and the figures ``mlobs size`` takes from it (mlobs/sizing.py).

``rows(results)`` is the one list every output prints: the terminal table, the markdown table and
``results.json["rows"]``. A part that did not run has no rows, and says why in ``results["skipped"]``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

MIB = 2**20

COMMAND = {
    "overhead": "mlobs bench --parts overhead",
    "throughput": "mlobs bench --parts throughput",
    "freshness": "mlobs bench --parts freshness",
    "startup": "mlobs bench --parts startup",
    "analyzer": "mlobs bench --parts analyzer",
}

TRACE_ANCHOR = "OpenTelemetry Collector docs/performance.md: ~10-12k spans/s per core"
LOG_ANCHOR = "Splunk OTel Collector sizing: 10k log records/s per core"
EXPORT_ANCHOR = "docker-otel-lgtm and the OpenTelemetry demo export every 60 s"
START_ANCHOR = "docker-otel-lgtm: 26 s to start"
MEMORY_ANCHOR = "docker-otel-lgtm ~1 GB; OpenTelemetry demo ~3.5 GB"
COLLECTOR_MEMORY_ANCHOR = "collector sizing guides: 2 GB per CPU"


@dataclass(frozen=True)
class Row:
    part: str
    figure: str
    value: str  # as shown, with its unit
    anchor: str
    goal: str  # "" when the issue sets none
    met: bool | None  # None: no goal, or not measured
    command: str
    number: float | None = None  # the value as a number, for machines


def _fmt(x: float | None, unit: str = "", digits: int = 0) -> str:
    if x is None:
        return "not measured"
    return f"{x:,.{digits}f}{(' ' + unit) if unit else ''}"


def _overhead_rows(o: dict) -> list[Row]:
    cmd = COMMAND["overhead"]
    off, on, added = o["off_ms"], o["on_ms"], o["added_ms"]
    rows = [
        Row("overhead", "latency added per /predict, p50", f"{added['p50']:+.3f} ms",
            f"telemetry off p50 {off['p50']:.3f} ms, on {on['p50']:.3f} ms (side by side, one run)", "", None, cmd,
            added["p50"]),
        Row("overhead", "latency added per /predict, p99", f"{added['p99']:+.3f} ms",
            f"telemetry off p99 {off['p99']:.3f} ms, on {on['p99']:.3f} ms (side by side, one run)", "", None, cmd,
            added["p99"]),
    ]
    prof = o.get("profile") or {}
    if prof.get("on"):
        on = prof["on"]
        share = on.get("busy_areas", on["areas"]).get("opentelemetry", 0.0)
        rows.append(Row("overhead", "telemetry-on busy samples in OpenTelemetry code (incl. OTLP protobuf)",
                        f"{share:.0%}", f"py-spy, {on.get('busy_samples', on['samples'])} busy samples; "
                        "bench/profile-on.txt (off: bench/profile-off.txt)", "", None, cmd, share))
    return rows


def _throughput_rows(t: dict) -> list[Row]:
    cmd = COMMAND["throughput"]
    out = []
    for signal, unit, anchor, per_core_anchor in (
        ("traces", "spans/s", TRACE_ANCHOR, TRACE_ANCHOR),
        ("logs", "log records/s", LOG_ANCHOR, LOG_ANCHOR),
    ):
        r = t.get(signal)
        if not r:
            continue
        held = r["held_rate"]
        conf = next((c for c in r["confirmations"] if c["held"]), None)
        last = r["confirmations"][-1] if r["confirmations"] else (r["steps"][-1] if r["steps"] else None)
        goal = f"≥ 20,000 {unit} on 2 cores"
        lowest = min((s["rate"] for s in r["steps"]), default=None)
        if held and conf:
            value = f"{_fmt(held, unit)} accepted (offered {_fmt(conf['rate'])}" + (
                "; generator-limited)" if conf.get("generator_limited") else ")")
        else:
            value = f"none held (lowest offered: {_fmt(lowest, unit)})"
        out.append(Row("throughput", f"{signal}: highest rate held 60 s, 0 refused/failed/dropped", value,
                       anchor, goal, bool(held and held >= 20_000), cmd, held))
        shown = conf or last
        if shown:
            cores = shown["collector_cores"]
            per_core = shown["accepted_per_s"] / cores if cores else None
            at = f"at {_fmt(shown['accepted_per_s'], unit)} accepted" + ("" if conf else " (did not hold)")
            out.append(Row("throughput", f"{signal}: collector CPU {at}", f"{cores:.2f} cores",
                           f"telemetrygen on the same cores: {shown['generator_cores']:.2f} cores", "", None, cmd,
                           cores))
            out.append(Row("throughput", f"{signal}: per collector core {at}", _fmt(per_core, f"{unit} per core"),
                           per_core_anchor, "", None, cmd, per_core))
            out.append(Row("throughput", f"{signal}: collector RSS peak {at}",
                           _fmt(shown["collector_rss_peak"] / MIB, "MiB"), COLLECTOR_MEMORY_ANCHOR, "", None, cmd,
                           shown["collector_rss_peak"] / MIB))
    return out


def _freshness_rows(f: dict) -> list[Row]:
    cmd = COMMAND["freshness"]
    out = []
    names = {"span-metric exemplar": "exemplar queryable in Prometheus (span-metric histogram)",
             "request-metric exemplar": "exemplar queryable in Prometheus (request histogram, ml_request_*)",
             "trace": "trace found in the trace store (instrumented caller: its span is the root)",
             "trace, caller not instrumented": "trace found in the trace store (bare traceparent: no root span)"}
    for kind, label in names.items():
        p = f["by_kind"].get(kind) or {}
        if not p.get("n"):
            out.append(Row("freshness", label, "not found", EXPORT_ANCHOR, "p95 ≤ 5 s", False, cmd, None))
            continue
        value = f"p50 {p['p50']:.1f} s, p95 {p['p95']:.1f} s (n={p['n']} of {f['requests']})"
        out.append(Row("freshness", label, value, EXPORT_ANCHOR, "p95 ≤ 5 s", p["p95"] <= 5.0, cmd, p["p95"]))
    return out


def _startup_rows(s: dict) -> list[Row]:
    cmd = COMMAND["startup"]
    rest = s["rest_bytes"]
    total_rest = sum(rest.values()) / MIB
    out = [
        Row("startup", "start-up, `up` to all healthy (native, warm binaries)", f"{s['startup_seconds']:.1f} s",
            START_ANCHOR, "≤ 15 s", s["startup_seconds"] <= 15, cmd, s["startup_seconds"]),
        Row("startup", f"memory at rest, all {len(rest)} components (RSS)", f"{total_rest:,.0f} MiB",
            MEMORY_ANCHOR, "≤ 600 MB incl. trace and log stores", total_rest * MIB <= 600e6, cmd, total_rest),
    ]
    peak = s.get("throughput_peak_bytes") or {}
    if peak:
        out.append(Row("startup", "memory during the throughput runs, sum of each component's peak (RSS)",
                       f"{sum(peak.values()) / MIB:,.0f} MiB", MEMORY_ANCHOR, "", None, COMMAND["throughput"],
                       sum(peak.values()) / MIB))
    return out


def _analyzer_rows(a: dict) -> list[Row]:
    cmd = COMMAND["analyzer"]
    per_scan = a["cpu_ms_per_scan"]["mean"]
    share = per_scan / 1000 / a["step_seconds"]
    scope = f"{a['services']} services x {a['operations_per_service']} operations, synthetic series"
    return [
        Row("analyzer", f"CPU per incident ({scope})", f"{a['cpu_ms_per_incident']['mean']:.1f} ms",
            f"no published figure; p95 {a['cpu_ms_per_incident']['p95']:.1f} ms, wall "
            f"{a['wall_ms_per_incident']['mean']:.1f} ms (the fake Prometheus answers at once)", "",
            None, cmd, a["cpu_ms_per_incident"]["mean"]),
        Row("analyzer", f"CPU per scan, one incident per service ({scope})", f"{per_scan:.0f} ms",
            f"{share:.2%} of one core at one scan per analyzer step ({a['step_seconds']:g} s)", "", None, cmd,
            per_scan),
    ]


def rows(results: dict) -> list[Row]:
    parts = results.get("parts", {})
    out: list[Row] = []
    for name, build in (("overhead", _overhead_rows), ("throughput", _throughput_rows),
                        ("freshness", _freshness_rows), ("startup", _startup_rows), ("analyzer", _analyzer_rows)):
        if parts.get(name):
            out += build(parts[name])
    return out


def sizing_figures(results: dict) -> dict[str, dict[str, Any]]:
    """The measured figures of mlobs/sizing.py: spans and log records per collector core, where confirmed."""
    t = (results.get("parts") or {}).get("throughput") or {}
    out = {}
    when = results.get("generated_at", "")
    for signal, name, unit in (("traces", "gateway_spans_per_core", "spans/s"),
                               ("logs", "logs_per_core", "log records/s")):
        r = t.get(signal) or {}
        conf = next((c for c in r.get("confirmations", []) if c["held"]), None)
        if conf and conf["collector_cores"] > 0:
            out[name] = {
                "value": round(conf["accepted_per_s"] / conf["collector_cores"]),
                "source": f"mlobs bench {when}: {conf['accepted_per_s']:.0f} {unit} accepted and held 60 s with "
                          "0 refused/failed/dropped "
                          f"on the full native pipeline, the collector using {conf['collector_cores']:.2f} cores of "
                          f"a {results.get('host', {}).get('cpus', '?')}-CPU host",
            }
    return out


def _mark(met: bool | None) -> str:
    return "" if met is None else ("met" if met else "**missed**")


def table_lines(rs: list[Row]) -> list[str]:
    """The terminal table."""
    out = []
    part = None
    for r in rs:
        if r.part != part:
            out.append(f"  [{r.part}]")
            part = r.part
        goal = f"  goal {r.goal}: {'met' if r.met else 'MISSED'}" if r.goal else ""
        out.append(f"    {r.figure}: {r.value}{goal}")
        out.append(f"      anchor: {r.anchor}")
    return out


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def markdown(results: dict) -> str:
    rs = rows(results)
    host = results.get("host", {})
    lines = [
        "# mlobs bench results",
        "",
        f"Written by `{results.get('command', 'mlobs bench')}` at {results.get('generated_at', '')} in "
        f"{results.get('duration_seconds', 0):.0f} s, on {host.get('cpus', '?')} CPUs "
        f"({host.get('python', '')}; load average {host.get('load_before', 0):.1f} before, "
        f"{host.get('load_after', 0):.1f} after: other work on the same cores skews every figure). "
        "Raw numbers: [results.json](results.json).",
        "",
        "| part | figure | measured | anchor | goal | | command |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rs:
        lines.append("| " + " | ".join(_md_escape(x) for x in (
            r.part, r.figure, r.value, r.anchor, r.goal or "-", _mark(r.met), f"`{r.command}`")) + " |")
    for part, why in sorted((results.get("skipped") or {}).items()):
        lines.append(f"| {part} | not run | {_md_escape(why)} | | | | `{COMMAND.get(part, 'mlobs bench')}` |")
    parts = results.get("parts", {})
    if parts.get("throughput"):
        lines += ["", "## Throughput search steps", "",
                  "Each step offers a rate with `telemetrygen` (6 spans per trace, a worker per 400 items/s, "
                  "OTLP/gRPC) to the collector of the bench stack, whose full pipeline writes to the real stores. "
                  "The rule judges the collector, not the generator: a step holds when nothing was refused, "
                  "failed to send or to enter a queue, or dropped by tail sampling (on every signal, the derived "
                  "span metrics and log counts included), telemetrygen saw no failed export, and every sending "
                  "queue drained (≤ 2 requests) within 5 s of the processors letting go of the load "
                  "(decision_wait + 1 s tick + batch timeout after its end). The figure is the rate the "
                  "collector's otlp receiver **accepted**, never the rate offered. A step is "
                  "**generator-limited** when it accepted < 95% of the offered rate while the collector pushed "
                  "nothing back (nothing refused, no failed export, the receiver's mean time per export call "
                  "< 100 ms): telemetrygen, on the same 2 cores, did not deliver what it was asked for. The "
                  "search stops going up when a generator-limited step accepts < 5% more than the best so far.",
                  "",
                  "| signal | offered/s | seconds | accepted/s | collector cores | telemetrygen cores | "
                  "collector RSS peak | queue at end → drained after | ms per export call | result |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for signal in ("traces", "logs"):
            r = parts["throughput"].get(signal)
            if not r:
                continue
            for s in r["steps"] + r["confirmations"]:
                drained = s.get("drain_seconds")
                queue = f"{s.get('queue_at_end', 0):.0f} → " + (
                    f"{drained:g} s" if drained is not None else f"not drained ({s.get('queue_left', 0):.0f} left)")
                ms = s.get("export_ms_mean")
                lines.append(f"| {signal} | {s['rate']:,.0f} | {s['seconds']:g} | {s['accepted_per_s']:,.0f} | "
                             f"{s['collector_cores']:.2f} | {s['generator_cores']:.2f} | "
                             f"{s['collector_rss_peak'] / MIB:,.0f} MiB | {queue} | "
                             f"{'-' if ms is None else f'{ms:.1f}'} | {_md_escape(s['why'])} |")
        notes = parts["throughput"].get("notes") or []
        lines += [""] + [f"- {n}" for n in notes]
        profiles = parts["throughput"].get("profiles") or {}
        if profiles:
            lines += ["", "## Where the collector's CPU goes (Go pprof)", ""]
        for signal, prof in sorted(profiles.items()):
            head = (f"- {signal}, {prof.get('seconds', '?')} s of the confirmation offering "
                    f"{prof.get('rate', 0):,.0f}/s (accepted {prof.get('accepted_per_s', 0):,.0f}/s)")
            if prof.get("error"):
                lines.append(f"{head}: no profile ({_md_escape(prof['error'])})")
                continue
            flat = ", ".join(f"{e['function']} {e['flat_pct']:.1f}%" for e in prof.get("top_flat", [])[:6])
            own = ", ".join(f"{e['function']} {e['cum_pct']:.1f}%" for e in prof.get("top_cum_own", [])[:6])
            lines.append(f"{head}: [{prof.get('top_file')}]({prof.get('top_file')}), raw "
                         f"[{prof.get('file')}]({prof.get('file')}) (`go tool pprof`); {prof.get('samples', '')}")
            lines.append(f"  - flat: {_md_escape(flat)}")
            lines.append(f"  - the collector's own code, cumulative: {_md_escape(own)}")
    if parts.get("startup"):
        s = parts["startup"]
        peak = s.get("throughput_peak_bytes") or {}
        lines += ["", "## Memory per component (RSS, MiB)", "",
                  "| component | healthy after (s) | at rest | peak during the throughput runs |",
                  "| --- | --- | --- | --- |"]
        for name in sorted(s["rest_bytes"]):
            after = s.get("healthy_after", {}).get(name)
            lines.append(f"| {name} | {'' if after is None else f'{after:.1f}'} | "
                         f"{s['rest_bytes'][name] / MIB:,.0f} | "
                         f"{(peak[name] / MIB) if name in peak else 0:,.0f} |")
        lines.append(f"| **total** | {s['startup_seconds']:.1f} | {sum(s['rest_bytes'].values()) / MIB:,.0f} | "
                     f"{sum(peak.values()) / MIB:,.0f} |")
    if parts.get("freshness"):
        f = parts["freshness"]
        lines += ["", "## Freshness: what sets each delay", "",
                  f"{f['requests']} requests {f['spacing_s']:g} s apart, each looked for every {f['poll_s']:g} s "
                  "from the moment its response arrived.", "",
                  "| lever | value | delays | what lowering it costs |", "| --- | --- | --- | --- |"]
        for lv in f.get("levers", []):
            lines.append(f"| {_md_escape(lv['lever'])} | {lv['value']} | {_md_escape(lv['delays'])} | "
                         f"{_md_escape(lv['cost'])} |")
    if parts.get("overhead", {}).get("profile"):
        lines += ["", "## Where the telemetry-on time goes (py-spy)", ""]
        for mode in ("on", "off"):
            p = parts["overhead"]["profile"].get(mode)
            if p:
                areas = ", ".join(f"{k} {v:.0%}" for k, v in p.get("busy_areas", p["areas"]).items())
                lines.append(f"- telemetry {mode}: {p.get('busy_samples', p['samples'])} busy samples of "
                             f"{p['samples']}; by area: {areas}; "
                             f"[profile-{mode}.txt](profile-{mode}.txt)")
    if parts.get("analyzer"):
        a = parts["analyzer"]
        lines += ["", f"Analyzer: {a['label']}; {a['series_per_incident']} series over "
                      f"{a['queries_per_incident']} queries per incident; the injected cause ranked first in "
                      f"{a.get('injected_first', '?')} of {a['services']} services."]
    return "\n".join(lines) + "\n"


def write(results: dict, out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    results = dict(results)
    results["rows"] = [asdict(r) for r in rows(results)]
    results["figures"] = sizing_figures(results)
    json_path, md_path = out_dir / "results.json", out_dir / "results.md"
    json_path.write_text(json.dumps(results, indent=2, sort_keys=False, default=str) + "\n")
    md_path.write_text(markdown(results))
    return json_path, md_path


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")

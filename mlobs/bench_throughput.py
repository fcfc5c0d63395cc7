"""Collector throughput: the highest rate the collector holds, with ``telemetrygen`` as the load.

One *step* offers a rate of spans or log records for some seconds, over OTLP/gRPC, to the bench
stack's collector (its full pipeline, with the real stores behind it), then reads the collector's
own metrics. The verdict judges the collector, not the generator. A step *holds* when, over it:

* nothing was refused (``otelcol_receiver_refused_*``), failed to send
  (``otelcol_exporter_send_failed_*``), failed to enter a sending queue
  (``otelcol_exporter_enqueue_failed_*``) or was dropped by tail sampling before its decision
  (``otelcol_processor_tail_sampling_sampling_trace_dropped_too_early``), on any signal: the span
  metrics and log counts the collector derives go through the pipeline too;
* telemetrygen saw no failed export (a timeout the receiver does not count as a refusal);
* the exporters' sending queues drained (``QUEUE_SLACK`` requests or fewer) within ``drain``
  seconds of the end of the load: a queue that does not drain means a store that does not keep up,
  and a loss once it is full.

The figure of a step is the rate the collector *accepted* (``otelcol_receiver_accepted_*`` of the
otlp receiver over the step), never the rate offered. telemetrygen often delivers less than it is
asked for on shared cores; a step is *generator-limited* when it accepted less than
``ACCEPT_SHARE`` of the offered rate while the collector pushed nothing back (nothing refused, no
failed export, the receiver's mean time per export call below ``FAST_EXPORT_MS``): the shortfall
is the generator's, and the collector's capacity is at least the accepted rate.

``search`` is a short bracketing search over offered rates (double while it holds, halve while it
does not, then bisect), then one confirmation at the offered rate whose held step accepted the most,
for the full confirmation time; if that fails, one more at ``FALLBACK`` of it. It stops going up
when a generator-limited step accepted no more than the best so far (offering more only loads the
shared cores). It takes the step as a function, so it runs on fakes in tests.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

from mlobs import bench_stack

ACCEPT_SHARE = 0.95  # below this share of the offered rate accepted, a step is generator-limited
QUEUE_SLACK = 2  # requests a drained sending queue may still hold (the sample service's own telemetry)
FAST_EXPORT_MS = 100.0  # the receiver's mean time per export call under which it slowed no sender
FALLBACK = 0.75
GRANULARITY = 500  # rates are rounded to this many items/s
SPANS_PER_TRACE = 6  # as the sample service: a server span, four stages, one client span (mlobs/sizing.py)
#: telemetrygen paces each worker with a Go rate limiter that waits per item: above ~500 items/s a
#: worker falls behind its rate (timer granularity), so the load is spread over enough workers.
RATE_PER_WORKER = 400
MIN_WORKERS = 4

#: signal -> (telemetrygen subcommand, item name in the collector's metrics, unit)
SIGNALS: dict[str, tuple[str, str, str]] = {
    "traces": ("traces", "spans", "spans/s"),
    "logs": ("logs", "log_records", "log records/s"),
}
ITEM_KINDS = ("spans", "log_records", "metric_points")


# ---- the collector's own metrics

_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Prometheus text format -> (name, labels, value) per sample."""
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _LINE.match(line)
        if not m:
            continue
        try:
            value = float(m.group(3))
        except ValueError:
            continue
        out.append((m.group(1), dict(_LABEL.findall(m.group(2) or "")), value))
    return out


@dataclass
class Counters:
    """The collector counters a step needs, summed as said."""

    accepted: dict[str, float] = field(default_factory=dict)  # item kind -> accepted by the otlp receiver
    refused: dict[str, float] = field(default_factory=dict)  # item kind -> refused by any receiver
    send_failed: dict[str, float] = field(default_factory=dict)
    enqueue_failed: dict[str, float] = field(default_factory=dict)
    sent: dict[str, float] = field(default_factory=dict)  # item kind -> sent by the exporters to a store
    dropped_too_early: float = 0.0
    queue_size: dict[str, float] = field(default_factory=dict)  # exporter -> requests in its queue
    queue_capacity: dict[str, float] = field(default_factory=dict)
    # the OTLP gRPC receiver's time per export call (rpc.server duration, OTLP services only)
    export_calls: float = 0.0
    export_ms: float = 0.0  # summed over the calls


def _metric(name: str, stem: str) -> str | None:
    """The item kind of ``otelcol_<stem>_<kind>[_total]``, or None."""
    for kind in ITEM_KINDS:
        if name in (f"otelcol_{stem}_{kind}", f"otelcol_{stem}_{kind}_total"):
            return kind
    return None


def counters(text: str) -> Counters:
    c = Counters()
    for name, labels, value in parse_metrics(text):
        if kind := _metric(name, "receiver_accepted"):
            if labels.get("receiver") == "otlp":
                c.accepted[kind] = c.accepted.get(kind, 0) + value
        elif kind := _metric(name, "receiver_refused"):
            c.refused[kind] = c.refused.get(kind, 0) + value
        elif kind := _metric(name, "exporter_send_failed"):
            c.send_failed[kind] = c.send_failed.get(kind, 0) + value
        elif kind := _metric(name, "exporter_enqueue_failed"):
            c.enqueue_failed[kind] = c.enqueue_failed.get(kind, 0) + value
        elif kind := _metric(name, "exporter_sent"):
            c.sent[kind] = c.sent.get(kind, 0) + value
        elif name.startswith("otelcol_processor_tail_sampling_sampling_trace_dropped_too_early"):
            c.dropped_too_early += value
        elif name == "otelcol_exporter_queue_size":
            c.queue_size[labels.get("exporter", "")] = value
        elif name == "otelcol_exporter_queue_capacity":
            c.queue_capacity[labels.get("exporter", "")] = value
        elif name in _RPC_DURATION and "opentelemetry.proto.collector" in (
                labels.get("rpc_method", "") + labels.get("rpc_service", "")):
            if name.endswith("_count"):
                c.export_calls += value
            else:
                c.export_ms += value * _RPC_DURATION[name]
    return c


#: the gRPC server's duration histogram (sum and count) -> milliseconds per unit of its sum: the
#: collector 0.165 exports rpc.server.call.duration in seconds, unsuffixed; older ones
#: rpc.server.duration in milliseconds
_RPC_DURATION = {"rpc_server_call_duration_sum": 1000.0, "rpc_server_call_duration_count": 0.0,
                 "rpc_server_call_duration_seconds_sum": 1000.0, "rpc_server_call_duration_seconds_count": 0.0,
                 "rpc_server_duration_milliseconds_sum": 1.0, "rpc_server_duration_milliseconds_count": 0.0}


def _delta(after: Mapping[str, float], before: Mapping[str, float]) -> dict[str, float]:
    return {k: after.get(k, 0) - before.get(k, 0) for k in set(after) | set(before)
            if after.get(k, 0) - before.get(k, 0)}


def scrape(metrics_url: str) -> Counters:
    return counters(httpx.get(f"{metrics_url}/metrics", timeout=10).text)


# ---- one step


@dataclass
class Step:
    signal: str
    rate: float  # offered, items/s
    seconds: float
    held: bool
    why: str  # what failed, or "held"
    accepted_per_s: float = 0.0
    refused: dict[str, float] = field(default_factory=dict)
    send_failed: dict[str, float] = field(default_factory=dict)
    enqueue_failed: dict[str, float] = field(default_factory=dict)
    dropped_too_early: float = 0.0
    sent: dict[str, float] = field(default_factory=dict)
    queue_at_end: float = 0.0  # the fullest sending queue just before the load ended, requests
    queue_left: float = 0.0  # the fullest sending queue when the drain wait ended, requests
    drain_seconds: float | None = None  # from the end of the load until every queue drained; None: it did not
    generator_limited: bool = False  # accepted < ACCEPT_SHARE of the offered rate, the collector pushing nothing back
    export_failures: int = 0  # failed exports telemetrygen reported
    export_ms_mean: float | None = None  # the receiver's mean time per export call
    collector_cores: float = 0.0  # CPU seconds of the collector per second of load
    collector_rss_peak: int = 0  # bytes
    generator_cores: float = 0.0  # telemetrygen's own CPU, on the same cores
    generator_exit: int = 0
    rss_peak_by_program: dict[str, int] = field(default_factory=dict)
    profile: dict | None = None  # the collector's Go CPU profile taken during the step (collector_profile)

    def to_dict(self) -> dict:
        return asdict(self)


def judge(signal: str, rate: float, seconds: float, before: Counters, after: Counters,
          queue_left: float, export_failures: int = 0) -> tuple[bool, str, dict]:
    """Whether a step held, why not, and its deltas. ``queue_left``: the fullest sending queue at the
    end of the drain wait; ``export_failures``: the failed exports telemetrygen reported.

    The offered ``rate`` decides only whether the step was generator-limited, never whether it held."""
    item = SIGNALS[signal][1]
    d = {
        "accepted": _delta(after.accepted, before.accepted),
        "refused": _delta(after.refused, before.refused),
        "send_failed": _delta(after.send_failed, before.send_failed),
        "enqueue_failed": _delta(after.enqueue_failed, before.enqueue_failed),
        "sent": _delta(after.sent, before.sent),
        "dropped_too_early": after.dropped_too_early - before.dropped_too_early,
    }
    accepted_per_s = d["accepted"].get(item, 0) / seconds
    calls = after.export_calls - before.export_calls
    d["export_ms_mean"] = (after.export_ms - before.export_ms) / calls if calls > 0 else None
    problems = []
    for key in ("refused", "send_failed", "enqueue_failed"):
        if any(v > 0 for v in d[key].values()):
            problems.append(f"{key} " + ", ".join(f"{v:.0f} {k}" for k, v in sorted(d[key].items()) if v > 0))
    if d["dropped_too_early"] > 0:
        problems.append(f"tail sampling dropped {d['dropped_too_early']:.0f} traces before deciding")
    if export_failures:
        problems.append(f"telemetrygen saw {export_failures} failed exports")
    if queue_left > QUEUE_SLACK:
        problems.append(f"a sending queue still held {queue_left:.0f} requests after the drain wait")
    d["accepted_per_s"] = accepted_per_s
    short = accepted_per_s < ACCEPT_SHARE * rate
    slow = d["export_ms_mean"] is not None and d["export_ms_mean"] >= FAST_EXPORT_MS
    d["generator_limited"] = short and not problems and not slow
    if short and not problems and slow:
        problems.append(f"accepted {accepted_per_s:.0f}/s of {rate:.0f}/s offered, the receiver taking "
                        f"{d['export_ms_mean']:.0f} ms per export call")
    why = "; ".join(problems) or "held"
    if d["generator_limited"]:
        why = f"held; generator-limited (telemetrygen delivered {accepted_per_s / rate:.0%} of {rate:.0f}/s)"
    return not problems, why, d


def workers_for(rate: float) -> int:
    return max(MIN_WORKERS, math.ceil(rate / RATE_PER_WORKER))


def telemetrygen_args(binary: Path, signal: str, endpoint: str, rate: float, seconds: float,
                      workers: int | None = None) -> list[str]:
    """The command line: ``rate`` items/s over ``workers`` (telemetrygen's --rate is items per second
    per worker; for traces it counts spans, children included, as measured: traces of SPANS_PER_TRACE)."""
    workers = workers or workers_for(rate)
    per_worker = rate / workers
    args = [str(binary), SIGNALS[signal][0], "--otlp-endpoint", endpoint, "--otlp-insecure",
            "--workers", str(workers), "--rate", f"{per_worker:.3f}", "--duration", f"{seconds:g}s",
            "--allow-export-failures", "--service", "mlobs-bench-telemetrygen", "--interval", "10s"]
    if signal == "traces":
        args += ["--child-spans", str(SPANS_PER_TRACE - 1)]
    else:
        args += ["--body", "bench: a log record of about the size of the sample service's lines, 80 chars"]
    return args


#: a failed export in telemetrygen's output: its log and metric workers log each one at ERROR under
#: --allow-export-failures ("exporter failed, continuing ..."); the trace SDK's batch processor hands
#: its export errors to the global handler, which prints them with Go's log ("2026/12/03 08:00:00
#: traces export: ..."). gRPC's own INFO lines (a connection closing at the end) are not failures.
EXPORT_FAILURE = re.compile(rb"(?m)^(?:.*\tERROR\t.*exporter failed.*|\d{4}/\d\d/\d\d \d\d:\d\d:\d\d .*export.*)$")


def count_export_failures(output: bytes) -> int:
    return len(EXPORT_FAILURE.findall(output))


def capture_profile(pprof_url: str, seconds: float, out: Path, result: dict) -> None:
    """GET the collector's CPU profile (pprof extension, /debug/pprof/profile) into ``out``; what
    happened goes into ``result`` (a thread runs this beside the load)."""
    try:
        r = httpx.get(f"{pprof_url}/debug/pprof/profile", params={"seconds": f"{seconds:.0f}"},
                      timeout=seconds + 30)
        r.raise_for_status()
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(r.content)
        result.update(file=out.name, seconds=round(seconds), bytes=len(r.content))
    except (httpx.HTTPError, OSError) as e:
        result["error"] = f"{type(e).__name__}: {e}"


#: one row of ``go tool pprof -top``: flat, flat%, sum%, cum, cum%, function
_PPROF_ROW = re.compile(r"^\s*(\S+)\s+([\d.]+)%\s+([\d.]+)%\s+(\S+)\s+([\d.]+)%\s+(.+?)\s*$")
#: the collector's own code (and its components'), as opposed to the Go runtime and libraries
COLLECTOR_PACKAGES = ("go.opentelemetry.io/collector", "github.com/open-telemetry/opentelemetry-collector-contrib")


def parse_pprof_top(text: str) -> list[dict]:
    """``go tool pprof -top`` -> [{function, flat_pct, cum_pct}], in its order."""
    out = []
    for line in text.splitlines():
        m = _PPROF_ROW.match(line)
        if m:
            out.append({"function": m.group(6), "flat_pct": float(m.group(2)), "cum_pct": float(m.group(5))})
    return out


def pprof_header(text: str) -> str:
    """The ``Duration: ..., Total samples = ...`` line of ``go tool pprof -top``."""
    return next((line.strip() for line in text.splitlines() if line.startswith("Duration:")), "")


def pprof_top(pb: Path, nodes: int = 30) -> tuple[str, dict]:
    """The text summary of a CPU profile (flat, then cumulative) and its top entries; needs ``go``."""
    go = shutil.which("go") or "/usr/local/go/bin/go"
    flat = subprocess.run([go, "tool", "pprof", "-top", f"-nodecount={nodes}", str(pb)],
                          capture_output=True, text=True, timeout=120, check=True).stdout
    cum = subprocess.run([go, "tool", "pprof", "-top", "-cum", "-nodecount=200", str(pb)],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    own = [r for r in parse_pprof_top(cum) if r["function"].startswith(COLLECTOR_PACKAGES)]
    text = (f"== go tool pprof -top -nodecount={nodes} {pb.name}\n{flat}\n"
            f"== go tool pprof -top -cum {pb.name}: the collector's own functions\n"
            + "\n".join(f"{r['cum_pct']:6.2f}%  {r['function']}" for r in own[:nodes]) + "\n")
    return text, {"samples": pprof_header(flat), "top_flat": parse_pprof_top(flat)[:10], "top_cum_own": own[:10]}


DRAIN_SECONDS = 5.0  # how long the queues may take to drain once the pipeline has let go of the load


def release_wait(stack: bench_stack.BenchStack) -> float:
    """Seconds from the end of the load until the processors have let go of the last of it: tail
    sampling's decision_wait (the last traces are decided then), its 1 s tick, the batch timeout."""
    return stack.stack.sampling.decision_wait.seconds + 1.0 + 0.2


def run_step(stack: bench_stack.BenchStack, binary: Path, signal: str, rate: float, seconds: float,
             settle: float = 2.0, log: Path | None = None, drain: float | None = None,
             profile: Path | None = None) -> Step:
    """Offer ``rate`` for ``seconds``; wait ``release_wait`` (the processors let go of the load), poll
    the sending queues until they drain (at most ``drain`` seconds more), wait ``settle`` seconds
    (the last sends and their failures), and read the counters. ``profile``: take the collector's CPU
    profile over the middle of the load into that file."""
    metrics = stack.url("collector_metrics")
    pid = stack.pid("otel-collector")
    if pid is None:
        return Step(signal, rate, seconds, False, "the collector is not running")
    drain = DRAIN_SECONDS if drain is None else drain
    tree = bench_stack.process_tree(pid)
    before = scrape(metrics)
    queue_at_end = 0.0
    args = telemetrygen_args(binary, signal, stack.endpoint("otlp_grpc"), rate, seconds)
    log_offset = log.stat().st_size if log and log.exists() else 0
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
    profiled: dict = {}
    profiler = None
    with bench_stack.MemorySampler(stack.state) as memory:
        cpu0, t0 = bench_stack.cpu_seconds(tree), time.monotonic()
        proc = subprocess.Popen(args, stdout=out, stderr=out)
        usage: dict[str, object] = {}

        def wait() -> None:
            _, status, ru = os.wait4(proc.pid, 0)
            usage["status"], usage["ru"] = status, ru

        waiter = threading.Thread(target=wait, daemon=True)
        waiter.start()
        if profile is not None:  # the middle of the load: a quarter in, for half of it
            waiter.join(timeout=seconds / 4)
            profiler = threading.Thread(target=capture_profile, daemon=True,
                                        args=(stack.url("collector_pprof"), seconds / 2, profile, profiled))
            profiler.start()
        # the queues just before the load ends
        waiter.join(timeout=max(0.0, seconds - 1.0 - (time.monotonic() - t0)))
        if waiter.is_alive():
            queue_at_end = max(scrape(metrics).queue_size.values(), default=0.0)
        waiter.join()
        cpu1, t1 = bench_stack.cpu_seconds(tree), time.monotonic()
    if log:
        out.close()  # type: ignore[union-attr]
    proc.returncode = os.waitstatus_to_exitcode(usage["status"])  # type: ignore[arg-type]
    ru = usage["ru"]
    # the queues after the load: drained when every one is down to QUEUE_SLACK requests
    release = release_wait(stack)
    time.sleep(max(0.0, release - (time.monotonic() - t1)))
    drain_seconds = None
    while True:
        queue_left = max(scrape(metrics).queue_size.values(), default=0.0)
        waited = time.monotonic() - t1
        if queue_left <= QUEUE_SLACK:
            drain_seconds = round(waited, 1)
            break
        if waited >= release + drain:
            break
        time.sleep(0.5)
    time.sleep(settle)
    after = scrape(metrics)
    if profiler is not None:
        profiler.join()
    failures = count_export_failures(log.read_bytes()[log_offset:]) if log else 0
    held, why, d = judge(signal, rate, seconds, before, after, queue_left, failures)
    if drain_seconds is None:
        why = why.replace("after the drain wait", f"{release + drain:.0f} s after the load ended")
    if proc.returncode != 0:
        held, why = False, f"telemetrygen exited {proc.returncode}; " + why
        d["generator_limited"] = False
    wall = t1 - t0
    collector = "otel-collector"
    return Step(
        signal, rate, seconds, held, why,
        accepted_per_s=d["accepted_per_s"], refused=d["refused"], send_failed=d["send_failed"],
        enqueue_failed=d["enqueue_failed"], dropped_too_early=d["dropped_too_early"], sent=d["sent"],
        queue_at_end=queue_at_end, queue_left=queue_left, drain_seconds=drain_seconds,
        generator_limited=d["generator_limited"], export_failures=failures, export_ms_mean=d["export_ms_mean"],
        collector_cores=(cpu1 - cpu0) / wall,
        collector_rss_peak=memory.peak.get(collector, 0),
        generator_cores=(ru.ru_utime + ru.ru_stime) / wall,  # type: ignore[attr-defined]
        generator_exit=proc.returncode, rss_peak_by_program=dict(memory.peak),
        profile=profiled or None,
    )


# ---- the search


def round_rate(rate: float, granularity: float = GRANULARITY) -> float:
    return max(granularity, round(rate / granularity) * granularity)


@dataclass
class SearchResult:
    signal: str
    steps: list[Step]  # the short search steps, in order
    confirmations: list[Step]  # the full-length runs at the best rate (one, or two if the first failed)
    held_rate: float | None  # the rate the collector accepted over the confirmation that held, or None
    held_offered: float | None = None  # the rate offered in that confirmation

    @property
    def confirmed(self) -> Step | None:
        return next((c for c in self.confirmations if c.held), None)

    def to_dict(self) -> dict:
        return {"signal": self.signal, "held_rate": self.held_rate, "held_offered": self.held_offered,
                "steps": [s.to_dict() for s in self.steps],
                "confirmations": [c.to_dict() for c in self.confirmations]}


GAIN = 1.05  # a generator-limited step must accept this much more than the best so far to go on up


def search(signal: str, probe: Callable[[float, float], Step], start: float, steps: int = 4,
           step_seconds: float = 15, confirm_seconds: float = 60, fallback: bool = True,
           granularity: float = GRANULARITY) -> SearchResult:
    """Bracket the highest rate that holds in ``steps`` short steps from ``start``, then confirm it.

    ``probe(rate, seconds)`` runs one step at an offered rate. Up by doubling until a step fails,
    down by halving until one holds, then bisect between the best that held and the lowest that
    failed; it stops early when the next rate rounds to one already tried, and stops going up when a
    generator-limited step accepted less than ``GAIN`` times the best accepted so far. The
    confirmation offers the rate whose held step accepted the most; the result is what the collector
    accepted over the confirmation that held.
    """
    tried: list[Step] = []
    lo: float | None = None  # the highest offered rate that held
    hi: float | None = None  # the lowest offered rate that failed
    best: Step | None = None  # the held step that accepted the most
    rate = round_rate(start, granularity)
    for _ in range(steps):
        step = probe(rate, step_seconds)
        tried.append(step)
        saturated = False
        if step.held:
            lo = rate if lo is None else max(lo, rate)
            saturated = step.generator_limited and best is not None and \
                step.accepted_per_s < GAIN * best.accepted_per_s
            if best is None or step.accepted_per_s > best.accepted_per_s:
                best = step
        else:
            hi = rate if hi is None else min(hi, rate)
        if saturated:  # more offered, no more delivered: the generator is the limit
            break
        if hi is None:
            nxt = rate * 2
        elif lo is None:
            nxt = rate / 2
        else:
            nxt = (lo + hi) / 2
        nxt = round_rate(nxt, granularity)
        if any(s.rate == nxt for s in tried) or (lo is None and nxt >= rate):
            break
        rate = nxt
    confirmations: list[Step] = []
    held: Step | None = None
    if best is not None:
        step = probe(best.rate, confirm_seconds)
        confirmations.append(step)
        if step.held:
            held = step
        elif fallback:
            lower = round_rate(best.rate * FALLBACK, granularity)
            if lower < best.rate:
                step = probe(lower, confirm_seconds)
                confirmations.append(step)
                held = step if step.held else None
    return SearchResult(signal, tried, confirmations, held.accepted_per_s if held else None,
                        held.rate if held else None)

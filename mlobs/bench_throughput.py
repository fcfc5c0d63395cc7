"""Collector throughput: the highest rate the collector holds, with ``telemetrygen`` as the load.

One *step* offers a rate of spans or log records for some seconds, over OTLP/gRPC, to the bench
stack's collector (its full pipeline, with the real stores behind it), then reads the collector's
own metrics. A step *holds* when, over it:

* the collector accepted at least ``ACCEPT_SHARE`` of the offered items (a collector that pushes back
  slows the generator down: it did not take the rate);
* nothing was refused (``otelcol_receiver_refused_*``), failed to send
  (``otelcol_exporter_send_failed_*``), failed to enter a sending queue
  (``otelcol_exporter_enqueue_failed_*``) or was dropped by tail sampling before its decision
  (``otelcol_processor_tail_sampling_sampling_trace_dropped_too_early``), on any signal: the span
  metrics and log counts the collector derives go through the pipeline too;
* the exporters' sending queues were near empty when the load ended (``QUEUE_SLACK`` requests):
  a queue that grows means a store that does not keep up, and a loss once it is full.

``search`` is a short bracketing search (double while it holds, halve while it does not, then
bisect), then one confirmation at the best rate that held, for the full confirmation time; if that
fails, one more at ``FALLBACK`` of it. It takes the step as a function, so it runs on fakes in tests.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

from mlobs import bench_stack

ACCEPT_SHARE = 0.95
QUEUE_SLACK = 20  # requests left in a sending queue when the load ends
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
    return c


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
    queue_at_end: float = 0.0  # the fullest sending queue when the load ended, requests
    collector_cores: float = 0.0  # CPU seconds of the collector per second of load
    collector_rss_peak: int = 0  # bytes
    generator_cores: float = 0.0  # telemetrygen's own CPU, on the same cores
    generator_exit: int = 0
    rss_peak_by_program: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def judge(signal: str, rate: float, seconds: float, before: Counters, after: Counters,
          queue_at_end: float) -> tuple[bool, str, dict]:
    """Whether a step held, why not, and its deltas."""
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
    problems = []
    if accepted_per_s < ACCEPT_SHARE * rate:
        problems.append(f"accepted {accepted_per_s:.0f}/s of {rate:.0f}/s offered")
    for key in ("refused", "send_failed", "enqueue_failed"):
        if any(v > 0 for v in d[key].values()):
            problems.append(f"{key} " + ", ".join(f"{v:.0f} {k}" for k, v in sorted(d[key].items()) if v > 0))
    if d["dropped_too_early"] > 0:
        problems.append(f"tail sampling dropped {d['dropped_too_early']:.0f} traces before deciding")
    if queue_at_end > QUEUE_SLACK:
        problems.append(f"a sending queue held {queue_at_end:.0f} requests when the load ended")
    d["accepted_per_s"] = accepted_per_s
    return not problems, "; ".join(problems) or "held", d


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


def run_step(stack: bench_stack.BenchStack, binary: Path, signal: str, rate: float, seconds: float,
             settle: float = 10.0, log: Path | None = None) -> Step:
    """Offer ``rate`` for ``seconds``, then wait ``settle`` seconds (tail sampling's wait, the batch
    timeout) before reading the counters."""
    metrics = stack.url("collector_metrics")
    pid = stack.pid("otel-collector")
    if pid is None:
        return Step(signal, rate, seconds, False, "the collector is not running")
    tree = bench_stack.process_tree(pid)
    before = scrape(metrics)
    queue_at_end = 0.0
    args = telemetrygen_args(binary, signal, stack.endpoint("otlp_grpc"), rate, seconds)
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
    with bench_stack.MemorySampler(stack.state) as memory:
        cpu0, t0 = bench_stack.cpu_seconds(tree), time.monotonic()
        proc = subprocess.Popen(args, stdout=out, stderr=out)
        usage: dict[str, object] = {}

        def wait() -> None:
            _, status, ru = os.wait4(proc.pid, 0)
            usage["status"], usage["ru"] = status, ru

        waiter = threading.Thread(target=wait, daemon=True)
        waiter.start()
        # the queues just before the load ends
        waiter.join(timeout=max(0.0, seconds - 1.0))
        if waiter.is_alive():
            queue_at_end = max(scrape(metrics).queue_size.values(), default=0.0)
        waiter.join()
        cpu1, t1 = bench_stack.cpu_seconds(tree), time.monotonic()
    if log:
        out.close()  # type: ignore[union-attr]
    proc.returncode = os.waitstatus_to_exitcode(usage["status"])  # type: ignore[arg-type]
    ru = usage["ru"]
    time.sleep(settle)
    after = scrape(metrics)
    held, why, d = judge(signal, rate, seconds, before, after, queue_at_end)
    if proc.returncode != 0:
        held, why = False, f"telemetrygen exited {proc.returncode}; " + why
    wall = t1 - t0
    collector = "otel-collector"
    return Step(
        signal, rate, seconds, held, why,
        accepted_per_s=d["accepted_per_s"], refused=d["refused"], send_failed=d["send_failed"],
        enqueue_failed=d["enqueue_failed"], dropped_too_early=d["dropped_too_early"], sent=d["sent"],
        queue_at_end=queue_at_end, collector_cores=(cpu1 - cpu0) / wall,
        collector_rss_peak=memory.peak.get(collector, 0),
        generator_cores=(ru.ru_utime + ru.ru_stime) / wall,  # type: ignore[attr-defined]
        generator_exit=proc.returncode, rss_peak_by_program=dict(memory.peak),
    )


# ---- the search


def round_rate(rate: float, granularity: float = GRANULARITY) -> float:
    return max(granularity, round(rate / granularity) * granularity)


@dataclass
class SearchResult:
    signal: str
    steps: list[Step]  # the short search steps, in order
    confirmations: list[Step]  # the full-length runs at the best rate (one, or two if the first failed)
    held_rate: float | None  # the confirmed rate, or None

    @property
    def confirmed(self) -> Step | None:
        return next((c for c in self.confirmations if c.held), None)

    def to_dict(self) -> dict:
        return {"signal": self.signal, "held_rate": self.held_rate,
                "steps": [s.to_dict() for s in self.steps],
                "confirmations": [c.to_dict() for c in self.confirmations]}


def search(signal: str, probe: Callable[[float, float], Step], start: float, steps: int = 4,
           step_seconds: float = 15, confirm_seconds: float = 60, fallback: bool = True,
           granularity: float = GRANULARITY) -> SearchResult:
    """Bracket the highest rate that holds in ``steps`` short steps from ``start``, then confirm it.

    ``probe(rate, seconds)`` runs one step. Up by doubling until a step fails, down by halving until
    one holds, then bisect between the best that held and the lowest that failed; it stops early
    when the next rate rounds to one already tried.
    """
    tried: list[Step] = []
    lo: float | None = None  # the highest rate that held
    hi: float | None = None  # the lowest rate that failed
    rate = round_rate(start, granularity)
    for _ in range(steps):
        step = probe(rate, step_seconds)
        tried.append(step)
        if step.held:
            lo = rate if lo is None else max(lo, rate)
        else:
            hi = rate if hi is None else min(hi, rate)
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
    held_rate = None
    if lo is not None:
        step = probe(lo, confirm_seconds)
        confirmations.append(step)
        if step.held:
            held_rate = lo
        elif fallback:
            lower = round_rate(lo * FALLBACK, granularity)
            if lower < lo:
                step = probe(lower, confirm_seconds)
                confirmations.append(step)
                held_rate = lower if step.held else None
    return SearchResult(signal, tried, confirmations, held_rate)

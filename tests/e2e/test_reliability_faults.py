"""Issue 14: faults under a steady stream of numbered items, counted in the real stores.

A stack of its own (stack.yaml + tests/stack.test.yaml, every port +14000). In each case a client
sends NUMBERED items over OTLP/HTTP (JSON) at a steady rate to the collector: a gauge point whose
value is its number (one series per case, read back raw from Prometheus), a span with the
attribute ``mlobs.seq`` (read back from the trace store's API), a log record with ``mlobs.seq``
(read back with LogsQL). The client records which sends the collector acknowledged (HTTP 2xx);
afterwards every acknowledged number is looked up in its store.

Every case prints ``reliability: <case> <signal>: sent N acknowledged N stored N lost N`` (run
with ``-s``), and the module ends with the markdown table the README quotes.

The assertions are on counts only: how many acknowledged items are missing from a store.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import random
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from mlobs import components, config, render, stores
from mlobs.render import ROOT

pytestmark = pytest.mark.e2e

OFFSET = 14000  # stack.yaml's ports + 14000: clear of the +10000..+13000 and +20000 test stacks
OTHER_OFFSETS = (10000, 11000, 12000, 13000)
STANDIN_PORTS = {15517, 15533, 15588}  # test_destinations_delivered.py's stand-in collector

RATE = 2.0  # requests per second per signal of the steady stream (one item each)
OUTAGE_SECONDS = 60
CRASH_DOWN_SECONDS = 20  # a backend down this long before the collector is killed
BURST_RATE, BURST_ITEMS, BURST_SECONDS = 5.0, 10, 30  # sustained: 5 requests/s of 10 items; burst 10x
DELIVERY_DEADLINE = 150  # seconds for the queues to drain after a backend is back (retry backoff ≤ 30 s)

SIGNALS = ("metrics", "traces", "logs")
METRIC = "mlobs.faults.seq"
PROM_METRIC = "mlobs_faults_seq"
RESULTS: list[dict[str, Any]] = []


# ---- the stack --------------------------------------------------------------------------------


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def shifted_stack() -> config.Stack:
    base = config._read(ROOT / "stack.yaml")
    data = config._merge(base, config._read(ROOT / "tests" / "stack.test.yaml"))
    # Every port the registry knows (also those stack.yaml leaves at their default, e.g. pprof).
    every = {**config.Ports().model_dump(), **base["ports"]}
    others = set(data["ports"].values()) | set(config.Ports().model_dump().values()) | STANDIN_PORTS
    others |= {v + off for off in OTHER_OFFSETS for v in every.values()}
    data["ports"] = {k: v + OFFSET for k, v in every.items()}
    low = min(_ephemeral_low(), 32768)
    clash = {k: v for k, v in data["ports"].items() if v >= low or v in others}
    assert not clash, f"ports of the faults stack clash (ephemeral from {low}, or another test stack's): {clash}"
    return config.parse(data, "stack.yaml + tests/stack.test.yaml + ports +14000")


class Faults:
    """The running stack of this module: its URLs, its supervisord programs, its stores."""

    def __init__(self, running: Any) -> None:
        from mlobs.runtime import native

        self.native = native
        self.running = running
        self.stack = running.stack
        self.state = running.state
        self.target = render.native_target(self.stack, render.BACKENDS)
        healthy = {n for n, h in running.health.items() if h.healthy}
        self.healthy = healthy
        running_target = render.native_target(self.stack, healthy & set(render.BACKENDS))
        self.traces = stores.trace_store(running_target)
        self.logs = stores.log_store(running_target)
        self.otlp_http = f"http://127.0.0.1:{self.stack.ports.otlp_http}"
        cfg_text = (self.state.config_dir / "otel-collector" / "config.yaml").read_text()
        self.collector_config = yaml.safe_load(cfg_text)

    def url(self, key: str) -> str:
        return "http://" + self.target.connect(key)

    # supervisord
    def ctl(self, *args: str) -> str:
        r = self.native.supervisorctl(self.state, *args)
        return (r.stdout + r.stderr).strip()

    def pid(self, program: str) -> int:
        out = self.ctl("pid", program)
        return int(out) if out.isdigit() else 0

    def program_state(self, program: str) -> str:
        return self.native.program_states(self.state).get(program, "UNKNOWN")

    def health_url(self, program: str) -> str:
        return self.native.health_urls(self.stack, [program])[program]

    def wait_healthy(self, program: str, seconds: float = 120) -> None:
        url = self.health_url(program)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            st = self.program_state(program)
            if st in ("FATAL", "EXITED", "STOPPED"):
                self.ctl("start", program)
            elif st == "RUNNING" and self.native.probe(url)[0]:
                return
            time.sleep(0.5)
        raise AssertionError(f"{program} not healthy at {url} within {seconds:.0f}s: {self.program_state(program)}")

    def stop(self, program: str) -> None:
        out = self.ctl("stop", program)
        assert self.program_state(program) == "STOPPED", f"supervisorctl stop {program}: {out}"

    def start(self, program: str) -> None:
        self.ctl("start", program)
        self.wait_healthy(program)

    def ensure_running(self, programs: list[str]) -> None:
        for p in programs:
            if self.program_state(p) != "RUNNING":
                self.ctl("start", p)
            self.wait_healthy(p)

    # the stores of each signal
    def store_program(self, sig: str) -> str | None:
        if sig == "metrics":
            return "prometheus"
        store = self.traces if sig == "traces" else self.logs
        return store.name if store else None

    def stored(self, sig: str, stream: Stream) -> set[int]:
        if sig == "metrics":
            return prometheus_seqs(self.url("prometheus"), stream)
        if sig == "traces":
            assert isinstance(self.traces, stores.Jaeger)
            return trace_seqs(self.traces, stream)
        assert isinstance(self.logs, stores.VictoriaLogs)
        return log_seqs(self.logs, stream)

    # the collector's own metrics
    def collector_counters(self) -> dict[tuple[str, str], float]:
        text = httpx.get(f"{self.url('collector_metrics')}/metrics", timeout=10).text
        return parse_counters(text)


@pytest.fixture(scope="module")
def faults(start_native_stack, tmp_path_factory) -> Any:
    stack = shifted_stack()
    with start_native_stack(stack, tmp_path_factory.mktemp("native-stack-faults")) as running:
        f = Faults(running)
        retry = f.collector_config["exporters"]["otlp_http/prometheus"]["retry_on_failure"]
        print(f"\nfaults stack: collector delivery of otlp_http/prometheus: "
              f"{json.dumps(f.collector_config['exporters']['otlp_http/prometheus'])}")
        print(f"faults stack: batch processor: {json.dumps(f.collector_config['processors']['batch'])}")
        print(f"faults stack: trace store {f.traces.name if f.traces else None}, "
              f"log store {f.logs.name if f.logs else None}; healthy: {sorted(f.healthy)}")
        assert config.seconds(retry["max_elapsed_time"]) > OUTAGE_SECONDS, retry
        yield f
        print_table()


# ---- the numbered streams ---------------------------------------------------------------------


def _attr(key: str, value: Any) -> dict[str, Any]:
    if isinstance(value, int):
        return {"key": key, "value": {"intValue": str(value)}}
    return {"key": key, "value": {"stringValue": str(value)}}


@dataclass
class Stream:
    """One client: numbered items of one signal over OTLP/HTTP JSON, `per_request` items per
    request, `rate` requests per second, sent by `workers` threads.

    `retry`: on 429/502/503/504 (the memory limiter's answers) and on a refused connection, wait
    (Retry-After when given, else exponential backoff 0.25 s .. 8 s with jitter) and send the same
    request again, for up to `give_up` seconds; without it, a failed send is final."""

    sig: str
    base: str  # the collector's OTLP/HTTP endpoint
    case: str
    run: str
    rate: float = RATE
    per_request: int = 1
    workers: int = 2
    retry: bool = False
    give_up: float = 120.0
    sent: int = 0
    acked: dict[int, float] = field(default_factory=dict)  # seq -> time.time() of the 2xx
    failed: set[int] = field(default_factory=set)
    statuses: Counter = field(default_factory=Counter)
    retries: int = 0
    first_send: float = 0.0
    _seq: int = 0
    _last_ms: int = 0

    def __post_init__(self) -> None:
        self.service = f"mlobs-faults-{self.case}-{self.run}"
        self._lock = threading.Lock()
        self._work: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._client = httpx.Client(timeout=10)

    # lifecycle
    def start(self) -> Stream:
        self.first_send = time.time()
        self._threads = [threading.Thread(target=self._schedule, daemon=True)]
        self._threads += [threading.Thread(target=self._worker, daemon=True) for _ in range(self.workers)]
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for _ in range(self.workers):
            self._work.put(None)
        for t in self._threads:
            t.join(timeout=self.give_up + 30)
        self._client.close()

    def set_rate(self, rate: float) -> None:
        self.rate = rate

    def _schedule(self) -> None:
        nxt = time.monotonic()
        while not self._stop.is_set():
            with self._lock:
                seqs = list(range(self._seq, self._seq + self.per_request))
                self._seq += self.per_request
                self.sent += len(seqs)
            self._work.put(seqs)
            nxt += 1.0 / self.rate
            self._stop.wait(max(0.0, nxt - time.monotonic()))

    def _worker(self) -> None:
        while True:
            seqs = self._work.get()
            if seqs is None:
                return
            self._send(seqs)

    def _unique_ms(self) -> int:
        with self._lock:
            ms = max(int(time.time() * 1000), self._last_ms + 1)
            self._last_ms = ms
            return ms

    # one request
    def _body(self, seqs: list[int]) -> tuple[str, dict[str, Any]]:
        resource = {"attributes": [_attr("service.name", self.service), _attr("mlobs.run", self.run)]}
        scope = {"name": "tests.e2e.test_reliability_faults"}
        if self.sig == "metrics":
            points = [{"asDouble": float(s), "timeUnixNano": str(self._unique_ms() * 1_000_000),
                       "attributes": [_attr("case", self.case), _attr("run", self.run)]} for s in seqs]
            return "/v1/metrics", {"resourceMetrics": [{"resource": resource, "scopeMetrics": [{
                "scope": scope, "metrics": [{"name": METRIC, "gauge": {"dataPoints": points}}]}]}]}
        now = time.time_ns()
        if self.sig == "traces":
            trace_id = secrets.token_hex(16)
            root = secrets.token_hex(8)
            spans = []
            for i, s in enumerate(seqs):
                span_id = root if i == 0 else secrets.token_hex(8)
                spans.append({"traceId": trace_id, "spanId": span_id, "parentSpanId": "" if i == 0 else root,
                              "name": "faults.item", "kind": 2 if i == 0 else 1,
                              "startTimeUnixNano": str(now - 5_000_000), "endTimeUnixNano": str(now),
                              "attributes": [_attr("mlobs.seq", s), _attr("mlobs.case", self.case)]})
            return "/v1/traces", {"resourceSpans": [{"resource": resource, "scopeSpans": [{
                "scope": scope, "spans": spans}]}]}
        records = [{"timeUnixNano": str(now + i), "observedTimeUnixNano": str(now + i), "severityNumber": 9,
                    "severityText": "INFO", "body": {"stringValue": f"faults item {s}"},
                    "attributes": [_attr("mlobs.seq", s), _attr("mlobs.case", self.case)]}
                   for i, s in enumerate(seqs)]
        return "/v1/logs", {"resourceLogs": [{"resource": resource, "scopeLogs": [{
            "scope": scope, "logRecords": records}]}]}

    def _send(self, seqs: list[int]) -> None:
        path, body = self._body(seqs)
        content = json.dumps(body).encode()
        started = time.monotonic()
        attempt = 0
        while True:
            wait = None
            try:
                r = self._client.post(self.base + path, content=content,
                                      headers={"Content-Type": "application/json"})
                with self._lock:
                    self.statuses[r.status_code] += 1
                if r.is_success:
                    at = time.time()
                    with self._lock:
                        for s in seqs:
                            self.acked[s] = at
                    return
                if self.retry and r.status_code in (429, 502, 503, 504):
                    ra = r.headers.get("Retry-After", "")
                    wait = float(ra) if ra.replace(".", "", 1).isdigit() else None
                else:
                    break
            except httpx.HTTPError as e:
                with self._lock:
                    self.statuses[type(e).__name__] += 1
                if not (self.retry and isinstance(e, httpx.ConnectError)):
                    break
            if time.monotonic() - started > self.give_up:
                break
            attempt += 1
            with self._lock:
                self.retries += 1
            time.sleep(wait if wait is not None else min(8.0, 0.25 * 2 ** attempt) * random.uniform(0.5, 1.0))
        with self._lock:
            self.failed.update(seqs)


# ---- reading the stores -----------------------------------------------------------------------


def prometheus_seqs(base: str, stream: Stream) -> set[int]:
    """Every raw sample of the case's series (a range selector returns them unstepped)."""
    window = int(time.time() - stream.first_send) + 600
    q = f'{PROM_METRIC}{{case="{stream.case}",run="{stream.run}"}}[{window}s]'
    r = httpx.get(f"{base}/api/v1/query", params={"query": q, "time": f"{time.time() + 300:.3f}"}, timeout=30)
    r.raise_for_status()
    return {int(float(v)) for series in r.json()["data"]["result"] for _, v in series["values"]}


def trace_seqs(store: stores.Jaeger, stream: Stream) -> set[int]:
    """`mlobs.seq` of every span of the case's service in Jaeger (api/v3 find traces)."""
    start = stream.first_send - 120
    end = time.time() + 120
    n = max(100, stream.sent // max(1, stream.per_request) + 100)

    def iso(t: float) -> str:
        return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    r = httpx.get(f"{store.base}/api/v3/traces", timeout=60, params={
        "query.service_name": stream.service, "query.start_time_min": iso(start),
        "query.start_time_max": iso(end), "query.num_traces": n})
    if r.status_code == 404:
        return set()
    r.raise_for_status()
    spans = stores.spans_from_otlp(r.json().get("result", {}).get("resourceSpans", []))
    return {int(s.attributes["mlobs.seq"]) for s in spans if "mlobs.seq" in s.attributes}


def log_seqs(store: stores.VictoriaLogs, stream: Stream) -> set[int]:
    """`mlobs.seq` of every log record of the case's service in VictoriaLogs (LogsQL)."""
    start = stream.first_send - 120
    q = f'"service.name":{json.dumps(stream.service)} | fields "mlobs.seq"'
    r = httpx.get(f"{store.base}/select/logsql/query", timeout=60,
                  params={"query": q, "start": f"{start:.3f}", "limit": stream.sent + 1000})
    r.raise_for_status()
    out = set()
    for line in r.text.splitlines():
        if line.strip():
            v = json.loads(line).get("mlobs.seq")
            if v not in (None, ""):
                out.add(int(v))
    return out


def parse_counters(text: str) -> dict[tuple[str, str], float]:
    """(metric name, labels) -> value of every sample of a Prometheus text exposition."""
    out: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)", line)
        if m:
            with contextlib.suppress(ValueError):
                out[(m.group(1), m.group(2) or "")] = float(m.group(3))
    return out


def counter_deltas(before: dict, after: dict, pattern: str) -> dict[str, float]:
    rx = re.compile(pattern)
    deltas: dict[str, float] = {}
    for key, v in after.items():
        name, labels = key
        if rx.search(name):
            d = v - before.get(key, 0.0)
            if d:
                short = re.sub(r'(service_instance_id|service_name|service_version|otel_scope_[a-z_]+)="[^"]*",?',
                               "", labels)
                deltas[f"{name}{short}"] = deltas.get(f"{name}{short}", 0.0) + d
    return deltas


# ---- counting ---------------------------------------------------------------------------------


def wait_stored(f: Faults, streams: dict[str, Stream], deadline: float = DELIVERY_DEADLINE) -> dict[str, set[int]]:
    """Poll each store until it holds every acknowledged number of its stream, or the deadline."""
    end = time.monotonic() + deadline
    stored: dict[str, set[int]] = {s: set() for s in streams}
    pending = set(streams)
    while pending:
        for sig in sorted(pending):
            try:
                stored[sig] = f.stored(sig, streams[sig])
            except httpx.HTTPError as e:
                print(f"reliability: reading {sig} failed: {e!r}")
                continue
            if set(streams[sig].acked) <= stored[sig]:
                pending.discard(sig)
        if pending and time.monotonic() < end:
            time.sleep(3)
        elif pending:
            break
    return stored


def report(case: str, streams: dict[str, Stream], stored: dict[str, set[int]], note: str = "") -> dict[str, int]:
    lost = {}
    for sig, st in streams.items():
        acked = set(st.acked)
        missing = acked - stored[sig]
        extra = (stored[sig] - acked) & set(range(st.sent))
        lost[sig] = len(missing)
        row = {"case": case, "signal": sig, "sent": st.sent, "acknowledged": len(acked),
               "stored": len(acked & stored[sig]), "lost": len(missing), "note": note}
        RESULTS.append(row)
        print(f"reliability: {case} {sig}: sent {st.sent} acknowledged {len(acked)} stored {row['stored']} "
              f"lost {len(missing)}" + (f" (missing: {sorted(missing)[:20]})" if missing else "")
              + (f"; stored though not acknowledged: {len(extra)}" if extra else "")
              + f"; client: answers {dict(st.statuses)}, retries {st.retries}, gave up on {len(st.failed)}"
              + (f"; {note}" if note else ""), flush=True)
    return lost


def print_table() -> None:
    if not RESULTS:
        return
    print("\n| case | signal | sent | acknowledged | stored | lost |\n| --- | --- | --- | --- | --- | --- |")
    for r in RESULTS:
        print(f"| {r['case']} | {r['signal']} | {r['sent']} | {r['acknowledged']} | {r['stored']} | {r['lost']} |")


def signals_of(f: Faults) -> tuple[str, ...]:
    """The signals whose store runs and is read here (Prometheus, Jaeger, VictoriaLogs); each other
    one is skipped with its reason. With none of them, the case is skipped."""
    out = []
    for sig in SIGNALS:
        program = f.store_program(sig)
        if not program or program not in f.healthy:
            print(f"reliability: SKIP {sig}: its store does not run here (natively its binary is absent)")
        elif sig == "traces" and not isinstance(f.traces, stores.Jaeger):
            print(f"reliability: SKIP traces: this test reads Jaeger's API; the trace store is {program}")
        elif sig == "logs" and not isinstance(f.logs, stores.VictoriaLogs):
            print(f"reliability: SKIP logs: this test reads VictoriaLogs' LogsQL; the log store is {program}")
        else:
            out.append(sig)
    if not out:
        reason = "no store of this test runs (Prometheus, Jaeger, VictoriaLogs)"
        print(f"SKIP reason: {reason}")
        pytest.skip(reason)
    return tuple(out)


def streams_for(f: Faults, case: str, sigs: tuple[str, ...], **kw: Any) -> dict[str, Stream]:
    run = secrets.token_hex(3)
    return {s: Stream(s, f.otlp_http, case, run, **kw) for s in sigs}


# ---- 1. backend outage ------------------------------------------------------------------------


def test_backend_outage_loses_no_acknowledged_item(faults: Faults) -> None:
    """Prometheus, the trace store and the log store stopped (supervisorctl stop) for 60 s in the
    middle of a steady stream, then started: every item the collector acknowledged is stored once
    they are back (the exporters retry for max_elapsed_time 300 s from a queue on disk;
    Prometheus takes the replayed old points within its out_of_order_time_window of 30m)."""
    f = faults
    sigs = signals_of(f)
    programs = [f.store_program(s) for s in sigs]
    streams = streams_for(f, "outage", sigs)
    for st in streams.values():
        st.start()
    try:
        time.sleep(10)
        for p in programs:
            f.stop(p)
        print(f"reliability: outage: stopped {programs} for {OUTAGE_SECONDS}s", flush=True)
        time.sleep(OUTAGE_SECONDS)
        for p in programs:
            f.start(p)
        print(f"reliability: outage: {programs} back", flush=True)
        time.sleep(15)
    finally:
        for st in streams.values():
            st.stop()
        f.ensure_running(programs)
    stored = wait_stored(f, streams)
    lost = report("backend outage 60 s", streams, stored)
    not_acked = {s: st.sent - len(st.acked) for s, st in streams.items()}
    assert not any(not_acked.values()), f"the collector refused sends while only a backend was down: {not_acked}"
    assert not any(lost.values()), f"acknowledged items missing from the stores after the outage: {lost}"


# ---- 2. collector crash -----------------------------------------------------------------------


def memory_window(f: Faults, sig: str) -> float:
    """Seconds an acknowledged item can sit in the collector's memory before it is on disk: the
    batch processor's timeout; for traces also tail sampling's decision_wait and its 1 s tick."""
    batch = f.collector_config["processors"].get("batch", {})
    timeout = batch.get("timeout", "200ms")  # the batch processor's default
    w = config.seconds(timeout) if isinstance(timeout, str) else float(timeout)
    if sig == "traces" and "tail_sampling" in f.collector_config["processors"]:
        w += config.seconds(f.collector_config["processors"]["tail_sampling"]["decision_wait"]) + 1.0
    return w + 1.0  # the hand-offs between them, the receiver's own processing


def test_collector_crash_loses_only_what_was_in_memory(faults: Faults) -> None:
    """The collector SIGKILLed while the stores are down, then started again (supervisord restarts
    it), then the stores: everything that had reached the exporters' sending queues (file_storage
    on disk) arrives after the restart.

    What can be lost, exactly: an item the OTLP receiver acknowledged but that had not yet been
    written to a sending queue when the process died. The receiver answers 2xx once the pipeline
    has handed the data to the batch processor, which is asynchronous: it holds the data in memory
    until its timeout (or send_batch_size) and only then writes it to the exporters' disk queues;
    with `timeout: 0s` it writes each request at once, so only the requests in its hand-off channel
    (one per CPU) and the one being written are at risk. Spans are also held in memory by tail
    sampling for `decision_wait` (and up to its 1 s tick) before the decision. So: metric points
    and log records acknowledged within the batch timeout (+1 s) before the kill, spans within the
    batch timeout + decision_wait + 2 s. The assertion: no item acknowledged earlier than that
    window is lost, and nothing acknowledged after the restart is lost. The lost count is printed.
    A SIGKILL also loses whatever the client had not been answered (counted as not acknowledged).
    """
    f = faults
    sigs = signals_of(f)
    programs = [f.store_program(s) for s in sigs]
    streams = streams_for(f, "crash", sigs)
    pid_before = f.pid("otel-collector")
    kill_at = 0.0
    restarted_at = 0.0
    for st in streams.values():
        st.start()
    try:
        time.sleep(5)
        for p in programs:
            f.stop(p)
        time.sleep(CRASH_DOWN_SECONDS)
        kill_at = time.time()
        os.kill(pid_before, signal.SIGKILL)
        print(f"reliability: crash: SIGKILL collector pid {pid_before} with {programs} down", flush=True)
        time.sleep(1)
        f.wait_healthy("otel-collector")
        restarted_at = time.time()
        pid_after = f.pid("otel-collector")
        assert pid_after and pid_after != pid_before, (pid_before, pid_after)
        print(f"reliability: crash: collector back as pid {pid_after} after {restarted_at - kill_at:.1f}s",
              flush=True)
        time.sleep(10)
        for p in programs:
            f.start(p)
        time.sleep(10)
    finally:
        for st in streams.values():
            st.stop()
        f.ensure_running(["otel-collector", *programs])
    stored = wait_stored(f, streams)
    batch = f.collector_config["processors"]["batch"]
    note = f"batch processor {json.dumps(batch)}"
    lost = report("collector SIGKILL", streams, stored, note)
    bad = {}
    for sig, st in streams.items():
        missing = set(st.acked) - stored[sig]
        window = memory_window(f, sig)
        in_window = {s for s in missing if kill_at - window <= st.acked[s] <= kill_at}
        print(f"reliability: crash {sig}: lost {len(missing)}, of them acknowledged within the {window:.1f}s "
              f"in-memory window before the kill: {len(in_window)}", flush=True)
        if missing - in_window:
            bad[sig] = sorted(missing - in_window)[:20]
    assert not bad, f"items on disk (acknowledged before the in-memory window) lost by the crash: {bad}; {lost}"


# ---- 3. burst ---------------------------------------------------------------------------------


DROP = r"otelcol_(exporter_enqueue_failed|exporter_send_failed|processor_dropped|processor_.*dropped)"
REFUSE = r"otelcol_(receiver_refused|receiver_failed|processor_refused)"


def test_burst_of_ten_times_the_rate_is_refused_not_dropped(faults: Faults) -> None:
    """Ten times the sustained rate for 30 s. The memory limiter, if it triggers, refuses with a
    retryable status (the clients retry, honouring Retry-After); the collector does not crash (the
    same pid, healthy); its own metrics show refused, not dropped (the analyzer's best-effort copy
    of the logs, otlp_http/analyzer without retry, is reported apart); every acknowledged item is
    stored."""
    f = faults
    sigs = signals_of(f)
    streams = streams_for(f, "burst", sigs, rate=BURST_RATE, per_request=BURST_ITEMS, workers=12, retry=True,
                          give_up=90)
    pid_before = f.pid("otel-collector")
    before = f.collector_counters()
    for st in streams.values():
        st.start()
    try:
        time.sleep(10)
        for st in streams.values():
            st.set_rate(BURST_RATE * 10)
        time.sleep(BURST_SECONDS)
        for st in streams.values():
            st.set_rate(BURST_RATE)
        time.sleep(10)
    finally:
        for st in streams.values():
            st.stop()
    pid_after = f.pid("otel-collector")
    healthy = f.native.probe(f.health_url("otel-collector"))
    stored = wait_stored(f, streams, deadline=90)
    after = f.collector_counters()
    refused = counter_deltas(before, after, REFUSE)
    drops = counter_deltas(before, after, DROP)
    store_drops = {k: v for k, v in drops.items() if "otlp_http/analyzer" not in k}
    limiter = sum(refused.values()) > 0 or any(
        code in (429, 503) for st in streams.values() for code in st.statuses)
    note = (f"{BURST_ITEMS} items a request, {BURST_RATE:g} requests/s, {BURST_RATE * 10:g}/s for {BURST_SECONDS}s"
            + ("" if limiter else "; the memory limiter never triggered"))
    lost = report("burst 10x for 30 s", streams, stored, note)
    print(f"reliability: burst: collector pid {pid_before} -> {pid_after}, health {healthy}", flush=True)
    print(f"reliability: burst: refused (collector metrics): {refused or 'none'}", flush=True)
    print(f"reliability: burst: dropped/failed (collector metrics): {drops or 'none'}", flush=True)
    if not limiter:
        print("reliability: burst: the memory limiter (limit_mib 400, spike 100) never triggered at 10x this "
              "rate: nothing was refused, so the clients' retries were not exercised by it", flush=True)
    gave_up = {s: len(st.failed) for s, st in streams.items()}
    print(f"reliability: burst: items the clients finally lost (gave up after retries): {gave_up}", flush=True)
    assert pid_before and pid_after == pid_before, f"the collector restarted in the burst: {pid_before} -> {pid_after}"
    assert healthy[0], f"the collector is not healthy after the burst: {healthy}"
    assert not store_drops, f"the collector dropped data bound for a store during the burst: {store_drops}"
    assert not any(lost.values()), f"acknowledged items missing from the stores after the burst: {lost}"


# ---- 4. restarts ------------------------------------------------------------------------------


def _incidents(f: Faults) -> dict[str, dict]:
    r = httpx.get(f"{f.url('analyzer')}/incidents", timeout=30)
    r.raise_for_status()
    return {i["fingerprint"]: i for i in r.json()}


def test_sample_service_restart_keeps_every_model_version(faults: Faults) -> None:
    """A new model version trained into the sample service's model directory is deployed; after
    `supervisorctl restart` the service serves the same version and every version is still on disk."""
    from generator import model as gmodel

    f = faults
    name = f.stack.sample_service.name if f.stack.sample_service else None
    if not name or name not in f.healthy:
        reason = "the sample service does not run in this stack"
        print(f"SKIP reason: {reason}")
        pytest.skip(reason)
    directory = Path(components.Place(render.native_target(f.stack, render.BACKENDS, f.state.config_dir,
                                                           f.state.data_dir)).data("inference"))
    ready = f"{f.url('inference')}/readyz"
    before_disk = gmodel.servable_versions(directory)
    env = {**os.environ, **components.otlp_env(components.Place(f.target), "mlobs-training"),
           "MLOBS_MODEL_DIR": str(directory)}
    r = subprocess.run([sys.executable, "-m", "generator.train", "--epochs", "3", "--seed", "14"], env=env,
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    newest = gmodel.latest_version(directory)
    deadline = time.monotonic() + 60
    served = None
    while time.monotonic() < deadline:
        served = httpx.get(ready, timeout=10).json().get("model_version")
        if served == newest:
            break
        time.sleep(1)
    assert str(served) == str(newest), f"the service did not deploy version {newest}: serves {served}"
    versions = gmodel.servable_versions(directory)
    out = f.ctl("restart", name)
    f.wait_healthy(name)
    deadline = time.monotonic() + 60
    after = None
    while time.monotonic() < deadline:
        r2 = httpx.get(ready, timeout=10)
        if r2.status_code == 200:
            after = r2.json().get("model_version")
            break
        time.sleep(1)
    versions_after = gmodel.servable_versions(directory)
    lost = sorted(set(versions) - set(versions_after))
    print(f"reliability: sample service restart ({out.splitlines()[-1] if out else ''}): versions on disk "
          f"{before_disk} -> trained {newest} -> {versions} before, {versions_after} after; served {served} "
          f"before, {after} after; lost {len(lost)}", flush=True)
    RESULTS.append({"case": "sample service restart", "signal": "model versions", "sent": len(versions),
                    "acknowledged": len(versions), "stored": len(set(versions) & set(versions_after)),
                    "lost": len(lost), "note": ""})
    assert not lost, f"model versions lost by the restart: {lost}"
    assert after == served, f"served version {served} before the restart, {after} after"


def test_analyzer_restart_keeps_every_incident(faults: Faults) -> None:
    """Incidents opened by Alertmanager-style webhooks (POST /alerts, the analyzer's real input) are
    all listed by GET /incidents after `supervisorctl restart analyzer`."""
    f = faults
    if "analyzer" not in f.healthy:
        reason = "the analyzer does not run in this stack"
        print(f"SKIP reason: {reason}")
        pytest.skip(reason)
    run = secrets.token_hex(3)
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    alerts = [{"status": "firing", "startsAt": now, "endsAt": "0001-01-01T00:00:00Z",
               "labels": {"alertname": "FaultsRestartCheck", "job": f"mlobs-faults-restart-{run}-{i}",
                          "severity": "warning"},
               "annotations": {"summary": f"restart check {run} #{i}"}} for i in range(3)]
    r = httpx.post(f"{f.url('analyzer')}/alerts", timeout=120, json={
        "version": "4", "status": "firing", "receiver": "analyzer", "alerts": alerts})
    r.raise_for_status()
    made = {x["incident"] for x in r.json()["results"] if "incident" in x}
    assert len(made) == 3, r.json()
    before = _incidents(f)
    assert made <= set(before), (made, set(before))
    out = f.ctl("restart", "analyzer")
    f.wait_healthy("analyzer")
    after = _incidents(f)
    lost = sorted(set(before) - set(after))
    print(f"reliability: analyzer restart ({out.splitlines()[-1] if out else ''}): incidents {len(before)} "
          f"before (3 opened by this test), {len(after)} after, lost {len(lost)}", flush=True)
    RESULTS.append({"case": "analyzer restart", "signal": "incidents", "sent": len(before),
                    "acknowledged": len(before), "stored": len(set(before) & set(after)), "lost": len(lost),
                    "note": ""})
    assert not lost, f"incidents lost by the analyzer restart: {lost}"

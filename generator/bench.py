"""Benchmark of the stack (`make bench` = `mlobs bench`): five parts, one table, bench/results.json
and bench/results.md (mlobs/bench_report.py).

    mlobs bench [--parts overhead,throughput,freshness,startup,analyzer] [--requests 2000] [--warmup 200]

* overhead (this module): the latency that full telemetry adds to a prediction request, and a py-spy
  profile of both modes (bench/profile-on.txt, bench/profile-off.txt);
* throughput (mlobs/bench_throughput.py): the highest rate the collector holds, with telemetrygen;
* freshness (mlobs/bench_freshness.py): request to exemplar in Prometheus, to trace in the store;
* startup (mlobs/bench_stack.py): `up` to all healthy, and memory per component;
* analyzer (mlobs/bench_analyzer.py): CPU of the root-cause ranking per incident and per scan.

Every part but the analyzer runs on the bench's own native stack (stack.yaml's ports + 12000, its
own state folder, always stopped at the end). The overhead part:

Starts the service twice, as subprocesses on the same trained model: once with
``OTEL_SDK_DISABLED=true`` (telemetry off) and once with every signal on (spans for every
stage, metrics with exemplars every 5 s, OTLP logs). It sends both the same requests,
one at a time and interleaved (off, on, on, off, ...) so that both see the same machine,
and reports p50 and p99 client-side latency per mode and the difference.

With telemetry on, the service exports to the real collector when ``.bin/otelcol-mlobs``
exists and the OTLP endpoint answers; otherwise to a throwaway local OTLP/HTTP sink that
this command starts (it accepts and counts what it is sent). The output says which.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlparse

import httpx
import numpy as np

from generator.telemetry import SERVICE_INFERENCE, disabled_telemetry
from generator.train import train_version
from generator.workload import Workload
from mlobs.components import otlp_env_to

COLLECTOR_BINARY = Path(".bin/otelcol-mlobs")


class OtlpSink:
    """A do-nothing OTLP/HTTP receiver: answers 200 to every export and counts it
    (and keeps the payloads, by path, when asked to: the tests decode them)."""

    def __init__(self, keep: bool = False) -> None:
        self.requests: Counter[str] = Counter()
        self.bytes: Counter[str] = Counter()
        self.payloads: dict[str, list[bytes]] = {}
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (the name http.server dispatches to)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                sink.requests[self.path] += 1
                sink.bytes[self.path] += len(body)
                if keep:
                    sink.payloads.setdefault(self.path, []).append(body)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> OtlpSink:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def collector_endpoint() -> str | None:
    """The collector's OTLP/HTTP endpoint, if the native collector is built and answering."""
    if not COLLECTOR_BINARY.exists():
        return None
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    url = urlparse(endpoint)
    try:
        with socket.create_connection((url.hostname or "127.0.0.1", url.port or 4318), timeout=1):
            return endpoint
    except OSError:
        return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Service:
    name: str
    process: subprocess.Popen[bytes]
    url: str

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_service(name: str, env: dict[str, str], log_dir: Path) -> Service:
    port = _free_port()
    full_env = {**os.environ, **env, "MLOBS_HOST": "127.0.0.1", "MLOBS_PORT": str(port)}
    log = open(log_dir / f"{name}.log", "wb")  # noqa: SIM115 (lives as long as the process)
    process = subprocess.Popen(
        [sys.executable, "-m", "generator.service"], env=full_env, stdout=log, stderr=subprocess.STDOUT
    )
    return Service(name, process, f"http://127.0.0.1:{port}")


def wait_ready(service: Service, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.process.poll() is not None:
            raise RuntimeError(f"service '{service.name}' exited with {service.process.returncode}")
        try:
            if httpx.get(f"{service.url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"service '{service.name}' not ready after {timeout}s")


def _timed_post(client: httpx.Client, body: dict) -> float:
    started = time.perf_counter()
    response = client.post("/predict", json=body)
    elapsed = time.perf_counter() - started
    if response.status_code != 200:
        raise RuntimeError(f"benchmark request failed: {response.status_code} {response.text[:200]}")
    return elapsed


def measure(off: httpx.Client, on: httpx.Client, bodies: Sequence[dict], warmup: int) -> dict[str, np.ndarray]:
    for body in bodies[:warmup]:
        _timed_post(off, body)
        _timed_post(on, body)
    times: dict[str, list[float]] = {"off": [], "on": []}
    for i, body in enumerate(bodies[warmup:]):
        order = (("off", off), ("on", on)) if i % 2 == 0 else (("on", on), ("off", off))
        for mode, client in order:
            times[mode].append(_timed_post(client, body))
    return {mode: np.array(values) for mode, values in times.items()}


def report(times: dict[str, np.ndarray]) -> list[str]:
    stats = {m: [np.percentile(t, 50), np.percentile(t, 99), t.mean()] for m, t in times.items()}
    added = [on - off for on, off in zip(stats["on"], stats["off"], strict=True)]
    return [
        f"  {'':<22}{'p50 ms':>10}{'p99 ms':>10}{'mean ms':>10}",
        f"  {'telemetry off':<22}" + "".join(f"{v * 1000:>10.3f}" for v in stats["off"]),
        f"  {'telemetry on':<22}" + "".join(f"{v * 1000:>10.3f}" for v in stats["on"]),
        f"  {'added by telemetry':<22}" + "".join(f"{v * 1000:>+10.3f}" for v in added),
    ]



#: The areas of the profile: the first element of a frame's file path -> area. A frame of the
#: standard library counts for the nearest caller that is not (json.dumps under the exporter is
#: the exporter's).
PROFILE_AREAS: dict[str, str] = {
    "opentelemetry": "opentelemetry",
    "google": "opentelemetry",  # protobuf: the OTLP encoding, nothing else in the service uses it
    "uvicorn": "web server", "starlette": "web server", "fastapi": "web server", "anyio": "web server",
    "h11": "web server", "httptools": "web server", "pydantic": "web server", "pydantic_core": "web server",
    "sklearn": "model", "numpy": "model", "scipy": "model", "joblib": "model", "threadpoolctl": "model",
    "generator": "service code", "mlobs": "service code",
    "httpx": "http client", "httpcore": "http client", "requests": "http client", "urllib3": "http client",
}
PROFILE_SECONDS = 12
PROFILE_TOP = 25


def py_spy() -> Path | None:
    """The pinned py-spy (pyproject.toml, dev) next to this Python, or on PATH."""
    local = Path(sys.executable).parent / "py-spy"
    if local.exists():
        return local
    found = shutil.which("py-spy")
    return Path(found) if found else None


#: Leaf frames of threads that wait (for work, a lock, a socket): py-spy counts a thread waiting with
#: a timeout as busy, so these samples are set apart, not charged to the code that waits.
WAIT_FRAMES = ("Condition.wait", "Event.wait", "EpollSelector.select", "PollSelector.select", "select",
               "Thread.join", "Queue.get", "sleep", "SocketIO.readinto", "BaseSelectorEventLoop.select")
WAITING = "waiting (timed waits py-spy counts as busy)"


def _frame_path(frame: str) -> str:
    """``dumps (/usr/lib/python3.11/json/__init__.py:231)`` -> ``/usr/lib/python3.11/json/__init__.py``."""
    return frame.rsplit(" (", 1)[-1].rstrip(")").rsplit(":", 1)[0]


def short_frame(frame: str) -> str:
    """A frame with its path cut to the package (``site-packages/``) or the repository."""
    path = _frame_path(frame)
    short = path.split("site-packages/", 1)[-1]
    root = str(OUT_DIR.parent) + "/"
    short = short.removeprefix(root)
    if "/lib/python3" in short:
        short = short.split("/lib/python3", 1)[1].split("/", 1)[-1]
    return frame.replace(path, short)


def _frame_root(frame: str) -> str | None:
    """The top-level package of a frame's file, or None for the standard library and the runtime."""
    path = _frame_path(frame)
    if path.startswith("<"):
        return None
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
    root = str(OUT_DIR.parent) + "/"
    if path.startswith(root):
        return path.removeprefix(root).split("/", 1)[0]
    if "/lib/python3" in path or not path.startswith("/"):
        first = path.split("/lib/python3", 1)[-1].split("/", 1)[-1].split("/", 1)[0].removesuffix(".py")
        return None if first in sys.stdlib_module_names or "/lib/python3" in path else first
    return path


def frame_area(frames: list[str]) -> str:
    """The area of one sample (its frames root first): that of the innermost frame outside the stdlib,
    or WAITING when the running frame is a wait."""
    if frames and frames[-1].split(" (", 1)[0] in WAIT_FRAMES and _frame_root(frames[-1]) is None:
        return WAITING
    for frame in reversed(frames):
        root = _frame_root(frame)
        if root is None:
            continue
        return PROFILE_AREAS.get(root, "other packages")
    return "python runtime and stdlib"


def summarize_profile(raw: str) -> dict:
    """py-spy's raw (collapsed) stacks -> samples, share per area, top functions by self and total
    (of the samples that are not waits)."""
    samples = 0
    areas: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        samples += n
        area = frame_area(frames)
        areas[area] += n
        if area == WAITING:
            continue
        own[short_frame(frames[-1])] += n
        for frame in {short_frame(f) for f in frames}:
            total[frame] += n
    share = {k: v / samples for k, v in areas.most_common()} if samples else {}
    busy = samples - areas[WAITING]
    busy_share = {k: v / busy for k, v in areas.most_common() if k != WAITING} if busy else {}
    return {"samples": samples, "busy_samples": busy, "areas": share, "busy_areas": busy_share,
            "self": [(f, n) for f, n in own.most_common(PROFILE_TOP)],
            "total": [(f, n) for f, n in total.most_common(PROFILE_TOP)]}


def profile_text(mode: str, summary: dict, seconds: float, requests: int) -> str:
    n = summary["busy_samples"] or 1
    lines = [
        f"# mlobs bench: py-spy profile of the sample service, telemetry {mode}",
        f"# {summary['samples']} samples at 100 Hz over {seconds:g} s of {requests} interleaved /predict requests "
        "per mode (every thread py-spy sees as busy)",
        "# written by `mlobs bench --parts overhead` (generator/bench.py)",
        "",
        "share of all samples (a stdlib frame counts for its nearest non-stdlib caller):",
        *[f"  {area:<46}{v:>7.1%}" for area, v in summary["areas"].items()],
        "",
        f"share of the {summary['busy_samples']} samples that are not waits:",
        *[f"  {area:<46}{v:>7.1%}" for area, v in summary["busy_areas"].items()],
        "",
        f"top {PROFILE_TOP} by self samples (the frame running; shares of the samples that are not waits):",
        *[f"  {c / n:>6.1%}  {f}" for f, c in summary["self"]],
        "",
        f"top {PROFILE_TOP} by total samples (the frame on the stack):",
        *[f"  {c / n:>6.1%}  {f}" for f, c in summary["total"]],
    ]
    return "\n".join(lines) + "\n"


def profile_modes(services: list[Service], clients: dict[str, httpx.Client], bodies: Sequence[dict],
                  out_dir: Path, seconds: float = PROFILE_SECONDS) -> dict:
    """py-spy on both services at once while they get the same interleaved requests; writes
    ``out_dir/profile-<mode>.txt`` and returns the summaries (or why there is none)."""
    spy = py_spy()
    if spy is None:
        return {"skipped": "py-spy is not installed (pyproject.toml pins it in the dev extra)"}
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mlobs-bench-prof-") as tmp:
        procs = {
            s.name: subprocess.Popen(
                [str(spy), "record", "--pid", str(s.process.pid), "--duration", str(int(seconds)), "--rate", "100",
                 "--format", "raw", "--full-filenames", "--output", f"{tmp}/{s.name}.raw"],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            for s in services
        }
        time.sleep(1.0)  # py-spy attaches
        sent = 0
        deadline = time.monotonic() + seconds + 5
        while any(p.poll() is None for p in procs.values()) and time.monotonic() < deadline:
            body = bodies[sent % len(bodies)]
            order = ("off", "on") if sent % 2 == 0 else ("on", "off")
            for mode in order:
                _timed_post(clients[mode], body)
            sent += 1
        out: dict = {}
        for mode, proc in procs.items():
            _, err = proc.communicate(timeout=30)
            raw = Path(tmp, f"{mode}.raw")
            if proc.returncode != 0 or not raw.exists():
                out[mode] = None
                out.setdefault("errors", {})[mode] = err.decode(errors="replace")[-500:]
                continue
            summary = summarize_profile(raw.read_text())
            (out_dir / f"profile-{mode}.txt").write_text(profile_text(mode, summary, seconds, sent))
            out[mode] = {"samples": summary["samples"], "busy_samples": summary["busy_samples"],
                         "areas": summary["areas"], "busy_areas": summary["busy_areas"],
                         "top_self": summary["self"][:10], "file": f"bench/profile-{mode}.txt"}
        out["requests_per_mode"] = sent
    return out


def _stats_ms(t: np.ndarray) -> dict[str, float]:
    return {"p50": float(np.percentile(t, 50)) * 1000, "p99": float(np.percentile(t, 99)) * 1000,
            "mean": float(t.mean()) * 1000}


def overhead(requests: int = 2000, warmup: int = 200, endpoint: str | None = None,
             profile_dir: Path | None = None) -> tuple[dict, list[str]]:
    """Measure (and profile, into ``profile_dir``); returns the figures and the lines to print.

    ``endpoint``: the collector's OTLP/HTTP endpoint (the bench stack's); without it, the collector
    at $OTEL_EXPORTER_OTLP_ENDPOINT if it answers, else a throwaway local sink."""

    load_before = os.getloadavg()[0]
    workload = Workload(seed=7)
    bodies = [workload.single().body for _ in range(warmup + requests)]
    profile: dict = {}
    with tempfile.TemporaryDirectory(prefix="mlobs-bench-") as tmp:
        tmp_dir = Path(tmp)
        models = tmp_dir / "models"
        train_version(models, disabled_telemetry(SERVICE_INFERENCE), seed=0)
        common = {"MLOBS_MODEL_DIR": str(models), "MLOBS_MODEL_POLL_SECONDS": "0"}

        endpoint = endpoint or collector_endpoint()
        sink = OtlpSink() if endpoint is None else None
        if sink is not None:
            sink.__enter__()
            endpoint = sink.endpoint
            destination = f"a throwaway local OTLP/HTTP sink at {endpoint} (no collector answering)"
        else:
            destination = f"the collector at {endpoint}"
        on_env = {
            **otlp_env_to(str(endpoint), SERVICE_INFERENCE, environment="bench"),
            "OTEL_SDK_DISABLED": "false",
            "OTEL_TRACES_SAMPLER": "parentbased_always_on",
        }
        services = [
            start_service("off", common | {"OTEL_SDK_DISABLED": "true"}, tmp_dir),
            start_service("on", common | on_env, tmp_dir),
        ]
        try:
            for service in services:
                wait_ready(service)
            with (
                httpx.Client(base_url=services[0].url, timeout=30) as off,
                httpx.Client(base_url=services[1].url, timeout=30) as on,
            ):
                started = time.monotonic()
                times = measure(off, on, bodies, warmup)
                elapsed = time.monotonic() - started
                if profile_dir is not None:  # after the measurement: the profiler slows what it samples
                    profile = profile_modes(services, {"off": off, "on": on}, bodies[warmup:], profile_dir)
            time.sleep(6)  # one more metric export, so the sink's counts include metrics
        finally:
            for service in services:
                service.stop()
            if sink is not None:
                sink.__exit__()

    lines = [
        "mlobs benchmark: latency added per /predict request by the full telemetry",
        f"  {requests} measured requests per mode after {warmup} warm-up, one at a time, "
        f"interleaved, same bodies; {elapsed:.0f}s",
        "  telemetry off: OTEL_SDK_DISABLED=true",
        "  telemetry on:  spans for every stage, metrics with exemplars (5 s export), OTLP logs, exported to",
        f"                 {destination}",
        f"  host: {platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"load average {load_before:.1f} before and {os.getloadavg()[0]:.1f} after (other work skews p99)",
        "",
        *report(times),
    ]
    if sink is not None:
        received = ", ".join(
            f"{path.rsplit('/', 1)[-1]} {sink.requests[path]} exports ({sink.bytes[path] / 1024:.0f} KiB)"
            for path in sorted(sink.requests)
        )
        lines.append(f"  the sink received: {received or 'nothing'}")
    for mode in ("on", "off"):
        p = profile.get(mode)
        if p:
            areas = ", ".join(f"{k} {v:.0%}" for k, v in list(p["busy_areas"].items())[:5])
            lines.append(f"  profile, telemetry {mode}: {p['busy_samples']} busy samples of {p['samples']}: {areas} "
                         f"({p['file']})")
    if profile.get("skipped") or profile.get("errors"):
        lines.append(f"  profile: {profile.get('skipped') or profile.get('errors')}")
    off_ms, on_ms = _stats_ms(times["off"]), _stats_ms(times["on"])
    result = {
        "requests": requests, "warmup": warmup, "seconds": round(elapsed, 1), "destination": destination,
        "off_ms": off_ms, "on_ms": on_ms, "added_ms": {k: on_ms[k] - off_ms[k] for k in off_ms},
        "profile": profile,
    }
    return result, lines


# ---- every part


PARTS = ("overhead", "throughput", "freshness", "startup", "analyzer")
OUT_DIR = Path(__file__).resolve().parent.parent / "bench"


def ensure_telemetrygen() -> Path:
    from mlobs import nativebuild
    from mlobs.nativebuild.telemetrygen import TELEMETRYGEN_BINARY, TELEMETRYGEN_VERSION

    bin_dir = OUT_DIR.parent / ".bin"
    return nativebuild.ensure_binaries({"telemetrygen": TELEMETRYGEN_VERSION}, bin_dir)[TELEMETRYGEN_BINARY]


def collector_profile(step, pb: Path) -> dict:
    """The collector's CPU profile of a throughput step: the .pb.gz beside a ``go tool pprof -top``
    summary (``<name>-top.txt``), and its top entries for results.json."""
    from mlobs import bench_throughput as tp

    got = dict(step.profile or {})
    got.update(rate=step.rate, accepted_per_s=round(step.accepted_per_s), step_seconds=step.seconds)
    if "error" in got or not pb.exists():
        got.setdefault("error", "no profile was written")
        return got
    top = pb.with_name(pb.name.removesuffix(".pb.gz") + "-top.txt")
    try:
        text, summary = tp.pprof_top(pb)
    except (OSError, subprocess.SubprocessError) as e:
        got["error"] = f"go tool pprof: {type(e).__name__}: {e}"
        return got
    top.write_text(f"The collector's CPU profile (pprof extension, /debug/pprof/profile?seconds={got['seconds']}) "
                   f"over the middle of a {step.seconds:g} s step offering {step.rate:,.0f} {step.signal} items/s "
                   f"(accepted {step.accepted_per_s:,.0f}/s, collector {step.collector_cores:.2f} cores); "
                   f"written by `mlobs bench --parts throughput`.\n\n{text}")
    got.update(summary, top_file=top.name)
    return got


def merged(old: dict, new: dict) -> dict:
    """``new`` with the parts (and throughput signals) it did not run taken from ``old``; each part
    keeps the run it comes from (``parts.<part>.run``)."""
    out = dict(new)
    parts = dict(old.get("parts", {}))
    for name, part in new["parts"].items():
        if name == "throughput" and name in parts:
            part = {**parts[name], **part, "notes": part.get("notes") or parts[name].get("notes", []),
                    "profiles": {**parts[name].get("profiles", {}), **part.get("profiles", {})}}
        parts[name] = part
    peaks = (new["parts"].get("throughput") or {}).get("peak_bytes")
    if peaks and "startup" in parts and "startup" not in new["parts"]:
        parts["startup"] = {**parts["startup"], "throughput_peak_bytes": peaks}
    out["parts"] = parts
    out["skipped"] = {k: v for k, v in new.get("skipped", {}).items() if k not in parts}
    # each command once, in the order of its latest run (a part run again replaces its figures)
    chain = [c for c in old.get("command", "mlobs bench").split(", then ") if c != new["command"]]
    out["command"] = ", then ".join([*chain, new["command"]])
    return out


def run(requests: int = 2000, warmup: int = 200, parts: Sequence[str] = PARTS, out_dir: Path = OUT_DIR,
        search_steps: int = 4, step_seconds: float = 15, confirm_seconds: float = 60,
        command: str = "mlobs bench", signals: Sequence[str] | None = None, merge: bool = False,
        port_offset: int | None = None) -> int:
    """Run the parts, print the table, write out_dir/results.json and results.md; `mlobs bench` calls this.
    ``port_offset``: the bench stack's ports are stack.yaml's + this (default bench_stack.PORT_OFFSET)."""
    from mlobs import bench_report, bench_stack, stores
    from mlobs import bench_throughput as tp

    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise ValueError(f"unknown part(s) {', '.join(unknown)}; known: {', '.join(PARTS)}")
    t_start = time.monotonic()
    results: dict = {
        "schema": 1,
        "generated_at": bench_report.now_iso(),
        "command": command,
        "host": {"cpus": os.cpu_count(), "python": f"{platform.python_implementation()} {platform.python_version()}",
                 "load_before": os.getloadavg()[0]},
        "parts": {},
        "skipped": {p: "not asked for (--parts)" for p in PARTS if p not in parts},
    }

    def say(text: str) -> None:
        print(text, flush=True)

    def elapsed() -> str:
        return f"[{time.monotonic() - t_start:5.0f}s]"

    @contextlib.contextmanager
    def part(name: str) -> Iterator[None]:
        """A part that fails is reported (results.json "errors") and the others still run."""
        try:
            yield
        except Exception as e:  # noqa: BLE001 (every failure is reported, the run goes on)
            results.setdefault("errors", {})[name] = f"{type(e).__name__}: {e}"
            say(f"{elapsed()} {name} FAILED: {type(e).__name__}: {e}")
            results["parts"].pop(name, None)
            results["skipped"][name] = f"failed: {type(e).__name__}: {e}"

    if "analyzer" in parts:
        from mlobs import bench_analyzer

        say(f"{elapsed()} analyzer: {bench_analyzer.SERVICES} services x {bench_analyzer.OPERATIONS} operations, "
            "synthetic series")
        with part("analyzer"):
            results["parts"]["analyzer"] = bench_analyzer.measure()

    stack_parts = [p for p in parts if p != "analyzer"]
    telemetrygen = None
    if "throughput" in parts:
        telemetrygen = ensure_telemetrygen()
    if stack_parts:
        out_dir.mkdir(parents=True, exist_ok=True)
        with part("stack"):
            say(f"{elapsed()} starting the bench stack (stack.yaml ports + {bench_stack.PORT_OFFSET})")
            with bench_stack.running(offset=bench_stack.PORT_OFFSET if port_offset is None else port_offset) as stack:
                say(f"{elapsed()} healthy after {stack.startup_seconds:.1f}s; stores: {stack.stores()}")
                startup: dict = {"startup_seconds": round(stack.startup_seconds, 2),
                                 "healthy_after": stack.healthy_after, "missing": stack.missing,
                                 "stores": stack.stores()}
                time.sleep(10)  # at rest: started, nothing sent yet
                startup["rest_bytes"] = bench_stack.memory_by_program(stack.state)
                if "startup" in parts:
                    results["parts"]["startup"] = startup
                if "overhead" in parts:
                    say(f"{elapsed()} overhead: {requests} requests per mode, then a py-spy profile")
                    with part("overhead"):
                        result, lines = overhead(requests, warmup, endpoint=stack.url("otlp_http"), profile_dir=out_dir)
                        results["parts"]["overhead"] = result
                        say("\n".join(lines))
                if "freshness" in parts:
                    from mlobs import bench_freshness

                    say(f"{elapsed()} freshness: {bench_freshness.REQUESTS} requests")
                    store = stores.trace_store(stack.target())
                    if store is None:
                        results["skipped"]["freshness"] = "no trace store runs in the bench stack"
                    else:
                        with part("freshness"):
                            job = stack.stack.sample_service.name if stack.stack.sample_service else "mlobs-inference"
                            fresh = bench_freshness.measure(stack.url("inference"), stack.url("prometheus"), store, job,
                                                           caller_otlp=stack.url("otlp_http"))
                            fresh["levers"] = bench_freshness.levers(stack.stack)
                            results["parts"]["freshness"] = fresh
                if "throughput" in parts and telemetrygen is not None:
                    throughput: dict = {"notes": [], "profiles": {}}
                    peaks: dict[str, int] = {}
                    log = Path(tempfile.gettempdir()) / "mlobs-bench-telemetrygen.log"
                    log.write_bytes(b"")
                    for signal in tp.SIGNALS:
                        say(f"{elapsed()} throughput: {signal}")

                        def probe(rate: float, seconds: float, signal: str = signal) -> tp.Step:
                            # the collector's Go CPU profile over the first confirmation (the best rate)
                            first = seconds >= confirm_seconds and signal not in throughput["profiles"]
                            pb = out_dir / f"collector-{signal}.pb.gz" if first else None
                            step = tp.run_step(stack, telemetrygen, signal, rate, seconds, log=log, profile=pb)
                            if pb is not None:
                                throughput["profiles"][signal] = collector_profile(step, pb)
                            say(f"    {signal} {rate:,.0f}/s for {seconds:g}s: accepted {step.accepted_per_s:,.0f}/s, "
                                f"collector {step.collector_cores:.2f} cores, "
                                f"{step.collector_rss_peak / 2**20:.0f} MiB: {step.why}")
                            if seconds >= confirm_seconds:
                                for name, rss in step.rss_peak_by_program.items():
                                    peaks[name] = max(peaks.get(name, 0), rss)
                            return step

                        # the fallback confirmation only while the run stays within its budget
                        fallback = time.monotonic() - t_start < 8 * 60
                        with part(f"throughput {signal}"):
                            found = tp.search(signal, probe, start=20_000, steps=search_steps,
                                              step_seconds=step_seconds, confirm_seconds=confirm_seconds,
                                              fallback=fallback)
                            throughput[signal] = found.to_dict()
                    throughput["notes"].append(
                        "metrics throughput is not measured: telemetrygen sends one series with points at "
                        "nanosecond timestamps, which Prometheus (millisecond samples) refuses as duplicates, and "
                        "its --unique-timeseries makes a new series per point; neither is a fair load")
                    throughput["peak_bytes"] = peaks
                    results["parts"]["throughput"] = throughput
                    if "startup" in parts:
                        results["parts"]["startup"]["throughput_peak_bytes"] = peaks
        say(f"{elapsed()} the bench stack is stopped")
    results["duration_seconds"] = round(time.monotonic() - t_start, 1)
    results["host"]["load_after"] = os.getloadavg()[0]
    for name in results["parts"]:
        results["parts"][name]["run"] = {"generated_at": results["generated_at"], "command": command}
    if merge and (out_dir / "results.json").exists():
        results = merged(json.loads((out_dir / "results.json").read_text()), results)
    json_path, md_path = bench_report.write(results, out_dir)
    say("")
    say(f"mlobs bench: {', '.join(parts)} in {results['duration_seconds']:.0f}s")
    say("\n".join(bench_report.table_lines(bench_report.rows(results))))
    say(f"\nwrote {json_path} and {md_path}")
    return 0

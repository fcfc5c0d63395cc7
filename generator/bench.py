"""Benchmark: the latency that full telemetry adds to a prediction request.

    mlobs bench [--requests 2000] [--warmup 200]     (make bench)

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

import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
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


def run(requests: int = 2000, warmup: int = 200) -> int:
    """Measure, print the table; `mlobs bench` calls this."""

    load_before = os.getloadavg()[0]
    workload = Workload(seed=7)
    bodies = [workload.single().body for _ in range(warmup + requests)]
    with tempfile.TemporaryDirectory(prefix="mlobs-bench-") as tmp:
        tmp_dir = Path(tmp)
        models = tmp_dir / "models"
        train_version(models, disabled_telemetry(SERVICE_INFERENCE), seed=0)
        common = {"MLOBS_MODEL_DIR": str(models), "MLOBS_MODEL_POLL_SECONDS": "0"}

        endpoint = collector_endpoint()
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
    print("\n".join(lines), flush=True)
    return 0


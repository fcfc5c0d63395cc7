"""The end-to-end harness: a stack under test, inputs that drive the sample service, and
expectations (PromQL, exemplars, TraceQL, LogQL) retried until a deadline."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from mlobs import components, envfile, render, stores
from mlobs.config import Stack
from mlobs.contract import STAGES  # noqa: F401 (the cases import it from here)


class StackUnderTest:
    """Endpoints of a running stack: the native one this session started, or any running stack
    (`MLOBS_E2E_EXISTING=1`, e.g. the docker compose stack in the users' CI workflow)."""

    def __init__(self, stack: Stack, secrets: dict[str, str], healthy: set[str], missing: dict[str, str]) -> None:
        self.stack = stack
        self.admin_token = secrets.get("MLOBS_ADMIN_TOKEN", "")
        self.grafana_password = secrets.get("GRAFANA_ADMIN_PASSWORD", "")
        self.healthy = healthy
        self.missing = missing
        self._target = render.native_target(stack, render.BACKENDS)
        sample = stack.sample_service
        self.service_name = sample.name if sample else "mlobs-inference"

    @classmethod
    def existing(cls, stack: Stack, env_file: Any) -> StackUnderTest:
        sut = cls(stack, envfile.read(env_file), set(), {})
        for c in components.REGISTRY:
            if c.name == "inference" and not stack.sample_service:
                continue
            name = components.program_name(c, stack)
            url = components.health_url(sut._target, c, stack)
            try:
                ok = httpx.get(url, timeout=3).is_success
            except httpx.HTTPError:
                ok = False
            (sut.healthy.add(name) if ok else sut.missing.__setitem__(name, f"no answer at {url}"))
        return sut

    def url(self, key: str) -> str:
        return "http://" + self._target.connect(key)

    def has(self, component: str) -> bool:
        return component in self.healthy

    def why_missing(self, component: str) -> str:
        return self.missing.get(component, f"{component} is not running")

    # ---- inputs ---------------------------------------------------------------------------

    def predict(self, body: dict[str, Any], trace_id: str | None = None,
                request_id: str | None = None) -> tuple[httpx.Response, str, str]:
        trace_id = trace_id or secrets.token_hex(16)
        request_id = request_id or f"e2e-{secrets.token_hex(6)}"
        headers = {"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01", "X-Request-ID": request_id}
        r = httpx.post(f"{self.url('inference')}/predict", json=body, headers=headers, timeout=30)
        return r, trace_id, request_id

    def feedback(self, request_id: str, label: str, index: int = 0) -> httpx.Response:
        return httpx.post(f"{self.url('inference')}/feedback", timeout=10,
                          json={"request_id": request_id, "index": index, "label": label})

    def admin(self, method: str, body: dict[str, Any] | None = None) -> httpx.Response:
        r = httpx.request(method, f"{self.url('inference')}/admin/faults", json=body, timeout=30,
                          headers={"X-Admin-Token": self.admin_token})
        r.raise_for_status()
        return r

    @contextmanager
    def fault(self, **change: Any) -> Iterator[None]:
        self.admin("POST", {"enabled": True, **change})
        try:
            yield
        finally:
            self.admin("DELETE")

    def otel_env(self, service_name: str) -> dict[str, str]:
        place = components.Place(self._target)
        return {**os.environ, **components.otlp_env(place, service_name, export_interval_ms=2000)}

    def train(self, model_dir: str, *args: str) -> subprocess.CompletedProcess:
        env = {**self.otel_env("mlobs-training"), "MLOBS_MODEL_DIR": model_dir}
        return subprocess.run([sys.executable, "-m", "generator.train", *args], env=env,
                              capture_output=True, text=True, timeout=300, cwd=render.ROOT)

    # ---- reads ----------------------------------------------------------------------------

    def promql(self, expr: str) -> list[dict[str, Any]]:
        r = httpx.get(f"{self.url('prometheus')}/api/v1/query", params={"query": expr}, timeout=10)
        r.raise_for_status()
        return r.json()["data"]["result"]

    def exemplar_trace_ids(self, selector: str, window: float = 900) -> set[str]:
        now = time.time()
        r = httpx.get(f"{self.url('prometheus')}/api/v1/query_exemplars", timeout=10,
                      params={"query": selector, "start": now - window, "end": now + 60})
        r.raise_for_status()
        return {e["labels"].get("trace_id", "") for s in r.json()["data"] for e in s["exemplars"]}

    def logql(self, query: str, window: float = 900) -> list[dict[str, Any]]:
        now = time.time_ns()
        r = httpx.get(f"{self.url('loki')}/loki/api/v1/query_range", timeout=10, params={
            "query": query, "start": now - int(window * 1e9), "end": now + int(60e9), "limit": 500})
        r.raise_for_status()
        return r.json()["data"]["result"]

    def traceql(self, query: str, window: float = 900) -> list[dict[str, Any]]:
        now = int(time.time())
        r = httpx.get(f"{self.url('tempo')}/api/search", timeout=10,
                      params={"q": query, "start": now - int(window), "end": now + 60, "limit": 50})
        r.raise_for_status()
        return r.json().get("traces", [])

    # ---- the stores, whichever runs (mlobs/stores.py) ---------------------------------------

    @property
    def running_target(self) -> render.Target:
        """The target of the components that answer: it names the trace and log store in use."""
        return render.native_target(self.stack, self.healthy & set(render.BACKENDS))

    @property
    def traces(self) -> stores.TraceStore | None:
        return stores.trace_store(self.running_target)

    @property
    def logs(self) -> stores.LogStore | None:
        return stores.log_store(self.running_target)

    def trace(self, trace_id: str) -> list[stores.Span] | None:
        store = self.traces
        assert store is not None, "no trace store runs"
        return store.trace(trace_id)

    def log_lines(self, **query: Any) -> list[stores.LogLine]:
        store = self.logs
        assert store is not None, "no log store runs"
        return store.lines(self.service_name, **query)

    def alerts(self) -> list[dict[str, Any]]:
        r = httpx.get(f"{self.url('prometheus')}/api/v1/alerts", timeout=10)
        r.raise_for_status()
        return r.json()["data"]["alerts"]


@dataclass
class Expect:
    """One expectation: a backend, a description, and a probe returning (ok, what was seen)."""

    backend: str  # prometheus | traces | logs (whichever store runs) | tempo | loki | alertmanager
    what: str
    probe: Callable[[StackUnderTest, dict[str, Any]], tuple[bool, Any]]
    timeout: float = 90


@dataclass
class Case:
    name: str
    needs: tuple[str, ...]
    run: Callable[[StackUnderTest], dict[str, Any]]  # the input; returns facts for the probes
    expect: list[Expect]
    then: Callable[[StackUnderTest, dict[str, Any]], None] | None = None  # a second phase
    expect_after: list[Expect] = field(default_factory=list)


def eventually(sut: StackUnderTest, facts: dict[str, Any], e: Expect, interval: float = 2.0) -> None:
    deadline = time.monotonic() + e.timeout
    seen: Any = None
    while True:
        try:
            ok, seen = e.probe(sut, facts)
        except httpx.HTTPError as err:
            ok, seen = False, err
        if ok:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{e.backend}: {e.what}: not true within {e.timeout:.0f}s; last seen: {seen!r}")
        time.sleep(interval)


def collector_has(sut: StackUnderTest, component: str) -> bool:
    """Does the running collector report this component in its own metrics?"""
    try:
        text = httpx.get(f"{sut.url('collector_metrics')}/metrics", timeout=5).text
    except httpx.HTTPError:
        return False
    return f'="{component}"' in text


def require(sut: StackUnderTest, needs: tuple[str, ...]) -> None:
    for need in needs:
        if need in ("traces", "logs"):
            store = sut.traces if need == "traces" else sut.logs
            if store is None:
                reason = f"no {need} store runs (stack.yaml backends.{need}; natively its binary is absent)"
                print(f"SKIP reason: {reason}")
                pytest.skip(reason)
        elif need == "servicegraph":
            if not collector_has(sut, "servicegraph"):
                reason = render.NATIVE_MISSING["servicegraph"]
                print(f"SKIP reason: {reason}")
                pytest.skip(f"the running collector has no servicegraph connector: {reason}")
        elif not sut.has(need):
            reason = sut.why_missing(need)
            print(f"SKIP reason: {reason}")
            pytest.skip(f"{need} is not running: {reason}")


def require_fast_profile(sut: StackUnderTest) -> None:
    """Alert cases fire and resolve within a test only on the fast profile of tests/stack.test.yaml."""
    from mlobs.config import seconds

    if seconds(sut.stack.alerts.rate_window) > 60 or seconds(sut.stack.alerts.for_) > 30:
        reason = (f"the alert cases need the fast profile of tests/stack.test.yaml; this stack has "
                  f"rate_window={sut.stack.alerts.rate_window}, for={sut.stack.alerts.for_}")
        print(f"SKIP reason: {reason}")
        pytest.skip(reason)


class Traffic:
    """Steady background requests (with feedback) while a case switches faults."""

    def __init__(self, sut: StackUnderTest, seed: int, feedback_share: float = 0.5, pause: float = 0.1) -> None:
        import threading

        from generator.workload import Workload

        self.sut = sut
        self.work = Workload(seed=seed, batch_share=0.0)
        self.feedback_share = feedback_share
        self.pause = pause
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            sample = self.work.single()
            try:
                r, _, rid = self.sut.predict(sample.body)
                if r.status_code == 200 and self.work.chance(self.feedback_share):
                    self.sut.feedback(rid, sample.labels[0])
                self.sent += 1
            except httpx.HTTPError:
                pass
            self._stop.wait(self.pause)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


def until(check: Callable[[], Any], seconds: float = 60, interval: float = 1.0) -> Any:
    """``check()`` once an ``interval`` until it returns something truthy or ``seconds`` have passed:
    its last result either way (the caller asserts on it, with its own message)."""
    deadline = time.monotonic() + seconds
    while True:
        got = check()
        if got or time.monotonic() > deadline:
            return got
        time.sleep(interval)


# ---- example services: a process of a test's own (tests/e2e/test_examples.py) ----------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServiceProcess:
    """A service started as a subprocess for a test, waited for on its health URL, and stopped at
    the end (also when the test fails). Its output goes to `log_path`; its tail is in the error
    when it does not come up."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], health_url: str,
                 log_path: Any, timeout: float = 90) -> None:
        self.name, self.command, self.env, self.health_url = name, command, env, health_url
        self.log_path, self.timeout = log_path, timeout
        self.process: subprocess.Popen | None = None

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(open(self.log_path, encoding="utf-8", errors="replace").read().splitlines()[-lines:])
        except OSError:
            return ""

    def healthy(self) -> bool:
        try:
            return httpx.get(self.health_url, timeout=2).is_success
        except httpx.HTTPError:
            return False

    def __enter__(self) -> ServiceProcess:
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(self.command, env=self.env, cwd=render.ROOT, stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + self.timeout
        while not self.healthy():
            if self.process.poll() is not None or time.monotonic() > deadline:
                code = self.process.poll()
                self.stop()
                state = f"exited with {code}" if code is not None else f"no answer within {self.timeout:.0f}s"
                raise AssertionError(f"{self.name} {state} at {self.health_url}:\n{self.tail()}")
            time.sleep(0.5)
        return self

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()  # this process only, by its id
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    def __exit__(self, *exc: object) -> None:
        self.stop()


def exemplars(sut: StackUnderTest, selector: str, window: float = 900) -> list[dict[str, Any]]:
    """Every exemplar of the series of `selector`: its labels (trace_id, span_id, filtered
    attributes), value and timestamp, with the series' labels under `series`."""
    now = time.time()
    r = httpx.get(f"{sut.url('prometheus')}/api/v1/query_exemplars", timeout=10,
                  params={"query": selector, "start": now - window, "end": now + 60})
    r.raise_for_status()
    return [{**e, "series": s["seriesLabels"]} for s in r.json()["data"] for e in s["exemplars"]]


def listening_sockets() -> dict[int, set[str]]:
    """Port -> the addresses listening on it (IPv4 and IPv6), from /proc/net/tcp{,6}."""
    out: dict[int, set[str]] = {}
    for name in ("tcp", "tcp6"):
        path = Path(f"/proc/net/{name}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            local, state = fields[1], fields[3]
            if state != "0A":  # LISTEN
                continue
            addr_hex, port_hex = local.split(":")
            raw = bytes.fromhex(addr_hex)
            if len(raw) == 4:
                addr = ".".join(str(b) for b in raw[::-1])
            else:  # four little-endian 32-bit words
                words = [raw[i:i + 4][::-1] for i in range(0, 16, 4)]
                addr = ":".join(b"".join(words).hex()[i:i + 4] for i in range(0, 32, 4))
            out.setdefault(int(port_hex, 16), set()).add(addr)
    return out


LOOPBACK = {"127.0.0.1", "0000:0000:0000:0000:0000:0000:0000:0001", "0000:0000:0000:0000:0000:ffff:7f00:0001"}

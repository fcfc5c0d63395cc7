"""The LLM chat example (examples/llm-chat) against the real stack: its server and its load client
send the GenAI metrics, spans and logs of the OpenTelemetry conventions, and then

* every Prometheus query of the GenAI dashboard returns data (the recorded series of
  prometheus/rules/genai.yml, the cost from the price table of tests/stack.test.yaml among them);
* both sides' spans are in the trace store, named ``{gen_ai.operation.name} {gen_ai.request.model}``,
  the server's a child of the client's, with the conventions' attributes (error.type on a refusal);
* GenAITimeToFirstTokenHigh fires while the server stalls before its first token for longer than
  alerts.genai_ttft_p95_seconds, and resolves once it stops.

The server and the client run as processes of their own, with the OTEL_* environment of the stack
under test (``sut.otel_env``)."""

from __future__ import annotations

import contextlib
import json
import math
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness import ServiceProcess, StackUnderTest, free_port, require

from mlobs import contract as C
from mlobs import render
from mlobs.config import seconds

pytestmark = pytest.mark.e2e

EXAMPLE = render.ROOT / "examples" / "llm-chat"
sys.path.insert(0, str(EXAMPLE))
import genai_semconv as g  # noqa: E402  (the example's names: model, provider, services)

TOKEN_DELAY = 0.02  # LLM_CHAT_TOKEN_DELAY_SECONDS of the server under test
ERROR_RATE = 0.02  # a few refusals (error.type overloaded), below alerts.error_ratio, for the error series
TTFT_ALERT = "GenAITimeToFirstTokenHigh"
MODEL_LABEL = C.prometheus_label(C.ATTR_GENAI_REQUEST_MODEL)
TOKEN_TYPE_LABEL = C.prometheus_label(C.ATTR_GENAI_TOKEN_TYPE)
ERROR_TYPE_LABEL = C.prometheus_label(C.ATTR_ERROR_TYPE)


# --------------------------------------------------------------------------- the example's processes


@dataclass
class Client:
    """The load client: a process of its own whose stdout (one JSON line per request) the tests read."""

    popen: subprocess.Popen
    stdout: Path
    stderr: Path

    def tail(self, lines: int = 30) -> str:
        parts = []
        for path in (self.stdout, self.stderr):
            text = path.read_text(errors="replace").splitlines() if path.exists() else []
            parts.append(f"--- llm-chat client {path.name} (last {lines} lines)\n" + "\n".join(text[-lines:]))
        return "\n".join(parts)

    def stop(self, timeout: float = 30) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)  # this process only: it finishes its requests and flushes
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)


@dataclass
class Chat:
    url: str
    admin_token: str
    proc: ServiceProcess

    def admin(self, method: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        r = httpx.request(method, f"{self.url}/admin/faults", json=body, timeout=10,
                          headers={"X-Admin-Token": self.admin_token})
        r.raise_for_status()
        return r.json()


@dataclass
class Load:
    proc: Client
    started: float

    def outcomes(self, since: float = 0.0) -> list[dict[str, Any]]:
        """The client's line per request (client.py); ``since`` is a time.time() (a line's ``at``)."""
        rows = []
        for line in self.proc.stdout.read_text().splitlines():
            with contextlib.suppress(ValueError):
                row = json.loads(line)
                if row.get("at", 0) >= since:
                    rows.append(row)
        return rows


@pytest.fixture(scope="module")
def chat(sut: StackUnderTest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chat]:
    require(sut, ("prometheus",))
    port, token = free_port(), secrets.token_hex(16)
    env = {**sut.otel_env(g.SERVICE_SERVER), "LLM_CHAT_PORT": str(port), "MLOBS_ADMIN_TOKEN": token,
           "LLM_CHAT_TOKEN_DELAY_SECONDS": str(TOKEN_DELAY), "LLM_CHAT_ERROR_RATE": str(ERROR_RATE)}
    url = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("llm-chat") / "server.log"
    with ServiceProcess("the llm-chat server", [sys.executable, str(EXAMPLE / "server.py")], env,
                        f"{url}/healthz", log, timeout=60) as proc:
        yield Chat(url, token, proc)


@pytest.fixture(scope="module")
def load(sut: StackUnderTest, chat: Chat, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Load]:
    """The example's client, sending streaming and plain chat requests for the whole module."""
    args = ["--url", chat.url, "--duration", "0", "--concurrency", "4", "--rate", "6",
            "--stream-share", "0.75", "--timeout", "60", "--seed", "12"]
    out = tmp_path_factory.mktemp("llm-client")
    stdout, stderr = out / "client.out", out / "client.err"
    with stdout.open("w") as o, stderr.open("w") as e:
        proc = Client(subprocess.Popen([sys.executable, str(EXAMPLE / "client.py"), *args], cwd=render.ROOT,
                                       env=sut.otel_env(g.SERVICE_CLIENT), stdout=o, stderr=e), stdout, stderr)
    started = time.monotonic()
    try:
        time.sleep(3)
        if proc.popen.poll() is not None:
            pytest.fail(f"the chat client exited with {proc.popen.returncode}\n{proc.tail()}")
        yield Load(proc, started)
    finally:
        proc.stop()
        print(f"llm-chat load: ran {time.monotonic() - started:.0f}s")


def wait_for(probe: Callable[[], Any], what: str, timeout: float, interval: float = 3.0,
             diagnose: Callable[[], str] = lambda: "") -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = probe()
        except httpx.HTTPError as e:
            last = e
        if last and not isinstance(last, Exception):
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f}s (last: {last!r})\n{diagnose()}")
        time.sleep(interval)


def _diagnose(chat: Chat, load: Load | None = None) -> Callable[[], str]:
    return lambda: "--- llm-chat server log\n" + chat.proc.tail() + ("\n" + load.proc.tail() if load else "")


# --------------------------------------------------------------------------- spans and logs


def _int(value: Any) -> int | None:
    return None if value is None else int(value)  # OTLP JSON gives an int64 as a string


def test_spans_are_named_after_operation_and_model(sut: StackUnderTest, chat: Chat, load: Load) -> None:
    require(sut, ("traces",))
    name = f"{g.OPERATION} {g.MODEL}"
    diagnose = _diagnose(chat, load)

    def answered_and_refused() -> list[dict[str, Any]] | None:
        rows = load.outcomes()
        if any(r["ok"] and r["stream"] for r in rows) and any(r["error_type"] == "overloaded" for r in rows):
            return rows
        return None

    outcomes = wait_for(answered_and_refused, "a streamed answer and a refusal (overloaded) among the client's "
                        "requests", 180, diagnose=diagnose)
    ok = next(r for r in outcomes if r["ok"] and r["stream"])
    refused = next(r for r in outcomes if r["error_type"] == "overloaded")

    def both_sides(trace_id: str) -> tuple | None:
        spans = sut.trace(trace_id) or []
        client = [s for s in spans if s.kind == "CLIENT" and s.service == g.SERVICE_CLIENT]
        server = [s for s in spans if s.kind == "SERVER" and s.service == g.SERVICE_SERVER]
        return (client, server, spans) if client and server else None

    for row in (ok, refused):
        client, server, spans = wait_for(lambda row=row: both_sides(row["trace_id"]),
                                         f"the client and server spans of trace {row['trace_id']}", 90,
                                         diagnose=diagnose)
        assert len(client) == 1 and len(server) == 1, [(s.service, s.kind, s.name) for s in spans]
        c, s = client[0], server[0]
        assert c.name == name and s.name == name, (c.name, s.name)
        assert s.parent_span_id == c.span_id, "the server span is not the child of the client span"
        for span in (c, s):
            a = span.attributes
            assert a.get(C.ATTR_GENAI_OPERATION_NAME) == g.OPERATION, a
            assert a.get(C.ATTR_GENAI_REQUEST_MODEL) == g.MODEL, a
            assert a.get(C.ATTR_GENAI_PROVIDER_NAME) == g.PROVIDER, a
            if row is ok:
                assert not span.error, span
                assert C.ATTR_ERROR_TYPE not in a, a
                assert a.get(C.ATTR_GENAI_RESPONSE_MODEL) == g.MODEL, a
                assert _int(a.get(g.ATTR_USAGE_INPUT_TOKENS)) == row["input_tokens"] > 0, a
                assert _int(a.get(g.ATTR_USAGE_OUTPUT_TOKENS)) == row["output_tokens"] > 0, a
            else:
                assert span.error, f"the refused request's {span.kind} span has no error status"
                assert a.get(C.ATTR_ERROR_TYPE) == "overloaded", a
        assert c.attributes.get("server.port") is not None and c.attributes.get("server.address"), c.attributes


def test_server_logs_carry_the_trace(sut: StackUnderTest, chat: Chat, load: Load) -> None:
    require(sut, ("logs",))
    store = sut.logs
    assert store is not None
    row = wait_for(lambda: next((r for r in load.outcomes() if r["ok"]), None), "a successful request", 120)
    trace_id = row["trace_id"]
    lines = wait_for(lambda: [ln for ln in store.lines(g.SERVICE_SERVER, trace_id=trace_id)
                              if "chat completion" in ln.body], f"the server's log line of trace {trace_id}",
                     90, diagnose=_diagnose(chat, load))
    assert all(ln.trace_id == trace_id and ln.span_id for ln in lines), lines
    if sut.traces is not None:  # the line was written in the server span
        spans = wait_for(lambda: sut.trace(trace_id), f"trace {trace_id}", 90)
        server = {s.span_id for s in spans if s.kind == "SERVER" and s.service == g.SERVICE_SERVER}
        assert {ln.span_id for ln in lines} <= server, (lines, server)


# --------------------------------------------------------------------------- the dashboard's queries


def _dashboard_module():
    try:
        from mlobs.dashboards import genai
    except ImportError:
        return None
    return genai


def _variable_values(sut: StackUnderTest, dashboard: dict[str, Any],
                     preferred: list[str]) -> tuple[dict[str, Any], bool]:
    """The dashboard's query variables set as a user would pick them in Grafana to look at this example:
    each takes, of the values its own query finds in Prometheus, those in ``preferred`` (a multi-value
    variable all of them, a single-value one the first), never an all-value that other services could
    fill. Fails when a variable's query offers none of them. Also says whether a variable that offers
    the example's jobs is single-valued (then one selection cannot show both of them)."""
    from mlobs.dashboards.queries import substitute_variables, variable_defaults, variable_promql

    values: dict[str, Any] = dict(variable_defaults(dashboard))
    single_job = False
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        query = variable.get("query")
        query = query.get("query", "") if isinstance(query, dict) else query
        expr = variable_promql(query or "")
        if expr is None:
            continue
        rows = sut.promql(substitute_variables(expr, values))
        found = {v for row in rows for k, v in row["metric"].items() if k != "__name__"}
        mine = [v for v in preferred if v in found]
        assert mine, f"variable ${variable['name']} ({expr}) offers {sorted(found)}, none of {preferred}"
        multi = bool(variable.get("multi"))
        single_job = single_job or (not multi and {g.SERVICE_SERVER, g.SERVICE_CLIENT} <= found)
        values[variable["name"]] = mine if multi else mine[0]
    return values, single_job


def test_every_genai_panel_returns_data(sut: StackUnderTest, chat: Chat, load: Load) -> None:
    """Every Prometheus query of the GenAI dashboard returns data with its variables set to the example:
    both its services (the server's time to first token, the client's tokens and cost) and its model.
    Were the service variable single-valued, a query passes with data for either service."""
    module = _dashboard_module()
    if module is None:
        reason = ("mlobs/dashboards/genai.py does not exist: test_recorded_genai_series checks the series "
                  "the dashboard would read")
        print(f"SKIP reason: {reason}")
        pytest.skip(reason)
    from mlobs.dashboards import ANNOTATION_NO_DATA
    from mlobs.dashboards.queries import iter_queries, substitute_variables

    dashboard = module.build(sut.stack)
    no_data = {**ANNOTATION_NO_DATA, **getattr(module, "NO_DATA", {})}
    # The recorded series need a rate window of data and a rule evaluation after it.
    wait_for(lambda: sut.promql(f'{C.GENAI_COST_RATE}{{job="{g.SERVICE_CLIENT}"}}')
             and sut.promql(f'{C.GENAI_SERVER_ERRORS_RATE}{{job="{g.SERVICE_SERVER}"}}'),
             "the example's recorded GenAI series", 240, diagnose=_diagnose(chat, load))
    ours = [g.SERVICE_SERVER, g.SERVICE_CLIENT, g.MODEL, g.PROVIDER, g.OPERATION]
    both, single_job = _variable_values(sut, dashboard, ours)
    if single_job:
        print("NOTE: the dashboard's service variable is single-valued: checking each query for either service")
        picks = {svc: _variable_values(sut, dashboard, [svc, *ours[2:]])[0] for svc in ours[:2]}
    else:
        picks = {"both services": both}
    selections = {name: {**values, **getattr(module, "E2E_VALUES", {})} for name, values in picks.items()}
    queries = [q for q in iter_queries(dashboard) if q.language == "promql"]
    assert queries, "the GenAI dashboard has no Prometheus query"
    empty, skipped, filled_by = [], [], {svc: 0 for svc in selections}
    panels: dict[str, set[str]] = {}
    deadline = time.monotonic() + 120
    for q in queries:
        if q.panel in no_data:
            skipped.append(f"{q.panel}: {no_data[q.panel]}")
            continue
        exprs = {svc: substitute_variables(q.expr, values) for svc, values in selections.items()}
        with_data: list[str] = []
        while True:
            for svc, expr in exprs.items():
                try:
                    if sut.promql(expr):
                        with_data.append(svc)
                except httpx.HTTPStatusError as e:
                    pytest.fail(f"{q.dashboard} / {q.panel}: Prometheus refused {expr}: {e.response.text}")
            if with_data or time.monotonic() > deadline:
                break
            time.sleep(3)
        for svc in with_data:
            filled_by[svc] += 1
        panels.setdefault(q.panel, set()).update(with_data)
        if not with_data:
            empty.append(f"{q.panel} [{q.ref}]: {q.expr}")
    for reason in skipped:
        print(f"SKIP reason (panel allowed to be empty): {reason}")
    print(f"GenAI dashboard: {len(queries) - len(skipped)} Prometheus queries of {len(panels)} panels checked, "
          f"{len(skipped)} allowed empty; with data, by selection: {filled_by}; selections: {selections}")
    for panel, services in sorted(panels.items()):
        print(f"  {panel}: data for {sorted(services) or 'NONE'}")
    assert not empty, f"GenAI dashboard queries without data ({selections}):\n" + "\n".join(empty)


def test_recorded_genai_series(sut: StackUnderTest, chat: Chat, load: Load) -> None:
    """Every series prometheus/rules/genai.yml records (mlobs/contract.py) has the example's data, on
    the side that sends it; the cost is the token rates times the stack's price table; the measured
    time per output token is the server's per-token delay."""
    server, client = f'job="{g.SERVICE_SERVER}"', f'job="{g.SERVICE_CLIENT}"'
    mine = f'{MODEL_LABEL}="{g.MODEL}"'
    expected = [
        f'{C.GENAI_TOKENS_RATE}{{{client}, {mine}, {TOKEN_TYPE_LABEL}="{C.GENAI_TOKEN_INPUT}"}}',
        f'{C.GENAI_TOKENS_RATE}{{{client}, {mine}, {TOKEN_TYPE_LABEL}="{C.GENAI_TOKEN_OUTPUT}"}}',
        f"{C.GENAI_CLIENT_OPERATIONS_RATE}{{{client}, {mine}}}",
        f'{C.GENAI_CLIENT_ERRORS_RATE}{{{client}, {mine}, {ERROR_TYPE_LABEL}="overloaded"}}',
        f"{C.GENAI_CLIENT_ERRORS_RATIO}{{{client}, {mine}}} > 0",
        f"{C.GENAI_SERVER_REQUESTS_RATE}{{{server}, {mine}}}",
        f'{C.GENAI_SERVER_ERRORS_RATE}{{{server}, {mine}, {ERROR_TYPE_LABEL}="overloaded"}}',
        f"{C.GENAI_SERVER_ERRORS_RATIO}{{{server}, {mine}}} > 0",
        *[f"{C.genai_quantile(h, q)}{{{client if h == C.GENAI_CLIENT_OPERATION_DURATION_SECONDS else server}, {mine}}}"
          for h in C.GENAI_QUANTILE_HISTOGRAMS for q in C.GENAI_QUANTILES],
        f'count({C.GENAI_PRICE_PER_1K}{{{mine}}}) == 2',
        f"{C.GENAI_COST_RATE}{{{client}, {mine}}} > 0",
    ]
    missing = []
    deadline = time.monotonic() + 240
    for expr in expected:
        while not sut.promql(expr) and time.monotonic() < deadline:
            time.sleep(3)
        if not sut.promql(expr):
            missing.append(expr)
    assert not missing, "recorded GenAI series without data:\n" + "\n".join(missing) + "\n" + load.proc.tail(5)
    print(f"recorded GenAI series: {len(expected)} selectors with data")
    _assert_cost_follows_prices(sut)
    _assert_real_timing(sut)


def _promql_at(sut: StackUnderTest, expr: str, at: float) -> list[dict[str, Any]]:
    r = httpx.get(f"{sut.url('prometheus')}/api/v1/query", params={"query": expr, "time": at}, timeout=10)
    r.raise_for_status()
    return r.json()["data"]["result"]


def _assert_cost_follows_prices(sut: StackUnderTest) -> None:
    """The recorded cost is the recorded token rates times the price table of the stack under test."""
    price = sut.stack.genai.prices.get(g.MODEL)
    assert price is not None, f"tests/stack.test.yaml has no genai.prices entry for {g.MODEL}"
    mine = f'job="{g.SERVICE_CLIENT}", {MODEL_LABEL}="{g.MODEL}"'
    selector = f"{C.GENAI_COST_RATE}{{{mine}}}"
    at = float(sut.promql(f"timestamp({selector})")[0]["value"][1])  # one evaluation of the rule group
    cost = _promql_at(sut, selector, at)[0]
    rates = {row["metric"][TOKEN_TYPE_LABEL]: float(row["value"][1])
             for row in _promql_at(sut, f"{C.GENAI_TOKENS_RATE}{{{mine}}}", at)}
    expected = (rates[C.GENAI_TOKEN_INPUT] * price.input_per_1k
                + rates[C.GENAI_TOKEN_OUTPUT] * price.output_per_1k) / 1000
    assert math.isclose(float(cost["value"][1]), expected, rel_tol=1e-6), (cost, rates, price)


def _assert_real_timing(sut: StackUnderTest) -> None:
    """The server's time per output token is the configured per-token delay (± its jitter), measured."""
    series = C.genai_quantile(C.GENAI_SERVER_TIME_PER_OUTPUT_TOKEN_SECONDS, 50)
    p50 = sut.promql(f'{series}{{job="{g.SERVICE_SERVER}"}}')
    value = float(p50[0]["value"][1])
    assert TOKEN_DELAY * 0.5 < value < TOKEN_DELAY * 2.5, f"p50 time per output token {value}s, delay {TOKEN_DELAY}s"


# --------------------------------------------------------------------------- the time-to-first-token alert


def _ttft_alerts(sut: StackUnderTest, state: str | None = None) -> list[dict[str, Any]]:
    return [a for a in sut.alerts() if a["labels"].get("alertname") == TTFT_ALERT
            and a["labels"].get("job") == g.SERVICE_SERVER and a["labels"].get(MODEL_LABEL) == g.MODEL
            and (state is None or a["state"] == state)]


def _in_alertmanager(sut: StackUnderTest) -> list[dict[str, Any]]:
    r = httpx.get(f"{sut.url('alertmanager')}/api/v2/alerts", timeout=10,
                  params={"filter": [f'alertname="{TTFT_ALERT}"', f'job="{g.SERVICE_SERVER}"']})
    r.raise_for_status()
    return r.json()


def test_stall_before_first_token_fires_ttft_alert_and_it_resolves(sut: StackUnderTest, chat: Chat,
                                                                   load: Load) -> None:
    al = sut.stack.alerts
    if seconds(al.rate_window) > 60 or seconds(al.for_) > 30:
        reason = (f"the alert case needs the fast profile of tests/stack.test.yaml; this stack has "
                  f"rate_window={al.rate_window}, for={al.for_}")
        print(f"SKIP reason: {reason}")
        pytest.skip(reason)
    limit = al.genai_ttft_p95_seconds
    p95 = f'{C.genai_quantile(C.GENAI_SERVER_TIME_TO_FIRST_TOKEN_SECONDS, 95)}{{job="{g.SERVICE_SERVER}"}}'
    diagnose = _diagnose(chat, load)

    # Before: the p95 is measured and well under the limit, and the alert is not active.
    before = wait_for(lambda: sut.promql(p95), f"{p95} recorded", 240, diagnose=diagnose)
    assert float(before[0]["value"][1]) < limit, before
    assert not _ttft_alerts(sut), _ttft_alerts(sut)

    stall = limit + 1.5
    started, wall = time.monotonic(), time.time()
    chat.admin("POST", {"stall_seconds": stall})
    try:
        firing = wait_for(lambda: _ttft_alerts(sut, "firing"), f"{TTFT_ALERT} firing", 300, diagnose=diagnose)
        fired_after = time.monotonic() - started
        assert float(firing[0]["value"]) > limit, firing
        # The client saw the stall too: its first chunks came no sooner than the stall.
        streamed = [r for r in load.outcomes(since=wall + 1) if r["ok"] and r["stream"]]
        assert streamed and min(r["first_chunk_s"] for r in streamed) >= stall, streamed[:5]
        if sut.has("alertmanager"):
            wait_for(lambda: _in_alertmanager(sut), f"{TTFT_ALERT} in Alertmanager", 90)
    finally:
        chat.admin("DELETE")
    stopped = time.monotonic()
    wait_for(lambda: not _ttft_alerts(sut), f"{TTFT_ALERT} resolved", 300, diagnose=diagnose)
    print(f"{TTFT_ALERT}: fired {fired_after:.0f}s after the stall ({stall}s > {limit}s) began, "
          f"resolved {time.monotonic() - stopped:.0f}s after it stopped")
    wait_for(lambda: [r for r in sut.promql(p95) if float(r["value"][1]) < limit], f"{p95} back under {limit}", 120)

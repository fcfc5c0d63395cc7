"""Link integrity: after load, every exemplar Prometheus holds and every trace id of an ERROR log
line names a trace the trace store has, at the default sampling and at 10%.

The figures (exemplars checked, found, and the same for ERROR log lines) are printed: `make test`
output is where the README's numbers come from.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness import StackUnderTest, require

from generator.workload import Workload
from mlobs import config, envfile, sampling
from mlobs.render import ROOT

pytestmark = pytest.mark.e2e

MIN_EXEMPLARS = 200
SELECTORS = ("ml_request_duration_seconds_bucket{{job=\"{svc}\"}}",
             "ml_stage_duration_seconds_bucket{{job=\"{svc}\"}}",
             "traces_spanmetrics_duration_seconds_bucket{{service_name=\"{svc}\"}}")


def _load(sut: StackUnderTest, seconds: float, seed: int) -> dict[str, Any]:
    """Requests back to back for `seconds`, a share of them failing (the errors fault on inference
    at 10%). Exemplars are kept per bucket and export interval (5 s), so the spread in time, not
    the number of requests, is what gives many distinct exemplars."""
    work = Workload(seed=seed, batch_share=0.0)
    codes: dict[str, int] = {}
    end = time.monotonic() + seconds
    with sut.fault(fault="errors", stage="inference", rate=0.1):
        while time.monotonic() < end:
            r, tid, _ = sut.predict(work.single().body)
            codes[tid] = r.status_code
    return {"sent": set(codes), "codes": codes, "failed": sum(c >= 500 for c in codes.values())}


def _exemplar_ids(sut: StackUnderTest, since: float) -> dict[str, set[str]]:
    out = {}
    for sel in SELECTORS:
        q = sel.format(svc=sut.service_name)
        r = httpx.get(f"{sut.url('prometheus')}/api/v1/query_exemplars", timeout=20,
                      params={"query": q, "start": since, "end": time.time() + 60})
        r.raise_for_status()
        out[q] = {e["labels"]["trace_id"] for s in r.json()["data"] for e in s["exemplars"]
                  if e["labels"].get("trace_id")}
    return out


def check_links(sut: StackUnderTest, seconds: float, seed: int) -> dict[str, Any]:
    require(sut, ("prometheus", "traces", "logs"))
    since = time.time() - 5
    facts = _load(sut, seconds, seed)
    # Long enough for the tail-sampling decision, the exporters' batches and a metric export.
    pct = sut.stack.sampling.effective_percentage
    deadline = time.monotonic() + 90
    while True:
        by_selector = _exemplar_ids(sut, since)
        exemplars = set().union(*by_selector.values())
        if len(exemplars) >= MIN_EXEMPLARS or time.monotonic() > deadline:
            break
        time.sleep(5)
    error_logs = {ln.trace_id for ln in sut.log_lines(severity="ERROR", window=time.time() - since + 60)
                  if ln.trace_id}
    wanted = exemplars | error_logs
    missing = set(wanted)
    deadline = time.monotonic() + 60
    while missing and time.monotonic() < deadline:
        missing = {t for t in missing if not sut.trace(t)}
        if missing:
            time.sleep(3)
    figures = {
        "sampling %": pct, "requests": len(facts["codes"]), "load seconds": seconds, "failed": facts["failed"],
        "exemplars": len(exemplars), "exemplars found": len(exemplars - missing),
        "per selector": {k: len(v) for k, v in by_selector.items()},
        "ERROR log trace ids": len(error_logs), "ERROR log traces found": len(error_logs - missing),
        "sent traces kept by chance": sum(sampling.kept_by_chance(t, pct) for t in facts["sent"]),
    }
    print(f"link integrity ({sut.traces.name}, {sut.logs.name}): {figures}")
    assert len(exemplars) >= MIN_EXEMPLARS, figures
    assert error_logs, figures
    if missing:
        # What the collector's tail sampler says, and what we know of each missing trace.
        text = httpx.get(f"{sut.url('collector_metrics')}/metrics", timeout=10).text
        sampler = [ln for ln in text.splitlines() if "tail_sampling" in ln and not ln.startswith("#")][:40]
        known = {t: {"sent": t in facts["codes"], "code": facts["codes"].get(t), "error log": t in error_logs,
                     "by chance": sampling.kept_by_chance(t, pct)} for t in sorted(missing)[:10]}
        print("link integrity: missing traces:", known, "\n" + "\n".join(sampler))
    assert not missing, {"missing": sorted(missing)[:10], **figures}
    if pct < 100:
        # The share is really in effect: healthy fast traces the rule drops are not stored.
        dropped = [t for t, c in facts["codes"].items() if c == 200 and not sampling.kept_by_chance(t, pct)][:30]
        stored = [t for t in dropped if sut.trace(t)]
        figures["healthy traces the rule drops, found stored"] = f"{len(stored)}/{len(dropped)}"
        print(f"link integrity: {figures}")
        assert len(stored) <= len(dropped) // 10, figures  # only the odd slow one is kept
    return figures


def test_every_exemplar_and_error_log_resolves_at_the_default_sampling(sut: StackUnderTest) -> None:
    check_links(sut, 75, seed=71)


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def test_every_exemplar_and_error_log_resolves_at_10_percent(start_native_stack, tmp_path_factory) -> None:
    """A second native stack, on ports 10000 above stack.yaml's, keeping 10% of the healthy
    traces: the exemplars and log lines of the others must not link to them."""
    base = config._read(ROOT / "stack.yaml")
    data = config._merge(base, config._read(ROOT / "tests" / "stack.test.yaml"))
    test_ports = set(data["ports"].values())
    data["ports"] = {k: v + 10000 for k, v in base["ports"].items()}
    # Below the kernel's ephemeral range: a client socket of the running suite can hold a port
    # of that range at the moment a listener of this stack binds it.
    low = _ephemeral_low()
    clash = {k: v for k, v in data["ports"].items() if v >= low or v in test_ports}
    assert not clash, f"ports of the 10% stack in the ephemeral range (from {low}) or the test stack's: {clash}"
    data["sampling"]["percentage"] = 10
    stack = config.parse(data, "stack.yaml + tests/stack.test.yaml + 10% sampling")
    with start_native_stack(stack, tmp_path_factory.mktemp("native-stack-10pct")) as running:
        healthy = {n for n, h in running.health.items() if h.healthy}
        other = StackUnderTest(stack, envfile.read(running.state.env_file), healthy, dict(running.plan.missing))
        check_links(other, 120, seed=72)

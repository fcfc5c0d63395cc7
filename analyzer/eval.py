"""`make eval-rca`: the analyzer against a matrix of injected faults, on a native stack of its own.

    python -m analyzer.eval [--quick] [--out DIR] [--seeds N] [--clean-minutes M]

Starts a native stack on the fast profile (tests/stack.test.yaml's windows) on stack.yaml's ports
+ 13000, in a state directory of its own (``--out``/stack), drives the sample service with steady
traffic, injects each fault of the matrix through the admin API (or, for the CPU-bound neighbour,
runs one busy loop per CPU beside the stack), and reads the analyzer's incidents
(``GET /incidents``) — the detector's and the alerts'. The ground truth is the fault this script
injected; the analyzer never sees it (it never reads ``ml_fault_active``). Each case's incident is
kept as ``cases/<case>.json`` and ``cases/<case>.html`` (its report) beside the results.

Measured: detection latency (fault injected → the detector's incident, p50/p95), false alarms per
clean hour (incidents opened while no fault is on), AC@1, AC@3 and Avg@5 over the single faults
(RCAEval's definitions: AC@k is the share of cases whose cause is in the top k; Avg@5 the mean of
AC@1..AC@5), AC@2 for pairs (both causes in the top two). Writes ``eval.json`` and ``eval.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import yaml

from analyzer.rca import HOST_CPU_SUBJECT
from mlobs import config, envfile, render
from mlobs.contract import FEATURE_LOOKUP_SPAN

ROOT = render.ROOT
PORT_SHIFT = 13000
BARO_RE2_TT = {"AC@1": 0.67, "AC@3": 0.82, "Avg@5": 0.80}
WARM_UP = 180
FAULT_SECONDS = 90
DETECT_TIMEOUT = 120
SETTLE_TIMEOUT = 180
MODEL = "breast-cancer-classifier"
CLEAN_MINUTES = {"quick": 5.0, "full": 30.0}
# The faults at three places or sizes each (generator/faults.py); regression takes no parameter.
LATENCY = (("inference", 0.8), ("validation", 0.5), ("postprocessing", 0.3))
ERRORS = (("inference", 0.5), ("feature_extraction", 0.3), ("postprocessing", 0.2))
SLOW_LOOKUP = (0.8, 0.4, 0.2)
DRIFT = (("mean_radius", 3.0), ("mean_texture", 2.5), ("mean_area", 2.0))
QUICK = ("latency inference 0.8s", "errors inference 0.5", "slow_lookup 0.8s", "drift mean_radius x3.0",
         "cpu neighbour")
#: The CPU-bound neighbour: a process of its own per busy loop, one per CPU (at least two).
NEIGHBOUR_CODE = "while True: pass"


def neighbour_processes() -> int:
    return max(2, os.cpu_count() or 2)


@dataclass
class Case:
    name: str
    faults: list[dict[str, Any]]
    truth: list[tuple[str, str]]  # (kind, subject) of each injected cause
    neighbour: int = 0  # busy-loop processes beside the stack for the fault window
    seed: int = 1  # which pass over the matrix (the full matrix repeats the single faults per seed)


@dataclass
class Result:
    case: str
    truth: list[list[str]]
    detected: bool
    latency: float | None
    ranking: list[list[str]]
    ranks: list[int | None]
    incident: str | None
    source: str | None


def single_cases() -> list[Case]:
    """Every single fault once: each fault kind at its three places or sizes, the regression, the neighbour."""
    singles: list[Case] = []
    for stage, sec in LATENCY:
        singles.append(Case(f"latency {stage} {sec}s", [{"fault": "latency", "stage": stage, "seconds": sec}],
                            [("stage_latency", stage)]))
    for stage, rate in ERRORS:
        singles.append(Case(f"errors {stage} {rate}", [{"fault": "errors", "stage": stage, "rate": rate}],
                            [("errors", stage)]))
    for sec in SLOW_LOOKUP:
        singles.append(Case(f"slow_lookup {sec}s", [{"fault": "slow_lookup", "seconds": sec}],
                            [("downstream_latency", FEATURE_LOOKUP_SPAN)]))
    for feat, scale in DRIFT:
        singles.append(Case(f"drift {feat} x{scale}", [{"fault": "drift", "features": [feat], "scale": scale}],
                            [("drift", feat)]))
    singles.append(Case("regression", [{"fault": "regression"}], [("model_regression", MODEL)]))
    # Another process burns every CPU of the host: the host saturates, not the service's own process.
    singles.append(Case("cpu neighbour", [], [("resource", HOST_CPU_SUBJECT)], neighbour=neighbour_processes()))
    return singles


def matrix(quick: bool, seeds: int) -> list[Case]:
    """The cases in the order they run: the single faults once per seed (named ``… #seed`` when there
    are several), then the pairs; ``quick``: one pass over QUICK's singles and the first pair."""
    singles = single_cases()
    pairs = [
        Case("pair latency inference + drift mean_radius",
             [{"fault": "latency", "stage": "inference", "seconds": 0.8},
              {"fault": "drift", "features": ["mean_radius"], "scale": 3.0}],
             [("stage_latency", "inference"), ("drift", "mean_radius")]),
        Case("pair errors inference + slow_lookup",
             [{"fault": "errors", "stage": "inference", "rate": 0.5}, {"fault": "slow_lookup", "seconds": 0.8}],
             [("errors", "inference"), ("downstream_latency", FEATURE_LOOKUP_SPAN)]),
    ]
    if quick:
        return [c for c in singles if c.name in QUICK] + pairs[:1]
    if seeds < 1:
        raise ValueError(f"seeds must be at least 1, not {seeds}")
    named = (lambda c, seed: f"{c.name} #{seed}") if seeds > 1 else (lambda c, seed: c.name)
    repeated = [replace(c, name=named(c, seed), seed=seed) for seed in range(1, seeds + 1) for c in singles]
    return repeated + pairs


def clean_minutes(quick: bool, given: float | None = None) -> float:
    """The clean stretch before the faults (no fault on: any detector incident is a false alarm)."""
    if given is not None:
        if given < 0:
            raise ValueError(f"clean minutes must not be negative, not {given}")
        return given
    return CLEAN_MINUTES["quick" if quick else "full"]


def overlay_file(out: Path) -> Path:
    """tests/stack.test.yaml's fast profile, on stack.yaml's ports + 13000."""
    base = config.load(ROOT / "stack.yaml")
    fast = yaml.safe_load((ROOT / "tests" / "stack.test.yaml").read_text())
    ports = {k: v + PORT_SHIFT for k, v in base.ports.model_dump().items() if isinstance(v, int)}
    too_high = {k: v for k, v in ports.items() if v >= 32768}
    if too_high:
        raise SystemExit(f"ports above 32767 after the +{PORT_SHIFT} shift: {too_high}")
    fast["ports"] = ports
    path = out / "eval-overlay.yaml"
    path.write_text(yaml.safe_dump(fast))
    return path


class Traffic:
    def __init__(self, url: str, seed: int) -> None:
        from generator.workload import Workload

        self.url = url
        self.work = Workload(seed=seed, batch_share=0.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.sent = 0

    def _run(self) -> None:
        with httpx.Client(timeout=30) as http:
            while not self._stop.is_set():
                sample = self.work.single()
                try:
                    rid = f"eval-{secrets.token_hex(6)}"
                    r = http.post(f"{self.url}/predict", json=sample.body, headers={"X-Request-ID": rid})
                    if r.status_code == 200 and rid and self.work.chance(0.5):
                        http.post(f"{self.url}/feedback", json={"request_id": rid, "index": 0,
                                                                "label": sample.labels[0]})
                    self.sent += 1
                except httpx.HTTPError:
                    pass
                self._stop.wait(0.02)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def incidents(analyzer: str) -> list[dict[str, Any]]:
    try:
        return httpx.get(f"{analyzer}/incidents", timeout=10).json()
    except (httpx.HTTPError, ValueError):
        return []


def ts(text: str | None) -> float | None:
    if not text:
        return None
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def ranking_of(incident: dict[str, Any]) -> list[list[str]]:
    """The causes the user sees, in order: the suspects, then the findings; each (kind, subject) once,
    ``unknown`` left out."""
    ranking: list[list[str]] = []
    for f in [*incident.get("suspects", []), *incident.get("findings", [])]:
        pair = [f["kind"], f["subject"]]
        if pair not in ranking and f["kind"] != "unknown":
            ranking.append(pair)
    return ranking


def false_alarms_of(listed: list[dict[str, Any]], known: set[str]) -> list[dict[str, Any]]:
    """The detector's incidents that were not there before the clean stretch began."""
    return [i for i in listed if i["fingerprint"] not in known and i.get("source") == "detector"]


def slug(name: str) -> str:
    """A file name for a case: ``latency inference 0.8s`` -> ``latency-inference-0.8s``."""
    return re.sub(r"[^A-Za-z0-9._]+", "-", name).strip("-") or "case"


def start_neighbour(processes: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", NEIGHBOUR_CODE]) for _ in range(processes)]


def stop_neighbour(running: list[subprocess.Popen]) -> None:
    for p in running:
        p.kill()
    for p in running:
        p.wait()


def keep_incident(out: Path, case: Case, incident: dict[str, Any], analyzer: str) -> None:
    """The case's incident as the analyzer gives it (JSON, and its HTML report) in out/cases/."""
    cases = out / "cases"
    cases.mkdir(parents=True, exist_ok=True)
    name = slug(case.name)  # not Path.with_suffix: "latency inference 0.8s" has a dot of its own
    (cases / f"{name}.json").write_text(json.dumps(incident, indent=2, default=str))
    try:
        r = httpx.get(f"{analyzer}/incidents/{incident['fingerprint']}/report.html", timeout=60)
        if r.status_code == 200:
            (cases / f"{name}.html").write_text(r.text)
    except httpx.HTTPError as exc:
        print(f"eval-rca: no report for {case.name}: {exc}", file=sys.stderr)


def rank_of(ranking: list[list[str]], truth: tuple[str, str]) -> int | None:
    kind, subject = truth
    for i, (k, s) in enumerate(ranking):
        if k == kind and (s == subject or s.startswith(subject)):
            return i + 1
    return None


def run_case(case: Case, inference: str, analyzer: str, admin: dict[str, str], service: str,
             out: Path | None = None) -> Result:
    before = {i["fingerprint"] for i in incidents(analyzer) if i.get("status") == "firing"}
    t0 = time.time()
    neighbour = start_neighbour(case.neighbour) if case.neighbour else []
    for fault in case.faults:
        httpx.post(f"{inference}/admin/faults", json={"enabled": True, **fault}, headers=admin, timeout=30)
    found: dict[str, Any] | None = None
    latency = None
    try:
        deadline = t0 + DETECT_TIMEOUT
        while time.time() < deadline:
            for i in incidents(analyzer):
                if i.get("service") != service or i.get("status") != "firing" or i["fingerprint"] in before:
                    continue
                found = i
                latency = (ts(i.get("detected_at")) or time.time()) - t0
                break
            if found:
                break
            time.sleep(3)
        # Let the analysis see the whole fault, then read the ranking the user would see.
        time.sleep(max(0.0, t0 + FAULT_SECONDS - time.time()))
        if found:
            found = next((i for i in incidents(analyzer) if i["fingerprint"] == found["fingerprint"]), found)
            if found.get("detected_at"):
                latency = ts(found["detected_at"]) - t0
    finally:
        httpx.request("DELETE", f"{inference}/admin/faults", headers=admin, timeout=30)
        stop_neighbour(neighbour)
    ranking = ranking_of(found) if found else []
    ranks = [rank_of(ranking, t) for t in case.truth]
    # Wait for the incident to close before the next case.
    deadline = time.time() + SETTLE_TIMEOUT
    while found and time.time() < deadline:
        now = next((i for i in incidents(analyzer) if i["fingerprint"] == found["fingerprint"]), None)
        if not now or now.get("status") == "resolved":
            break
        time.sleep(5)
    if found and out is not None:
        keep_incident(out, case, found, analyzer)
    time.sleep(30)
    return Result(case.name, [list(t) for t in case.truth], found is not None,
                  round(latency, 1) if latency is not None and found and found.get("detected_at") else None,
                  ranking[:5], ranks, found["fingerprint"] if found else None, found.get("source") if found else None)


def percentile(values: list[float], q: float) -> float | None:
    """The q-quantile (0…1) by linear interpolation between the closest ranks, to 0.1; None without values."""
    if not values:
        return None
    values = sorted(values)
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return round(values[lo] + (values[hi] - values[lo]) * (k - lo), 1)


def ac_at(k: int, results: list[Result]) -> float | None:
    """AC@k: the share of cases whose every cause ranks in the top k (a missed or undetected cause
    has no rank: it counts against). None without cases."""
    if not results:
        return None
    return round(sum(all(x is not None and x <= k for x in r.ranks) for r in results) / len(results), 3)


def avg_at_5(results: list[Result]) -> float | None:
    """Avg@5: the mean of AC@1 … AC@5."""
    if not results:
        return None
    return round(statistics.mean(ac_at(k, results) for k in range(1, 6)), 3)


def false_alarms_per_hour(false_alarms: int, clean_seconds: float) -> float | None:
    return round(false_alarms * 3600 / clean_seconds, 2) if clean_seconds > 0 else None


def summarize(results: list[Result], clean_seconds: float, false_alarms: int) -> dict[str, Any]:
    """AC@1, AC@3 and Avg@5 over the single faults, AC@2 over the pairs (both causes in the top two),
    detection latency over every detected case, false alarms per clean hour."""
    singles = [r for r in results if len(r.truth) == 1]
    pairs = [r for r in results if len(r.truth) == 2]
    lat = [r.latency for r in results if r.latency is not None]
    return {
        "cases": len(results),
        "single": len(singles),
        "pairs": len(pairs),
        "detected": sum(r.detected for r in results),
        "detection_latency_p50_s": percentile(lat, 0.5),
        "detection_latency_p95_s": percentile(lat, 0.95),
        "clean_minutes": round(clean_seconds / 60, 1),
        "false_alarms": false_alarms,
        "false_alarms_per_clean_hour": false_alarms_per_hour(false_alarms, clean_seconds),
        "AC@1": ac_at(1, singles),
        "AC@3": ac_at(3, singles),
        "Avg@5": avg_at_5(singles),
        "AC@2 pairs": ac_at(2, pairs),
        "baro_re2_train_ticket": BARO_RE2_TT,
    }


def markdown(summary: dict[str, Any], results: list[Result], quick: bool) -> str:
    s = summary
    lines = [
        f"### `make eval-rca{' QUICK=1' if quick else ''}`: {s['cases']} cases "
        f"({s['single']} single, {s['pairs']} pairs), {s['clean_minutes']} clean minutes",
        "",
        "| metric | mlobs analyzer | BARO, RCAEval RE2 Train Ticket (published) | goal |",
        "| --- | --- | --- | --- |",
        f"| AC@1 | {s['AC@1']} | {BARO_RE2_TT['AC@1']} | ≥ 0.9 |",
        f"| AC@3 | {s['AC@3']} | {BARO_RE2_TT['AC@3']} | 1.0 |",
        f"| Avg@5 | {s['Avg@5']} | {BARO_RE2_TT['Avg@5']:.2f} | |",
        f"| AC@2 (pairs) | {s['AC@2 pairs']} | | |",
        f"| detection latency p50 / p95 | {s['detection_latency_p50_s']} s / {s['detection_latency_p95_s']} s "
        "| | p95 ≤ 60 s |",
        f"| false alarms per clean hour | {s['false_alarms_per_clean_hour']} ({s['false_alarms']} in "
        f"{s['clean_minutes']} min) | | ≤ 1 |",
        "",
        "| case | detected | latency (s) | rank of the cause | top 3 |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in results:
        top = "; ".join(f"{k} {sub}" for k, sub in r.ranking[:3]) or "-"
        lines.append(f"| {r.case} | {'yes' if r.detected else 'no'} | {r.latency if r.latency is not None else '-'} "
                     f"| {', '.join(str(x) if x else 'miss' for x in r.ranks)} | {top} |")
    return "\n".join(lines) + "\n"


def report(quick: bool, summary: dict[str, Any], results: list[Result],
           false_alarms: list[dict[str, Any]]) -> dict[str, Any]:
    """The body of eval.json."""
    return {
        "quick": quick,
        "summary": summary,
        "results": [asdict(r) for r in results],
        "false_alarms": [{k: i.get(k) for k in ("fingerprint", "service", "change_point", "top_suspect")}
                         for i in false_alarms],
    }


def write_results(out: Path, body: dict[str, Any], results: list[Result]) -> tuple[Path, Path]:
    """eval.json (``body``) and eval.md in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "eval.json", out / "eval.md"
    json_path.write_text(json.dumps(body, indent=2, default=str))
    md_path.write_text(markdown(body["summary"], results, body["quick"]))
    return json_path, md_path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="a subset: 4 single faults, the CPU-bound neighbour, 1 pair, a short clean stretch")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--clean-minutes", type=float, default=None)
    ap.add_argument("--out", type=Path, default=ROOT / ".stack" / "eval-rca")
    args = ap.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    from mlobs.runtime import native

    stack = config.load(ROOT / "stack.yaml", overlay_file(out))
    state = native.State(root=out / "stack", bin_dir=ROOT / ".bin", env_file=out / ".env")
    clean = clean_minutes(args.quick, args.clean_minutes)
    cases = matrix(args.quick, args.seeds)
    print(f"eval-rca: starting a native stack in {state.root} (ports +{PORT_SHIFT})", flush=True)
    plan, health = native.start(stack, state, timeout=240)
    try:
        sick = {n: h.detail for n, h in health.items() if not h.healthy}
        if sick:
            print(f"eval-rca: unhealthy: {sick}", file=sys.stderr)
            return 2
        secrets_ = envfile.read(state.env_file)
        admin = {"X-Admin-Token": secrets_.get("MLOBS_ADMIN_TOKEN", "")}
        inference = f"http://127.0.0.1:{stack.ports.inference}"
        analyzer = f"http://127.0.0.1:{stack.ports.analyzer}"
        service = stack.sample_service.name if stack.sample_service else "mlobs-inference"
        results: list[Result] = []
        with Traffic(inference, seed=7):
            print(f"eval-rca: warm-up {WARM_UP}s", flush=True)
            time.sleep(WARM_UP)
            # The clean stretch first: no fault, so any incident the detector opens is a false alarm.
            t_clean = time.time()
            known = {i["fingerprint"] for i in incidents(analyzer)}
            time.sleep(clean * 60)
            clean_seconds = time.time() - t_clean
            false_alarms = false_alarms_of(incidents(analyzer), known)
            print(f"eval-rca: clean {clean_seconds / 60:.1f} min, {len(false_alarms)} detector incidents", flush=True)
            for case in cases:
                r = run_case(case, inference, analyzer, admin, service, out)
                results.append(r)
                print(f"eval-rca: {r.case}: detected={r.detected} latency={r.latency} ranks={r.ranks} "
                      f"top={r.ranking[:3]}", flush=True)
        summary = summarize(results, clean_seconds, len(false_alarms))
        write_results(out, report(args.quick, summary, results, false_alarms), results)
        print(markdown(summary, results, args.quick))
        return 0
    finally:
        native.stop(state)


if __name__ == "__main__":
    sys.exit(main())

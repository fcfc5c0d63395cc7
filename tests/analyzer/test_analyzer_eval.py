"""`make eval-rca` (analyzer/eval.py) without a stack: its metrics against hand-computed values, the fault
matrix it runs, and the eval.json / eval.md it writes."""

from __future__ import annotations

import json
import os
import subprocess
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import httpx
import pytest
import yaml

from analyzer import eval as ev
from analyzer.rca import HOST_CPU_SUBJECT
from generator.faults import FAULT_KINDS, FaultChange
from mlobs import config
from mlobs.contract import FEATURE_LOOKUP_SPAN, STAGES

ROOT = Path(__file__).resolve().parents[2]


def result(case: str, ranks: list[int | None], latency: float | None = None, *, detected: bool = True,
           ranking: list[list[str]] | None = None) -> ev.Result:
    truth = [["stage_latency", "inference"], ["drift", "mean_radius"]][: len(ranks)]
    return ev.Result(case, truth, detected, latency, ranking or [], ranks, "cp-1" if detected else None,
                     "detector" if detected else None)


# ---- the metrics


def test_percentile_interpolates_between_the_closest_ranks() -> None:
    values = [40.0, 10.0, 30.0, 20.0]  # sorted: 10 20 30 40; rank k = 3q
    assert ev.percentile(values, 0.5) == 25.0  # k 1.5: halfway from 20 to 30
    assert ev.percentile(values, 0.95) == 38.5  # k 2.85: 30 + 0.85 × 10
    assert ev.percentile(values, 0.0) == 10.0 and ev.percentile(values, 1.0) == 40.0
    assert ev.percentile([42.0], 0.95) == 42.0
    assert ev.percentile([], 0.5) is None
    assert values == [40.0, 10.0, 30.0, 20.0], "the caller's list is left alone"


def test_ac_at_k_is_the_share_of_cases_with_the_cause_in_the_top_k() -> None:
    singles = [result("a", [1]), result("b", [2]), result("c", [4]), result("d", [None], detected=False)]
    assert [ev.ac_at(k, singles) for k in range(1, 6)] == [0.25, 0.5, 0.5, 0.75, 0.75]
    assert ev.avg_at_5(singles) == 0.55  # (0.25 + 0.5 + 0.5 + 0.75 + 0.75) / 5
    assert ev.ac_at(3, [result("a", [1]), result("b", [1]), result("c", [None])]) == 0.667  # 2/3, to 3 places
    assert ev.ac_at(1, []) is None and ev.avg_at_5([]) is None


def test_ac_at_2_of_a_pair_needs_both_causes_in_the_top_two() -> None:
    pairs = [result("p", [1, 2]), result("q", [1, 3]), result("r", [None, 1]), result("s", [2, 1])]
    assert ev.ac_at(2, pairs) == 0.5
    assert ev.ac_at(3, pairs) == 0.75


def test_false_alarms_per_clean_hour() -> None:
    assert ev.false_alarms_per_hour(2, 1800) == 4.0
    assert ev.false_alarms_per_hour(1, 7 * 60) == 8.57  # 3600 / 420
    assert ev.false_alarms_per_hour(0, 300) == 0.0
    assert ev.false_alarms_per_hour(3, 0) is None


def test_false_alarms_are_the_detector_incidents_new_in_the_clean_stretch() -> None:
    listed = [
        {"fingerprint": "cp-old", "source": "detector"},
        {"fingerprint": "alert-1", "source": "alert"},
        {"fingerprint": "cp-new", "source": "detector"},
    ]
    assert ev.false_alarms_of(listed, {"cp-old"}) == [listed[2]]
    assert ev.false_alarms_of([], set()) == []


def test_summary_of_singles_pairs_latency_and_the_clean_stretch() -> None:
    results = [
        result("latency", [1], 30.0),
        result("errors", [3], 50.0),
        result("drift", [None], None, detected=False),
        result("slow", [2], 70.0),
        result("pair", [1, 2], 41.0),
    ]
    s = ev.summarize(results, clean_seconds=1800.0, false_alarms=2)
    assert s == {
        "cases": 5,
        "single": 4,
        "pairs": 1,
        "detected": 4,
        "detection_latency_p50_s": 45.5,  # of 30 41 50 70: k 1.5, 41 + 0.5 × 9
        "detection_latency_p95_s": 67.0,  # k 2.85: 50 + 0.85 × 20
        "clean_minutes": 30.0,
        "false_alarms": 2,
        "false_alarms_per_clean_hour": 4.0,
        "AC@1": 0.25,
        "AC@3": 0.75,
        "Avg@5": 0.6,  # (0.25 + 0.5 + 0.75 + 0.75 + 0.75) / 5
        "AC@2 pairs": 1.0,
        "baro_re2_train_ticket": {"AC@1": 0.67, "AC@3": 0.82, "Avg@5": 0.80},
    }
    empty = ev.summarize([], 0.0, 0)
    assert empty["AC@1"] is None and empty["AC@2 pairs"] is None and empty["detection_latency_p95_s"] is None
    assert empty["false_alarms_per_clean_hour"] is None


def test_the_ranking_is_suspects_then_findings_each_once() -> None:
    incident = {
        "suspects": [{"kind": "resource", "subject": "host cpu"}],
        "findings": [
            {"kind": "resource", "subject": "host cpu"},
            {"kind": "unknown", "subject": "mlobs-inference"},
            {"kind": "model_regression", "subject": "breast-cancer-classifier v2"},
            {"kind": "resource", "subject": "cpu"},
        ],
    }
    ranking = ev.ranking_of(incident)
    assert ranking == [["resource", "host cpu"], ["model_regression", "breast-cancer-classifier v2"],
                       ["resource", "cpu"]]
    assert ev.rank_of(ranking, ("resource", HOST_CPU_SUBJECT)) == 1
    assert ev.rank_of(ranking, ("model_regression", "breast-cancer-classifier")) == 2, "the version is added"
    assert ev.rank_of(ranking, ("resource", "cpu")) == 3, "the process's CPU is not the host's"
    assert ev.rank_of(ranking, ("drift", "mean_radius")) is None
    assert ev.ranking_of({}) == []


# ---- the matrix


def kind_and_parameters(fault: dict) -> tuple[str, str]:
    params = {k: v for k, v in fault.items() if k != "fault"}
    return fault["fault"], json.dumps(params, sort_keys=True)


def test_the_full_matrix_runs_every_fault_at_three_places_for_every_seed() -> None:
    cases = ev.matrix(quick=False, seeds=3)
    singles = [c for c in cases if len(c.truth) == 1]
    pairs = [c for c in cases if len(c.truth) == 2]
    assert len(singles) == 3 * 14 and len(pairs) == 2  # 4 kinds × 3 + regression + neighbour, per seed
    assert len({c.name for c in cases}) == len(cases), "every case has a name of its own"
    assert cases[-2:] == pairs, "the pairs run last"
    specs = Counter(kind_and_parameters(f) for c in singles for f in c.faults)
    assert set(specs.values()) == {3}, "each fault once per seed"
    by_kind = Counter(kind for kind, _ in specs)
    assert set(by_kind) == set(FAULT_KINDS)
    assert {k: n for k, n in by_kind.items() if k != "regression"} == {
        "latency": 3, "errors": 3, "slow_lookup": 3, "drift": 3
    }
    assert by_kind["regression"] == 1, "the regression fault takes no parameter"
    for seed in (1, 2, 3):
        assert [c.seed for c in singles[(seed - 1) * 14: seed * 14]] == [seed] * 14
        assert all(c.name.endswith(f" #{seed}") for c in singles[(seed - 1) * 14: seed * 14])
    for c in cases:  # the admin API takes every fault as written
        for f in c.faults:
            FaultChange.model_validate({"enabled": True, **f})


def test_each_case_names_its_cause_as_the_analyzer_would() -> None:
    for c in ev.single_cases():
        if c.neighbour:
            continue
        [fault], [truth] = c.faults, c.truth
        expected = {
            "latency": lambda f: ("stage_latency", f["stage"]),
            "errors": lambda f: ("errors", f["stage"]),
            "slow_lookup": lambda f: ("downstream_latency", FEATURE_LOOKUP_SPAN),
            "drift": lambda f: ("drift", f["features"][0]),
            "regression": lambda f: ("model_regression", ev.MODEL),
        }[fault["fault"]](fault)
        assert truth == expected, c.name
        if fault["fault"] in ("latency", "errors"):
            assert fault["stage"] in STAGES
    for pair in ev.matrix(quick=False, seeds=1)[-2:]:
        assert len(pair.faults) == 2 and len(pair.truth) == 2
        assert {f["fault"] for f in pair.faults} != {pair.faults[0]["fault"]}, "two different faults"


def test_the_neighbour_burns_every_cpu_and_its_truth_is_the_host() -> None:
    [neighbour] = [c for c in ev.single_cases() if c.neighbour]
    assert neighbour.faults == [], "no admin fault: a process beside the stack"
    assert neighbour.truth == [("resource", HOST_CPU_SUBJECT)]
    assert neighbour.neighbour == ev.neighbour_processes() >= max(2, os.cpu_count() or 1)
    assert ev.NEIGHBOUR_CODE == "while True: pass"
    assert neighbour.name in ev.QUICK


def test_the_neighbour_processes_start_and_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ev, "NEIGHBOUR_CODE", "import time; time.sleep(60)")  # the same processes, asleep
    running = ev.start_neighbour(2)
    try:
        assert len(running) == 2 and all(p.poll() is None for p in running)
        assert all(isinstance(p, subprocess.Popen) and p.args[-1] == ev.NEIGHBOUR_CODE for p in running)
    finally:
        ev.stop_neighbour(running)
    assert all(p.returncode is not None for p in running)


def test_the_quick_subset_and_seeds() -> None:
    quick = ev.matrix(quick=True, seeds=3)
    assert [c.name for c in quick] == [*ev.QUICK, "pair latency inference + drift mean_radius"]
    assert {kind_and_parameters(f)[0] for c in quick for f in c.faults} == {"latency", "errors", "slow_lookup", "drift"}
    assert ev.matrix(quick=True, seeds=1) == quick, "the quick subset runs once"
    once = ev.matrix(quick=False, seeds=1)
    assert len(once) == 16 and not any("#" in c.name for c in once)
    with pytest.raises(ValueError):
        ev.matrix(quick=False, seeds=0)


def test_the_clean_stretch() -> None:
    assert ev.clean_minutes(quick=True) == 5.0
    assert ev.clean_minutes(quick=False) == 30.0
    assert ev.clean_minutes(quick=False, given=2.5) == 2.5
    assert ev.clean_minutes(quick=True, given=0) == 0
    with pytest.raises(ValueError):
        ev.clean_minutes(quick=True, given=-1)


def test_the_overlay_shifts_every_port_and_keeps_the_fast_profile(tmp_path: Path) -> None:
    path = ev.overlay_file(tmp_path)
    overlay = yaml.safe_load(path.read_text())
    base = config.load(ROOT / "stack.yaml").ports.model_dump()
    assert overlay["ports"] == {k: v + ev.PORT_SHIFT for k, v in base.items() if isinstance(v, int)}
    fast = yaml.safe_load((ROOT / "tests" / "stack.test.yaml").read_text())
    assert overlay["analyzer"] == fast["analyzer"] and overlay["alerts"] == fast["alerts"]
    stack = config.load(ROOT / "stack.yaml", path)
    assert stack.ports.analyzer == base["analyzer"] + ev.PORT_SHIFT


# ---- what it writes


def written_results() -> tuple[list[ev.Result], dict]:
    ranking = [["stage_latency", "inference"], ["operation_latency", "POST /predict"],
               ["traffic", "svc"], ["logs", "WARN"]]
    results = [
        result("latency inference 0.8s", [1], 41.2, ranking=ranking),
        result("drift mean_radius x3.0", [None], None, detected=False),
        result("pair latency inference + drift mean_radius", [1, None], 55.0, ranking=ranking[:1]),
    ]
    return results, ev.summarize(results, clean_seconds=300.0, false_alarms=0)


EXPECTED_MD = """\
### `make eval-rca QUICK=1`: 3 cases (2 single, 1 pairs), 5.0 clean minutes

| metric | mlobs analyzer | BARO, RCAEval RE2 Train Ticket (published) | goal |
| --- | --- | --- | --- |
| AC@1 | 0.5 | 0.67 | ≥ 0.9 |
| AC@3 | 0.5 | 0.82 | 1.0 |
| Avg@5 | 0.5 | 0.80 | |
| AC@2 (pairs) | 0.0 | | |
| detection latency p50 / p95 | 48.1 s / 54.3 s | | p95 ≤ 60 s |
| false alarms per clean hour | 0.0 (0 in 5.0 min) | | ≤ 1 |

| case | detected | latency (s) | rank of the cause | top 3 |
| --- | --- | --- | --- | --- |
| latency inference 0.8s | yes | 41.2 | 1 | stage_latency inference; operation_latency POST /predict; traffic svc |
| drift mean_radius x3.0 | no | - | miss | - |
| pair latency inference + drift mean_radius | yes | 55.0 | 1, miss | stage_latency inference |
"""


def test_the_markdown_table() -> None:
    results, summary = written_results()
    # p50 of 41.2 and 55.0: 41.2 + 0.5 × 13.8 = 48.1; p95: 41.2 + 0.95 × 13.8 = 54.31
    assert ev.markdown(summary, results, quick=True) == EXPECTED_MD
    full = ev.markdown(summary, results, quick=False)
    assert full.startswith("### `make eval-rca`: 3 cases") and full.splitlines()[1:] == EXPECTED_MD.splitlines()[1:]


def test_eval_json_and_md_are_written(tmp_path: Path) -> None:
    results, summary = written_results()
    alarm = {"fingerprint": "cp-9", "service": "mlobs-inference", "change_point": "2027-01-15T08:00:00Z",
             "top_suspect": {"kind": "logs"}, "findings": ["not kept"]}
    body = ev.report(True, summary, results, [alarm])
    json_path, md_path = ev.write_results(tmp_path / "out", body, results)
    assert (json_path, md_path) == (tmp_path / "out" / "eval.json", tmp_path / "out" / "eval.md")
    written = json.loads(json_path.read_text())
    assert written["quick"] is True and written["summary"] == json.loads(json.dumps(summary))
    assert written["results"] == [json.loads(json.dumps(asdict(r))) for r in results]
    assert written["results"][2]["ranks"] == [1, None]
    assert written["false_alarms"] == [{k: alarm[k] for k in ("fingerprint", "service", "change_point", "top_suspect")}]
    assert md_path.read_text() == EXPECTED_MD


def test_a_case_keeps_its_incident_and_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[str] = []

    def get(url: str, timeout: float) -> httpx.Response:
        asked.append(url)
        return httpx.Response(200, text="<html>report</html>")

    monkeypatch.setattr(ev.httpx, "get", get)
    case = ev.Case("pair latency inference + drift mean_radius", [], [])
    incident = {"fingerprint": "cp-abc", "top_suspect": {"kind": "stage_latency"}}
    ev.keep_incident(tmp_path, case, incident, "http://127.0.0.1:21010")
    assert asked == ["http://127.0.0.1:21010/incidents/cp-abc/report.html"]
    cases = tmp_path / "cases"
    assert json.loads((cases / "pair-latency-inference-drift-mean_radius.json").read_text()) == incident
    assert (cases / "pair-latency-inference-drift-mean_radius.html").read_text() == "<html>report</html>"
    assert ev.slug("latency inference 0.8s #2") == "latency-inference-0.8s-2"
    # A name with a dot keeps it: each case has files of its own.
    ev.keep_incident(tmp_path, ev.Case("slow_lookup 0.8s", [], []), incident, "http://127.0.0.1:21010")
    ev.keep_incident(tmp_path, ev.Case("slow_lookup 0.4s", [], []), incident, "http://127.0.0.1:21010")
    assert {p.name for p in cases.iterdir()} >= {"slow_lookup-0.8s.json", "slow_lookup-0.8s.html",
                                                 "slow_lookup-0.4s.json", "slow_lookup-0.4s.html"}

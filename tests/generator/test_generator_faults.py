"""Fault injection over the admin API, the signals each fault produces, and the chaos scheduler."""

from __future__ import annotations

import threading

import pytest
from opentelemetry.trace import StatusCode

from generator.faults import ChaosScheduler, FaultChange, FaultState


def _fault_logs(captured) -> list:
    return [
        r.log_record
        for r in captured.logs.get_finished_logs()
        if r.log_record.attributes.get("event.name") == "fault.changed"
    ]


def _active(captured) -> dict[str, float]:
    return {p.attributes["ml.fault"]: p.value for p in captured.collect()["ml.fault.active"]}


def test_admin_endpoints_refuse_everyone_while_no_token_is_configured(make_client, admin, monkeypatch):
    monkeypatch.delenv("MLOBS_ADMIN_TOKEN", raising=False)
    with make_client(admin_token=None) as client:
        response = client.get("/admin/faults", headers=admin)
    assert response.status_code == 403
    assert "MLOBS_ADMIN_TOKEN" in response.json()["detail"]


def test_admin_endpoints_need_the_right_token(client, admin):
    assert client.get("/admin/faults").status_code == 401
    assert client.post("/admin/faults", json={"fault": "errors"}, headers={"X-Admin-Token": "nope"}).status_code == 401
    assert client.get("/admin/faults", headers=admin).json() == {"active": {}}


def test_fault_toggling_is_logged_and_exported_as_a_gauge(client, captured, admin):
    response = client.post(
        "/admin/faults", json={"fault": "latency", "stage": "inference", "seconds": 0.05}, headers=admin
    )
    assert response.status_code == 200
    assert response.json()["active"]["latency"] == {
        "fault": "latency",
        "enabled": True,
        "stage": "inference",
        "seconds": 0.05,
    }
    assert _active(captured)["latency"] == 1
    assert _active(captured)["errors"] == 0

    (log,) = _fault_logs(captured)
    assert log.attributes["ml.fault"] == "latency" and log.attributes["ml.fault.enabled"] is True
    assert log.attributes["ml.fault.stage"] == "inference"

    assert client.delete("/admin/faults", headers=admin).json() == {"active": {}}
    assert _active(captured)["latency"] == 0
    assert [r.attributes["ml.fault.enabled"] for r in _fault_logs(captured)] == [True, False]


def test_bad_fault_requests_are_422(client, admin):
    assert client.post("/admin/faults", json={"fault": "fire"}, headers=admin).status_code == 422
    wrong_param = client.post("/admin/faults", json={"fault": "drift", "seconds": 1}, headers=admin)
    assert wrong_param.status_code == 422
    unknown = client.post("/admin/faults", json={"fault": "drift", "features": ["colour"]}, headers=admin)
    assert unknown.status_code == 422


def test_latency_fault_slows_the_chosen_stage_only(client, captured, full_row, admin):
    client.post("/admin/faults", json={"fault": "latency", "stage": "postprocessing", "seconds": 0.2}, headers=admin)
    captured.spans.clear()
    assert client.post("/predict", json=full_row(0)).status_code == 200
    duration = {s.name: (s.end_time - s.start_time) / 1e9 for s in captured.spans.get_finished_spans()}
    assert duration["postprocessing"] >= 0.2
    assert duration["inference"] < 0.2


def test_error_fault_fails_requests_with_500_error_spans_and_error_logs(client, captured, full_row, admin):
    client.post("/admin/faults", json={"fault": "errors", "stage": "inference", "rate": 1.0}, headers=admin)
    captured.logs.clear()
    response = client.post("/predict", json=full_row(0))
    assert response.status_code == 500
    inference = captured.span("inference")
    assert inference.status.status_code is StatusCode.ERROR
    assert captured.span("POST /predict").status.status_code is StatusCode.ERROR
    errors = [r.log_record for r in captured.logs.get_finished_logs() if r.log_record.severity_text == "ERROR"]
    assert errors and errors[0].trace_id == inference.context.trace_id
    outcomes = {p.attributes["outcome"] for p in captured.collect()["ml.request.duration"]}
    assert "error" in outcomes


def test_drift_fault_shifts_the_chosen_features_and_raises_psi(client, captured, full_row, admin):
    client.post("/admin/faults", json={"fault": "drift", "features": ["mean_radius"], "scale": 2.0}, headers=admin)
    for row in range(60):
        client.post("/predict", json=full_row(row))
    collected = captured.collect()
    psi = {p.attributes["ml.feature"]: p.value for p in collected["ml.feature.drift.psi"]}
    ks = {p.attributes["ml.feature"]: p.value for p in collected["ml.feature.drift.ks"]}
    assert psi["mean_radius"] > 0.2 and ks["mean_radius"] > 0.5
    assert psi["mean_texture"] < psi["mean_radius"] / 2
    radius = next(p for p in collected["ml.feature.value"] if p.attributes["ml.feature"] == "mean_radius")
    assert radius.min >= 2 * 6.98  # the smallest mean_radius in the data, doubled


def test_slow_lookup_fault_slows_the_feature_lookup_span(client, captured, online_row, admin):
    client.post("/admin/faults", json={"fault": "slow_lookup", "seconds": 0.15}, headers=admin)
    captured.spans.clear()
    client.post("/predict", json=online_row(0))
    lookup = captured.span("feature_lookup")
    assert (lookup.end_time - lookup.start_time) / 1e9 >= 0.15


def test_regression_fault_deploys_a_worse_model_and_rolls_it_back(client, captured, full_row, admin):
    before = client.get("/readyz").json()["model_version"]
    client.post("/admin/faults", json={"fault": "regression"}, headers=admin)
    worse = client.app.state.service.registry.current
    assert worse.version != before
    assert worse.metadata["degraded"] is True
    assert worse.metadata["metrics"]["accuracy"] < 0.85
    assert client.post("/predict", json=full_row(0)).json()["model_version"] == worse.version

    client.post("/admin/faults", json={"fault": "regression", "enabled": False}, headers=admin)
    assert client.get("/readyz").json()["model_version"] == before
    deployments = [
        r.log_record.attributes["ml.model.version"]
        for r in captured.logs.get_finished_logs()
        if r.log_record.attributes.get("event.name") == "model.deployed"
    ]
    assert deployments == [worse.version, before]


def test_fault_state_applies_defaults_and_ignores_switching_off_what_is_off():
    state = FaultState()
    assert state.apply(FaultChange(fault="errors", enabled=False)) == {}
    active = state.apply(FaultChange(fault="errors"))
    assert active["errors"] == {"fault": "errors", "enabled": True, "stage": "inference", "rate": 0.2}


def _plan(seed: int, steps: int) -> list[tuple[float, dict]]:
    scheduler = ChaosScheduler(seed=seed, min_interval=1, max_interval=2)
    plan = []
    for _ in range(steps):
        delay, change = scheduler.next_change()
        scheduler.commit(change)
        plan.append((delay, change.model_dump(exclude_none=True)))
    return plan


def test_chaos_scheduler_is_reproducible_for_a_seed():
    assert _plan(42, 20) == _plan(42, 20)
    assert _plan(42, 20) != _plan(43, 20)


def test_chaos_scheduler_never_holds_more_than_max_active():
    scheduler = ChaosScheduler(seed=7, max_active=2)
    for _ in range(200):
        _, change = scheduler.next_change()
        scheduler.commit(change)
        assert len(scheduler.active) <= 2


def test_chaos_run_applies_changes_and_switches_everything_off_at_the_end():
    applied: list[FaultChange] = []
    stop = threading.Event()
    scheduler = ChaosScheduler(seed=1, min_interval=0.01, max_interval=0.02)

    def apply(change: FaultChange) -> None:
        applied.append(change)
        if len(applied) >= 6:
            stop.set()

    scheduler.run(apply, stop)
    on = {c.fault for c in applied if c.enabled}
    assert on
    state: dict[str, bool] = {}
    for change in applied:
        state[change.fault] = change.enabled
    assert not any(state.values()), f"still on after the run: {state}"


@pytest.mark.parametrize("kind", ["latency", "errors", "drift", "regression", "slow_lookup"])
def test_every_fault_kind_is_accepted_with_defaults(kind):
    assert FaultChange(fault=kind).with_defaults().fault == kind


def test_a_restart_rolls_back_a_regression_left_behind(make_client, admin, captured):
    with make_client() as client:
        client.post("/admin/faults", json={"fault": "regression"}, headers=admin)
        assert client.get("/readyz").json()["model_version"] == "2"
    with make_client() as client:  # the fault is gone with the process: so is its model
        assert client.get("/readyz").json()["model_version"] == "1"

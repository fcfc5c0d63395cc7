"""A second `up` has Prometheus and Alertmanager re-read their re-rendered files (a rule of a
service added with `mlobs add-service`); a refusal or no answer is reported, not hidden."""

from __future__ import annotations

from pathlib import Path

import httpx

from mlobs import config, render
from mlobs.runtime import native

ROOT = Path(__file__).resolve().parents[2]


def test_reload_posts_to_each_present_reloadable_component(monkeypatch) -> None:
    stack = config.load(ROOT / "stack.yaml")
    target = render.native_target(stack, render.BACKENDS)
    calls: list[str] = []

    def post(url: str, timeout: float) -> httpx.Response:
        calls.append(url)
        if "9093" in url:
            return httpx.Response(500, text="bad config", request=httpx.Request("POST", url))
        return httpx.Response(200, request=httpx.Request("POST", url))

    monkeypatch.setattr(native.httpx, "post", post)
    answers = native.reload_configs(target, {"prometheus", "alertmanager", "otel-collector"})
    assert calls == [f"http://127.0.0.1:{stack.ports.prometheus}/-/reload",
                     f"http://127.0.0.1:{stack.ports.alertmanager}/-/reload"]
    assert answers == {"prometheus": "reloaded", "alertmanager": "refused the reload: 500 bad config"}


def test_reload_skips_absent_components_and_reports_no_answer(monkeypatch) -> None:
    stack = config.load(ROOT / "stack.yaml")
    target = render.native_target(stack, render.BACKENDS)

    def post(url: str, timeout: float) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    monkeypatch.setattr(native.httpx, "post", post)
    answers = native.reload_configs(target, {"prometheus"})
    assert list(answers) == ["prometheus"]
    assert answers["prometheus"].startswith("no answer to the reload")

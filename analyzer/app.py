"""The analyzer's HTTP service: Alertmanager webhooks in, incidents and Grafana annotations out.

    python -m analyzer.app        # listens on MLOBS_ANALYZER_HOST:MLOBS_ANALYZER_PORT (127.0.0.1:8010)

``POST /alerts`` takes Alertmanager's webhook payload (version 4); every firing alert is analysed
(:mod:`analyzer.rca`) and annotated in Grafana; a resolved one closes its annotation.
``GET /incidents`` lists the latest analyses, newest first; ``GET /incidents/{fingerprint}`` one.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import uvicorn
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from analyzer.grafana import GrafanaAnnotator
from analyzer.models import Incident, WebhookAlert, WebhookPayload
from analyzer.prometheus import PrometheusAPI, PrometheusClient
from analyzer.rca import RootCauseAnalyzer, Target
from analyzer.settings import Settings
from analyzer.telemetry import disabled, incidents_counter, setup_telemetry
from mlobs.telemetry import Telemetry, package_version

_log = logging.getLogger("analyzer")


class IncidentStore:
    """The latest analysis per alert fingerprint, at most ``limit`` of them, oldest dropped first."""

    def __init__(self, limit: int = 200) -> None:
        self.limit = limit
        self._items: OrderedDict[str, Incident] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, incident: Incident) -> None:
        with self._lock:
            self._items.pop(incident.fingerprint, None)
            self._items[incident.fingerprint] = incident
            while len(self._items) > self.limit:
                self._items.popitem(last=False)

    def get(self, fingerprint: str) -> Incident | None:
        with self._lock:
            return self._items.get(fingerprint)

    def newest(self, limit: int | None = None) -> list[Incident]:
        with self._lock:
            items = list(reversed(self._items.values()))
        return items if limit is None else items[:limit]

    def __len__(self) -> int:
        return len(self._items)


def _validation_message(errors: list[dict[str, Any]]) -> str:
    lines = []
    for error in errors:
        where = ".".join(str(part) for part in error.get("loc", ()))
        shown = repr(error.get("input"))
        lines.append(f"{where}: {error.get('msg')} (got {shown if len(shown) <= 80 else shown[:77] + '...'})")
    return "; ".join(lines)


def create_app(
    settings: Settings | None = None,
    *,
    prometheus: PrometheusAPI | None = None,
    grafana: GrafanaAnnotator | None = None,
    telemetry: Telemetry | None = None,
    clock: Callable[[], float] = time.time,
) -> FastAPI:
    """The app; clients default to real ones built from ``settings``, tests pass fakes."""
    settings = settings or Settings.from_env()
    telemetry = telemetry or disabled()
    incident_count = incidents_counter(telemetry)
    owned: list[Any] = []
    if prometheus is None:
        prometheus = PrometheusClient(settings.prometheus_url, timeout=settings.query_timeout)
        owned.append(prometheus)
    if grafana is None:
        grafana = GrafanaAnnotator(
            settings.grafana_url,
            user=settings.grafana_user,
            password=settings.grafana_password,
            token=settings.grafana_token,
        )
        owned.append(grafana)
    analyzer = RootCauseAnalyzer(
        prometheus,
        grafana_url=settings.grafana_public_url or settings.grafana_url,
        tracer=telemetry.tracer,
        recent_seconds=settings.recent_seconds,
        baseline_seconds=settings.baseline_seconds,
        step_seconds=settings.step_seconds,
        rate_window=settings.rate_window,
        slow_seconds=settings.slow_seconds,
        clock=clock,
    )
    store = IncidentStore(settings.max_incidents)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        for client in owned:
            client.close()

    app = FastAPI(title="mlobs analyzer", version=package_version(), lifespan=lifespan)
    app.state.store = store
    app.state.analyzer = analyzer

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{k: v for k, v in e.items() if k not in ("ctx", "url")} for e in exc.errors()]
        body = {"detail": jsonable_encoder(errors), "message": _validation_message(errors)}
        return JSONResponse(status_code=422, content=body)

    def firing(alert: WebhookAlert) -> dict[str, Any]:
        target = Target.from_labels(alert.labels)
        attributes = {
            "alertname": alert.alertname,
            "job": target.job or "",
            "ml.model.name": target.model_name or "",
            "ml.model.version": target.model_version or "",
            "alert.fingerprint": alert.fingerprint,
        }
        with telemetry.tracer.start_as_current_span("analyze alert", attributes=attributes) as span:
            incident = analyzer.analyze(alert)
            top = incident.top_suspect
            span.set_attributes({"suspect.kind": top.kind, "suspect.subject": top.subject, "suspect.score": top.score})
            previous = store.get(alert.fingerprint)
            annotation_id = None
            if previous and previous.annotation_id is not None and previous.starts_at == alert.starts_at:
                annotation_id = previous.annotation_id
                grafana.update(annotation_id, incident)
            else:
                annotation_id = grafana.annotate(incident)
            incident = incident.model_copy(update={"annotation_id": annotation_id})
            store.put(incident)
            incident_count.add(1, {"alertname": alert.alertname, "suspect.kind": top.kind})
            _log.info(
                "%s: top suspect %s %s (score %.2f)",
                alert.alertname,
                top.kind,
                top.subject,
                top.score,
                extra=attributes
                | {
                    "suspect.kind": top.kind,
                    "suspect.subject": top.subject,
                    "suspect.score": top.score,
                    "suspect.summary": top.summary,
                    "grafana.annotation_id": annotation_id,
                },
            )
        return {"fingerprint": alert.fingerprint, "action": "analysed", "top_suspect": top.model_dump()}

    def resolved(alert: WebhookAlert) -> dict[str, Any]:
        previous = store.get(alert.fingerprint)
        if previous is None:
            return {"fingerprint": alert.fingerprint, "action": "ignored: never seen firing"}
        ended = alert.ended or datetime.fromtimestamp(clock(), UTC)
        if previous.annotation_id is not None:
            grafana.close_region(previous.annotation_id, ended)
        store.put(previous.model_copy(update={"status": "resolved", "ends_at": ended}))
        _log.info(
            "%s resolved", alert.alertname, extra={"alertname": alert.alertname, "alert.fingerprint": alert.fingerprint}
        )
        return {"fingerprint": alert.fingerprint, "action": "resolved"}

    @app.post("/alerts")
    def alerts(payload: WebhookPayload) -> dict[str, Any]:
        """Alertmanager's webhook. Answers 200 once every alert is handled; one failure never fails the rest."""
        results = []
        for alert in payload.alerts:
            try:
                results.append(firing(alert) if alert.status == "firing" else resolved(alert))
            except Exception as exc:
                _log.exception("analysis of %s failed", alert.alertname, extra={"alert.fingerprint": alert.fingerprint})
                results.append({"fingerprint": alert.fingerprint, "action": "failed", "error": str(exc)})
        return {"received": len(payload.alerts), "results": results}

    @app.get("/incidents")
    def incidents(limit: int = Query(settings.max_incidents, ge=1, le=settings.max_incidents)) -> list[Incident]:
        return store.newest(limit)

    @app.get("/incidents/{fingerprint}")
    def incident(fingerprint: str) -> Incident:
        found = store.get(fingerprint)
        if found is None:
            raise HTTPException(
                404, f"no incident with fingerprint {fingerprint!r}; the analyzer keeps the last {store.limit}"
            )
        return found

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        """Ready when Prometheus answers: without it every analysis would come back `unknown`."""
        ready = prometheus.ready()
        body = {
            "status": "ready" if ready else "not ready",
            "prometheus": "ok" if ready else f"not answering at {settings.prometheus_url}",
            "grafana_annotations": "on" if grafana.enabled else "off: no credentials",
        }
        return JSONResponse(status_code=200 if ready else 503, content=body)

    if telemetry.enabled:
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        FastAPIInstrumentor.instrument_app(
            app,
            tracer_provider=telemetry.tracer_provider,
            meter_provider=telemetry.meter_provider,
            excluded_urls="healthz,readyz",
        )
    return app


def main() -> None:
    try:
        settings = Settings.from_env()
    except ValueError as exc:
        sys.exit(f"analyzer: {exc}")
    telemetry = setup_telemetry()
    app = create_app(settings, telemetry=telemetry)
    _log.info(
        "analyzer listening on %s:%s; Prometheus %s, Grafana %s",
        settings.host,
        settings.port,
        settings.prometheus_url,
        settings.grafana_url,
    )
    try:
        uvicorn.run(app, host=settings.host, port=settings.port, log_config=None)
    finally:
        telemetry.shutdown()


if __name__ == "__main__":
    main()

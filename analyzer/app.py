"""The analyzer's HTTP service: Alertmanager webhooks in, incidents and Grafana annotations out.

    python -m analyzer.app        # listens on MLOBS_ANALYZER_HOST:MLOBS_ANALYZER_PORT (127.0.0.1:8010)

``POST /alerts`` takes Alertmanager's webhook payload (version 4); every firing alert is analysed
(:mod:`analyzer.rca`) and annotated in Grafana; a resolved one closes its annotation.
``GET /incidents`` lists the latest analyses, newest first; ``GET /incidents/{fingerprint}`` one.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse

from analyzer import evidence
from analyzer.detector import Detector
from analyzer.grafana import GrafanaAnnotator
from analyzer.incidents import IncidentBook
from analyzer.logtemplates import TemplateBook, decode
from analyzer.models import Incident, WebhookAlert, WebhookPayload
from analyzer.prometheus import PrometheusAPI, PrometheusClient
from analyzer.rca import RootCauseAnalyzer, Target
from analyzer.settings import Settings
from analyzer.telemetry import disabled, incidents_counter, setup_telemetry
from mlobs.httperrors import validation_errors
from mlobs.telemetry import Telemetry, package_version

_log = logging.getLogger("analyzer")


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
    templates = TemplateBook(bucket_seconds=min(15.0, settings.step_seconds), clock=clock)
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
        templates=templates,
    )
    store = IncidentBook(settings.max_incidents, Path(settings.state_file) if settings.state_file else None)

    def detector_incident(incident: Incident, created: bool) -> None:
        """Annotate what the detector opened (and close the region when it closes)."""
        if created:
            store.set_annotation(incident.fingerprint, grafana.annotate(incident))
            incident_count.add(1, {"alertname": incident.alertname, "suspect.kind": incident.top_suspect.kind})
        elif incident.status == "resolved" and incident.annotation_id is not None and incident.ends_at:
            grafana.close_region(incident.annotation_id, incident.ends_at)

    detector = Detector(
        analyzer,
        prometheus,
        store,
        exclude=frozenset(settings.detect_exclude),
        clock=clock,
        on_incident=detector_incident,
        trace_ui=settings.trace_ui_url,
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if settings.detect:
            detector.start()
        yield
        detector.stop()
        for client in owned:
            client.close()

    app = FastAPI(title="mlobs analyzer", version=package_version(), lifespan=lifespan)
    app.state.store = store
    app.state.analyzer = analyzer
    app.state.detector = detector
    app.state.templates = templates

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{k: v for k, v in e.items() if k not in ("ctx", "url")} for e in exc.errors()]
        body = {"detail": validation_errors(errors), "message": _validation_message(errors)}
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
            now = clock()
            started = min(alert.starts_at.timestamp(), now)
            incident = incident.model_copy(
                update={
                    "events": evidence.events(prometheus, target, started, now),
                    "exemplars": evidence.exemplars(
                        prometheus, top, target, started - settings.recent_seconds, now,
                        grafana=settings.grafana_public_url or settings.grafana_url, trace_ui=settings.trace_ui_url,
                    )
                    if top.kind != "unknown"
                    else [],
                }
            )
            span.set_attributes({"suspect.kind": top.kind, "suspect.subject": top.subject, "suspect.score": top.score})
            joined, created = store.alert_firing(alert, incident)
            annotation_id = joined.annotation_id
            if annotation_id is not None and not created:
                grafana.update(annotation_id, joined)
            else:
                annotation_id = grafana.annotate(joined)
                store.set_annotation(joined.fingerprint, annotation_id)
            if created:
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
                    "incident.id": joined.fingerprint,
                },
            )
        return {
            "fingerprint": alert.fingerprint,
            "action": "analysed" if created else "analysed, joined incident",
            "incident": joined.fingerprint,
            "top_suspect": top.model_dump(),
        }

    def resolved(alert: WebhookAlert) -> dict[str, Any]:
        previous = store.get(alert.fingerprint)
        if previous is None:
            return {"fingerprint": alert.fingerprint, "action": "ignored: never seen firing"}
        ended = alert.ended or datetime.fromtimestamp(clock(), UTC)
        incident = store.alert_resolved(alert, ended)
        if incident is not None and incident.status == "resolved" and incident.annotation_id is not None:
            grafana.close_region(incident.annotation_id, ended)
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

    @app.post("/v1/logs")
    async def otlp_logs(request: Request) -> Response:
        """OTLP/HTTP logs (protobuf): the collector's copy, mined into templates."""
        body = await request.body()
        try:
            export = decode(body, request.headers.get("content-encoding", ""))
        except Exception as exc:
            return JSONResponse(status_code=400, content={"message": f"not an OTLP logs export: {exc}"})
        templates.ingest(export)
        return Response(ExportLogsServiceResponse().SerializeToString(), media_type="application/x-protobuf")

    @app.get("/templates")
    def log_templates(service: str = Query(..., description="service.name")) -> list[dict[str, Any]]:
        """The log templates of a service, most frequent first, with example lines."""
        return templates.snapshot(service)

    @app.get("/incidents/{fingerprint}/report.html", response_class=HTMLResponse)
    def incident_report(fingerprint: str) -> HTMLResponse:
        found = store.get(fingerprint)
        if found is None:
            raise HTTPException(404, f"no incident with fingerprint {fingerprint!r}")
        from analyzer.report import render_report

        return HTMLResponse(render_report(found, analyzer, clock()))

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

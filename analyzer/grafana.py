"""Grafana annotations for analysed alerts: one per firing alert, closed when it resolves.

Credentials: ``MLOBS_GRAFANA_TOKEN`` (a service-account token, sent as a bearer) or
``GRAFANA_ADMIN_USER`` / ``GRAFANA_ADMIN_PASSWORD`` (basic auth). Without them, or while Grafana
does not answer, annotations are skipped with one log line per reason, never an error.
"""

from __future__ import annotations

import logging
from datetime import datetime

import httpx

from analyzer.models import Incident
from analyzer.rca import Target

_log = logging.getLogger(__name__)


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def annotation_tags(incident: Incident) -> list[str]:
    return ["mlobs", "alert", incident.alertname, incident.top_suspect.kind]


def annotation_text(incident: Incident) -> str:
    top = incident.top_suspect
    target = Target.from_labels(incident.labels)
    model = target.model_name and target.model_name + (f" v{target.model_version}" if target.model_version else "")
    scope = " ".join(part for part in (target.job, model, target.operation) if part)
    head = f"{incident.alertname}" + (f" ({scope})" if scope else "")
    if top.kind == "unknown":
        return f"{head}: no suspect, nothing moved beyond its baseline"
    return f"{head}: top suspect {top.kind} {top.subject} (score {top.score:.2f}): {top.summary}"


class GrafanaAnnotator:
    """``POST /api/annotations`` and ``PATCH /api/annotations/{id}``, quietly skipped when impossible."""

    def __init__(
        self,
        base_url: str,
        *,
        user: str = "admin",
        password: str | None = None,
        token: str | None = None,
        timeout: float = 3.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        auth = httpx.BasicAuth(user, password) if password and not token else None
        self.enabled = bool(token or password)
        self._http = httpx.Client(
            base_url=self.base_url, headers=headers, auth=auth, timeout=timeout, transport=transport
        )
        self._last_skip: str | None = None

    def close(self) -> None:
        self._http.close()

    def _skip(self, reason: str) -> None:
        if reason != self._last_skip:
            _log.info("grafana annotations skipped: %s", reason, extra={"grafana.url": self.base_url})
            self._last_skip = reason

    def _send(self, method: str, path: str, body: dict) -> dict | None:
        if not self.enabled:
            self._skip("no credentials: set MLOBS_GRAFANA_TOKEN, or GRAFANA_ADMIN_USER and GRAFANA_ADMIN_PASSWORD")
            return None
        try:
            response = self._http.request(method, path, json=body)
        except httpx.HTTPError as exc:
            self._skip(f"Grafana at {self.base_url} does not answer ({type(exc).__name__})")
            return None
        if response.status_code >= 400:
            self._skip(f"Grafana refused {method} {path}: HTTP {response.status_code} {response.text[:200]}")
            return None
        self._last_skip = None
        try:
            return response.json()
        except ValueError:
            return {}

    def annotate(self, incident: Incident) -> int | None:
        """A new annotation at the alert's start; its id, or None when skipped."""
        body = {"time": _ms(incident.starts_at), "tags": annotation_tags(incident), "text": annotation_text(incident)}
        answer = self._send("POST", "/api/annotations", body)
        annotation_id = (answer or {}).get("id")
        return int(annotation_id) if isinstance(annotation_id, int | str) and str(annotation_id).isdigit() else None

    def update(self, annotation_id: int, incident: Incident) -> bool:
        """A later analysis of the same firing alert: new text and tags on the same annotation."""
        body = {"tags": annotation_tags(incident), "text": annotation_text(incident)}
        return self._send("PATCH", f"/api/annotations/{annotation_id}", body) is not None

    def close_region(self, annotation_id: int, ended: datetime) -> bool:
        """The alert resolved: the annotation becomes a region ending then."""
        return self._send("PATCH", f"/api/annotations/{annotation_id}", {"timeEnd": _ms(ended)}) is not None

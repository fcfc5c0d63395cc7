"""Plain data: the Alertmanager webhook payload (version 4) in, incidents out."""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

AlertStatus = Literal["firing", "resolved"]
FindingKind = Literal[
    "operation_latency",
    "stage_latency",
    "downstream_latency",
    "errors",
    "logs",
    "drift",
    "model_regression",
    "traffic",
    "resource",
    "log_template",
    "unknown",
]
IncidentSource = Literal["alert", "detector"]


class WebhookAlert(BaseModel):
    """One alert of a notification. Field names are Alertmanager's, so a 422 names them as sent."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    status: AlertStatus
    labels: dict[str, str]
    annotations: dict[str, str] = Field(default_factory=dict)
    starts_at: datetime = Field(alias="startsAt")
    ends_at: datetime | None = Field(None, alias="endsAt")
    generator_url: str = Field("", alias="generatorURL")
    fingerprint: str = ""

    @field_validator("labels")
    @classmethod
    def _has_alertname(cls, labels: dict[str, str]) -> dict[str, str]:
        if not labels.get("alertname"):
            raise ValueError(f"labels must include a non-empty 'alertname'; got keys {sorted(labels)}")
        return labels

    @model_validator(mode="after")
    def _fill_fingerprint(self) -> WebhookAlert:
        # Alertmanager always sends one; a hand-written payload gets a stable one from its labels.
        if not self.fingerprint:
            text = "\n".join(f"{k}={v}" for k, v in sorted(self.labels.items()))
            self.fingerprint = hashlib.sha256(text.encode()).hexdigest()[:16]
        return self

    @property
    def alertname(self) -> str:
        return self.labels["alertname"]

    @property
    def ended(self) -> datetime | None:
        """``endsAt``, unless it is Alertmanager's zero time (0001-01-01) of a firing alert."""
        if self.ends_at is None or self.ends_at.year <= 1:
            return None
        return self.ends_at


class WebhookPayload(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    version: Literal["4"]
    status: AlertStatus
    alerts: list[WebhookAlert] = Field(max_length=1000)
    receiver: str = ""
    group_key: str = Field("", alias="groupKey")
    group_labels: dict[str, str] = Field(default_factory=dict, alias="groupLabels")
    common_labels: dict[str, str] = Field(default_factory=dict, alias="commonLabels")
    common_annotations: dict[str, str] = Field(default_factory=dict, alias="commonAnnotations")
    external_url: str = Field("", alias="externalURL")
    truncated_alerts: int = Field(0, alias="truncatedAlerts", ge=0)


class Finding(BaseModel):
    """One candidate cause, with the numbers that back it and the PromQL they came from."""

    kind: FindingKind
    subject: str
    score: float = Field(description="0 (no evidence) .. 1 (moved far, in the bad direction, by a lot)")
    summary: str
    evidence: str
    promql: list[str] = Field(default_factory=list)
    baseline: float | None = None
    current: float | None = None
    robust_z: float | None = None
    sigma_z: float | None = None


class Links(BaseModel):
    """Queries for the top suspect, and the Grafana Explore URLs that open them. Built, never run."""

    promql: str
    prometheus_explore: str
    traceql: str
    tempo_explore: str
    logql: str
    loki_explore: str


class Event(BaseModel):
    """Something that happened near the change point: a deployment, a training run."""

    kind: str  # "deployment", "training_run"
    at: datetime | None = None
    summary: str
    promql: str = ""


class Exemplar(BaseModel):
    """A trace of the window, from an exemplar of a histogram bucket (Prometheus query_exemplars)."""

    trace_id: str
    at: datetime
    value: float
    series: str
    url: str = ""


class AlertRef(BaseModel):
    """An alert that joined an incident, with the analysis made for it."""

    fingerprint: str
    alertname: str
    status: AlertStatus
    labels: dict[str, str]
    starts_at: datetime
    ends_at: datetime | None = None
    top_suspect: Finding


class Incident(BaseModel):
    fingerprint: str = Field(
        description="the incident's id: the first alert's fingerprint, or cp-... for one the detector opened"
    )
    source: IncidentSource = "alert"
    service: str | None = None
    alertname: str
    status: AlertStatus
    labels: dict[str, str]
    annotations: dict[str, str] = Field(default_factory=dict)
    starts_at: datetime
    ends_at: datetime | None = None
    analyzed_at: datetime
    evaluated_at: datetime = Field(description="the end of the queried window: now, or 10m after the alert started")
    window: str
    top_suspect: Finding
    findings: list[Finding]
    links: Links
    errors: list[str] = Field(default_factory=list, description="queries that failed; their signals were skipped")
    annotation_id: int | None = None
    change_point: datetime | None = Field(None, description="where the detector places the change (ruptures)")
    detected_at: datetime | None = Field(None, description="when the detector first saw it")
    suspects: list[Finding] = Field(
        default_factory=list, description="the top suspect, and the second when it is strong too"
    )
    alerts: list[AlertRef] = Field(default_factory=list, description="the alerts that joined this incident")
    events: list[Event] = Field(default_factory=list)
    exemplars: list[Exemplar] = Field(default_factory=list)

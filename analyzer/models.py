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
    "unknown",
]


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


class Incident(BaseModel):
    fingerprint: str
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

"""The incidents: opened by an alert or by the continuous detector, joined by the alerts that belong to them.

An incident is about one service. An alert about a service that has an open incident (the alert
started no earlier than ``JOIN_SLACK_SECONDS`` before the incident's change point or start) joins
it rather than making another; an incident the detector opened takes the alerts that follow. Each
joined alert keeps its own analysis; the incident shows the analysis of its *primary* alert among
those still firing (else among all): the most severe, a threshold alert before an anomaly band, a
model's before a service's, then the earliest; or the detector's while no alert joined. While the
detector still sees the change, the suspects its latest analysis names and the primary's does not
follow the primary's.

An incident is open while one of its alerts fires or the detector still sees its change; it
closes (``status: resolved``) when neither holds.

With a ``path``, the book is kept on disk: every change rewrites the JSON file atomically (a
temporary file, fsync, rename), and a new book reads it back, so a restart of the analyzer loses
no incident, no joined alert and no analysis. A file that cannot be read is set aside
(``*.unreadable``) and the book starts empty, saying so in the log.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from analyzer.models import AlertRef, Incident, WebhookAlert

JOIN_SLACK_SECONDS = 300
log = logging.getLogger(__name__)


@dataclass
class _Record:
    incident: Incident
    analyses: dict[str, Incident] = field(default_factory=dict)  # alert fingerprint -> its analysis
    detector: Incident | None = None  # the detector's latest analysis
    detector_active: bool = False

    @property
    def firing_alerts(self) -> list[AlertRef]:
        return [a for a in self.incident.alerts if a.status == "firing"]

    @property
    def open(self) -> bool:
        return self.incident.status == "firing"


SEVERITY_RANK = {"critical": 0, "error": 1, "warning": 2, "info": 3}


def _priority(ref: AlertRef) -> tuple:
    """The alert that says most about the cause names the incident: the most severe, a threshold
    before an anomaly band, a model's alert (ml_model_name) before a service's, then the earliest."""
    return (
        SEVERITY_RANK.get(ref.labels.get("severity", ""), 4),
        ref.alertname.endswith("Anomaly"),
        "ml_model_name" not in ref.labels,
        ref.starts_at,
        ref.fingerprint,
    )


def detector_id(service: str, change_point: datetime) -> str:
    digest = hashlib.sha256(f"{service}\n{change_point.isoformat()}".encode()).hexdigest()[:12]
    return f"cp-{digest}"


class IncidentBook:
    """The latest ``limit`` incidents, newest (last touched) first; thread-safe."""

    def __init__(self, limit: int = 200, path: Path | None = None) -> None:
        self.limit = limit
        self.path = path
        self._items: OrderedDict[str, _Record] = OrderedDict()
        self._by_alert: dict[str, str] = {}
        self._lock = threading.RLock()
        if path is not None:
            self._load(path)

    # ---- on disk

    def _load(self, path: Path) -> None:
        if not path.exists():
            return
        try:
            rows = json.loads(path.read_text())
            records = [
                _Record(
                    Incident.model_validate(row["incident"]),
                    {k: Incident.model_validate(v) for k, v in row.get("analyses", {}).items()},
                    Incident.model_validate(row["detector"]) if row.get("detector") else None,
                    bool(row.get("detector_active")),
                )
                for row in rows
            ]
        except (OSError, ValueError, KeyError, TypeError) as e:
            aside = path.with_name(path.name + ".unreadable")
            os.replace(path, aside)
            log.error("incidents file %s unreadable (%s): moved to %s, starting empty", path, e, aside)
            return
        for record in records[-self.limit:]:
            self._items[record.incident.fingerprint] = record
            for ref in record.incident.alerts:
                self._by_alert[ref.fingerprint] = record.incident.fingerprint
        log.info("read %d incidents from %s", len(self._items), path)

    def _save(self) -> None:
        if self.path is None:
            return
        rows = [
            {
                "incident": r.incident.model_dump(mode="json"),
                "analyses": {k: v.model_dump(mode="json") for k, v in r.analyses.items()},
                "detector": r.detector.model_dump(mode="json") if r.detector else None,
                "detector_active": r.detector_active,
            }
            for r in self._items.values()
        ]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w") as f:
            json.dump(rows, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    # ---- reading

    def get(self, key: str) -> Incident | None:
        """By the incident's id or by the fingerprint of any alert that joined it."""
        with self._lock:
            record = self._items.get(key) or self._items.get(self._by_alert.get(key, ""))
            return record.incident if record else None

    def newest(self, limit: int | None = None) -> list[Incident]:
        with self._lock:
            items = [r.incident for r in reversed(self._items.values())]
        return items if limit is None else items[:limit]

    def open_for(self, service: str | None) -> Incident | None:
        with self._lock:
            record = self._open_record(service)
            return record.incident if record else None

    def detector_active(self, service: str | None) -> bool:
        with self._lock:
            record = self._open_record(service)
            return bool(record and record.detector_active)

    def __len__(self) -> int:
        return len(self._items)

    # ---- internals

    def _open_record(self, service: str | None, since: datetime | None = None) -> _Record | None:
        if not service:
            return None
        for record in reversed(self._items.values()):
            inc = record.incident
            if inc.service != service or not record.open:
                continue
            anchor = inc.change_point or inc.starts_at
            if since is None or since >= anchor - timedelta(seconds=JOIN_SLACK_SECONDS):
                return record
        return None

    def _touch(self, record: _Record) -> None:
        key = record.incident.fingerprint
        self._items.pop(key, None)
        self._items[key] = record
        while len(self._items) > self.limit:
            old_key, old = self._items.popitem(last=False)
            for ref in old.incident.alerts:
                if self._by_alert.get(ref.fingerprint) == old_key:
                    del self._by_alert[ref.fingerprint]
        self._save()

    @staticmethod
    def _primary(record: _Record) -> Incident | None:
        refs = record.firing_alerts or record.incident.alerts
        if not refs:
            return None
        ref = min(refs, key=_priority)
        return record.analyses.get(ref.fingerprint)

    def _refresh(self, record: _Record, ended: datetime | None = None) -> None:
        """Top-level fields from the primary analysis (or the detector's); status from alerts and detector."""
        inc = record.incident
        shown = self._primary(record) or record.detector or inc
        is_open = bool(record.firing_alerts) or record.detector_active
        keep = {
            "fingerprint": inc.fingerprint,
            "source": inc.source,
            "service": inc.service,
            "alerts": inc.alerts,
            "change_point": inc.change_point,
            "detected_at": inc.detected_at,
            "annotation_id": inc.annotation_id,
            "starts_at": min(inc.starts_at, shown.starts_at),
        }
        update = {
            f: getattr(shown, f)
            for f in (
                "alertname",
                "labels",
                "annotations",
                "analyzed_at",
                "evaluated_at",
                "window",
                "top_suspect",
                "findings",
                "links",
                "errors",
                "suspects",
                "events",
                "exemplars",
            )
        }
        if shown is not record.detector and record.detector_active and record.detector is not None:
            # The alert's analysis is as of its notification; the detector's is redone every tick.
            # A cause it names that the alert's does not (one that showed later: drift whose window
            # fills slowly once a slow stage throttles the traffic) is a suspect too.
            named = {(f.kind, f.subject) for f in update["suspects"]}
            later = [f for f in record.detector.suspects if (f.kind, f.subject) not in named and f.kind != "unknown"]
            update["suspects"] = [*update["suspects"], *later]
        if not is_open:
            ends = [a.ends_at for a in inc.alerts if a.ends_at] + ([ended] if ended else [])
            update["status"] = "resolved"
            update["ends_at"] = inc.ends_at or (max(ends) if ends else datetime.now(UTC))
        else:
            update["status"] = "firing"
            update["ends_at"] = None
        record.incident = inc.model_copy(update=keep | update)

    # ---- alerts

    def alert_firing(self, alert: WebhookAlert, analysis: Incident) -> tuple[Incident, bool]:
        """The alert joins its open incident (or opens one). Returns the incident and whether it is new."""
        with self._lock:
            record = self._items.get(self._by_alert.get(alert.fingerprint, ""))
            if record is not None and not record.open:
                record = None  # the same alert firing again after its incident closed: a new incident
            if record is None:
                record = self._open_record(analysis.service, alert.starts_at)
            created = record is None
            if record is None:
                record = _Record(analysis.model_copy(update={"source": "alert", "alerts": []}))
            ref = AlertRef(
                fingerprint=alert.fingerprint,
                alertname=alert.alertname,
                status="firing",
                labels=alert.labels,
                starts_at=alert.starts_at,
                ends_at=None,
                top_suspect=analysis.top_suspect,
            )
            alerts = [a for a in record.incident.alerts if a.fingerprint != alert.fingerprint] + [ref]
            record.incident = record.incident.model_copy(update={"alerts": alerts})
            record.analyses[alert.fingerprint] = analysis
            self._by_alert[alert.fingerprint] = record.incident.fingerprint
            self._refresh(record)
            self._touch(record)
            return record.incident, created

    def alert_resolved(self, alert: WebhookAlert, ended: datetime) -> Incident | None:
        with self._lock:
            record = self._items.get(self._by_alert.get(alert.fingerprint, ""))
            if record is None:
                return None
            alerts = [
                a.model_copy(update={"status": "resolved", "ends_at": ended})
                if a.fingerprint == alert.fingerprint
                else a
                for a in record.incident.alerts
            ]
            record.incident = record.incident.model_copy(update={"alerts": alerts})
            self._refresh(record, ended)
            self._touch(record)
            return record.incident

    def set_annotation(self, key: str, annotation_id: int | None) -> None:
        with self._lock:
            record = self._items.get(key)
            if record is not None:
                record.incident = record.incident.model_copy(update={"annotation_id": annotation_id})
                self._save()

    # ---- the detector

    def detected(self, analysis: Incident, change_point: datetime, at: datetime) -> tuple[Incident, bool]:
        """The detector sees a change of ``analysis.service``: it opens an incident or updates the open one."""
        with self._lock:
            record = self._open_record(analysis.service)
            created = record is None
            if record is None:
                incident = analysis.model_copy(
                    update={
                        "fingerprint": detector_id(analysis.service or "?", change_point),
                        "source": "detector",
                        "starts_at": change_point,
                        "change_point": change_point,
                        "detected_at": at,
                        "alerts": [],
                    }
                )
                record = _Record(incident)
            else:
                inc = record.incident
                record.incident = inc.model_copy(
                    update={"change_point": inc.change_point or change_point, "detected_at": inc.detected_at or at}
                )
            record.detector = analysis.model_copy(update={"starts_at": record.incident.change_point or change_point})
            record.detector_active = True
            self._refresh(record)
            self._touch(record)
            return record.incident, created

    def detector_cleared(self, service: str, at: datetime) -> Incident | None:
        """The detector no longer sees the change: the incident closes unless an alert still fires."""
        with self._lock:
            record = self._open_record(service)
            if record is None or not record.detector_active:
                return None
            record.detector_active = False
            self._refresh(record, at)
            self._save()
            return record.incident

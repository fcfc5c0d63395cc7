"""Continuous detection: every step, every service's signals, without waiting for an alert.

At each tick the detector lists the services Prometheus knows (span metrics, log counts, process
metrics), ranks each one's candidate causes as the alert analysis does (:mod:`analyzer.rca`:
RED per operation from span metrics, ML quality and drift where they exist, the process's CPU,
memory, threads and GC, the host's CPU (a cause only when it saturates: a CPU-bound neighbour),
log counts by severity) and, for the candidates that score, looks for a
change point in their series (:mod:`analyzer.changepoint`: ruptures, then BARO's robust scaler
fitted before the change). A candidate that scores at least ``detect_score`` *and* whose series
changed inside the recent window, in its bad direction, by a robust z of at least ``CHANGE_Z``, is
a hit; hits in a row over ``confirm`` steps of data open an incident (``source: detector``) at the
change point.

It ticks ``TICKS_PER_STEP`` times a step, each tick on a grid that ends at the tick itself (not at
the step before it), so a sample is seen within a third of a step of reaching Prometheus. The grid
keeps its step, and what confirms a change is fresh data, not ticks: the hits must go on until the
newest point is ``confirm - 1`` steps newer than at the first hit (ticks that see the same data
confirm nothing), and letting an incident go takes ``clear_ticks - 1`` steps of quiet ones.

While an incident is open the analysis is anchored on its change point: the baseline is the
window before it, the "latest" point the newest. When no candidate scores ``clear_score`` for
``clear_ticks`` ticks in a row, the detector lets the incident go (it closes unless an alert of
it still fires). It never reads ``ml_fault_active``.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import numpy as np

from analyzer import evidence
from analyzer.changepoint import ChangePoint, find_change
from analyzer.incidents import IncidentBook
from analyzer.models import Incident
from analyzer.prometheus import PrometheusAPI
from analyzer.rca import Assessment, RootCauseAnalyzer, Target, _Candidate, _Evidence
from mlobs import contract

_log = logging.getLogger("analyzer.detector")

DETECT_SCORE = 0.2
CLEAR_SCORE = 0.1
CHANGE_Z = 3.5
CONFIRM_TICKS = 2  # steps of data, counted in points: hits from the first to one step of fresh data later
CLEAR_TICKS = 4  # likewise: quiet from the first quiet point to three steps later
TICKS_PER_STEP = 3
_JITTER = 0.5  # seconds: two ticks a step apart may be a little less than a step apart
MAX_ANCHOR_SECONDS = 1800  # an incident older than this is judged on the usual windows again

DISCOVERY = {
    "spans": f"group by (job, service_name) ({contract.SPANMETRICS_CALLS_TOTAL})",
    "logs": f"group by (job) ({contract.LOG_RECORDS_TOTAL})",
    "process": f"group by (job) ({contract.PROCESS_CPU_TIME_SECONDS_TOTAL})",
}


@dataclass
class Hit:
    candidate: _Candidate
    change: ChangePoint
    at: float  # the change point's time


@dataclass
class _State:
    hit_since: float | None = None  # the grid end of the first hit of the current run of hits
    quiet_since: float | None = None  # of the first quiet assessment of an open incident

    def reset(self) -> None:
        self.hit_since = self.quiet_since = None


def discover(prometheus: PrometheusAPI, at: float, exclude: frozenset[str] = frozenset()) -> list[Target]:
    """Every service with span metrics, log counts or process metrics, as a target of the analysis."""
    targets: dict[str, Target] = {}
    for name, expr in DISCOVERY.items():
        try:
            samples = prometheus.query(expr, at)
        except Exception as exc:  # discovery that fails this tick is retried at the next
            _log.warning("service discovery (%s) failed: %s", name, exc)
            continue
        for s in samples:
            job = s.labels.get("job") or None
            service = s.labels.get("service_name") or (job.rsplit("/", 1)[-1] if job else None)
            if not service or service in exclude or (job and job in exclude):
                continue
            known = targets.get(service)
            if known is None or (known.job is None and job):
                targets[service] = Target(job=job or service, model_name=None, model_version=None, service=service)
    return [targets[k] for k in sorted(targets)]


def newest_change(
    values: np.ndarray, recent_points: int, *, min_scale: float = 0.0, relative_floor: float = 0.0
) -> ChangePoint | None:
    """The change point of the newest regime of ``values``, when it lies in the last ``recent_points``
    (and the point before them): the change point of the whole series, and while it lies before
    them, the change point of the points after it. One breakpoint over the whole window lands on the
    biggest change in it, which may be an older one (a fault a few minutes ago, its recovery) rather
    than the one under way; the points after an old change are its new regime, the baseline of the
    next change. A level that moved long ago and stays has no newer change, so it opens nothing."""
    values = np.asarray(values, dtype=float)
    offset = 0
    while True:
        change = find_change(values[offset:], min_scale=min_scale, relative_floor=relative_floor)
        if change is None:
            return None
        index = offset + change.index
        if index >= len(values) - recent_points - 1:
            return replace(change, index=index)
        offset = index


def _series_change(evidence: _Evidence, recent_points: int) -> ChangePoint | None:
    if evidence.values is None:
        return None
    signal = evidence.signal
    change = newest_change(
        evidence.scored_values, recent_points, min_scale=signal.min_scale, relative_floor=signal.relative_floor
    )
    if change is None:
        return None
    z = abs(change.robust_z) if signal.direction == 0 else change.robust_z * signal.direction
    return change if z >= CHANGE_Z else None


def change_of(candidate: _Candidate, recent_points: int, min_score: float = 0.0) -> ChangePoint | None:
    """The change point of one of the candidate's series, when it lies in the recent window and moved
    in the signal's bad direction by at least CHANGE_Z: the strongest series first, then any other
    that scores ``min_score`` by itself (p99 moves well before p95 when a slow fault also slows the
    traffic down: the slow requests fill 1% of the rate window before they fill 5%)."""
    best = candidate.best
    others = sorted((e for e in candidate.evidence if e is not best), key=lambda e: -e.score)
    for series in [best, *(e for e in others if candidate.weight * e.score >= min_score)]:
        change = _series_change(series, recent_points)
        if change is not None:
            return change
    return None


class Detector:
    def __init__(
        self,
        analyzer: RootCauseAnalyzer,
        prometheus: PrometheusAPI,
        book: IncidentBook,
        *,
        exclude: frozenset[str] = frozenset({contract.SERVICE_ANALYZER}),
        detect_score: float = DETECT_SCORE,
        clear_score: float = CLEAR_SCORE,
        confirm: int = CONFIRM_TICKS,
        clear_ticks: int = CLEAR_TICKS,
        clock: Callable[[], float] = time.time,
        on_incident: Callable[[Incident, bool], None] | None = None,
        trace_ui: str = "",
        interval: float | None = None,
    ) -> None:
        self.trace_ui = trace_ui
        self.analyzer = analyzer
        self.prometheus = prometheus
        self.book = book
        self.exclude = exclude
        self.detect_score = detect_score
        self.clear_score = clear_score
        self.confirm = confirm
        self.clear_ticks = clear_ticks
        self.clock = clock
        # How often it ticks: a third of a step unless told (the loop's period; tick() takes any time).
        self.interval = interval or analyzer.step_seconds / TICKS_PER_STEP
        self.on_incident = on_incident
        self._states: dict[str, _State] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.ticks = 0

    # ---- one tick

    def hit(self, assessment: Assessment) -> Hit | None:
        step = assessment.step
        recent_points = max(1, round(self.analyzer.recent_seconds / step))
        for candidate in assessment.ranked:
            if candidate.score < self.detect_score:
                break
            change = change_of(candidate, recent_points, self.detect_score)
            if change is not None:
                return Hit(candidate, change, assessment.start + change.index * step)
        return None

    def _analysis(
        self, assessment: Assessment, now: float, hit: Hit | None, extra: float, change_point: float | None = None
    ) -> Incident:
        target = assessment.target
        findings = assessment.findings
        cp = change_point if change_point is not None else (hit.at if hit else now)
        labels = {"alertname": "ChangePoint", "service_name": target.service_name or "", "job": target.job or ""}
        summary = f"change point in {target.service_name}"
        if hit is not None:
            summary += f": {hit.candidate.kind} {hit.candidate.subject} (robust z {hit.change.robust_z:+.1f})"
        return Incident(
            fingerprint="",
            source="detector",
            service=target.service_name,
            alertname="ChangePoint",
            status="firing",
            labels=labels,
            annotations={"summary": summary},
            starts_at=datetime.fromtimestamp(hit.at if hit else now, UTC),
            analyzed_at=datetime.fromtimestamp(now, UTC),
            evaluated_at=datetime.fromtimestamp(assessment.end, UTC),
            window=self.analyzer.window,
            top_suspect=findings[0],
            findings=findings,
            suspects=self.analyzer.suspects(assessment),
            links=self.analyzer.links_for(assessment, extra_seconds=extra),
            errors=assessment.errors,
            events=evidence.events(self.prometheus, target, cp, now),
            exemplars=evidence.exemplars(
                self.prometheus,
                findings[0],
                target,
                cp - self.analyzer.step_seconds,
                now,
                grafana=self.analyzer.grafana_url,
                trace_ui=self.trace_ui,
            )
            if findings[0].kind != "unknown"
            else [],
        )

    def check(self, target: Target, now: float) -> Incident | None:
        service = target.service_name or ""
        state = self._states.setdefault(service, _State())
        open_incident = self.book.open_for(service)
        if open_incident is not None and open_incident.change_point is not None and self.book.detector_active(service):
            # Anchored on the change point: the baseline is the window before it.
            cp = open_incident.change_point.timestamp()
            recent = now - cp + self.analyzer.step_seconds
            if recent <= MAX_ANCHOR_SECONDS:
                assessment = self.analyzer.assess(target, now, recent_seconds=recent, fresh=True)
                top = assessment.top
                if top is None or top.score < self.clear_score:
                    if state.quiet_since is None:
                        state.quiet_since = assessment.end
                    if self._steps(state.quiet_since, assessment.end) >= self.clear_ticks - 1:
                        state.reset()
                        closed = self.book.detector_cleared(service, datetime.fromtimestamp(now, UTC))
                        if closed and self.on_incident:
                            self.on_incident(closed, False)
                        return closed
                    return None
                state.quiet_since = None
                analysis = self._analysis(assessment, now, None, recent, cp)
                incident, _ = self.book.detected(analysis, open_incident.change_point, open_incident.detected_at)
                return incident
            state.reset()
            return self.book.detector_cleared(service, datetime.fromtimestamp(now, UTC))
        assessment = self.analyzer.assess(target, now, fresh=True)
        found = self.hit(assessment)
        if found is None:
            state.hit_since = None
            return None
        if state.hit_since is None:
            state.hit_since = assessment.end
        if self._steps(state.hit_since, assessment.end) < self.confirm - 1:
            return None  # not yet confirmed by fresh data
        state.quiet_since = None
        analysis = self._analysis(assessment, now, found, self.analyzer.recent_seconds)
        change_point = datetime.fromtimestamp(found.at, UTC)
        incident, created = self.book.detected(analysis, change_point, datetime.fromtimestamp(now, UTC))
        if self.on_incident:
            self.on_incident(incident, created)
        if created:
            _log.info(
                "change point in %s at %s: %s %s (score %.2f)",
                service,
                change_point.isoformat(),
                found.candidate.kind,
                found.candidate.subject,
                found.candidate.score,
                extra={"service.name": service, "incident.id": incident.fingerprint},
            )
        return incident

    def _steps(self, since: float, end: float) -> int:
        """Whole steps of data between two grid ends (ticks a little less than a step apart count one)."""
        return math.floor((end - since + _JITTER) / self.analyzer.step_seconds)

    def tick(self, now: float | None = None) -> list[Incident]:
        now = self.clock() if now is None else now
        self.ticks += 1
        touched = []
        for target in discover(self.prometheus, now, self.exclude):
            try:
                incident = self.check(target, now)
            except Exception:
                _log.exception("detection for %s failed", target.service_name)
                continue
            if incident is not None:
                touched.append(incident)
        return touched

    # ---- the loop

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, name="detector", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        interval = self.interval
        while not self._stop.is_set():
            started = self.clock()
            self.tick(started)
            elapsed = self.clock() - started
            self._stop.wait(max(1.0, interval - elapsed) if math.isfinite(elapsed) else interval)

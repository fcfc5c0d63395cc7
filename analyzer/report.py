"""A self-contained HTML report of one incident (``GET /incidents/{id}/report.html``).

Plots (matplotlib, rendered to inline PNG) of the top findings' series around the change point
(or the alert's start), then the suspects with their evidence, the events, the exemplar traces
and the links. One file, no external asset: it can be mailed or attached to a ticket.
"""

from __future__ import annotations

import base64
import html
import io
import math
from datetime import UTC, datetime

import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from analyzer.models import Finding, Incident  # noqa: E402

MAX_PLOTS = 4
MAX_LINES = 6


def _series(analyzer, finding: Finding, start: float, end: float, step: float):
    if not finding.promql:
        return []
    try:
        return analyzer.prometheus.query_range(finding.promql[0], start, end, step)
    except Exception:
        return []


def _plot(finding: Finding, series, start: float, step: float, marker: float | None) -> str | None:
    shown = [s for s in series if np.isfinite(s.values).any()][:MAX_LINES]
    if not shown:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 2.4), dpi=100)
    for s in shown:
        times = [datetime.fromtimestamp(start + i * step, UTC) for i in range(len(s.values))]
        name = s.labels.get("span_name") or s.labels.get("ml_stage") or s.labels.get("ml_feature")
        name = name or s.labels.get("severity_text") or ", ".join(f"{k}={v}" for k, v in s.labels.items()) or "value"
        ax.plot(times, s.values, linewidth=1.4 if name == finding.subject else 0.8, label=name[:40])
    if marker is not None:
        ax.axvline(datetime.fromtimestamp(marker, UTC), color="#d62728", linestyle="--", linewidth=1, label="change")
    ax.set_title(f"{finding.kind}: {finding.subject}"[:90], fontsize=9)
    ax.tick_params(labelsize=7)
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M"))
    ax.legend(fontsize=6, loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _e(text: object) -> str:
    return html.escape(str(text))


def render_report(incident: Incident, analyzer, now: float) -> str:
    marker_dt = incident.change_point or incident.starts_at
    marker = marker_dt.timestamp()
    step = analyzer.step_seconds
    end = min(now, (incident.ends_at.timestamp() + 300) if incident.ends_at else now)
    end = math.floor(end / step) * step
    window = analyzer.baseline_seconds + analyzer.recent_seconds
    start = min(end - window, math.floor((marker - analyzer.baseline_seconds) / step) * step)
    shown: list[Finding] = []
    for f in [*incident.suspects, *incident.findings]:
        if f.kind != "unknown" and all((f.kind, f.subject) != (g.kind, g.subject) for g in shown):
            shown.append(f)
    plots = []
    for f in shown[:MAX_PLOTS]:
        png = _plot(f, _series(analyzer, f, start, end, step), start, step, marker)
        if png:
            plots.append(f'<figure><img alt="{_e(f.kind)} {_e(f.subject)}" src="data:image/png;base64,{png}"></figure>')
    suspects = "".join(
        f"<li><b>{_e(f.kind)}</b> <code>{_e(f.subject)}</code> score {f.score:.2f}<br>{_e(f.summary)}</li>"
        for f in (incident.suspects or [incident.top_suspect])
    )
    rows = "".join(
        f"<tr><td>{_e(f.kind)}</td><td><code>{_e(f.subject)}</code></td><td>{f.score:.3f}</td>"
        f"<td><details><summary>{_e(f.summary)}</summary><pre>{_e(f.evidence)}</pre></details></td></tr>"
        for f in incident.findings
    )
    events = "".join(f"<li>{_e(ev.kind)}: {_e(ev.summary)}</li>" for ev in incident.events) or "<li>none</li>"
    exemplars = (
        "".join(
            f'<li><a href="{_e(x.url)}"><code>{_e(x.trace_id)}</code></a> {_e(x.series)} '
            f"{x.value * 1000:.1f}ms at {x.at:%H:%M:%S}</li>"
            for x in incident.exemplars
        )
        or "<li>none in the window</li>"
    )
    alerts = (
        "".join(
            f"<li>{_e(a.alertname)} ({_e(a.status)}) since {a.starts_at:%Y-%m-%d %H:%M:%S} — top suspect "
            f"{_e(a.top_suspect.kind)} <code>{_e(a.top_suspect.subject)}</code></li>"
            for a in incident.alerts
        )
        or "<li>none (opened by the detector)</li>"
    )
    links = incident.links
    link_items = "".join(
        f'<li><a href="{_e(url)}">{_e(name)}</a>: <code>{_e(query)}</code></li>'
        for name, url, query in (
            ("Prometheus (Grafana Explore)", links.prometheus_explore, links.promql),
            ("Traces (Grafana Explore)", links.tempo_explore, links.traceql),
            ("Logs (Grafana Explore)", links.loki_explore, links.logql),
        )
    )
    made = f"{datetime.fromtimestamp(now, UTC):%Y-%m-%d %H:%M:%S}"
    cp = f"{incident.change_point:%Y-%m-%d %H:%M:%S} UTC" if incident.change_point else "none found"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Incident {_e(incident.fingerprint)}</title>
<style>
body{{font-family:system-ui,sans-serif;margin:1.5em;max-width:62em;color:#222}}
h1{{font-size:1.3em}} h2{{font-size:1.05em;margin-top:1.4em;border-bottom:1px solid #ddd}}
table{{border-collapse:collapse;width:100%;font-size:.85em}}
td,th{{border-bottom:1px solid #eee;padding:.3em;vertical-align:top;text-align:left}}
pre{{white-space:pre-wrap;font-size:.8em;background:#f6f6f6;padding:.5em}} code{{font-size:.9em}}
.meta td:first-child{{color:#666;width:11em}} figure{{margin:.4em 0}} img{{max-width:100%}}
.status-firing{{color:#c00;font-weight:bold}} .status-resolved{{color:#080;font-weight:bold}}
</style></head><body>
<h1>{_e(incident.alertname)} — {_e(incident.service or "")}</h1>
<table class="meta">
<tr><td>incident</td><td><code>{_e(incident.fingerprint)}</code> (source: {_e(incident.source)})</td></tr>
<tr><td>status</td><td class="status-{_e(incident.status)}">{_e(incident.status)}</td></tr>
<tr><td>started</td><td>{incident.starts_at:%Y-%m-%d %H:%M:%S} UTC</td></tr>
<tr><td>change point</td><td>{cp}</td></tr>
<tr><td>ended</td><td>{f"{incident.ends_at:%Y-%m-%d %H:%M:%S} UTC" if incident.ends_at else "—"}</td></tr>
<tr><td>analysed</td><td>{incident.analyzed_at:%Y-%m-%d %H:%M:%S} UTC; {_e(incident.window)}</td></tr>
</table>
<h2>Suspects</h2><ol>{suspects}</ol>
<h2>Signals around the change</h2>{"".join(plots) or "<p>no series to plot (Prometheus did not answer)</p>"}
<h2>Findings</h2><table><tr><th>kind</th><th>subject</th><th>score</th><th>evidence</th></tr>{rows}</table>
<h2>Events near the change point</h2><ul>{events}</ul>
<h2>Exemplar traces</h2><ul>{exemplars}</ul>
<h2>Alerts</h2><ul>{alerts}</ul>
<h2>Links</h2><ul>{link_items}</ul>
{"<h2>Errors</h2><pre>" + _e(chr(10).join(incident.errors)) + "</pre>" if incident.errors else ""}
<p style="color:#888;font-size:.8em">mlobs analyzer, report made {made} UTC</p>
</body></html>
"""

"""Grafana Explore URLs: one pane with one query against a datasource of the stack.

The dashboards' links, `mlobs verify` and the analyzer's incidents build their URLs here. The
datasource uids are fixed by the provisioning (grafana/provisioning/datasources), so a URL works
in any mlobs Grafana. ``url`` takes the query as the datasource's query model; ``promql``,
``traceql``, ``jaeger_search``, ``trace_id`` and ``logs`` make that model for each kind of query.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from urllib.parse import quote

#: The plugin type of each datasource uid the provisioning defines.
DATASOURCE_TYPES: dict[str, str] = {
    "prometheus": "prometheus",
    "loki": "loki",
    "victorialogs": "victoriametrics-logs-datasource",
    "tempo": "tempo",
    "jaeger": "jaeger",
    "alertmanager": "alertmanager",
}


def url(
    uid: str,
    query: Mapping[str, object],
    *,
    grafana: str = "",
    start: str | int = "now-1h",
    end: str | int = "now",
    pane: str = "mlobs",
) -> str:
    """Explore on ``grafana`` (empty: a path, for a link inside Grafana) showing ``query`` from
    ``start`` to ``end``: Grafana times such as ``now-1h``, epoch milliseconds, or a dashboard's
    ``$__from``. ``$`` stays literal, so Grafana still replaces a dashboard's variables in a link."""
    if uid not in DATASOURCE_TYPES:
        raise ValueError(f"no datasource has uid {uid!r}; the stack's are {', '.join(DATASOURCE_TYPES)}")
    panes = {
        pane: {
            "datasource": uid,
            "queries": [{"refId": "A", "datasource": {"type": DATASOURCE_TYPES[uid], "uid": uid}, **query}],
            "range": {"from": str(start), "to": str(end)},
        }
    }
    encoded = quote(json.dumps(panes, separators=(",", ":"), sort_keys=True), safe="$")
    return f"{grafana.rstrip('/')}/explore?schemaVersion=1&orgId=1&panes={encoded}"


def promql(expr: str, *, exemplar: bool = False) -> dict[str, object]:
    """A PromQL range query, with its exemplars when asked."""
    return {"expr": expr, "range": True, **({"exemplar": True} if exemplar else {})}


def traceql(query: str, *, limit: int = 20) -> dict[str, object]:
    """A TraceQL search on Tempo, one row per trace."""
    return {"queryType": "traceql", "query": query, "limit": limit, "tableType": "traces"}


def jaeger_search(service: str, *, tags: str = "", min_duration: str = "", limit: int = 20) -> dict[str, object]:
    """A trace search on Jaeger, as its search form: a service, span tags in logfmt (``error=true``)
    and a minimum duration (``500ms``); TraceQL is Tempo's."""
    optional = {"tags": tags, "minDuration": min_duration}
    return {"queryType": "search", "service": service, "limit": limit, **{k: v for k, v in optional.items() if v}}


def trace_id(uid: str, trace: str) -> dict[str, object]:
    """One trace by its id, on Tempo or Jaeger."""
    return {"queryType": "traceql", "query": trace} if uid == "tempo" else {"query": trace}


def logs(uid: str, expr: str) -> dict[str, object]:
    """A log query: LogQL on Loki (a range query: the lines), LogsQL on VictoriaLogs."""
    return {"expr": expr, "queryType": "range"} if uid == "loki" else {"expr": expr}


def service_map(uid: str) -> dict[str, object]:
    """The graph of the services: Tempo's service map, Jaeger's dependency graph."""
    return {"queryType": "serviceMap" if uid == "tempo" else "dependencyGraph"}

"""Every query a dashboard runs, and Grafana's variable substitution, so tests can run them.

`iter_queries` walks a dashboard's JSON (variables, annotations, panels, and the Explore links of
panels) and yields one `Query` per expression; `substitute_variables` replaces `$service`,
`${model}`, `$__rate_interval` and the like with concrete values, as Grafana would.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

Language = Literal["promql", "logql", "traceql"]

LANGUAGE_OF_DATASOURCE: dict[str, Language] = {"prometheus": "promql", "loki": "logql", "tempo": "traceql"}

# Values for Grafana's built-in variables that make valid, meaningful queries outside Grafana.
# $__rate_interval must cover at least four samples: 1m does for push intervals up to 15s.
BUILTIN_VALUES: dict[str, str] = {
    "__rate_interval": "1m",
    "__interval": "30s",
    "__interval_ms": "30000",
    "__auto": "1m",
    "__range": "1h",
    "__range_s": "3600",
    "__range_ms": "3600000",
    "__from": "now-1h",
    "__to": "now",
}

# $var, ${var}, ${var:format}, ${var.field:format}, [[var]], [[var:format]]
_VARIABLE = re.compile(r"\$\{(\w+)(?:\.[^:}]+)?(?::[^}]+)?\}|\[\[(\w+)(?::\w+)?\]\]|\$(\w+)")
_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?:(?P<selector>.+?)\s*,\s*)?(?P<label>\w+)\s*\)\s*$", re.DOTALL)
_QUERY_RESULT = re.compile(r"^\s*query_result\((?P<expr>.+)\)\s*$", re.DOTALL)


@dataclass(frozen=True)
class Query:
    """One expression of a dashboard.

    `panel` is the panel title, or `variable $name` / `annotation Name` / `<title> (link ...)`.
    """

    dashboard: str
    panel: str
    datasource: str
    language: Language
    expr: str
    ref: str = ""

    def __str__(self) -> str:
        ref = f" [{self.ref}]" if self.ref else ""
        return f"{self.dashboard} / {self.panel}{ref} ({self.language}): {self.expr}"


def variables_in(expr: str) -> set[str]:
    return {next(group for group in match.groups() if group) for match in _VARIABLE.finditer(expr)}


def substitute_variables(expr: str, values: Mapping[str, str | Sequence[str]]) -> str:
    """Replace Grafana variables with values; a list becomes a regex alternation, as Grafana
    formats a multi-value variable. Built-ins ($__rate_interval, $__range, ...) have defaults.
    Raises ValueError naming every variable that has no value."""
    known: dict[str, str | Sequence[str]] = {**BUILTIN_VALUES, **values}
    missing = sorted(variables_in(expr) - known.keys())
    if missing:
        raise ValueError(f"no value for variable(s) {', '.join('$' + name for name in missing)} in: {expr}")

    def replace(match: re.Match[str]) -> str:
        name = next(group for group in match.groups() if group)
        return _format(known[name])

    return _VARIABLE.sub(replace, expr)


def _format(value: str | Sequence[str]) -> str:
    if isinstance(value, str):
        return ".*" if value == "$__all" else value
    items = [".*" if item == "$__all" else item for item in value]
    return items[0] if len(items) == 1 else "(" + "|".join(items) + ")"


def variable_defaults(dashboard: Mapping[str, Any]) -> dict[str, str | list[str]]:
    """The current (default) value of every variable of a dashboard, `$__all` as its all-value."""
    defaults: dict[str, str | list[str]] = {}
    for variable in dashboard.get("templating", {}).get("list", []):
        current = variable.get("current") or {}
        value = current.get("value", variable.get("query", "") if variable.get("type") == "textbox" else "")
        all_value = variable.get("allValue") or ".*"
        if isinstance(value, list):
            defaults[variable["name"]] = [all_value if item == "$__all" else item for item in value]
        else:
            defaults[variable["name"]] = all_value if value == "$__all" else value
    return defaults


def variable_promql(query: str) -> str | None:
    """The PromQL a Prometheus query variable runs: label_values(sel, label) lists the label's
    values on the series of `sel`, i.e. `group by (label) (sel)`."""
    match = _LABEL_VALUES.match(query)
    if match:
        selector = match.group("selector") or f'{{{match.group("label")}!=""}}'
        return f"group by ({match.group('label')}) ({selector})"
    match = _QUERY_RESULT.match(query)
    if match:
        return match.group("expr")
    return None


def _datasource(node: Mapping[str, Any], fallback: Mapping[str, Any] | None = None) -> dict[str, Any]:
    datasource = node.get("datasource") or fallback or {}
    if isinstance(datasource, str):  # legacy form: a datasource name
        return {"uid": datasource, "type": ""}
    return dict(datasource)


def _language(datasource: Mapping[str, Any]) -> Language | None:
    return LANGUAGE_OF_DATASOURCE.get(datasource.get("type", "")) or LANGUAGE_OF_DATASOURCE.get(
        datasource.get("uid", "")
    )


def iter_panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those inside rows, without the rows themselves."""
    for panel in dashboard.get("panels", []):
        if panel.get("type") == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def _target_queries(uid: str, title: str, target: Mapping[str, Any], datasource: Mapping[str, Any]) -> Iterator[Query]:
    language = _language(datasource)
    ref = target.get("refId", "")
    ds_uid = datasource.get("uid", "")
    if language in ("promql", "logql") and target.get("expr"):
        yield Query(uid, title, ds_uid, language, target["expr"], ref)
    elif language == "traceql":
        query_type = target.get("queryType", "traceql")
        if query_type == "traceql" and target.get("query"):
            yield Query(uid, title, ds_uid, "traceql", target["query"], ref)
        elif query_type == "serviceMap":
            # What Grafana's Tempo datasource asks the linked Prometheus for to draw the graph.
            selector = target.get("serviceMapQuery") or ""
            if isinstance(selector, list):
                selector = selector[0] if selector else ""
            for metric in ("traces_service_graph_request_total", "traces_service_graph_request_server_seconds_sum"):
                expr = f"sum by (client, server) (rate({metric}{selector}[$__range]))"
                yield Query(uid, title, "prometheus", "promql", expr, ref)


def _link_queries(uid: str, title: str, link: Mapping[str, Any]) -> Iterator[Query]:
    url = link.get("url", "")
    if not url.startswith("/explore"):
        return
    for panes in parse_qs(urlsplit(url).query).get("panes", []):
        for pane in json.loads(panes).values():
            for query in pane.get("queries", []):
                yield from _target_queries(uid, f"{title} (link {link.get('title', '')})", query, _datasource(query))


def iter_queries(dashboard: Mapping[str, Any]) -> Iterator[Query]:
    """Every expression a dashboard runs: variables, annotations, panel targets and Explore links."""
    uid = dashboard.get("uid", "")
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        datasource = _datasource(variable)
        query = variable.get("query")
        if isinstance(query, Mapping):
            query = query.get("query", "")
        if _language(datasource) == "promql" and query:
            expr = variable_promql(query)
            if expr is not None:
                yield Query(uid, f"variable ${variable['name']}", datasource.get("uid", ""), "promql", expr)
    for annotation in dashboard.get("annotations", {}).get("list", []):
        datasource = _datasource(annotation)
        language = _language(datasource)
        expr = annotation.get("expr") or (annotation.get("target") or {}).get("expr")
        if language is not None and expr:
            yield Query(uid, f"annotation {annotation.get('name', '')}", datasource.get("uid", ""), language, expr)
    for panel in iter_panels(dashboard):
        title = panel.get("title", "")
        for target in panel.get("targets", []):
            yield from _target_queries(uid, title, target, _datasource(target, panel.get("datasource")))
        for link in panel.get("links", []):
            yield from _link_queries(uid, title, link)

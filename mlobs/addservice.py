"""`mlobs add-service`: add a service of yours to stack.yaml, keeping the file's comments and layout.

The new document is validated by the loader of `mlobs validate` (mlobs/config.py) before anything
is written, and written whole or not at all. `report` then says what the service must set and what
watches it: the OTEL_* variables of mlobs.components.otlp_env, the dashboards whose $service lists
it, and the alerts the rendered rules give it.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import io
import itertools
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import yaml
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.scalarstring import SingleQuotedScalarString

from mlobs import components, config, contract, render

_KIND = config.Service.model_fields["kind"]
KINDS: tuple[str, ...] = get_args(_KIND.annotation)
DEFAULT_KIND: str = _KIND.default

#: The rule groups (prometheus/rules/*.yml) whose alerts judge a service of each kind. Every kind
#: also gets those of the default kind: they read the span metrics that any service's traces make.
ALERT_GROUPS: dict[str, tuple[str, ...]] = {
    "generic": ("mlobs-service-alerts", "mlobs-service-anomalies"),
    "ml": ("mlobs-models", "mlobs-anomalies"),
    "llm": ("mlobs-genai-alerts",),
}

#: The series a dashboard's $service variable takes its services from tell which kind sends them:
#: span metrics (any traced service), the ml_* metrics of generator/TELEMETRY.md, the GenAI ones.
SERIES_PREFIX: dict[str, str] = {
    "generic": contract.prometheus_label(contract.SPANMETRICS_NAMESPACE) + "_",
    "ml": "ml_",
    "llm": "gen_ai_",
}

_JOB_MATCHER = re.compile(r'\bjob="([^"]*)"')
#: label_values(<metric or selector>, <label>): what a query variable lists its values from
_LABEL_VALUES_OF = re.compile(r"^\s*label_values\((?P<selector>.*),\s*\w+\s*\)\s*$", re.DOTALL)
_NAME_MATCHER = re.compile(r'__name__=~?"([^"]*)"')


class AddServiceError(Exception):
    """Nothing was written; the message names stack.yaml, the field and what is allowed."""


@dataclass(frozen=True)
class Added:
    path: Path
    stack: config.Stack
    service: config.Service


def kinds_of(kind: str) -> tuple[str, ...]:
    """The kinds whose dashboards and alerts a service of ``kind`` gets: the default one and its own."""
    return tuple(dict.fromkeys((DEFAULT_KIND, kind)))


# ---- editing stack.yaml ---------------------------------------------------------------------


def add(path: Path, name: str, health_url: str, kind: str = DEFAULT_KIND) -> Added:
    """Append ``{name, health_url, kind}`` to ``services`` of the stack.yaml at ``path``; raise
    AddServiceError, having written nothing, when the result would not load."""
    try:
        current = config.load(path)
    except config.StackError as e:
        raise AddServiceError(f"{path} is invalid already, fix it first: {e}") from None
    taken = [s.name for s in current.services]
    if name in taken:
        # add-service adds, it never replaces an entry: the model would refuse the duplicate too.
        raise AddServiceError(f"{path}: services: name {name!r} is taken; NAME must be a new one, "
                              f"not one of: {', '.join(taken)}")
    text = path.read_text()
    entry: dict[str, str] = {"name": name, "health_url": health_url}
    if kind != DEFAULT_KIND:
        entry["kind"] = kind
    new_text = with_service(text, entry, path)
    try:
        stack = config.parse(yaml.safe_load(new_text), str(path))
    except config.StackError as e:
        raise AddServiceError(str(e)) from None
    _write_atomically(path, new_text)
    return Added(path, stack, stack.services[-1])


def with_service(text: str, entry: dict[str, str], path: Path) -> str:
    """``text`` with ``entry`` appended to its ``services``: only new lines, every other line kept."""
    yml, doc = _round_trip(text, path)
    services = doc.get("services") if isinstance(doc, dict) else None
    if not isinstance(services, CommentedSeq) or not services:
        raise AddServiceError(f"{path}: services: must be a list with at least one entry to add to")
    new = CommentedMap((k, _plain(v)) for k, v in entry.items())
    # The comments and blank lines after the last entry (the next section's heading among them)
    # are attached to its last value: hand them on, so they stay below the new entry.
    trailing = _take_trailing_comment(services[-1])
    if trailing is not None:
        new.ca.items[next(reversed(new))] = [None, None, trailing, None]
    services.append(new)
    out = _dump(yml, doc)
    ops = difflib.SequenceMatcher(None, text.splitlines(), out.splitlines(), autojunk=False).get_opcodes()
    if any(op not in ("equal", "insert") for op, *_ in ops):
        raise AddServiceError(f"{path}: services: cannot append without rewriting lines of it (is it a flow "
                              f"list?); add the entry by hand: {entry}")
    return out


def _round_trip(text: str, path: Path) -> tuple[YAML, Any]:
    """A ruamel.yaml round-trip loader whose indentation reproduces ``text`` byte for byte."""
    for mapping, sequence, offset in _indents():
        yml = YAML()  # round-trip mode
        yml.preserve_quotes = True
        yml.width = 1 << 16  # never fold a long line
        yml.indent(mapping=mapping, sequence=sequence, offset=offset)
        doc = yml.load(text)
        if _dump(yml, doc) == text:
            return yml, yml.load(text)
    raise AddServiceError(f"{path}: its layout cannot be kept by a YAML round trip; add the service by hand")


def _indents() -> Iterator[tuple[int, int, int]]:
    """(mapping, sequence, dash offset) indentations, the one of the shipped stack.yaml first."""
    yield 2, 4, 2
    for mapping, sequence in itertools.product((2, 4, 3), (2, 4, 3, 6, 5)):
        for offset in range(sequence - 1):
            yield mapping, sequence, offset


def _dump(yml: YAML, doc: Any) -> str:
    out = io.StringIO()
    yml.dump(doc, out)
    return out.getvalue()


def _plain(value: str) -> str:
    """``value``, quoted where the loader (PyYAML, YAML 1.1) would read it as something else
    (``on`` and ``yes`` are booleans there; ruamel.yaml writes YAML 1.2)."""
    return value if yaml.safe_load(value) == value else SingleQuotedScalarString(value)


def _take_trailing_comment(node: Any) -> Any:
    """Detach the comment lines after the last value under ``node`` and return them as a
    token; an end-of-line comment on that value stays where it is."""
    while isinstance(node, CommentedMap | CommentedSeq) and node and not node.fa.flow_style():
        key = next(reversed(node)) if isinstance(node, CommentedMap) else len(node) - 1
        if isinstance(node[key], CommentedMap | CommentedSeq) and node[key] and not node[key].fa.flow_style():
            node = node[key]
            continue
        slots = node.ca.items.get(key)
        at = 2 if isinstance(node, CommentedMap) else 0  # where ruamel keeps a value's comment
        token = slots[at] if slots else None
        if token is None:
            return None
        eol, newline, after = token.value.partition("\n")
        if not after:
            return None
        moved = copy.copy(token)
        moved.value = "\n" + after
        if eol.strip():
            token.value = eol + newline
        else:
            slots[at] = None
        return moved
    return None


def _write_atomically(path: Path, text: str) -> None:
    target = path.resolve()  # a symlinked stack.yaml keeps its link
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, target.stat().st_mode & 0o7777)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


# ---- what the service sets and gets ----------------------------------------------------------


def otel_env(stack: config.Stack, name: str, kind: str) -> dict[str, str]:
    """The OTEL_* variables of a service on this host: the collector on its 127.0.0.1 host port,
    the same for the native runtime and for docker compose (which publishes it there)."""
    place = components.Place(render.native_target(stack, render.BACKENDS))
    env = {k: v for k, v in components.otlp_env(place, name).items() if k.startswith("OTEL_")}
    if kind == "llm":
        env.update(contract.GENAI_SEMCONV_OPT_IN)
    return env


def compose_endpoint(stack: config.Stack) -> str:
    """The collector's OTLP/HTTP endpoint for a container on the compose network."""
    return components.Place(render.compose_target(stack)).url("otlp_http")


def dashboards_for(stack: config.Stack, kind: str) -> list[str]:
    """Titles of the dashboards whose $service variable lists a service of ``kind``."""
    from mlobs import dashboards

    listed: dict[str, list[str]] = {}  # title -> the metrics its $service lists services from
    for board in dashboards.build_all(stack).values():
        for var in board.get("templating", {}).get("list", []):
            query = var.get("query")
            query = query.get("query", "") if isinstance(query, dict) else query or ""
            found = _LABEL_VALUES_OF.match(query)
            if var.get("name") == "service" and found:
                listed[board["title"]] = _metrics(found["selector"].strip())
    return [title for k in kinds_of(kind) for title, metrics in listed.items()
            if any(m.startswith(SERIES_PREFIX[k]) for m in metrics)]


def _metrics(selector: str) -> list[str]:
    """The metrics a selector reads (``name{...}`` or ``{__name__=~"a|b"}``), a recorded series
    (``level:metric:operations``) as the metric it is recorded from."""
    names = _NAME_MATCHER.search(selector)
    found = names[1].split("|") if selector.startswith("{") and names else [selector.split("{", 1)[0]]
    return [name.split(":")[1] if name.count(":") == 2 else name for name in found]


def alerts_for(stack: config.Stack, name: str, kind: str) -> list[str]:
    """The alerts of the rendered rules that judge service ``name`` of ``kind``: those of its kinds'
    groups, less the ones written for another service (job="...")."""
    rendered = {g["name"]: g for g in rule_groups(stack)}
    found: dict[str, None] = {}
    for group in (rendered[g] for k in kinds_of(kind) for g in ALERT_GROUPS[k]):
        for rule in group.get("rules", []):
            jobs = set(_JOB_MATCHER.findall(str(rule.get("expr", ""))))
            if "alert" in rule and (not jobs or name in jobs):
                found[rule["alert"]] = None
    return list(found)


def rule_groups(stack: config.Stack) -> list[dict[str, Any]]:
    """Every group of the Prometheus rules rendered for ``stack`` (as `mlobs render` writes them)."""
    files = render.render(render.compose_target(stack))
    return [g for rel, text in sorted(files.items()) if rel.startswith(render.RULE_TEMPLATES + "/")
            for g in (yaml.safe_load(text) or {}).get("groups", [])]


def report(added: Added) -> list[str]:
    """What to print after adding: the environment to set, the dashboards and the alerts."""
    s, svc = added.stack, added.service
    lines = [f"Set these in the environment of {svc.name} (a process on this host: the native runtime and "
             "docker compose both listen on 127.0.0.1):"]
    lines += [f"  {k}={v}" for k, v in otel_env(s, svc.name, svc.kind).items()]
    lines.append(f"In a container on the compose network instead: OTEL_EXPORTER_OTLP_ENDPOINT={compose_endpoint(s)}")
    lines.append(f"Dashboards (kind {svc.kind}): {', '.join(dashboards_for(s, svc.kind)) or 'none'}")
    lines.append(f"Alerts (kind {svc.kind}): {', '.join(alerts_for(s, svc.name, svc.kind)) or 'none'}")
    return lines

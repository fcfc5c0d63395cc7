"""Syntax checks of dashboard queries with the upstream grammars.

LogQL and TraceQL are parsed with Grafana's own lezer grammars (@grafana/lezer-logql,
@grafana/lezer-traceql), PromQL with Prometheus' (@prometheus-io/lezer-promql), all run by
scripts/querycheck/parse.mjs under Node. PromQL is also checked by promtool where it is built
(.bin/promtool, or on PATH), which type-checks as Prometheus itself does.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from mlobs.dashboards.queries import Language, Query, substitute_variables

REPO = Path(__file__).resolve().parents[2]
QUERYCHECK_DIR = REPO / "scripts" / "querycheck"
BIN_DIR = REPO / ".bin"


def find_promtool() -> Path | None:
    """promtool from .bin/ (built by `make native-deps`), else from PATH, else None."""
    local = BIN_DIR / "promtool"
    if local.exists():
        return local
    found = shutil.which("promtool")
    return Path(found) if found else None


class QueryCheckError(RuntimeError):
    """The checker itself cannot run (no Node.js, npm ci failed, ...)."""


@dataclass(frozen=True)
class QueryProblem:
    query: Query
    error: str

    def __str__(self) -> str:
        return f"{self.query}\n    -> {self.error}"


def ensure_node_modules(folder: Path = QUERYCHECK_DIR) -> None:
    """Install the pinned grammars (npm ci, from package-lock.json) when node_modules is missing."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        raise QueryCheckError(
            "the query checker needs Node.js and npm (Node 20 or newer): install them from "
            "https://nodejs.org/ or your system's package manager, then run again"
        )
    if (folder / "node_modules").is_dir():
        return
    result = subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=folder,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise QueryCheckError(f"`npm ci` in {folder} failed:\n{result.stderr.strip()}")


def parse(items: Sequence[tuple[Language, str]], folder: Path = QUERYCHECK_DIR) -> list[str | None]:
    """Parse each (language, expression); None where it parses, else the error with its position."""
    if not items:
        return []
    ensure_node_modules(folder)
    payload = "".join(json.dumps({"lang": lang, "expr": expr}) + "\n" for lang, expr in items)
    result = subprocess.run(
        ["node", str(folder / "parse.mjs")],
        input=payload,
        capture_output=True,
        text=True,
        check=False,
    )
    lines = result.stdout.splitlines()
    if result.returncode != 0 or len(lines) != len(items):
        raise QueryCheckError(f"{folder / 'parse.mjs'} failed (exit {result.returncode}):\n{result.stderr.strip()}")
    answers = [json.loads(line) for line in lines]
    return [None if answer["ok"] else answer["error"] for answer in answers]


def check_queries(
    queries: Iterable[Query],
    values: Mapping[str, str | Sequence[str]],
    languages: Iterable[Language] = ("logql", "traceql", "promql"),
) -> list[QueryProblem]:
    """Substitute the variables, then parse; one problem per query that does not parse."""
    wanted = set(languages)
    selected: list[Query] = []
    problems: list[QueryProblem] = []
    expressions: list[tuple[Language, str]] = []
    for query in queries:
        if query.language not in wanted:
            continue
        try:
            expr = substitute_variables(query.expr, values)
        except ValueError as error:
            problems.append(QueryProblem(query, str(error)))
            continue
        selected.append(query)
        expressions.append((query.language, expr))
    for query, error in zip(selected, parse(expressions), strict=True):
        if error is not None:
            problems.append(QueryProblem(query, error))
    return problems


_PROMTOOL_GROUP = re.compile(r'group "q(\d+)"')
RECORD = "mlobs:dashboard_query"


def check_promql_with_promtool(
    queries: Sequence[Query], values: Mapping[str, str | Sequence[str]], promtool: Path
) -> list[QueryProblem]:
    """Run `promtool check rules` on the PromQL, one recording rule (in its own group) per query."""
    queries = [query for query in queries if query.language == "promql"]
    groups = [
        {"name": f"q{index}", "rules": [{"record": RECORD, "expr": substitute_variables(query.expr, values)}]}
        for index, query in enumerate(queries)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        rules = Path(tmp) / "dashboard-queries.yml"
        rules.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False), encoding="utf-8")
        result = subprocess.run(
            [str(promtool), "check", "rules", "--lint=none", str(rules)],
            capture_output=True,
            text=True,
            check=False,
        )
    if result.returncode == 0:
        return []
    output = result.stdout + result.stderr
    problems = [
        QueryProblem(queries[int(match.group(1))], line.strip())
        for line in output.splitlines()
        if (match := _PROMTOOL_GROUP.search(line))
    ]
    if not problems:
        raise QueryCheckError(f"promtool check rules failed without naming a query:\n{output.strip()}")
    return problems

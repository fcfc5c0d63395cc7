"""Prometheus, promtool, Alertmanager and amtool.

* Prometheus and Alertmanager are built inside a writable copy of the downloaded module: their
  go.mod may carry ``replace``/``exclude`` directives, which ``go install module/cmd@version``
  refuses. Version information is set as promu sets it, with the module's publication time as the
  build date, so two builds of one version are identical.
* Prometheus builds without the ``builtinassets`` tag: the module has no built web UI; the API works.
* Alertmanager >= 0.32 embeds ``ui/app/dist``, which the module lacks: a placeholder page is written
  before compiling (plain, gzip and brotli, as 0.34 serves HTML pre-compressed only).
* amtool: plain ``go install``; if refused, built in the module copy.
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import brotli

from mlobs.nativebuild.cache import app_version, go_module_version, prometheus_go_version
from mlobs.nativebuild.gobuild import Steps, revision

PROMETHEUS_MODULE = "github.com/prometheus/prometheus"
ALERTMANAGER_MODULE = "github.com/prometheus/alertmanager"
VERSION_PKG = "github.com/prometheus/common/version"

AM_UI_PLACEHOLDER = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Alertmanager</title></head>
<body><h1>Alertmanager</h1>
<p>The web UI is not built into this binary: it was compiled by mlobs from the Go module,
which does not ship the UI's JavaScript bundle. The HTTP API (<a href="api/v2/status">/api/v2/</a>)
works; use amtool or Grafana's Alertmanager data source.</p>
</body></html>
"""


def build_date(info: dict) -> str:
    """The module's publication time as promu writes a build date (``20261105-15:06:51``)."""
    published = info.get("Time", "")
    return re.sub(r"[^0-9T:]", "", published).replace("T", "-")[:17] if published else "unknown"


def prom_ldflags(version: str, info: dict) -> str:
    """ldflags as promu sets them, with a reproducible date (the module's publication time)."""
    return " ".join(
        [
            "-s",
            "-w",
            f"-X {VERSION_PKG}.Version={app_version(version)}",
            f"-X {VERSION_PKG}.Revision={revision(info)}",
            f"-X {VERSION_PKG}.Branch=HEAD",
            f"-X {VERSION_PKG}.BuildUser=mlobs@nativebuild",
            f"-X {VERSION_PKG}.BuildDate={build_date(info)}",
        ]
    )


def am_ui_placeholder_files(page: str = AM_UI_PLACEHOLDER) -> dict[str, bytes]:
    """The files of ``ui/app/dist``: the page plain and pre-compressed (0.34 serves HTML only from a
    pre-compressed variant, chosen by Accept-Encoding)."""
    raw = page.encode()
    return {
        "index.html": raw,
        "index.html.gz": gzip.compress(raw, mtime=0),
        "index.html.br": brotli.compress(raw),
    }


def build_prometheus_tool(steps: Steps, tool: str, version: str) -> Path:
    """``prometheus`` or ``promtool``."""
    # no `builtinassets` tag: the module has no built web UI; the API works without it.
    return steps.build_program(
        PROMETHEUS_MODULE,
        prometheus_go_version(version),
        f"cmd/{tool}",
        steps.work / "out" / tool,
        ldflags=lambda info: prom_ldflags(version, info),
        in_tree=True,
    )


def write_am_ui_placeholder(tree: Path) -> None:
    """Fill the module's empty ``ui/app/dist`` (Alertmanager >= 0.32 embeds it) with the placeholder."""
    dist = tree / "ui" / "app" / "dist"
    if (tree / "ui" / "app").is_dir() and not any(dist.glob("*")):
        dist.mkdir(parents=True, exist_ok=True)
        for name, data in am_ui_placeholder_files().items():
            (dist / name).write_bytes(data)


def build_alertmanager(steps: Steps, version: str) -> Path:
    return steps.build_program(
        ALERTMANAGER_MODULE,
        go_module_version("alertmanager", version),
        "cmd/alertmanager",
        steps.work / "out" / "alertmanager",
        ldflags=lambda info: prom_ldflags(version, info),
        prepare=write_am_ui_placeholder,
    )


def build_amtool(steps: Steps, version: str) -> Path:
    """Plain ``go install``; if refused, built in the module copy."""
    return steps.build_program(
        ALERTMANAGER_MODULE,
        go_module_version("alertmanager", version),
        "cmd/amtool",
        steps.work / "out" / "amtool",
        ldflags=lambda info: prom_ldflags(version, info),
    )

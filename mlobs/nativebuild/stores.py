"""The trace and log stores the native runtime runs: Jaeger v2 and VictoriaLogs (both Apache-2.0).

* Jaeger v2: module ``github.com/jaegertracing/jaeger``, program ``cmd/jaeger`` (a collector-based
  binary: OTLP in, query API out, configured by one YAML file). Each release is tagged twice, v1.x
  for Go and v2.y for the binary and image (:func:`~mlobs.nativebuild.cache.jaeger_go_version`);
  the build checks the pair against the module's CHANGELOG.md. Its go.mod has a ``replace``
  directive, so it is built in a copy of the module. Version information is set as its Makefile
  sets it (``internal/version``: commitSHA, latestVersion = the v2 tag, date). The module carries no
  built UI: the binary serves Jaeger's own placeholder page at ``/``; the API works.
* VictoriaLogs: module ``github.com/VictoriaMetrics/VictoriaLogs``, program ``app/victoria-logs``,
  plain ``go install``, with the tags and version string of its Makefile (``netgo,osusergo``,
  ``lib/buildinfo.Version=victoria-logs-<date>-tags-v<version>``). The module ships the built web
  UI (``app/vlselect/vmui``), served at ``/select/vmui/``.
"""

from __future__ import annotations

import re
from pathlib import Path

from mlobs.nativebuild.cache import app_version, go_module_version, jaeger_go_version
from mlobs.nativebuild.gobuild import STRIP, NativeBuildError, Steps, revision

JAEGER_MODULE = "github.com/jaegertracing/jaeger"
JAEGER_VERSION_PKG = f"{JAEGER_MODULE}/internal/version"

VICTORIALOGS_MODULE = "github.com/VictoriaMetrics/VictoriaLogs"
VICTORIALOGS_BINARY = "victoria-logs"
VM_BUILDINFO_PKG = "github.com/VictoriaMetrics/VictoriaMetrics/lib/buildinfo"

_JAEGER_RELEASE_HEADING = re.compile(r"^(v1\.\d+\.\d+\S*)\s*/\s*(v2\.\d+\.\d+\S*)", re.MULTILINE)


def jaeger_release_pairs(changelog: str) -> dict[str, str]:
    """``v1.x`` -> ``v2.y`` from the release headings of Jaeger's CHANGELOG.md
    (``v1.76.0 / v2.13.0 (2025-12-03)``)."""
    return dict(_JAEGER_RELEASE_HEADING.findall(changelog))


def check_jaeger_pair(changelog: str, version: str) -> None:
    """Raise NativeBuildError unless the changelog pairs ``jaeger_go_version(version)`` with ``version``."""
    go_version, want = jaeger_go_version(version), "v" + app_version(version)
    have = jaeger_release_pairs(changelog).get(go_version)
    if have != want:
        found = f"pairs {go_version} with {have}" if have else f"has no release heading for {go_version}"
        raise NativeBuildError(
            f"Jaeger {version}: the module's CHANGELOG.md {found}, not {want}; fix jaeger_go_version"
        )


def jaeger_ldflags(version: str, info: dict) -> str:
    """As Jaeger's Makefile sets them for the v2 binary, with the module's publication time as date."""
    return " ".join(
        [
            STRIP,
            f"-X {JAEGER_VERSION_PKG}.commitSHA={revision(info)}",
            f"-X {JAEGER_VERSION_PKG}.latestVersion=v{app_version(version)}",
            f"-X {JAEGER_VERSION_PKG}.date={info.get('Time') or 'unknown'}",
        ]
    )


def victorialogs_ldflags(version: str, info: dict) -> str:
    """As VictoriaLogs' Makefile sets them (``victoria-logs-<date>-<git describe>``), with the
    module's publication time; ``buildinfo.ShortVersion()`` finds ``v<version>`` in it."""
    published = info.get("Time") or ""
    date = re.sub(r"[^0-9T]", "", published).replace("T", "-")[:15] if published else "unknown"
    return f"{STRIP} -X {VM_BUILDINFO_PKG}.Version={VICTORIALOGS_BINARY}-{date}-tags-v{app_version(version)}"


def build_jaeger(steps: Steps, version: str) -> Path:
    go_version = jaeger_go_version(version)

    def check(tree: Path) -> None:
        check_jaeger_pair((tree / "CHANGELOG.md").read_text(errors="replace"), version)

    return steps.build_program(
        JAEGER_MODULE,
        go_version,
        "cmd/jaeger",
        steps.work / "out" / "jaeger",
        ldflags=lambda info: jaeger_ldflags(version, info),
        in_tree=True,
        prepare=check,
    )


def build_victorialogs(steps: Steps, version: str) -> Path:
    return steps.build_program(
        VICTORIALOGS_MODULE,
        go_module_version("victorialogs", version),
        "app/victoria-logs",
        steps.work / "out" / VICTORIALOGS_BINARY,
        tags=("netgo", "osusergo"),
        ldflags=lambda info: victorialogs_ldflags(version, info),
    )

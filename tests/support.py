"""Helpers shared by the test packages (importable as `support`; conftest modules are not)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / ".bin"
SHARED = ROOT.parent / "shared"


# binary -> the stack.yaml component whose version it is built at
COMPONENT_OF = {"otelcol-mlobs": "otel-collector", "prometheus": "prometheus", "promtool": "prometheus",
                "alertmanager": "alertmanager", "amtool": "alertmanager", "jaeger": "jaeger",
                "victoria-logs": "victorialogs"}


def binary(name: str) -> Path | None:
    """A native binary from .bin/, PATH or the `make native-deps` cache (at the pinned version), or None."""
    from mlobs import config, nativebuild

    candidates = [BIN / name]
    found = shutil.which(name)
    if found:
        candidates.append(Path(found))
    if name in COMPONENT_OF and name != "otelcol-mlobs":
        version = config.load(ROOT / "stack.yaml").version(COMPONENT_OF[name])
        candidates.append(nativebuild.cache_entry_dir(nativebuild.default_cache_dir(), name, version) / name)
    return next((p for p in candidates if p.is_file() and os.access(p, os.X_OK)), None)


def need_binary(name: str) -> Path:
    path = binary(name)
    if path is None:
        why = f"{name} is not in .bin/ or PATH: run `make native-deps`"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{why} (CI runs `make test`, which builds it: a skip here would hide a broken build)")
        pytest.skip(why)
    return path

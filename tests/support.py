"""Helpers shared by the test packages (importable as `support`; conftest modules are not)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / ".bin"
SHARED = ROOT.parent / "shared"


def binary(name: str) -> Path | None:
    """A native binary from .bin/ or PATH, or None."""
    local = BIN / name
    if local.exists() and os.access(local, os.X_OK):
        return local
    found = shutil.which(name)
    return Path(found) if found else None


def need_binary(name: str) -> Path:
    path = binary(name)
    if path is None:
        why = f"{name} is not in .bin/ or PATH: run `make native-deps`"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{why} (CI runs `make test`, which builds it: a skip here would hide a broken build)")
        pytest.skip(why)
    return path

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
        pytest.skip(f"{name} is not in .bin/ or PATH: run `make native-deps` (CI always does)")
    return path


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT

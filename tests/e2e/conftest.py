from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from harness import StackUnderTest  # noqa: E402

from mlobs import config, envfile, render  # noqa: E402


@pytest.fixture(scope="session")
def sut(request) -> StackUnderTest:
    """The stack under test: `MLOBS_E2E_EXISTING=1` uses the running stack of stack.yaml (docker or
    native, started by `make up`); otherwise the native stack this session starts on test ports."""
    root = render.ROOT
    if os.environ.get("MLOBS_E2E_EXISTING") == "1":
        stack = config.load(root / "stack.yaml")
        return StackUnderTest.existing(stack, root / ".env")
    running = request.getfixturevalue("native_stack")
    healthy = {n for n, h in running.health.items() if h.healthy}
    return StackUnderTest(running.stack, envfile.read(running.state.env_file), healthy, dict(running.plan.missing))

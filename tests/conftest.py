from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from support import BIN, ROOT, need_binary  # noqa: E402


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


STACK_FILE = ROOT / "stack.yaml"
TEST_OVERLAY = ROOT / "tests" / "stack.test.yaml"


class RunningStack:
    """A native stack started for the test session, on the shifted test ports."""

    def __init__(self, stack, state, plan, health) -> None:
        self.stack = stack
        self.state = state
        self.plan = plan
        self.health = health

    def url(self, key: str) -> str:
        from mlobs import render

        return "http://" + render.native_target(self.stack, render.BACKENDS).connect(key)

    def has(self, component: str) -> bool:
        return component in self.health and self.health[component].healthy


def _logs_of(files: list[Path], sick: set[str]) -> str:
    """The logs of a stack that did not come up: those of the sick programs first and longer
    (a CI log may cut a long message), then the tails of the others."""
    def tail(f: Path, n: int) -> str:
        return f"--- {f.name}\n" + "\n".join(f.read_text(errors="replace").splitlines()[-n:])

    first = [f for f in files if any(f.name.startswith(s) for s in sick)]
    rest = [f for f in files if f not in first]
    return "\n".join([tail(f, 80) for f in first] + [tail(f, 10) for f in rest])


@contextlib.contextmanager
def running_native_stack(stack, root: Path) -> Iterator[RunningStack]:
    """Start a real native stack of `stack` under `root`, yield it, stop it (also on failure)."""
    from mlobs.runtime import native

    for name in ("otelcol-mlobs", "prometheus"):
        need_binary(name)
    state = native.State(root=root / ".stack", bin_dir=BIN, env_file=root / ".env")
    try:
        plan, health = native.start(stack, state, timeout=180)
        sick = {n: f"{h.state} {h.detail}" for n, h in health.items() if not h.healthy}
        if sick:
            pytest.fail(f"native stack unhealthy: {sick}\n{_logs_of(native.log_files(state), set(sick))}")
        for name, why in plan.missing.items():
            print(f"native stack: {name} not running: {why}")
        yield RunningStack(stack, state, plan, health)
    finally:
        native.stop(state)


@pytest.fixture(scope="session")
def native_stack(tmp_path_factory: pytest.TempPathFactory):
    """Start the real native stack once per session (collector, Prometheus, Alertmanager, the trace
    and log stores, the sample service, plus Loki/Tempo/Grafana where their binaries exist)."""
    from mlobs import config

    stack = config.load(STACK_FILE, TEST_OVERLAY)
    with running_native_stack(stack, tmp_path_factory.mktemp("native-stack")) as running:
        yield running


@pytest.fixture(scope="session")
def start_native_stack():
    """`with start_native_stack(stack, root) as running:` a second stack of a test's own."""
    return running_native_stack

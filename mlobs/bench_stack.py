"""The bench's own native stack, and what /proc says about its processes.

``mlobs bench`` runs stack.yaml as it is, on its ports shifted by ``PORT_OFFSET`` (12000), in a
state folder of its own under the temp folder: it never clashes with a stack of ``make up``
(stack.yaml's ports), nor with the test stacks (stack.yaml + 10000, + 11000, + 20000), and every
port stays below 32768 (Linux' ephemeral range). ``running()`` starts it with ``native.start`` (the
code ``mlobs up`` runs), times the start-up, and always stops it.

CPU and memory come from /proc: a supervisord program's pid and its children, ``VmRSS`` of
``/proc/<pid>/status`` and ``utime + stime`` of ``/proc/<pid>/stat``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from mlobs import config, render
from mlobs.runtime import native

ROOT = render.ROOT
PORT_OFFSET = 12000
#: The offsets other stacks use: `make up` (0), the test stacks (tests/stack.test.yaml is +20000;
#: +10000 and +11000 are those of colleagues' suites).
OTHER_OFFSETS = (0, 10000, 11000, 20000)
PORT_LIMIT = 32768  # the start of Linux' ephemeral port range
CLK_TCK = os.sysconf("SC_CLK_TCK")


def shifted_ports(ports: Mapping[str, int], offset: int = PORT_OFFSET) -> dict[str, int]:
    return {key: port + offset for key, port in ports.items()}


def port_problems(ports: Mapping[str, int], offset: int = PORT_OFFSET,
                  others: tuple[int, ...] = OTHER_OFFSETS, limit: int = PORT_LIMIT) -> list[str]:
    """What is wrong with stack.yaml's ports shifted by ``offset``: a port at or above ``limit``, or
    one that another stack (stack.yaml's ports shifted by each of ``others``) also binds."""
    mine = shifted_ports(ports, offset)
    taken = {port + o: (key, o) for o in others for key, port in ports.items()}
    problems = [f"{key}: {port} is not below {limit}" for key, port in mine.items() if port >= limit]
    for key, port in mine.items():
        if port in taken:
            other_key, o = taken[port]
            problems.append(f"{key}: {port} is also {other_key} of the stack at +{o}")
    return problems


def stack_ports(stack: config.Stack) -> dict[str, int]:
    return {k: int(v) for k, v in stack.ports.model_dump().items()}


# ---- /proc


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name is in parentheses and may hold spaces: split after its closing one
    return text[text.rindex(")") + 2:].split()


def children_map() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields:
                out.setdefault(int(fields[1]), []).append(int(entry))
    return out


def process_tree(pid: int, children: dict[int, list[int]] | None = None) -> list[int]:
    """``pid`` and its descendants."""
    children = children_map() if children is None else children
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
                    break
    return total


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields:
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / CLK_TCK


def program_pids(state: native.State) -> dict[str, int]:
    """supervisord program -> its pid, for the programs that run."""
    out = {}
    for line in native.supervisorctl(state, "status").stdout.splitlines():
        parts = line.replace(",", " ").split()
        if len(parts) >= 4 and parts[1] == "RUNNING" and parts[2] == "pid" and parts[3].isdigit():
            out[parts[0]] = int(parts[3])
    return out


def memory_by_program(state: native.State) -> dict[str, int]:
    """RSS in bytes of each program with its children."""
    children = children_map()
    return {name: rss_bytes(process_tree(pid, children)) for name, pid in program_pids(state).items()}


class MemorySampler:
    """Samples the RSS of every program every ``interval`` seconds in a thread; keeps each one's peak.

    The programs and their process trees are read once, at the start (supervisorctl is a Python
    process: asking it every second would load the cores being measured)."""

    def __init__(self, state: native.State, interval: float = 1.0) -> None:
        children = children_map()
        self.trees = {name: process_tree(pid, children) for name, pid in program_pids(state).items()}
        self.interval = interval
        self.peak: dict[str, int] = {}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            for name, tree in self.trees.items():
                self.peak[name] = max(self.peak.get(name, 0), rss_bytes(tree))
            self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# ---- the stack


@dataclass
class BenchStack:
    stack: config.Stack
    state: native.State
    startup_seconds: float
    healthy_after: dict[str, float]  # program -> seconds from the start until it answered
    health: dict[str, native.Health]
    present: set[str] = field(default_factory=set)  # the components whose binary is here
    missing: dict[str, str] = field(default_factory=dict)

    def url(self, key: str) -> str:
        return f"http://127.0.0.1:{stack_ports(self.stack)[key]}"

    def endpoint(self, key: str) -> str:
        return f"127.0.0.1:{stack_ports(self.stack)[key]}"

    def pid(self, program: str) -> int | None:
        return program_pids(self.state).get(program)

    def target(self) -> render.Target:
        return render.native_target(self.stack, self.present & set(render.BACKENDS))

    def stores(self) -> dict[str, str]:
        t = render.native_target(self.stack, self.present & set(render.BACKENDS))
        return {"traces": t.store("traces") or "", "logs": t.store("logs") or ""}


def bench_overlay(stack_file: Path, offset: int = PORT_OFFSET) -> dict:
    base = config.load(stack_file)
    problems = port_problems(stack_ports(base), offset)
    if problems:
        raise RuntimeError("the bench stack's ports clash: " + "; ".join(problems))
    return {"ports": shifted_ports(stack_ports(base), offset)}


@contextlib.contextmanager
def running(stack_file: Path = ROOT / "stack.yaml", offset: int = PORT_OFFSET,
            timeout: float = 180) -> Iterator[BenchStack]:
    """Start the bench stack in a fresh temp state folder, yield it, stop it and delete the folder."""
    tmp = Path(tempfile.mkdtemp(prefix="mlobs-bench-stack-"))
    overlay = tmp / "bench-overlay.yaml"
    overlay.write_text(yaml.safe_dump(bench_overlay(stack_file, offset)))
    stack = config.load(stack_file, overlay)
    state = native.State(root=tmp / ".stack", bin_dir=ROOT / ".bin", env_file=tmp / ".env")
    healthy_after: dict[str, float] = {}
    started = time.monotonic()
    names: set[str] = set()

    def progress(pending: str, _left: float) -> None:
        waiting = {n for n in pending.split(", ") if n}
        if not names:
            names.update(native.program_states(state))
        for name in names - waiting:
            healthy_after.setdefault(name, round(time.monotonic() - started, 2))

    ok = False
    try:
        plan, health = native.start(stack, state, timeout=timeout, progress=progress)
        elapsed = time.monotonic() - started
        sick = {n: f"{h.state} {h.detail}" for n, h in health.items() if not h.healthy}
        if sick:
            raise RuntimeError(f"the bench stack is not healthy: {sick} (logs kept in {state.log_dir})")
        yield BenchStack(stack, state, elapsed, healthy_after, health, set(plan.present), dict(plan.missing))
        ok = True
    finally:
        native.stop(state)
        if ok:  # the components' logs outlive the stack, for a figure that needs explaining
            keep = Path(tempfile.gettempdir()) / "mlobs-bench-logs"
            shutil.rmtree(keep, ignore_errors=True)
            shutil.copytree(state.log_dir, keep, dirs_exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)

"""The native runtime: the same configs, rendered for 127.0.0.1, run under supervisord.

Every program comes from the component registry (mlobs/components.py). Binaries come from `.bin/`
(filled by `make native-deps`) or PATH. Loki, Tempo and Grafana run only where the user installed
their official release binaries; Jaeger and VictoriaLogs, built here, stand in for Tempo and Loki.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from mlobs import components as registry
from mlobs import envfile, exposure, render
from mlobs.config import Stack

ROOT = render.ROOT


@dataclass
class State:
    """Where one native stack keeps its rendered configs, data and logs."""

    root: Path = ROOT / ".stack"
    bin_dir: Path = ROOT / ".bin"
    env_file: Path = ROOT / ".env"

    @property
    def config_dir(self) -> Path:
        return self.root / "native"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_dir(self) -> Path:
        return self.root / "logs"

    @property
    def supervisor_conf(self) -> Path:
        return self.config_dir / "supervisord.conf"

    @property
    def socket(self) -> Path:
        return self.config_dir / "supervisor.sock"


@dataclass
class Plan:
    present: dict[str, Path] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)


def find_binary(names: tuple[str, ...], bin_dir: Path) -> Path | None:
    for name in names:
        local = bin_dir / name
        if local.exists() and os.access(local, os.X_OK):
            return local
        found = shutil.which(name)
        if found:
            return Path(found)
    return None


def plan(state: State) -> Plan:
    """Which components of the registry have their binary here."""
    p = Plan()
    for c in registry.REGISTRY:
        if not c.binaries:
            continue
        path = find_binary(c.binaries, state.bin_dir)
        if path:
            p.present[c.name] = path
        else:
            p.missing[c.name] = f"no {' or '.join(c.binaries)} in {state.bin_dir} or PATH: {c.how_to_get}"
    return p


def render_native(stack: Stack, state: State, present: set[str]) -> render.Target:
    target = render.native_target(stack, present & set(render.BACKENDS), state.config_dir, state.data_dir)
    files = render.render(target)
    render.write(files, state.config_dir)
    return target


def running_components(stack: Stack, p: Plan) -> tuple[registry.Component, ...]:
    """The registry's components this native stack runs: those whose binary is here (the store of
    a signal falls back to the other one), plus the Python services."""
    return tuple(c for c in registry.selected(stack, p.present) if c.python_module or c.name in p.present)


def programs(stack: Stack, state: State, p: Plan, target: render.Target, secrets: dict[str, str]) -> dict[str, dict]:
    """supervisord programs: name -> {command, environment, directory}, from the registry."""
    place = registry.Place(target, secrets, state.log_dir)
    progs: dict[str, dict] = {}
    for c in running_components(stack, p):
        prog = registry.native_program(c, place, p.present.get(c.name))
        progs[registry.program_name(c, stack)] = {"command": prog.command, "environment": prog.environment,
                                                  "directory": prog.directory}
    return progs


def _quote(arg: str) -> str:
    if not arg or any(ch in arg for ch in " \"'%"):
        return '"' + arg.replace("%", "%%").replace('"', '\\"') + '"'
    return arg


def supervisor_conf(state: State, progs: dict[str, dict]) -> str:
    lines = [
        "; Written by `mlobs up` (native runtime). Regenerated on every start.",
        "[unix_http_server]",
        f"file={state.socket}",
        "chmod=0700",
        "",
        "[supervisord]",
        f"logfile={state.log_dir / 'supervisord.log'}",
        f"pidfile={state.config_dir / 'supervisord.pid'}",
        f"directory={ROOT}",
        "",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
        "",
        "[supervisorctl]",
        f"serverurl=unix://{state.socket}",
    ]
    for name, prog in progs.items():
        env = prog.get("environment", {})
        lines += [
            "",
            f"[program:{name}]",
            "command=" + " ".join(_quote(a) for a in prog["command"]),
            f"directory={prog.get('directory') or state.data_dir}",
            # A component that dies is restarted a few times, then left FATAL for status to report.
            "autorestart=unexpected",
            "startsecs=2",
            "startretries=3",
            "stopasgroup=true",
            "killasgroup=true",
            "stopwaitsecs=20",  # the services flush their last telemetry on SIGTERM
            "redirect_stderr=true",
            f"stdout_logfile={state.log_dir / (name + '.log')}",
            "stdout_logfile_maxbytes=20MB",
            "stdout_logfile_backups=2",
        ]
        if env:
            lines.append("environment=" + ",".join(f'{k}="{_env_escape(v)}"' for k, v in env.items()))
    return "\n".join(lines) + "\n"


def _env_escape(v: str) -> str:
    return v.replace("%", "%%").replace('"', '\\"')


def supervisorctl(state: State, *args: str, capture: bool = True) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "supervisorctl"
    return subprocess.run([str(exe), "-c", str(state.supervisor_conf), *args], capture_output=capture, text=True)


def supervisord_running(state: State) -> bool:
    if not state.socket.exists() or not state.supervisor_conf.exists():
        return False
    r = supervisorctl(state, "pid")
    return r.returncode == 0 and r.stdout.strip().isdigit()


@dataclass
class Health:
    name: str
    url: str
    state: str  # supervisor state
    healthy: bool
    detail: str = ""


def health_urls(stack: Stack, names: list[str]) -> dict[str, str]:
    """Health endpoint of each named program: the registry's components and stack.yaml's services."""
    target = render.native_target(stack, render.BACKENDS)
    urls = {}
    for c in registry.REGISTRY:
        name = registry.program_name(c, stack)
        if name in names:
            urls[name] = registry.health_url(target, c, stack)
    for s in stack.services:
        if s.name in names and not s.sample:
            urls[s.name] = s.health_url or ""
    return urls


def probe(url: str, timeout: float = 2.0) -> tuple[bool, str]:
    try:
        r = httpx.get(url, timeout=timeout)
    except httpx.HTTPError as e:
        return False, type(e).__name__
    return r.is_success, f"HTTP {r.status_code}"


def program_states(state: State) -> dict[str, str]:
    r = supervisorctl(state, "status")
    states = {}
    for line in r.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2:
            states[parts[0]] = parts[1]
    return states


def check(stack: Stack, state: State) -> list[Health]:
    states = program_states(state) if supervisord_running(state) else {}
    urls = health_urls(stack, list(states))
    out = []
    for name, st in states.items():
        ok, detail = probe(urls[name]) if st == "RUNNING" and name in urls else (False, "")
        out.append(Health(name, urls.get(name, ""), st, ok, detail))
    return out


def wait_healthy(stack: Stack, state: State, names: list[str], timeout: float,
                 progress: Callable[[str, float], None] | None = None) -> dict[str, Health]:
    """Poll every health endpoint until all answer, a program dies, or the timeout passes."""
    urls = health_urls(stack, names)
    deadline = time.monotonic() + timeout
    result: dict[str, Health] = {}
    pending = set(names)
    while pending and time.monotonic() < deadline:
        states = program_states(state)
        for name in sorted(pending):
            st = states.get(name, "UNKNOWN")
            # BACKOFF is not final: supervisord retries (startretries) before it gives up (FATAL).
            if st in ("FATAL", "EXITED", "STOPPED"):
                result[name] = Health(name, urls[name], st, False, "died: see `make logs`")
                pending.discard(name)
                continue
            ok, detail = probe(urls[name])
            if ok:
                result[name] = Health(name, urls[name], st, True, detail)
                pending.discard(name)
        if progress:
            progress(", ".join(sorted(pending)), deadline - time.monotonic())
        if pending:
            time.sleep(1)
    for name in pending:
        result[name] = Health(name, urls[name], program_states(state).get(name, "UNKNOWN"), False,
                              f"no healthy answer within {timeout:.0f}s")
    return result


def start(stack: Stack, state: State, timeout: float = 120,
          progress: Callable[[str, float], None] | None = None) -> tuple[Plan, dict[str, Health]]:
    """Render, (re)start supervisord with every present component, wait for health."""
    p = plan(state)
    absent_required = [c.name for c in registry.REGISTRY if c.required and c.name not in p.present]
    if absent_required:
        raise RuntimeError(
            "cannot start the native stack without " + ", ".join(absent_required) + ": "
            + "; ".join(p.missing[n] for n in absent_required))
    for d in (state.config_dir, state.data_dir, state.log_dir):
        d.mkdir(parents=True, exist_ok=True)
    secrets, _ = envfile.ensure(state.env_file)
    if exposure.enabled(stack):
        exposure.ensure(stack, state.root / "tls")
    target = render_native(stack, state, set(p.present))
    progs = programs(stack, state, p, target, secrets)
    state.supervisor_conf.write_text(supervisor_conf(state, progs))
    if supervisord_running(state):
        # A second `up`: pick up changed programs, restart what changed, start what stopped.
        supervisorctl(state, "reread")
        supervisorctl(state, "update")
        supervisorctl(state, "start", "all")
        # A program whose command line did not change is not restarted: have the components with
        # a reload endpoint read their re-rendered files (rules of a service just added, say).
        reload_configs(target, set(p.present))
    else:
        exe = Path(sys.executable).parent / "supervisord"
        r = subprocess.run([str(exe), "-c", str(state.supervisor_conf)], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"supervisord did not start: {r.stderr.strip() or r.stdout.strip()}")
        for _ in range(50):
            if supervisord_running(state):
                break
            time.sleep(0.2)
    health = wait_healthy(stack, state, list(progs), timeout, progress)
    return p, health


#: The components that re-read their configuration on POST /-/reload (Prometheus with
#: --web.enable-lifecycle; Alertmanager always).
RELOADABLE = ("prometheus", "alertmanager")


def reload_configs(target: render.Target, present: set[str]) -> dict[str, str]:
    """POST /-/reload to each running reloadable component; component -> what it answered."""
    answers = {}
    for name in RELOADABLE:
        if name not in present:
            continue
        try:
            r = httpx.post(f"http://{target.connect(name)}/-/reload", timeout=30)
            answers[name] = "reloaded" if r.is_success else f"refused the reload: {r.status_code} {r.text.strip()}"
        except httpx.HTTPError as e:
            answers[name] = f"no answer to the reload ({e})"
    return answers


def stop(state: State) -> bool:
    """Stop every program and supervisord; data stays. Returns whether anything was running."""
    if not supervisord_running(state):
        return False
    supervisorctl(state, "shutdown")
    for _ in range(100):
        if not supervisord_running(state):
            break
        time.sleep(0.2)
    return True


def clean(state: State) -> None:
    stop(state)
    for d in (state.data_dir, state.log_dir, state.config_dir):
        shutil.rmtree(d, ignore_errors=True)


def log_files(state: State) -> list[Path]:
    return sorted(state.log_dir.glob("*.log"))

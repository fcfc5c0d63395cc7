"""The docker runtime: docker compose with the rendered compose/docker-compose.yml."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from mlobs.render import ROOT

COMPOSE_FILE = ROOT / "compose" / "docker-compose.yml"


def engine_answers(timeout: float = 5.0) -> tuple[bool, str]:
    """Is a Docker engine reachable? Returns the answer and why not."""
    if not shutil.which("docker"):
        return False, "the docker CLI is not installed"
    try:
        r = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True,
                           text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, f"`docker info` did not answer within {timeout:.0f}s"
    if r.returncode != 0:
        first = (r.stderr.strip().splitlines() or ["no engine"])[0]
        return False, f"no Docker engine answers ({first})"
    return True, f"Docker engine {r.stdout.strip()}"


def compose_command(*args: str, env_file: Path = ROOT / ".env") -> list[str]:
    """`docker compose` on the rendered compose file, with the stack's .env."""
    return ["docker", "compose", "--project-directory", str(ROOT / "compose"), "-f", str(COMPOSE_FILE),
            "--env-file", str(env_file), *args]


def compose(*args: str, env_file: Path = ROOT / ".env") -> int:
    return subprocess.call(compose_command(*args, env_file=env_file))


def compose_output(*args: str, env_file: Path = ROOT / ".env", timeout: float = 120) -> str:
    """What `docker compose <args>` prints (stdout and stderr); a failure raises with its output."""
    r = subprocess.run(compose_command(*args, env_file=env_file), capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"docker compose {' '.join(args)}: exit code {r.returncode}: {r.stderr.strip()[-500:]}")
    return r.stdout + r.stderr


def up() -> int:
    return compose("up", "--build", "--detach", "--wait", "--wait-timeout", "300")


def down(volumes: bool = False) -> int:
    return compose("down", *(["--volumes"] if volumes else []))


def status() -> int:
    return compose("ps")


def logs(service: str | None = None, follow: bool = False) -> int:
    return compose("logs", "--tail", "200", *(["--follow"] if follow else []), *([service] if service else []))

"""Running the build steps: one log per build, one ``go build`` helper, module copies.

Two ways to build a Go program from the proxy, both through :func:`go_build_args`:

* ``go install module/cmd/x@version`` where the module's go.mod allows it (no ``replace`` or
  ``exclude`` directives);
* otherwise ``go build -o OUT ./cmd/x`` inside a writable copy of the downloaded module
  (``go mod download -json`` gives its folder) with ``GOFLAGS=-mod=mod`` and ``GOWORK=off``
  (the Prometheus module ships a go.work, in which ``-mod=mod`` is refused).

Every command's output is appended to the build's log; a failure raises :class:`NativeBuildError`
naming the step and the log, with its last lines.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from rich.console import Console
from rich.markup import escape

console = Console(stderr=True, highlight=False, soft_wrap=True)

#: The tags of every program build: the pure-Go resolver, so binaries do not depend on the C library.
DEFAULT_TAGS: tuple[str, ...] = ("netgo",)
#: Strip the symbol table and DWARF: the binaries are about a third smaller.
STRIP = "-s -w"


class NativeBuildError(RuntimeError):
    """A build step failed; the message names the step and the log file."""


def fmt_secs(secs: float) -> str:
    return f"{secs:.1f}s" if secs < 60 else f"{int(secs // 60)}m{secs % 60:04.1f}s"


def _tail(path: Path, n: int = 30) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-n:])


def go_build_args(
    target: str,
    *,
    output: Path | None = None,
    tags: Sequence[str] = DEFAULT_TAGS,
    ldflags: str = STRIP,
) -> list[str]:
    """The command line of every Go build here.

    With ``output``: ``go build -trimpath [-tags T] [-ldflags=L] -o OUTPUT TARGET``, TARGET being a
    package of the current module (``./cmd/prometheus``). Without: ``go install ... TARGET``, TARGET
    being ``package@version``; the binary lands in ``$GOBIN``.
    """
    args = ["go", "build" if output is not None else "install", "-trimpath"]
    if tags:
        args += ["-tags", ",".join(tags)]
    if ldflags:
        args.append(f"-ldflags={ldflags}")
    if output is not None:
        args += ["-o", str(output)]
    return [*args, target]


def go_env() -> dict[str, str]:
    """The environment of every build: the caller's (GOMODCACHE, GOCACHE, GOPROXY...) and no cgo."""
    if not shutil.which("go"):
        raise NativeBuildError("the Go toolchain ('go') is not on PATH; install Go to build native binaries")
    return {**os.environ, "CGO_ENABLED": "0"}


def tree_env(env: dict[str, str]) -> dict[str, str]:
    """Overrides for building inside a module copy: its own go.mod, with its replace and exclude
    directives, resolved and updated as needed (``-mod=mod``), no workspace."""
    return {"GOFLAGS": " ".join([*env.get("GOFLAGS", "").split(), "-mod=mod"]), "GOWORK": "off"}


def go_version() -> str:
    try:
        return subprocess.run(["go", "env", "GOVERSION"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def writable_copy(src: Path, dst: Path) -> None:
    """Copy a (read-only) module cache folder and make the copy writable."""
    shutil.copytree(src, dst, symlinks=True)
    for root, dirs, files in os.walk(dst):
        for name in [*dirs, *files]:
            p = Path(root, name)
            if not p.is_symlink():
                p.chmod(p.stat().st_mode | 0o200)
    dst.chmod(dst.stat().st_mode | 0o200)


def rmtree(path: Path) -> None:
    def onerror(func, p, _exc):  # read-only dirs from the module cache
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(p), 0o700)
            os.chmod(p, 0o700)
            func(p)

    if path.exists():
        shutil.rmtree(path, onerror=onerror)


def read_info(download: dict) -> dict:
    """The proxy's ``.info`` of a downloaded module: ``Version``, ``Time`` and, where the proxy
    records it, ``Origin.Hash`` (the commit)."""
    info_path = download.get("Info")
    info: dict = {}
    if info_path and Path(info_path).exists():
        with contextlib.suppress(ValueError):
            info = json.loads(Path(info_path).read_text())
    info.setdefault("Version", download.get("Version"))
    return info


def revision(info: dict) -> str:
    """The commit of a downloaded module, or its version where the proxy does not record it."""
    return (info.get("Origin") or {}).get("Hash") or info.get("Version") or "unknown"


class Steps:
    """The steps of one build, logged to one file, run in a scratch folder (``work``) where no go.mod
    or go.work of the caller's tree applies."""

    def __init__(self, log: Path, env: dict[str, str], work: Path):
        self.log = log
        self.env = env
        self.work = work
        self.notes: list[str] = []
        log.parent.mkdir(parents=True, exist_ok=True)

    def note(self, msg: str) -> None:
        """Something the user should know about this build: printed, and kept in BUILD-INFO.json."""
        self.notes.append(msg)
        console.print(f"[yellow]![/] {escape(msg)}")

    def run(
        self,
        step: str,
        cmd: list[str],
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        capture: bool = False,
        check: bool = True,
    ) -> str:
        """Run one command, appending its output to the log; raise NativeBuildError on failure."""
        cwd = cwd or self.work
        full_env = {**self.env, **(env or {})}
        with self.log.open("a") as fh:
            fh.write(f"\n$ (cd {cwd}) {' '.join(cmd)}\n")
            fh.flush()
            start = time.monotonic()
            try:
                proc = subprocess.Popen(
                    cmd,
                    cwd=cwd,
                    env=full_env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE if capture else fh,
                    stderr=fh,
                    text=True,
                )
            except OSError as exc:
                fh.write(f"cannot start: {exc}\n")
                raise NativeBuildError(f"{step}: cannot run {cmd[0]}: {exc} (log: {self.log})") from exc
            out, _ = proc.communicate()
            if capture and out:
                fh.write(out if out.endswith("\n") else out + "\n")
            fh.write(f"# exit {proc.returncode} after {fmt_secs(time.monotonic() - start)}\n")
        if proc.returncode != 0 and check:
            raise NativeBuildError(
                f"{step} failed (exit {proc.returncode}); log: {self.log}\n"
                f"--- last 30 lines of {self.log} ---\n{_tail(self.log)}"
            )
        return out or ""

    def log_line(self, text: str) -> None:
        with self.log.open("a") as fh:
            fh.write(f"# {text}\n")

    def probe(self, step: str, module: str, version: str) -> dict:
        """``go mod download -json module@version``: its JSON, with ``Error`` where the proxy refused it."""
        out = self.run(step, ["go", "mod", "download", "-json", f"{module}@{version}"], capture=True, check=False)
        try:
            return json.loads(out)
        except ValueError:  # no answer at all: the caller's next step says what went wrong
            return {}

    def download(self, module: str, version: str) -> dict:
        step = f"go mod download {module}@{version}"
        info = self.probe(step, module, version)
        if info.get("Error") or not info.get("Dir"):
            raise NativeBuildError(f"{step}: {info.get('Error', 'no Dir in its output')} (log: {self.log})")
        return info

    def go_build(
        self,
        step: str,
        target: str,
        out: Path,
        *,
        tree: Path | None = None,
        tags: Sequence[str] = DEFAULT_TAGS,
        ldflags: str = STRIP,
    ) -> Path:
        """Build one program into ``out``: ``go build`` of ``target`` (``./cmd/x``) inside ``tree``, a
        module copy, or without one ``go install target`` (``package@version``)."""
        out.parent.mkdir(parents=True, exist_ok=True)
        if tree is not None:
            self.run(
                step, go_build_args(target, output=out, tags=tags, ldflags=ldflags), cwd=tree, env=tree_env(self.env)
            )
            return out
        gobin = self.work / "gobin"
        self.run(step, go_build_args(target, tags=tags, ldflags=ldflags), env={"GOBIN": str(gobin)})
        installed = gobin / target.split("@", 1)[0].rstrip("/").rsplit("/", 1)[-1]
        if installed != out:
            installed.replace(out)
        return out

    def build_program(
        self,
        module: str,
        go_version: str,
        program: str,
        out: Path,
        *,
        ldflags: Callable[[dict], str],
        tags: Sequence[str] = DEFAULT_TAGS,
        in_tree: bool = False,
        prepare: Callable[[Path], None] | None = None,
    ) -> Path:
        """Build ``module/program`` at ``go_version`` into ``out``.

        ``go install`` where the module's go.mod allows it; with ``in_tree`` (a go.mod with
        ``replace`` or ``exclude`` directives), or when ``go install`` fails, ``go build`` inside a
        writable copy of the module (``<work>/src``), after ``prepare(tree)``. ``ldflags`` gets the
        proxy's info of the module (see :func:`read_info`).
        """
        dl = self.download(module, go_version)
        info = read_info(dl)
        if not in_tree and prepare is None:
            pkg = f"{module}/{program}@{go_version}"
            try:
                return self.go_build(f"go install {pkg}", pkg, out, tags=tags, ldflags=ldflags(info))
            except NativeBuildError as exc:
                self.log_line(f"go install failed ({str(exc).splitlines()[0]}); building in a copy of the module")
        tree = self.work / "src"
        if not tree.exists():
            writable_copy(Path(dl["Dir"]), tree)
        if prepare is not None:
            prepare(tree)
        return self.go_build(
            f"go build {program} {go_version}", f"./{program}", out, tree=tree, tags=tags, ldflags=ldflags(info)
        )

"""Which binaries there are, and ``ensure_binaries``: take each from the cache or build it there."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from mlobs.nativebuild import collector, prometheus, stores, telemetrygen
from mlobs.nativebuild.cache import app_version, cache_entry_dir, default_cache_dir, link, lock, log_path
from mlobs.nativebuild.gobuild import NativeBuildError, Steps, console, fmt_secs, go_env, go_version, rmtree


@dataclass(frozen=True)
class Context:
    """What a builder may need besides its version."""

    steps: Steps
    manifest: Path
    cache_dir: Path


@dataclass(frozen=True)
class Tool:
    binary: str  # the file name in the cache entry and in .bin/
    key: str  # the entry of ``versions`` that gives its version
    build: Callable[[Context, str], Path]  # (context, app version) -> the built binary
    smoke: tuple[str, ...] = ("--version",)  # args of the run that checks the built binary starts
    uses_manifest: bool = False  # the cache entry carries the manifest's hash


#: Every binary, in build order.
TOOLS: tuple[Tool, ...] = (
    Tool(
        collector.OTELCOL_BINARY,
        "otelcol",
        lambda c, v: collector.build_otelcol(c.steps, v, c.manifest, c.cache_dir),
        uses_manifest=True,
    ),
    Tool("prometheus", "prometheus", lambda c, v: prometheus.build_prometheus_tool(c.steps, "prometheus", v)),
    Tool("promtool", "prometheus", lambda c, v: prometheus.build_prometheus_tool(c.steps, "promtool", v)),
    Tool("alertmanager", "alertmanager", lambda c, v: prometheus.build_alertmanager(c.steps, v)),
    Tool("amtool", "alertmanager", lambda c, v: prometheus.build_amtool(c.steps, v)),
    Tool("jaeger", "jaeger", lambda c, v: stores.build_jaeger(c.steps, v), smoke=("version",)),
    Tool(
        stores.VICTORIALOGS_BINARY,
        "victorialogs",
        lambda c, v: stores.build_victorialogs(c.steps, v),
        smoke=("-version",),
    ),
)
#: Binaries the stack does not run, built only when asked for by name or version key
#: (`make bench-deps`, `mlobs bench`): not by `make native-deps`.
BENCH_TOOLS: tuple[Tool, ...] = (
    Tool(
        telemetrygen.TELEMETRYGEN_BINARY,
        "telemetrygen",
        lambda c, v: telemetrygen.build_telemetrygen(c.steps, v),
        smoke=("--help",),
    ),
)
ALL_TOOLS: tuple[Tool, ...] = TOOLS + BENCH_TOOLS
BY_BINARY: dict[str, Tool] = {t.binary: t for t in ALL_TOOLS}
KEYS: tuple[str, ...] = tuple(dict.fromkeys(t.key for t in ALL_TOOLS))


def select_tools(only: Sequence[str] | None, versions: Mapping[str, str] | None = None) -> list[str]:
    """Binary names to ensure, in build order.

    ``only`` takes binary names or version keys: a binary name is that binary (``prometheus`` is
    prometheus only), a key that is no binary name is its binaries (``otelcol`` = otelcol-mlobs,
    ``victorialogs`` = victoria-logs). Without ``only``: every binary whose key is in ``versions``
    (every binary of the stack, ``TOOLS``, when ``versions`` is None; ``BENCH_TOOLS`` only by key).
    """
    if not only:
        if versions is None:
            return [t.binary for t in TOOLS]
        return [t.binary for t in ALL_TOOLS if t.key in versions]
    wanted: set[str] = set()
    for name in only:
        if name in BY_BINARY:
            wanted.add(name)
        elif name in KEYS:
            wanted.update(t.binary for t in TOOLS if t.key == name)
        else:
            known = ", ".join(dict.fromkeys([*KEYS, *BY_BINARY]))
            raise ValueError(f"unknown binary {name!r}; known: {known}")
    return [t.binary for t in ALL_TOOLS if t.binary in wanted]


def _progress(text: str) -> contextlib.AbstractContextManager:
    """A spinner on a terminal; one plain line elsewhere (CI logs, pipes)."""
    if console.is_terminal:
        return console.status(text)
    console.print(f"… {text}")
    return contextlib.nullcontext()


def ensure_binaries(
    versions: Mapping[str, str],
    bin_dir: Path,
    cache_dir: Path | None = None,
    only: Sequence[str] | None = None,
    manifest: Path | None = None,
) -> dict[str, Path]:
    """Build (or reuse from the cache) the native binaries and symlink them into ``bin_dir``.

    ``versions`` holds app versions by key: ``{"otelcol": "0.165.0", "prometheus": "3.16.0",
    "alertmanager": "0.34.0", "jaeger": "2.13.0", "victorialogs": "1.52.1"}``; a key that is absent
    is not built (unless ``only`` names it: then that is an error). Returns binary name -> its path
    in ``bin_dir``. Raises NativeBuildError naming each failed step and its log, after trying the
    others.
    """
    bin_dir = Path(bin_dir).resolve()
    cache_dir = Path(cache_dir).expanduser().resolve() if cache_dir else default_cache_dir()
    manifest = Path(manifest or collector.DEFAULT_MANIFEST).resolve()
    unknown = sorted(set(versions) - set(KEYS))
    if unknown:
        raise ValueError(f"unknown version key(s) {', '.join(unknown)}; known: {', '.join(KEYS)}")
    tools = [BY_BINARY[b] for b in select_tools(only, versions)]
    missing = sorted({t.key for t in tools} - set(versions))
    if missing:
        raise ValueError(f"no version given for {', '.join(missing)}")

    digest = collector.manifest_hash(manifest) if any(t.uses_manifest for t in tools) else None
    result: dict[str, Path] = {}
    total_start = time.monotonic()
    built_any = False
    failures: list[NativeBuildError] = []
    for tool in tools:
        version = app_version(versions[tool.key])
        entry = cache_entry_dir(cache_dir, tool.binary, version, digest if tool.uses_manifest else None)
        cached = entry / tool.binary
        label = f"{tool.binary} {version}" + (f" (manifest {digest})" if tool.uses_manifest else "")
        with lock(cache_dir, entry):
            if cached.is_file() and os.access(cached, os.X_OK):
                console.print(f"[green]✓[/] {label}: cached [dim]{cached}[/]")
            else:
                try:
                    _build_one(tool, version, manifest, cache_dir, entry, label)
                except NativeBuildError as exc:  # go on with the others, fail at the end
                    failures.append(exc)
                    continue
                built_any = True
        link(cached, bin_dir / tool.binary)
        result[tool.binary] = bin_dir / tool.binary
    if built_any:
        console.print(
            f"[bold]native binaries ready[/] in {fmt_secs(time.monotonic() - total_start)} "
            f"[dim](linked into {bin_dir})[/]"
        )
    if failures:
        raise NativeBuildError("\n\n".join(str(f) for f in failures))
    return result


def _build_one(tool: Tool, version: str, manifest: Path, cache_dir: Path, entry: Path, label: str) -> None:
    env = go_env()
    log = log_path(cache_dir, entry)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(f"# mlobs nativebuild: building {label} at {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n")
    (cache_dir / "tmp").mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"{entry.name}-", dir=cache_dir / "tmp"))
    steps = Steps(log, env, work)
    start = time.monotonic()
    try:
        with _progress(f"building {label} [dim](log: {log})[/]"):
            built = tool.build(Context(steps, manifest, cache_dir), version)
            steps.run(f"{tool.binary} {' '.join(tool.smoke)} (smoke test)", [str(built), *tool.smoke])
        staging = work / "entry"
        staging.mkdir()
        shutil.copy2(built, staging / tool.binary)
        (staging / tool.binary).chmod(0o755)
        build_info = {
            "tool": tool.binary,
            "version": version,
            "go": go_version(),
            "log": str(log),
            "manifest": str(manifest) if tool.uses_manifest else None,
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "build_seconds": round(time.monotonic() - start, 1),
            "notes": steps.notes,
        }
        (staging / "BUILD-INFO.json").write_text(json.dumps(build_info, indent=2) + "\n")
        entry.parent.mkdir(parents=True, exist_ok=True)
        rmtree(entry)
        staging.rename(entry)
    except NativeBuildError:
        console.print(f"[red]✗[/] {label}: failed after {fmt_secs(time.monotonic() - start)} [dim](log: {log})[/]")
        raise
    finally:
        rmtree(work)
    size = (entry / tool.binary).stat().st_size / 2**20
    console.print(
        f"[green]✓[/] {label}: built in {fmt_secs(time.monotonic() - start)} ({size:.1f} MiB) "
        f"[dim]{entry / tool.binary}[/]"
    )

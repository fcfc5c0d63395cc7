"""Versions, the cache layout and its locks.

Every binary is cached under ``<cache>/bin/<tool>-<version>[-<manifest hash>]/<tool>`` and linked
into ``.bin/``. The cache directory is ``$MLOBS_CACHE_DIR``, else ``${XDG_CACHE_HOME:-~/.cache}/mlobs``;
build logs go to ``<cache>/logs/``, one per cache entry.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

_SEMVER = re.compile(r"^v?(\d+)\.(\d+)\.(\d+)(-[0-9A-Za-z.-]+)?$")

#: Jaeger tags each release twice: v2.Y.Z (the v2 binary, the image tag) is v1.(Y + 63).Z for Go
#: (v2.0.0 was v1.63.0; v2.13.0 is v1.76.0, both in the module's CHANGELOG.md).
JAEGER_V1_MINOR_OFFSET = 63


def split_version(version: str) -> tuple[int, int, int, str]:
    """``v3.16.0-rc.0`` -> ``(3, 16, 0, "-rc.0")``; ValueError for anything but semver."""
    m = _SEMVER.match(version.strip())
    if not m:
        raise ValueError(f"not a semantic version: {version!r}")
    return int(m.group(1)), int(m.group(2)), int(m.group(3)), m.group(4) or ""


def app_version(version: str) -> str:
    """``v0.34.0`` or ``0.34.0`` -> ``0.34.0`` (checked to be semver)."""
    split_version(version)
    return version.strip().removeprefix("v")


def prometheus_go_version(version: str) -> str:
    """The Go module version of a Prometheus release.

    Prometheus 3.X.Y is tagged ``v0.3XX.Y`` for Go (3.16.0 -> v0.316.0, 3.5.1 -> v0.305.1);
    2.X.Y was ``v0.X.Y``.
    """
    major, minor, patch, pre = split_version(version)
    if major < 2:
        raise ValueError(f"unsupported Prometheus version {version!r}")
    if major == 2:
        return f"v0.{minor}.{patch}{pre}"
    if minor >= 100:
        raise ValueError(f"Prometheus minor version too large for the Go tag scheme: {version!r}")
    return f"v0.{major * 100 + minor}.{patch}{pre}"


def jaeger_go_version(version: str) -> str:
    """The Go module version of a Jaeger v2 release: 2.13.0 -> v1.76.0 (see JAEGER_V1_MINOR_OFFSET)."""
    major, minor, patch, pre = split_version(version)
    if major != 2:
        raise ValueError(f"unsupported Jaeger version {version!r}: give the v2 release (the image tag), e.g. 2.13.0")
    return f"v1.{minor + JAEGER_V1_MINOR_OFFSET}.{patch}{pre}"


def go_module_version(key: str, version: str) -> str:
    """Go module version for an entry of ``versions``
    (``otelcol``, ``prometheus``, ``alertmanager``, ``jaeger``, ``victorialogs``, ``telemetrygen``)."""
    if key == "prometheus":
        return prometheus_go_version(version)
    if key == "jaeger":
        return jaeger_go_version(version)
    if key in ("otelcol", "alertmanager", "victorialogs", "telemetrygen"):
        return "v" + app_version(version)
    raise ValueError(f"unknown component {key!r}")


def default_cache_dir(env: Mapping[str, str] | None = None) -> Path:
    """``$MLOBS_CACHE_DIR``, else ``${XDG_CACHE_HOME:-~/.cache}/mlobs``."""
    env = os.environ if env is None else env
    if env.get("MLOBS_CACHE_DIR"):
        return Path(env["MLOBS_CACHE_DIR"]).expanduser()
    xdg = env.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path(env.get("HOME") or Path.home()) / ".cache"
    return base / "mlobs"


def cache_entry_name(tool: str, version: str, manifest_digest: str | None = None) -> str:
    """``prometheus-3.16.0``, ``otelcol-mlobs-0.165.0-1a2b3c4d5e``."""
    name = f"{tool}-{app_version(version)}"
    return f"{name}-{manifest_digest}" if manifest_digest else name


def cache_entry_dir(cache_dir: Path, tool: str, version: str, manifest_digest: str | None = None) -> Path:
    return Path(cache_dir) / "bin" / cache_entry_name(tool, version, manifest_digest)


def log_path(cache_dir: Path, entry: Path) -> Path:
    return Path(cache_dir) / "logs" / f"{entry.name}.log"


@contextlib.contextmanager
def lock(cache_dir: Path, entry: Path) -> Iterator[None]:
    """An exclusive lock per cache entry: two builds of one entry never run at once."""
    path = Path(cache_dir) / "locks" / f"{entry.name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def link(target: Path, link_path: Path) -> None:
    """Point ``link_path`` at ``target``, replacing what was there atomically."""
    link_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = link_path.with_name(f".{link_path.name}.tmp{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    tmp.symlink_to(target)
    os.replace(tmp, link_path)

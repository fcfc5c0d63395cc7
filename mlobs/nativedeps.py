"""Build the native binaries from the Go module proxy, reproducibly, cached by version.

Produces ``otelcol-mlobs`` (OpenTelemetry Collector Builder + ``otel-collector/builder-config.yaml``),
``prometheus``, ``promtool``, ``alertmanager`` and ``amtool``, each cached under
``<cache>/bin/<tool>-<version>[-<manifest hash>]/<tool>`` and symlinked into ``bin_dir`` (``.bin/``).

Cache directory: ``$MLOBS_CACHE_DIR``, else ``${XDG_CACHE_HOME:-~/.cache}/mlobs``. Build logs go to
``<cache>/logs/``. Go's own caches (``GOMODCACHE``, ``GOCACHE``) are taken from the environment.

Build notes (see DESIGN.md, "Facts from upstream worth knowing"):

* Prometheus and Alertmanager are built inside a writable copy of the downloaded module
  (``go mod download -json`` gives its folder) with ``GOFLAGS=-mod=mod``, because their go.mod
  may carry ``replace``/``exclude`` directives that ``go install module/cmd@version`` refuses,
  and ``GOWORK=off``: the Prometheus module ships a go.work, in which ``-mod=mod`` is refused.
  Version information is set as promu sets it, with the module's publication time as build date.
* Prometheus builds without the ``builtinassets`` tag: no web UI, the API works.
* Alertmanager >= 0.32 embeds ``ui/app/dist``, which the module lacks: a placeholder page is
  written before compiling (plain, gzip and brotli, as 0.34 serves HTML pre-compressed only).
* amtool: plain ``go install``; if refused, built in the module copy.
* The collector builder and every component in the manifest are of one release. Modules the proxy
  refuses although components import them get stand-ins (``PROXY_GAP_STUBS``).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml
from rich.console import Console
from rich.markup import escape

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MANIFEST = REPO_ROOT / "otel-collector" / "builder-config.yaml"

PROMETHEUS_MODULE = "github.com/prometheus/prometheus"
ALERTMANAGER_MODULE = "github.com/prometheus/alertmanager"
OCB_MODULE = "go.opentelemetry.io/collector/cmd/builder"
VERSION_PKG = "github.com/prometheus/common/version"

OTELCOL_BINARY = "otelcol-mlobs"

#: binary name -> key of the ``versions`` mapping that gives its version
TOOLS: dict[str, str] = {
    OTELCOL_BINARY: "otelcol",
    "prometheus": "prometheus",
    "promtool": "prometheus",
    "alertmanager": "alertmanager",
    "amtool": "alertmanager",
}

#: The component kinds of a manifest, named as the collector config's top-level keys.
COMPONENT_KINDS = ("receivers", "processors", "connectors", "exporters", "extensions")

#: Type names the modules register at collector 0.165.0, from each module's metadata.yaml
#: (``type:``). Where the name is not the module's base name less its kind suffix, it is listed
#: here. Notably the core ``otlpexporter`` registers ``otlp_grpc`` (renamed from ``otlp`` in 0.144,
#: which still loads as a deprecated alias) and ``otlphttpexporter`` registers ``otlp_http``
#: (alias ``otlphttp``); contrib's ``spanmetricsconnector`` registers ``span_metrics`` (alias
#: ``spanmetrics``).
KNOWN_COMPONENT_TYPES: dict[str, str] = {
    "otlpreceiver": "otlp",
    "otlpexporter": "otlp_grpc",
    "otlphttpexporter": "otlp_http",
    "memorylimiterprocessor": "memory_limiter",
    "batchprocessor": "batch",
    "resourceprocessor": "resource",
    "redactionprocessor": "redaction",
    "tailsamplingprocessor": "tail_sampling",
    "spanmetricsconnector": "span_metrics",
    "servicegraphconnector": "servicegraph",
    "countconnector": "count",
    "forwardconnector": "forward",
    "healthcheckextension": "health_check",
    "filestorage": "file_storage",
}

#: Deprecated type names that still load (with a warning), per kind -> the type they stand for.
DEPRECATED_TYPE_ALIASES: dict[str, dict[str, str]] = {
    "exporters": {"otlp": "otlp_grpc", "otlphttp": "otlp_http"},
    "connectors": {"spanmetrics": "span_metrics"},
}

_KIND_SUFFIX = {
    "receivers": "receiver",
    "processors": "processor",
    "connectors": "connector",
    "exporters": "exporter",
    "extensions": "extension",
}

_SEMVER = re.compile(r"^v?(\d+)\.(\d+)\.(\d+)(-[0-9A-Za-z.-]+)?$")

console = Console(stderr=True, highlight=False, soft_wrap=True)


class NativeBuildError(RuntimeError):
    """A build step failed; the message names the step and the log file."""


# --------------------------------------------------------------------------------------------
# pure helpers


def _split_version(version: str) -> tuple[int, int, int, str]:
    m = _SEMVER.match(version.strip())
    if not m:
        raise ValueError(f"not a semantic version: {version!r}")
    return int(m.group(1)), int(m.group(2)), int(m.group(3)), m.group(4) or ""


def app_version(version: str) -> str:
    """``v0.34.0`` or ``0.34.0`` -> ``0.34.0`` (checked to be semver)."""
    _split_version(version)
    return version.strip().removeprefix("v")


def prometheus_go_version(version: str) -> str:
    """The Go module version of a Prometheus release.

    Prometheus 3.X.Y is tagged ``v0.3XX.Y`` for Go (3.16.0 -> v0.316.0, 3.5.1 -> v0.305.1);
    2.X.Y was ``v0.X.Y``.
    """
    major, minor, patch, pre = _split_version(version)
    if major < 2:
        raise ValueError(f"unsupported Prometheus version {version!r}")
    if major == 2:
        return f"v0.{minor}.{patch}{pre}"
    if minor >= 100:
        raise ValueError(f"Prometheus minor version too large for the Go tag scheme: {version!r}")
    return f"v0.{major * 100 + minor}.{patch}{pre}"


def go_module_version(key: str, version: str) -> str:
    """Go module version for an entry of ``versions`` (``otelcol``/``prometheus``/``alertmanager``)."""
    if key == "prometheus":
        return prometheus_go_version(version)
    if key in ("otelcol", "alertmanager"):
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


def manifest_hash(path: Path, length: int = 10) -> str:
    """Short hash of what the manifest builds: its parsed content less ``dist.output_path``.

    Comments and formatting do not change it; any component, version or dist setting does.
    """
    data = yaml.safe_load(Path(path).read_text()) or {}
    dist = dict(data.get("dist") or {})
    dist.pop("output_path", None)
    data["dist"] = dist
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:length]


def cache_entry_name(tool: str, version: str, manifest_digest: str | None = None) -> str:
    """``prometheus-3.16.0``, ``otelcol-mlobs-0.165.0-1a2b3c4d5e``."""
    name = f"{tool}-{app_version(version)}"
    return f"{name}-{manifest_digest}" if manifest_digest else name


def cache_entry_dir(cache_dir: Path, tool: str, version: str, manifest_digest: str | None = None) -> Path:
    return Path(cache_dir) / "bin" / cache_entry_name(tool, version, manifest_digest)


def select_tools(only: Sequence[str] | None) -> list[str]:
    """Binary names to ensure. ``only`` takes binary names or version keys (``otelcol`` = otelcol-mlobs,
    ``prometheus`` = prometheus only, ``alertmanager`` = alertmanager only)."""
    if not only:
        return list(TOOLS)
    wanted: set[str] = set()
    for name in only:
        if name in TOOLS:
            wanted.add(name)
        elif name == "otelcol":
            wanted.add(OTELCOL_BINARY)
        else:
            raise ValueError(f"unknown binary {name!r}; known: otelcol, {', '.join(TOOLS)}")
    return [t for t in TOOLS if t in wanted]


def component_type(component_id: str) -> str:
    """``otlp_grpc/tempo`` -> ``otlp_grpc``."""
    return component_id.split("/", 1)[0]


def canonical_component_type(kind: str, type_name: str) -> str:
    """Map a deprecated alias to the type it stands for (``exporters``, ``otlp`` -> ``otlp_grpc``)."""
    return DEPRECATED_TYPE_ALIASES.get(kind, {}).get(type_name, type_name)


def module_component_type(kind: str, import_path: str) -> str:
    """The type name a component module registers, from its import path."""
    base = import_path.rstrip("/").rsplit("/", 1)[-1]
    if base in KNOWN_COMPONENT_TYPES:
        return KNOWN_COMPONENT_TYPES[base]
    suffix = _KIND_SUFFIX[kind]
    return base[: -len(suffix)] if base.endswith(suffix) and base != suffix else base


@dataclass(frozen=True)
class ManifestModule:
    kind: str
    module: str
    version: str
    import_path: str


def otelcol_manifest_modules(path: Path) -> list[ManifestModule]:
    data = yaml.safe_load(Path(path).read_text()) or {}
    out: list[ManifestModule] = []
    for kind in COMPONENT_KINDS:
        for entry in data.get(kind) or []:
            gomod = str(entry.get("gomod", "")).split()
            if len(gomod) != 2:
                raise ValueError(f"{path}: {kind}: gomod must be 'MODULE VERSION', got {entry!r}")
            module, version = gomod
            out.append(ManifestModule(kind, module, version, entry.get("import") or module))
    return out


def otelcol_manifest_components(path: Path) -> dict[str, set[str]]:
    """Component type names per kind (``receivers``, ``processors``, ``connectors``, ``exporters``,
    ``extensions``) that the manifest builds, as the collector registers them (canonical names: the
    core otlpexporter is ``otlp_grpc``, see ``KNOWN_COMPONENT_TYPES``)."""
    result: dict[str, set[str]] = {kind: set() for kind in COMPONENT_KINDS}
    for mod in otelcol_manifest_modules(path):
        result[mod.kind].add(module_component_type(mod.kind, mod.import_path))
    return result


def otelcol_binary_components(binary: Path) -> dict[str, set[str]]:
    """Component type names per kind that a built collector reports (``BINARY components``)."""
    out = subprocess.run([str(binary), "components"], capture_output=True, text=True, check=True).stdout
    data = yaml.safe_load(out) or {}
    return {kind: {str(c["name"]) for c in data.get(kind) or []} for kind in COMPONENT_KINDS}


def otelcol_manifest_release(path: Path) -> str | None:
    """The single v0.x release of the manifest's components, or None if they disagree."""
    versions = {m.version for m in otelcol_manifest_modules(path) if m.version.startswith("v0.")}
    return versions.pop() if len(versions) == 1 else None


# --------------------------------------------------------------------------------------------
# running steps


def _tail(path: Path, n: int = 30) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-n:])


def _fmt_secs(secs: float) -> str:
    return f"{secs:.1f}s" if secs < 60 else f"{int(secs // 60)}m{secs % 60:04.1f}s"


class _Steps:
    def __init__(self, log: Path, env: dict[str, str], cwd: Path):
        self.log = log
        self.env = env
        self.cwd = cwd  # a scratch folder: no go.mod or go.work of the caller's tree applies
        self.notes: list[str] = []
        log.parent.mkdir(parents=True, exist_ok=True)

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
        cwd = cwd or self.cwd
        full_env = dict(self.env)
        if env:
            full_env.update(env)
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
            fh.write(f"# exit {proc.returncode} after {_fmt_secs(time.monotonic() - start)}\n")
        if proc.returncode != 0 and check:
            raise NativeBuildError(
                f"{step} failed (exit {proc.returncode}); log: {self.log}\n"
                f"--- last 30 lines of {self.log} ---\n{_tail(self.log)}"
            )
        return out or ""

    def download(self, step: str, module: str, version: str) -> dict:
        out = self.run(step, ["go", "mod", "download", "-json", f"{module}@{version}"], capture=True)
        info = json.loads(out)
        if info.get("Error") or not info.get("Dir"):
            raise NativeBuildError(f"{step}: {info.get('Error', 'no Dir in go mod download output')} (log: {self.log})")
        return info


def _go_env() -> dict[str, str]:
    if not shutil.which("go"):
        raise NativeBuildError("the Go toolchain ('go') is not on PATH; install Go to build native binaries")
    env = dict(os.environ)
    env["CGO_ENABLED"] = "0"
    return env


def _tree_env(env: dict[str, str]) -> dict[str, str]:
    """Environment for building inside a module copy: the copy's own go.mod, with its replace and
    exclude directives, resolved and updated as needed (``-mod=mod``). The Prometheus module ships a
    go.work (``-mod=mod`` is refused in workspace mode, and it names folders the module lacks)."""
    return {"GOFLAGS": " ".join([*env.get("GOFLAGS", "").split(), "-mod=mod"]), "GOWORK": "off"}


def _writable_copy(src: Path, dst: Path) -> None:
    """Copy a (read-only) module cache folder and make the copy writable."""
    shutil.copytree(src, dst, symlinks=True)
    for root, dirs, files in os.walk(dst):
        for name in [*dirs, *files]:
            p = Path(root, name)
            if not p.is_symlink():
                p.chmod(p.stat().st_mode | 0o200)
    dst.chmod(dst.stat().st_mode | 0o200)


def _rmtree(path: Path) -> None:
    def onerror(func, p, _exc):  # read-only dirs from the module cache
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(p), 0o700)
            os.chmod(p, 0o700)
            func(p)

    if path.exists():
        shutil.rmtree(path, onerror=onerror)


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _prom_ldflags(version: str, info: dict) -> str:
    """ldflags as promu sets them, with a reproducible date (the module's publication time)."""
    revision = (info.get("Origin") or {}).get("Hash") or info.get("Version", "unknown")
    published = info.get("Time", "")
    date = re.sub(r"[^0-9T:]", "", published).replace("T", "-")[:17] if published else "unknown"
    return " ".join(
        [
            "-s",
            "-w",
            f"-X {VERSION_PKG}.Version={app_version(version)}",
            f"-X {VERSION_PKG}.Revision={revision}",
            f"-X {VERSION_PKG}.Branch=HEAD",
            f"-X {VERSION_PKG}.BuildUser=mlobs@nativedeps",
            f"-X {VERSION_PKG}.BuildDate={date}",
        ]
    )


def _read_info(download: dict) -> dict:
    info_path = download.get("Info")
    info: dict = {}
    if info_path and Path(info_path).exists():
        with contextlib.suppress(ValueError):
            info = json.loads(Path(info_path).read_text())
    info.setdefault("Version", download.get("Version"))
    return info


# Stand-ins for modules the Go module proxy this project reaches refuses ("403 This module version
# is not available"), though upstream publishes them. Each is used only if the proxy refuses the
# real module at the manifest's release (checked at every build; the note lands in BUILD-INFO.json)
# and offers the same package API for code paths mlobs does not use:
#
# * pkg/ottl/contexts/xprofile (the experimental OTTL profile context): imported by the count
#   connector, the transform processor and internal/filter only to handle *profiles*. Spans, span
#   events, metrics, data points and logs are counted, filtered and transformed by the real code;
#   profile statements and conditions fail to parse with a clear error.
# * pkg/expohisto (exponential -> explicit histogram conversion): imported by the transform
#   processor's convert_exponential_histogram_to_histogram function only, which then fails to parse.
XPROFILE_MODULE = "github.com/open-telemetry/opentelemetry-collector-contrib/pkg/ottl/contexts/xprofile"

XPROFILE_STUB_FILES: dict[str, str] = {
    "go.mod": f"""// Stand-in written by mlobs/nativedeps.py: the module proxy refuses the real module.
module {XPROFILE_MODULE}

go 1.26.0
""",
    "ottlprofile/profile.go": """// Package ottlprofile: stand-in for the OTTL profile context.
package ottlprofile

import (
	"errors"
	"fmt"

	"go.opentelemetry.io/collector/component"
	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/pprofile"

	"github.com/open-telemetry/opentelemetry-collector-contrib/pkg/ottl"
)

// ContextName is the name of the profile context.
const ContextName = "profile"

var errUnsupported = errors.New("OTTL profile paths are not available in this collector build " +
	"(built by mlobs without the experimental xprofile module)")

type TransformContext struct {
	resourceProfiles pprofile.ResourceProfiles
	scopeProfiles    pprofile.ScopeProfiles
	profile          pprofile.Profile
	dictionary       pprofile.ProfilesDictionary
	cache            *pcommon.Map
}

type TransformContextOption func(*TransformContext)

func WithCache(cache *pcommon.Map) TransformContextOption {
	return func(tCtx *TransformContext) { tCtx.cache = cache }
}

func NewTransformContext(rp pprofile.ResourceProfiles, sp pprofile.ScopeProfiles, p pprofile.Profile,
	d pprofile.ProfilesDictionary, options ...TransformContextOption,
) *TransformContext {
	tCtx := &TransformContext{resourceProfiles: rp, scopeProfiles: sp, profile: p, dictionary: d}
	for _, opt := range options {
		opt(tCtx)
	}
	return tCtx
}

func (tCtx *TransformContext) Close() {}

func (tCtx *TransformContext) GetProfile() pprofile.Profile { return tCtx.profile }

func (tCtx *TransformContext) GetResource() pcommon.Resource { return tCtx.resourceProfiles.Resource() }

func (tCtx *TransformContext) GetInstrumentationScope() pcommon.InstrumentationScope {
	return tCtx.scopeProfiles.Scope()
}

func (tCtx *TransformContext) GetScopeSchemaURLItem() ottl.SchemaURLItem { return tCtx.scopeProfiles }

func (tCtx *TransformContext) GetResourceSchemaURLItem() ottl.SchemaURLItem {
	return tCtx.resourceProfiles
}

func EnablePathContextNames() ottl.Option[*TransformContext] {
	return ottl.WithPathContextNames[*TransformContext]([]string{ContextName, "scope",
		"instrumentation_scope", "resource"})
}

type ConditionSequenceOption func(*ottl.ConditionSequence[*TransformContext])

func WithConditionSequenceErrorMode(errorMode ottl.ErrorMode) ConditionSequenceOption {
	return func(c *ottl.ConditionSequence[*TransformContext]) {
		ottl.WithConditionSequenceErrorMode[*TransformContext](errorMode)(c)
	}
}

func NewConditionSequence(conditions []*ottl.Condition[*TransformContext],
	telemetrySettings component.TelemetrySettings, options ...ConditionSequenceOption,
) ottl.ConditionSequence[*TransformContext] {
	c := ottl.NewConditionSequence(conditions, telemetrySettings)
	for _, op := range options {
		op(&c)
	}
	return c
}

type StatementSequenceOption func(*ottl.StatementSequence[*TransformContext])

func WithStatementSequenceErrorMode(errorMode ottl.ErrorMode) StatementSequenceOption {
	return func(s *ottl.StatementSequence[*TransformContext]) {
		ottl.WithStatementSequenceErrorMode[*TransformContext](errorMode)(s)
	}
}

func NewStatementSequence(statements []*ottl.Statement[*TransformContext],
	telemetrySettings component.TelemetrySettings, options ...StatementSequenceOption,
) ottl.StatementSequence[*TransformContext] {
	s := ottl.NewStatementSequence(statements, telemetrySettings)
	for _, op := range options {
		op(&s)
	}
	return s
}

func NewParser(functions map[string]ottl.Factory[*TransformContext],
	telemetrySettings component.TelemetrySettings, options ...ottl.Option[*TransformContext],
) (ottl.Parser[*TransformContext], error) {
	pathParser := func(path ottl.Path[*TransformContext]) (ottl.GetSetter[*TransformContext], error) {
		return nil, fmt.Errorf("path %q: %w", path.String(), errUnsupported)
	}
	enumParser := func(*ottl.EnumSymbol) (*ottl.Enum, error) { return nil, errUnsupported }
	opts := []ottl.Option[*TransformContext]{ottl.WithEnumParser[*TransformContext](enumParser)}
	opts = append(opts, options...)
	return ottl.NewParser[*TransformContext](functions, pathParser, telemetrySettings, opts...)
}
""",
    "ottlfuncs/functions.go": """// Package ottlfuncs: stand-in for the OTTL profile functions.
package ottlfuncs

import "github.com/open-telemetry/opentelemetry-collector-contrib/pkg/ottl"

// WithProfileConverters adds no converters in this stand-in.
func WithProfileConverters[K any](funcs map[string]ottl.Factory[K]) map[string]ottl.Factory[K] {
	return funcs
}
""",
}

EXPOHISTO_MODULE = "github.com/open-telemetry/opentelemetry-collector-contrib/pkg/expohisto"

EXPOHISTO_STUB_FILES: dict[str, str] = {
    "go.mod": f"""// Stand-in written by mlobs/nativedeps.py: the module proxy refuses the real module.
module {EXPOHISTO_MODULE}

go 1.26.0
""",
    "conversion/conversion.go": """// Package conversion: stand-in for the exponential histogram conversion.
package conversion

import (
	"errors"

	"go.opentelemetry.io/collector/pdata/pcommon"
)

type Buckets struct {
	Offset int32
	Counts pcommon.UInt64Slice
}

type ExponentialHistogram struct {
	Count         uint64
	Scale         int32
	ZeroThreshold float64
	ZeroCount     uint64
	Positive      Buckets
	Negative      Buckets
}

// ToExplicit is not available in this build.
func ToExplicit(ExponentialHistogram, []float64, string) ([]uint64, error) {
	return nil, errors.New("exponential histogram conversion is not available in this collector build " +
		"(built by mlobs without the pkg/expohisto module)")
}
""",
}

#: module -> (stand-in files, what is lost when it is used)
PROXY_GAP_STUBS: dict[str, tuple[dict[str, str], str]] = {
    XPROFILE_MODULE: (XPROFILE_STUB_FILES, "OTTL on profiles (count, filter, transform of profiles)"),
    EXPOHISTO_MODULE: (EXPOHISTO_STUB_FILES, "OTTL convert_exponential_histogram_to_histogram"),
}


def with_stub_replaces(manifest_data: dict, refused: Sequence[str], stub_root: str = "../stubs") -> dict:
    """A copy of the parsed manifest whose ``replaces`` point each refused module at its stand-in
    folder ``<stub_root>/<last element of the module path>``. The default is relative to the
    generated sources (``<work>/otelcol-dist`` -> ``<work>/stubs``): the path is recorded in the
    binary's build info, so a relative one keeps builds in different folders bit-identical."""
    data = dict(manifest_data)
    replaces = list(data.get("replaces") or [])
    for module in refused:
        replaces.append(f"{module} => {stub_root}/{module.rsplit('/', 1)[-1]}")
    if replaces:
        data["replaces"] = replaces
    return data


def _write_stub(root: Path, files: Mapping[str, str]) -> None:
    for rel, text in files.items():
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)


def brotli_stored(data: bytes) -> bytes:
    """A valid Brotli stream (RFC 7932) holding ``data`` uncompressed, for up to 64 KiB.

    Bits, least significant first: WBITS=16 ('0'); a meta-block that is not last ('0'), with 4
    nibbles of MLEN-1 ('00' + 16 bits) and ISUNCOMPRESSED ('1'), padded to a byte; the raw bytes;
    then an empty last meta-block (ISLAST=1, ISLASTEMPTY=1).
    """
    if not data:
        return b"\x06"  # WBITS=16, ISLAST, ISLASTEMPTY
    if len(data) > 1 << 16:
        raise ValueError("brotli_stored holds at most 64 KiB")
    header = 0 | (0 << 1) | (0 << 2) | ((len(data) - 1) << 4) | (1 << 20)
    return header.to_bytes(3, "little") + data + b"\x03"


AM_UI_PLACEHOLDER = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Alertmanager</title></head>
<body><h1>Alertmanager</h1>
<p>The web UI is not built into this binary: it was compiled by mlobs from the Go module,
which does not ship the UI's JavaScript bundle. The HTTP API (<a href="api/v2/status">/api/v2/</a>)
works; use amtool or Grafana's Alertmanager data source.</p>
</body></html>
"""


# --------------------------------------------------------------------------------------------
# builders: each writes the binaries it makes into `out` (a folder per binary name)


def _build_otelcol(steps: _Steps, version: str, manifest: Path, work: Path, cache_dir: Path) -> Path:
    builder_version = go_module_version("otelcol", version)
    release = otelcol_manifest_release(manifest)
    if release and release != builder_version:
        raise NativeBuildError(
            f"{manifest}: components are {release} but the builder is {builder_version}; "
            "builder and components must be of one release"
        )
    tools_dir = cache_dir / "tools" / f"builder-{builder_version}"
    builder = tools_dir / "builder"
    if not builder.exists():
        staging = Path(tempfile.mkdtemp(prefix="builder-", dir=work))
        steps.run(
            f"go install {OCB_MODULE}@{builder_version}",
            ["go", "install", "-trimpath", "-ldflags=-s -w", f"{OCB_MODULE}@{builder_version}"],
            env={"GOBIN": str(staging)},
        )
        tools_dir.parent.mkdir(parents=True, exist_ok=True)
        _rmtree(tools_dir)
        staging.rename(tools_dir)
    dist = work / "otelcol-dist"
    config = work / "builder-config.yaml"
    data = yaml.safe_load(manifest.read_text())
    refused: list[str] = []
    for module, (files, lost) in (PROXY_GAP_STUBS if release else {}).items():
        probe = steps.run(
            f"check {module}@{release} on the proxy",
            ["go", "mod", "download", "-json", f"{module}@{release}"],
            capture=True,
            check=False,
        )
        error = (json.loads(probe) if probe.strip().startswith("{") else {}).get("Error")
        if error:
            refused.append(module)
            _write_stub(work / "stubs" / module.rsplit("/", 1)[-1], files)
            msg = f"the module proxy refuses {module}@{release}: built with mlobs' stand-in (no {lost})"
            steps.notes.append(msg)
            console.print(f"[yellow]![/] {escape(msg)}")
    data = with_stub_replaces(data, refused)  # "../stubs/NAME", relative to `dist`
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    steps.run(
        f"ocb {builder_version} ({manifest.name})",
        [str(builder), "--config", str(config), "--output-path", str(dist), "--verbose"],
        cwd=work,
        # ocb makes a default output folder in $TMPDIR even when --output-path overrides it
        env={"TMPDIR": str(work), "GOWORK": "off"},
    )
    binary = dist / OTELCOL_BINARY
    if not binary.exists():
        raise NativeBuildError(f"ocb finished without producing {binary} (log: {steps.log})")
    return binary


def _prepare_tree(steps: _Steps, module: str, go_version: str, work: Path) -> tuple[Path, dict]:
    dl = steps.download(f"go mod download {module}@{go_version}", module, go_version)
    tree = work / "src"
    if not tree.exists():
        _writable_copy(Path(dl["Dir"]), tree)
    return tree, _read_info(dl)


def _build_prometheus_tool(steps: _Steps, tool: str, version: str, work: Path) -> Path:
    go_version = prometheus_go_version(version)
    tree, info = _prepare_tree(steps, PROMETHEUS_MODULE, go_version, work)
    out = work / "out" / tool
    # no `builtinassets` tag: the module has no built web UI; the API works without it.
    steps.run(
        f"go build {tool} {go_version}",
        [
            "go",
            "build",
            "-trimpath",
            "-tags",
            "netgo",
            f"-ldflags={_prom_ldflags(version, info)}",
            "-o",
            str(out),
            f"./cmd/{tool}",
        ],
        cwd=tree,
        env=_tree_env(steps.env),
    )
    return out


def _build_alertmanager(steps: _Steps, version: str, work: Path) -> Path:
    go_version = go_module_version("alertmanager", version)
    tree, info = _prepare_tree(steps, ALERTMANAGER_MODULE, go_version, work)
    dist = tree / "ui" / "app" / "dist"
    if (tree / "ui" / "app").is_dir() and not any(dist.glob("*")):
        dist.mkdir(parents=True, exist_ok=True)
        page = AM_UI_PLACEHOLDER.encode()
        (dist / "index.html").write_bytes(page)
        # 0.34 serves HTML only from pre-compressed variants, chosen by Accept-Encoding
        (dist / "index.html.gz").write_bytes(gzip.compress(page, mtime=0))
        (dist / "index.html.br").write_bytes(brotli_stored(page))
    out = work / "out" / "alertmanager"
    steps.run(
        f"go build alertmanager {go_version}",
        [
            "go",
            "build",
            "-trimpath",
            "-tags",
            "netgo",
            f"-ldflags={_prom_ldflags(version, info)}",
            "-o",
            str(out),
            "./cmd/alertmanager",
        ],
        cwd=tree,
        env=_tree_env(steps.env),
    )
    return out


def _build_amtool(steps: _Steps, version: str, work: Path) -> Path:
    go_version = go_module_version("alertmanager", version)
    gobin = work / "gobin"
    gobin.mkdir(parents=True, exist_ok=True)
    pkg = f"{ALERTMANAGER_MODULE}/cmd/amtool@{go_version}"
    info = {"Version": go_version}
    try:
        dl = steps.download(f"go mod download {ALERTMANAGER_MODULE}@{go_version}", ALERTMANAGER_MODULE, go_version)
        info = _read_info(dl)
        steps.run(
            f"go install {pkg}",
            ["go", "install", "-trimpath", "-tags", "netgo", f"-ldflags={_prom_ldflags(version, info)}", pkg],
            env={"GOBIN": str(gobin)},
        )
        return gobin / "amtool"
    except NativeBuildError as exc:
        with steps.log.open("a") as fh:
            fh.write(f"# go install refused ({str(exc).splitlines()[0]}); building in the module copy\n")
    tree, info = _prepare_tree(steps, ALERTMANAGER_MODULE, go_version, work)
    out = work / "out" / "amtool"
    steps.run(
        f"go build amtool {go_version}",
        [
            "go",
            "build",
            "-trimpath",
            "-tags",
            "netgo",
            f"-ldflags={_prom_ldflags(version, info)}",
            "-o",
            str(out),
            "./cmd/amtool",
        ],
        cwd=tree,
        env=_tree_env(steps.env),
    )
    return out


# --------------------------------------------------------------------------------------------
# public API


def _link(target: Path, link: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(f".{link.name}.tmp{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    tmp.symlink_to(target)
    os.replace(tmp, link)


def ensure_binaries(
    versions: dict[str, str],
    bin_dir: Path,
    cache_dir: Path | None = None,
    only: list[str] | None = None,
    manifest: Path | None = None,
) -> dict[str, Path]:
    """Build (or reuse from the cache) the native binaries and symlink them into ``bin_dir``.

    ``versions`` holds app versions: ``{"otelcol": "0.165.0", "prometheus": "3.16.0",
    "alertmanager": "0.34.0"}``. Returns binary name -> its path in ``bin_dir``.
    Raises NativeBuildError naming the failed step and its log.
    """
    bin_dir = Path(bin_dir).resolve()
    cache_dir = Path(cache_dir).expanduser().resolve() if cache_dir else default_cache_dir()
    manifest = Path(manifest or DEFAULT_MANIFEST).resolve()
    tools = select_tools(only)
    missing = sorted({TOOLS[t] for t in tools} - set(versions))
    if missing:
        raise ValueError(f"no version given for {', '.join(missing)}")

    digest = manifest_hash(manifest) if OTELCOL_BINARY in tools else None
    result: dict[str, Path] = {}
    total_start = time.monotonic()
    built_any = False
    failures: list[NativeBuildError] = []
    for tool in tools:
        version = app_version(versions[TOOLS[tool]])
        entry = cache_entry_dir(cache_dir, tool, version, digest if tool == OTELCOL_BINARY else None)
        cached = entry / tool
        label = f"{tool} {version}" + (f" (manifest {digest})" if tool == OTELCOL_BINARY else "")
        with _lock(cache_dir / "locks" / f"{entry.name}.lock"):
            if cached.is_file() and os.access(cached, os.X_OK):
                console.print(f"[green]✓[/] {label}: cached [dim]{cached}[/]")
            else:
                try:
                    _build_one(tool, version, manifest, cache_dir, entry, label)
                except NativeBuildError as exc:  # go on with the others, fail at the end
                    failures.append(exc)
                    continue
                built_any = True
        _link(cached, bin_dir / tool)
        result[tool] = bin_dir / tool
    if built_any:
        console.print(
            f"[bold]native binaries ready[/] in {_fmt_secs(time.monotonic() - total_start)} "
            f"[dim](linked into {bin_dir})[/]"
        )
    if failures:
        raise NativeBuildError("\n\n".join(str(f) for f in failures))
    return result


def _progress(text: str) -> contextlib.AbstractContextManager:
    """A spinner on a terminal; one plain line elsewhere (CI logs, pipes)."""
    if console.is_terminal:
        return console.status(text)
    console.print(f"… {text}")
    return contextlib.nullcontext()


def _build_one(tool: str, version: str, manifest: Path, cache_dir: Path, entry: Path, label: str) -> None:
    env = _go_env()
    log = cache_dir / "logs" / f"{entry.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(f"# mlobs nativedeps: building {label} at {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n")
    (cache_dir / "tmp").mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"{entry.name}-", dir=cache_dir / "tmp"))
    steps = _Steps(log, env, cwd=work)
    start = time.monotonic()
    try:
        with _progress(f"building {label} [dim](log: {log})[/]"):
            if tool == OTELCOL_BINARY:
                built = _build_otelcol(steps, version, manifest, work, cache_dir)
            elif tool in ("prometheus", "promtool"):
                built = _build_prometheus_tool(steps, tool, version, work)
            elif tool == "alertmanager":
                built = _build_alertmanager(steps, version, work)
            elif tool == "amtool":
                built = _build_amtool(steps, version, work)
            else:  # pragma: no cover - select_tools guards this
                raise ValueError(tool)
            steps.run(f"{tool} --version (smoke test)", [str(built), "--version"])
        staging = work / "entry"
        staging.mkdir()
        shutil.copy2(built, staging / tool)
        (staging / tool).chmod(0o755)
        (staging / "BUILD-INFO.json").write_text(
            json.dumps(
                {
                    "tool": tool,
                    "version": version,
                    "go": _go_version(),
                    "log": str(log),
                    "manifest": str(manifest) if tool == OTELCOL_BINARY else None,
                    "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "build_seconds": round(time.monotonic() - start, 1),
                    "notes": steps.notes,
                },
                indent=2,
            )
            + "\n"
        )
        entry.parent.mkdir(parents=True, exist_ok=True)
        _rmtree(entry)
        staging.rename(entry)
    except NativeBuildError:
        console.print(f"[red]✗[/] {label}: failed after {_fmt_secs(time.monotonic() - start)} [dim](log: {log})[/]")
        raise
    finally:
        _rmtree(work)
    size = (entry / tool).stat().st_size / 2**20
    console.print(
        f"[green]✓[/] {label}: built in {_fmt_secs(time.monotonic() - start)} ({size:.1f} MiB) [dim]{entry / tool}[/]"
    )


def _go_version() -> str:
    try:
        return subprocess.run(["go", "env", "GOVERSION"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mlobs.nativedeps",
        description="Build otelcol-mlobs, prometheus, promtool, alertmanager and amtool from the Go "
        "module proxy, cached by version, and link them into --bin-dir.",
    )
    parser.add_argument("--otelcol", help="collector release, e.g. 0.165.0")
    parser.add_argument("--prometheus", help="Prometheus release, e.g. 3.16.0")
    parser.add_argument("--alertmanager", help="Alertmanager release, e.g. 0.34.0")
    parser.add_argument("--bin-dir", type=Path, default=REPO_ROOT / ".bin")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="default: $MLOBS_CACHE_DIR or ${XDG_CACHE_HOME:-~/.cache}/mlobs",
    )
    parser.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST)
    parser.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        help=f"build only this binary (repeatable): otelcol, {', '.join(TOOLS)}",
    )
    args = parser.parse_args(argv)
    versions = {
        k: v
        for k, v in (
            ("otelcol", args.otelcol),
            ("prometheus", args.prometheus),
            ("alertmanager", args.alertmanager),
        )
        if v
    }
    try:
        only = args.only
        if not only:  # without --only, build what a version was given for
            only = [t for t, key in TOOLS.items() if key in versions]
            if not only:
                parser.error("give at least one of --otelcol, --prometheus, --alertmanager")
        paths = ensure_binaries(versions, args.bin_dir, args.cache_dir, only, args.manifest)
    except (NativeBuildError, ValueError) as exc:
        console.print(f"[red]error:[/] {escape(str(exc))}")
        return 1
    for tool, path in paths.items():
        print(f"{tool}\t{path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

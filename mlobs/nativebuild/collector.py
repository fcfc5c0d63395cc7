"""The collector, ``otelcol-mlobs``: the OpenTelemetry Collector Builder (ocb) and the manifest
``otel-collector/builder-config.yaml``, which lists exactly the components the config uses.

The builder and every component in the manifest are of one release. The cache entry carries a hash
of the manifest, so a changed manifest builds again. Modules the proxy refuses although components
import them are replaced by the stand-ins of ``stubs/`` (see its README.md), each only if the proxy
refuses it at the manifest's release: checked at every build, and said in BUILD-INFO.json.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from mlobs.nativebuild.cache import go_module_version
from mlobs.nativebuild.gobuild import NativeBuildError, Steps, rmtree

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MANIFEST = REPO_ROOT / "otel-collector" / "builder-config.yaml"

OCB_MODULE = "go.opentelemetry.io/collector/cmd/builder"
OTELCOL_BINARY = "otelcol-mlobs"

# --------------------------------------------------------------------------------------------
# the manifest

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


def otelcol_manifest_release(path: Path) -> str | None:
    """The single v0.x release of the manifest's components, or None if they disagree."""
    versions = {m.version for m in otelcol_manifest_modules(path) if m.version.startswith("v0.")}
    return versions.pop() if len(versions) == 1 else None


# --------------------------------------------------------------------------------------------
# stand-ins for modules the proxy refuses (the Go sources are in stubs/, see stubs/README.md)

STUBS_DIR = Path(__file__).resolve().parent / "stubs"

XPROFILE_MODULE = "github.com/open-telemetry/opentelemetry-collector-contrib/pkg/ottl/contexts/xprofile"
EXPOHISTO_MODULE = "github.com/open-telemetry/opentelemetry-collector-contrib/pkg/expohisto"

#: module -> what is lost when its stand-in is used
PROXY_GAP_STUBS: dict[str, str] = {
    XPROFILE_MODULE: "OTTL on profiles (count, filter, transform of profiles)",
    EXPOHISTO_MODULE: "OTTL convert_exponential_histogram_to_histogram",
}


def stub_folder(module: str) -> str:
    """The folder of a module's stand-in under ``stubs/``: the last element of its path."""
    return module.rstrip("/").rsplit("/", 1)[-1]


def with_stub_replaces(manifest_data: dict, refused: Sequence[str], stub_root: str = "../stubs") -> dict:
    """A copy of the parsed manifest whose ``replaces`` point each refused module at its stand-in
    folder ``<stub_root>/<stub_folder(module)>``. The default is relative to the generated sources
    (``<work>/otelcol-dist`` -> ``<work>/stubs``): the path is recorded in the binary's build info,
    so a relative one keeps builds in different folders bit-identical."""
    data = dict(manifest_data)
    replaces = list(data.get("replaces") or [])
    for module in refused:
        replaces.append(f"{module} => {stub_root}/{stub_folder(module)}")
    if replaces:
        data["replaces"] = replaces
    return data


def copy_stub(module: str, stubs_root: Path) -> Path:
    """Copy the stand-in of ``module`` from the package into ``stubs_root``; returns its folder."""
    src = STUBS_DIR / stub_folder(module)
    if not (src / "go.mod").is_file():
        raise NativeBuildError(f"the stand-in of {module} is missing from the package: {src}")
    dst = stubs_root / stub_folder(module)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.md"), dirs_exist_ok=True)
    return dst


# --------------------------------------------------------------------------------------------
# the build


def _builder(steps: Steps, builder_version: str, cache_dir: Path) -> Path:
    """ocb at ``builder_version``, installed once under ``<cache>/tools/``."""
    tools_dir = cache_dir / "tools" / f"builder-{builder_version}"
    builder = tools_dir / "builder"
    if not builder.exists():
        staging = Path(tempfile.mkdtemp(prefix="builder-", dir=steps.work))
        steps.go_build(
            f"go install {OCB_MODULE}@{builder_version}",
            f"{OCB_MODULE}@{builder_version}",
            staging / "builder",
            tags=(),
        )
        tools_dir.parent.mkdir(parents=True, exist_ok=True)
        rmtree(tools_dir)
        staging.rename(tools_dir)
    return builder


def build_otelcol(steps: Steps, version: str, manifest: Path, cache_dir: Path) -> Path:
    work = steps.work
    builder_version = go_module_version("otelcol", version)
    release = otelcol_manifest_release(manifest)
    if release and release != builder_version:
        raise NativeBuildError(
            f"{manifest}: components are {release} but the builder is {builder_version}; "
            "builder and components must be of one release"
        )
    builder = _builder(steps, builder_version, cache_dir)
    refused: list[str] = []
    for module, lost in (PROXY_GAP_STUBS if release else {}).items():
        error = steps.probe(f"check {module}@{release} on the proxy", module, release).get("Error")
        if error:
            refused.append(module)
            copy_stub(module, work / "stubs")
            steps.note(f"the module proxy refuses {module}@{release}: built with mlobs' stand-in (no {lost})")
    data = with_stub_replaces(yaml.safe_load(manifest.read_text()), refused)  # relative to `dist`
    config = work / "builder-config.yaml"
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    dist = work / "otelcol-dist"
    steps.run(
        f"ocb {builder_version} ({manifest.name})",
        [str(builder), "--config", str(config), "--output-path", str(dist), "--verbose"],
        # ocb makes a default output folder in $TMPDIR even when --output-path overrides it
        env={"TMPDIR": str(work), "GOWORK": "off"},
    )
    binary = dist / OTELCOL_BINARY
    if not binary.exists():
        raise NativeBuildError(f"ocb finished without producing {binary} (log: {steps.log})")
    return binary

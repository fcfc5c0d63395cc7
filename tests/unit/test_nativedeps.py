"""Pure helpers of mlobs.nativedeps: no network, no builds."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mlobs import nativedeps as nd

REPO = Path(__file__).resolve().parents[2]
MANIFEST = REPO / "otel-collector" / "builder-config.yaml"


# --- Go module versions ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("app", "go"),
    [
        ("3.16.0", "v0.316.0"),
        ("v3.16.0", "v0.316.0"),
        ("3.14.2", "v0.314.2"),
        ("3.5.1", "v0.305.1"),
        ("3.0.0", "v0.300.0"),
        ("3.14.0-rc.0", "v0.314.0-rc.0"),
        ("2.53.4", "v0.53.4"),
    ],
)
def test_prometheus_go_version(app: str, go: str) -> None:
    assert nd.prometheus_go_version(app) == go


@pytest.mark.parametrize("bad", ["3.16", "latest", "1.8.2", "3.100.0", ""])
def test_prometheus_go_version_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        nd.prometheus_go_version(bad)


def test_go_module_version_per_component() -> None:
    assert nd.go_module_version("otelcol", "0.165.0") == "v0.165.0"
    assert nd.go_module_version("alertmanager", "v0.34.0") == "v0.34.0"
    assert nd.go_module_version("prometheus", "3.16.0") == "v0.316.0"
    with pytest.raises(ValueError):
        nd.go_module_version("grafana", "13.2.0")


# --- cache layout ---------------------------------------------------------------------------


def test_default_cache_dir_precedence(tmp_path: Path) -> None:
    assert nd.default_cache_dir({"MLOBS_CACHE_DIR": str(tmp_path / "c"), "XDG_CACHE_HOME": "/x"}) == tmp_path / "c"
    assert nd.default_cache_dir({"XDG_CACHE_HOME": "/x", "HOME": "/h"}) == Path("/x/mlobs")
    assert nd.default_cache_dir({"HOME": "/h"}) == Path("/h/.cache/mlobs")
    assert nd.default_cache_dir({"MLOBS_CACHE_DIR": "", "XDG_CACHE_HOME": "", "HOME": "/h"}) == Path("/h/.cache/mlobs")


def test_cache_entry_naming(tmp_path: Path) -> None:
    assert nd.cache_entry_name("prometheus", "3.16.0") == "prometheus-3.16.0"
    assert nd.cache_entry_name("amtool", "v0.34.0") == "amtool-0.34.0"
    assert nd.cache_entry_name("otelcol-mlobs", "0.165.0", "abc123") == "otelcol-mlobs-0.165.0-abc123"
    assert nd.cache_entry_dir(tmp_path, "promtool", "3.16.0") == tmp_path / "bin" / "promtool-3.16.0"


def test_manifest_hash_ignores_comments_and_output_path(tmp_path: Path) -> None:
    base = yaml.safe_load(MANIFEST.read_text())
    a = tmp_path / "a.yaml"
    a.write_text("# a comment\n" + yaml.safe_dump(base))
    b = tmp_path / "b.yaml"
    moved = {**base, "dist": {**base["dist"], "output_path": "/elsewhere"}}
    b.write_text(yaml.safe_dump(moved, sort_keys=False))
    assert nd.manifest_hash(a) == nd.manifest_hash(b) == nd.manifest_hash(MANIFEST)
    assert len(nd.manifest_hash(MANIFEST)) == 10

    c = tmp_path / "c.yaml"
    changed = {**base, "exporters": base["exporters"][:1]}
    c.write_text(yaml.safe_dump(changed))
    assert nd.manifest_hash(c) != nd.manifest_hash(a)


def test_select_tools() -> None:
    assert nd.select_tools(None) == ["otelcol-mlobs", "prometheus", "promtool", "alertmanager", "amtool"]
    assert nd.select_tools(["amtool", "otelcol"]) == ["otelcol-mlobs", "amtool"]
    with pytest.raises(ValueError):
        nd.select_tools(["grafana"])


def test_ensure_binaries_reuses_cache_without_building(tmp_path: Path) -> None:
    """A present cache entry is linked as is: no Go toolchain is touched."""
    cache = tmp_path / "cache"
    entry = nd.cache_entry_dir(cache, "promtool", "3.16.0")
    entry.mkdir(parents=True)
    binary = entry / "promtool"
    binary.write_text("#!/bin/sh\necho promtool\n")
    binary.chmod(0o755)
    bin_dir = tmp_path / ".bin"
    out = nd.ensure_binaries({"prometheus": "3.16.0"}, bin_dir, cache, only=["promtool"])
    assert out == {"promtool": bin_dir.resolve() / "promtool"}
    assert (bin_dir / "promtool").is_symlink()
    assert (bin_dir / "promtool").resolve() == binary.resolve()


def test_ensure_binaries_needs_versions(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="alertmanager"):
        nd.ensure_binaries({"prometheus": "3.16.0"}, tmp_path / "b", tmp_path / "c", only=["amtool"])


# --- manifest parsing -----------------------------------------------------------------------


def test_module_component_type() -> None:
    assert nd.module_component_type("exporters", "go.opentelemetry.io/collector/exporter/otlpexporter") == "otlp_grpc"
    assert nd.module_component_type("receivers", "go.opentelemetry.io/collector/receiver/otlpreceiver") == "otlp"
    assert nd.module_component_type("extensions", "x/extension/storage/filestorage") == "file_storage"
    # unknown modules: base name less the kind suffix
    assert nd.module_component_type("receivers", "example.com/r/fooreceiver") == "foo"
    assert nd.module_component_type("extensions", "example.com/e/barextension") == "bar"


def test_canonical_component_type_and_id() -> None:
    assert nd.canonical_component_type("exporters", "otlp") == "otlp_grpc"
    assert nd.canonical_component_type("exporters", "otlphttp") == "otlp_http"
    assert nd.canonical_component_type("receivers", "otlp") == "otlp"
    assert nd.canonical_component_type("connectors", "spanmetrics") == "span_metrics"
    assert nd.component_type("otlp_grpc/tempo") == "otlp_grpc"
    assert nd.component_type("batch") == "batch"


def test_repo_manifest_components() -> None:
    assert nd.otelcol_manifest_components(MANIFEST) == {
        "receivers": {"otlp"},
        "processors": {"memory_limiter", "batch", "resource", "redaction", "tail_sampling", "transform"},
        # servicegraph is absent: the proxy does not serve connector/servicegraphconnector (see manifest)
        "connectors": {"span_metrics", "count", "forward"},
        "exporters": {"otlp_grpc", "otlp_http"},
        "extensions": {"health_check", "file_storage"},
    }


def test_repo_manifest_is_one_release() -> None:
    mods = nd.otelcol_manifest_modules(MANIFEST)
    assert {m.version for m in mods} == {"v0.165.0"}
    assert nd.otelcol_manifest_release(MANIFEST) == "v0.165.0"
    data = yaml.safe_load(MANIFEST.read_text())
    assert data["dist"]["name"] == nd.OTELCOL_BINARY
    assert MANIFEST.read_text().splitlines()[0].startswith("# Must match the collector config")


def test_manifest_parsing_uses_import_and_rejects_bad_gomod(tmp_path: Path) -> None:
    m = tmp_path / "m.yaml"
    m.write_text(
        "dist: {name: x}\n"
        "receivers:\n"
        "  - gomod: example.com/mod v1.2.3\n"
        "    import: example.com/mod/sub/kafkareceiver\n"
        "exporters:\n"
        "  - gomod: go.opentelemetry.io/collector/exporter/otlphttpexporter v0.165.0\n"
    )
    comps = nd.otelcol_manifest_components(m)
    assert comps["receivers"] == {"kafka"}
    assert comps["exporters"] == {"otlp_http"}
    assert comps["connectors"] == set()
    assert nd.otelcol_manifest_release(m) == "v0.165.0"

    m.write_text("receivers:\n  - gomod: example.com/mod\n")
    with pytest.raises(ValueError, match="gomod"):
        nd.otelcol_manifest_modules(m)


def test_prom_ldflags_are_reproducible() -> None:
    info = {"Version": "v0.316.0", "Time": "2026-11-05T15:06:51Z", "Origin": {"Hash": "deadbeef"}}
    flags = nd._prom_ldflags("3.16.0", info)
    assert flags.startswith("-s -w ")
    assert "version.Version=3.16.0" in flags
    assert "version.Revision=deadbeef" in flags
    assert "version.BuildDate=20261105-15:06:51" in flags
    assert nd._prom_ldflags("3.16.0", info) == flags


def test_stub_replaces_point_at_stand_ins() -> None:
    data = yaml.safe_load(MANIFEST.read_text())
    out = nd.with_stub_replaces(data, [nd.XPROFILE_MODULE, nd.EXPOHISTO_MODULE])
    assert out["replaces"][-2:] == [  # relative, so the build info does not name the temp folder
        f"{nd.XPROFILE_MODULE} => ../stubs/xprofile",
        f"{nd.EXPOHISTO_MODULE} => ../stubs/expohisto",
    ]
    assert nd.with_stub_replaces(data, [nd.EXPOHISTO_MODULE], "/x")["replaces"][-1].endswith("=> /x/expohisto")
    assert "replaces" not in data or data["replaces"] != out["replaces"]  # the input is not changed
    assert nd.with_stub_replaces(data, []).get("replaces") == data.get("replaces")
    for module, (files, _lost) in nd.PROXY_GAP_STUBS.items():
        assert files["go.mod"].splitlines()[1] == f"module {module}"


def test_brotli_stored_layout() -> None:
    # WBITS=16, not last, 4 nibbles of MLEN-1 = 2, uncompressed; raw bytes; empty last meta-block
    assert nd.brotli_stored(b"abc") == bytes([0x20, 0x00, 0x10]) + b"abc" + b"\x03"
    assert nd.brotli_stored(b"") == b"\x06"
    big = nd.brotli_stored(b"x" * 65536)
    assert big[:3] == bytes([0xF0, 0xFF, 0x1F]) and len(big) == 65536 + 4
    with pytest.raises(ValueError):
        nd.brotli_stored(b"x" * 65537)

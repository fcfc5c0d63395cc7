"""Pure helpers of mlobs.nativebuild: no network, no Go builds."""

from __future__ import annotations

import gzip
from pathlib import Path

import brotli
import pytest
import yaml

from mlobs.nativebuild import build, cache, collector, gobuild, prometheus, stores

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
    assert cache.prometheus_go_version(app) == go


@pytest.mark.parametrize("bad", ["3.16", "latest", "1.8.2", "3.100.0", ""])
def test_prometheus_go_version_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        cache.prometheus_go_version(bad)


@pytest.mark.parametrize(
    ("app", "go"),
    [("2.13.0", "v1.76.0"), ("v2.13.0", "v1.76.0"), ("2.0.0", "v1.63.0"), ("2.12.0", "v1.75.0"), ("2.13.1", "v1.76.1")],
)
def test_jaeger_go_version(app: str, go: str) -> None:
    assert cache.jaeger_go_version(app) == go


@pytest.mark.parametrize("bad", ["1.76.0", "3.0.0", "2.13", "latest"])
def test_jaeger_go_version_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        cache.jaeger_go_version(bad)


def test_go_module_version_per_component() -> None:
    assert cache.go_module_version("otelcol", "0.165.0") == "v0.165.0"
    assert cache.go_module_version("alertmanager", "v0.34.0") == "v0.34.0"
    assert cache.go_module_version("prometheus", "3.16.0") == "v0.316.0"
    assert cache.go_module_version("jaeger", "2.13.0") == "v1.76.0"
    assert cache.go_module_version("victorialogs", "1.52.1") == "v1.52.1"
    with pytest.raises(ValueError):
        cache.go_module_version("grafana", "13.2.0")


def test_every_tool_key_has_a_go_version() -> None:
    for key in build.KEYS:
        assert cache.go_module_version(key, "2.13.0").startswith("v")


JAEGER_CHANGELOG = """Changes by Version
==================

next release v1.x.x / v2.x.x (yyyy-mm-dd)
-------------------------------

v1.76.0 / v2.13.0 (2025-12-03)
-------------------------------

v1.75.0 / v2.12.0 (2025-11-18)
-------------------------------
"""


def test_jaeger_pair_is_checked_against_the_changelog() -> None:
    assert stores.jaeger_release_pairs(JAEGER_CHANGELOG) == {"v1.76.0": "v2.13.0", "v1.75.0": "v2.12.0"}
    stores.check_jaeger_pair(JAEGER_CHANGELOG, "2.13.0")
    with pytest.raises(gobuild.NativeBuildError, match="no release heading for v1.76.1"):
        stores.check_jaeger_pair(JAEGER_CHANGELOG, "2.13.1")
    wrong = JAEGER_CHANGELOG.replace("v1.76.0 / v2.13.0", "v1.76.0 / v2.14.0")
    with pytest.raises(gobuild.NativeBuildError, match="pairs v1.76.0 with v2.14.0, not v2.13.0"):
        stores.check_jaeger_pair(wrong, "2.13.0")


# --- cache layout ---------------------------------------------------------------------------


def test_default_cache_dir_precedence(tmp_path: Path) -> None:
    env = {"MLOBS_CACHE_DIR": str(tmp_path / "c"), "XDG_CACHE_HOME": "/x"}
    assert cache.default_cache_dir(env) == tmp_path / "c"
    assert cache.default_cache_dir({"XDG_CACHE_HOME": "/x", "HOME": "/h"}) == Path("/x/mlobs")
    assert cache.default_cache_dir({"HOME": "/h"}) == Path("/h/.cache/mlobs")
    assert cache.default_cache_dir({"MLOBS_CACHE_DIR": "", "XDG_CACHE_HOME": "", "HOME": "/h"}) == Path(
        "/h/.cache/mlobs"
    )


def test_cache_entry_naming(tmp_path: Path) -> None:
    # the names of the entries built before the split: existing caches stay valid
    assert cache.cache_entry_name("prometheus", "3.16.0") == "prometheus-3.16.0"
    assert cache.cache_entry_name("amtool", "v0.34.0") == "amtool-0.34.0"
    assert cache.cache_entry_name("otelcol-mlobs", "0.165.0", "abc123") == "otelcol-mlobs-0.165.0-abc123"
    assert cache.cache_entry_dir(tmp_path, "promtool", "3.16.0") == tmp_path / "bin" / "promtool-3.16.0"
    # the stores are named by binary and app (image) version, not by Go module version
    assert cache.cache_entry_name("jaeger", "2.13.0") == "jaeger-2.13.0"
    assert cache.cache_entry_name("victoria-logs", "v1.52.1") == "victoria-logs-1.52.1"
    entry = cache.cache_entry_dir(tmp_path, "jaeger", "2.13.0")
    assert cache.log_path(tmp_path, entry) == tmp_path / "logs" / "jaeger-2.13.0.log"


def test_manifest_hash_ignores_comments_and_output_path(tmp_path: Path) -> None:
    base = yaml.safe_load(MANIFEST.read_text())
    a = tmp_path / "a.yaml"
    a.write_text("# a comment\n" + yaml.safe_dump(base))
    b = tmp_path / "b.yaml"
    moved = {**base, "dist": {**base["dist"], "output_path": "/elsewhere"}}
    b.write_text(yaml.safe_dump(moved, sort_keys=False))
    assert collector.manifest_hash(a) == collector.manifest_hash(b) == collector.manifest_hash(MANIFEST)
    assert len(collector.manifest_hash(MANIFEST)) == 10

    c = tmp_path / "c.yaml"
    changed = {**base, "exporters": base["exporters"][:1]}
    c.write_text(yaml.safe_dump(changed))
    assert collector.manifest_hash(c) != collector.manifest_hash(a)


ALL = ["otelcol-mlobs", "prometheus", "promtool", "alertmanager", "amtool", "jaeger", "victoria-logs"]


def test_select_tools() -> None:
    assert build.select_tools(None) == ALL
    assert build.select_tools(["amtool", "otelcol"]) == ["otelcol-mlobs", "amtool"]
    assert build.select_tools(["victorialogs", "jaeger"]) == ["jaeger", "victoria-logs"]
    assert build.select_tools(["prometheus"]) == ["prometheus"]  # a binary name: that binary only
    with pytest.raises(ValueError, match="grafana"):
        build.select_tools(["grafana"])


def test_select_tools_builds_only_what_has_a_version() -> None:
    old_three = {"otelcol": "0.165.0", "prometheus": "3.16.0", "alertmanager": "0.34.0"}
    assert build.select_tools(None, old_three) == ALL[:5]
    assert build.select_tools(None, {"victorialogs": "1.52.1"}) == ["victoria-logs"]
    assert build.select_tools(None, {}) == []


def _cached(cache_dir: Path, tool: str, version: str) -> Path:
    entry = cache.cache_entry_dir(cache_dir, tool, version)
    entry.mkdir(parents=True)
    binary = entry / tool
    binary.write_text(f"#!/bin/sh\necho {tool}\n")
    binary.chmod(0o755)
    return binary


def test_ensure_binaries_reuses_cache_without_building(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Present cache entries are linked as they are: no Go toolchain is touched."""
    monkeypatch.setenv("PATH", str(tmp_path / "no-go-here"))
    cache_dir = tmp_path / "cache"
    promtool = _cached(cache_dir, "promtool", "3.16.0")
    vl = _cached(cache_dir, "victoria-logs", "1.52.1")
    bin_dir = tmp_path / ".bin"
    out = build.ensure_binaries({"prometheus": "3.16.0"}, bin_dir, cache_dir, only=["promtool"])
    assert out == {"promtool": bin_dir.resolve() / "promtool"}
    assert (bin_dir / "promtool").is_symlink()
    assert (bin_dir / "promtool").resolve() == promtool.resolve()
    # without `only`, the keys of `versions` say what is ensured
    out = build.ensure_binaries({"victorialogs": "v1.52.1"}, bin_dir, cache_dir)
    assert out == {"victoria-logs": bin_dir.resolve() / "victoria-logs"}
    assert (bin_dir / "victoria-logs").resolve() == vl.resolve()


def test_ensure_binaries_needs_versions(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="alertmanager"):
        build.ensure_binaries({"prometheus": "3.16.0"}, tmp_path / "b", tmp_path / "c", only=["amtool"])
    with pytest.raises(ValueError, match="unknown version key.*tempo"):
        build.ensure_binaries({"tempo": "3.0.3"}, tmp_path / "b", tmp_path / "c")


def test_failed_build_names_the_step_and_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_go = tmp_path / "gobin" / "go"
    fake_go.parent.mkdir()
    fake_go.write_text("#!/bin/sh\necho 'go: refusing, as a test' >&2\nexit 3\n")
    fake_go.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_go.parent}:/usr/bin:/bin")
    cache_dir = tmp_path / "cache"
    with pytest.raises(gobuild.NativeBuildError) as info:
        build.ensure_binaries({"victorialogs": "1.52.1"}, tmp_path / ".bin", cache_dir)
    msg = str(info.value)
    log = cache_dir / "logs" / "victoria-logs-1.52.1.log"
    assert "go mod download github.com/VictoriaMetrics/VictoriaLogs@v1.52.1" in msg
    assert str(log) in msg and "refusing, as a test" in log.read_text()
    assert not (cache_dir / "bin" / "victoria-logs-1.52.1").exists()
    assert list((cache_dir / "tmp").iterdir()) == []  # the scratch folder is removed


# --- the go build helper --------------------------------------------------------------------


def test_go_build_args_in_a_module_copy() -> None:
    assert gobuild.go_build_args("./cmd/prometheus", output=Path("/w/out/prometheus"), ldflags="-s -w -X a.b=c") == [
        "go", "build", "-trimpath", "-tags", "netgo", "-ldflags=-s -w -X a.b=c", "-o", "/w/out/prometheus",
        "./cmd/prometheus",
    ]  # fmt: skip


def test_go_build_args_install() -> None:
    pkg = "github.com/VictoriaMetrics/VictoriaLogs/app/victoria-logs@v1.52.1"
    assert gobuild.go_build_args(pkg, tags=("netgo", "osusergo")) == [
        "go", "install", "-trimpath", "-tags", "netgo,osusergo", "-ldflags=-s -w", pkg,
    ]  # fmt: skip
    assert gobuild.go_build_args("x/cmd/builder@v0.165.0", tags=(), ldflags="") == [
        "go", "install", "-trimpath", "x/cmd/builder@v0.165.0",
    ]  # fmt: skip


def test_tree_env_adds_mod_mod_and_turns_workspaces_off() -> None:
    assert gobuild.tree_env({"GOFLAGS": "-buildvcs=false"}) == {"GOFLAGS": "-buildvcs=false -mod=mod", "GOWORK": "off"}
    assert gobuild.tree_env({}) == {"GOFLAGS": "-mod=mod", "GOWORK": "off"}


def test_prom_ldflags_are_reproducible() -> None:
    info = {"Version": "v0.316.0", "Time": "2026-11-05T15:06:51Z", "Origin": {"Hash": "deadbeef"}}
    flags = prometheus.prom_ldflags("3.16.0", info)
    assert flags.startswith("-s -w ")
    assert "version.Version=3.16.0" in flags
    assert "version.Revision=deadbeef" in flags
    assert "version.BuildDate=20261105-15:06:51" in flags
    assert prometheus.prom_ldflags("3.16.0", info) == flags
    assert "version.Revision=v0.316.0" in prometheus.prom_ldflags("3.16.0", {"Version": "v0.316.0"})


def test_store_ldflags() -> None:
    info = {"Version": "v1.76.0", "Time": "2025-12-03T16:07:08Z"}
    flags = stores.jaeger_ldflags("2.13.0", info).split(" -X ")
    assert flags[0] == "-s -w"
    pkg = "github.com/jaegertracing/jaeger/internal/version"
    # `jaeger version` reports gitVersion v2.13.0, as the Makefile's own build check wants
    assert flags[1:] == [f"{pkg}.commitSHA=v1.76.0", f"{pkg}.latestVersion=v2.13.0", f"{pkg}.date=2025-12-03T16:07:08Z"]
    vl = stores.victorialogs_ldflags("1.52.1", {"Version": "v1.52.1", "Time": "2026-07-16T02:20:47Z"})
    assert vl == (
        "-s -w -X github.com/VictoriaMetrics/VictoriaMetrics/lib/buildinfo.Version="
        "victoria-logs-20260716-022047-tags-v1.52.1"
    )


# --- Alertmanager's UI placeholder ----------------------------------------------------------


def test_am_ui_placeholder_round_trips(tmp_path: Path) -> None:
    files = prometheus.am_ui_placeholder_files()
    page = prometheus.AM_UI_PLACEHOLDER.encode()
    assert files["index.html"] == page
    assert gzip.decompress(files["index.html.gz"]) == page
    assert brotli.decompress(files["index.html.br"]) == page
    assert prometheus.am_ui_placeholder_files() == files  # reproducible (gzip without mtime)

    tree = tmp_path / "src"
    (tree / "ui" / "app").mkdir(parents=True)
    prometheus.write_am_ui_placeholder(tree)
    assert sorted(p.name for p in (tree / "ui" / "app" / "dist").iterdir()) == sorted(files)
    (tree / "ui" / "app" / "dist" / "index.html").write_text("the real UI")
    prometheus.write_am_ui_placeholder(tree)  # a module that has its UI keeps it
    assert (tree / "ui" / "app" / "dist" / "index.html").read_text() == "the real UI"


# --- the collector manifest -----------------------------------------------------------------


def test_module_component_type() -> None:
    mct = collector.module_component_type
    assert mct("exporters", "go.opentelemetry.io/collector/exporter/otlpexporter") == "otlp_grpc"
    assert mct("receivers", "go.opentelemetry.io/collector/receiver/otlpreceiver") == "otlp"
    assert mct("extensions", "x/extension/storage/filestorage") == "file_storage"
    # unknown modules: base name less the kind suffix
    assert mct("receivers", "example.com/r/fooreceiver") == "foo"
    assert mct("extensions", "example.com/e/barextension") == "bar"


def test_canonical_component_type_and_id() -> None:
    assert collector.canonical_component_type("exporters", "otlp") == "otlp_grpc"
    assert collector.canonical_component_type("exporters", "otlphttp") == "otlp_http"
    assert collector.canonical_component_type("receivers", "otlp") == "otlp"
    assert collector.canonical_component_type("connectors", "spanmetrics") == "span_metrics"
    assert collector.component_type("otlp_grpc/tempo") == "otlp_grpc"
    assert collector.component_type("batch") == "batch"


def test_repo_manifest_components() -> None:
    assert collector.otelcol_manifest_components(MANIFEST) == {
        "receivers": {"otlp"},
        "processors": {"memory_limiter", "batch", "resource", "redaction", "tail_sampling", "transform",
                       "groupbyattrs"},
        # servicegraph is absent: the proxy does not serve connector/servicegraphconnector (see manifest)
        "connectors": {"span_metrics", "count", "forward"},
        "exporters": {"otlp_grpc", "otlp_http"},
        "extensions": {"health_check", "file_storage", "bearertokenauth", "pprof"},
    }


def test_repo_manifest_is_one_release() -> None:
    mods = collector.otelcol_manifest_modules(MANIFEST)
    assert {m.version for m in mods} == {"v0.165.0"}
    assert collector.otelcol_manifest_release(MANIFEST) == "v0.165.0"
    data = yaml.safe_load(MANIFEST.read_text())
    assert data["dist"]["name"] == collector.OTELCOL_BINARY
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
    comps = collector.otelcol_manifest_components(m)
    assert comps["receivers"] == {"kafka"}
    assert comps["exporters"] == {"otlp_http"}
    assert comps["connectors"] == set()
    assert collector.otelcol_manifest_release(m) == "v0.165.0"

    m.write_text("receivers:\n  - gomod: example.com/mod\n")
    with pytest.raises(ValueError, match="gomod"):
        collector.otelcol_manifest_modules(m)


# --- stand-ins for modules the proxy refuses ------------------------------------------------


def test_stub_replaces_point_at_stand_ins() -> None:
    data = yaml.safe_load(MANIFEST.read_text())
    xprofile, expohisto = collector.XPROFILE_MODULE, collector.EXPOHISTO_MODULE
    out = collector.with_stub_replaces(data, [xprofile, expohisto])
    assert out["replaces"][-2:] == [  # relative, so the build info does not name the temp folder
        f"{xprofile} => ../stubs/xprofile",
        f"{expohisto} => ../stubs/expohisto",
    ]
    assert collector.with_stub_replaces(data, [expohisto], "/x")["replaces"][-1].endswith("=> /x/expohisto")
    assert "replaces" not in data or data["replaces"] != out["replaces"]  # the input is not changed
    assert collector.with_stub_replaces(data, []).get("replaces") == data.get("replaces")


def test_stand_ins_are_go_modules_of_the_replaced_path(tmp_path: Path) -> None:
    readme = (collector.STUBS_DIR / "README.md").read_text()
    for module in collector.PROXY_GAP_STUBS:
        folder = collector.STUBS_DIR / collector.stub_folder(module)
        lines = (folder / "go.mod").read_text().splitlines()
        assert f"module {module}" in lines
        assert list(folder.rglob("*.go")), f"{folder} has no Go sources"
        assert f"`{collector.stub_folder(module)}/`" in readme and module in readme
        copied = collector.copy_stub(module, tmp_path / "stubs")
        assert copied == tmp_path / "stubs" / collector.stub_folder(module)
        assert sorted(p.relative_to(copied) for p in copied.rglob("*") if p.is_file()) == sorted(
            p.relative_to(folder) for p in folder.rglob("*") if p.is_file()
        )
    with pytest.raises(gobuild.NativeBuildError, match="missing"):
        collector.copy_stub("example.com/not/a/stub", tmp_path / "stubs")

"""Native binaries built from the Go module proxy, reproducibly, cached by version.

``ensure_binaries`` builds (or takes from the cache) ``otelcol-mlobs``, ``prometheus``,
``promtool``, ``alertmanager``, ``amtool``, ``jaeger`` and ``victoria-logs`` and links them into
``.bin/``. The command is ``mlobs native-deps``. By concern:

* ``cache``: versions (app version -> Go module version), the cache layout, its locks;
* ``gobuild``: the logged build steps and the one ``go build`` helper;
* ``collector``: the collector (ocb + ``otel-collector/builder-config.yaml``; ``stubs/`` holds the
  Go stand-ins for modules the proxy refuses);
* ``prometheus``: Prometheus, promtool, Alertmanager, amtool;
* ``stores``: the trace and log stores, Jaeger v2 and VictoriaLogs;
* ``build``: the list of binaries and ``ensure_binaries``.
"""

from mlobs.nativebuild.build import TOOLS, ensure_binaries, select_tools
from mlobs.nativebuild.cache import cache_entry_dir, default_cache_dir
from mlobs.nativebuild.collector import otelcol_manifest_components
from mlobs.nativebuild.gobuild import NativeBuildError

__all__ = [
    "TOOLS",
    "NativeBuildError",
    "cache_entry_dir",
    "default_cache_dir",
    "ensure_binaries",
    "otelcol_manifest_components",
    "select_tools",
]

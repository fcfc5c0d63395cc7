"""``telemetrygen``, the load generator of ``mlobs bench`` (not part of the stack).

Module ``github.com/open-telemetry/opentelemetry-collector-contrib/cmd/telemetrygen``: its own Go
module, whose program is the module root. Its go.mod has no ``replace`` directives (it says so), so
``go install module@version`` builds it. It is pinned here, not in stack.yaml: the stack does not run
it. Contrib's release of it lags the collector's; v0.161.0 is what the proxy serves here.
"""

from __future__ import annotations

from pathlib import Path

from mlobs.nativebuild.cache import go_module_version
from mlobs.nativebuild.gobuild import STRIP, Steps, read_info, revision

TELEMETRYGEN_MODULE = "github.com/open-telemetry/opentelemetry-collector-contrib/cmd/telemetrygen"
TELEMETRYGEN_BINARY = "telemetrygen"
#: The pinned version (`make bench-deps` builds it; `mlobs bench` builds it when missing).
TELEMETRYGEN_VERSION = "0.161.0"


def build_telemetrygen(steps: Steps, version: str) -> Path:
    go_version = go_module_version("telemetrygen", version)
    info = read_info(steps.download(TELEMETRYGEN_MODULE, go_version))
    steps.log_line(f"telemetrygen {go_version} at {revision(info)}")
    target = f"{TELEMETRYGEN_MODULE}@{go_version}"
    return steps.go_build(f"go install {target}", target, steps.work / "out" / TELEMETRYGEN_BINARY, ldflags=STRIP)

"""The log counts (count connector -> log_records_total) as rendered: one point per series per batch,
stamped with the collector's clock, so Prometheus' delta-to-cumulative neither drops a count nor
refuses one (HTTP 400 "duplicate sample for timestamp"). tests/native/test_log_counts.py checks it
on the real collector and Prometheus."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mlobs import config, kubernetes, render

ROOT = render.ROOT
STACK = config.load(ROOT / "stack.yaml")


def configs(tmp: Path) -> dict[str, dict]:
    native = render.native_target(STACK, render.BACKENDS, tmp / "native", tmp / "data")
    return {
        "compose": yaml.safe_load(render.render(render.compose_target(STACK))["otel-collector/config.yaml"]),
        "native": yaml.safe_load(render.render(native)["otel-collector/config.yaml"]),
        "committed": yaml.safe_load((ROOT / "otel-collector/config.yaml").read_text()),
    }


@pytest.mark.parametrize("which", ["compose", "native", "committed"])
def test_the_count_branch_compacts_each_batch_and_counts_at_the_collectors_time(tmp_path: Path, which: str) -> None:
    doc = configs(tmp_path)[which]
    pipes = doc["service"]["pipelines"]
    # the branch is fed by the batch processor of the logs pipeline: one ConsumeLogs per batch
    logs = pipes["logs"]
    assert logs["processors"][-1] == "batch" and "forward/logcount" in logs["exporters"]
    branch = pipes["logs/count"]
    assert branch["receivers"] == ["forward/logcount"] and branch["exporters"] == ["count"]
    # the count connector makes a point per ResourceLogs: the last processor before it merges them per
    # resource (groupbyattrs without keys: compaction, never a regrouping by attributes)
    last = branch["processors"][-1]
    assert last.split("/")[0] == "groupbyattrs"
    assert not (doc["processors"][last] or {}).get("keys"), "keys would move attributes into the resource"
    # each point is stamped with the time its records are counted, not with the senders' clocks
    statements = [s for name in branch["processors"] if name.startswith("transform/")
                  for s in doc["processors"][name].get("log_statements", [])]
    assert "set(log.time, Now())" in statements
    # only the counting copy is changed: the stores get the records as sent
    for name, p in pipes.items():
        if name != "logs/count":
            assert not any(x.startswith(("groupbyattrs", "transform/severity")) for x in p["processors"]), name


def test_the_kubernetes_gateway_counts_the_same_way() -> None:
    files = kubernetes.render_files(STACK)
    text = files["otel-collector.yaml"]
    assert "set(log.time, Now())" in text and "groupbyattrs/compact" in text

"""The users' Docker CI workflow: valid against the GitHub workflow schema, and it runs the suite."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

WORKFLOW = Path(__file__).resolve().parents[2] / ".github" / "workflows" / "e2e.yml"


def check(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema",
                           "vendor.github-workflows", str(path)], capture_output=True, text=True)


def test_workflow_validates_against_the_github_schema() -> None:
    r = check(WORKFLOW)
    assert r.returncode == 0, r.stdout + r.stderr


def test_schema_check_catches_a_broken_workflow(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("on: push\njobs:\n  x:\n    runs-on: ubuntu-24.04\n    steps: not-a-list\n")
    assert check(bad).returncode != 0


def test_workflow_starts_the_docker_stack_runs_the_suite_and_cleans_up() -> None:
    steps = yaml.safe_load(WORKFLOW.read_text())["jobs"]["e2e"]["steps"]
    runs = [s.get("run", "") for s in steps]
    assert "make up RUNTIME=docker" in runs
    assert "make e2e" in runs
    cleanup = next(s for s in steps if s.get("run") == "make clean RUNTIME=docker")
    assert cleanup.get("if") == "always()"


def test_test_file_names_are_unique() -> None:
    """pytest imports test files by their basename (no packages under tests/): two files of one name in
    two folders stop the whole collection."""
    root = Path(__file__).resolve().parents[1]
    names: dict[str, list[str]] = {}
    for f in root.rglob("test_*.py"):
        names.setdefault(f.name, []).append(str(f.relative_to(root)))
    assert not {n: p for n, p in names.items() if len(p) > 1}

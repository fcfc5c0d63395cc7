"""stack.yaml fuzzed: random documents, random sections, and mutations of the real stack.yaml
(a random node replaced by a random value of a random type, keys dropped, unknown keys added).

Whatever the input, the loader answers with a valid Stack or with the project's own StackError,
one line per problem: ``<file>: <path>: <what is wrong>``, naming the value where there is one.
Never a traceback, never another exception. Through the CLI (`mlobs validate`, `mlobs render`
on a temp copy) an invalid file exits 2 and nothing is written.

Deterministic (``derandomize``): the same examples on every run, so CI is stable. To hunt for more,
``MLOBS_FUZZ_EXAMPLES=5000 pytest tests/unit/test_fuzz_stack.py`` runs that many random examples per test.
"""

from __future__ import annotations

import copy
import datetime
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from mlobs import config, kubernetes, render
from mlobs.cli import app

ROOT = Path(__file__).resolve().parents[2]
STACK = ROOT / "stack.yaml"
BASE: dict[str, Any] = yaml.safe_load(STACK.read_text())
SOURCE = "stack.yaml"
EXAMPLES = int(os.environ.get("MLOBS_FUZZ_EXAMPLES", "0")) or None


def fuzz_settings(examples: int) -> settings:
    return settings(max_examples=EXAMPLES or examples, derandomize=EXAMPLES is None, database=None, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])


# ---- values: every YAML type, with the edges that broke the loader before --------------------------

EDGE_STRINGS = [
    "", " ", "0s", "0", "500ms", "1h30m", "30m1h", "7d", "1.5s", "-1s", "9" * 25 + "s", "9" * 5000 + "h",
    "2562047h", "2562048h", "a{4294967296}", "(" * 600 + ")" * 600, "[", "(?P<x", "^user\\.email$",
    "http://[::1", "http://127.0.0.1:99999/healthz", "ftp://x", "http://", "tempo", "jaeger", "debug",
    "otlp_http/vendor", "Bad Name", "traces", "v1.2.3", "1.2.3", "busybox:1.37.0", "\x00", "\ufeff",
    "é", "${env:X}", "true", "null", "~", "- a", "{a: 1}", "*alias", "x" * 300,
]
EDGE_NUMBERS = [0, 1, -1, 65535, 65536, 2**31, 2**63, 10**30, 0.5, 1e308,
                float("inf"), float("-inf"), float("nan"), 100.0000001, -0.0]
# over 4300 digits: repr() and str() of it raise ValueError (built lazily: hypothesis reprs its strategies)
HUGE_INTS = st.sampled_from([4400, -4400]).map(lambda n: 10 ** abs(n) * (1 if n > 0 else -1))

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=24),
    st.sampled_from(EDGE_STRINGS),
    st.sampled_from(EDGE_NUMBERS),
    HUGE_INTS,
    st.dates(min_value=datetime.date(1900, 1, 1)),
    st.binary(max_size=8),
)
keys = st.one_of(st.text(max_size=12), st.sampled_from(list(BASE)), st.integers(-3, 3), st.booleans())
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=10,
)


# ---- the real stack.yaml, mutated ----------------------------------------------------------------

def _nodes(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield path
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _nodes(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _nodes(v, (*path, i))


PATHS = [p for p in _nodes(BASE) if p]


def _get(doc: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        doc = doc[part]
    return doc


MAPPINGS = [p for p in _nodes(BASE) if isinstance(_get(BASE, p), dict)]

mutation = st.one_of(
    st.tuples(st.just("set"), st.sampled_from(PATHS), values),
    st.tuples(st.just("drop"), st.sampled_from(PATHS), st.none()),
    st.tuples(st.just("add"), st.sampled_from(MAPPINGS), st.tuples(st.text(min_size=1, max_size=12), values)),
)


def mutate(ops: list[tuple[str, tuple[Any, ...], Any]]) -> tuple[dict[str, Any], list[tuple[Any, ...]]]:
    """Apply the mutations to a copy of stack.yaml; returns it and the paths touched."""
    doc = copy.deepcopy(BASE)
    touched: list[tuple[Any, ...]] = []
    for op, path, arg in ops:
        try:
            parent = _get(doc, path[:-1]) if op != "add" else _get(doc, path)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation replaced or dropped the parent
        if op == "add":
            if not isinstance(parent, dict):
                continue
            key, value = arg
            key = key if key not in parent else f"{key}_unknown"
            parent[key] = value
            touched.append((*path, key))
        elif isinstance(parent, dict | list):
            try:
                if op == "set":
                    parent[path[-1]] = arg
                else:
                    del parent[path[-1]]
            except (KeyError, IndexError, TypeError):
                continue
            touched.append(path)
    return doc, touched


# ---- the invariant ---------------------------------------------------------------------------------

LINE = re.compile(rf"^{re.escape(SOURCE)}: \S.*?: \S")


def _related(rest: str, touched: list[tuple[Any, ...]]) -> bool:
    """The line (after ``<file>: ``) names a mutated node, one inside it, or one of its ancestors
    (a model's own check, e.g. two ports alike, names the section)."""
    if rest.startswith("(top level): "):
        return True
    for path in touched:
        if rest.startswith(config.dotted(path) + "."):
            return True
        if any(rest.startswith(config.dotted(path[:i]) + ": ") for i in range(1, len(path) + 1)):
            return True
    return False


def check(doc: Any, touched: list[tuple[Any, ...]] | None = None) -> config.Stack | None:
    """Valid, or a StackError whose every line names a path and says what is wrong; nothing else."""
    try:
        return config.parse(doc, SOURCE)
    except config.StackError as e:
        message = str(e)
    # any other exception propagates: that is the failure this test exists for
    lines = message.splitlines()
    assert lines, "an empty error message"
    assert len(message) < 20_000, f"an error message of {len(message)} characters"
    for line in lines:
        if line == f"{SOURCE}: must be a mapping of sections (components, ports, ...)":
            assert not isinstance(doc, dict)
            continue
        assert LINE.match(line), f"not '<file>: <path>: <problem>': {line!r}"
        assert "Traceback" not in line
        if touched is not None:
            rest = line.removeprefix(f"{SOURCE}: ")
            assert _related(rest, touched), f"{line!r} names none of the mutated paths {touched}"
    if touched is not None:
        for path in touched:  # a scalar put in the wrong place is named in the message
            value = _get_or(doc, path)
            here = [ln for ln in lines if ln.startswith(f"{SOURCE}: {config.dotted(path)}: ")]
            if here and _is_scalar(value):
                named = config._short(value, 30).removesuffix("...")[:30]
                assert any(named in ln or "unknown key" in ln or "required but missing" in ln for ln in here), (
                    f"the value at {config.dotted(path)} ({named}) is not in {here}")
    return None


def _is_scalar(v: Any) -> bool:
    return v is not None and not isinstance(v, dict | list | bytes)


def _get_or(doc: Any, path: tuple[Any, ...]) -> Any:
    try:
        return _get(doc, path)
    except (KeyError, IndexError, TypeError):
        return None


# ---- the model: random documents, sections, mutations ---------------------------------------------


@fuzz_settings(400)
@given(st.one_of(values, st.dictionaries(keys, values, max_size=6)))
def test_random_documents_are_refused_with_a_validation_error(doc: Any) -> None:
    check(doc)


@fuzz_settings(600)
@given(st.sampled_from(sorted(set(BASE) | set(config.Stack.model_fields))), values)
def test_a_random_section_is_refused_with_its_path(section: str, value: Any) -> None:
    doc = copy.deepcopy(BASE)
    doc[section] = value
    check(doc, [(section,)])


@fuzz_settings(1500)
@given(st.lists(mutation, min_size=1, max_size=4))
def test_mutated_stack_yaml_gives_a_validation_error_naming_the_path(ops: list) -> None:
    doc, touched = mutate(ops)
    stack = check(doc, touched)
    if stack is not None:
        # accepted: then it renders too (a value the loader lets through must not crash the renderer)
        render.render(render.compose_target(stack))


@fuzz_settings(300)
@given(st.sampled_from(MAPPINGS), st.text(min_size=1, max_size=12).filter(lambda k: not k.isspace()), values)
def test_an_unknown_key_is_named(where: tuple[Any, ...], key: str, value: Any) -> None:
    doc = copy.deepcopy(BASE)
    parent = _get(doc, where)
    free_form = (where[-1:] in (("config",), ("env",), ("prices",), ("blocked_value_patterns",))
                 or where[:1] == ("extra_exporters",))
    if key in parent or free_form:
        return
    parent[key] = value
    with pytest.raises(config.StackError) as e:
        config.parse(doc, SOURCE)
    assert f"{SOURCE}: {config.dotted((*where, key))}: unknown key" in str(e.value)


# ---- the files: the CLI on a temp copy ------------------------------------------------------------


@contextmanager
def nothing_written() -> Iterator[list[str]]:
    """Every writer of the CLI replaced by one that records the call: a refused file writes nothing."""
    calls: list[str] = []
    real = (render.write, kubernetes.write)

    def spy(name: str):
        def write(files: dict[str, str], folder: Path) -> list[Path]:
            calls.append(f"{name}({len(files)} files into {folder})")
            return []
        return write

    render.write, kubernetes.write = spy("render.write"), spy("kubernetes.write")
    try:
        yield calls
    finally:
        render.write, kubernetes.write = real


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _dump(doc: Any) -> bytes:
    return yaml.safe_dump(doc, allow_unicode=True, sort_keys=False).encode()


RAW_FILES = [
    b"", b"\xff\xfe\x00garbage", b"\x00\x01\x02", b"components: [unclosed\n", b"a: " + b"[" * 3000 + b"]" * 3000,
    b"ports:\n  grafana: " + b"9" * 5000 + b"\n", b"extra_exporters:\n  - {name: otlp/x, signals: [traces], "
    b"config: &a {k: *a}}\n", b"- just\n- a list\n", b"!!python/object:os.system {}\n", b"? [a, b]\n: c\n",
    b"components: &c\n  <<: *c\n",
]


@pytest.fixture(scope="module")
def runner() -> CliRunner:
    return CliRunner()


def _run_cli(runner: CliRunner, tmp: Path, content: bytes) -> None:
    stack_file = tmp / "stack.yaml"
    stack_file.write_bytes(content)
    before = _tree(tmp)
    with nothing_written() as calls:
        for args in (["validate", "--stack", str(stack_file)], ["render", "--stack", str(stack_file)]):
            result = runner.invoke(app, args)
            assert "Traceback" not in result.output
            if result.exit_code == 0 and args[0] == "validate":
                return  # a mutation that is still valid: render would write, so it is not run
            assert result.exit_code == 2, (args, result.exit_code, result.output, result.exception)
            assert isinstance(result.exception, SystemExit), repr(result.exception)
            assert "stack.yaml is invalid; nothing was written." in result.output, result.output
            assert str(stack_file) in result.output, "the message names the file"
        assert calls == [], f"a refused stack.yaml was written: {calls}"
    assert _tree(tmp) == before, "the temp folder changed"


@pytest.mark.parametrize("content", RAW_FILES, ids=range(len(RAW_FILES)))
def test_cli_refuses_broken_files_and_writes_nothing(runner: CliRunner, tmp_path: Path, content: bytes) -> None:
    _run_cli(runner, tmp_path, content)


@fuzz_settings(150)
@given(st.lists(mutation, min_size=1, max_size=3))
def test_cli_refuses_mutated_files_and_writes_nothing(runner: CliRunner, tmp_path_factory, ops: list) -> None:
    doc, _ = mutate(ops)
    try:
        content = _dump(doc)
    except ValueError:  # an integer of over 4300 digits cannot be written (RAW_FILES has one as text)
        assume(False)
    _run_cli(runner, tmp_path_factory.mktemp("fuzz"), content)


def test_the_writers_are_the_ones_the_cli_calls(runner: CliRunner, tmp_path: Path) -> None:
    """The spy is not vacuous: a valid stack does reach render.write."""
    stack_file = tmp_path / "stack.yaml"
    stack_file.write_bytes(STACK.read_bytes())
    with nothing_written() as calls:
        result = runner.invoke(app, ["render", "--stack", str(stack_file), "--target", "compose"])
    assert result.exit_code == 0, result.output
    assert calls and calls[0].startswith("render.write(")

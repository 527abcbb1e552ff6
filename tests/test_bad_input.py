"""Bad input, everywhere a user gives some: each broken suite or data file gets exit status 2,
one clear line per problem naming the file and the field or line, no traceback, and nothing
written. Property tests (hypothesis) feed the suite loader and the row reader arbitrary input."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.cli import main
from harness.data import MAX_ROW_BYTES, read_jsonl
from harness.errors import DataError, UserError
from harness.plugins import PluginHost
from harness.suite import load_suite
from harness_plugins.evaluators.perplexity import TextRow
from harness_plugins.tuners.rows import PreferenceRow, SFTRow

from .conftest import small_suite

# (what to change in the small suite, what the one error line must contain)
SUITES = {
    "toml syntax": (lambda t: t.replace('name = "small"', 'name = "small'),
                    "TOML syntax error: Illegal character '\\n' (at line 3, column 14)"),
    "unknown table": (lambda t: t + '\n[extras]\nx = 1\n', "[extras]: Extra inputs are not permitted"),
    "unknown key": (lambda t: t.replace('source = "builtin:tiny-random"',
                                        'source = "builtin:tiny-random"\ncolour = "red"'),
                    "[[models]] #1 ('tiny') field 'colour': Extra inputs are not permitted"),
    "wrong type": (lambda t: t.replace("seed = 0", 'seed = "zero"'),
                   "[suite] field 'seed': Input should be a valid integer"),
    "unknown tuner": (lambda t: t.replace('method = "lora"', 'method = "lorra"'),
                      "field 'method': unknown tuner 'lorra'; known:"),
    "unknown evaluator": (lambda t: t.replace('kind = "perplexity"', 'kind = "perplexitty"'),
                          "field 'kind': unknown evaluator 'perplexitty'; known:"),
    "unknown option": (lambda t: t.replace("steps = 3,", "stepz = 3,"),
                       "field 'options.stepz': Extra inputs are not permitted"),
    "missing data": (lambda t: t.replace("data/mc.jsonl", "data/nope.jsonl"),
                     "field 'data': no such file or folder: data/nope.jsonl"),
    "duplicate names": (lambda t: t.replace('name = "text"', 'name = "mc"'),
                        "field 'name': duplicate name, first used by [[evaluators]] #1"),
    "no models": (lambda t: t.replace('[[models]]\nname = "tiny"\nsource = "builtin:tiny-random"\n',
                                      ""), "[[models]]: at least one [[models]] entry is required"),
    "no evaluators": (lambda t: t.split("[[evaluators]]")[0] + '[backend]\nkind = "hf"\n',
                      "[[evaluators]]: at least one [[evaluators]] entry is required"),
    "unknown model source": (lambda t: t.replace("builtin:tiny-random", "nowhere:tiny"),
                             "field 'source': unknown model_source 'nowhere'"),
}

# (file, bytes to write, what the one error line must contain)
ROWS = {
    "empty file": ("data/text.jsonl", b"", "field 'data': data file is empty: data/text.jsonl"),
    "invalid json": ("data/text.jsonl", b'{"text": "a"}\n{"text": \n',
                     "text.jsonl:2: invalid JSON"),
    "missing field": ("data/sft.jsonl", b'{"prompt": "only a prompt"}\n',
                      "sft.jsonl:1: a row needs 'messages', or both 'prompt' and 'completion'"),
    "empty text": ("data/text.jsonl", b'{"text": ""}\n',
                   "text.jsonl:1: field 'text': String should have at least 1 character"),
    "wrong type": ("data/mc.jsonl", b'{"question": "q", "choices": ["a", "b"], "answer": "a"}\n',
                   "mc.jsonl:1: 'answer' must be the index of the right choice"),
    "invalid utf-8": ("data/text.jsonl", b'{"text": "caf\xe9"}\n', "text.jsonl:1: not valid UTF-8"),
    "not an object": ("data/sft.jsonl", b'["a", "b"]\n', "sft.jsonl:1: expected a JSON object"),
    "over-long row": ("data/text.jsonl", b'{"text": "' + b"a" * (MAX_ROW_BYTES + 1) + b'"}\n',
                      "text.jsonl:1: row is 8,388,621 bytes; a row may hold at most 8,388,608"),
}


def _check(tmp_path: Path, suite: Path, expected: str) -> None:
    for command in ("validate", "run"):
        result = CliRunner().invoke(main, [command, str(suite)])
        assert result.exit_code == 2, (command, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"harness: error: {suite}"), result.output
        assert expected in lines[0], lines[0]
        assert "Traceback" not in result.output
        assert not (tmp_path / "results").exists()  # nothing written


@pytest.mark.parametrize("case", sorted(SUITES))
def test_broken_suite(tmp_path, case):
    edit, expected = SUITES[case]
    suite = small_suite(tmp_path)
    suite.write_text(edit(suite.read_text()))
    _check(tmp_path, suite, expected)


@pytest.mark.parametrize("kind, table, package, install", [
    ("vllm", "backend", "vllm", "pip install 'harness[vllm]'"),
    ("ray", "executor", "ray", "pip install 'harness[ray]'"),
])
def test_component_whose_package_is_missing(tmp_path, monkeypatch, kind, table, package,
                                            install):
    """A backend or executor whose library is not installed is named at validation."""
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == package else find_spec(name, *args))
    suite = small_suite(tmp_path, extra=f'\n[{table}]\nkind = "{kind}"\n' if table == "executor"
                        else "")
    if table == "backend":
        suite.write_text(suite.read_text().replace('kind = "hf"\noptions = { batch_size = 4 }',
                                                   f'kind = "{kind}"'))
    _check(tmp_path, suite, f"[{table}] field 'kind': the {table} {kind!r} needs the Python "
                            f"package {package!r}, which is not installed: {install}")


@pytest.mark.parametrize("case", sorted(ROWS))
def test_broken_data_file(tmp_path, case):
    name, content, expected = ROWS[case]
    suite = small_suite(tmp_path)
    (tmp_path / name).write_bytes(content)
    _check(tmp_path, suite, expected)


# -- property tests ----------------------------------------------------------------------------

HOST = PluginHost.load(entry_points=False)
toml_scalars = st.one_of(st.integers(), st.floats(allow_nan=False), st.booleans(),
                         st.text(max_size=12))
toml_values = st.recursive(toml_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=8)


def _toml(value) -> str:
    import json

    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)


def _load_or_user_error(text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "suite.toml"
        path.write_text(text, encoding="utf-8")
        try:
            load_suite(path, HOST)
        except UserError as exc:
            assert exc.lines and all(line.startswith(f"{path}") for line in exc.lines), exc.lines


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=200))
def test_any_text_as_a_suite_loads_or_is_a_user_error(text):
    _load_or_user_error(text)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(table=st.sampled_from(["suite", "models", "tuners", "evaluators", "backend"]),
       key=st.sampled_from(["name", "kind", "method", "data", "source", "seed", "store",
                            "options", "role", "extra"]),
       value=toml_values)
def test_any_field_value_loads_or_is_a_user_error(table, key, value):
    """A valid suite with one field set to an arbitrary TOML value."""
    entries = {
        "suite": {"name": "s"},
        "models": [{"name": "m", "source": "builtin:tiny-random"}],
        "evaluators": [{"name": "e", "kind": "perplexity", "data": "lm_eval:x"}],
    }
    if table in ("tuners",):
        entries["tuners"] = [{"name": "t", "method": "lora", "data": "lm_eval:x"}]
    if table == "backend":
        entries["backend"] = {"kind": "hf"}
    target = entries[table][0] if isinstance(entries[table], list) else entries[table]
    target[key] = value
    lines = []
    for name, content in entries.items():
        for item in content if isinstance(content, list) else [content]:
            lines.append(f"[[{name}]]" if isinstance(content, list) else f"[{name}]")
            lines += [f"{json_key(k)} = {_toml(v)}" for k, v in item.items()]
    _load_or_user_error("\n".join(lines) + "\n")


def json_key(key: str) -> str:
    import json

    return json.dumps(key)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.binary(max_size=60), max_size=6),
       st.sampled_from([TextRow, SFTRow, PreferenceRow]))
def test_any_bytes_as_rows_read_or_name_their_line(lines, schema):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rows.jsonl"
        path.write_bytes(b"\n".join(lines))
        try:
            rows = read_jsonl(path, schema)
        except DataError as exc:
            assert str(exc).startswith(str(path)) and "\n" not in str(exc)
        else:
            assert rows and all(isinstance(row, schema) for _, row in rows)

"""Bad input, everywhere a user gives some: each broken suite or data file gets exit status 2,
one clear line per problem naming the file and the field or line, no traceback, and nothing
written. Property tests (hypothesis) feed the suite loader and the row reader arbitrary input."""

from __future__ import annotations

import os
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
    # numbers: finite only (TOML has inf and nan), seeds in numpy's and torch's range
    "lr = inf": (lambda t: t.replace("lr = 1e-2", "lr = inf"),
                 "[[tuners]] #1 ('lora-a') field 'options.lr': Input should be a finite number"),
    "epochs = inf": (lambda t: t.replace("steps = 3,", "epochs = inf,"),
                     "[[tuners]] #1 ('lora-a') field 'options.epochs': Input should be a finite "
                     "number"),
    "warmup = inf": (lambda t: t.replace("steps = 3,", "steps = 3, warmup = inf,"),
                     "[[tuners]] #1 ('lora-a') field 'options.warmup': Input should be a finite "
                     "number"),
    "lr = nan": (lambda t: t.replace("lr = 1e-2", "lr = nan"),
                 "[[tuners]] #1 ('lora-a') field 'options.lr': Input should be a finite number"),
    "swept alpha = -inf": (lambda t: t.replace("alpha = 8, ", "").replace(
                               "max_length = 64 }", "max_length = 64 }\nsweep = { alpha = [8, -inf] }"),
                           "[[tuners]] #1 ('lora-a') field 'sweep.alpha.1': Input should be a "
                           "finite number"),
    "backend option = nan": (lambda t: t.replace("batch_size = 4 }", "batch_size = 4, x = nan }"),
                             "[backend] field 'options.x': Input should be a finite number"),
    "contamination z = inf": (lambda t: t + "\n[contamination]\nz = inf\n",
                              "[contamination] field 'z': Input should be a finite number"),
    "gate max_loss = inf": (lambda t: t + "\n[gate]\nmax_loss = inf\n",
                            "[gate] field 'max_loss': must be a finite number >= 0"),
    "seed = 2**32": (lambda t: t.replace("seed = 0", "seed = 4294967296"),
                     "[suite] field 'seed': Input should be less than 4294967296"),
    "seed = -1": (lambda t: t.replace("seed = 0", "seed = -1"),
                  "[suite] field 'seed': Input should be greater than or equal to 0"),
    "seeds = [2**32]": (lambda t: t.replace('data = "data/sft.jsonl"',
                                            'data = "data/sft.jsonl"\nseeds = [4294967296]'),
                        "[[tuners]] #1 ('lora-a') field 'seeds.0': Input should be less than "
                        "4294967296"),
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
    ("vllm", "backend", "vllm", "pip install 'tune-harness[vllm]'"),
    ("ray", "executor", "ray", "pip install 'tune-harness[ray]'"),
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


def _fifo(root: Path) -> str:
    import os

    os.mkfifo(root / "data" / "pipe")
    return "data/pipe"


def _loop(root: Path) -> str:
    import os

    os.symlink(root / "data" / "loop", root / "data" / "loop")
    return "data/loop"


def _folder(root: Path) -> str:
    (root / "data" / "rows").mkdir()
    (root / "data" / "rows" / "a.jsonl").write_text('{"text": "a"}\n')
    return "data/rows"


def _tasks(root: Path) -> str:
    (root / "data" / "tasks").mkdir()
    (root / "data" / "tasks" / "mine.yaml").write_text("task: mine\n")
    return "data/tasks"


# (which entry's data, what to put there, what the one error line must contain); validation
# refuses each without reading it, so neither `validate` nor `run` blocks or fills memory
DATA_PATHS = {
    "symlink loop (evaluator)": ("data/mc.jsonl", _loop,
                                 "[[evaluators]] #1 ('mc') field 'data': is a symlink loop: "
                                 "data/loop"),
    "symlink loop (tuner)": ("data/sft.jsonl", _loop,
                             "[[tuners]] #1 ('lora-a') field 'data': is a symlink loop: data/loop"),
    "/dev/zero": ("data/text.jsonl", lambda root: "/dev/zero",
                  "[[evaluators]] #2 ('text') field 'data': is a character device, not a "
                  "regular file or a folder: /dev/zero"),
    "/dev/null": ("data/sft.jsonl", lambda root: "/dev/null",
                  "[[tuners]] #1 ('lora-a') field 'data': is a character device, not a regular "
                  "file or a folder: /dev/null"),
    "fifo": ("data/mc.jsonl", _fifo,
             "[[evaluators]] #1 ('mc') field 'data': is a FIFO (named pipe), not a regular file "
             "or a folder: data/pipe"),
    "NUL in the path": ("data/sft.jsonl", lambda root: "data/a\\u0000b",
                        "[[tuners]] #1 ('lora-a') field 'data': a path may not hold a NUL "
                        "character: 'data/a\\x00b'"),
    "folder for a JSONL evaluator": ("data/text.jsonl", _folder,
                                     "[[evaluators]] #2 ('text') field 'data': "),
    "task folder without options.task": ("data/mc.jsonl", _tasks,
                                         "[[evaluators]] #1 ('mc') field 'data': "),
}


# (what the suite path is, what the one error line says after the path)
SUITE_PATHS = {
    "folder": (lambda p: p.mkdir(), "is a folder, not a suite file"),
    "fifo": (lambda p: os.mkfifo(p), "is a FIFO (named pipe), not a suite file"),
    "symlink loop": (lambda p: os.symlink(p, p), "is a symlink loop, not a suite file"),
    "missing": (lambda p: None, "no such suite file"),
}


@pytest.mark.parametrize("case", sorted(SUITE_PATHS))
def test_a_suite_path_that_is_not_a_file_says_what_it_is(tmp_path, case):
    """Said at once: a FIFO is never opened, so nothing waits for a writer."""
    import threading

    make, what = SUITE_PATHS[case]
    path = tmp_path / "suite.toml"
    make(path)
    for command in ("validate", "run"):
        outcome: list = []
        thread = threading.Thread(target=lambda: outcome.append(
            CliRunner().invoke(main, [command, str(path)])), daemon=True)
        thread.start()
        thread.join(30)
        assert outcome, f"{command} blocked"
        assert outcome[0].exit_code == 2, outcome[0].output
        assert outcome[0].output.strip() == f"harness: error: {path}: {what}"
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("case", sorted(DATA_PATHS))
def test_data_that_is_not_a_file_or_folder(tmp_path, case):
    current, make, expected = DATA_PATHS[case]
    suite = small_suite(tmp_path)
    suite.write_text(suite.read_text().replace(f'"{current}"', f'"{make(tmp_path)}"'))
    _check(tmp_path, suite, expected)


def test_folder_messages_name_what_the_kind_needs(tmp_path):
    """A folder where a kind reads one JSONL file, and a task folder without its task."""
    suite = small_suite(tmp_path)
    rows, tasks = _folder(tmp_path), _tasks(tmp_path)
    suite.write_text(suite.read_text().replace('"data/text.jsonl"', f'"{rows}"')
                     .replace('"data/mc.jsonl"', f'"{tasks}"'))
    result = CliRunner().invoke(main, ["validate", str(suite)])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"harness: error: {suite}: [[evaluators]] #1 ('mc') field 'data': {tmp_path / tasks} is "
        "a folder of lm-eval tasks; set options.task to the task to run from it",
        f"harness: error: {suite}: [[evaluators]] #2 ('text') field 'data': {tmp_path / rows}: "
        "is a folder, not a data file",
    ]


def test_a_task_folder_with_its_task_validates(tmp_path):
    suite = small_suite(tmp_path)
    suite.write_text(suite.read_text().replace(
        'data = "data/mc.jsonl"', f'data = "{_tasks(tmp_path)}"\noptions = {{ task = "mine" }}'))
    result = CliRunner().invoke(main, ["validate", str(suite)])
    assert result.exit_code == 0, result.output


def test_data_over_the_size_limit(tmp_path, monkeypatch):
    suite = small_suite(tmp_path)
    text = tmp_path / "data" / "text.jsonl"
    text.write_text(text.read_text() * 20)  # the largest data file of the suite
    size = text.stat().st_size
    monkeypatch.setenv("HARNESS_MAX_DATA_BYTES", str(size - 1))
    _check(tmp_path, suite, f"[[evaluators]] #2 ('text') field 'data': is {size:,} bytes, over "
                            f"the limit of {size - 1:,} bytes for a data file "
                            "(HARNESS_MAX_DATA_BYTES): data/text.jsonl")


def test_max_length_shorter_than_every_prompt_names_the_file_and_option(tmp_path):
    """trl drops every row whose prompt fills max_length; with none left the cell failed with
    trl's `num_samples=0`. Found when the tuner starts (it needs the tokenizer)."""
    suite = small_suite(tmp_path)
    suite.write_text(suite.read_text().replace("max_length = 64", "max_length = 9"))
    result = CliRunner().invoke(main, ["run", str(suite)])
    assert result.exit_code == 1, result.output
    data = (tmp_path / "data" / "sft.jsonl").resolve()
    expected = (f"tuning 'lora-a' failed: DataError: {data}:1: field 'prompt': every row's prompt "
                "fills max_length = 9 tokens and leaves none for the completion; raise the "
                "tuner's option 'max_length' or shorten the prompts")
    failures = [line for line in result.output.splitlines() if "failed:" in line]
    assert failures == [f"cell tiny/lora-a/mc failed: {expected}",
                        f"cell tiny/lora-a/text failed: {expected}"], result.output
    assert "num_samples" not in result.output


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

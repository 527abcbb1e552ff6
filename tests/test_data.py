"""Data files: every bad row is one error naming the file, the line and the field."""

from __future__ import annotations

import re

import pytest

from harness.data import read_jsonl
from harness.errors import DataError, UserError
from harness_plugins.evaluators.benchmark import ItemRow
from harness_plugins.evaluators.perplexity import TextRow


@pytest.mark.parametrize(("content", "message"), [
    (b'{"text": "fine"}\n{"text": "broken"\n', r"t.jsonl:2: invalid JSON: Expecting ',' delimiter"),
    (b'{"text": "fine"}\n\n\xff\xfe\n', r"t.jsonl:3: not valid UTF-8 \(byte 0\)"),
    (b'["a list"]\n', r"t.jsonl:1: expected a JSON object, got list"),
    (b'{"text": ""}\n', r"t.jsonl:1: field 'text': String should have at least 1 character"),
    (b'{"txt": "typo"}\n', r"t.jsonl:1: field 'text': Field required"),
    (b'{"text": 5}\n', r"t.jsonl:1: field 'text': Input should be a valid string"),
    (b"\n\n", r"t.jsonl: no rows"),
])
def test_bad_rows_name_file_line_and_field(tmp_path, content, message):
    path = tmp_path / "t.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        read_jsonl(path, TextRow)


def test_blank_lines_are_skipped_and_line_numbers_kept(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('\n{"text": "a", "id": 7}\n\n{"text": "b", "source": "kept"}\n')
    rows = read_jsonl(path, TextRow)
    assert [(line, row.text, row.id) for line, row in rows] == [(2, "a", "7"), (4, "b", None)]


# -- what a data path may be -------------------------------------------------------------------

def _read_within(path, seconds: float = 20.0):
    """read_jsonl in a thread: a reader that blocks (a FIFO) fails the test instead of hanging."""
    import threading

    outcome: list = []

    def target() -> None:
        try:
            outcome.append(read_jsonl(path, TextRow))
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert outcome, f"reading {path} blocked"
    return outcome[0]


@pytest.mark.parametrize(("make", "message"), [
    (lambda d: d / "folder", r"folder: is a folder, not a data file"),
    (lambda d: d / "loop", r"loop: is a symlink loop"),
    (lambda d: d / "fifo", r"fifo: is a FIFO \(named pipe\), not a regular file"),
    (lambda d: "/dev/zero", r"/dev/zero: is a character device, not a regular file"),
    (lambda d: "/dev/null", r"/dev/null: is a character device, not a regular file"),
])
def test_data_that_is_not_a_regular_file_is_refused_without_reading(tmp_path, make, message):
    import os

    (tmp_path / "folder").mkdir()
    os.symlink(tmp_path / "loop", tmp_path / "loop")
    os.mkfifo(tmp_path / "fifo")
    outcome = _read_within(make(tmp_path))
    assert isinstance(outcome, DataError), outcome
    assert re.search(message, str(outcome)), str(outcome)


def test_a_data_file_over_the_size_limit_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "t.jsonl"
    path.write_text('{"text": "a"}\n' * 10)  # 140 bytes
    monkeypatch.setenv("HARNESS_MAX_DATA_BYTES", "100")
    with pytest.raises(DataError, match=r"t.jsonl: is 140 bytes, over the limit of 100 bytes "
                                        r"for a data file \(HARNESS_MAX_DATA_BYTES\)"):
        read_jsonl(path, TextRow)
    monkeypatch.setenv("HARNESS_MAX_DATA_BYTES", "140")
    assert len(read_jsonl(path, TextRow)) == 10


def test_the_size_limit_has_a_generous_default(monkeypatch):
    from harness.data import max_data_bytes

    monkeypatch.delenv("HARNESS_MAX_DATA_BYTES", raising=False)
    assert max_data_bytes() == 4 * 1024**3
    monkeypatch.setenv("HARNESS_MAX_DATA_BYTES", "lots")
    with pytest.raises(UserError, match=r"HARNESS_MAX_DATA_BYTES: 'lots' is not a whole "
                                        r"number of bytes > 0"):
        max_data_bytes()


def test_a_30_digit_integer_id_is_kept_exact(tmp_path, backend):
    """lm-eval reads a benchmark's JSONL through pyarrow, which makes such an id a float
    (1.2345678901234568e+29) and every other id of the file a float too ("5.0"); the
    sample keeps the id as the row says it."""
    from harness import EvaluatorSpec
    from harness_plugins.evaluators.benchmark import BenchmarkEvaluator, BenchmarkOptions

    from .conftest import MC_ROWS, write_jsonl

    big = 123456789012345678901234567890
    rows = [{**MC_ROWS[0], "id": big}, {**MC_ROWS[1], "id": 5}, {**MC_ROWS[2], "id": "x"},
            {k: v for k, v in MC_ROWS[3].items() if k != "id"}]
    data = write_jsonl(tmp_path / "mc.jsonl", rows)
    assert read_jsonl(data, ItemRow)[0][1].id == str(big)
    spec = EvaluatorSpec("mc", "benchmark", "general", str(data), 0)
    result = BenchmarkEvaluator(spec, BenchmarkOptions()).evaluate(backend)
    assert [s.item_id for s in result.samples] == [str(big), "5", "x", "3"]

"""Data files: every bad row is one error naming the file, the line and the field."""

from __future__ import annotations

import pytest

from harness.data import read_jsonl
from harness.errors import DataError
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

"""JSONL data files read into typed rows, with errors that name file, line and field.

Shared by tuners and evaluators, so every data file in a suite fails the same
clear way: ``data/train.jsonl:17: field 'messages.1.content': ...``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError

from harness.errors import DataError, validation_problems

Row = TypeVar("Row", bound=BaseModel)


def _id_as_text(value: object) -> object:
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


#: an item id: a string, or an integer stored as text
ItemId = Annotated[str, BeforeValidator(_id_as_text)]


#: one row (one line) may hold at most this many bytes: a larger one is almost surely a
#: whole file written onto one line, and would be read into memory whole
MAX_ROW_BYTES = 8 * 1024 * 1024


class DataRow(BaseModel):
    """Base for row schemas; unknown keys are kept (ids, metadata)."""

    model_config = ConfigDict(extra="allow")


def read_jsonl(path: str | Path, schema: type[Row]) -> list[tuple[int, Row]]:
    """Read every non-blank line of ``path`` as a ``schema`` row; returns (line, row) pairs."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(path, None, f"cannot read: {exc.strerror}") from None
    rows: list[tuple[int, Row]] = []
    for number, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        if len(line) > MAX_ROW_BYTES:
            raise DataError(path, number, f"row is {len(line):,} bytes; a row may hold at most "
                                          f"{MAX_ROW_BYTES:,} (one JSON object per line)")
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(path, number, f"not valid UTF-8 (byte {exc.start})") from None
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(path, number, f"invalid JSON: {exc.msg} (column {exc.colno})") from None
        if not isinstance(value, dict):
            raise DataError(path, number, f"expected a JSON object, got {type(value).__name__}")
        try:
            rows.append((number, schema.model_validate(value)))
        except ValidationError as exc:
            field, message = validation_problems(exc)[0]
            raise DataError(path, number, message, field=field or None) from None
    if not rows:
        raise DataError(path, None, "no rows")
    return rows

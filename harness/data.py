"""JSONL data files read into typed rows, with errors that name file, line and field.

Shared by tuners and evaluators, so every data file in a suite fails the same
clear way: ``data/train.jsonl:17: field 'messages.1.content': ...``.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path
from typing import Annotated, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError

from harness.errors import DataError, UserError, validation_problems

Row = TypeVar("Row", bound=BaseModel)


def _id_as_text(value: object) -> object:
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


#: an item id: a string, or an integer stored as text
ItemId = Annotated[str, BeforeValidator(_id_as_text)]


#: one row (one line) may hold at most this many bytes: a larger one is almost surely a
#: whole file written onto one line, and would be read into memory whole
MAX_ROW_BYTES = 8 * 1024 * 1024


#: a data file may hold at most this many bytes unless HARNESS_MAX_DATA_BYTES says otherwise:
#: generous for JSONL, which is read into memory whole, yet it stops a wrong path (a disk
#: image, a dump) before it fills the memory
DEFAULT_MAX_DATA_BYTES = 4 * 1024**3

#: what a path is when it is neither a regular file nor a folder
_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def max_data_bytes() -> int:
    """The size limit of a data file: ``HARNESS_MAX_DATA_BYTES``, else the default."""
    text = os.environ.get("HARNESS_MAX_DATA_BYTES", "").strip()
    if not text:
        return DEFAULT_MAX_DATA_BYTES
    if not text.isdigit() or int(text) == 0:
        raise UserError(f"HARNESS_MAX_DATA_BYTES: {text!r} is not a whole number of bytes > 0")
    return int(text)


def kind_of(mode: int) -> str:
    """What a path whose ``st_mode`` is ``mode`` is, in words ("a FIFO (named pipe)")."""
    if stat.S_ISDIR(mode):
        return "a folder"
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def stat_or_problem(path: str | Path) -> os.stat_result | str:
    """What ``os.stat`` says of ``path``, or why it cannot: "missing", "is a symlink loop",
    "cannot read: <reason>" (the data and the suite file phrase "missing" their own way)."""
    try:
        return os.stat(path)
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "is a symlink loop"
        return f"cannot read: {exc.strerror}"


def stat_problem(path: str | Path, *, folders: bool) -> str | None:
    """Why ``path`` cannot be data, without opening it: missing, a symlink loop, not a regular
    file (or a folder, when ``folders``), over the size limit; None when it can be. Said as
    a predicate ("is a symlink loop"), so that it follows either the path or a field."""
    info = stat_or_problem(path)
    if isinstance(info, str):
        return "no such file or folder" if info == "missing" else info
    return mode_problem(info, folders=folders)


def mode_problem(info: os.stat_result, *, folders: bool) -> str | None:
    if stat.S_ISDIR(info.st_mode):
        return None if folders else "is a folder, not a data file"
    if not stat.S_ISREG(info.st_mode):
        allowed = "a regular file or a folder" if folders else "a regular file"
        return f"is {kind_of(info.st_mode)}, not {allowed}"
    limit = max_data_bytes()
    if info.st_size > limit:
        return (f"is {info.st_size:,} bytes, over the limit of {limit:,} bytes for a data file "
                "(HARNESS_MAX_DATA_BYTES)")
    return None


def read_data_file(path: str | Path) -> bytes:
    """The bytes of a data file, once it is known to be a regular file within the size limit.
    Opened without blocking (a FIFO would wait for a writer) and checked on the open file,
    so that what is read is what was checked."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        # a symlink loop, or a socket (which cannot be opened), is said as what it is
        named = stat_problem(path, folders=False) if exc.errno in (errno.ELOOP, errno.ENXIO) \
            else None
        raise DataError(path, None, named or f"cannot read: {exc.strerror}") from None
    try:
        problem = mode_problem(os.fstat(fd), folders=False)
        if problem:
            raise DataError(path, None, problem)
        file = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    limit = max_data_bytes()
    with file:
        try:
            raw = file.read(limit + 1)  # a file that grew since it was checked is not read on
        except OSError as exc:
            raise DataError(path, None, f"cannot read: {exc.strerror}") from None
    if len(raw) > limit:
        raise DataError(path, None, f"is over the limit of {limit:,} bytes for a data file "
                                    "(HARNESS_MAX_DATA_BYTES)")
    return raw


class DataRow(BaseModel):
    """Base for row schemas; unknown keys are kept (ids, metadata)."""

    model_config = ConfigDict(extra="allow")


def read_jsonl(path: str | Path, schema: type[Row]) -> list[tuple[int, Row]]:
    """Read every non-blank line of ``path`` as a ``schema`` row; returns (line, row) pairs."""
    path = Path(path)
    raw = read_data_file(path)
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

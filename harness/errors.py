"""Errors a user can fix (bad suite, bad data, unknown plugin, locked store).

The CLI prints them as one line each and exits with status 2; anything else is
a bug and keeps its traceback.
"""

from __future__ import annotations

from typing import Any


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message ("" when it has none)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


class UserError(Exception):
    """A problem with the user's input. ``lines`` are printed one per line."""

    def __init__(self, *lines: str) -> None:
        self.lines = [line for line in lines if line]
        super().__init__("\n".join(self.lines))


class DataError(UserError):
    """A bad row in a data file: names the file, the line and the field."""

    def __init__(self, path, line: int | None, message: str, field: str | None = None) -> None:
        where = f"{path}:{line}" if line is not None else f"{path}"
        if field:
            where += f": field {field!r}"
        super().__init__(f"{where}: {message}")


class StoreLockedError(UserError):
    """Another process holds the DuckDB store for writing."""


def validation_problems(exc: Any, prefix: str = "") -> list[tuple[str, str]]:
    """(field, message) for each error of a pydantic ``ValidationError``: the field dotted
    (``options.lr``, ``messages.1.content``) behind ``prefix``, the message without
    pydantic's "Value error, " prefix. The one formatter every validation error goes through."""
    problems = []
    for error in exc.errors():
        parts = [prefix] if prefix else []
        parts.extend(str(part) for part in error["loc"])
        problems.append((".".join(parts), error["msg"].removeprefix("Value error, ")))
    return problems

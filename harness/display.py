"""Tables for the terminal: what ``harness sql`` and the console reporter print."""

from __future__ import annotations

from typing import Any


def format_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def render_table(title: str, columns: list[str], rows: list[tuple]) -> Any:
    """A rich ``Table`` of query results, floats to four significant digits."""
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(format_value(v) for v in row))
    return table

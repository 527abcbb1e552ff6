"""What a report is made of (sections of text, tables, trees and figures), how it writes
numbers, and the read-only reader its sections query the store with.

Shared by the modules that assemble sections (``report_data``, ``curves``) and the
reporters that lay them out (``html``, ``markdown``), so none of them imports another's
internals.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

#: the gate's decisions, as the ``gate`` view spells them
DECISIONS = ("GO", "NO-GO", "INCONCLUSIVE")


@dataclass
class Table:
    columns: list[str]
    rows: list[list[str]]
    caption: str = ""
    #: columns that hold a gate decision (one of ``DECISIONS``): the HTML page colours them
    decision_columns: tuple[str, ...] = ()


@dataclass
class Node:
    """One entry of a nested list, such as a variant in the lineage tree."""

    name: str
    detail: str = ""
    children: list[Node] = field(default_factory=list)


@dataclass
class Figure:
    name: str  # a file name stem for the Markdown report's SVG
    title: str
    svg: str


@dataclass
class Section:
    title: str
    text: str = ""
    figures: list[Figure] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    tree: list[Node] = field(default_factory=list)  # shown as a nested list


@dataclass
class Report:
    title: str
    facts: list[tuple[str, str]]
    sections: list[Section]


def fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        if value == 0:
            value = 0.0  # -0.0 reads as 0
        return f"{value:.{digits}g}"
    return str(value)


def p_text(value: float | None) -> str:
    """A p-value as a report prints it: three decimals, or ``< 0.001``."""
    if value is None:
        return ""
    return "< 0.001" if value < 0.001 else f"{value:.3f}"


def interval_text(low: float | None, high: float | None) -> str:
    return "" if low is None or high is None else f"[{fmt(low, 3)}, {fmt(high, 3)}]"


class Reader:
    """The report's queries, each about one suite, on one read-only connection."""

    def __init__(self, con: Any, suite: str) -> None:
        self.con, self.suite = con, suite

    def rows(self, sql: str) -> list[dict[str, Any]]:
        """The rows of ``sql`` as dicts; its one parameter (``?``) is the suite."""
        cursor = self.con.execute(sql, [self.suite])
        columns = [d[0] for d in cursor.description]
        return [dict(zip(columns, row)) for row in cursor.fetchall()]

"""Prints the leaderboard, the forgetting table and contamination counts after a run."""

from __future__ import annotations

from rich.table import Table

import harness
from harness.components import Options, ReportContext
from harness.store import query


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def render_table(title: str, columns: list[str], rows: list[tuple]) -> Table:
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(_fmt(v) for v in row))
    return table


class ConsoleReporter:
    Options = Options

    def __init__(self, options: Options | None = None) -> None:
        self.options = options

    #: (title, query): each table printed when it has rows for the suite
    TABLES = (
        ("Leaderboard",
         "SELECT model, variant, method, evaluator, role, metric, value, stderr, n "
         "FROM leaderboard WHERE suite = ?"),
        ("Forgetting (general and safety evaluators; forgetting > 0 = worse than base)",
         "SELECT model, variant, evaluator, metric, base_value, variant_value, delta, "
         "forgetting, paired_test, p_value FROM forgetting WHERE suite = ?"),
        ("Contamination (items flagged; harness report lists them)",
         "SELECT model, variant, evaluator, method, flagged, items FROM contamination_summary "
         "WHERE suite = ? AND flagged > 0"),
    )

    def report(self, context: ReportContext) -> None:
        if not context.store_path.exists():
            return
        for title, sql in self.TABLES:
            columns, rows = query(context.store_path, sql, [context.suite_name])
            if rows:
                context.console.print(render_table(title, columns, rows))


@harness.hookimpl
def harness_register_reporters(register):
    register("console", ConsoleReporter)
